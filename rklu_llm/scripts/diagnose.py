"""Check RKL-U's teacher before distilling: build the augmented model (phase 1) for a TOFU forget split, then measure
on the forget set whether the teacher ``l_o - alpha * relu(l_a - l_o)`` would still reproduce it
(:mod:`rklu_llm.teacher_check`). No distillation runs.

    rklu-llm diagnose --model runs/full --forget_split forget01 --output_dir runs/rklu_forget01 --data_dir data/tofu
    rklu-llm diagnose ... --augment_epochs 10 --teacher_alpha 4 --report runs/check.json

The augmented model goes where ``rklu-llm unlearn`` with the same ``--output_dir`` and augmentation settings looks for
it (``<output_dir>.augmented``), so the run that follows reuses it instead of training it again; changing
``--teacher_alpha`` needs no new augmentation. Takes the flags of ``rklu-llm unlearn`` (the distillation's own are
ignored) and ``--report FILE`` for the result as JSON. Exit status 0 whatever the verdict; the verdict and what to
change are printed.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

from rklu_llm import UnlearnConfig, UnlearnTrainer, load_model
from rklu_llm.cli import parse_arguments
from rklu_llm.data import build_unlearning_dataset
from rklu_llm.eval.arguments import TofuEvalArguments
from rklu_llm.io import write_json_atomic
from rklu_llm.run_state import console_logging
from rklu_llm.scripts.unlearn import TofuArguments, load_data, validate
from rklu_llm.teacher_check import summary_line

logger = logging.getLogger(__name__)


@dataclass
class DiagnoseArguments:
    report: str | None = field(default=None, metadata={"help": "Also write the check's result to this JSON file."})


ARGUMENTS = (TofuArguments, DiagnoseArguments, UnlearnConfig)


def check_inputs(script: TofuArguments, diagnose: DiagnoseArguments, config: UnlearnConfig) -> None:
    """What the check needs, before any model is loaded: a method with a teacher, alpha > 0, a report path that is not
    a folder (the forget data is read next, also before loading)."""
    spec = config.spec
    if not (spec.needs_augmented and spec.trains):
        raise ValueError(
            f"--method {config.method} distils from no teacher; the teacher check is for the methods with one "
            "(rklu, fklu)."
        )
    if config.teacher_alpha <= 0:
        raise ValueError(
            f"--teacher_alpha must be > 0 for the teacher check (got {config.teacher_alpha}): at 0 the teacher is "
            "the original model."
        )
    if diagnose.report is not None and Path(diagnose.report).is_dir():
        raise ValueError(f"--report {diagnose.report!r} is a folder; give a file path such as runs/check.json.")
    validate(script, TofuEvalArguments(), config)


def main(argv: list[str] | None = None) -> dict:
    script, diagnose, config = parse_arguments(ARGUMENTS, argv)
    console_logging()
    check_inputs(script, diagnose, config)
    forget, _, _ = load_data(script, config)
    if len(forget) == 0:
        raise ValueError(f"TOFU {script.forget_split} is empty: nothing to check.")
    config.retain_mode = "none"  # the check reads the forget set only
    config.teacher_check = True
    logger.info("inputs checked; loading %s", script.model)
    model, tokenizer = load_model(script.model)
    dataset = build_unlearning_dataset(tokenizer, forget, None, None, config.max_length, config.seed)
    trainer = UnlearnTrainer(model=model, args=config, train_dataset=dataset, processing_class=tokenizer)
    trainer.setup_frozen_models()  # phase 1 (or the reused augmented model), then the check
    result = trainer.teacher_check
    if trainer.is_world_process_zero():
        print(summary_line(result))
        if result["advice"]:
            print(result["advice"])
        if result["saturation_note"]:
            print(result["saturation_note"])
        if diagnose.report is not None:
            write_json_atomic(diagnose.report, result)
            print(f"written: {diagnose.report}")
        else:
            print(json.dumps({k: v for k, v in result.items() if k != "continuation"}, indent=1))
    return result


if __name__ == "__main__":
    main()
