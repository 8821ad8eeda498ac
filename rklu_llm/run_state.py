"""What makes a run trustworthy: one run per output folder, resumed only when it is the same run, stopped when it
diverges, and no secret in what it writes.

* **Lock.** ``<output_dir>/_rklu_run.lock`` is held (``fcntl.flock``) by the main process of the run writing into
  ``output_dir``; a second run is refused with the holder's pid. The kernel drops the lock when its process dies, so
  the lock of a killed run is taken over (with a message naming the dead pid).
* **Run record.** ``<output_dir>/_rklu_run.json`` holds the run's *fingerprint*, everything that defines its result:
  the base model's identity (:func:`model_identity`: portable path, config hash, weights digest), the hashes of the
  training data, the method and every setting that changes the result (:func:`training_settings`). It is written
  when training starts and marked ``finished`` after the final save. A later run into the same folder must have the
  same fingerprint (then it resumes from the newest complete checkpoint); anything else is refused with the differing
  fields and the fix (``--overwrite_output_dir``, or another ``--output_dir``).
* **Checkpoints.** A checkpoint is *complete* when its ``trainer_state.json`` (the Trainer writes it last) parses and
  its weights are present and readable; a resumed run starts from the newest complete one and deletes newer
  incomplete ones (a save killed half-way), saying so (:func:`last_complete_checkpoint`).
* **Divergence.** :class:`DivergenceGuard` (gradient norm, before the optimizer step) and :func:`stop_if_non_finite`
  (the loss, before backward) raise :class:`TrainingDiverged` at the first non-finite value, naming the step and the
  likely cause; no NaN weights are ever stepped into, checkpointed or saved.
* **Secrets.** :func:`without_secrets` drops ``*token*`` strings from the pickled arguments (``training_args.bin``).

The files' names start with ``_``: `transformers.Trainer`'s own hub pushes skip such files.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import math
import os
import re
import shutil
import time
from dataclasses import fields
from enum import Enum
from pathlib import Path

import torch
from accelerate import PartialState
from safetensors import safe_open
from transformers import Trainer, TrainerCallback
from transformers.utils import is_torch_bf16_gpu_available, is_torch_xla_available

from . import __version__
from .distributed import check_sharding_engaged, check_sharding_possible, first_non_finite
from .field_tags import TRAINING_FIELDS
from .io import data_fingerprint, model_fingerprint, write_json_atomic
from .paths import portable_path

#: the folder a save is staged in before it is moved into place (an unfinished save, when found)
STAGING_DIR = ".rklu-staging"

logger = logging.getLogger(__name__)

RUN_RECORD = "_rklu_run.json"
RUN_LOCK = "_rklu_run.lock"
CHECKPOINT_PATTERN = re.compile(r"^checkpoint-(\d+)$")


class RunConflictError(RuntimeError):
    """The output folder belongs to another run (a different fingerprint, or a run in progress)."""


class TrainingDiverged(RuntimeError):
    """A loss or gradient norm became non-finite; the run stopped before using it."""


def console_logging() -> None:
    """Show this package's INFO messages (phases, resumed checkpoint, lock take-over) on stderr, for the scripts."""
    package = logging.getLogger("rklu_llm")
    if not package.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("[rklu_llm] %(message)s"))
        package.addHandler(handler)
        package.setLevel(logging.INFO)


# ----------------------------------------------------------------------------------------------------------------
# Arguments: validation and secrets
# ----------------------------------------------------------------------------------------------------------------
def check_training_arguments(args) -> None:
    """Reject what `TrainingArguments` lets through and a run cannot survive: non-finite numbers, empty batches.

    Raises:
        ValueError: a float field is NaN or infinite, a batch size or accumulation count is below 1, or the learning
            rate is negative.
        ShardingNotEngaged: FSDP / DeepSpeed asked for where accelerate would not shard (CPUs).
    """
    for spec in fields(args):
        value = getattr(args, spec.name, None)
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"{spec.name} must be a finite number (got {value}).")
    for name in ("per_device_train_batch_size", "gradient_accumulation_steps"):
        if getattr(args, name) < 1:
            raise ValueError(f"{name} must be >= 1 (got {getattr(args, name)}).")
    if args.learning_rate < 0:
        raise ValueError(f"learning_rate must be >= 0 (got {args.learning_rate}).")
    check_sharding_possible(args)  # an FSDP / DeepSpeed launch on CPUs: refused before any model is loaded
    resolve_precision(args)


def resolve_precision(args) -> None:
    """``bf16`` asked for (a config written for a GPU) on a machine without a bf16 accelerator and without
    ``use_cpu``: fall back to float32, saying so in one line, instead of `TrainingArguments`' bare
    "Your setup doesn't support bf16/gpu". With ``use_cpu=True`` the request stands (bf16 autocast on the CPU)."""
    if not (args.bf16 or args.bf16_full_eval) or args.use_cpu:
        return
    if is_torch_bf16_gpu_available() or is_torch_xla_available():
        return
    args.bf16 = args.bf16_full_eval = False
    logger.warning(
        "bf16 was requested but this machine has no bf16-capable GPU: running in float32 instead "
        "(pass --bf16 false to silence this line)."
    )


def is_secret_field(name: str, value) -> bool:
    """A string field whose name mentions a token (``hub_token``, ...): never written anywhere."""
    return "token" in name and isinstance(value, str)


def without_secrets(state: dict) -> dict:
    """``state`` (an arguments object's ``__dict__``) with every secret field set to ``None``.

    Used as ``__getstate__`` of the run arguments, so the ``training_args.bin`` that the Trainer pickles into the output
    folder and every checkpoint never holds a token; the live object keeps it for ``push_to_hub``.
    """
    return {k: (None if is_secret_field(k, v) else v) for k, v in state.items()}


def _plain(value):
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def training_settings(args) -> dict:
    """The :data:`~rklu_llm.field_tags.TRAINING_FIELDS` of ``args`` plus the number of processes (the global batch
    depends on it)."""
    settings = {name: _plain(getattr(args, name, None)) for name in TRAINING_FIELDS}
    settings["world_size"] = args.world_size
    return settings


# ----------------------------------------------------------------------------------------------------------------
# Model identity
# ----------------------------------------------------------------------------------------------------------------
class _Parameters:
    """The base parameters of a model under their plain names (what `model_fingerprint` reads)."""

    def __init__(self, model):
        adapters = tuple(getattr(model, "peft_config", {}) or {})
        self.items = []
        for name, param in model.named_parameters():
            if any(f".{adapter}." in name for adapter in adapters):
                continue  # an adapter's weights, not the base model's
            self.items.append((name.replace("base_model.model.", "", 1).replace(".base_layer", ""), param))

    def named_parameters(self):
        return iter(self.items)


def is_partitioned(model) -> bool:
    """Whether the weights are sharded across processes (DeepSpeed ZeRO-3) or not materialised (meta tensors)."""
    return any(hasattr(p, "ds_id") or p.device.type == "meta" for p in model.parameters())


def model_identity(model) -> dict:
    """What identifies a model's weights: ``{"name", "config_sha256", "weights_sha256"}``.

    ``name`` is where it was loaded from (a portable path, for the reader); ``config_sha256`` hashes its config;
    ``weights_sha256`` is :func:`rklu_llm.io.model_fingerprint` of the base weights (LoRA adapter weights left
    out, PEFT's wrapped names mapped back to the plain ones), ``None`` when the weights are sharded (ZeRO-3). Two
    identities are the same model when config and weights agree (:func:`same_model`); the name may differ (a moved
    folder).
    """

    config = getattr(model, "config", None)
    name = getattr(config, "_name_or_path", None) or getattr(model, "name_or_path", None)
    config_dict = config.to_dict() if config is not None else {}
    for key in ("_name_or_path", "transformers_version"):
        config_dict.pop(key, None)
    weights = None if is_partitioned(model) else model_fingerprint(_Parameters(model))
    return {
        "name": portable_path(name) if name else None,
        "config_sha256": data_fingerprint(config_dict),
        "weights_sha256": weights,
    }


def same_model(a: dict, b: dict) -> bool:
    """Whether two :func:`model_identity` dicts name the same weights (by the names only when a digest is missing)."""
    if a.get("config_sha256") != b.get("config_sha256"):
        return False
    if a.get("weights_sha256") is None or b.get("weights_sha256") is None:
        return a.get("name") == b.get("name")
    return a["weights_sha256"] == b["weights_sha256"]


def differences(recorded: dict, current: dict, prefix: str = "") -> list[str]:
    """Human-readable ``"field: X recorded, Y now"`` lines for every setting that differs (nested keys dotted)."""
    lines = []
    for key in sorted(set(recorded) | set(current)):
        a, b = recorded.get(key, "<absent>"), current.get(key, "<absent>")
        if isinstance(a, dict) and isinstance(b, dict):
            if "weights_sha256" in a and "weights_sha256" in b:
                if not same_model(a, b):
                    lines.append(f"{prefix}{key}: another model ({_describe(a)} recorded, {_describe(b)} now)")
                continue
            lines += differences(a, b, f"{prefix}{key}.")
        elif a != b:
            lines.append(f"{prefix}{key}: {a!r} recorded, {b!r} now")
    return lines


def _describe(identity: dict) -> str:
    return f"{identity.get('name')}, weights {identity.get('weights_sha256')}"


# ----------------------------------------------------------------------------------------------------------------
# Lock
# ----------------------------------------------------------------------------------------------------------------
_HELD: dict[str, RunLock] = {}


class RunLock:
    """An exclusive lock on an output folder, held by this process (re-entrant: nested acquires count)."""

    def __init__(self, key: str, path: Path, fd: int):
        self.key, self.path, self.fd, self.count = key, path, fd, 1

    def release(self) -> None:
        """Give one hold back; the last one removes the lock file and unlocks it."""
        self.count -= 1
        if self.count > 0:
            return
        _HELD.pop(self.key, None)
        with contextlib.suppress(FileNotFoundError):
            if os.stat(self.path).st_ino == os.fstat(self.fd).st_ino:
                os.unlink(self.path)
        os.close(self.fd)  # closing the descriptor drops the flock


def _lock_holder(path: Path) -> dict:
    try:
        return json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        return {}


def acquire_run_lock(output_dir: str | os.PathLike) -> RunLock:
    """Lock ``output_dir`` for this process (creating the folder), or refuse if another live process holds it.

    Raises:
        RunConflictError: another process holds the lock (the message gives its pid).
    """
    output_dir = Path(output_dir)
    key = str(output_dir.expanduser().resolve())
    if key in _HELD:
        _HELD[key].count += 1
        return _HELD[key]
    output_dir.mkdir(parents=True, exist_ok=True)
    path = output_dir / RUN_LOCK
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno not in (errno.EAGAIN, errno.EACCES):
                raise
            holder = _lock_holder(path)
            raise RunConflictError(
                f"output_dir {portable_path(output_dir)!r} is in use by another run (pid {holder.get('pid', '?')}, "
                f"started {holder.get('started', '?')}). Wait for it to finish, or choose another --output_dir."
            ) from None
        try:
            if os.stat(path).st_ino == os.fstat(fd).st_ino:
                break  # still the file at that path (not one its last holder removed meanwhile)
        except FileNotFoundError:
            pass
        os.close(fd)
    stale = _lock_holder(path).get("pid")
    if stale is not None and stale != os.getpid():
        logger.warning(
            "Took over the lock of %s left by pid %s, which is no longer running.", portable_path(output_dir), stale
        )
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps({"pid": os.getpid(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}).encode(), 0)
    lock = _HELD[key] = RunLock(key, path, fd)
    return lock


@contextlib.contextmanager
def run_lock(output_dir: str | os.PathLike, main_process: bool = True):
    """``with run_lock(dir):`` hold the output folder's lock for the block (only on the main process of a launch)."""
    lock = acquire_run_lock(output_dir) if main_process else None
    try:
        yield lock
    finally:
        if lock is not None:
            lock.release()


# ----------------------------------------------------------------------------------------------------------------
# Run record
# ----------------------------------------------------------------------------------------------------------------
def read_run_record(output_dir: str | os.PathLike) -> dict | None:
    """The run record of ``output_dir``, or ``None`` when there is none.

    Raises:
        RunConflictError: the record exists but cannot be read.
    """
    path = Path(output_dir) / RUN_RECORD
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise RunConflictError(
            f"The run record {portable_path(path)!r} is unreadable ({exc}); pass --overwrite_output_dir to start over "
            "there, or choose another --output_dir."
        ) from exc


def _checkpoints(output_dir: Path) -> list[tuple[int, Path]]:
    if not output_dir.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in output_dir.iterdir() if (m := CHECKPOINT_PATTERN.match(p.name))]
    return sorted(((step, p) for step, p in found if p.is_dir()), reverse=True)


_MODEL_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "adapter_model.safetensors",
    "pytorch_model.bin",
    "adapter_model.bin",
    "pytorch_model.bin.index.json",
)


def check_run_record(output_dir: str | os.PathLike, fingerprint: dict) -> dict | None:
    """Refuse to write into ``output_dir`` unless it is new or holds this very run; returns the record, if any.

    Raises:
        RunConflictError: the recorded fingerprint differs (the message lists the fields), or the folder holds
            checkpoints / a model that no record describes.
    """
    output_dir = Path(output_dir)
    record = read_run_record(output_dir)
    fingerprint = json.loads(json.dumps(fingerprint, default=str))  # as it reads back from the file
    fix = (
        "Pass --overwrite_output_dir to start over there (it deletes what that run left), or choose another "
        "--output_dir."
    )
    if record is None:
        leftovers = [p.name for _, p in _checkpoints(output_dir)]
        leftovers += [name for name in _MODEL_FILES if (output_dir / name).exists()]
        if leftovers:
            raise RunConflictError(
                f"output_dir {portable_path(output_dir)!r} holds {', '.join(leftovers[:4])} but no run record "
                f"({RUN_RECORD}): a run this one cannot be sure to continue. {fix}"
            )
        return None
    changed = differences(record.get("fingerprint", {}), fingerprint)
    if changed:
        status = record.get("status", "unknown")
        raise RunConflictError(
            f"output_dir {portable_path(output_dir)!r} holds another run ({status}, {record.get('kind', '?')}); "
            f"what differs:\n  " + "\n  ".join(changed[:20]) + f"\n{fix}"
        )
    return record


def clear_previous_run(output_dir: str | os.PathLike) -> None:
    """``--overwrite_output_dir``: delete what a previous run left in ``output_dir`` (keeping the lock file).

    With a run record (the folder is a previous run's), everything else in the folder goes; without one, only
    checkpoints and a staging folder (files of unknown origin are left; the final save replaces model files).
    """
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return
    owned = (output_dir / RUN_RECORD).is_file()
    for entry in output_dir.iterdir():
        if entry.name == RUN_LOCK:
            continue
        if owned or entry.name == STAGING_DIR or CHECKPOINT_PATTERN.match(entry.name):
            logger.warning("--overwrite_output_dir: deleting %s", portable_path(entry))
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()


def write_run_record(output_dir: str | os.PathLike, kind: str, fingerprint: dict, status: str, **extra) -> None:
    """Write the run record atomically (main process only)."""
    write_json_atomic(
        Path(output_dir) / RUN_RECORD,
        {"kind": kind, "status": status, "rklu_llm_version": __version__, **extra, "fingerprint": fingerprint},
    )


def update_run_record(output_dir: str | os.PathLike, status: str | None = None, **fields) -> None:
    """Add ``fields`` to the run record in ``output_dir`` (and set its ``status``), keeping everything else in it;
    nothing happens when there is no record (main process only)."""
    record = read_run_record(output_dir)
    if record is None:
        return
    kept = {k: v for k, v in record.items() if k not in ("kind", "status", "fingerprint", "rklu_llm_version")}
    write_run_record(
        output_dir,
        record.get("kind", "?"),
        record.get("fingerprint", {}),
        status or record.get("status", "?"),
        **{**kept, **fields},
    )


def begin_run(args, kind: str, fingerprint: dict, resume: bool = True) -> str | None:
    """Start (or continue) a run in ``args.output_dir``; returns the checkpoint to resume from, or ``None``.

    The main process takes the lock (kept until :func:`finish_run` or the process ends), deletes a previous run's
    files when ``args.overwrite_output_dir`` is set, checks the run record against ``fingerprint`` and writes it; then
    every process picks the newest complete checkpoint (when ``resume``).

    Raises:
        RunConflictError: another run holds the lock, or the folder holds another run.
    """
    main = args.process_index == 0
    if main:
        acquire_run_lock(args.output_dir)
        if getattr(args, "overwrite_output_dir", False):
            clear_previous_run(args.output_dir)
        check_run_record(args.output_dir, fingerprint)
        write_run_record(args.output_dir, kind, fingerprint, "training")
    PartialState().wait_for_everyone()
    return last_complete_checkpoint(args.output_dir, remove_incomplete=main) if resume else None


def finish_run(args, global_step: int, status: str = "finished") -> None:
    """Mark the run record ``finished`` (after the final save) or ``diverged``, and release the lock (main process)."""
    if args.process_index != 0:
        return
    update_run_record(args.output_dir, status=status, global_step=global_step)
    lock = _HELD.get(str(Path(args.output_dir).expanduser().resolve()))
    if lock is not None:
        lock.release()


# ----------------------------------------------------------------------------------------------------------------
# Checkpoints
# ----------------------------------------------------------------------------------------------------------------
def checkpoint_problem(path: str | os.PathLike) -> str | None:
    """Why the checkpoint folder ``path`` cannot be resumed from, or ``None`` when it is complete.

    Complete: ``trainer_state.json`` (written last by the Trainer) parses, and the weights are there: a readable
    ``*.safetensors`` file (its header and size agree), every shard of a sharded index, a ``.bin`` file, or a
    DeepSpeed ``latest`` tag.
    """
    path = Path(path)
    if not path.is_dir():
        return "it does not exist"
    state = path / "trainer_state.json"
    if not state.is_file():
        return "it has no trainer_state.json (the save was interrupted)"
    try:
        json.loads(state.read_text(encoding="utf-8"))["global_step"]
    except (OSError, ValueError, KeyError, TypeError):
        return "its trainer_state.json is unreadable (the save was interrupted)"
    weights = [path / n for n in _MODEL_FILES if (path / n).is_file()]
    if not weights and not (path / "latest").is_file():
        return "it holds no model weights"
    for file in weights:
        if file.name.endswith(".index.json"):
            try:
                shards = set(json.loads(file.read_text(encoding="utf-8"))["weight_map"].values())
            except (OSError, ValueError, KeyError, AttributeError):
                return f"its {file.name} is unreadable"
            missing = sorted(s for s in shards if not (path / s).is_file())
            if missing:
                return f"weight shard(s) {', '.join(missing[:3])} are missing"
            weights += [path / s for s in shards if s.endswith(".safetensors")]
        elif file.suffix == ".safetensors":
            try:
                with safe_open(str(file), framework="pt") as handle:
                    handle.keys()
            except Exception as exc:
                return f"its {file.name} is unreadable ({type(exc).__name__}: {str(exc)[:80]})"
        elif file.stat().st_size == 0:
            return f"its {file.name} is empty"
    return None


def last_complete_checkpoint(output_dir: str | os.PathLike, remove_incomplete: bool = True) -> str | None:
    """The newest complete ``checkpoint-N`` of ``output_dir`` (see :func:`checkpoint_problem`), or ``None``.

    Newer incomplete checkpoints (a save killed half-way) are skipped with a warning saying why, and deleted when
    ``remove_incomplete`` (otherwise the Trainer's rotation, which keeps the newest folders, would delete the good one
    and keep the broken one).
    """
    for step, path in _checkpoints(Path(output_dir)):
        problem = checkpoint_problem(path)
        if problem is None:
            logger.warning("Resuming from %s (step %d).", portable_path(path), step)
            return str(path)
        logger.warning("Skipping %s: %s.%s", portable_path(path), problem, " Deleting it." if remove_incomplete else "")
        if remove_incomplete:
            shutil.rmtree(path, ignore_errors=True)
    return None


# ----------------------------------------------------------------------------------------------------------------
# Divergence
# ----------------------------------------------------------------------------------------------------------------
def divergence_hint(args, learning_rate_field: str = "learning_rate") -> str:
    """The likely causes of a diverged run, read from its arguments."""
    hints = [
        f"{learning_rate_field}={getattr(args, learning_rate_field, args.learning_rate):g} may be too high "
        "(try 10x lower)"
    ]
    if getattr(getattr(args, "spec", None), "uses_teacher", False):  # the method's entry (UnlearnConfig.spec)
        hints.append(f"teacher_alpha={args.teacher_alpha:g} may be too large (the paper uses 4-8)")
    if getattr(args, "fp16", False):
        hints.append("fp16 overflows easily (use bf16 or float32)")
    if getattr(args, "max_grad_norm", 1.0) <= 0:
        hints.append("gradient clipping is off (max_grad_norm <= 0)")
    return "; ".join(hints)


def _any_process(flag: bool, device) -> bool:
    """``flag`` OR-ed over all processes (so that every process stops together)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        value = torch.tensor(float(flag), device=device)
        torch.distributed.all_reduce(value, op=torch.distributed.ReduceOp.MAX)
        return bool(value.item())
    return flag


def _diverged(what: str, value, step: int, hint: str) -> TrainingDiverged:
    return TrainingDiverged(
        f"Training diverged at step {step}: the {what} is {value}. The run stopped before the optimizer step, so no "
        f"non-finite weights were saved (the output folder and its checkpoints are as the last good step left them). "
        f"Likely cause: {hint}."
    )


def stop_if_non_finite(loss: torch.Tensor, step: int, hint: str, parts: dict[str, torch.Tensor] | None = None) -> None:
    """Raise :class:`TrainingDiverged` if ``loss`` is NaN or infinite on any process (call it before backward).

    Args:
        loss: the scalar about to be back-propagated.
        step: the optimizer step it belongs to (``state.global_step + 1``).
        hint: the likely cause (:func:`divergence_hint`).
        parts: named terms of the loss, shown in the message.
    """
    bad = not bool(torch.isfinite(loss.detach()).all())
    if _any_process(bad, loss.device):
        value = f"{loss.detach().float().item()}" if bad else "finite here but not on another process"
        if parts:
            value += " (" + ", ".join(f"{k} {v.detach().float().item():.6g}" for k, v in parts.items()) + ")"
        raise _diverged("loss", value, step, hint)


class DivergenceGuard(TrainerCallback):
    """Stops training at the first non-finite gradient norm, before the optimizer applies it.

    Runs in ``on_pre_optimizer_step`` (after the Trainer's clipping, which turns a NaN/inf norm into NaN gradients).
    Under DeepSpeed the engine keeps the gradients and steps inside ``backward``: there the loss check
    (:func:`stop_if_non_finite`) is what stops the run.

    Args:
        hint: the likely cause to print; default :func:`divergence_hint` of the run's arguments.
    """

    def __init__(self, hint: str | None = None):
        self.hint = hint

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        grads = [p.grad for p in model.parameters() if p.grad is not None] if model is not None else []
        if not grads:
            return
        norm = torch.nn.utils.get_total_norm(grads)
        if _any_process(not bool(torch.isfinite(norm)), norm.device):
            raise _diverged("gradient norm", norm.item(), state.global_step + 1, self.hint or divergence_hint(args))


def check_finite_weights(model, where: str) -> None:
    """Refuse to save non-finite weights (a run that diverged at its last step, or a weight edit that overflowed)."""
    name = first_non_finite(model)  # shard by shard under FSDP, the verdict shared by every process
    if name is not None:
        raise TrainingDiverged(
            f"Not saving to {portable_path(where)!r}: parameter {name} holds NaN or infinite "
            "values (the run diverged). Lower the learning rate (or the edit's scale)."
        )


class GuardedTrainer(Trainer):
    """`transformers.Trainer` for plain fine-tuning (TOFU fine-tunes, the augmentation phase of RKL-U) that stops at the
    first non-finite loss (checked before backward) or gradient norm (:class:`DivergenceGuard`).

    Args:
        divergence_hint: the likely cause printed when it stops (default: :func:`divergence_hint` of ``args``).
        *args, **kwargs: as for `transformers.Trainer`.
    """

    def __init__(self, *args, divergence_hint: str | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        check_sharding_engaged(self)
        self.divergence_hint = divergence_hint
        self.add_callback(DivergenceGuard(divergence_hint))

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        result = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        stop_if_non_finite(
            result[0] if return_outputs else result,
            self.state.global_step + 1,
            self.divergence_hint or divergence_hint(self.args),
        )
        return result
