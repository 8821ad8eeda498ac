"""Evaluate TOFU at the end of every unlearning epoch (the RKL-U paper reports the epoch of peak forget quality)."""

from __future__ import annotations

import time

import torch
from transformers import TrainerCallback

from .tofu import evaluate_tofu, summary_row


class TofuEvalCallback(TrainerCallback):
    """Runs :func:`~rklu_llm.eval.tofu.evaluate_tofu` on the live model after each epoch (main process only).

    ``self.history`` holds one summary row per epoch (``epoch``, ``eval_seconds``, the peak GPU memory of the training
    steps before the evaluation, and :func:`~rklu_llm.eval.tofu.summary_row`'s values); ``self.results`` the full
    results. ``eval_seconds`` lets callers subtract evaluation time from wall time.
    """

    def __init__(self, tokenizer, forget_split: str, data_dir=None, reference=None, **eval_kwargs):
        self.tokenizer = tokenizer
        self.forget_split = forget_split
        self.data_dir = data_dir
        self.reference = reference
        self.eval_kwargs = eval_kwargs
        self.history: list[dict] = []
        self.results: list[dict] = []
        self.eval_seconds = 0.0

    def on_epoch_end(self, args, state, control, model=None, **kwargs):
        if not state.is_world_process_zero or model is None:
            return
        train_peak = torch.cuda.max_memory_allocated() if torch.cuda.is_available() else None
        start = time.perf_counter()
        result = evaluate_tofu(
            model, self.tokenizer, forget_splits=(self.forget_split,), data_dir=self.data_dir,
            reference=self.reference, **self.eval_kwargs,
        )
        seconds = time.perf_counter() - start
        self.eval_seconds += seconds
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        self.results.append(result)
        self.history.append(
            {"epoch": round(state.epoch or 0.0, 3), "eval_seconds": seconds, "train_peak_memory_bytes": train_peak,
             **summary_row(result)}
        )
