"""TOFU (Maini et al. 2024) as `datasets.Dataset`s: from a local folder of JSON Lines files or the hub."""

from __future__ import annotations

import os
from pathlib import Path

from datasets import Dataset, load_dataset

from ..offline import hub_advice, hub_problem, offline_variables

TOFU_HUB_ID = "locuslab/TOFU"
TOFU_DIR_ENV = "RKLU_TOFU_DIR"

#: Every config of the hub dataset, with the fields its rows carry.
TOFU_CONFIGS = (
    "full",
    "forget01",
    "forget05",
    "forget10",
    "retain90",
    "retain95",
    "retain99",
    "forget01_perturbed",
    "forget05_perturbed",
    "forget10_perturbed",
    "retain_perturbed",
    "real_authors_perturbed",
    "world_facts_perturbed",
    "real_authors",
    "world_facts",
    "holdout01",
    "holdout05",
    "holdout10",
)

#: forget split -> its complementary retain split (the oracle trained without the forget set).
RETAIN_OF_FORGET = {"forget01": "retain99", "forget05": "retain95", "forget10": "retain90"}
FORGET_OF_RETAIN = {v: k for k, v in RETAIN_OF_FORGET.items()}
#: TOFU's holdout authors of each forget split: as many items, in no training split (the audit's non-members, the
#: oracle-free epoch rule's comparison set)
HOLDOUT_OF_FORGET = {"forget01": "holdout01", "forget05": "holdout05", "forget10": "holdout10"}


class DataUnavailableError(RuntimeError):
    """Neither a local copy nor the hub could provide the requested data."""


def resolve_tofu_dir(data_dir: str | os.PathLike | None = None) -> Path | None:
    """The local TOFU folder: ``data_dir`` if given, else ``$RKLU_TOFU_DIR``, else ``None`` (use the hub)."""
    chosen = data_dir if data_dir is not None else os.environ.get(TOFU_DIR_ENV)
    if not chosen:
        return None
    path = Path(chosen).expanduser()
    if not path.is_dir():
        raise DataUnavailableError(f"TOFU data_dir {str(path)!r} is not a directory.")
    return path


def load_tofu(config: str, data_dir: str | os.PathLike | None = None) -> Dataset:
    """Load one TOFU config as a `datasets.Dataset`.

    Args:
        config: one of :data:`TOFU_CONFIGS` (e.g. ``"forget10"``, ``"retain_perturbed"``).
        data_dir: folder holding ``<config>.jsonl`` or ``<config>.json``; defaults to ``$RKLU_TOFU_DIR``. Without
            either, the hub dataset ``locuslab/TOFU`` is used.

    Raises:
        ValueError: unknown config.
        DataUnavailableError: no local file and the hub is unreachable (the message names both ways out).
    """
    if config not in TOFU_CONFIGS:
        raise ValueError(f"Unknown TOFU config {config!r}; choose one of: {', '.join(TOFU_CONFIGS)}.")
    local = resolve_tofu_dir(data_dir)
    if local is not None:
        for suffix in (".jsonl", ".json"):
            path = local / f"{config}{suffix}"
            if path.is_file():
                return _load_local(path, config)
        raise DataUnavailableError(
            f"TOFU config {config!r}: neither {config}.jsonl nor {config}.json is in {str(local)!r}. "
            f"Point data_dir / ${TOFU_DIR_ENV} at a folder with the TOFU files, or unset it to use the hub "
            f"dataset {TOFU_HUB_ID}."
        )
    problem = hub_problem()
    if problem is not None and not offline_variables():  # unreachable: say so now (offline: try the HF cache first)
        raise DataUnavailableError(
            f"TOFU config {config!r}: no local copy and the Hugging Face hub cannot be used ({problem}). Pass "
            f"--data_dir <folder with {config}.jsonl> (data_dir=... in Python) or set ${TOFU_DIR_ENV}, "
            f"{hub_advice(problem)}."
        )
    try:
        return load_dataset(TOFU_HUB_ID, config, split="train")
    except Exception as exc:  # offline without a cached copy, missing repo: all end the same way for the user
        raise DataUnavailableError(
            f"TOFU config {config!r} could not be loaded from the hub ({TOFU_HUB_ID}): "
            f"{type(exc).__name__}: {str(exc)[:200]}. Pass --data_dir <folder with {config}.jsonl> (data_dir=... in "
            f"Python) or set ${TOFU_DIR_ENV}, {hub_advice(problem or '')}."
        ) from exc


def _load_local(path: Path, config: str) -> Dataset:
    """One local TOFU file; an empty or unparsable file is an error that names it."""
    if path.stat().st_size == 0 or not path.read_text(encoding="utf-8", errors="replace").strip():
        raise DataUnavailableError(
            f"TOFU config {config!r}: {str(path)!r} is empty (expected one JSON object per line)."
        )
    try:
        dataset = load_dataset("json", data_files=str(path), split="train")
    except Exception as exc:  # datasets wraps JSON errors in several exception types
        raise DataUnavailableError(
            f"TOFU config {config!r}: {str(path)!r} could not be parsed as JSON Lines ({type(exc).__name__}: "
            f"{str(exc)[:200]})."
        ) from exc
    if len(dataset) == 0:
        raise DataUnavailableError(f"TOFU config {config!r}: {str(path)!r} holds no rows.")
    return dataset


def tofu_available(data_dir: str | os.PathLike | None = None, config: str = "forget01") -> bool:
    """Whether :func:`load_tofu` can provide ``config`` here (local copy or hub)."""
    try:
        load_tofu(config, data_dir)
    except DataUnavailableError:
        return False
    return True
