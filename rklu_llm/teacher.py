"""The augmented model (phase 1 of RKL-U, also the input of task arithmetic) and task arithmetic itself.

Phase 1 fine-tunes a copy of the original on the forget set with the ordinary NLL loss, as a full copy or as a LoRA
adapter on the frozen original, and saves it under ``<output_dir>/augmented``. A marker file written last makes a
finished augmentation reusable: a resumed run, or task arithmetic after RKL-U, does not repeat it. The teacher logits
themselves (``l_o - alpha * relu(l_a - l_o)``) are computed on the fly during distillation, see
:func:`rklu_llm.losses.logit_subtraction_teacher` and :func:`rklu_llm.losses.distillation_kl`.
"""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import torch
from datasets import Dataset
from transformers import Trainer, TrainingArguments

from .data.qa import QACollator
from .models import lora_config, publish_dir

AUGMENTED_MARKER = "rklu_augmented.json"

#: TrainingArguments fields the augmentation inherits from the unlearning config (distribution, precision, batch).
_INHERITED_FIELDS = (
    "per_device_train_batch_size",
    "gradient_accumulation_steps",
    "weight_decay",
    "lr_scheduler_type",
    "max_grad_norm",
    "optim",
    "adam_beta1",
    "adam_beta2",
    "adam_epsilon",
    "bf16",
    "fp16",
    "seed",
    "data_seed",
    "logging_steps",
    "disable_tqdm",
    "use_cpu",
    "deepspeed",
    "fsdp",
    "fsdp_config",
    "gradient_checkpointing",
    "gradient_checkpointing_kwargs",
    "dataloader_num_workers",
    "ddp_find_unused_parameters",
)


def is_augmented_dir(path: str | Path) -> bool:
    """Whether ``path`` holds a finished augmented model (full weights or a LoRA adapter)."""
    path = Path(path)
    return (path / AUGMENTED_MARKER).is_file() or (path / "config.json").is_file() or (
        path / "adapter_config.json"
    ).is_file()


def is_adapter_dir(path: str | Path) -> bool:
    return (Path(path) / "adapter_config.json").is_file()


def augmentation_arguments(config, output_dir: str | Path) -> TrainingArguments:
    """TrainingArguments of phase 1, derived from an :class:`~rklu_llm.UnlearnConfig`."""
    inherited = {name: getattr(config, name) for name in _INHERITED_FIELDS}
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


def build_augmented_model(model, tokenizer, forget: Dataset, config, output_dir: str | Path) -> Path:
    """Phase 1: NLL fine-tuning of a copy of ``model`` on the tokenized forget set; returns the saved directory.

    Args:
        model: the original model (a PEFT model is unloaded to its base first; the argument is never modified).
        tokenizer: saved beside a full augmented model.
        forget: tokenized forget set with ``input_ids`` and ``labels`` columns.
        config: the :class:`~rklu_llm.UnlearnConfig` (augment_* fields, LoRA settings, precision, distribution).
        output_dir: where the augmented model goes; reused without training when it already holds one.
    """
    output_dir = Path(output_dir)
    if (output_dir / AUGMENTED_MARKER).is_file():
        return output_dir
    from peft import PeftModel, get_peft_model

    augmented = copy.deepcopy(model)
    if isinstance(augmented, PeftModel):
        augmented = augmented.unload()
    for parameter in augmented.parameters():
        parameter.requires_grad_(True)
    augmented.train()
    if config.augment_lora:
        augmented = get_peft_model(
            augmented, lora_config(config.lora_r, config.lora_alpha, config.lora_dropout, config.lora_target_modules)
        )
    staging = output_dir.parent / f".{output_dir.name}-staging"
    trainer = Trainer(
        model=augmented,
        args=augmentation_arguments(config, staging / "trainer"),
        train_dataset=forget.select_columns(["input_ids", "labels"]),
        data_collator=QACollator(tokenizer.pad_token_id),
        processing_class=tokenizer,
    )
    result = trainer.train()
    trainer.save_model(str(staging))
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
