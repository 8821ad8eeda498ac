"""Settings of the TOFU evaluation that recipes run on the model they saved, and that evaluation itself."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..data.tofu import RETAIN_OF_FORGET
from ..hub import update_model_card
from ..models import load_model
from .audit import resolve_parts
from .tofu import (
    RESULT_FILE,
    UTILITY_SETS,
    evaluate_tofu,
    load_eval_set,
    reference_truth_ratios,
    summary_row,
    yardstick_table,
)


@dataclass
class TofuEvalArguments:
    """How the recipes evaluate the model they saved (recipes/finetune_tofu.py, recipes/tofu_forget*.py)."""

    skip_eval: bool = field(default=False, metadata={"help": "Only train and save."})
    eval_batch_size: int = field(default=16, metadata={"help": "Batch size of TOFU scoring (and generation)."})
    eval_generation_batch_size: int | None = field(
        default=None, metadata={"help": "Prompts per generate call (default: eval_batch_size); large values suit GPUs."}
    )
    # ---- the item protocol of evaluate_tofu
    eval_protocol: str = field(
        default="all", metadata={"help": "TOFU items scored: 'all', or 'tofu' (the original scripts' first 300 a set)."}
    )
    # ---- end of the FAST block
    eval_max_items: int | None = field(default=None, metadata={"help": "Evaluate the first N items of each set."})
    max_new_tokens: int = field(default=200, metadata={"help": "Greedy generation length for ROUGE."})

    # ---- audit (rklu_llm.eval.audit) and open-unlearning interchange: used by eval_audit and the unlearning recipes
    audit: str | None = field(
        default=None,
        metadata={
            "help": "Also audit the saved model: comma-separated parts of membership, extraction, leak, relearn, "
            "quantization, or 'all' (writes audit_eval.json)."
        },
    )
    audit_reference: str | None = field(
        default=None,
        metadata={
            "help": "The retain-only model's audit_eval.json or open-unlearning TOFU_EVAL.json: the reference "
            "AUC of privleak (default 0.5, said in the result)."
        },
    )
    audit_min_k: float = field(default=0.4, metadata={"help": "The fraction k of min-k%% and min-k%%++, 0 < k <= 1."})
    leak_k: int = field(default=5, metadata={"help": "leak@k: candidates per forget item (beam search)."})
    leak_threshold: float = field(default=0.5, metadata={"help": "leak@k: ROUGE-L recall that counts as a leak."})
    leak_blank_words: int = field(
        default=2, metadata={"help": "leak@k: content words cut off the answer for the fill-in-the-blank prompt."}
    )
    leak_max_new_tokens: int = field(default=64, metadata={"help": "leak@k: generation length of the candidates."})
    relearn_original: str | None = field(
        default=None, metadata={"help": "Relearning attack: the original model, attacked the same way."}
    )
    relearn_oracle: str | None = field(
        default=None, metadata={"help": "Relearning attack: the retain-only oracle, attacked the same way."}
    )
    relearn_steps: int = field(default=10, metadata={"help": "Relearning attack: AdamW steps."})
    relearn_learning_rate: float = field(default=1e-5, metadata={"help": "Relearning attack: learning rate."})
    relearn_batch_size: int = field(default=4, metadata={"help": "Relearning attack: batch size."})
    quantization_bits: str = field(default="8,4", metadata={"help": "Weight-only round trips to audit (8, 4)."})
    open_unlearning_export: bool = field(
        default=False,
        metadata={"help": "Also write TOFU_EVAL.json / TOFU_SUMMARY.json in open-unlearning's layout."},
    )
    best_checkpoint: bool = field(
        default=False,
        metadata={
            "help": "With per-epoch evaluation: keep the weights of the epoch of best forget quality in "
            "<output_dir>/best_forget_quality (at or above --min_model_utility)."
        },
    )
    min_model_utility: float | None = field(
        default=None,
        metadata={"help": "Model-utility floor of --best_checkpoint (needs a full evaluation every epoch)."},
    )

    def __post_init__(self):
        for name in ("eval_batch_size", "max_new_tokens", "eval_generation_batch_size", "eval_max_items"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1 (got {value}).")
        if self.audit is not None:
            resolve_parts(self.audit)  # unknown parts fail at parse time
        if self.min_model_utility is not None and not self.best_checkpoint:
            raise ValueError("--min_model_utility is the floor of --best_checkpoint: pass both.")

    def check_inputs(self, forget_splits, data_dir=None, reference=None) -> None:
        """Read now everything the evaluation after training will read, so that a missing or wrong input fails
        before any model is loaded: every evaluation set (``<split>_perturbed``, ``retain_perturbed``,
        ``real_authors_perturbed``, ``world_facts_perturbed``, parsed with the columns the metrics need) unless
        ``skip_eval``, and the forget-quality ``reference`` (``--retain_eval``) whenever it is given.

        Raises:
            ValueError, FileNotFoundError, DataUnavailableError: the message names the input and what to do.
        """
        unknown = [split for split in forget_splits if split not in RETAIN_OF_FORGET]
        if unknown:
            raise ValueError(f"Unknown forget split(s) {unknown}; choose among {sorted(RETAIN_OF_FORGET)}.")
        if reference is not None:
            check_reference(reference, forget_splits)
        if not self.skip_eval:
            for name in [f"{split}_perturbed" for split in forget_splits] + list(UTILITY_SETS):
                load_eval_set(name, data_dir, self.eval_max_items)

    def audit_kwargs(self) -> dict:
        """The audit settings as keyword arguments of :func:`~rklu_llm.eval.audit.evaluate_audit`."""
        return dict(
            parts=self.audit,
            membership_reference=self.audit_reference,
            min_k=self.audit_min_k,
            leak_k=self.leak_k,
            leak_threshold=self.leak_threshold,
            blank_words=self.leak_blank_words,
            leak_max_new_tokens=self.leak_max_new_tokens,
            relearn_original=self.relearn_original,
            relearn_oracle=self.relearn_oracle,
            relearn_steps=self.relearn_steps,
            relearn_learning_rate=self.relearn_learning_rate,
            relearn_batch_size=self.relearn_batch_size,
            quantization_bits=tuple(int(b) for b in self.quantization_bits.split(",") if b.strip()),
            batch_size=self.eval_batch_size,
            generation_batch_size=self.eval_generation_batch_size,
            max_new_tokens=self.max_new_tokens,
            max_items=self.eval_max_items,
        )

    def evaluate_kwargs(self) -> dict:
        """These settings as keyword arguments of :func:`~rklu_llm.eval.tofu.evaluate_tofu`."""
        return dict(
            batch_size=self.eval_batch_size,
            max_new_tokens=self.max_new_tokens,
            max_items=self.eval_max_items,
            generation_batch_size=self.eval_generation_batch_size,
            protocol=self.eval_protocol,
        )


def check_reference(reference, forget_splits) -> None:
    """Check a forget-quality reference (``--retain_eval``): it exists, is a file (or a folder holding one of the
    files :func:`~rklu_llm.eval.tofu.reference_truth_ratios` reads), parses, and evaluated every forget split.

    Raises:
        FileNotFoundError, ValueError: the message names the file and how to make the right one.
    """
    path = Path(reference).expanduser()
    make = ", ".join(f"finetune_tofu.py --split {RETAIN_OF_FORGET[s]}" for s in forget_splits if s in RETAIN_OF_FORGET)
    if not path.exists():
        raise FileNotFoundError(
            f"--retain_eval {str(reference)!r} does not exist: pass the {RESULT_FILE} of the "
            f"retain-only model ({make} writes it)."
        )
    readable = ("tofu_eval.json", "eval_log_aggregated.json", "eval_log_forget.json")
    if path.is_dir() and not any((path / name).is_file() for name in readable):
        raise ValueError(
            f"--retain_eval {str(reference)!r} is a folder, not a file, and holds none of "
            f"{', '.join(readable)}: pass the retain-only model's {RESULT_FILE} ({make} writes it)."
        )
    for split in forget_splits:
        try:
            reference_truth_ratios(reference, split)
        except json.JSONDecodeError as exc:
            raise ValueError(f"--retain_eval {str(reference)!r} is not valid JSON ({exc}).") from exc
        except KeyError as exc:
            raise ValueError(
                f"--retain_eval: {exc.args[0]}. The reference for {split} is the evaluation of the "
                f"model fine-tuned on {RETAIN_OF_FORGET[split]} ({make})."
            ) from exc


def evaluate_saved(
    model_dir, eval_args: TofuEvalArguments, forget_splits, data_dir=None, reference=None, original=None
) -> dict:
    """Load the model a recipe saved (on the GPU when there is one), evaluate it on TOFU, store ``tofu_eval.json``
    beside it, add the results to its model card and print the summary row, then the same columns of the original
    (``original``: its folder or ``tofu_eval.json``, when it has one) and the oracle (``reference``) beside it."""
    model, tokenizer = load_model(str(model_dir))
    if torch.cuda.is_available():
        model.to("cuda")
    result = evaluate_tofu(
        model,
        tokenizer,
        forget_splits=tuple(forget_splits),
        data_dir=data_dir,
        output_dir=model_dir,
        reference=reference,
        **eval_args.evaluate_kwargs(),
    )
    update_model_card(model_dir, result)  # no-op without a card written by rklu_llm
    print(json.dumps(summary_row(result), indent=2))
    if original is not None or reference is not None:
        print(yardstick_table(result, original=original, oracle=reference))
    return result
