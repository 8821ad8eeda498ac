"""What defines an unlearning run's result (the fingerprint in its run record), and where a run resumes.

The run record itself (lock, ``_rklu_run.json``, complete checkpoints) is :mod:`rklu_llm.run_state`'s; this module
says what goes into an unlearning run's fingerprint and ties :meth:`UnlearnTrainer.train
<rklu_llm.trainer.UnlearnTrainer.train>`'s ``resume_from_checkpoint`` to it.
"""

from __future__ import annotations

from dataclasses import fields

from transformers import TrainingArguments

from .field_tags import NOT_IN_FINGERPRINT, tagged_fields
from .paths import portable_path
from .run_state import begin_run, checkpoint_problem, training_settings
from .teacher import augmented_fingerprint, read_marker


def run_fingerprint(args, base_identity: dict, data: dict) -> dict:
    """Everything that defines an unlearning run's result, as recorded in ``<output_dir>/_rklu_run.json``.

    ``base_model`` (``base_identity``, :func:`rklu_llm.run_state.model_identity`), ``data`` (``data``,
    :meth:`ForgetRetainDataset.fingerprint`), ``method`` (every UnlearnConfig field of its own that changes the
    result), ``training`` (the TrainingArguments that do, :func:`rklu_llm.run_state.training_settings`) and, for
    methods that use it, ``augmented`` (the fingerprint of the augmented model it builds, or the given one's path and
    recorded fingerprint).
    """
    inherited = {spec.name for spec in fields(TrainingArguments)}
    neutral = tagged_fields(args, NOT_IN_FINGERPRINT)  # settings that do not change the result
    method = {
        spec.name: getattr(args, spec.name)
        for spec in fields(args)
        if spec.init and spec.name not in inherited and spec.name not in neutral
    }
    fingerprint = {"base_model": base_identity, "data": data, "method": method, "training": training_settings(args)}
    if args.spec.needs_augmented:
        if args.augmented_model_path is None:
            fingerprint["augmented"] = augmented_fingerprint(args, base_identity, data)
        else:
            fingerprint["augmented"] = {
                "path": portable_path(args.augmented_model_path),
                "fingerprint": (read_marker(args.augmented_model_path) or {}).get("fingerprint"),
            }
    return fingerprint


def begin_unlearning_run(args, fingerprint: dict, resume_from_checkpoint):
    """Tie the run to ``args.output_dir`` (:func:`rklu_llm.run_state.begin_run`: lock, run record checked against
    ``fingerprint`` and written) and return the checkpoint to resume from: for ``True`` the newest complete one (or
    ``None``), a given path when it is complete (else ValueError), anything else as given."""
    checkpoint = begin_run(args, "unlearn", fingerprint, resume=resume_from_checkpoint is True)
    if resume_from_checkpoint is True:
        return checkpoint
    if resume_from_checkpoint:
        problem = checkpoint_problem(resume_from_checkpoint)
        if problem is not None:
            raise ValueError(
                f"Cannot resume from {portable_path(resume_from_checkpoint)!r}: {problem}. Pass "
                "resume_from_checkpoint=True to use the newest complete checkpoint."
            )
    return resume_from_checkpoint
