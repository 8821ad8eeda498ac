"""TofuEvalCallback: per-epoch forget quality, full evaluations of the final and the peak epoch, weights restored."""

from __future__ import annotations

import warnings

import pytest
import torch
from transformers import TrainerControl, TrainerState

from rklu_llm.eval.callback import TofuEvalCallback
from rklu_llm.eval.tofu import evaluate_tofu

from conftest import build_tiny_model

EVAL = dict(max_items=40, batch_size=16, max_new_tokens=4)
FQ = "forget01_forget_quality"


def _epoch_end(callback, model, epoch: float) -> None:
    state = TrainerState(epoch=epoch)
    callback.on_epoch_end(None, state, TrainerControl(), model=model)


def _train_end(callback, model, epoch: float) -> None:
    callback.on_train_end(None, TrainerState(epoch=epoch), TrainerControl(), model=model)


@pytest.fixture(scope="module")
def two_models(tiny_tokenizer, tofu_dir):
    """Model A, model B (other random weights) and a reference that is A's own forget-set evaluation (FQ(A) = 1)."""
    a, b = build_tiny_model(tiny_tokenizer, seed=0), build_tiny_model(tiny_tokenizer, seed=1)
    with torch.no_grad():  # larger weights, so the truth ratios of A and B really differ
        for model in (a, b):
            for p in model.parameters():
                if p.dim() > 1:
                    p.normal_(0, 0.3)
    with warnings.catch_warnings():  # no utility sets, no reference: both expected here
        warnings.simplefilter("ignore", UserWarning)
        reference = evaluate_tofu(a, tiny_tokenizer, "forget01", tofu_dir, sets=("forget01",), generate=False, **EVAL)
    return a, b, reference


def test_forget_quality_mode_evaluates_peak_and_final_in_full(two_models, tiny_tokenizer, tofu_dir):
    a, b, reference = two_models
    model = build_tiny_model(tiny_tokenizer)
    model.load_state_dict(a.state_dict())
    callback = TofuEvalCallback(tiny_tokenizer, "forget01", tofu_dir, reference, per_epoch="forget_quality", **EVAL)
    _epoch_end(callback, model, 1.0)  # epoch 1: A's weights, forget quality 1
    model.load_state_dict(b.state_dict())
    _epoch_end(callback, model, 2.0)  # epoch 2: B's weights
    first, second = callback.history
    assert first[FQ] == pytest.approx(1.0) and second[FQ] < 0.9
    # no generation and no utility sets per epoch
    assert first["model_utility"] is None and "retain_probability" not in first
    assert first["forget01_rouge_l_recall"] is None

    _train_end(callback, model, 2.0)
    final, peak = callback.final, callback.peak
    assert final["epoch"] == 2.0 and peak["epoch"] == 1.0
    for row in (final, peak):
        assert 0 <= row["model_utility"] <= 1 and row["forget01_rouge_l_recall"] is not None
    # the full evaluations ran on the weights of their epochs: same forget-set numbers as the per-epoch rows
    assert peak[FQ] == pytest.approx(first[FQ]) and final[FQ] == pytest.approx(second[FQ])
    assert peak["forget01_probability"] == pytest.approx(first["forget01_probability"])
    assert final["forget01_probability"] == pytest.approx(second["forget01_probability"])
    # and the model is left with its final weights
    for (name, p), q in zip(model.named_parameters(), b.parameters()):
        assert torch.equal(p, q), name
    assert len(callback.results) == 2 and callback.eval_seconds > 0


def test_forget_quality_mode_with_the_peak_last_evaluates_once(two_models, tiny_tokenizer, tofu_dir):
    a, b, reference = two_models
    model = build_tiny_model(tiny_tokenizer)
    model.load_state_dict(b.state_dict())
    callback = TofuEvalCallback(tiny_tokenizer, "forget01", tofu_dir, reference, per_epoch="forget_quality", **EVAL)
    _epoch_end(callback, model, 1.0)
    model.load_state_dict(a.state_dict())
    _epoch_end(callback, model, 2.0)
    _train_end(callback, model, 2.0)
    assert callback.peak is callback.final and callback.final["epoch"] == 2.0
    assert len(callback.results) == 1


def test_full_mode_picks_the_earliest_peak(two_models, tiny_tokenizer, tofu_dir):
    a, _, reference = two_models
    callback = TofuEvalCallback(tiny_tokenizer, "forget01", tofu_dir, reference, **EVAL)
    for epoch in (1.0, 2.0):
        _epoch_end(callback, a, epoch)
    _train_end(callback, a, 2.0)
    assert [row["epoch"] for row in callback.history] == [1.0, 2.0]
    assert all(row["model_utility"] is not None for row in callback.history)
    assert callback.final is callback.history[-1] and callback.peak is callback.history[0]


def test_forget_quality_mode_needs_a_reference(tiny_tokenizer):
    with pytest.raises(ValueError, match="reference"):
        TofuEvalCallback(tiny_tokenizer, "forget01", per_epoch="forget_quality")
    with pytest.raises(ValueError, match="per_epoch"):
        TofuEvalCallback(tiny_tokenizer, "forget01", per_epoch="sometimes")


def test_without_the_final_evaluation(two_models, tiny_tokenizer, tofu_dir):
    a, b, reference = two_models
    for order, peak_epoch in (((a, b), 1.0), ((b, a), 2.0)):
        model = build_tiny_model(tiny_tokenizer)
        callback = TofuEvalCallback(tiny_tokenizer, "forget01", tofu_dir, reference, per_epoch="forget_quality",
                                    evaluate_final=False, **EVAL)
        for epoch, weights in zip((1.0, 2.0), order):
            model.load_state_dict(weights.state_dict())
            _epoch_end(callback, model, epoch)
        _train_end(callback, model, 2.0)
        assert callback.final is None and callback.peak_epoch == peak_epoch
        if peak_epoch == 1.0:  # an earlier epoch: evaluated here, from its kept weights
            assert callback.peak["epoch"] == 1.0 and callback.peak["model_utility"] is not None
            assert len(callback.results) == 1
        else:  # the last epoch: left to the caller with the final weights
            assert callback.peak is None and not callback.results
