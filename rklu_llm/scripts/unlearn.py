"""Unlearn a TOFU forget set, then evaluate the result with the TOFU metrics.

Run by ``recipes/tofu_forget01.py`` / ``05`` / ``10`` (which only fix the split) and ``rklu-llm unlearn``.
Read top to bottom: arguments -> data (fails early when unavailable) -> model -> trainer -> save -> evaluation.

    # 1. the model that knows TOFU and the retain-only oracle (its evaluation is the forget-quality reference)
    python recipes/finetune_tofu.py --split full --output_dir runs/full --data_dir data/tofu
    python recipes/finetune_tofu.py --split retain90 --output_dir runs/retain90 --data_dir data/tofu
    # 2. unlearn forget10 with RKL-U (no retain data), evaluate, forget quality against the oracle
    accelerate launch recipes/tofu_forget10.py --model runs/full --output_dir runs/rklu_forget10 \
        --data_dir data/tofu --retain_eval runs/retain90/tofu_eval.json
    # any method of the toolkit, LoRA, a retain term, a YAML config:
    python recipes/tofu_forget10.py --method npo --retain_mode rt --model runs/full --output_dir runs/npo_rt ...
    python recipes/tofu_forget10.py --config my_run.yaml --output_dir runs/x
    # forget quality after every epoch, and a full evaluation of the epoch where it peaks (the paper's protocol)
    python recipes/tofu_forget10.py --model runs/full --output_dir runs/rklu_10ep --num_train_epochs 10 \
        --retain_eval runs/retain90/tofu_eval.json --eval_every_epoch --data_dir data/tofu
    # ... keeping the best epoch at a utility floor, then auditing the saved model (audit_eval.json)
    python recipes/tofu_forget10.py ... --eval_every_epoch --best_checkpoint --min_model_utility 0.3 --audit all \
        --audit_reference runs/retain90/audit_eval.json --relearn_original runs/full --relearn_oracle runs/retain90

All fields of TofuArguments, rklu_llm.eval.arguments.TofuEvalArguments and rklu_llm.UnlearnConfig (and so of
transformers.TrainingArguments) are flags.

Every input is checked before a model is loaded (:func:`validate`): data, evaluation sets, the forget-quality
reference, refusals, the augmented model, paths that would overwrite an input. The output folder then belongs to this
run: it is locked, and a rerun resumes only the same run (``--overwrite_output_dir`` starts over); the augmented model
goes beside it (``<output_dir>.augmented``), never inside.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from rklu_llm import DEFAULT_MODEL, UnlearnConfig, UnlearnTrainer, load_model, load_refusals
from rklu_llm.cli import parse_arguments
from rklu_llm.data import RETAIN_OF_FORGET, build_unlearning_dataset, check_qa, load_tofu
from rklu_llm.eval.arguments import TofuEvalArguments, evaluate_saved
from rklu_llm.eval.audit import check_audit
from rklu_llm.eval.callback import SELECT_BY, TofuEvalCallback, holdout_items
from rklu_llm.eval.open_unlearning import write_open_unlearning
from rklu_llm.eval.stopping import AUC, SIGNAL, check_rule
from rklu_llm.eval.tofu import summary_row
from rklu_llm.io import write_json_atomic
from rklu_llm.models import check_model_source, check_output_dir
from rklu_llm.run_state import console_logging, run_lock
from rklu_llm.scripts.eval_audit import audit_saved
from rklu_llm.teacher import is_augmented_dir

logger = logging.getLogger(__name__)

EPOCHS_FILE = "tofu_eval_epochs.json"
#: where --best_checkpoint keeps the chosen epoch, by --select_epoch_by
BEST_DIRS = {"forget_quality": "best_forget_quality", "holdout": "selected_epoch"}


@dataclass
class TofuArguments:
    model: str = field(
        default=DEFAULT_MODEL,
        metadata={
            "help": "Model to unlearn: hub id, local dir or embedded:<name>; normally the output of "
            "finetune_tofu.py --split full."
        },
    )
    forget_split: str = field(default="forget10", metadata={"help": f"One of {sorted(RETAIN_OF_FORGET)}."})
    data_dir: str | None = field(default=None, metadata={"help": "Local TOFU folder (default: $RKLU_TOFU_DIR, hub)."})
    retain_eval: str | None = field(
        default=None,
        metadata={
            "help": "tofu_eval.json of the retain-only model (finetune_tofu.py --split retainXX): the "
            "forget-quality reference. Without it forget quality is reported as missing."
        },
    )
    max_retain_items: int | None = field(default=None, metadata={"help": "Use only the first N retain items."})
    eval_every_epoch: bool = field(
        default=False,
        metadata={
            "help": "Follow forget quality after every epoch (forget-set likelihoods only; needs --retain_eval) "
            "and fully evaluate the epoch where it peaks; writes tofu_eval_epochs.json. The saved model is "
            "the final one."
        },
    )

    select_epoch_by: str = field(
        default="forget_quality",
        metadata={
            "help": "With --eval_every_epoch, how the epoch to keep is chosen: 'forget_quality' (the paper's: the "
            "peak against the retain-only oracle, --retain_eval) or 'holdout' (no oracle: the first epoch at which "
            "the forget items' answer NLLs are indistinguishable from TOFU's holdout authors', KS p >= "
            "--holdout_min_p; see rklu_llm.eval.stopping)."
        },
    )
    holdout_min_p: float = field(
        default=0.05,
        metadata={
            "help": "The holdout rule's KS p-value at which forget and holdout items count as indistinguishable."
        },
    )
    stop_early: bool = field(
        default=False,
        metadata={"help": "With --select_epoch_by holdout: stop training at the epoch where the rule is met."},
    )


ARGUMENTS = (TofuArguments, TofuEvalArguments, UnlearnConfig)


def validate(script: TofuArguments, evaluation: TofuEvalArguments, config: UnlearnConfig) -> None:
    """The checks of arguments and paths (each raises with what to do); data and evaluation inputs are read next, all
    before a model is loaded."""
    if script.forget_split not in RETAIN_OF_FORGET:
        raise ValueError(f"forget_split must be one of {sorted(RETAIN_OF_FORGET)}, got {script.forget_split!r}")
    if script.max_retain_items is not None and script.max_retain_items < 1:
        raise ValueError(f"max_retain_items must be >= 1 (got {script.max_retain_items}).")
    check_model_source(script.model)
    check_output_dir(config.output_dir, model_path=script.model, augmented_path=config.augmented_model_path)
    if config.augmented_model_path is not None and not is_augmented_dir(config.augmented_model_path):
        raise ValueError(
            f"augmented_model_path {config.augmented_model_path!r} holds neither a model (config.json) "
            "nor a LoRA adapter (adapter_config.json)."
        )
    if evaluation.audit and evaluation.skip_eval:
        raise ValueError("--audit audits the saved model after its evaluation: leave out --skip_eval (or --audit).")
    holdout = script.select_epoch_by == "holdout"
    if script.select_epoch_by not in SELECT_BY:
        raise ValueError(f"--select_epoch_by must be one of {SELECT_BY}, got {script.select_epoch_by!r}")
    if (holdout or script.stop_early) and not script.eval_every_epoch:
        raise ValueError("--select_epoch_by holdout / --stop_early choose among epochs: add --eval_every_epoch.")
    if script.stop_early and not holdout:
        raise ValueError("--stop_early stops where the oracle-free rule is met: add --select_epoch_by holdout.")
    if holdout:
        check_rule(script.holdout_min_p, evaluation.min_model_utility)
    if script.eval_every_epoch and evaluation.skip_eval:
        raise ValueError("--eval_every_epoch evaluates the model: leave out --skip_eval.")
    if script.eval_every_epoch and script.retain_eval is None and not holdout:
        raise ValueError(
            "--eval_every_epoch picks epochs by forget quality: it needs --retain_eval (or --select_epoch_by holdout, "
            "which needs no oracle)."
        )
    if evaluation.best_checkpoint and not script.eval_every_epoch:
        raise ValueError("--best_checkpoint keeps the best epoch of the per-epoch evaluation: add --eval_every_epoch.")


def load_data(script: TofuArguments, config: UnlearnConfig):
    """The forget set, the retain set (when the retain term needs it) and the refusals (dpo, idk), each row checked."""
    forget = load_tofu(script.forget_split, script.data_dir)
    check_qa(forget, f"TOFU {script.forget_split}")
    retain = None
    if config.retain_mode != "none":
        retain_split = RETAIN_OF_FORGET[script.forget_split]
        retain = load_tofu(retain_split, script.data_dir)
        if script.max_retain_items is not None:
            retain = retain.select(range(min(script.max_retain_items, len(retain))))
        check_qa(retain, f"TOFU {retain_split}")
    refusals = load_refusals(config.refusal_file) if config.spec.needs_refusals else None
    return forget, retain, refusals


def main(default_split: str = "forget10", argv: list[str] | None = None) -> dict | None:
    # default_split is a default: a --config file or a --forget_split flag overrides it
    script, evaluation, config = parse_arguments(ARGUMENTS, argv, defaults={"forget_split": default_split})
    console_logging()

    # Inputs first: anything missing or malformed fails here, before any model is loaded and before output_dir exists.
    validate(script, evaluation, config)
    forget, retain, refusals = load_data(script, config)
    evaluation.check_inputs((script.forget_split,), script.data_dir, script.retain_eval)
    if evaluation.audit:  # validate() refused --audit with --skip_eval
        check_audit(script.forget_split, data_dir=script.data_dir, **evaluation.audit_kwargs())
    if script.select_epoch_by == "holdout":  # the holdout authors, read before any model is loaded
        holdout_items(script.forget_split, None, script.data_dir, evaluation.eval_max_items)
    logger.info("inputs checked; loading %s", script.model)

    with run_lock(config.output_dir, main_process=config.process_index == 0):
        model, tokenizer = load_model(script.model)
        dataset = build_unlearning_dataset(tokenizer, forget, retain, refusals, config.max_length, config.seed)
        epochs = None
        if script.eval_every_epoch:  # final weights: evaluated below, from the saved model; every rank evaluates
            epochs = TofuEvalCallback(
                tokenizer,
                script.forget_split,
                script.data_dir,
                script.retain_eval,
                select_by=script.select_epoch_by,
                holdout_min_p=script.holdout_min_p,
                stop_early=script.stop_early,
                per_epoch="forget_quality" if evaluation.min_model_utility is None else "full",
                evaluate_final=False,
                best_dir=Path(config.output_dir) / BEST_DIRS[script.select_epoch_by]
                if evaluation.best_checkpoint
                else None,
                min_model_utility=evaluation.min_model_utility,
                **evaluation.evaluate_kwargs(),
            )
        trainer = UnlearnTrainer(
            model=model,
            args=config,
            train_dataset=dataset,
            processing_class=tokenizer,
            dataset_name=f"locuslab/TOFU:{script.forget_split}",
            callbacks=None if epochs is None else [epochs],
        )
        if epochs is not None:
            epochs.trainer = trainer  # per-epoch rows go through trainer.log (TensorBoard, ...); best checkpoint saves
        logger.info("model loaded; training starts")
        trainer.train(resume_from_checkpoint=True)
        trainer.save_model()
        if evaluation.skip_eval or not trainer.is_world_process_zero():
            return None

        del trainer, model
        result = evaluate_saved(
            config.output_dir,
            evaluation,
            (script.forget_split,),
            script.data_dir,
            reference=script.retain_eval,
            original=script.model if Path(script.model).is_dir() else None,  # its tofu_eval.json: the yardstick
        )
        if epochs is not None:
            write_epochs(Path(config.output_dir), epochs, result)
        if evaluation.audit:  # audit_eval.json beside tofu_eval.json (and open-unlearning's files when asked)
            audit_saved(config.output_dir, evaluation, script.forget_split, script.data_dir, tofu_result=result)
        elif evaluation.open_unlearning_export:
            write_open_unlearning(config.output_dir, result, None, script.forget_split)
        return result


def write_epochs(output_dir: Path, callback: TofuEvalCallback, final_result: dict) -> None:
    """``tofu_eval_epochs.json``: the per-epoch rows, the final row and the fully evaluated peak-epoch row."""
    final = {"epoch": callback.history[-1]["epoch"] if callback.history else None, **summary_row(final_result)}
    peak = callback.peak
    if peak is None and callback.peak_epoch is not None and callback.peak_epoch == final["epoch"]:
        peak = final
    record = {"epochs": callback.history, "peak_epoch": callback.peak_epoch, "peak": peak, "final": final}
    if callback.select_by == "holdout":
        selected = callback.selected
        if selected is None and callback.selected_epoch is not None and callback.selected_epoch == final["epoch"]:
            selected = {**final, **{k: callback.history[-1][k] for k in (SIGNAL, AUC)}}
        record.update(rule=callback.rule(), selected_epoch=callback.selected_epoch, selected=selected)
    write_json_atomic(output_dir / EPOCHS_FILE, record)
    curve = [row.get(f"{callback.forget_split}_forget_quality") for row in callback.history]
    print(f"forget quality per epoch: {curve}; peak epoch {callback.peak_epoch} (see {output_dir / EPOCHS_FILE})")
    if callback.select_by == "holdout":
        signal = [round(row[SIGNAL], 4) for row in callback.history]
        print(f"holdout KS p per epoch: {signal}; the rule (no oracle) keeps epoch {callback.selected_epoch}")


if __name__ == "__main__":
    main()
