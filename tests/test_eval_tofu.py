"""TOFU evaluation: hand-worked metric arithmetic, model-side scoring on a tiny model, the end-to-end evaluation,
its cache, and forget quality against the original authors' eval logs."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TOFU_DIR, build_tiny_model
from scipy.stats import ks_2samp

import rklu_llm.eval.tofu as tofu_eval
from rklu_llm.data.qa import encode_answer, encode_prompt
from rklu_llm.data.tofu import DataUnavailableError
from rklu_llm.eval import (
    TofuEvalSettings,
    answer_probability,
    compare_to_reference,
    evaluate_tofu,
    forget_quality,
    forget_truth_ratio_score,
    generate_answers,
    load_tofu_eval,
    model_utility,
    normalized_probability,
    reference_truth_ratios,
    retain_truth_ratio_score,
    rouge_l_recall,
    score_answers,
    summary_row,
    truth_ratio,
)

REFERENCE_EVAL = TOFU_DIR / "reference_eval"
LLAMA_FULL = REFERENCE_EVAL / "ft_epoch5_lr1e-05_llama2-7b_full_wd0.01" / "eval_log_forget.json"
LLAMA_RETAIN90 = REFERENCE_EVAL / "ft_epoch5_lr1e-05_llama2-7b_retain90_wd0.01" / "eval_log_forget.json"
# ks_2samp p-value of the llama2-7b full model vs the retain90 model on forget10[:300] (KS statistic 0.39667).
LLAMA_FULL_VS_RETAIN90_FQ = 1.834066410994743e-21


# ---------------------------------------------------------------------------------------------------------------------
# Pure functions, arithmetic by hand
# ---------------------------------------------------------------------------------------------------------------------


def test_answer_probability():
    # exp(-2 ln 2 / 2) = 1/2; exp(-0 / 5) = 1; exp(-3 / 1) = e^-3.
    p = answer_probability([2 * math.log(2), 0.0, 3.0], [2, 5, 1])
    np.testing.assert_allclose(p, [0.5, 1.0, math.exp(-3)])
    # vectorised over any shape: (2, 2)
    p2 = answer_probability([[math.log(4), 0.0], [1.0, 2.0]], [[2, 1], [1, 2]])
    np.testing.assert_allclose(p2, [[0.5, 1.0], [math.exp(-1), math.exp(-1)]])


def test_truth_ratio_and_its_aggregates():
    # item 0: base 0.5, perturbed [0.25, 0.25]: geometric mean 0.25, TR = 0.25 / 0.5 = 0.5
    # item 1: base 0.2, perturbed [0.1, 0.4]: geometric mean sqrt(0.04) = 0.2, TR = 1
    # item 2: base 0.1, perturbed [0.2, 0.2]: TR = 2
    tr = truth_ratio([0.5, 0.2, 0.1], [[0.25, 0.25], [0.1, 0.4], [0.2, 0.2]])
    np.testing.assert_allclose(tr, [0.5, 1.0, 2.0])
    # forget: mean(min(TR, 1/TR)) = mean(0.5, 1, 0.5) = 2/3
    assert forget_truth_ratio_score(tr) == pytest.approx(2 / 3)
    # retain: mean(max(0, 1 - TR)) = mean(0.5, 0, 0) = 1/6
    assert retain_truth_ratio_score(tr) == pytest.approx(1 / 6)
    # the single-item example of the brief: TR 0.5 -> forget score min(0.5, 2) = 0.5, retain score 1 - 0.5 = 0.5
    assert forget_truth_ratio_score([0.5]) == pytest.approx(0.5)
    assert retain_truth_ratio_score([0.5]) == pytest.approx(0.5)
    # p = 0 for the base: TR = inf, both aggregates 0 (no NaN)
    tr_inf = truth_ratio([0.0], [[0.5, 0.5]])
    assert np.isinf(tr_inf[0])
    assert forget_truth_ratio_score(tr_inf) == 0.0 and retain_truth_ratio_score(tr_inf) == 0.0
    with pytest.raises(ValueError, match=r"\(N, K\)"):
        truth_ratio([0.5, 0.5], [0.25, 0.25])


def test_tofu_original_statistic_gives_the_same_aggregates():
    # TOFU's per-item stat is exp(mean perturbed loss - paraphrased loss) = 1/TR; forget uses min(x, 1/x) (symmetric)
    # and retain uses max(0, 1 - 1/x) = max(0, 1 - TR); the KS p-value is invariant under x -> 1/x.
    rng = np.random.default_rng(0)
    tr_a, tr_b = rng.lognormal(0, 1, 50), rng.lognormal(0.5, 1, 60)
    tofu_a = 1 / tr_a
    assert forget_truth_ratio_score(tr_a) == pytest.approx(np.mean(np.minimum(tofu_a, 1 / tofu_a)))
    assert retain_truth_ratio_score(tr_a) == pytest.approx(np.mean(np.maximum(0, 1 - 1 / tofu_a)))
    assert forget_quality(tr_a, tr_b) == pytest.approx(forget_quality(1 / tr_a, 1 / tr_b))


def test_normalized_probability():
    # item 0: 0.5 / (0.5 + 0.25 + 0.25) = 0.5; item 1: 0.2 / (0.2 + 0.4 + 0.4) = 0.2; mean 0.35
    assert normalized_probability([0.5, 0.2], [[0.25, 0.25], [0.4, 0.4]]) == pytest.approx(0.35)


def _utility_values(p=0.5, r=0.25, t=1.0, suffix=""):
    return {
        f"{s}{suffix}": {"probability": p, "rouge_l_recall": r, "truth_ratio": t}
        for s in ("retain", "real_authors", "world_facts")
    }


def test_model_utility_is_the_harmonic_mean_of_nine():
    # 9 values: (0.5, 0.25, 1) three times; 9 / sum(1/x) = 9 / (3 * (2 + 4 + 1)) = 9/21 = 3/7
    assert model_utility(_utility_values()) == pytest.approx(3 / 7)
    assert model_utility(_utility_values(suffix="_perturbed")) == pytest.approx(3 / 7)
    values = _utility_values()
    values["world_facts"]["rouge_l_recall"] = 0.0
    assert model_utility(values) == 0.0  # one zero makes the harmonic mean 0
    values = _utility_values()
    del values["real_authors"]["truth_ratio"]
    del values["world_facts"]
    with pytest.raises(ValueError, match="real_authors.truth_ratio.*world_facts.probability"):
        model_utility(values)
    values = _utility_values()
    values["retain"]["probability"] = float("nan")
    with pytest.raises(ValueError, match="finite"):
        model_utility(values)


def test_forget_quality_ks_pvalue():
    assert forget_quality([0.1, 0.5, 2.0], [0.1, 0.5, 2.0]) == pytest.approx(1.0)
    # disjoint samples of 4 and 4: exact two-sided p = 2 / C(8, 4) = 2/70
    assert forget_quality([1, 2, 3, 4], [10, 11, 12, 13]) == pytest.approx(2 / 70)
    with pytest.raises(ValueError):
        forget_quality([], [1.0])


def test_rouge_l_recall():
    gold = ["The cat sat on the mat.", "Paris is the capital of France.", "the cat sat on the mat"]
    generated = ["The cat sat on the mat.", "Bananas grow quickly.", "the cat"]
    # exact copy -> 1; no common word -> 0; LCS "the cat" = 2 of the gold's 6 words -> 1/3
    np.testing.assert_allclose(rouge_l_recall(generated, gold), [1.0, 0.0, 1 / 3])


# ---------------------------------------------------------------------------------------------------------------------
# Model-side scoring on the tiny model
# ---------------------------------------------------------------------------------------------------------------------

QUESTIONS = [
    "Who is Hsiao Yun-Hwa?",
    "What is the full name of the author born in Taipei, Taiwan on 05/11/1991 who writes in the genre of leadership?",
    "What genre does Basil Mahfouz Al-Kuwaiti write in?",
    "Who is Hsiao Yun-Hwa?",
]
ANSWERS = [
    "Hsiao Yun-Hwa is an author.",
    "The author's full name is Hsiao Yun-Hwa.",
    "Basil Mahfouz Al-Kuwaiti writes French literature, with a focus on family and cultural identity.",
    "A writer of leadership books.",
]


def _manual_nll(model, tokenizer, question, answer):
    prompt = encode_prompt(tokenizer, question)
    answer_ids = encode_answer(tokenizer, answer)
    ids = torch.tensor([prompt + answer_ids])
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=ids).logits[0].double(), -1)
    # token t is predicted at position t - 1; sum over the answer tokens (EOS included)
    return -sum(logp[t - 1, ids[0, t]].item() for t in range(len(prompt), ids.shape[1])), len(answer_ids)


def test_score_answers_matches_a_manual_computation(tiny_model, tiny_tokenizer):
    tiny_model.eval()
    nll, ntok = score_answers(tiny_model, tiny_tokenizer, QUESTIONS, ANSWERS, batch_size=4)
    for i in range(len(QUESTIONS)):
        expected_nll, expected_tokens = _manual_nll(tiny_model, tiny_tokenizer, QUESTIONS[i], ANSWERS[i])
        assert ntok[i] == expected_tokens
        assert nll[i] == pytest.approx(expected_nll, rel=1e-5)


def test_score_answers_is_invariant_to_batch_size_and_order(tiny_model, tiny_tokenizer):
    nll4, ntok4 = score_answers(tiny_model, tiny_tokenizer, QUESTIONS, ANSWERS, batch_size=4)
    nll1, ntok1 = score_answers(tiny_model, tiny_tokenizer, QUESTIONS, ANSWERS, batch_size=1)
    rev = slice(None, None, -1)
    nll_rev, ntok_rev = score_answers(tiny_model, tiny_tokenizer, QUESTIONS[rev], ANSWERS[rev], batch_size=3)
    np.testing.assert_allclose(nll1, nll4, rtol=1e-5)
    np.testing.assert_allclose(nll_rev[rev], nll4, rtol=1e-5)
    np.testing.assert_array_equal(ntok1, ntok4)
    np.testing.assert_array_equal(ntok_rev[rev], ntok4)


def test_score_answers_counts_the_eos_when_pad_is_eos(tiny_model, tiny_tokenizer):
    assert tiny_tokenizer.pad_token_id == tiny_tokenizer.eos_token_id
    _, ntok = score_answers(tiny_model, tiny_tokenizer, QUESTIONS, ANSWERS, batch_size=4)
    for answer, n in zip(ANSWERS, ntok):
        assert n == len(tiny_tokenizer(answer, add_special_tokens=False)["input_ids"]) + 1


def test_score_answers_truncates_like_join_prompt_answer(tiny_model, tiny_tokenizer):
    prompt_len = len(encode_prompt(tiny_tokenizer, QUESTIONS[2]))
    _, ntok = score_answers(tiny_model, tiny_tokenizer, QUESTIONS[2:3], ANSWERS[2:3], max_length=prompt_len + 3)
    assert ntok.tolist() == [3]


def test_generate_answers_left_padding_is_batch_invariant(tiny_tokenizer):
    model = build_tiny_model(tiny_tokenizer)
    torch.manual_seed(1)
    with torch.no_grad():  # larger weights than the default init, so the greedy output depends on the prompt
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0, 0.3)
    short, long = QUESTIONS[0], QUESTIONS[1]
    alone = generate_answers(model, tiny_tokenizer, [short], max_new_tokens=8)
    batched = generate_answers(model, tiny_tokenizer, [long, short], batch_size=2, max_new_tokens=8)
    assert alone[0] and batched[1] == alone[0]
    assert batched[0] != batched[1]
    assert batched == generate_answers(model, tiny_tokenizer, [long, short], batch_size=1, max_new_tokens=8)


# ---------------------------------------------------------------------------------------------------------------------
# evaluate_tofu end to end
# ---------------------------------------------------------------------------------------------------------------------

SETS = ("forget01_perturbed", "retain_perturbed", "real_authors_perturbed", "world_facts_perturbed")
MAX_ITEMS = 4


@pytest.fixture(scope="module")
def e2e(tiny_tokenizer, tofu_dir, tmp_path_factory):
    """One evaluation without a reference, written to an output dir; returns (model, out_dir, result)."""
    model = build_tiny_model(tiny_tokenizer)
    out = tmp_path_factory.mktemp("tofu_eval")
    with pytest.warns(UserWarning, match="no reference evaluation given"):
        result = evaluate_tofu(
            model,
            tiny_tokenizer,
            forget_splits=("forget01",),
            data_dir=tofu_dir,
            output_dir=out,
            batch_size=8,
            max_new_tokens=8,
            max_items=MAX_ITEMS,
        )
    return model, out, result


def _copy_of(out: Path, tmp_path: Path) -> Path:
    """A private copy of the shared output dir (its cache included), so that tests do not see each other's files."""
    return Path(shutil.copytree(out, tmp_path / "out"))


def _forbid_model_work(monkeypatch):
    def boom(*args, **kwargs):
        raise AssertionError("model work was not expected here")

    monkeypatch.setattr(tofu_eval, "score_answers", boom)
    monkeypatch.setattr(tofu_eval, "generate_answers", boom)


def test_evaluate_tofu_layout_and_ranges(e2e):
    model, out, result = e2e
    assert load_tofu_eval(out / "tofu_eval.json") == result
    assert load_tofu_eval(out) == result
    assert isinstance(result["model"], str) and result["model"]
    assert result["settings"]["max_items"] == MAX_ITEMS and result["settings"]["max_new_tokens"] == 8
    assert tuple(result["sets"]) == SETS
    rows = {json.loads(line)["question"] for line in (TOFU_DIR / "forget01_perturbed.jsonl").read_text().splitlines()}
    for entry in result["sets"].values():
        aggregate, items = entry["aggregate"], entry["items"]
        assert set(aggregate) == {"probability", "rouge_l_recall", "truth_ratio", "num_items"}
        assert aggregate["num_items"] == MAX_ITEMS
        assert set(items) == {
            "question",
            "probability",
            "answer_probability",
            "rouge_l_recall",
            "truth_ratio",
            "generated",
        }
        assert all(len(v) == MAX_ITEMS for v in items.values())
        assert all(0 <= v <= 1 for key in ("probability", "answer_probability", "rouge_l_recall") for v in items[key])
        assert all(0 < v < math.inf for v in items["truth_ratio"])
        assert all(isinstance(g, str) for g in items["generated"])
        assert all(0 <= aggregate[k] <= 1 for k in ("probability", "rouge_l_recall", "truth_ratio"))
        assert aggregate["probability"] == pytest.approx(np.mean(items["probability"]))
    assert set(result["sets"]["forget01_perturbed"]["items"]["question"]) <= rows
    # real authors: the probability aggregate is normalised over the answer and its 3 perturbed answers
    # (recomputed here from the cached likelihoods: p = exp(-nll_sum / num_tokens))
    real = result["sets"]["real_authors_perturbed"]["items"]
    cache_file = (
        out / "tofu_eval_cache" / "real_authors_perturbed__likelihood__max_items-4__max_length-512__protocol-all.json"
    )
    cached = json.loads(cache_file.read_text())["data"]
    p_answer = np.exp(-np.array(cached["answer_nll_sum"]) / np.array(cached["answer_num_tokens"]))
    p_perturbed = np.exp(-np.array(cached["perturbed_nll_sum"]) / np.array(cached["perturbed_num_tokens"]))
    assert p_perturbed.shape == (MAX_ITEMS, 3)
    np.testing.assert_allclose(real["answer_probability"], p_answer)
    np.testing.assert_allclose(real["probability"], p_answer / (p_answer + p_perturbed.sum(1)))
    np.testing.assert_allclose(real["truth_ratio"], np.exp(np.log(p_perturbed).mean(1)) / p_answer)
    forget_items = result["sets"]["forget01_perturbed"]["items"]
    assert forget_items["probability"] == forget_items["answer_probability"]
    assert result["sets"]["forget01_perturbed"]["aggregate"]["truth_ratio"] == pytest.approx(
        forget_truth_ratio_score(forget_items["truth_ratio"])
    )
    assert result["model_utility"] is not None and math.isfinite(result["model_utility"])
    assert result["model_utility"] == pytest.approx(
        model_utility({s: result["sets"][s]["aggregate"] for s in SETS[1:]})
    )
    fq = result["forget"]["forget01"]
    assert fq["forget_quality"] is None and "reference=" in fq["forget_quality_note"]
    assert fq["reference"] is None and fq["reference_items"] == 0
    assert sorted(p.name for p in (out / "tofu_eval_cache").iterdir()) == sorted(
        f"{s}__{m}__{tag}.json"
        for s in SETS
        for m, tag in (
            ("likelihood", "max_items-4__max_length-512__protocol-all"),
            ("generation", "max_items-4__max_new_tokens-8__protocol-all"),
        )
    )
    row = summary_row(result)
    assert row["model_utility"] == result["model_utility"] and row["forget01_forget_quality"] is None
    assert row["retain_probability"] == result["sets"]["retain_perturbed"]["aggregate"]["probability"]
    for name in ("retain", "real_authors", "world_facts"):  # model utility's parts
        for metric in ("probability", "rouge_l_recall", "truth_ratio"):
            assert row[f"{name}_{metric}"] == result["sets"][f"{name}_perturbed"]["aggregate"][metric]
    assert row["forget01_rouge_l_recall"] == result["sets"]["forget01_perturbed"]["aggregate"]["rouge_l_recall"]


def test_evaluate_tofu_rerun_uses_the_cache(e2e, tiny_tokenizer, tofu_dir, monkeypatch, tmp_path):
    model, out, result = e2e
    out = _copy_of(out, tmp_path)
    _forbid_model_work(monkeypatch)
    with pytest.warns(UserWarning, match="no reference"):
        again = evaluate_tofu(
            model,
            tiny_tokenizer,
            forget_splits=("forget01",),
            data_dir=tofu_dir,
            output_dir=out,
            batch_size=2,
            max_new_tokens=8,
            max_items=MAX_ITEMS,
        )
    assert again["sets"] == result["sets"] and again["model_utility"] == result["model_utility"]


def test_a_settings_object_is_the_same_evaluation(e2e, tiny_tokenizer, tofu_dir, monkeypatch, tmp_path):
    """TofuEvalSettings holds what the keywords give: the same result (here from the cache, no model work), the same
    settings recorded; settings and single keywords together are refused."""
    model, out, result = e2e
    out = _copy_of(out, tmp_path)
    _forbid_model_work(monkeypatch)
    settings = TofuEvalSettings("forget01", tofu_dir, batch_size=8, max_new_tokens=8, max_items=MAX_ITEMS)
    assert settings.forget_splits == ("forget01",) and "forget01_perturbed" in settings.sets
    with pytest.warns(UserWarning, match="no reference"):
        again = evaluate_tofu(model, tiny_tokenizer, output_dir=out, settings=settings)
    assert again["sets"] == result["sets"] and again["settings"] == result["settings"]
    with pytest.raises(TypeError, match="either settings= or"):
        evaluate_tofu(model, tiny_tokenizer, output_dir=out, settings=settings, batch_size=2)
    with pytest.raises(ValueError, match="max_new_tokens"):
        TofuEvalSettings("forget01", max_new_tokens=0)


def test_evaluate_tofu_without_generation(e2e, tiny_tokenizer, tofu_dir, monkeypatch, tmp_path):
    """generate=False: no generate call, ROUGE-L and utility None, likelihood metrics equal the full run's."""
    model, _, result = e2e

    def boom(*args, **kwargs):
        raise AssertionError("generate=False must not generate")

    monkeypatch.setattr(tofu_eval, "generate_answers", boom)
    out = tmp_path / "no_generation"
    with pytest.warns(UserWarning, match="generate=False"):
        cheap = evaluate_tofu(
            model,
            tiny_tokenizer,
            forget_splits=("forget01",),
            data_dir=tofu_dir,
            output_dir=out,
            batch_size=8,
            max_new_tokens=8,
            max_items=MAX_ITEMS,
            generate=False,
            reference=result,
        )
    assert cheap["model_utility"] is None and "generate=False" in cheap["model_utility_note"]
    assert cheap["forget"]["forget01"]["forget_quality"] == pytest.approx(1.0)  # its own evaluation as reference
    for name, entry in cheap["sets"].items():
        full = result["sets"][name]
        assert entry["aggregate"]["rouge_l_recall"] is None
        assert set(entry["items"]) == {"question", "probability", "answer_probability", "truth_ratio"}
        assert entry["aggregate"]["probability"] == pytest.approx(full["aggregate"]["probability"])
        assert entry["aggregate"]["truth_ratio"] == pytest.approx(full["aggregate"]["truth_ratio"])
    assert not any("generation" in p.name for p in (out / "tofu_eval_cache").iterdir())
    assert summary_row(cheap)["forget01_rouge_l_recall"] is None


@pytest.mark.filterwarnings("ignore:.*not computed:UserWarning")
def test_evaluate_tofu_cache_is_keyed_by_the_weights(e2e, tiny_tokenizer, tofu_dir, tmp_path):
    _, out, result = e2e
    out = _copy_of(out, tmp_path)
    other = build_tiny_model(tiny_tokenizer, seed=1)  # other weights, same name_or_path
    with pytest.warns(UserWarning, match="another model"):
        again = evaluate_tofu(
            other,
            tiny_tokenizer,
            forget_splits="forget01",
            data_dir=tofu_dir,
            output_dir=out,
            max_new_tokens=8,
            max_items=MAX_ITEMS,
            sets=("forget01",),
        )
    assert again["model"] == result["model"]
    assert (
        again["sets"]["forget01_perturbed"]["items"]["probability"]
        != (result["sets"]["forget01_perturbed"]["items"]["probability"])
    )


def test_evaluate_tofu_cache_is_keyed_by_generation_settings(e2e, tiny_tokenizer, tofu_dir, monkeypatch, tmp_path):
    model, out, result = e2e
    out = _copy_of(out, tmp_path)
    calls = []

    def boom(*args, **kwargs):
        raise AssertionError("the likelihoods are cached")

    real_generate = tofu_eval.generate_answers
    monkeypatch.setattr(tofu_eval, "score_answers", boom)
    monkeypatch.setattr(tofu_eval, "generate_answers", lambda *a, **k: calls.append(1) or real_generate(*a, **k))
    with pytest.warns(UserWarning, match="model utility not computed"):
        again = evaluate_tofu(
            model,
            tiny_tokenizer,
            forget_splits="forget01",
            data_dir=tofu_dir,
            output_dir=out,
            max_new_tokens=4,
            max_items=MAX_ITEMS,
            sets=("forget01", "retain"),
            reference=out / "tofu_eval.json",
        )
    assert len(calls) == 1  # one generation pass recomputes both sets with the new max_new_tokens
    assert tuple(again["sets"]) == ("forget01_perturbed", "retain_perturbed")
    assert again["model_utility"] is None and "real_authors_perturbed" in again["model_utility_note"]
    for name in again["sets"]:
        assert again["sets"][name]["items"]["probability"] == result["sets"][name]["items"]["probability"]


def test_evaluate_tofu_against_its_own_result(e2e, tiny_tokenizer, tofu_dir, monkeypatch, tmp_path):
    model, out, result = e2e
    out = _copy_of(out, tmp_path)
    _forbid_model_work(monkeypatch)
    for reference in (out / "tofu_eval.json", str(out), result):
        own = evaluate_tofu(
            model,
            tiny_tokenizer,
            forget_splits=("forget01",),
            data_dir=tofu_dir,
            output_dir=out,
            max_new_tokens=8,
            max_items=MAX_ITEMS,
            reference=reference,
        )
        fq = own["forget"]["forget01"]
        assert fq["forget_quality"] == pytest.approx(1.0)  # identical samples
        assert fq["reference_items"] == MAX_ITEMS and fq["matched_by"] == "question"
        assert fq["forget_quality_note"] is None and fq["reference"]
    assert load_tofu_eval(out)["forget"]["forget01"]["forget_quality"] == pytest.approx(1.0)


def test_reference_without_the_split_gives_a_note(e2e):
    _, out, result = e2e
    items = result["sets"]["forget01_perturbed"]["items"]
    with pytest.warns(UserWarning, match="forget05_perturbed"):
        entry = compare_to_reference(items["truth_ratio"], items["question"], out / "tofu_eval.json", "forget05")
    assert entry["forget_quality"] is None and "has no evaluation of forget05_perturbed" in entry["forget_quality_note"]


# ---------------------------------------------------------------------------------------------------------------------
# Item protocols
# ---------------------------------------------------------------------------------------------------------------------


def test_protocol_tofu_takes_the_original_scripts_item_counts(tofu_dir):
    # TOFU's config/eval_everything.yaml: ds_size 300 for every set; only forget10 and retain have more items
    expected = {
        "forget10_perturbed": 300,
        "retain_perturbed": 300,
        "forget05_perturbed": 200,
        "forget01_perturbed": 40,
        "real_authors_perturbed": 100,
        "world_facts_perturbed": 117,
    }
    for name, count in expected.items():
        rows = tofu_eval.load_eval_set(name, tofu_dir, None, "tofu")
        assert len(rows["question"]) == count
        assert len(tofu_eval.load_eval_set(name, tofu_dir, 4, "tofu")["question"]) == 4
    assert len(tofu_eval.load_eval_set("forget10_perturbed", tofu_dir, None, "all")["question"]) == 400
    lines = (TOFU_DIR / "forget10_perturbed.jsonl").read_text().splitlines()
    first = [json.loads(line)["question"] for line in lines][:300]
    assert tofu_eval.load_eval_set("forget10_perturbed", tofu_dir, None, "tofu")["question"] == first


def test_the_same_ks_statistic_gives_a_smaller_p_value_over_400_items_than_over_300():
    # a = (0, 1, ..., n-1) / n and b = a + n/10 / n: the empirical CDFs differ by at most n/10 / n, so D = 0.1 for both
    p = {}
    for n in (300, 400):
        a, b = np.arange(n) / n, (np.arange(n) + n // 10) / n
        assert ks_2samp(a, b).statistic == pytest.approx(0.1)
        p[n] = forget_quality(a, b)
    # ks_2samp: p = 0.0996 over 300 items, 0.0366 over 400: the same model passes the 0.05 threshold under TOFU's
    # protocol and fails it when every item is scored
    assert p[400] < 0.05 < p[300]


def test_evaluate_tofu_protocol_and_shared_likelihoods(tiny_tokenizer, tofu_dir, monkeypatch):
    """protocol="tofu" is recorded in the result and its row; forget01 (forget05's last 40 items) is not scored
    again after forget05."""
    model = build_tiny_model(tiny_tokenizer)
    pairs = []
    real_score = tofu_eval.score_answers
    monkeypatch.setattr(
        tofu_eval, "score_answers", lambda m, t, q, a, **k: pairs.append(len(q)) or real_score(m, t, q, a, **k)
    )
    with pytest.warns(UserWarning, match="not computed"):
        result = evaluate_tofu(
            model,
            tiny_tokenizer,
            forget_splits=("forget01", "forget05"),
            data_dir=tofu_dir,
            sets=("forget01", "forget05"),
            generate=False,
            protocol="tofu",
            batch_size=64,
        )
    assert pairs == [200 * 7]  # forget05 first (the larger set); forget01's 280 pairs all reused
    assert result["settings"]["protocol"] == "tofu" and summary_row(result)["protocol"] == "tofu"
    f01, f05 = (result["sets"][f"{s}_perturbed"]["items"] for s in ("forget01", "forget05"))
    assert f01["question"] == f05["question"][-40:] and f01["truth_ratio"] == f05["truth_ratio"][-40:]
    with pytest.raises(ValueError, match="protocol must be one of all, tofu"):
        evaluate_tofu(model, tiny_tokenizer, data_dir=tofu_dir, protocol="open-unlearning")


# ---------------------------------------------------------------------------------------------------------------------
# References from the original authors' logs
# ---------------------------------------------------------------------------------------------------------------------


def _tofu_stat_by_hand(path: Path) -> np.ndarray:
    """TOFU's aggregate_eval_stat: exp(mean_j average_perturb_loss_j - avg_paraphrased_loss) per item (= 1/TR)."""
    log = json.loads(path.read_text())
    paraphrased = np.array(list(log["avg_paraphrased_loss"].values()))
    perturbed = np.array(list(log["average_perturb_loss"].values())).mean(axis=-1)
    return np.exp(perturbed - paraphrased)


def test_forget_quality_from_tofu_logs_matches_a_hand_computation():
    by_hand = ks_2samp(_tofu_stat_by_hand(LLAMA_FULL), _tofu_stat_by_hand(LLAMA_RETAIN90)).pvalue
    assert by_hand == pytest.approx(LLAMA_FULL_VS_RETAIN90_FQ, rel=1e-9)

    tr, questions, _ = reference_truth_ratios(LLAMA_FULL, "forget10")
    forget10 = [
        json.loads(line)["question"] for line in (TOFU_DIR / "forget10_perturbed.jsonl").read_text().splitlines()
    ]
    assert questions == forget10[:300]  # read back from the prompts in generated_text
    np.testing.assert_allclose(tr, 1 / _tofu_stat_by_hand(LLAMA_FULL), rtol=1e-12)
    stored = json.loads(LLAMA_FULL.read_text())["truth_ratio"]  # the log's own per-item field equals our TR
    np.testing.assert_allclose(tr, [stored[str(i)] for i in range(300)], rtol=1e-5)

    for reference in (LLAMA_RETAIN90, LLAMA_RETAIN90.with_name("eval_log_aggregated.json"), LLAMA_RETAIN90.parent):
        entry = compare_to_reference(tr, questions, reference, "forget10")
        assert entry["forget_quality"] == pytest.approx(by_hand, rel=1e-9)
        assert entry["reference_items"] == 300 and entry["matched_by"] == "question"

    # all 400 forget10 questions evaluated, the log has the first 300: KS on the 300 common ones, said in the note
    entry = compare_to_reference(np.concatenate([tr, np.ones(100)]), forget10, LLAMA_RETAIN90, "forget10")
    assert entry["forget_quality"] == pytest.approx(by_hand, rel=1e-9)
    assert "300 of the 400" in entry["forget_quality_note"]

    # a log without generated_text: matched by position over the common prefix, and the note says so
    log = json.loads(LLAMA_RETAIN90.read_text())
    del log["generated_text"]
    entry = compare_to_reference(tr, questions, log, "forget10")
    assert entry["forget_quality"] == pytest.approx(by_hand, rel=1e-9)
    assert entry["matched_by"] == "index" and "position" in entry["forget_quality_note"]


def test_tofu_log_of_another_set_gives_no_forget_quality():
    forget01 = [
        json.loads(line)["question"] for line in (TOFU_DIR / "forget01_perturbed.jsonl").read_text().splitlines()
    ]
    # the retain90 log covers forget10[:300]; forget01 is forget10[360:400]
    with pytest.warns(UserWarning, match="forget quality not computed"):
        entry = compare_to_reference(np.ones(40), forget01, LLAMA_RETAIN90, "forget01")
    assert entry["forget_quality"] is None and "none of the 40" in entry["forget_quality_note"]


# ---------------------------------------------------------------------------------------------------------------------
# Bad inputs fail before any model work
# ---------------------------------------------------------------------------------------------------------------------


def test_bad_inputs_fail_before_scoring(tiny_tokenizer, tofu_dir, tmp_path, monkeypatch):
    _forbid_model_work(monkeypatch)
    model = object()  # any model access would fail too
    with pytest.raises(ValueError, match="forget01, forget05, forget10"):
        evaluate_tofu(model, tiny_tokenizer, forget_splits=("forget20",), data_dir=tofu_dir)
    with pytest.raises(ValueError, match="Unknown eval set"):
        evaluate_tofu(model, tiny_tokenizer, data_dir=tofu_dir, sets=("forget05",))
    with pytest.raises(DataUnavailableError):
        evaluate_tofu(model, tiny_tokenizer, data_dir=tmp_path / "no_such_dir")
    with pytest.raises(DataUnavailableError, match="forget10_perturbed"):
        evaluate_tofu(model, tiny_tokenizer, data_dir=tmp_path)  # a folder without the TOFU files
    with pytest.raises(FileNotFoundError):
        evaluate_tofu(model, tiny_tokenizer, data_dir=tofu_dir, reference=tmp_path / "missing.json")
    bogus = tmp_path / "bogus.json"
    bogus.write_text(json.dumps({"hello": 1}))
    with pytest.raises(ValueError, match="neither"):
        evaluate_tofu(model, tiny_tokenizer, data_dir=tofu_dir, reference=bogus)
    with pytest.raises(ValueError, match="max_items"):
        evaluate_tofu(model, tiny_tokenizer, data_dir=tofu_dir, max_items=0)
    assert not list(tmp_path.glob("tofu_eval*"))


def test_result_file_is_written_atomically(tmp_path):
    target = tmp_path / "out" / "tofu_eval.json"
    tofu_eval.write_json_atomic(target, {"a": np.float32(0.5), "b": np.arange(2)})
    assert json.loads(target.read_text()) == {"a": 0.5, "b": [0, 1]}
    assert [p.name for p in target.parent.iterdir()] == ["tofu_eval.json"]  # no temporary file left behind
