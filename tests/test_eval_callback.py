"""TofuEvalCallback: per-epoch forget quality, full evaluations of the final and the peak epoch, weights restored."""

from __future__ import annotations

import json
import warnings

import pytest
import torch
from conftest import build_tiny_model
from transformers import TrainerControl, TrainerState

from rklu_llm.eval.callback import TofuEvalCallback
from rklu_llm.eval.tofu import evaluate_tofu
from rklu_llm.io import model_name

EVAL = dict(max_items=40, batch_size=16, max_new_tokens=4)
SMALL = dict(max_items=8, batch_size=16, max_new_tokens=2)  # full evaluations of the best-checkpoint test
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
    # every row and result names what was evaluated: the model in training at that epoch, and what it started from
    for row in (first, second, final, peak):
        assert row["model"] == f"in training, epoch {row['epoch']:g}"
    for row in (first, second, final, peak, *callback.results):
        assert row["base_model"] == model_name(model)
    assert [r["model"] for r in callback.results] == ["in training, epoch 2", "in training, epoch 1"]


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


def test_first_peak_is_kept_and_evaluated_on_its_own_weights(two_models, tiny_tokenizer, tofu_dir):
    """Epochs low, mid, low, high forget quality: the first peak is epoch 2 (mid), the best epoch 4 (high, the last):
    the first peak's weights are kept from epoch 2 and fully evaluated, the final row serves the best epoch."""
    a, b, reference = two_models
    c = build_tiny_model(tiny_tokenizer, seed=2)
    with torch.no_grad():
        for p in c.parameters():
            if p.dim() > 1:
                p.normal_(0, 0.3)
    scorer = TofuEvalCallback(tiny_tokenizer, "forget01", tofu_dir, reference, per_epoch="forget_quality", **EVAL)
    for index, weights in enumerate((a, b, c)):
        _epoch_end(scorer, weights, float(index + 1))
    fq = {m: row[FQ] for m, row in zip((a, b, c), scorer.history)}
    assert len(set(fq.values())) == 3  # three distinct levels to order
    low, mid, high = sorted((a, b, c), key=fq.get)
    model = build_tiny_model(tiny_tokenizer)
    callback = TofuEvalCallback(
        tiny_tokenizer, "forget01", tofu_dir, reference, per_epoch="forget_quality", track_first_peak=True, **EVAL
    )
    for epoch, weights in enumerate((low, mid, low, high), start=1):
        model.load_state_dict(weights.state_dict())
        _epoch_end(callback, model, float(epoch))
    _train_end(callback, model, 4.0)
    assert callback.first_peak_epoch == 2.0 and callback.peak_epoch == 4.0
    assert callback.peak is callback.final
    first = callback.first_peak
    assert first["epoch"] == 2.0 and first["model_utility"] is not None
    assert first[FQ] == pytest.approx(fq[mid])  # evaluated on epoch 2's weights
    assert first["forget01_probability"] == pytest.approx(callback.history[1]["forget01_probability"])
    for (name, p), q in zip(model.named_parameters(), high.parameters()):  # the final weights are back
        assert torch.equal(p, q), name
    assert len(callback.results) == 2


def test_full_mode_picks_the_earliest_peak(two_models, tiny_tokenizer, tofu_dir):
    a, _, reference = two_models
    callback = TofuEvalCallback(tiny_tokenizer, "forget01", tofu_dir, reference, **EVAL)
    for epoch in (1.0, 2.0):
        _epoch_end(callback, a, epoch)
    _train_end(callback, a, 2.0)
    assert [row["epoch"] for row in callback.history] == [1.0, 2.0]
    assert all(row["model_utility"] is not None for row in callback.history)
    assert callback.final is callback.history[-1] and callback.peak is callback.history[0]
    assert callback.first_peak is callback.history[0] and callback.first_peak_epoch == 1.0


def test_forget_quality_mode_needs_a_reference(tiny_tokenizer):
    with pytest.raises(ValueError, match="reference"):
        TofuEvalCallback(tiny_tokenizer, "forget01", per_epoch="forget_quality")
    with pytest.raises(ValueError, match="per_epoch"):
        TofuEvalCallback(tiny_tokenizer, "forget01", per_epoch="sometimes")


def test_without_the_final_evaluation(two_models, tiny_tokenizer, tofu_dir):
    a, b, reference = two_models
    for order, peak_epoch in (((a, b), 1.0), ((b, a), 2.0)):
        model = build_tiny_model(tiny_tokenizer)
        callback = TofuEvalCallback(
            tiny_tokenizer, "forget01", tofu_dir, reference, per_epoch="forget_quality", evaluate_final=False, **EVAL
        )
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


# ---------------------------------------------------------------------------------------------------------------------
# Every rank evaluates, rows go through trainer.log, the best checkpoint at a utility floor
# ---------------------------------------------------------------------------------------------------------------------


def _trainer(model, tiny_tokenizer, output_dir):
    from transformers import Trainer, TrainingArguments

    args = TrainingArguments(output_dir=str(output_dir), report_to="none", use_cpu=True, save_strategy="no")
    return Trainer(model=model, args=args, processing_class=tiny_tokenizer)


def test_rows_are_logged_through_the_trainer(two_models, tiny_tokenizer, tofu_dir, tmp_path):
    from transformers import TrainerCallback

    a, _, reference = two_models
    model = build_tiny_model(tiny_tokenizer)
    model.load_state_dict(a.state_dict())
    trainer = _trainer(model, tiny_tokenizer, tmp_path)
    seen = []

    class Recorder(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            seen.append(dict(logs))

    trainer.add_callback(Recorder())  # stands for TensorBoard / W&B: every logger gets on_log
    callback = TofuEvalCallback(
        tiny_tokenizer, "forget01", tofu_dir, reference, per_epoch="forget_quality", trainer=trainer, **EVAL
    )
    trainer.state.epoch = 1.0
    callback.on_epoch_end(trainer.args, trainer.state, trainer.control, model=model)
    logged = trainer.state.log_history[-1]
    assert logged["tofu/forget01_forget_quality"] == pytest.approx(1.0)
    assert logged["tofu/forget01_probability"] == pytest.approx(callback.history[0]["forget01_probability"])
    assert "tofu/model_utility" not in logged  # None values are not logged
    assert seen and seen[-1]["tofu/forget01_forget_quality"] == pytest.approx(1.0)


def test_every_rank_evaluates(two_models, tiny_tokenizer, tofu_dir):
    """The all-ranks code path without DDP: a process that is not the main one runs the same evaluation."""
    a, _, reference = two_models
    callback = TofuEvalCallback(tiny_tokenizer, "forget01", tofu_dir, reference, per_epoch="forget_quality", **EVAL)
    state = TrainerState(epoch=1.0)
    state.is_world_process_zero = False
    callback.on_epoch_end(None, state, TrainerControl(), model=a)
    assert len(callback.history) == 1 and callback.history[0][FQ] == pytest.approx(1.0)
    assert callback._best is not None  # each rank keeps its own copy (its shard) of the best weights


def test_best_checkpoint_at_a_utility_floor(two_models, tiny_tokenizer, tofu_dir, tmp_path):
    a, b, reference = two_models
    model = build_tiny_model(tiny_tokenizer)
    trainer = _trainer(model, tiny_tokenizer, tmp_path / "run")
    best = tmp_path / "run" / "best"
    callback = TofuEvalCallback(
        tiny_tokenizer, "forget01", tofu_dir, reference, trainer=trainer, best_dir=best, min_model_utility=0.0, **SMALL
    )
    callback.on_train_begin(trainer.args, trainer.state, trainer.control)
    for epoch, weights in ((1.0, b), (2.0, a)):  # forget quality peaks at epoch 2 (A's weights)
        model.load_state_dict(weights.state_dict())
        trainer.state.epoch = epoch
        callback.on_epoch_end(trainer.args, trainer.state, trainer.control, model=model)
    assert callback.best_epoch == 2.0
    record = json.loads((best / "best_forget_quality.json").read_text())
    assert record["row"]["epoch"] == 2.0 and record["min_model_utility"] == 0.0
    saved = type(model).from_pretrained(best)
    for (name, p), q in zip(saved.named_parameters(), a.parameters()):
        assert torch.equal(p, q), name
    assert not (best / ".rklu-staging").exists()

    # a floor no epoch reaches: nothing is kept
    floor = max(row["model_utility"] for row in callback.history) + 1e-6
    strict = TofuEvalCallback(
        tiny_tokenizer,
        "forget01",
        tofu_dir,
        reference,
        trainer=trainer,
        best_dir=tmp_path / "none",
        min_model_utility=min(floor, 1.0),
        **SMALL,
    )
    strict.on_epoch_end(trainer.args, trainer.state, trainer.control, model=model)
    assert strict.best_epoch is None and not (tmp_path / "none").exists()


def test_best_checkpoint_settings_are_checked(tiny_tokenizer, tmp_path):
    with pytest.raises(ValueError, match="per_epoch='full'"):
        TofuEvalCallback(
            tiny_tokenizer,
            "forget01",
            reference={},
            per_epoch="forget_quality",
            best_dir=tmp_path,
            min_model_utility=0.3,
        )
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        TofuEvalCallback(tiny_tokenizer, "forget01", reference={}, best_dir=tmp_path, min_model_utility=1.5)
    with pytest.raises(ValueError, match="reference"):
        TofuEvalCallback(tiny_tokenizer, "forget01", best_dir=tmp_path)
    callback = TofuEvalCallback(tiny_tokenizer, "forget01", reference={}, best_dir=tmp_path)
    with pytest.raises(ValueError, match="trainer="):
        callback.on_train_begin(None, TrainerState(), TrainerControl())


@pytest.mark.slow
def test_two_processes_evaluate_every_epoch_and_keep_the_best(
    two_models, tiny_tokenizer, tiny_model_dir, tofu_dir, tmp_path
):
    """``accelerate launch`` with 2 CPU processes (gloo): both ranks evaluate after every epoch, rank 0 writes."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    reference = tmp_path / "retain" / "tofu_eval.json"
    reference.parent.mkdir()
    reference.write_text(json.dumps(two_models[2]))
    out = tmp_path / "ga_ddp"
    command = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        str(repo / "accelerate_configs" / "cpu.yaml"),
        str(repo / "recipes" / "tofu_forget01.py"),
        "--model",
        str(tiny_model_dir),
        "--method",
        "ga",
        "--data_dir",
        str(tofu_dir),
        "--output_dir",
        str(out),
        "--retain_eval",
        str(reference),
        "--eval_every_epoch",
        "--best_checkpoint",
        "--min_model_utility",
        "0",
        "--num_train_epochs",
        "2",
        "--per_device_train_batch_size",
        "20",
        "--save_strategy",
        "no",
        "--use_cpu",
        "--report_to",
        "none",
        "--disable_tqdm",
        "true",
        "--learning_rate",
        "1e-3",
        "--max_length",
        "256",
        "--eval_max_items",
        "4",
        "--max_new_tokens",
        "4",
        "--eval_batch_size",
        "8",
        "--logging_steps",
        "1",
    ]
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "OMP_NUM_THREADS": "1",
    }
    done = subprocess.run(command, cwd=repo, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"--- stdout ---\n{done.stdout[-3000:]}\n--- stderr ---\n{done.stderr[-6000:]}"
    epochs = json.loads((out / "tofu_eval_epochs.json").read_text())
    assert [row["epoch"] for row in epochs["epochs"]] == [1.0, 2.0]
    assert all(row["model_utility"] is not None for row in epochs["epochs"])  # full evaluations every epoch
    record = json.loads((out / "best_forget_quality" / "best_forget_quality.json").read_text())
    curve = [row[FQ] for row in epochs["epochs"]]
    assert record["row"]["epoch"] == [1.0, 2.0][curve.index(max(curve))]
    assert (out / "best_forget_quality" / "model.safetensors").is_file()


def test_holdout_rule_reuses_the_forget_scores_of_the_epochs_evaluation(
    two_models, tiny_tokenizer, tofu_dir, monkeypatch
):
    """Per epoch the forget answers are scored once (by the evaluation); the rule scores only the holdout answers
    and its KS p / AUC equal those of scoring both sets directly."""
    import rklu_llm.eval.callback as callback_module
    from rklu_llm.eval.scoring import score_answers
    from rklu_llm.eval.stopping import holdout_signal

    a, _, reference = two_models
    callback = TofuEvalCallback(
        tiny_tokenizer, "forget01", tofu_dir, reference, per_epoch="forget_quality", select_by="holdout", **EVAL
    )
    scored = []

    def counting(model, tokenizer, questions, answers, **kwargs):
        scored.append(list(questions))
        return score_answers(model, tokenizer, questions, answers, **kwargs)

    monkeypatch.setattr(callback_module, "score_answers", counting)
    _epoch_end(callback, a, 1.0)
    assert scored == [callback.holdout["holdout"]["question"]]  # the forget items were not scored again
    direct = {}
    for name in ("forget", "holdout"):
        items = callback.holdout[name]
        nll, tokens = score_answers(a, tiny_tokenizer, items["question"], items["answer"], batch_size=16)
        direct[name] = (nll / tokens.clip(min=1)).tolist()
    want = holdout_signal(direct["forget"], direct["holdout"])
    row = callback.history[0]
    assert row["holdout_ks_p"] == pytest.approx(want["holdout_ks_p"])
    assert row["holdout_auc_loss"] == pytest.approx(want["holdout_auc_loss"])
