"""Audit a saved model on a TOFU forget split: membership inference and privleak, extraction strength and exact
memorisation, leak@k, the relearning attack and weight-only quantization (see :mod:`rklu_llm.eval.audit`).

    # the retain-only oracle first: its AUCs are the privleak reference of every audit of that split
    python -m rklu_llm.scripts.eval_audit --model runs/retain99 --forget_split forget01 --data_dir data/tofu
    # then the unlearned model, every part, with the original and the oracle under the same relearning attack
    python -m rklu_llm.scripts.eval_audit --model runs/rklu_forget01 --forget_split forget01 \\
        --data_dir data/tofu --audit all --audit_reference runs/retain99/audit_eval.json \\
        --relearn_original runs/full --relearn_oracle runs/retain99 --open_unlearning_export

Writes ``audit_eval.json`` (and its cache, so a rerun resumes) into ``--output_dir`` (default: the model's folder);
with ``--open_unlearning_export`` also ``TOFU_EVAL.json`` / ``TOFU_SUMMARY.json`` in open-unlearning's layout,
including the TOFU metrics when a ``tofu_eval.json`` lies beside. Flags: AuditScriptArguments below and the audit
block of rklu_llm.eval.arguments.TofuEvalArguments (``--audit`` defaults to membership,extraction,leak here).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from rklu_llm.cli import parse_arguments
from rklu_llm.data import RETAIN_OF_FORGET
from rklu_llm.eval.arguments import TofuEvalArguments
from rklu_llm.eval.audit import DEFAULT_PARTS, audit_summary_row, check_audit, evaluate_audit
from rklu_llm.eval.open_unlearning import write_open_unlearning
from rklu_llm.eval.tofu import RESULT_FILE, load_tofu_eval
from rklu_llm.models import load_model


@dataclass
class AuditScriptArguments:
    model: str | None = field(default=None, metadata={"help": "The model to audit: a saved model's folder or hub id."})
    forget_split: str = field(default="forget10", metadata={"help": f"One of {sorted(RETAIN_OF_FORGET)}."})
    data_dir: str | None = field(default=None, metadata={"help": "Local TOFU folder (default: $RKLU_TOFU_DIR, hub)."})
    output_dir: str | None = field(
        default=None, metadata={"help": "Where audit_eval.json goes (default: the model's folder)."}
    )


ARGUMENTS = (AuditScriptArguments, TofuEvalArguments)


def audit_saved(
    model_path,
    evaluation: TofuEvalArguments,
    forget_split: str,
    data_dir=None,
    output_dir=None,
    tofu_result: dict | None = None,
) -> dict:
    """Check the audit settings, load the model (on the GPU when there is one), audit it, store ``audit_eval.json`` in
    ``output_dir`` (default ``model_path``), optionally the open-unlearning files, and print the summary row."""
    kwargs = evaluation.audit_kwargs()
    kwargs["parts"] = kwargs["parts"] or ",".join(DEFAULT_PARTS)
    check_audit(forget_split, data_dir=data_dir, **kwargs)  # every check that needs no model, before loading one
    output_dir = Path(output_dir or model_path)
    model, tokenizer = load_model(str(model_path))
    if torch.cuda.is_available():
        model.to("cuda")
    result = evaluate_audit(model, tokenizer, forget_split, data_dir=data_dir, output_dir=output_dir, **kwargs)
    if evaluation.open_unlearning_export:
        if tofu_result is None and (output_dir / RESULT_FILE).is_file():
            tofu_result = load_tofu_eval(output_dir)
        if tofu_result is not None and forget_split not in tofu_result["settings"]["forget_splits"]:
            tofu_result = None
        write_open_unlearning(output_dir, tofu_result, result, forget_split)
    print(json.dumps(audit_summary_row(result), indent=2))
    return result


def main(argv: list[str] | None = None) -> dict:
    script, evaluation = parse_arguments(ARGUMENTS, argv)
    if script.model is None:
        raise ValueError("--model is required: the folder (or hub id) of the model to audit.")
    if script.forget_split not in RETAIN_OF_FORGET:
        raise ValueError(f"forget_split must be one of {sorted(RETAIN_OF_FORGET)}, got {script.forget_split!r}")
    if script.output_dir is None and not Path(script.model).is_dir():
        raise ValueError(f"--model {script.model!r} is not a local folder: pass --output_dir for audit_eval.json.")
    return audit_saved(script.model, evaluation, script.forget_split, script.data_dir, script.output_dir)


if __name__ == "__main__":
    main()
