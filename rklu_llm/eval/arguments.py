"""Settings of the TOFU evaluation that recipes run on the model they saved, and that evaluation itself."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class TofuEvalArguments:
    """How the recipes evaluate the model they saved (recipes/finetune_tofu.py, recipes/tofu_forget*.py)."""

    skip_eval: bool = field(default=False, metadata={"help": "Only train and save."})
    eval_batch_size: int = field(default=16, metadata={"help": "Batch size of TOFU scoring (and generation)."})
    eval_generation_batch_size: int | None = field(
        default=None, metadata={"help": "Prompts per generate call (default: eval_batch_size); large values suit GPUs."}
    )
    eval_max_items: int | None = field(default=None, metadata={"help": "Evaluate the first N items of each set."})
    max_new_tokens: int = field(default=200, metadata={"help": "Greedy generation length for ROUGE."})

    def __post_init__(self):
        for name in ("eval_batch_size", "max_new_tokens", "eval_generation_batch_size", "eval_max_items"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1 (got {value}).")

    def check_inputs(self, forget_splits, data_dir=None, reference=None) -> None:
        """Read now everything the evaluation after training will read, so that a missing or wrong input fails
        before any model is loaded: every evaluation set (``<split>_perturbed``, ``retain_perturbed``,
        ``real_authors_perturbed``, ``world_facts_perturbed``, parsed with the columns the metrics need) unless
        ``skip_eval``, and the forget-quality ``reference`` (``--retain_eval``) whenever it is given.

        Raises:
            ValueError, FileNotFoundError, DataUnavailableError: the message names the input and what to do.
        """
        from ..data.tofu import RETAIN_OF_FORGET
        from .tofu import UTILITY_SETS, _load_set

        unknown = [split for split in forget_splits if split not in RETAIN_OF_FORGET]
        if unknown:
            raise ValueError(f"Unknown forget split(s) {unknown}; choose among {sorted(RETAIN_OF_FORGET)}.")
        if reference is not None:
            check_reference(reference, forget_splits)
        if not self.skip_eval:
            for name in [f"{split}_perturbed" for split in forget_splits] + list(UTILITY_SETS):
                _load_set(name, data_dir, self.eval_max_items)

    def evaluate_kwargs(self) -> dict:
        """These settings as keyword arguments of :func:`~rklu_llm.eval.tofu.evaluate_tofu`."""
        return dict(batch_size=self.eval_batch_size, max_new_tokens=self.max_new_tokens, max_items=self.eval_max_items,
                    generation_batch_size=self.eval_generation_batch_size)


def check_reference(reference, forget_splits) -> None:
    """Check a forget-quality reference (``--retain_eval``): it exists, is a file (or a folder holding one of the
    files :func:`~rklu_llm.eval.tofu.reference_truth_ratios` reads), parses, and evaluated every forget split.

    Raises:
        FileNotFoundError, ValueError: the message names the file and how to make the right one.
    """
    from ..data.tofu import RETAIN_OF_FORGET
    from .tofu import RESULT_FILE, reference_truth_ratios

    path = Path(reference).expanduser()
    make = ", ".join(f"finetune_tofu.py --split {RETAIN_OF_FORGET[s]}" for s in forget_splits if s in RETAIN_OF_FORGET)
    if not path.exists():
        raise FileNotFoundError(f"--retain_eval {str(reference)!r} does not exist: pass the {RESULT_FILE} of the "
                                f"retain-only model ({make} writes it).")
    readable = ("tofu_eval.json", "eval_log_aggregated.json", "eval_log_forget.json")
    if path.is_dir() and not any((path / name).is_file() for name in readable):
        raise ValueError(f"--retain_eval {str(reference)!r} is a folder, not a file, and holds none of "
                         f"{', '.join(readable)}: pass the retain-only model's {RESULT_FILE} ({make} writes it).")
    for split in forget_splits:
        try:
            reference_truth_ratios(reference, split)
        except json.JSONDecodeError as exc:
            raise ValueError(f"--retain_eval {str(reference)!r} is not valid JSON ({exc}).") from exc
        except KeyError as exc:
            raise ValueError(f"--retain_eval: {exc.args[0]}. The reference for {split} is the evaluation of the "
                             f"model fine-tuned on {RETAIN_OF_FORGET[split]} ({make}).") from exc


def evaluate_saved(model_dir, eval_args: TofuEvalArguments, forget_splits, data_dir=None, reference=None) -> dict:
    """Load the model a recipe saved (on the GPU when there is one), evaluate it on TOFU, store ``tofu_eval.json``
    beside it and print the summary row."""
    import torch

    from ..models import load_model
    from .tofu import evaluate_tofu, summary_row

    model, tokenizer = load_model(str(model_dir))
    if torch.cuda.is_available():
        model.to("cuda")
    result = evaluate_tofu(
        model, tokenizer, forget_splits=tuple(forget_splits), data_dir=data_dir, output_dir=model_dir,
        reference=reference, **eval_args.evaluate_kwargs(),
    )
    print(json.dumps(summary_row(result), indent=2))
    return result
