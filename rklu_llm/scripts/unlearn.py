"""Unlearn a TOFU forget set, then evaluate the result with the TOFU metrics.

Run by ``recipes/tofu_forget01.py`` / ``05`` / ``10`` (which only fix the split) and ``rklu-llm unlearn``.
Read top to bottom: arguments -> data (fails early when unavailable) -> model -> trainer -> save -> evaluation.

    # 1. the model that knows TOFU and the retain-only oracle (its evaluation is the forget-quality reference)
    python recipes/finetune_tofu.py --split full --output_dir runs/full --data_dir ../shared/data/tofu
    python recipes/finetune_tofu.py --split retain90 --output_dir runs/retain90 --data_dir ../shared/data/tofu
    # 2. unlearn forget10 with RKL-U (no retain data), evaluate, forget quality against the oracle
    accelerate launch recipes/tofu_forget10.py --model runs/full --output_dir runs/rklu_forget10 \
        --data_dir ../shared/data/tofu --retain_eval runs/retain90/tofu_eval.json
    # any method of the toolkit, LoRA, a retain term, a YAML config:
    python recipes/tofu_forget10.py --method npo --retain_mode rt --model runs/full --output_dir runs/npo_rt ...
    python recipes/tofu_forget10.py --config my_run.yaml --output_dir runs/x
    # forget quality after every epoch, and a full evaluation of the epoch where it peaks (the paper's protocol)
    python recipes/tofu_forget10.py --model runs/full --output_dir runs/rklu_10ep --num_train_epochs 10 \
        --retain_eval runs/retain90/tofu_eval.json --eval_every_epoch --data_dir ../shared/data/tofu

All fields of TofuArguments, rklu_llm.eval.arguments.TofuEvalArguments and rklu_llm.UnlearnConfig (and so of
transformers.TrainingArguments) are flags.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from transformers.trainer_utils import get_last_checkpoint

from rklu_llm import DEFAULT_MODEL, UnlearnConfig, UnlearnTrainer, load_model, load_refusals
from rklu_llm.cli import parse_arguments
from rklu_llm.eval.arguments import TofuEvalArguments, evaluate_saved
from rklu_llm.data import RETAIN_OF_FORGET, build_unlearning_dataset, load_tofu
from rklu_llm.eval.callback import TofuEvalCallback
from rklu_llm.eval.io import write_json_atomic
from rklu_llm.eval.tofu import summary_row
from rklu_llm.models import check_output_dir

EPOCHS_FILE = "tofu_eval_epochs.json"


@dataclass
class TofuArguments:
    model: str = field(
        default=DEFAULT_MODEL,
        metadata={"help": "Model to unlearn: hub id, local dir or embedded:<name>; normally the output of "
                  "finetune_tofu.py --split full."},
    )
    forget_split: str = field(default="forget10", metadata={"help": f"One of {sorted(RETAIN_OF_FORGET)}."})
    data_dir: str | None = field(default=None, metadata={"help": "Local TOFU folder (default: $RKLU_TOFU_DIR, hub)."})
    retain_eval: str | None = field(
        default=None,
        metadata={"help": "tofu_eval.json of the retain-only model (finetune_tofu.py --split retainXX): the "
                  "forget-quality reference. Without it forget quality is reported as missing."},
    )
    max_retain_items: int | None = field(default=None, metadata={"help": "Use only the first N retain items."})
    eval_every_epoch: bool = field(
        default=False,
        metadata={"help": "Follow forget quality after every epoch (forget-set likelihoods only; needs --retain_eval) "
                  "and fully evaluate the epoch where it peaks; writes tofu_eval_epochs.json. The saved model is "
                  "the final one."},
    )


ARGUMENTS = (TofuArguments, TofuEvalArguments, UnlearnConfig)


def main(default_split: str = "forget10", argv: list[str] | None = None) -> dict | None:
    # default_split is a default: a --config file or a --forget_split flag overrides it
    script, evaluation, config = parse_arguments(ARGUMENTS, argv, defaults={"forget_split": default_split})
    if script.forget_split not in RETAIN_OF_FORGET:
        raise ValueError(f"forget_split must be one of {sorted(RETAIN_OF_FORGET)}, got {script.forget_split!r}")
    check_output_dir(config.output_dir, model_path=script.model)
    if script.retain_eval is not None and not Path(script.retain_eval).is_file():
        raise FileNotFoundError(f"--retain_eval {script.retain_eval!r} does not exist (run finetune_tofu.py first).")
    if script.eval_every_epoch and (script.retain_eval is None or evaluation.skip_eval):
        raise ValueError("--eval_every_epoch picks epochs by forget quality: it needs --retain_eval, not --skip_eval.")

    # Data first: a missing dataset fails here, before any model is loaded.
    forget = load_tofu(script.forget_split, script.data_dir)
    retain = None
    if config.retain_mode != "none":
        retain = load_tofu(RETAIN_OF_FORGET[script.forget_split], script.data_dir)
        if script.max_retain_items is not None:
            retain = retain.select(range(min(script.max_retain_items, len(retain))))
    refusals = load_refusals(config.refusal_file) if config.spec.needs_refusals else None

    model, tokenizer = load_model(script.model)
    dataset = build_unlearning_dataset(tokenizer, forget, retain, refusals, config.max_length, config.seed)
    epochs = None
    if script.eval_every_epoch:  # final weights: evaluated below, from the saved model
        epochs = TofuEvalCallback(
            tokenizer, script.forget_split, script.data_dir, script.retain_eval, per_epoch="forget_quality",
            evaluate_final=False, **evaluation.evaluate_kwargs(),
        )
    trainer = UnlearnTrainer(
        model=model, args=config, train_dataset=dataset, processing_class=tokenizer,
        dataset_name=f"locuslab/TOFU:{script.forget_split}", callbacks=None if epochs is None else [epochs],
    )
    if epochs is not None and (trainer.is_fsdp_enabled or trainer.is_deepspeed_enabled and getattr(
            trainer.accelerator.state.deepspeed_plugin, "zero_stage", 0) == 3):
        raise ValueError("--eval_every_epoch evaluates on the main process alone, which sharded weights (FSDP, ZeRO-3) "
                         "do not allow: leave it out and evaluate the saved model.")
    last = get_last_checkpoint(config.output_dir) if Path(config.output_dir).is_dir() else None
    trainer.train(resume_from_checkpoint=last)
    trainer.save_model()
    if evaluation.skip_eval or not trainer.is_world_process_zero():
        return None

    del trainer, model
    result = evaluate_saved(config.output_dir, evaluation, (script.forget_split,), script.data_dir,
                            reference=script.retain_eval)
    if epochs is not None:
        write_epochs(Path(config.output_dir), epochs, result)
    return result


def write_epochs(output_dir: Path, callback: TofuEvalCallback, final_result: dict) -> None:
    """``tofu_eval_epochs.json``: the per-epoch rows, the final row and the fully evaluated peak-epoch row."""
    final = {"epoch": callback.history[-1]["epoch"] if callback.history else None, **summary_row(final_result)}
    peak = callback.peak
    if peak is None and callback.peak_epoch is not None and callback.peak_epoch == final["epoch"]:
        peak = final
    write_json_atomic(output_dir / EPOCHS_FILE, {"epochs": callback.history, "peak_epoch": callback.peak_epoch,
                                                 "peak": peak, "final": final})
    curve = [row.get(f"{callback.forget_split}_forget_quality") for row in callback.history]
    print(f"forget quality per epoch: {curve}; peak epoch {callback.peak_epoch} (see {output_dir / EPOCHS_FILE})")


if __name__ == "__main__":
    main()
