"""TA (task arithmetic): ``theta_u = theta_o - ta_scale * (theta_a - theta_o)`` with the augmented model of RKL-U; a
weight edit, no training loop."""

from __future__ import annotations

from pathlib import Path

from peft import PeftModel
from transformers import AutoModelForCausalLM

from ..models import copy_model
from ..teacher import is_adapter_dir, task_arithmetic
from .entry import Method


def edit(student, augmented_dir: Path, config) -> dict:
    """Edit ``student`` (unwrapped) in place away from the augmented model in ``augmented_dir`` (full weights, or a
    LoRA adapter merged into a copy of the student); returns the metrics to log."""
    if is_adapter_dir(augmented_dir):
        augmented = PeftModel.from_pretrained(copy_model(student)[0], augmented_dir).merge_and_unload()
    else:
        augmented = AutoModelForCausalLM.from_pretrained(augmented_dir, dtype=next(student.parameters()).dtype)
    norm = task_arithmetic(student, augmented, config.ta_scale)
    del augmented
    return {"ta/scale": config.ta_scale, "ta/task_vector_norm": norm}


def check_ta(config) -> None:
    if config.use_lora:
        raise ValueError("ta edits the full weights; it cannot run through a LoRA student (set use_lora=False).")


def edit_card_lines(config) -> list[str]:
    return [f"- **Edit:** `theta = theta_o - {config.ta_scale} * (theta_a - theta_o)`"]


TA = Method(
    loss="task arithmetic: theta_o - scale * (theta_a - theta_o)",
    needs_augmented=True,
    trains=False,
    edit=edit,
    card_fields=("ta_scale", "augment_epochs", "augment_learning_rate", "augment_lora"),
    card_lines=edit_card_lines,
    check=check_ta,
)
