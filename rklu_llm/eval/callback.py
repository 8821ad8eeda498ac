"""Evaluate TOFU during unlearning: after every epoch, and the epoch of peak forget quality (as the RKL-U paper
reports it) next to the final one; under every launcher (single process, DDP, FSDP, DeepSpeed ZeRO-3)."""

from __future__ import annotations

import math
import shutil
import time
import warnings
from pathlib import Path

import torch
from transformers import TrainerCallback

from ..models import staged_save
from ..trainer import AUGMENTED_ADAPTER
from .io import write_json_atomic
from .tofu import evaluate_tofu, summary_row

PER_EPOCH = ("full", "forget_quality")
BEST_FILE = "best_forget_quality.json"


class TofuEvalCallback(TrainerCallback):
    """Evaluates the live model on TOFU during training, with every process.

    Every process runs the same evaluation on the same items (sharded weights, FSDP or ZeRO-3, need every rank in
    each forward pass; ``generate`` synchronises the ranks itself); all processes hold the same rows, and only the
    main process writes files. With ``trainer`` set (``TofuEvalCallback(..., trainer=trainer)``, or
    ``callback.trainer = trainer`` before training) every row's numbers go through ``trainer.log`` under
    ``log_prefix``: into ``state.log_history`` and every logger the Trainer reports to (TensorBoard, W&B, ...).

    ``per_epoch="full"``: :func:`~rklu_llm.eval.tofu.evaluate_tofu` after each epoch.

    ``per_epoch="forget_quality"``: after each epoch only the forget set's likelihoods are scored (forget quality,
    forget probability and truth ratio; no generation, no utility sets), which costs a small fraction of a full
    evaluation. The trainable weights of the best epoch so far are copied to CPU memory (each rank its own shard),
    and when training ends both the final weights and the peak epoch's weights get a full evaluation (the model is
    left with its final weights). Needs a forget-quality ``reference``. ``evaluate_final=False`` leaves the final
    weights to the caller (e.g. a recipe that evaluates the model it saved): ``final`` stays ``None``, and so does
    ``peak`` when the peak is the last epoch.

    Best checkpoint: with ``best_dir`` (and ``trainer``), the weights of the epoch with the highest forget quality so
    far among the epochs whose model utility reaches ``min_model_utility`` are saved there with
    :func:`~rklu_llm.models.staged_save` (all ranks take part, so sharded weights are gathered; each file is moved into
    place whole) next to ``best_forget_quality.json`` (its row). A utility floor needs the utility of every epoch,
    so ``min_model_utility`` needs ``per_epoch="full"``.

    After training: ``history`` holds one row per epoch (``epoch``, ``eval_seconds``, the peak GPU memory of the
    training steps before it, and :func:`~rklu_llm.eval.tofu.summary_row`'s values); ``final`` and ``peak`` are the
    fully evaluated rows of the last epoch and of the epoch with the highest forget quality (``peak_epoch``, the
    earliest on ties; ``None`` when forget quality is unavailable); ``results`` the full results behind them;
    ``best_epoch`` the epoch saved to ``best_dir``. ``eval_seconds`` sums all evaluation time, so callers can subtract
    it from wall time. The state is not part of a checkpoint: a resumed run tracks only the epochs it trains.
    """

    def __init__(
        self,
        tokenizer,
        forget_split: str,
        data_dir=None,
        reference=None,
        per_epoch: str = "full",
        evaluate_final: bool = True,
        trainer=None,
        best_dir=None,
        min_model_utility: float | None = None,
        log_prefix: str = "tofu/",
        **eval_kwargs,
    ):
        if per_epoch not in PER_EPOCH:
            raise ValueError(f"per_epoch must be one of {PER_EPOCH}, got {per_epoch!r}")
        if per_epoch == "forget_quality" and reference is None:
            raise ValueError(
                "per_epoch='forget_quality' selects the epoch by forget quality: pass reference=<the "
                "retain-only model's tofu_eval.json>."
            )
        if best_dir is not None and reference is None:
            raise ValueError(
                "best_dir keeps the epoch of best forget quality: pass reference=<the retain-only "
                "model's tofu_eval.json>."
            )
        if min_model_utility is not None:
            if best_dir is None:
                raise ValueError("min_model_utility is the floor of the best checkpoint: pass best_dir as well.")
            if not 0.0 <= min_model_utility <= 1.0:
                raise ValueError(f"min_model_utility must be in [0, 1], got {min_model_utility}")
            if per_epoch != "full":
                raise ValueError(
                    "min_model_utility needs the model utility of every epoch: use per_epoch='full' (a "
                    "per-epoch evaluation with generation), or drop the floor."
                )
        self.tokenizer = tokenizer
        self.forget_split = forget_split
        self.data_dir = data_dir
        self.reference = reference
        self.per_epoch = per_epoch
        self.evaluate_final = evaluate_final
        self.trainer = trainer
        self.best_dir = None if best_dir is None else Path(best_dir)
        self.min_model_utility = min_model_utility
        self.log_prefix = log_prefix
        self.eval_kwargs = eval_kwargs
        self.history: list[dict] = []
        self.results: list[dict] = []
        self.final: dict | None = None
        self.peak: dict | None = None
        self.peak_epoch: float | None = None
        self.best_epoch: float | None = None
        self.eval_seconds = 0.0
        self._best: tuple[float, float, dict] | None = None  # (forget quality, epoch, CPU copy of trainable weights)
        self._best_saved: float | None = None  # forget quality of the checkpoint in best_dir

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
            result = evaluate_tofu(
                model,
                self.tokenizer,
                forget_splits=(self.forget_split,),
                data_dir=self.data_dir,
                reference=self.reference,
                **kwargs,
            )
        seconds = time.perf_counter() - start
        self.eval_seconds += seconds
        return result, {"epoch": epoch, "eval_seconds": seconds, **summary_row(result)}

    def _log(self, row: dict, tag: str = "") -> None:
        """The row's numbers through ``trainer.log`` (the Trainer's loggers), when a trainer is attached."""
        if self.trainer is None:
            return
        logs = {
            f"{self.log_prefix}{tag}{key}": float(value)
            for key, value in row.items()
            if key not in ("epoch", "model")
            and isinstance(value, (int, float))
            and not isinstance(value, bool)
            and value is not None
            and math.isfinite(value)
        }
        if logs:
            self.trainer.log(logs)

    def on_train_begin(self, args, state, control, **kwargs):
        if self.best_dir is not None and self.trainer is None:
            raise ValueError(
                "best_dir saves checkpoints through the Trainer: create the callback with "
                "trainer=<the Trainer> (or set callback.trainer before training)."
            )

    def on_epoch_end(self, args, state, control, model=None, **kwargs):
        if model is None:
            return
        train_peak = torch.cuda.max_memory_allocated() if torch.cuda.is_available() else None
        epoch = round(state.epoch or 0.0, 3)
        result, row = self._evaluate(model, epoch, full=self.per_epoch == "full")
        row["train_peak_memory_bytes"] = train_peak
        self.history.append(row)
        self._log(row)
        if self.per_epoch == "full":
            self.results.append(result)
        else:
            fq = self._fq(row)
            if fq is not None and (self._best is None or fq > self._best[0]):
                self._best = (fq, epoch, _trainable_state(model))
        self._maybe_save_best(row, state)
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()

    def _maybe_save_best(self, row: dict, state) -> None:
        fq = self._fq(row)
        if self.best_dir is None or fq is None:
            return
        utility = row.get("model_utility")
        if self.min_model_utility is not None and (utility is None or utility < self.min_model_utility):
            return
        if self._best_saved is not None and fq <= self._best_saved:
            return
        record = {"row": row, "min_model_utility": self.min_model_utility, "global_step": state.global_step}
        # every rank takes part (sharded weights are gathered); the main process writes, through a staging folder
        staged_save(self.trainer, self.best_dir, lambda staging: _publishable(staging, record))
        self._best_saved, self.best_epoch = fq, row["epoch"]

    def on_train_end(self, args, state, control, model=None, **kwargs):
        if model is None or not self.history:
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
            self._log(self.final, "final/")
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
        self._log(self.peak, "peak/")
        self._best = None


def _publishable(staging: Path, record: dict) -> None:
    """Finish a best checkpoint before it is moved into place: its row beside the weights, and without the augmented
    adapter a LoRA student may carry (the forget set's knowledge, amplified, never travels with an unlearned model)."""
    shutil.rmtree(staging / AUGMENTED_ADAPTER, ignore_errors=True)
    write_json_atomic(staging / BEST_FILE, record)


def _local(p: torch.Tensor) -> torch.Tensor:
    """This rank's storage of a parameter: DeepSpeed ZeRO-3 keeps its partition in ``ds_tensor`` (the parameter itself
    is an empty placeholder outside a forward pass); DDP / FSDP parameters are their own (local shard)."""
    return getattr(p, "ds_tensor", None) if getattr(p, "ds_tensor", None) is not None else p


def _trainable_state(model) -> dict[str, torch.Tensor]:
    return {name: _local(p).detach().to("cpu", copy=True) for name, p in model.named_parameters() if p.requires_grad}


@torch.no_grad()
def _load_trainable_state(model, state: dict[str, torch.Tensor]) -> None:
    for name, p in model.named_parameters():
        if name in state:
            _local(p).copy_(state[name])
