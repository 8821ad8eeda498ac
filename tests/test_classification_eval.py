"""``rklu_llm.eval.classification``: every metric pinned on hand-made inputs (the arithmetic in each docstring), and
the model-level evaluation on a tiny classifier."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from rklu_llm.data.classification import image_dataset
from rklu_llm.eval.classification import (
    accuracy,
    attack_accuracy,
    classification_metrics,
    entropy_lr_mia,
    evaluate_classifier,
    h_mean,
    mia_features,
    predict_logits,
    softmax,
    svc_mia,
)


def test_accuracy_worked_example():
    """argmax rows: [2, 1] -> 0, [0, 3] -> 1, [1, 0] -> 0; labels [0, 0, 1] -> right, wrong, wrong = 1/3."""
    assert accuracy([[2, 1], [0, 3], [1, 0]], [0, 0, 1]) == pytest.approx(1 / 3)
    assert accuracy(np.zeros((0, 2)), []) is None


def test_h_mean_worked_example():
    """2 * 0.9 * 0.6 / (0.9 + 0.6) = 1.08 / 1.5 = 0.72; DELETE's retrain row: hmean(95.20, 97.00 - 0) = 96.09."""
    assert h_mean(0.9, 0.6) == pytest.approx(0.72)
    assert h_mean(95.20, 97.00) == pytest.approx(96.09, abs=5e-3)
    assert h_mean(0.9, 0.0) == 0.0 and h_mean(0.9, -0.1) == 0.0


def test_softmax_rows():
    """softmax([0, ln 3]) = [1/4, 3/4]; a large shift changes nothing."""
    out = softmax([[0.0, math.log(3.0)], [1000.0, 1000.0 + math.log(3.0)]])
    np.testing.assert_allclose(out, [[0.25, 0.75], [0.25, 0.75]])


def test_mia_features_worked_example():
    """p = [0.5, 0.25, 0.25], y = 0:
    confidence = 0.5
    entropy = -(0.5 ln 0.5 + 2 * 0.25 ln 0.25) = 0.5 ln 2 + ln 2 = 1.5 ln 2
    modified entropy = -(1 - 0.5) ln 0.5 - 2 * 0.25 ln(1 - 0.25) = 0.5 ln 2 - 0.5 ln 0.75 = 0.5 ln(8/3)
    One-hot p = [0, 1, 0], y = 1: confidence 1, entropy 0, modified entropy 0 (0 * ln 0 counts 0).
    y = 0 on the same one-hot row (p_y = 0): modified entropy = -(1) ln(1e-30) - 1 * ln(1 - 1) -> both logs floored:
    -ln 1e-30 - ln 1e-30 = 2 * 69.0776 = 138.155."""
    out = mia_features([[0.5, 0.25, 0.25], [0.0, 1.0, 0.0], [0.0, 1.0, 0.0]], [0, 1, 0])
    np.testing.assert_allclose(out["confidence"], [0.5, 1.0, 0.0])
    np.testing.assert_allclose(out["entropy"], [1.5 * math.log(2), 0.0, 0.0], atol=1e-12)
    np.testing.assert_allclose(out["modified_entropy"], [0.5 * math.log(8 / 3), 0.0, -2 * math.log(1e-30)], atol=1e-9)


def test_svc_mia_on_separable_features():
    """Members' feature near 1, non-members' near 0: the SVC splits at about 0.5. Targets [0.97, 0.02, 0.99, 0.05]
    -> member, non-member, member, non-member: 2 of 4 = 0.5."""
    members = np.linspace(0.9, 1.0, 20)
    nonmembers = np.linspace(0.0, 0.1, 20)
    assert svc_mia(members, nonmembers, np.array([0.97, 0.02, 0.99, 0.05])) == 0.5
    assert svc_mia(members, nonmembers, np.array([0.95])) == 1.0
    assert svc_mia(members, nonmembers, np.array([])) is None


def test_entropy_lr_mia_on_separable_entropies():
    """Member entropies 0..0.2, non-member 2.0..2.2; targets [0.05, 2.15, 0.1] -> member, non-member, member = 2/3."""
    got = entropy_lr_mia(np.array([0.0, 0.1, 0.2]), np.array([2.0, 2.1, 2.2]), np.array([0.05, 2.15, 0.1]))
    assert got == pytest.approx(2 / 3)


def _logits_for(predictions, num_classes=3, confidence=5.0):
    """Logits whose argmax is ``predictions`` (margin ``confidence``)."""
    out = np.zeros((len(predictions), num_classes))
    out[np.arange(len(predictions)), predictions] = confidence
    return out


def test_classification_metrics_class_unlearning_worked_example():
    """3 classes, forget class 2.
    train labels [0, 0, 1, 1, 2, 2], predictions [0, 1, 1, 1, 2, 0]: acc_f = 1/2 (rows 4, 5), acc_r = 3/4.
    test labels [0, 1, 2, 2], predictions [0, 1, 0, 1]: acc_ft = 0/2 = 0, acc_rt = 2/2 = 1, acc_test = 1/2.
    original acc_ft = 0.8 -> drop_ft = 0.8, h_mean = 2 * 1 * 0.8 / 1.8 = 0.8889."""
    train_labels, test_labels = np.array([0, 0, 1, 1, 2, 2]), np.array([0, 1, 2, 2])
    out = classification_metrics(
        _logits_for([0, 1, 1, 1, 2, 0]),
        train_labels,
        _logits_for([0, 1, 0, 1]),
        test_labels,
        forget_classes=[2],
        original_acc_ft=0.8,
    )
    assert out["acc_f"] == 0.5 and out["acc_r"] == 0.75
    assert out["acc_ft"] == 0.0 and out["acc_rt"] == 1.0 and out["acc_test"] == 0.5
    assert out["drop_ft"] == pytest.approx(0.8) and out["h_mean"] == pytest.approx(1.6 / 1.8)
    for key in ("mia_svc_confidence", "mia_svc_entropy", "mia_svc_modified_entropy", "mia_entropy_lr"):
        assert 0.0 <= out[key] <= 1.0


def test_classification_metrics_mia_recipes():
    """Retain-train rows (members) are confident (margin 8), test rows (non-members) unsure (margin 0.5).
    Forget rows 0-1 look like members, rows 2-3 like non-members: every attack calls half of them "member".
    The SVC recipe's members are a random retain-train subset the size of retain-test (here: all 4 retain rows)."""
    rng = np.random.default_rng(0)
    labels_train = np.array([2, 2, 2, 2, 0, 1, 0, 1])
    train = np.stack([_logits_for([y], confidence=m)[0] for y, m in zip(labels_train, [8, 8, 0.5, 0.5, 8, 8, 8, 8])])
    labels_test = np.array([0, 1, 0, 1, 2])
    test = np.stack([_logits_for([y], confidence=0.5)[0] for y in labels_test]) + rng.normal(0, 0.01, (5, 3))
    out = classification_metrics(train, labels_train, test, labels_test, forget_classes=[2])
    assert out["mia_svc_confidence"] == 0.5 and out["mia_svc_entropy"] == 0.5
    assert out["mia_svc_modified_entropy"] == 0.5 and out["mia_entropy_lr"] == 0.5
    assert out["h_mean"] is None  # no original acc_ft given
    # members (margin 8) vs retain-test non-members (margin 0.5): 3 folds, each attack tells them apart perfectly
    for key in ("mia_svc_confidence", "mia_svc_entropy", "mia_svc_modified_entropy", "mia_entropy_lr"):
        assert out[f"{key}_attack_acc"] == 1.0, key


def test_attack_accuracy_separable_and_indistinguishable():
    """Members' feature in [0.9, 1.0], non-members' in [0.0, 0.1]: every held-out fold is classified right -> 1.0.
    Members and non-members with one and the same feature value (a model that outputs the same confidence for
    both): the classifier can only predict one label for that value, so each balanced fold scores (1 + 0) / 2 =
    0.5 exactly: the attack is degenerate, whatever share of a forget set it calls "member"."""
    members, nonmembers = np.linspace(0.9, 1.0, 30), np.linspace(0.0, 0.1, 30)
    assert attack_accuracy(members, nonmembers, "svc") == 1.0
    assert attack_accuracy(members, nonmembers, "lr") == 1.0
    same = np.full(30, 0.3)
    assert attack_accuracy(same, same, "svc") == 0.5 and attack_accuracy(same, same, "lr") == 0.5
    assert attack_accuracy(np.array([0.5]), nonmembers, "svc") is None  # one member: no fold to score
    with pytest.raises(ValueError, match="'svc' or 'lr'"):
        attack_accuracy(members, nonmembers, "knn")


def test_classification_metrics_sample_unlearning():
    """Forget rows 1 and 3 of train: acc_f over them, acc_r over the rest; no forget-test set, so acc_ft is None,
    acc_rt = acc_test = accuracy on the whole test set, and there is no h_mean."""
    out = classification_metrics(
        _logits_for([0, 0, 1, 1]),
        np.array([0, 1, 1, 0]),
        _logits_for([0, 2]),
        np.array([0, 1]),
        forget_index=[1, 3],
        original_acc_ft=0.9,
    )
    assert out["acc_f"] == 0.0 and out["acc_r"] == 1.0
    assert out["acc_ft"] is None and out["acc_rt"] == out["acc_test"] == 0.5
    assert out["h_mean"] is None
    with pytest.raises(ValueError, match="forget_classes"):
        classification_metrics(_logits_for([0]), np.array([0]), _logits_for([0]), np.array([0]))


class _Fixed(torch.nn.Module):
    """Logits = the first 3 pixels of each image (a plain module, called positionally)."""

    def __init__(self):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones(()))

    def forward(self, pixel_values):
        return pixel_values.flatten(1)[:, :3] * self.scale


def _images(predictions, labels):
    pixels = np.zeros((len(labels), 1, 2, 2), dtype=np.float32)
    pixels.reshape(len(labels), -1)[np.arange(len(labels)), predictions] = 5.0
    return image_dataset(pixels, labels, ["a", "b", "c"])


def test_evaluate_classifier_on_a_fixed_model():
    """The model predicts pixel argmax; train: predictions [0, 1, 2, 2] for labels [0, 1, 2, 2] (forget class 2 fully
    known: acc_f = 1); test: [0, 0, 2] for [0, 1, 2] -> acc_ft = 1, acc_rt = 1/2."""
    train = _images([0, 1, 2, 2], [0, 1, 2, 2])
    test = _images([0, 0, 2], [0, 1, 2])
    model = _Fixed()
    model.train()
    out = evaluate_classifier(model, train, test, forget_classes=[2], batch_size=2)
    assert out["acc_f"] == 1.0 and out["acc_r"] == 1.0 and out["acc_ft"] == 1.0 and out["acc_rt"] == 0.5
    assert model.training  # mode restored
    np.testing.assert_allclose(predict_logits(model, test)[:, 2], [0.0, 0.0, 5.0])


def test_evaluate_classifier_rejects_bad_inputs():
    train = _images([0, 1], [0, 1])
    with pytest.raises(ValueError, match="no samples"):
        evaluate_classifier(_Fixed(), train, train, forget_classes=[2])

    class Flat(_Fixed):
        def forward(self, pixel_values):
            return pixel_values.sum((1, 2, 3)) * self.scale

    with pytest.raises(ValueError, match=r"shape \(B, K\)"):
        evaluate_classifier(Flat(), train, train, forget_classes=[1])
    wide = _images([0, 1], [0, 1])

    class Two(_Fixed):
        def forward(self, pixel_values):
            return pixel_values.flatten(1)[:, :2] * self.scale

    with pytest.raises(ValueError, match="2 outputs but the data has 3 classes"):
        evaluate_classifier(Two(), wide, wide, forget_classes=[1])


def test_evaluate_classifier_on_a_retain_subset():
    """Forget class 2 (rows 4: right, 5: wrong) and 2 of the 4 retain rows (all predicted right): the model sees
    2 + 2 train rows, acc_f = 1/2 over both forget rows, acc_r = 1. Sample unlearning of rows 1 and 4 (both right)
    keeps both and one retain row: 3 train rows, acc_f = 1."""
    seen = []

    class Counting(_Fixed):
        def forward(self, pixel_values):
            seen.append(len(pixel_values))
            return super().forward(pixel_values)

    train = _images([0, 1, 1, 0, 2, 0], [0, 1, 1, 0, 2, 2])
    test = _images([0], [0])
    out = evaluate_classifier(Counting(), train, test, forget_classes=[2], retain_train_samples=2, batch_size=64)
    assert seen == [4, 1] and out["acc_f"] == 0.5 and out["acc_r"] == 1.0
    seen.clear()
    out = evaluate_classifier(Counting(), train, test, forget_index=[1, 4], retain_train_samples=1, batch_size=64)
    assert seen == [3, 1] and out["acc_f"] == 1.0
