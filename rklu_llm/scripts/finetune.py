"""Fine-tune a model on TOFU (``full`` or a ``retainXX`` oracle), save it, evaluate it and store the evaluation.

The ``full`` model is what unlearning starts from; a ``retainXX`` model never saw the matching forget set, and its
stored ``tofu_eval.json`` is the reference of forget quality for that split.

    python recipes/finetune_tofu.py --split full --output_dir runs/full --data_dir data/tofu
    accelerate launch recipes/finetune_tofu.py --split retain90 --output_dir runs/retain90 \
        --data_dir data/tofu --num_train_epochs 5 --learning_rate 1e-5 --bf16
    python recipes/finetune_tofu.py --config finetune.yaml

Flags: FinetuneArguments below, rklu_llm.eval.arguments.TofuEvalArguments and every transformers.TrainingArguments
field.

As in ``rklu_llm.scripts.unlearn``: every input is checked before a model is loaded, the output folder is locked and
holds one run (a rerun resumes it from its newest complete checkpoint; ``--overwrite_output_dir`` starts over), and a
non-finite loss or gradient norm stops the run before anything is saved.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field

from transformers import TrainingArguments

from rklu_llm import DEFAULT_MODEL, load_model
from rklu_llm.cli import parse_arguments
from rklu_llm.data import FORGET_OF_RETAIN, QACollator, check_qa, load_tofu, tokenize_qa
from rklu_llm.eval.arguments import TofuEvalArguments, evaluate_saved
from rklu_llm.io import data_fingerprint
from rklu_llm.models import add_lora, check_model_source, check_output_dir, lora_config, staged_save
from rklu_llm.run_state import (
    GuardedTrainer,
    TrainingDiverged,
    begin_run,
    check_training_arguments,
    console_logging,
    finish_run,
    model_identity,
    run_lock,
    training_settings,
    without_secrets,
)

logger = logging.getLogger(__name__)

SPLITS = ("full", *FORGET_OF_RETAIN)


@dataclass
class FinetuneArguments:
    model: str = field(default=DEFAULT_MODEL, metadata={"help": "Hub id, local dir or embedded:<name>."})
    split: str = field(default="full", metadata={"help": f"TOFU training split, one of {SPLITS}."})
    data_dir: str | None = field(default=None, metadata={"help": "Local TOFU folder (default: $RKLU_TOFU_DIR, hub)."})
    max_length: int = field(default=512, metadata={"help": "Maximum tokens of prompt + answer."})
    max_train_items: int | None = field(default=None, metadata={"help": "Train on the first N items only."})
    use_lora: bool = field(default=False, metadata={"help": "Fine-tune a LoRA adapter (merged on save)."})
    lora_r: int = field(default=16, metadata={"help": "LoRA rank."})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA alpha."})
    eval_forget_splits: str | None = field(
        default=None,
        metadata={
            "help": "Comma-separated forget splits to evaluate (default: all three for full, the "
            "complement for retainXX)."
        },
    )


@dataclass
class FinetuneTrainingArguments(TrainingArguments):
    """TOFU's own fine-tuning settings as defaults (AdamW, lr 1e-5, 5 epochs, weight decay 0.01, 1 warm-up epoch)."""

    learning_rate: float = field(default=1e-5, metadata={"help": "Peak learning rate."})
    num_train_epochs: float = field(default=5.0, metadata={"help": "Epochs."})
    weight_decay: float = field(default=0.01, metadata={"help": "AdamW weight decay."})
    warmup_steps: float = field(default=0.2, metadata={"help": "Warm-up steps, or a ratio of all steps if < 1."})
    save_strategy: str = field(default="epoch", metadata={"help": "Checkpoint every epoch (resumable)."})
    save_total_limit: int | None = field(
        default=1,
        metadata={"help": "Keep only the last checkpoint (weights + AdamW moments: about 3x the model's size)."},
    )
    logging_steps: float = field(default=10, metadata={"help": "Log every N steps."})
    overwrite_output_dir: bool = field(
        default=False,
        metadata={"help": "Start over in an output_dir that holds another run (its files are deleted first)."},
    )

    def __post_init__(self):
        check_training_arguments(self)
        super().__post_init__()

    def __getstate__(self):
        """Pickled (``training_args.bin``) without ``hub_token`` or any token."""
        return without_secrets(self.__dict__)


def forget_splits_of(script: FinetuneArguments) -> list[str]:
    """The forget splits to evaluate: ``--eval_forget_splits``, else all three for ``full``, else the complement."""
    if script.eval_forget_splits:
        return [split.strip() for split in script.eval_forget_splits.split(",") if split.strip()]
    return ["forget01", "forget05", "forget10"] if script.split == "full" else [FORGET_OF_RETAIN[script.split]]


def validate(script: FinetuneArguments, evaluation: TofuEvalArguments, training: FinetuneTrainingArguments) -> None:
    """The checks of arguments and paths (each raises with what to do); data and evaluation inputs are read next, all
    before a model is loaded."""
    if script.split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {script.split!r}")
    for name, least in (("max_train_items", 1), ("max_length", 2), ("lora_r", 1)):
        value = getattr(script, name)
        if value is not None and value < least:
            raise ValueError(f"{name} must be >= {least} (got {value}).")
    if not forget_splits_of(script):
        raise ValueError("--eval_forget_splits names no split.")
    check_model_source(script.model)
    check_output_dir(training.output_dir, model_path=script.model)


ARGUMENTS = (FinetuneArguments, TofuEvalArguments, FinetuneTrainingArguments)


def main(argv: list[str] | None = None) -> dict | None:
    script, evaluation, training = parse_arguments(ARGUMENTS, argv)
    console_logging()
    validate(script, evaluation, training)
    data = load_tofu(script.split, script.data_dir)  # fails here, before the model, when TOFU is unavailable
    if script.max_train_items is not None:
        data = data.select(range(min(script.max_train_items, len(data))))
    check_qa(data, f"TOFU {script.split}")
    evaluation.check_inputs(forget_splits_of(script), script.data_dir)
    logger.info("inputs checked; loading %s", script.model)

    with run_lock(training.output_dir, main_process=training.process_index == 0):
        model, tokenizer = load_model(script.model)
        base_model = model_identity(model)
        if script.use_lora:
            model = add_lora(model, lora_config(script.lora_r, script.lora_alpha), training.seed)
        train_set = tokenize_qa(data, tokenizer, script.max_length).select_columns(["input_ids", "labels"])
        fingerprint = {
            "base_model": base_model,
            "data": {"split": script.split, "items": len(train_set), "sha256": data_fingerprint(train_set.to_dict())},
            "settings": {"use_lora": script.use_lora, "lora_r": script.lora_r, "lora_alpha": script.lora_alpha},
            "training": training_settings(training),
        }
        trainer = GuardedTrainer(
            model=model,
            args=training,
            train_dataset=train_set,
            processing_class=tokenizer,
            data_collator=QACollator(tokenizer.pad_token_id),
        )
        checkpoint = begin_run(training, "finetune", fingerprint)
        logger.info("model loaded; training starts")
        try:
            train_result = trainer.train(resume_from_checkpoint=checkpoint)
        except TrainingDiverged:
            finish_run(training, trainer.state.global_step, status="diverged")
            raise
        if script.use_lora:  # save a plain model: merge the adapter into the base weights
            trainer.model = trainer.accelerator.unwrap_model(trainer.model).merge_and_unload()
        metrics = {"split": script.split, "train_items": len(train_set), **train_result.metrics}
        staged_save(
            trainer,
            training.output_dir,
            lambda staging: (staging / "train_metrics.json").write_text(json.dumps(metrics, indent=2)),
        )
        finish_run(training, trainer.state.global_step)
        if evaluation.skip_eval or not trainer.is_world_process_zero():
            return None

        del trainer, model
        return evaluate_saved(training.output_dir, evaluation, forget_splits_of(script), script.data_dir)


if __name__ == "__main__":
    main()
