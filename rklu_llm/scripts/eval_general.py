"""Evaluate a model's general capability with lm-eval-harness on the shipped tasks (the RKL-U paper's suite).

    python -m rklu_llm.scripts.eval_general --model runs/rklu --output_dir runs/rklu \
        --general_data_dir data/general --general_limit 200

Writes ``general_eval.json`` into ``--output_dir`` (per-task cache there: a re-run resumes) and prints the mean
accuracy and the per-task numbers. Tasks, data files and the limit are checked before the model is loaded. The same
tasks run with the upstream command on a saved checkpoint (see :mod:`rklu_llm.eval.general`)::

    lm_eval --model hf --model_args pretrained=runs/rklu \
        --include_path $(python -c "import rklu_llm.tasks as t; print(t.TASKS_DIR)") --tasks rklu_general \
        --metadata '{"data_dir": "data/general"}'
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import torch

from ..cli import parse_arguments
from ..eval.general import evaluate_general, resolve_data, resolve_tasks
from ..models import check_model_source, load_model
from ..tasks import PAPER_TASKS
from .eval_copyright import EvaluatedModelArguments


@dataclass
class GeneralEvalArguments:
    """Which lm-eval tasks, on which data, how many items (shared by the evaluation and the book recipe)."""

    general_tasks: str = field(
        default=",".join(PAPER_TASKS),
        metadata={
            "help": "Comma-separated tasks (piqa, hellaswag, arc_easy, arc_challenge, copa, wsc273, mathqa, "
            "winogrande, boolq, openbookqa), or rklu_general (the paper's seven) / rklu_general_all."
        },
    )
    general_data_dir: str | None = field(
        default=None,
        metadata={"help": "Folder of <task>/<split>.jsonl files (default $RKLU_GENERAL_DIR, else the hub)."},
    )
    general_limit: int | None = field(default=None, metadata={"help": "Items per task (default: all)."})
    general_batch_size: int = field(default=16, metadata={"help": "Sequences per forward pass."})
    general_num_fewshot: int = field(default=0, metadata={"help": "Examples in context (the paper: 0)."})
    skip_general: bool = field(default=False, metadata={"help": "Skip the lm-eval evaluation (book recipe)."})

    def __post_init__(self):
        self.task_names = resolve_tasks(self.general_tasks)
        if self.general_limit is not None and self.general_limit < 1:
            raise ValueError(f"--general_limit must be >= 1 (items per task), got {self.general_limit}")
        if self.general_batch_size < 1:
            raise ValueError(f"--general_batch_size must be >= 1, got {self.general_batch_size}")

    def check_data(self) -> None:
        """Fail now when a task's data file is missing (or the hub is offline without a data folder)."""
        if not self.skip_general:
            resolve_data(self.task_names, self.general_data_dir)

    def evaluate_kwargs(self) -> dict:
        """These settings as keyword arguments of :func:`~rklu_llm.eval.general.evaluate_general`."""
        return dict(
            tasks=self.task_names,
            data_dir=self.general_data_dir,
            limit=self.general_limit,
            batch_size=self.general_batch_size,
            num_fewshot=self.general_num_fewshot,
        )


ARGUMENTS = (EvaluatedModelArguments, GeneralEvalArguments)


def main(argv: list[str] | None = None) -> dict:
    target, general = parse_arguments(ARGUMENTS, argv)
    general.skip_general = False
    general.check_data()
    check_model_source(target.model)
    model, tokenizer = load_model(target.model)
    if torch.cuda.is_available():
        model.to("cuda")
    result = evaluate_general(model, tokenizer, output_dir=target.output_dir, **general.evaluate_kwargs())
    summary = {
        "model": result["model"],
        "average_acc": result["average_acc"],
        **{f"{task}_acc": values["acc"] for task, values in result["tasks"].items()},
    }
    print(json.dumps(summary, indent=2))
    return result


if __name__ == "__main__":
    main()
