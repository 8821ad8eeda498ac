"""Files of runs and evaluations: atomic JSON writes, a per-(set, metric) result cache, a cheap weights digest.

Every evaluator writes its result with :func:`write_json_atomic` (a temporary file in the same folder, then
``os.replace``: a reader never sees half a file) and caches each costly piece (likelihoods of one set, generations of
one set, ...) with :class:`MetricCache`, so an interrupted evaluation resumes where it stopped. A cache entry holds its
key: the set, the metric, the model's name and :func:`model_fingerprint`, a digest of the data, and the settings that
change the numbers; an entry written for other weights, data or settings is recomputed, with a warning.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import tempfile
import warnings
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch

from .paths import portable_path

__all__ = [
    "to_builtin",
    "write_json_atomic",
    "waiting_lock",
    "data_fingerprint",
    "model_fingerprint",
    "MetricCache",
    "model_name",
    "evaluated_model",
    "Evaluation",
    "metric_differences",
    "REBUILD_TOLERANCE",
]

logger = logging.getLogger(__name__)


def to_builtin(obj):
    """``obj`` with numpy arrays / scalars and paths turned into JSON-serialisable Python values (recursively)."""
    if isinstance(obj, Mapping):
        return {str(k): to_builtin(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_builtin(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return to_builtin(obj.tolist())
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    if isinstance(obj, Path):
        return str(obj)
    return obj


def write_json_atomic(path: str | os.PathLike, obj) -> None:
    """Write ``obj`` to ``path`` via a temporary file in the same folder and ``os.replace``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(to_builtin(obj), handle, indent=1)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def waiting_lock(path: str | os.PathLike):
    """Hold an exclusive lock on ``<path>.lock`` for the block, waiting while another process holds it.

    For read-modify-write updates and one-time builds that several processes sharing a folder may reach together
    (``fcntl.flock``: the kernel drops the lock of a process that dies, so a killed holder never blocks the others).
    The lock file stays behind, empty."""
    lock = Path(f"{path}.lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


#: a rebuilt model is the one a committed result was measured on when every metric of its evaluation is within this
REBUILD_TOLERANCE = 1e-3


def metric_differences(here: dict, there: dict, tolerance: float) -> tuple[float, list[str]]:
    """How far labelled evaluation rows (``here``, e.g. ``{"original": row, "oracle": row}``) are from others
    (``there``, the same labels): the largest absolute difference over ``there``'s float metrics (timings, keys
    ending in ``seconds``, left out), and a line for each metric that differs by more than ``tolerance`` or that
    ``here`` lacks. Used to tell a rebuilt model from the one a committed result was measured on."""
    largest, problems = 0.0, []
    for label, row in there.items():
        mine_row = here.get(label) or {}
        for name, value in (row or {}).items():
            if not isinstance(value, float) or name.endswith("seconds"):
                continue
            mine = mine_row.get(name)
            if not isinstance(mine, (int, float)) or isinstance(mine, bool):
                problems.append(f"{label} {name}: missing here")
                continue
            difference = abs(mine - value)
            largest = max(largest, difference)
            if not difference <= tolerance:  # a NaN differs
                problems.append(f"{label} {name}: {mine:.6g} here, {value:.6g} committed")
    return largest, problems


def data_fingerprint(obj) -> str:
    """SHA-256 of ``obj``'s canonical JSON (sorted keys): changes whenever the evaluated data changes."""
    return hashlib.sha256(json.dumps(to_builtin(obj), sort_keys=True).encode()).hexdigest()


def model_fingerprint(model, sample: int = 4096) -> str | None:
    """A cheap digest of the weights: names, shapes and up to ``sample`` evenly spaced values of every parameter.

    Any training step moves (nearly) every value of the tensors it updates, so a changed checkpoint saved under the
    same path gets another digest. ``None`` when the weights cannot be read (meta / offloaded parameters).
    """
    digest = hashlib.sha256()
    try:
        with torch.no_grad():
            for name, param in model.named_parameters():
                flat = param.detach().reshape(-1)
                values = flat[:: max(1, flat.numel() // sample)][:sample].float().cpu().numpy()
                digest.update(f"{name}{tuple(param.shape)}".encode())
                digest.update(values.tobytes())
    except (RuntimeError, NotImplementedError, ValueError):
        return None
    return digest.hexdigest()[:16]


class MetricCache:
    """``<output_dir>/<folder>/<set>__<metric>__<settings>.json``, each file holding its key and its data.

    Args:
        output_dir: the evaluation's output folder; ``None`` disables caching.
        folder: the cache folder's name inside ``output_dir`` (one per evaluator, e.g. ``tofu_eval_cache``).
        model_name: recorded in every key.
        model_fingerprint: :func:`model_fingerprint` of the evaluated weights, recorded in every key.
    """

    def __init__(
        self, output_dir: str | os.PathLike | None, folder: str, model_name: str, model_fingerprint: str | None
    ):
        self.folder = None if output_dir is None else Path(output_dir) / folder
        self.model_name = model_name
        self.model_fingerprint = model_fingerprint

    def _path(self, set_name: str, metric: str, settings: dict) -> Path:
        tag = "__".join(f"{k}-{'all' if v is None else v}" for k, v in sorted(settings.items()))
        return self.folder / f"{set_name}__{metric}__{tag}.json"

    def _key(self, set_name, metric, settings, fingerprint) -> dict:
        return {
            "set": set_name,
            "metric": metric,
            "model": self.model_name,
            "model_fingerprint": self.model_fingerprint,
            "data_sha256": fingerprint,
            **settings,
        }

    def load(self, set_name: str, metric: str, settings: dict, fingerprint: str):
        """The cached data, or ``None`` when absent, unreadable or written for another model / data / settings."""
        if self.folder is None:
            return None
        path = self._path(set_name, metric, settings)
        if not path.is_file():
            return None
        try:
            with open(path, encoding="utf-8") as handle:
                stored = json.load(handle)
        except (OSError, json.JSONDecodeError) as exc:
            warnings.warn(f"Ignoring unreadable cache file {path}: {exc}", UserWarning, stacklevel=2)
            return None
        if stored.get("key") != to_builtin(self._key(set_name, metric, settings, fingerprint)):
            warnings.warn(
                f"Cache file {path} was written for another model or other data; recomputing it.",
                UserWarning,
                stacklevel=2,
            )
            return None
        logger.info("%s / %s taken from %s", set_name, metric, path)
        return stored["data"]

    def save(self, set_name: str, metric: str, settings: dict, fingerprint: str, data) -> None:
        if self.folder is not None:
            key = self._key(set_name, metric, settings, fingerprint)
            write_json_atomic(self._path(set_name, metric, settings), {"key": key, "data": data})

    def get_or_compute(self, set_name: str, metric: str, settings: dict, fingerprint: str, compute):
        """The cached data, or ``compute()``'s (JSON-serialisable) result, cached."""
        data = self.load(set_name, metric, settings, fingerprint)
        if data is None:
            data = to_builtin(compute())
            self.save(set_name, metric, settings, fingerprint, data)
        return data


def model_name(model) -> str:
    """How an evaluated model is named in results: the folder or hub id it was loaded from by
    :func:`rklu_llm.load_model` (a LoRA adapter's folder, not its base), else its ``name_or_path``, as a portable path
    (never an absolute one)."""
    source = getattr(model, "rklu_source", None)
    if source:
        return source["model"]
    name = getattr(model, "name_or_path", None)
    if not name:
        name = getattr(getattr(model, "config", None), "_name_or_path", None)
    return portable_path(str(name)) if name else type(model).__name__


def evaluated_model(model) -> dict:
    """``{"model": ..., "base_model": ...}`` for a results file: what was evaluated and, for a LoRA adapter folder, the
    base model it was merged into (``base_model`` is absent otherwise)."""
    base = (getattr(model, "rklu_source", None) or {}).get("base_model")
    return {"model": model_name(model), **({"base_model": base} if base else {})}


class Evaluation:
    """The setup every evaluator shares: the result's header (the evaluated model, :func:`evaluated_model`, and the
    settings), the resumable :class:`MetricCache` under ``output_dir/<cache_folder>`` (keyed by the weights'
    :func:`model_fingerprint`), and the atomic write of ``output_dir/<result_file>`` when the evaluation ends.

    An evaluator fills :attr:`result` between the two and returns :meth:`finish`'s value::

        run = Evaluation(model, output_dir, "tofu_eval_cache", "tofu_eval.json", settings)
        scores = run.cache.get_or_compute(set_name, "likelihood", cache_settings, data_digest, compute)
        run.result["sets"] = ...
        return run.finish()

    Args:
        model: the evaluated model.
        output_dir: the evaluation's folder; ``None``: no cache and nothing written.
        cache_folder: the cache's folder inside ``output_dir``.
        result_file: the result's file name inside ``output_dir``.
        settings: the result's ``settings`` entry (JSON-ready; paths already portable).
    """

    def __init__(self, model, output_dir, cache_folder: str, result_file: str, settings: Mapping):
        self.output_dir = None if output_dir is None else Path(output_dir)
        fingerprint = model_fingerprint(model) if self.output_dir is not None else None
        self.cache = MetricCache(self.output_dir, cache_folder, model_name(model), fingerprint)
        self.result_file = result_file
        self.result: dict = {**evaluated_model(model), "settings": dict(settings)}

    def finish(self) -> dict:
        """The result as plain JSON values, written atomically to ``output_dir/<result_file>`` when there is one."""
        result = to_builtin(self.result)
        if self.output_dir is not None:
            write_json_atomic(self.output_dir / self.result_file, result)
        return result
