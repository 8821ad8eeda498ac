"""The audit: every formula on hand-made inputs, then tiny models with planted memorisation (a model trained to repeat
its forget answers leaks, has AUC near 1, and knowledge unlearned by gradient ascent comes back under relearning; a
fresh model does none of that), caching, the script, and the bad inputs that must fail before any model work."""

from __future__ import annotations

import copy
import json
import math
import zlib

import numpy as np
import pytest
import torch
from conftest import build_tiny_model

import rklu_llm.eval.audit as audit_module
from rklu_llm.data import load_tofu
from rklu_llm.data.qa import pad_examples
from rklu_llm.eval.audit import (
    AuditSettings,
    audit_summary_row,
    check_audit,
    evaluate_audit,
    quantized_weights,
    relearn_attack,
)
from rklu_llm.eval.metrics import (
    exact_memorization,
    extraction_strength,
    fill_in_blank,
    is_content_word,
    leak_flags,
    membership_auc,
    min_k_plus_plus_score,
    min_k_score,
    privleak,
    zlib_score,
)
from rklu_llm.eval.scoring import qa_examples
from rklu_llm.losses import token_nll

ITEMS = 8  # forget01 / holdout01 items used with the tiny models
FAST = dict(max_items=ITEMS, batch_size=16, leak_k=2, leak_max_new_tokens=40, max_new_tokens=40)


# ---------------------------------------------------------------------------------------------------------------------
# Formulas, by hand
# ---------------------------------------------------------------------------------------------------------------------


def test_min_k_scores_by_hand():
    lp = [-1.0, -4.0, -2.0, -3.0, -0.5]
    # k = 0.4 of 5 tokens: floor(2.0) = 2 lowest, -4 and -3: score -mean = 3.5
    assert min_k_score(lp, 0.4) == pytest.approx(3.5)
    # k = 0.1: floor(0.5) = 0 -> at least 1 token: the lowest, 4
    assert min_k_score(lp, 0.1) == pytest.approx(4.0)
    assert min_k_score([], 0.4) == 0.0
    # min-k%++: z = (lp - mu) / sigma; lp = [-1, -3], mu = [-2, -2], sigma = [0.5, 2] -> z = [2, -0.5]
    # k = 0.5 of 2 tokens: 1 lowest, -0.5 -> score 0.5
    assert min_k_plus_plus_score([-1.0, -3.0], [-2.0, -2.0], [0.5, 2.0], 0.5) == pytest.approx(0.5)
    # sigma 0 is clamped to sqrt(1e-6) = 1e-3: z = (-1 - -1.001) / 1e-3 = 1 -> score -1
    assert min_k_plus_plus_score([-1.0], [-1.001], [0.0], 0.4) == pytest.approx(-1.0)


def test_zlib_auc_and_privleak_by_hand():
    text = "Basil Mahfouz Al-Kuwaiti"
    assert zlib_score(2.0, text) == pytest.approx(2.0 / len(zlib.compress(text.encode())))
    # forget [1, 2], holdout [3, 1.5]: pairs (holdout > forget): 3>1, 3>2, 1.5>1, 1.5<2 -> 3 of 4 = 0.75
    assert membership_auc([1.0, 2.0], [3.0, 1.5]) == pytest.approx(0.75)
    # a tie counts 1/2: forget [1], holdout [1] -> 0.5
    assert membership_auc([1.0], [1.0]) == pytest.approx(0.5)
    # privleak: ((1 - 0.75) - (1 - 0.5)) / (1 - 0.5) * 100 = (0.25 - 0.5) / 0.5 * 100 = -50
    assert privleak(0.75, 0.5) == pytest.approx(-50.0)
    # against a reference AUC of 0.6: (0.25 - 0.4) / 0.4 * 100 = -37.5; equal AUCs: 0
    assert privleak(0.75, 0.6) == pytest.approx(-37.5)
    assert privleak(0.6, 0.6) == pytest.approx(0.0)
    with pytest.raises(ValueError, match="at least one"):
        membership_auc([], [1.0])


def test_exact_memorization_and_extraction_strength_by_hand():
    hits = [True, False, True, True]
    # EM: 3 of 4 tokens are the argmax
    assert exact_memorization(hits) == pytest.approx(0.75)
    # ES: the predictions are right from position k* = 2 on (positions 2, 3): 1 - 2/4 = 0.5
    assert extraction_strength(hits) == pytest.approx(0.5)
    assert extraction_strength([True] * 3) == pytest.approx(1.0)  # k* = 0
    assert extraction_strength([True, True, False]) == 0.0  # only the empty suffix matches: k* = n
    assert extraction_strength([]) == 0.0 and exact_memorization([]) is None


def test_fill_in_blank_cuts_before_the_last_content_words():
    assert is_content_word("Lahore,") and not is_content_word("in") and not is_content_word("--")
    answer = "The author was born in Lahore, Pakistan."
    # content words from the end: "Pakistan." and "Lahore," -> the blank starts at "Lahore,"
    assert fill_in_blank(answer, 2) == ("The author was born in", "Lahore, Pakistan.")
    # one content word: only "Pakistan."; three: "born in Lahore, Pakistan." ("in" is a stop word between them)
    assert fill_in_blank(answer, 1) == ("The author was born in Lahore,", "Pakistan.")
    assert fill_in_blank(answer, 3) == ("The author was", "born in Lahore, Pakistan.")
    # fewer content words than asked: the blank starts at the first one; none at all: everything is blank
    assert fill_in_blank("It is Basil.", 2) == ("It is", "Basil.")
    assert fill_in_blank("It is.", 2) == ("", "It is.")
    with pytest.raises(ValueError, match="content_words"):
        fill_in_blank(answer, 0)


def test_leak_flags_by_hand():
    recall = [[0.2, 0.6], [0.4, 0.49], [0.5, 0.0]]
    # threshold 0.5: item 0 (0.6), item 2 (0.5 reaches it) leak; item 1 does not
    np.testing.assert_array_equal(leak_flags(recall, 0.5), [True, False, True])
    np.testing.assert_array_equal(leak_flags(recall, 0.0), [True, True, True])
    for bad in (-0.1, 1.5):
        with pytest.raises(ValueError, match=r"\[0, 1\]"):
            leak_flags(recall, bad)


# ---------------------------------------------------------------------------------------------------------------------
# Planted memorisation on tiny models
# ---------------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def forget_rows(tofu_dir):
    rows = load_tofu("forget01", tofu_dir).select(range(ITEMS))
    return rows["question"], rows["answer"]


@pytest.fixture(scope="module")
def memorized(tiny_tokenizer, forget_rows):
    """A tiny model trained to repeat its first 8 forget01 answers."""
    model = build_tiny_model(tiny_tokenizer)
    losses = relearn_attack(model, tiny_tokenizer, *forget_rows, steps=60, learning_rate=1e-2, batch_size=ITEMS)
    assert losses[-1] < 0.5 * losses[0]
    model.eval()
    return model


@pytest.fixture(scope="module")
def unlearned(memorized, tiny_tokenizer, forget_rows):
    """The memorised model after gradient ascent on the same answers, stopped once their mean NLL exceeds 7 (about a
    fresh model's level): the answers look forgotten."""
    model = copy.deepcopy(memorized)
    batch = pad_examples(qa_examples(tiny_tokenizer, *forget_rows), tiny_tokenizer.pad_token_id)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-2)
    for _ in range(100):
        nll = token_nll(
            model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits, batch["labels"]
        )
        if nll.item() > 7.0:
            break
        (-nll).backward()
        optimizer.step()
        optimizer.zero_grad()
    assert nll.item() > 7.0
    model.eval()
    return model


@pytest.fixture(scope="module")
def fresh(tiny_tokenizer):
    return build_tiny_model(tiny_tokenizer, seed=1).eval()


def test_a_memorizing_model_is_caught_and_a_fresh_one_is_not(memorized, fresh, tiny_tokenizer, tofu_dir, tmp_path):
    parts = "membership,extraction,leak"
    caught = evaluate_audit(memorized, tiny_tokenizer, "forget01", parts, tofu_dir, tmp_path / "m", **FAST)
    clean = evaluate_audit(fresh, tiny_tokenizer, "forget01", parts, tofu_dir, **FAST)
    for score in ("loss", "min_k", "min_k_plus_plus", "zlib"):
        assert caught["membership"]["auc"][score] > 0.9, score
    assert caught["membership"]["privleak"]["min_k"] < -80  # far more recognisable than chance
    assert caught["membership"]["reference_auc"]["min_k"] == 0.5 and "0.5" in caught["membership"]["reference_note"]
    assert caught["extraction"]["exact_memorization"] > 0.8 and caught["extraction"]["extraction_strength"] > 0.5
    assert caught["leak"]["question"]["leak_rate"] >= 0.75 and caught["leak"]["fill_in_blank"]["leak_rate"] >= 0.75
    assert clean["extraction"]["exact_memorization"] < 0.1 and clean["extraction"]["extraction_strength"] < 0.1
    assert clean["leak"]["question"]["leak_rate"] == 0 and clean["leak"]["fill_in_blank"]["leak_rate"] == 0
    # the candidates are kept, k per item, with the prompt suffix and the gold text of the blank
    items = caught["leak"]["fill_in_blank"]["items"]
    assert all(len(c) == 2 for c in items["candidates"]) and len(items["leaked"]) == ITEMS
    prefix, blank = fill_in_blank(load_tofu("forget01", tofu_dir)[0]["answer"], 2)
    assert items["prompt_suffix"][0] == prefix and items["gold"][0] == blank
    # the result file is the returned dict; its summary row carries the table columns
    assert json.loads((tmp_path / "m" / "audit_eval.json").read_text()) == caught
    row = audit_summary_row(caught)
    assert row["mia_auc_min_k"] == caught["membership"]["auc"]["min_k"] and row["leak@2_question"] >= 0.75


def test_unlearned_knowledge_comes_back_under_relearning(
    unlearned, memorized, fresh, tiny_tokenizer, tofu_dir, tmp_path
):
    original_dir, oracle_dir = tmp_path / "original", tmp_path / "oracle"
    for model, path in ((memorized, original_dir), (fresh, oracle_dir)):
        model.save_pretrained(path)
        tiny_tokenizer.save_pretrained(path)
    before = {name: p.detach().clone() for name, p in unlearned.named_parameters()}
    result = evaluate_audit(
        unlearned,
        tiny_tokenizer,
        "forget01",
        "relearn",
        tofu_dir,
        relearn_original=original_dir,
        relearn_oracle=oracle_dir,
        relearn_steps=10,
        relearn_learning_rate=1e-3,
        relearn_batch_size=4,
        **{**FAST, "max_new_tokens": 8},
    )
    for name, p in unlearned.named_parameters():  # the attack trained a copy
        assert torch.equal(p, before[name]), name
    relearn = result["relearn"]
    assert relearn["attack_items"] == relearn["eval_items"] == ITEMS // 2
    models = relearn["models"]
    unlearned_run, oracle_run, original_run = models["unlearned"], models["oracle"], models["original"]
    # unlearned: the held-out answers' probability was at a fresh model's level and comes back far beyond it
    assert unlearned_run["before"]["probability"] < 0.01
    assert unlearned_run["after"]["probability"] > 20 * oracle_run["after"]["probability"]
    assert unlearned_run["recovered_fraction"]["probability"] > 0.2
    assert oracle_run["recovered_fraction"]["probability"] < 0.05
    assert original_run["before"]["probability"] > 0.5
    assert len(unlearned_run["train_loss"]) == 10


def test_quantization_round_trips_restore_the_weights(fresh, tiny_tokenizer, tofu_dir):
    weights = {name: p.detach().clone() for name, p in fresh.named_parameters()}
    head = fresh.get_output_embeddings()
    with quantized_weights(fresh, 4) as count:
        changed = [m for m in fresh.modules() if isinstance(m, torch.nn.Linear) and m is not head]
        assert count == len(changed) > 0
        assert not torch.equal(changed[0].weight, weights["model.layers.0.self_attn.q_proj.weight"])
        # NF4 keeps every weight within its block's absmax of the original
        assert (changed[0].weight - weights["model.layers.0.self_attn.q_proj.weight"]).abs().max() < weights[
            "model.layers.0.self_attn.q_proj.weight"
        ].abs().max()
    for name, p in fresh.named_parameters():
        assert torch.equal(p, weights[name]), name
    result = evaluate_audit(
        fresh, tiny_tokenizer, "forget01", "quantization", tofu_dir, **{**FAST, "max_items": 4, "max_new_tokens": 8}
    )
    quant = result["quantization"]
    assert set(quant["runs"]) == {"none", "8", "4"} and quant["library"].startswith("bitsandbytes")
    for bits in ("8", "4"):
        assert quant["delta"][bits]["probability"] == pytest.approx(
            quant["runs"][bits]["probability"] - quant["runs"]["none"]["probability"]
        )
    assert abs(quant["delta"]["8"]["probability"]) < 1e-3  # int8 rows barely move a random model


def test_the_audit_resumes_from_its_cache(fresh, tiny_tokenizer, tofu_dir, tmp_path, monkeypatch):
    first = evaluate_audit(fresh, tiny_tokenizer, "forget01", "membership,leak", tofu_dir, tmp_path, **FAST)

    def fail(*args, **kwargs):
        raise AssertionError("recomputed instead of read from the cache")

    monkeypatch.setattr(audit_module, "score_examples", fail)
    monkeypatch.setattr(audit_module, "generate_continuations", fail)
    again = evaluate_audit(fresh, tiny_tokenizer, "forget01", "membership,leak", tofu_dir, tmp_path, **FAST)
    assert again == first


def test_privleak_against_a_stored_reference(fresh, tiny_tokenizer, tofu_dir, tmp_path):
    reference = evaluate_audit(fresh, tiny_tokenizer, "forget01", "membership", tofu_dir, tmp_path / "ref", **FAST)
    again = evaluate_audit(
        fresh, tiny_tokenizer, "forget01", "membership", tofu_dir, membership_reference=tmp_path / "ref", **FAST
    )
    membership = again["membership"]
    assert membership["reference"].endswith("audit_eval.json") and membership["reference_note"] is None
    for score, value in membership["privleak"].items():  # the same model as its own reference: no leak
        assert value == pytest.approx(0.0, abs=1e-6), score
    assert membership["reference_auc"] == reference["membership"]["auc"]


# ---------------------------------------------------------------------------------------------------------------------
# Bad input: clear errors before any model work (model=None proves no model is touched)
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"holdout_split": "holdout05"}, r"holdout05 has 200 items but forget01 has 40"),
        ({"leak_k": 0}, r"leak_k .* >= 1"),
        ({"leak_threshold": 1.5}, r"leak_threshold .* \[0, 1\]"),
        ({"leak_threshold": -0.1}, r"leak_threshold .* \[0, 1\]"),
        ({"parts": "membership,tea"}, "Unknown or no audit part"),
        ({"parts": "quantization", "quantization_bits": (3,)}, "subset of"),
        ({"parts": "relearn", "relearn_oracle": "/nonexistent/oracle"}, "not a model directory"),
        ({"parts": "relearn", "relearn_original": "./no_such_model"}, "not a model directory"),
    ],
)
def test_bad_settings_fail_before_any_model_work(kwargs, match, tofu_dir):
    kwargs = {"parts": "membership,leak", **kwargs}
    with pytest.raises((ValueError, FileNotFoundError), match=match):
        evaluate_audit(None, None, "forget01", data_dir=tofu_dir, **kwargs)
    with pytest.raises((ValueError, FileNotFoundError), match=match):
        check_audit("forget01", data_dir=tofu_dir, **kwargs)


def test_audit_settings_object(tofu_dir):
    """check_audit returns the AuditSettings it checked; evaluate_audit takes it whole (not with single settings)."""
    settings = check_audit("forget01", "membership,leak", tofu_dir, max_items=4)
    assert isinstance(settings, AuditSettings)
    assert settings.parts == ("membership", "leak") and settings.holdout_split == "holdout01"
    assert settings.record(None)["data_dir"] and settings.record(None)["parts"] == ["membership", "leak"]
    with pytest.raises(TypeError, match="either settings= or"):
        evaluate_audit(None, None, settings=settings, min_k=0.2)
    with pytest.raises(TypeError):
        AuditSettings(forget_split="forget01", no_such_setting=1)


def test_missing_quantization_library_fails_before_any_model_work(tofu_dir, monkeypatch):
    monkeypatch.setattr(audit_module, "quantization_available", lambda: False)
    with pytest.raises(ImportError, match="pip install 'rklu_llm\\[audit\\]'"):
        evaluate_audit(None, None, "forget01", parts="membership,quantization", data_dir=tofu_dir)


def test_a_reference_of_another_split_fails_before_any_model_work(tofu_dir, tmp_path):
    other = {"model": "m", "settings": {"forget_split": "forget05"}, "membership": {"auc": {"min_k": 0.5}}}
    with pytest.raises(ValueError, match="audited forget05, not forget01"):
        evaluate_audit(None, None, "forget01", "membership", tofu_dir, membership_reference=other)


@pytest.mark.slow
def test_eval_audit_script(tiny_model_dir, tofu_dir, tmp_path):
    from rklu_llm.scripts import eval_audit

    out = tmp_path / "audit"
    argv = [
        "--model",
        str(tiny_model_dir),
        "--forget_split",
        "forget01",
        "--data_dir",
        str(tofu_dir),
        "--output_dir",
        str(out),
        "--eval_max_items",
        "4",
        "--leak_k",
        "2",
        "--leak_max_new_tokens",
        "4",
        "--max_new_tokens",
        "4",
        "--open_unlearning_export",
    ]
    result = eval_audit.main(argv)
    assert set(result) == {"model", "settings", "membership", "extraction", "leak"}
    assert json.loads((out / "audit_eval.json").read_text()) == result
    summary = json.loads((out / "TOFU_SUMMARY.json").read_text())
    assert summary["mia_min_k"] == result["membership"]["auc"]["min_k"]
    assert math.isfinite(summary["privleak"])
    with pytest.raises(ValueError, match=r"leak_threshold"):  # before the model is loaded
        eval_audit.main([*argv, "--leak_threshold", "2"])
