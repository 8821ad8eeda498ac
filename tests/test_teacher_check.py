"""The teacher check (rklu_llm.teacher_check): its statistics on hand-made logits, its verdicts for a weak and a
strong augmentation of a tiny model that memorised its forget items, where the trainer stores it (log, run record,
model card), and ``rklu-llm diagnose`` with its bad inputs refused before any model is loaded."""

from __future__ import annotations

import copy
import json
import logging
import math

import pytest
import torch
from conftest import build_tiny_model, tiny_config

from rklu_llm import UnlearnTrainer, build_unlearning_dataset, cli, load_tofu
from rklu_llm.data.qa import QACollator
from rklu_llm.losses import forward_kl, logit_subtraction_teacher, reverse_kl
from rklu_llm.run_state import RUN_RECORD
from rklu_llm.teacher_check import check_teacher, teacher_token_stats


def hand_logits():
    """B = 1, T = 3, V = 3; labels [-100, 0, 2]: position 0 predicts token 0, position 1 predicts token 2.

    Position 0: l_o = [2, 1, 0], l_a = [3, 1, 0]: rise of token 0 = 1; margin = 2 - 1 = 1; alpha 2 gives
    l_t = [2 - 2 * 1, 1, 0] = [0, 1, 0]: token 1 is now top-1; p_t(0) = 1 / (2 + e).
    Position 1: l_o = [0, 0, 3], l_a = [0, 0, 3.2]: rise 0.2; margin 3; l_t = [0, 0, 3 - 0.4] = [0, 0, 2.6]: token 2
    stays top-1; p_t(2) = e^2.6 / (2 + e^2.6). Position 2 predicts nothing (the shift).
    """
    orig = torch.tensor([[[2.0, 1.0, 0.0], [0.0, 0.0, 3.0], [9.0, 9.0, 9.0]]])
    aug = torch.tensor([[[3.0, 1.0, 0.0], [0.0, 0.0, 3.2], [0.0, 0.0, 0.0]]])
    labels = torch.tensor([[-100, 0, 2]])
    return orig, aug, labels


def test_token_stats_by_hand():
    orig, aug, labels = hand_logits()
    stats = teacher_token_stats(orig, aug, labels, alpha=2.0)
    torch.testing.assert_close(stats["rise"], torch.tensor([1.0, 0.2]))
    torch.testing.assert_close(stats["margin"], torch.tensor([1.0, 3.0]))
    torch.testing.assert_close(stats["original_top1"], torch.tensor([1.0, 1.0]))
    torch.testing.assert_close(stats["teacher_top1"], torch.tensor([0.0, 1.0]))
    e = math.e
    want = torch.tensor([1 / (2 + e), math.exp(2.6) / (2 + math.exp(2.6))])
    torch.testing.assert_close(stats["teacher_probability"], want)


def test_start_gradients_by_hand_and_by_autograd():
    """Position 1 of hand_logits: l_o = [0, 0, 3], l_t = [0, 0, 2.6]. With a = e^3 + 2 and b = e^2.6 + 2,
    p_o = [1, 1, e^3] / a and p_t = [1, 1, e^2.6] / b, so p_o(2) = e^3 / a; the forward-KL gradient p_o - p_t is
    [1/a - 1/b, 1/a - 1/b, e^3/a - e^2.6/b]. Both gradients must also equal autograd's on the library's own losses
    (rklu_llm.losses.reverse_kl / forward_kl) with the student's logits at the original's."""
    orig, aug, labels = hand_logits()
    stats = teacher_token_stats(orig, aug, labels, alpha=2.0)
    a, b = math.exp(3) + 2, math.exp(2.6) + 2
    assert stats["original_probability"][1].item() == pytest.approx(math.exp(3) / a)
    forward = [1 / a - 1 / b, 1 / a - 1 / b, math.exp(3) / a - math.exp(2.6) / b]
    assert stats["start_gradient_forward"][1].item() == pytest.approx(math.sqrt(sum(g * g for g in forward)))
    teacher = logit_subtraction_teacher(orig, aug, 2.0)
    for position in (0, 1):
        for loss, key in ((reverse_kl, "start_gradient_reverse"), (forward_kl, "start_gradient_forward")):
            student = orig[0, position].clone().requires_grad_(True)
            loss(student[None], teacher[0, position][None], torch.tensor([True])).backward()
            assert stats[key][position].item() == pytest.approx(student.grad.norm().item(), rel=1e-5)


def test_a_saturated_original_is_flagged_and_its_reverse_gradient_shrinks():
    """One position, V = 3, true token 0 pushed to the bottom by the teacher (rise 5, alpha 4): the reverse KL's
    start gradient shrinks with the original's certainty (about 10x per extra 9 of p_o), the forward KL's does not."""
    labels = torch.tensor([[-100, 0]])

    def stats_at(margin):
        orig = torch.tensor([[[margin, 0.0, 0.0], [0.0, 0.0, 0.0]]])
        aug = orig + torch.tensor([[[5.0, 0.0, 0.0], [0.0, 0.0, 0.0]]])
        batch = {"labels": labels}
        result = check_teacher(lambda w, _b: orig if w == "original" else aug, [batch], alpha=4.0)
        return result

    unsure, sure = stats_at(math.log(2 * 9)), stats_at(math.log(2 * 999))  # p_o(0) = 0.9 and 0.999
    assert unsure["original_true_probability"] == pytest.approx(0.9) and not unsure["saturated"]
    assert sure["original_true_probability"] == pytest.approx(0.999) and sure["saturated"]
    assert sure["saturated_fraction"] == 1.0 and "1 - p" in sure["saturation_note"] and unsure["saturation_note"] == ""
    ratio = unsure["median_start_gradient_reverse"] / sure["median_start_gradient_reverse"]
    assert 50 < ratio < 200  # (1 - 0.9) / (1 - 0.999) = 100, up to the log terms
    assert sure["median_start_gradient_forward"] == pytest.approx(unsure["median_start_gradient_forward"], rel=0.2)


def test_verdict_and_aggregates_by_hand():
    orig, aug, labels = hand_logits()
    batch = {"input_ids": torch.zeros(1, 3, dtype=torch.long), "labels": labels}

    def logits_of(which, _batch):
        return orig if which == "original" else aug

    result = check_teacher(logits_of, [batch], alpha=2.0, max_top1=0.5)
    assert result["tokens"] == 2 and result["teacher_top1_true"] == 0.5 and result["original_top1_true"] == 1.0
    assert result["mean_rise"] == pytest.approx(0.6) and result["median_margin"] in (1.0, 3.0)
    assert result["moved_fraction"] == 0.5  # 2 x 1 > 1 moves position 0; 2 x 0.2 < 3 leaves position 1
    assert result["verdict"] == "ok" and result["advice"] == ""  # 0.5 is not above 0.5
    weak = check_teacher(logits_of, [batch], alpha=2.0, max_top1=0.4)
    assert weak["verdict"] == "weak" and "augment_epochs" in weak["advice"] and "50%" in weak["advice"]


def test_the_verdict_is_relative_to_the_original():
    """A teacher that keeps the true top-1 wherever an unsure original had it (half the positions) changed nothing:
    weak, although its top-1 is true at only half the positions; the same share against a sure original is ok."""
    from rklu_llm.teacher_check import verdict

    assert verdict(0.48, 0.50, 0.5) == "weak"  # kept 96% of the original's correct predictions
    assert verdict(0.48, 1.00, 0.5) == "ok"
    assert verdict(0.25, 0.50, 0.5) == "ok"  # exactly half kept: not above
    assert verdict(0.26, 0.50, 0.5) == "weak"


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"alpha": 0.0}, "teacher_alpha must be > 0"),
        ({"alpha": 2.0, "max_top1": 0.0}, "must be in \\(0, 1\\]"),
        ({"alpha": 2.0, "max_top1": 1.5}, "must be in \\(0, 1\\]"),
    ],
)
def test_bad_settings(kwargs, message):
    orig, aug, labels = hand_logits()
    with pytest.raises(ValueError, match=message):
        check_teacher(lambda w, b: orig if w == "original" else aug, [{"labels": labels}], **kwargs)


def test_no_counted_token_is_an_error():
    orig, aug, _ = hand_logits()
    with pytest.raises(ValueError, match="no answer token"):
        check_teacher(lambda w, b: orig, [{"labels": torch.full((1, 3), -100)}], alpha=2.0)


@pytest.fixture(scope="module")
def memorised(tiny_tokenizer, tofu_dir):
    """A tiny Llama that has memorised 4 forget items (its top-1 is the true answer token nearly everywhere)."""
    torch.manual_seed(0)
    model = build_tiny_model(tiny_tokenizer)
    dataset = build_unlearning_dataset(tiny_tokenizer, load_tofu("forget01", tofu_dir).select(range(4)), max_length=256)
    rows = [{"input_ids": i, "labels": y} for i, y in zip(dataset.forget["input_ids"], dataset.forget["labels"])]
    batch = QACollator(tiny_tokenizer.pad_token_id)(rows)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(60):
        model(**batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return model, dataset


CHECK = dict(teacher_check_samples=2, teacher_check_max_new_tokens=6, max_length=256)


def test_weak_and_strong_augmentation_get_their_verdicts(tmp_path, tiny_tokenizer, memorised, caplog):
    model, dataset = memorised
    weak_args = tiny_config(tmp_path / "weak", "rklu", augment_max_steps=1, augment_learning_rate=1e-7, **CHECK)
    trainer = UnlearnTrainer(
        model=copy.deepcopy(model), args=weak_args, train_dataset=dataset, processing_class=tiny_tokenizer
    )
    with caplog.at_level(logging.WARNING, logger="rklu_llm"):
        trainer.setup_frozen_models()
    weak = trainer.teacher_check
    assert weak["original_top1_true"] > 0.9  # the original knows its forget items
    assert weak["verdict"] == "weak" and weak["teacher_top1_true"] > 0.9 and abs(weak["median_rise"]) < 0.01
    assert "teacher check" in caplog.text and "augment_epochs" in caplog.text  # the warning says what to change
    cont = weak["continuation"]
    assert cont["samples"] == 2 and cont["teacher_bleu"] == pytest.approx(cont["original_bleu"])

    strong_args = tiny_config(
        tmp_path / "strong", "rklu", augment_epochs=20, augment_max_steps=-1, augment_learning_rate=3e-3, **CHECK
    )
    trainer = UnlearnTrainer(
        model=copy.deepcopy(model), args=strong_args, train_dataset=dataset, processing_class=tiny_tokenizer
    )
    trainer.setup_frozen_models()
    strong = trainer.teacher_check
    assert strong["verdict"] == "ok" and strong["teacher_top1_true"] < 0.5 and strong["moved_fraction"] > 0.5
    assert strong["continuation"]["teacher_rouge_l_recall"] < strong["continuation"]["original_rouge_l_recall"]


def test_the_check_lands_in_the_run_record_and_the_card(tmp_path, tiny_tokenizer, memorised):
    model, dataset = memorised
    args = tiny_config(tmp_path / "out", "rklu", augment_max_steps=1, max_steps=1, **CHECK)
    trainer = UnlearnTrainer(
        model=copy.deepcopy(model), args=args, train_dataset=dataset, processing_class=tiny_tokenizer
    )
    trainer.train()
    trainer.save_model()
    record = json.loads((tmp_path / "out" / RUN_RECORD).read_text())
    assert record["teacher_check"]["verdict"] == trainer.teacher_check["verdict"]
    assert record["status"] == "finished" and record["fingerprint"]
    card = (tmp_path / "out" / "README.md").read_text()
    assert "**Teacher check** (before distillation)" in card and trainer.teacher_check["verdict"] in card


def test_methods_without_a_teacher_and_the_switch_skip_it(tmp_path, tiny_tokenizer, memorised):
    model, dataset = memorised
    for method, extra in (("ga", {}), ("rklu", {"teacher_check": False}), ("ta", {})):
        args = tiny_config(tmp_path / method, method, augment_max_steps=1, **{**CHECK, **extra})
        trainer = UnlearnTrainer(
            model=copy.deepcopy(model), args=args, train_dataset=dataset, processing_class=tiny_tokenizer
        )
        trainer.setup_frozen_models()
        assert trainer.teacher_check is None, method


DIAGNOSE = [
    "--use_cpu",
    "true",
    "--report_to",
    "none",
    "--per_device_train_batch_size",
    "4",
    "--augment_epochs",
    "1",
    "--augment_max_steps",
    "2",
    "--augment_learning_rate",
    "1e-3",
    "--max_length",
    "256",
    "--teacher_check_samples",
    "1",
    "--teacher_check_max_new_tokens",
    "4",
    "--disable_tqdm",
    "true",
]


def test_diagnose_command_builds_the_augmented_model_and_reports(tmp_path, tiny_model_dir, tofu_dir, capsys):
    out, report = tmp_path / "run", tmp_path / "check.json"
    argv = ["diagnose", "--model", str(tiny_model_dir), "--forget_split", "forget01", "--data_dir", str(tofu_dir)]
    cli.main([*argv, "--output_dir", str(out), "--report", str(report), *DIAGNOSE])
    result = json.loads(report.read_text())
    assert result["tokens"] > 0 and result["verdict"] in ("ok", "weak") and result["alpha"] == 8.0
    assert result["continuation"]["samples"] == 1
    printed = capsys.readouterr().out
    assert f"teacher check ({result['tokens']} forget tokens, alpha 8)" in printed
    # the augmented model sits where `rklu-llm unlearn --output_dir run` looks for it; no model was saved
    assert (tmp_path / "run.augmented" / "rklu_augmented.json").is_file() and not (out / "model.safetensors").exists()


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--method", "ga"], "distils from no teacher"),
        (["--teacher_alpha", "0"], "teacher_alpha must be > 0"),
        (["--report", "{tmp}"], "is a folder"),
    ],
)
def test_diagnose_refuses_bad_input_before_loading(tmp_path, tofu_dir, monkeypatch, extra, message):
    import rklu_llm.scripts.diagnose as diagnose

    monkeypatch.setattr(diagnose, "load_model", lambda *a, **k: pytest.fail("a model was loaded"))
    extra = [e.replace("{tmp}", str(tmp_path)) for e in extra]
    argv = ["diagnose", "--forget_split", "forget01", "--data_dir", str(tofu_dir), "--output_dir", str(tmp_path / "o")]
    with pytest.raises(ValueError, match=message):
        cli.main([*argv, *DIAGNOSE, *extra])


def test_diagnose_refuses_an_empty_forget_set_before_loading(tmp_path, tofu_dir, monkeypatch):
    import rklu_llm.scripts.diagnose as diagnose

    data = tmp_path / "tofu"
    data.mkdir()
    (data / "forget01.jsonl").write_text("")
    monkeypatch.setattr(diagnose, "load_model", lambda *a, **k: pytest.fail("a model was loaded"))
    argv = ["diagnose", "--forget_split", "forget01", "--data_dir", str(data), "--output_dir", str(tmp_path / "o")]
    from rklu_llm.data import DataUnavailableError

    with pytest.raises(DataUnavailableError, match="is empty"):
        cli.main([*argv, *DIAGNOSE])
