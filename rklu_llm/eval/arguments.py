"""Settings of the TOFU evaluation that recipes run on the model they saved, and that evaluation itself."""

from __future__ import annotations

import json
from dataclasses import dataclass, field


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

    def evaluate_kwargs(self) -> dict:
        """These settings as keyword arguments of :func:`~rklu_llm.eval.tofu.evaluate_tofu`."""
        return dict(batch_size=self.eval_batch_size, max_new_tokens=self.max_new_tokens, max_items=self.eval_max_items,
                    generation_batch_size=self.eval_generation_batch_size)


def evaluate_saved(model_dir, eval_args: TofuEvalArguments, forget_splits, data_dir=None, reference=None) -> dict:
    """Load the model a recipe saved (on the GPU when there is one), evaluate it on TOFU, store ``tofu_eval.json``
    beside it, add the results to its model card and print the summary row."""
    import torch

    from ..hub import update_model_card  # helper SHIP: the card of the saved model gains the results
    from ..models import load_model
    from .tofu import evaluate_tofu, summary_row

    model, tokenizer = load_model(str(model_dir))
    if torch.cuda.is_available():
        model.to("cuda")
    result = evaluate_tofu(
        model, tokenizer, forget_splits=tuple(forget_splits), data_dir=data_dir, output_dir=model_dir,
        reference=reference, **eval_args.evaluate_kwargs(),
    )
    update_model_card(model_dir, result)  # helper SHIP: no-op without a card written by rklu_llm
    print(json.dumps(summary_row(result), indent=2))
    return result
