"""Evaluate TOFU during unlearning: after every epoch, and the epoch of peak forget quality (as the RKL-U paper
reports it) next to the final one."""

from __future__ import annotations

import time
import warnings

import torch
from transformers import TrainerCallback

from .tofu import evaluate_tofu, summary_row

PER_EPOCH = ("full", "forget_quality")


class TofuEvalCallback(TrainerCallback):
    """Evaluates the live model on TOFU during training (main process; single-process or DDP training).

    ``per_epoch="full"``: :func:`~rklu_llm.eval.tofu.evaluate_tofu` after each epoch.

    ``per_epoch="forget_quality"``: after each epoch only the forget set's likelihoods are scored (forget quality,
    forget probability and truth ratio; no generation, no utility sets), which costs a small fraction of a full
    evaluation. The trainable weights of the best epoch so far are copied to CPU memory, and when training ends both
    the final weights and the peak epoch's weights get a full evaluation (the model is left with its final weights).
    Needs a forget-quality ``reference``. ``evaluate_final=False`` leaves the final weights to the caller (e.g. a recipe
    that evaluates the model it saved): ``final`` stays ``None``, and so does ``peak`` when the peak is the last epoch.

    After training: ``history`` holds one row per epoch (``epoch``, ``eval_seconds``, the peak GPU memory of the
    training steps before it, and :func:`~rklu_llm.eval.tofu.summary_row`'s values); ``final`` and ``peak`` are the
    fully evaluated rows of the last epoch and of the epoch with the highest forget quality (``peak_epoch``, the
    earliest on ties; ``None`` when forget quality is unavailable); ``results`` the full results behind them.
    ``eval_seconds`` sums all evaluation time, so callers can subtract it from wall time. The state is not part of a
    checkpoint: a resumed run tracks only the epochs it trains.
    """

    def __init__(self, tokenizer, forget_split: str, data_dir=None, reference=None, per_epoch: str = "full",
                 evaluate_final: bool = True, **eval_kwargs):
        if per_epoch not in PER_EPOCH:
            raise ValueError(f"per_epoch must be one of {PER_EPOCH}, got {per_epoch!r}")
        if per_epoch == "forget_quality" and reference is None:
            raise ValueError("per_epoch='forget_quality' selects the epoch by forget quality: pass reference=<the "
                             "retain-only model's tofu_eval.json>.")
        self.tokenizer = tokenizer
        self.forget_split = forget_split
        self.data_dir = data_dir
        self.reference = reference
        self.per_epoch = per_epoch
        self.evaluate_final = evaluate_final
        self.eval_kwargs = eval_kwargs
        self.history: list[dict] = []
        self.results: list[dict] = []
        self.final: dict | None = None
        self.peak: dict | None = None
        self.peak_epoch: float | None = None
        self.eval_seconds = 0.0
        self._best: tuple[float, float, dict] | None = None  # (forget quality, epoch, CPU copy of trainable weights)

    def _fq(self, row: dict) -> float | None:
        return row.get(f"{self.forget_split}_forget_quality")

    def _evaluate(self, model, epoch: float, full: bool) -> tuple[dict, dict]:
        start = time.perf_counter()
        kwargs = dict(self.eval_kwargs)
        if not full:
            kwargs.update(sets=(self.forget_split,), generate=False)
        with warnings.catch_warnings():
            if not full:  # utility is left out on purpose here
                warnings.filterwarnings("ignore", message="TOFU model utility not computed")
            result = evaluate_tofu(model, self.tokenizer, forget_splits=(self.forget_split,), data_dir=self.data_dir,
                                   reference=self.reference, **kwargs)
        seconds = time.perf_counter() - start
        self.eval_seconds += seconds
        return result, {"epoch": epoch, "eval_seconds": seconds, **summary_row(result)}

    def on_epoch_end(self, args, state, control, model=None, **kwargs):
        if not state.is_world_process_zero or model is None:
            return
        train_peak = torch.cuda.max_memory_allocated() if torch.cuda.is_available() else None
        epoch = round(state.epoch or 0.0, 3)
        result, row = self._evaluate(model, epoch, full=self.per_epoch == "full")
        row["train_peak_memory_bytes"] = train_peak
        self.history.append(row)
        if self.per_epoch == "full":
            self.results.append(result)
        else:
            fq = self._fq(row)
            if fq is not None and (self._best is None or fq > self._best[0]):
                self._best = (fq, epoch, _trainable_state(model))
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()

    def on_train_end(self, args, state, control, model=None, **kwargs):
        if not state.is_world_process_zero or model is None or not self.history:
            return
        if self.per_epoch == "full":
            self.final = self.history[-1]
            scored = [row for row in self.history if self._fq(row) is not None]
            self.peak = max(scored, key=self._fq) if scored else None  # max() keeps the earliest of equal values
            self.peak_epoch = None if self.peak is None else self.peak["epoch"]
            return
        epoch = self.history[-1]["epoch"]
        if self.evaluate_final:
            result, self.final = self._evaluate(model, epoch, full=True)
            self.results.append(result)
        if self._best is None:
            return
        fq, best_epoch, weights = self._best
        self.peak_epoch = best_epoch
        if best_epoch == epoch:
            self.peak = self.final
            self._best = None
            return
        final_weights = _trainable_state(model)
        _load_trainable_state(model, weights)
        try:
            result, self.peak = self._evaluate(model, best_epoch, full=True)
        finally:
            _load_trainable_state(model, final_weights)
        self.results.append(result)
        self._best = None


def _trainable_state(model) -> dict[str, torch.Tensor]:
    return {name: p.detach().to("cpu", copy=True) for name, p in model.named_parameters() if p.requires_grad}


@torch.no_grad()
def _load_trainable_state(model, state: dict[str, torch.Tensor]) -> None:
    for name, p in model.named_parameters():
        if name in state:
            p.copy_(state[name])
