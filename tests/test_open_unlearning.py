"""Interchange with open-unlearning: its TOFU_EVAL.json as a forget-quality and privleak reference (split checked
before any model work), a TOFU_SUMMARY.json refused with the fix, and ours written in its layout and read back."""

from __future__ import annotations

import json

import numpy as np
import pytest

from rklu_llm.data import load_tofu
from rklu_llm.eval.audit import evaluate_audit, membership_reference_aucs
from rklu_llm.eval.open_unlearning import (
    EVAL_FILE,
    SUMMARY_FILE,
    forget_truth_ratios,
    read_eval_log,
    to_open_unlearning,
    write_open_unlearning,
)
from rklu_llm.eval.tofu import compare_to_reference, evaluate_tofu, reference_truth_ratios

# Llama-3 chat prompts, as open-unlearning's forget_Q_A_ROUGE stores them in "input"
TEMPLATE = (
    "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nCutting Knowledge Date: December 2023\n"
    "Today Date: 10 Apr 2025\n\n<|eot_id|><|start_header_id|>user<|end_header_id|>\n\n{q}<|eot_id|>"
    "<|start_header_id|>assistant<|end_header_id|>\n\n"
)


def their_log(questions, truth_ratios, auc=0.7, holdout=None) -> dict:
    """A TOFU_EVAL.json the way open-unlearning writes it (the entries read here)."""
    n = len(questions)
    by_index = {str(i): {"score": float(tr)} for i, tr in enumerate(truth_ratios)}
    scores = {str(i): {"score": float(i)} for i in range(n)}
    return {
        "forget_truth_ratio": {
            "agg_value": float(np.mean(np.minimum(truth_ratios, 1 / np.asarray(truth_ratios)))),
            "value_by_index": by_index,
        },
        "forget_Q_A_ROUGE": {
            "agg_value": 0.4,
            "value_by_index": {
                str(i): {
                    "rougeL_recall": 0.4,
                    "rouge1_recall": 0.5,
                    "rougeL_f1": 0.3,
                    "input": TEMPLATE.format(q=q),
                    "ground_truth": "x",
                    "generation": "y",
                }
                for i, q in enumerate(questions)
            },
        },
        "mia_min_k": {
            "agg_value": auc,
            "auc": auc,
            "forget": {"agg_value": 1.0, "value_by_index": scores},
            "holdout": {"agg_value": 2.0, "value_by_index": holdout or scores},
        },
        "forget_quality": {"agg_value": None},
        "model_utility": {"agg_value": 0.6},
    }


@pytest.fixture(scope="module")
def forget01(tofu_dir):
    return load_tofu("forget01_perturbed", tofu_dir)["question"]


def test_their_log_is_a_forget_quality_reference(forget01, tmp_path):
    tr = np.linspace(0.2, 1.8, 40)
    log = their_log(forget01, tr)
    (tmp_path / EVAL_FILE).write_text(json.dumps(log, indent=4))
    # ours in another order: matched by question (their prompts contain ours)
    order = np.arange(40)[::-1]
    questions = [forget01[i] for i in order]
    entry = compare_to_reference(tr[order], questions, tmp_path, "forget01")  # a folder holding TOFU_EVAL.json
    assert entry["matched_by"] == "question" and entry["reference_items"] == 40
    assert entry["forget_quality"] == pytest.approx(1.0) and entry["forget_quality_note"] is None
    got, their_questions, label = reference_truth_ratios(tmp_path / EVAL_FILE, "forget01")
    np.testing.assert_allclose(got, tr)
    assert label.endswith(EVAL_FILE) and forget01[0] in their_questions[0]
    # without forget_Q_A_ROUGE there are no questions: matched by position
    log.pop("forget_Q_A_ROUGE")
    assert compare_to_reference(tr, list(forget01), log, "forget01")["matched_by"] == "index"


def test_their_log_of_another_split_fails_before_any_model_work(tofu_dir):
    log = their_log([f"q{i}" for i in range(200)], np.ones(200))  # 200 items: forget05
    with pytest.raises(ValueError, match="evaluated forget05, not forget01"):
        forget_truth_ratios(log, "forget01")
    with pytest.raises(ValueError, match="evaluated forget05, not forget01"):
        evaluate_tofu(None, None, "forget01", tofu_dir, reference=log)  # model=None: nothing touched the model
    with pytest.raises(ValueError, match="evaluated forget05, not forget01"):
        evaluate_audit(None, None, "forget01", "membership", tofu_dir, membership_reference=log)


def test_a_summary_is_refused_with_the_fix(tmp_path):
    summary = {"forget_quality": 0.3, "forget_truth_ratio": 0.6, "model_utility": 0.5, "privleak": -20.0}
    (tmp_path / SUMMARY_FILE).write_text(json.dumps(summary))
    with pytest.raises(ValueError, match="aggregates only.*TOFU_EVAL.json"):
        read_eval_log(tmp_path / SUMMARY_FILE)
    with pytest.raises(ValueError, match="aggregates only"):
        compare_to_reference([1.0], ["q"], tmp_path / SUMMARY_FILE, "forget01")
    with pytest.raises(ValueError, match="not an open-unlearning"):
        read_eval_log({"something": 1})


def test_their_mia_auc_is_a_privleak_reference(forget01):
    aucs, label = membership_reference_aucs(their_log(forget01, np.ones(40), auc=0.62), "forget01")
    assert aucs == {"min_k": 0.62} and label.startswith("<dict")


def _our_results(questions):
    """A tofu_eval.json and an audit_eval.json as evaluate_tofu / evaluate_audit write them (the keys read here)."""
    n = len(questions)
    tr = np.linspace(0.5, 1.5, n)
    items = {
        "question": questions,
        "probability": [0.5] * n,
        "answer_probability": [0.5] * n,
        "truth_ratio": tr.tolist(),
        "rouge_l_recall": [0.25] * n,
        "generated": ["g"] * n,
    }
    retain = {
        "question": ["r"] * 3,
        "probability": [0.8] * 3,
        "answer_probability": [0.8] * 3,
        "truth_ratio": [0.5] * 3,
        "rouge_l_recall": [0.9] * 3,
        "generated": ["g"] * 3,
    }
    tofu = {
        "model": "m",
        "settings": {"forget_splits": ["forget01"]},
        "model_utility": 0.55,
        "sets": {
            "forget01_perturbed": {
                "aggregate": {"probability": 0.5, "rouge_l_recall": 0.25, "truth_ratio": 0.8, "num_items": n},
                "items": items,
            },
            "retain_perturbed": {
                "aggregate": {"probability": 0.8, "rouge_l_recall": 0.9, "truth_ratio": 0.5, "num_items": 3},
                "items": retain,
            },
        },
        "forget": {"forget01": {"forget_quality": 0.07}},
    }
    scores = {name: [1.0] * n for name in ("loss", "zlib", "min_k", "min_k_plus_plus")}
    audit = {
        "model": "m",
        "settings": {"forget_split": "forget01"},
        "membership": {
            "auc": {"loss": 0.6, "zlib": 0.61, "min_k": 0.62, "min_k_plus_plus": 0.63},
            "privleak": {"loss": -1.0, "zlib": -2.0, "min_k": -24.0, "min_k_plus_plus": -3.0},
            "items": {"forget": scores, "holdout": scores},
        },
        "extraction": {
            "extraction_strength": 0.3,
            "exact_memorization": 0.4,
            "items": {"extraction_strength": [0.3] * n, "exact_memorization": [0.4] * n},
        },
    }
    return tofu, audit, tr


def test_ours_in_their_layout_reads_back(forget01, tmp_path):
    tofu, audit, tr = _our_results(list(forget01))
    eval_path, summary_path = write_open_unlearning(tmp_path, tofu, audit)
    logs, summary = json.loads(eval_path.read_text()), json.loads(summary_path.read_text())
    # their keys, their per-item layout
    assert logs["forget_truth_ratio"]["value_by_index"]["3"] == {"score": pytest.approx(tr[3])}
    assert logs["forget_Q_A_Prob"]["value_by_index"]["0"]["prob"] == 0.5
    assert logs["forget_Q_A_Prob"]["value_by_index"]["0"]["avg_loss"] == pytest.approx(np.log(2))
    assert logs["forget_Q_A_ROUGE"]["value_by_index"]["0"]["rougeL_recall"] == 0.25
    assert logs["retain_Truth_Ratio"]["agg_value"] == 0.5 and logs["retain_Q_A_Prob"]["agg_value"] == 0.8
    assert logs["mia_min_k"]["agg_value"] == logs["mia_min_k"]["auc"] == 0.62
    assert summary == {
        "exact_memorization": 0.4,
        "extraction_strength": 0.3,
        "forget_Q_A_Prob": 0.5,
        "forget_Q_A_ROUGE": 0.25,
        "forget_quality": 0.07,
        "forget_truth_ratio": 0.8,
        "mia_loss": 0.6,
        "mia_min_k": 0.62,
        "mia_min_k_plus_plus": 0.63,
        "mia_zlib": 0.61,
        "model_utility": 0.55,
        "privleak": -24.0,
        "retain_Q_A_Prob": 0.8,
        "retain_Q_A_ROUGE": 0.9,
        "retain_Truth_Ratio": 0.5,
    }
    # what open-unlearning's ks_test and privleak read from a retain model's file, we read back the same
    entry = compare_to_reference(tr, list(forget01), eval_path, "forget01")
    assert entry["forget_quality"] == pytest.approx(1.0) and entry["matched_by"] == "question"
    assert membership_reference_aucs(tmp_path, "forget01")[0]["min_k"] == 0.62  # the folder: audit file absent
    with pytest.raises(ValueError, match="split"):
        to_open_unlearning(tofu, audit, split="forget05")
