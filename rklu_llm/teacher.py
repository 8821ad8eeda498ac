"""The augmented model (phase 1 of RKL-U, also the input of task arithmetic) and task arithmetic itself.

Phase 1 fine-tunes a copy of the original on the forget set with the ordinary NLL loss, as a full copy or as a LoRA
adapter on the frozen original, and saves it in ``config.augmented_output_dir`` (default ``<output_dir>.augmented``,
beside the unlearned model's folder and never inside it: the augmented model holds the forget set's knowledge,
amplified, so it must not be pushed or shared with the unlearned model). A marker file written last records its
fingerprint (:func:`augmented_fingerprint`: base model, forget data, augment_* and LoRA settings); a finished
augmentation with the same fingerprint is reused (a resumed run, or task arithmetic given
``augmented_model_path=<that folder>``), one with another fingerprint is refused. The teacher logits
themselves (``l_o - alpha * relu(l_a - l_o)``) are computed on the fly during distillation, see
:func:`rklu_llm.losses.logit_subtraction_teacher` and :func:`rklu_llm.losses.distillation_kl`.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import torch
from datasets import Dataset
from transformers import AutoConfig, TrainingArguments

from .data.qa import QACollator
from .field_tags import AUGMENTATION_FIELDS, LORA_SHAPE, tagged_fields
from .models import add_lora, copy_model, lora_config, publish_dir
from .paths import portable_path
from .run_state import GuardedTrainer, RunConflictError, check_finite_weights, differences, training_settings

logger = logging.getLogger(__name__)

AUGMENTED_MARKER = "rklu_augmented.json"


def is_augmented_dir(path: str | Path) -> bool:
    """Whether ``path`` holds a finished augmented model (full weights or a LoRA adapter)."""
    path = Path(path)
    return (
        (path / AUGMENTED_MARKER).is_file()
        or (path / "config.json").is_file()
        or (path / "adapter_config.json").is_file()
    )


def is_adapter_dir(path: str | Path) -> bool:
    return (Path(path) / "adapter_config.json").is_file()


def augmented_fingerprint(config, base_model: dict, forget: dict) -> dict:
    """What defines an augmented model: the base model's identity (:func:`rklu_llm.run_state.model_identity`), the
    forget data (``forget_items`` / ``forget_sha256`` of :meth:`ForgetRetainDataset.fingerprint`), the augment_* and
    LoRA settings and the inherited optimisation settings."""
    training = training_settings(config)
    inherited = {k: training[k] for k in training if k in AUGMENTATION_FIELDS or k == "world_size"}
    lora = {name: getattr(config, name) for name in tagged_fields(config, LORA_SHAPE)}
    return {
        "base_model": base_model,
        "forget": {"items": forget["forget_items"], "sha256": forget["forget_sha256"]},
        "augment": {
            "epochs": config.augment_epochs,
            "max_steps": config.augment_max_steps,
            "learning_rate": config.augment_learning_rate,
            "lora": config.augment_lora,
            **(lora if config.augment_lora else {}),
        },
        "training": inherited,
    }


def read_marker(path: str | Path) -> dict | None:
    """The marker of an augmented model folder built by :func:`build_augmented_model`, or ``None``."""
    marker = Path(path) / AUGMENTED_MARKER
    if not marker.is_file():
        return None
    try:
        return json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def check_augmented_model(path: str | Path, model_config, fingerprint: dict | None = None) -> None:
    """Check a given augmented model against the model being unlearned, before any training.

    A full model must share the architecture (vocabulary, hidden size, layers); a folder built by this toolkit must
    also record the same base model and forget data as ``fingerprint`` (:func:`augmented_fingerprint`).

    Raises:
        ValueError: the folder holds no model or adapter, or another model / another forget set made it.
    """
    path = Path(path)
    if not is_augmented_dir(path):
        raise ValueError(
            f"augmented_model_path {str(path)!r} holds neither a model (config.json) nor a LoRA adapter "
            "(adapter_config.json)."
        )
    if not is_adapter_dir(path):
        theirs = AutoConfig.from_pretrained(path)
        for name in ("vocab_size", "hidden_size", "num_hidden_layers"):
            a, b = getattr(theirs, name, None), getattr(model_config, name, None)
            if a != b:
                raise ValueError(
                    f"augmented_model_path {str(path)!r} does not fit the model being unlearned: its {name} is {a}, "
                    f"the model's {b}. It was made from another base model; build it from this one (leave "
                    "augmented_model_path out)."
                )
    recorded = (read_marker(path) or {}).get("fingerprint")
    if recorded and fingerprint:
        changed = differences(
            {k: recorded.get(k) for k in ("base_model", "forget")},
            {k: fingerprint[k] for k in ("base_model", "forget")},
        )
        if changed:
            raise ValueError(
                f"augmented_model_path {str(path)!r} was made for another run:\n  "
                + "\n  ".join(changed)
                + "\nPass the augmented model of this base model and forget set, or leave augmented_model_path out to "
                "build one."
            )


def augmentation_arguments(config, output_dir: str | Path) -> TrainingArguments:
    """TrainingArguments of phase 1, derived from an :class:`~rklu_llm.UnlearnConfig`."""
    inherited = {name: getattr(config, name) for name in AUGMENTATION_FIELDS}
    epochs = config.augment_epochs
    return TrainingArguments(
        output_dir=str(output_dir),
        num_train_epochs=epochs,
        max_steps=config.augment_max_steps,
        learning_rate=config.augment_learning_rate,
        warmup_steps=min(1.0 / epochs, 0.999) if epochs > 1 else 0.0,
        save_strategy="no",
        report_to="none",
        remove_unused_columns=False,
        **inherited,
    )


def build_augmented_model(
    model, tokenizer, forget: Dataset, config, output_dir: str | Path, fingerprint: dict | None = None
) -> Path:
    """Phase 1: NLL fine-tuning of a copy of ``model`` on the tokenized forget set; returns the saved directory.

    Args:
        model: the original model (a PEFT model is unloaded to its base first; the argument is never modified).
        tokenizer: saved beside a full augmented model.
        forget: tokenized forget set with ``input_ids`` and ``labels`` columns.
        config: the :class:`~rklu_llm.UnlearnConfig` (augment_* fields, LoRA settings, precision, distribution).
        output_dir: where the augmented model goes; a finished one with the same ``fingerprint`` is reused.
        fingerprint: :func:`augmented_fingerprint` of this run, recorded in the marker (``None``: reuse any finished
            augmented model in ``output_dir`` unchecked; the caller vouches for it).

    Raises:
        RunConflictError: ``output_dir`` holds an augmented model with another fingerprint (and
            ``config.overwrite_output_dir`` is not set; with it, that model is deleted and rebuilt).
        TrainingDiverged: the fine-tune diverged (nothing is saved).
    """
    output_dir = Path(output_dir)
    marker = read_marker(output_dir)
    if marker is not None:
        changed = [] if fingerprint is None else differences(marker.get("fingerprint") or {}, fingerprint)
        if not changed:
            logger.warning("Reusing the augmented model in %s (same fingerprint).", portable_path(output_dir))
            return output_dir
        if not config.overwrite_output_dir:
            raise RunConflictError(
                f"{portable_path(output_dir)!r} holds an augmented model made for another run:\n  "
                + "\n  ".join(changed[:20])
                + "\nPass --overwrite_output_dir to rebuild it, or choose another "
                "--augmented_dir / --output_dir."
            )
        logger.warning("--overwrite_output_dir: rebuilding the augmented model in %s", portable_path(output_dir))
        shutil.rmtree(output_dir)
    augmented, _ = copy_model(model)
    for parameter in augmented.parameters():
        parameter.requires_grad_(True)
    augmented.train()
    if config.augment_lora:
        augmented = add_lora(
            augmented,
            lora_config(config.lora_r, config.lora_alpha, config.lora_dropout, config.lora_target_modules),
            config.seed,
        )
    staging = output_dir.parent / f".{output_dir.name}-staging"
    trainer = GuardedTrainer(
        model=augmented,
        args=augmentation_arguments(config, staging / "trainer"),
        train_dataset=forget.select_columns(["input_ids", "labels"]),
        data_collator=QACollator(tokenizer.pad_token_id),
        processing_class=tokenizer,
        divergence_hint=f"the augmentation fine-tune (phase 1): augment_learning_rate={config.augment_learning_rate:g} "
        "may be too high (try 10x lower)" + ("; fp16 overflows easily (use bf16)" if config.fp16 else ""),
    )
    try:
        result = trainer.train()
        check_finite_weights(trainer.model, str(output_dir))
        trainer.save_model(str(staging))
    except BaseException:
        if trainer.is_world_process_zero():
            shutil.rmtree(staging, ignore_errors=True)
        raise
    if trainer.is_world_process_zero():
        shutil.rmtree(staging / "trainer", ignore_errors=True)
        (staging / AUGMENTED_MARKER).write_text(
            json.dumps(
                {
                    "kind": "lora" if config.augment_lora else "full",
                    "epochs": config.augment_epochs,
                    "max_steps": config.augment_max_steps,
                    "learning_rate": config.augment_learning_rate,
                    "forget_items": len(forget),
                    "final_train_loss": result.training_loss,
                    "fingerprint": fingerprint,
                },
                indent=2,
            )
        )
        publish_dir(staging, output_dir)
    trainer.accelerator.wait_for_everyone()
    del trainer, augmented
    return output_dir


@torch.no_grad()
def task_arithmetic(original: torch.nn.Module, augmented: torch.nn.Module, scale: float) -> float:
    """In place: ``theta_o <- theta_o - scale * (theta_a - theta_o)`` for every parameter.

    Args:
        original: the model to edit (its parameters are overwritten).
        augmented: a model of the same architecture, fine-tuned on the forget set (full weights).
        scale: ``lambda_ta`` (paper: 2.5).

    Returns:
        The L2 norm of the task vector ``theta_a - theta_o``.

    Raises:
        ValueError: the two models' parameter names or shapes differ.
    """
    own = dict(original.named_parameters())
    other = dict(augmented.named_parameters())
    if own.keys() != other.keys():
        missing = sorted(set(own) ^ set(other))[:5]
        raise ValueError(f"Task arithmetic needs the same architecture; parameter names differ, e.g. {missing}.")
    shapes = [(n, own[n].shape, other[n].shape) for n in own if own[n].shape != other[n].shape]
    if shapes:
        name, a, b = shapes[0]
        raise ValueError(f"Task arithmetic needs the same architecture; {name} is {tuple(a)} vs {tuple(b)}.")
    squared = 0.0
    for name, theta_o in own.items():
        delta = other[name].to(device=theta_o.device, dtype=torch.float32) - theta_o.float()
        squared += float(delta.pow(2).sum())
        theta_o.copy_((theta_o.float() - scale * delta).to(theta_o.dtype))
    return squared**0.5
