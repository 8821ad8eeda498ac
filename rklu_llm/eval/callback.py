"""Evaluate TOFU during unlearning: after every epoch, and the epoch of peak forget quality (as the RKL-U paper
reports it) next to the final one; under every launcher (single process, DDP, FSDP, DeepSpeed ZeRO-3)."""

from __future__ import annotations

import math
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from transformers import TrainerCallback

from ..data import HOLDOUT_OF_FORGET, load_tofu
from ..frozen import FrozenModels
from ..io import write_json_atomic
from ..models import staged_save
from .scoring import score_answers
from .stopping import AUC, SIGNAL, check_rule, first_peak, holdout_signal, select_epoch
from .tofu import evaluate_tofu, summary_row

PER_EPOCH = ("full", "forget_quality")
SELECT_BY = ("forget_quality", "holdout")
BEST_FILE = "best_forget_quality.json"
SELECTED_FILE = "selected_epoch.json"


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

    Without an oracle (``select_by="holdout"``, :mod:`rklu_llm.eval.stopping`): after each epoch the forget items and
    TOFU's holdout items of the same size (``holdout_split``, default ``holdout01/05/10``) are scored (per-item mean
    answer NLL) and each row gains ``holdout_ks_p`` and ``holdout_auc_loss``. The rule picks the first epoch with
    ``holdout_ks_p >= holdout_min_p`` (and utility at ``min_model_utility``), else the highest p-value at the floor;
    ``selected`` / ``selected_epoch`` hold it, fully evaluated at the end like the peak (forget quality only when a
    ``reference`` is given, for comparison), ``best_dir`` then keeps that epoch's weights (with ``selected_epoch.json``)
    and ``stop_early`` ends training at the epoch where the rule is met. No reference is needed.

    ``track_first_peak`` (with ``per_epoch="forget_quality"``; always with ``"full"``): ``first_peak`` /
    ``first_peak_epoch`` hold the epoch where forget quality first peaks (:func:`~rklu_llm.eval.stopping.first_peak`,
    the RKL-U paper's selection; a plateau counts only when forget quality falls after it), fully evaluated; one
    copy of the weights of the first peak so far is kept until the end.
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
        select_by: str = "forget_quality",
        holdout_split: str | None = None,
        holdout_min_p: float = 0.05,
        stop_early: bool = False,
        track_first_peak: bool = False,
        **eval_kwargs,
    ):
        if per_epoch not in PER_EPOCH:
            raise ValueError(f"per_epoch must be one of {PER_EPOCH}, got {per_epoch!r}")
        if select_by not in SELECT_BY:
            raise ValueError(f"select_by must be one of {SELECT_BY}, got {select_by!r}")
        self.select_by = select_by
        self.holdout_min_p = holdout_min_p
        self.stop_early = stop_early
        self.holdout: dict | None = None
        if select_by == "holdout":
            check_rule(holdout_min_p, min_model_utility)
            if min_model_utility is not None and per_epoch != "full":
                raise ValueError(
                    "min_model_utility needs the model utility of every epoch: use per_epoch='full', or drop the floor."
                )
            self.holdout = holdout_items(forget_split, holdout_split, data_dir, eval_kwargs.get("max_items"))
            min_model_utility, self._holdout_floor = None, min_model_utility  # the rule's floor, not the FQ best's
        else:
            if stop_early:
                raise ValueError("stop_early stops where the oracle-free rule is met: use select_by='holdout'.")
            self._holdout_floor = None
        if per_epoch == "forget_quality" and reference is None and select_by != "holdout":
            raise ValueError(
                "per_epoch='forget_quality' selects the epoch by forget quality: pass reference=<the "
                "retain-only model's tofu_eval.json>."
            )
        if best_dir is not None and reference is None and select_by != "holdout":
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
        self.selected: dict | None = None
        self.selected_epoch: float | None = None
        self._chosen: tuple[float, dict | None] | None = None  # (epoch, CPU copy of its weights) under select_by
        self.track_first_peak = track_first_peak
        self.first_peak: dict | None = None
        self.first_peak_epoch: float | None = None
        self._first: tuple[float, dict] | None = None  # (epoch, CPU copy of its weights) of the first peak so far

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
        # what was evaluated: the model in training at this epoch, not the folder it was loaded from
        result.update(model=f"in training, epoch {epoch:g}", base_model=result.get("base_model") or result["model"])
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
        if self.holdout is not None:
            row.update(self._holdout_signal(model, result))
        self.history.append(row)
        self._log(row)
        if self.per_epoch == "full":
            self.results.append(result)
        else:
            fq = self._fq(row)
            if fq is not None and (self._best is None or fq > self._best[0]):
                self._best = (fq, epoch, _trainable_state(model))
            if self.track_first_peak:
                self._follow_first_peak(model, epoch)
        if self.holdout is not None:
            self._follow_rule(model, row, state, control)
        else:
            self._maybe_save_best(row, state)
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()

    def _follow_first_peak(self, model, epoch: float) -> None:
        """Keep the weights of the first peak so far: this epoch's when it is the new candidate (a new high before
        forget quality first goes down); once it has gone down, the candidate never changes again."""
        index = first_peak([self._fq(row) for row in self.history])
        if index is not None and index == len(self.history) - 1:
            self._first = (epoch, _trainable_state(model))

    def _evaluate_first_peak(self, model) -> None:
        """The first peak of forget quality, fully evaluated: the row already there (per_epoch='full', or the final
        / peak epoch), else its kept weights evaluated like the peak's."""
        index = first_peak([self._fq(row) for row in self.history])
        if index is None:
            return
        row = self.history[index]
        self.first_peak_epoch = row["epoch"]
        kept = self._first[1] if self._first is not None and self._first[0] == row["epoch"] else None
        self.first_peak = self._full_row(model, row, kept, "first_peak/")
        self._first = None

    def _holdout_signal(self, model, result: dict) -> dict:
        """The rule's KS p / AUC of this epoch. The forget answers' mean NLLs come from the evaluation just made
        (its per-item answer probabilities are ``exp(-mean NLL)``) when it scored the same items; else they, and
        always the holdout answers, are scored here."""
        losses = {}
        scored = result.get("sets", {}).get(f"{self.forget_split}_perturbed", {}).get("items", {})
        if scored.get("question") == self.holdout["forget"]["question"] and "answer_probability" in scored:
            losses["forget"] = -np.log(np.asarray(scored["answer_probability"], dtype=np.float64))
        for name in ("forget", "holdout"):
            if name in losses:
                continue
            items = self.holdout[name]
            nll, tokens = score_answers(
                model,
                self.tokenizer,
                items["question"],
                items["answer"],
                batch_size=self.eval_kwargs.get("batch_size", 16),
                desc=f"Scoring {name} items (holdout rule)",
            )
            losses[name] = nll / tokens.clip(min=1)
        return holdout_signal(losses["forget"], losses["holdout"])

    def _follow_rule(self, model, row: dict, state, control) -> None:
        """The oracle-free rule over the epochs so far: the chosen epoch is the one before or this one."""
        index = select_epoch(self.history, self.holdout_min_p, self._holdout_floor)
        if index is not None and index == len(self.history) - 1:  # this epoch is the rule's choice so far
            keep = None if self.per_epoch == "full" else _trainable_state(model)
            self._chosen = (row["epoch"], keep)
            if self.best_dir is not None:
                record = {"row": row, "rule": self.rule(), "global_step": state.global_step}
                self._save_best(record, SELECTED_FILE)
                self.best_epoch = row["epoch"]
        if self.stop_early and index is not None and self.history[index][SIGNAL] >= self.holdout_min_p:
            control.should_training_stop = True

    def rule(self) -> dict:
        """The oracle-free rule's settings, as recorded next to its choice."""
        return {
            "select_by": self.select_by,
            "holdout_split": self.holdout["split"] if self.holdout else None,
            "holdout_min_p": self.holdout_min_p,
            "min_model_utility": self._holdout_floor,
            "stop_early": self.stop_early,
        }

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
        self._save_best(record, BEST_FILE)
        self._best_saved, self.best_epoch = fq, row["epoch"]

    def _save_best(self, record: dict, name: str) -> None:
        """The trainer's model into ``best_dir`` with ``record`` beside it as ``name``. Every rank takes part (sharded
        weights are gathered); the main process writes, through a staging folder. The frozen models a student may
        carry (the augmented adapter: the forget set's knowledge, amplified) are left out by
        :meth:`~rklu_llm.frozen.FrozenModels.out_of_saves`, as in every save of the trainer."""
        with FrozenModels.out_of_saves(self.trainer):
            staged_save(self.trainer, self.best_dir, lambda staging: write_json_atomic(staging / name, record))

    def on_train_end(self, args, state, control, model=None, **kwargs):
        if model is None or not self.history:
            return
        self._end_of_training(model)
        if self.track_first_peak or self.per_epoch == "full":
            self._evaluate_first_peak(model)
        if self.holdout is not None:
            self._evaluate_selected(model)

    def _evaluate_selected(self, model) -> None:
        """The rule's epoch, fully evaluated: the row already there (per_epoch='full', or the final / peak epoch),
        else its kept weights evaluated like the peak's."""
        index = select_epoch(self.history, self.holdout_min_p, self._holdout_floor)
        if index is None:
            return
        row = self.history[index]
        self.selected_epoch = row["epoch"]
        signal = {k: row[k] for k in (SIGNAL, AUC)}
        kept = self._chosen[1] if self._chosen is not None else None
        self.selected = self._full_row(model, row, kept, "selected/", signal)
        self._chosen = None

    def _full_row(self, model, row: dict, kept: dict | None, tag: str, extra: dict | None = None) -> dict | None:
        """``row``'s epoch fully evaluated: with per_epoch='full' the row itself, else the final / peak / first-peak
        row of that epoch when there is one, else ``kept`` (a CPU copy of that epoch's trainable weights) evaluated
        and logged under ``tag``; ``None`` without either. ``extra`` is added to the row returned."""
        for done in (self.final, self.peak, self.first_peak) if self.per_epoch != "full" else (row,):
            if done is not None and done["epoch"] == row["epoch"]:
                return {**done, **extra} if extra else done
        if kept is None:
            return None
        evaluated = {**self._evaluate_weights(model, row["epoch"], kept), **(extra or {})}
        self._log(evaluated, tag)
        return evaluated

    def _evaluate_weights(self, model, epoch: float, weights: dict) -> dict:
        """A full evaluation of ``weights`` (an epoch's trainable weights), the model's own weights restored after."""
        final_weights = _trainable_state(model)
        _load_trainable_state(model, weights)
        try:
            result, row = self._evaluate(model, epoch, full=True)
        finally:
            _load_trainable_state(model, final_weights)
        self.results.append(result)
        return row

    def _end_of_training(self, model) -> None:
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
        self.peak = self._evaluate_weights(model, best_epoch, weights)
        self._log(self.peak, "peak/")
        self._best = None


def holdout_items(forget_split: str, holdout_split: str | None, data_dir, max_items: int | None) -> dict:
    """The forget and holdout questions and answers the oracle-free rule scores (the first ``max_items`` of each);
    read here, so that missing holdout data fails before training.

    Raises:
        ValueError: no holdout split is known for ``forget_split`` and none was given.
        DataUnavailableError: the holdout split cannot be read.
    """
    split = holdout_split or HOLDOUT_OF_FORGET.get(forget_split)
    if split is None:
        raise ValueError(
            f"select_by='holdout' needs data the model never saw: no holdout split is known for {forget_split!r}; "
            "pass holdout_split=<a TOFU split of unseen authors>."
        )
    out = {"split": split}
    for name, config in (("forget", forget_split), ("holdout", split)):
        rows = load_tofu(config, data_dir)
        if max_items is not None:
            rows = rows.select(range(min(max_items, len(rows))))
        out[name] = {"question": list(rows["question"]), "answer": list(rows["answer"])}
    return out


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
