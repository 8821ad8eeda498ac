"""Evaluate a model on TOFU: probability, ROUGE-L recall and truth ratio per set, model utility, forget quality.

    rklu-llm eval tofu --model runs/rklu_forget10 --retain_eval runs/retain90/tofu_eval.json
    rklu-llm eval tofu --model HuggingFaceTB/SmolLM2-135M-Instruct --output_dir runs/eval_smollm2 --eval_max_items 50

Results go to <output_dir>/tofu_eval.json (default: the model's own folder, whose model card then gains the results);
each (set, metric) is cached under <output_dir>/tofu_eval_cache/, so an interrupted evaluation resumes. Forget quality
needs --retain_eval: the tofu_eval.json of a model fine-tuned without the forget split (rklu-llm finetune --split
retain90), or one of the TOFU authors' eval_log_forget.json files.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from rklu_llm.cli import parse_arguments
from rklu_llm.data import RETAIN_OF_FORGET, load_tofu
from rklu_llm.eval.arguments import TofuEvalArguments, evaluate_saved
from rklu_llm.eval.tofu import evaluate_tofu, summary_row, yardstick_table
from rklu_llm.models import check_model_source, load_model


@dataclass
class EvalTofuArguments:
    model: str | None = field(
        default=None,
        metadata={
            "help": "Model to evaluate (required): a local folder (a run's output_dir), a hub id or embedded:<name>."
        },
    )
    forget_splits: str = field(
        default="forget10", metadata={"help": f"Comma-separated forget splits, of {sorted(RETAIN_OF_FORGET)}."}
    )
    data_dir: str | None = field(default=None, metadata={"help": "Local TOFU folder (default: $RKLU_TOFU_DIR, hub)."})
    retain_eval: str | None = field(
        default=None,
        metadata={
            "help": "Forget-quality reference: tofu_eval.json of the retain-only model (or a TOFU "
            "eval_log_forget.json). Without it forget quality is reported as missing."
        },
    )
    original_eval: str | None = field(
        default=None,
        metadata={
            "help": "tofu_eval.json of the model before unlearning (e.g. runs/full/tofu_eval.json): printed beside "
            "the result, with the oracle's (--retain_eval), as its yardsticks."
        },
    )
    output_dir: str | None = field(
        default=None,
        metadata={
            "help": "Where tofu_eval.json and its cache go (default: the model's folder, whose card then gains "
            "the results; required for a hub id or an embedded model)."
        },
    )


ARGUMENTS = (EvalTofuArguments, TofuEvalArguments)


def main(argv: list[str] | None = None) -> dict:
    script, evaluation = parse_arguments(ARGUMENTS, argv)
    if script.model is None:
        raise ValueError("--model is required: the folder, hub id or embedded:<name> of the model to evaluate.")
    if evaluation.skip_eval:
        raise ValueError("--skip_eval leaves nothing to do here: it is a flag of the training commands.")
    forget_splits = [split.strip() for split in script.forget_splits.split(",") if split.strip()]
    unknown = [split for split in forget_splits if split not in RETAIN_OF_FORGET]
    if not forget_splits or unknown:
        raise ValueError(f"--forget_splits {script.forget_splits!r}: choose from {sorted(RETAIN_OF_FORGET)}.")
    check_model_source(script.model)  # a folder without a model, an unusable hub: named before anything is read
    local = Path(script.model).is_dir()
    output_dir = script.output_dir or (script.model if local else None)
    if output_dir is None:
        raise ValueError(f"--output_dir is required: {script.model!r} is not a local folder to write results into.")
    if script.retain_eval is not None and not Path(script.retain_eval).is_file():
        raise FileNotFoundError(f"--retain_eval {script.retain_eval!r} is not a file (a tofu_eval.json).")
    if script.original_eval is not None and not Path(script.original_eval).is_file():
        raise FileNotFoundError(f"--original_eval {script.original_eval!r} is not a file (a tofu_eval.json).")
    # every evaluation set must be readable before a model is loaded
    for name in [f"{split}_perturbed" for split in forget_splits] + [
        "retain_perturbed",
        "real_authors_perturbed",
        "world_facts_perturbed",
    ]:
        load_tofu(name, script.data_dir)

    if local and Path(output_dir).resolve() == Path(script.model).resolve():
        return evaluate_saved(
            script.model,
            evaluation,
            forget_splits,
            script.data_dir,
            reference=script.retain_eval,
            original=script.original_eval,
        )
    model, tokenizer = load_model(script.model)
    if torch.cuda.is_available():
        model.to("cuda")
    result = evaluate_tofu(
        model,
        tokenizer,
        forget_splits=tuple(forget_splits),
        data_dir=script.data_dir,
        output_dir=output_dir,
        reference=script.retain_eval,
        **evaluation.evaluate_kwargs(),
    )
    print(json.dumps(summary_row(result), indent=2))
    if script.original_eval is not None or script.retain_eval is not None:
        print(yardstick_table(result, original=script.original_eval, oracle=script.retain_eval))
    return result


if __name__ == "__main__":
    main()
