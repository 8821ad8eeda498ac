"""Evaluation of classifier unlearning: accuracies, H-Mean and two membership-inference attacks (scikit-learn).

Sets (train = the original training set, test = the held-out set):

* class unlearning: ``D_f`` = train samples of the forget classes, ``D_r`` = the other train samples; ``D_ft`` /
  ``D_rt`` the same split of test;
* sample unlearning: ``D_f`` = the forgotten train samples, ``D_r`` = the rest of train; the whole test set plays
  ``D_rt`` (there is no forget-test set).

Metrics (fractions in ``[0, 1]``; tables show percentages):

* ``acc_f``, ``acc_r``, ``acc_ft``, ``acc_rt`` (and ``acc_test`` on the whole test set): top-1 accuracy;
* ``h_mean``: harmonic mean of ``acc_rt`` and ``drop_ft = acc_ft(original) - acc_ft(unlearned)`` (DELETE), ``0`` when
  the drop is ``<= 0``; class unlearning only;
* ``mia_svc_<feature>`` (DELETE / SalUn recipe): an ``SVC(C=3, kernel="rbf", gamma="auto")`` fitted on one feature
  (``confidence`` ``p_y``, ``entropy`` ``-sum_k p_k log p_k``, or ``modified_entropy``
  ``-(1 - p_y) log p_y - sum_{k != y} p_k log(1 - p_k)``, Song & Mittal 2021) of members = a random retain-train
  subset the size of retain-test and non-members = retain-test; reported: the fraction of forget-train samples
  predicted "member" (lower = forgotten; the retrain oracle's value is the target);
* ``mia_svc_<feature>_attack_acc`` / ``mia_entropy_lr_attack_acc``: each attack's own balanced accuracy on its known
  members vs non-members (cross-validated, :func:`attack_accuracy`); near 0.5 the attack cannot tell members at all
  and its forget-set fraction is noise (it can swing from 0 to 1 between models);
* ``mia_entropy_lr`` (SSD / JiT recipe): ``LogisticRegression(class_weight="balanced")`` on the entropy of
  retain-train (member) vs the whole test set (non-member); reported: the mean "member" prediction on forget-train.

Caveat: the confidence feature goes to 0 for every model that drives ``p_y`` to 0 on the forget set (the oracle
too); entropy separates methods better.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.stats import hmean
from tqdm.auto import tqdm

from ..classifiers import check_logits_shape, classifier_logits
from ..data.classification import batches, check_labels, num_classes_of, take_rows, to_arrays

MIA_FEATURES = ("confidence", "entropy", "modified_entropy")
_LOG_FLOOR = 1e-30


# --------------------------------------------------------------------------------------------------------------------
# Pure metrics: arrays in, numbers out
# --------------------------------------------------------------------------------------------------------------------


def accuracy(logits, labels) -> float | None:
    """Top-1 accuracy ``mean(argmax_k logits[i, k] == labels[i])``; ``None`` for an empty set.

    Args:
        logits: ``(N, K)``.
        labels: ``(N,)``.
    """
    logits, labels = np.asarray(logits), np.asarray(labels)
    if len(labels) == 0:
        return None
    return float((logits.argmax(-1) == labels).mean())


def h_mean(acc_rt: float, drop_ft: float) -> float:
    """DELETE's H-Mean: the harmonic mean of ``acc_rt`` and ``drop_ft``, ``2 a d / (a + d)``; 0 if either is <= 0."""
    if acc_rt <= 0 or drop_ft <= 0:
        return 0.0
    return float(hmean([acc_rt, drop_ft]))


def softmax(logits) -> np.ndarray:
    """Row-wise softmax in float64 (max-shifted)."""
    z = np.asarray(logits, dtype=np.float64)
    z = np.exp(z - z.max(-1, keepdims=True))
    return z / z.sum(-1, keepdims=True)


def mia_features(probs, labels) -> dict[str, np.ndarray]:
    """The three per-sample membership features of softmax outputs.

    * ``confidence``: ``p_y``;
    * ``entropy``: ``-sum_k p_k log p_k``;
    * ``modified_entropy``: ``-(1 - p_y) log p_y - sum_{k != y} p_k log(1 - p_k)`` (Song & Mittal 2021).

    Logarithms of 0 are taken at ``1e-30``.

    Args:
        probs: ``(N, K)`` probabilities.
        labels: ``(N,)`` true classes.

    Returns:
        ``{name: (N,) float64}``.
    """
    p = np.asarray(probs, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    rows = np.arange(len(labels))
    p_y = p[rows, labels]
    log = lambda x: np.log(np.maximum(x, _LOG_FLOOR))  # noqa: E731
    others = p * log(1.0 - p)
    others[rows, labels] = 0.0
    return {
        "confidence": p_y,
        "entropy": -(p * log(p)).sum(-1),
        "modified_entropy": -(1.0 - p_y) * log(p_y) - others.sum(-1),
    }


def svc_mia(member, nonmember, target) -> float | None:
    """Fraction of ``target`` samples an ``SVC(C=3, kernel="rbf", gamma="auto")`` calls "member".

    The SVC is fitted on one feature: ``member`` samples labelled 1 and ``nonmember`` samples labelled 0.

    Args:
        member, nonmember, target: ``(N,)`` values of one feature.

    Returns:
        The mean prediction on ``target`` in ``[0, 1]``; ``None`` when ``target`` is empty.
    """
    from sklearn.svm import SVC  # scikit-learn is slow to import: only the membership attacks need it

    if len(target) == 0:
        return None
    x = np.concatenate([member, nonmember]).astype(np.float64)[:, None]
    y = np.concatenate([np.ones(len(member)), np.zeros(len(nonmember))])
    clf = SVC(C=3, kernel="rbf", gamma="auto").fit(x, y)
    return float(clf.predict(np.asarray(target, dtype=np.float64)[:, None]).mean())


def attack_accuracy(member, nonmember, attack: str, seed: int = 0, folds: int = 3) -> float | None:
    """The attack's own balanced accuracy at telling known ``member`` from known ``nonmember`` samples.

    The same classifier as the attack (``attack="svc"``: ``SVC(C=3, kernel="rbf", gamma="auto")``; ``"lr"``:
    ``LogisticRegression(class_weight="balanced")``) is fitted and scored by stratified ``folds``-fold
    cross-validation on the attack's training data (members labelled 1, non-members 0), so each sample is scored by
    a classifier that did not see it. 0.5 = the feature does not separate members from non-members: the attack's
    "member" calls on the forget set then carry no information (a degenerate attack), whatever fraction they give.

    Args:
        member, nonmember: ``(N,)``, ``(M,)`` values of one feature.
        attack: ``"svc"`` or ``"lr"``.
        seed: seeds the fold split.
        folds: number of folds (reduced to the smaller side's size when that is smaller; ``None`` below 2).

    Returns:
        The mean balanced accuracy over the folds in ``[0, 1]``; ``None`` when a side has fewer than 2 samples.
    """
    from sklearn.linear_model import LogisticRegression  # lazy: see svc_mia
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.svm import SVC  # scikit-learn is slow to import: only the membership attacks need it

    if attack not in ("svc", "lr"):
        raise ValueError(f"attack must be 'svc' or 'lr', got {attack!r}.")
    folds = min(folds, len(member), len(nonmember))
    if folds < 2:
        return None
    x = np.concatenate([member, nonmember]).astype(np.float64)[:, None]
    y = np.concatenate([np.ones(len(member)), np.zeros(len(nonmember))])
    clf = SVC(C=3, kernel="rbf", gamma="auto") if attack == "svc" else LogisticRegression(class_weight="balanced")
    split = StratifiedKFold(folds, shuffle=True, random_state=seed)
    return float(cross_val_score(clf, x, y, cv=split, scoring="balanced_accuracy").mean())


def entropy_lr_mia(member_entropy, nonmember_entropy, target_entropy) -> float | None:
    """Mean "member" prediction of ``LogisticRegression(class_weight="balanced")`` on ``target_entropy``, fitted on
    ``member_entropy`` (label 1) vs ``nonmember_entropy`` (label 0); ``None`` when the target is empty."""
    from sklearn.linear_model import LogisticRegression

    if len(target_entropy) == 0:
        return None
    x = np.concatenate([member_entropy, nonmember_entropy]).astype(np.float64)[:, None]
    y = np.concatenate([np.ones(len(member_entropy)), np.zeros(len(nonmember_entropy))])
    clf = LogisticRegression(class_weight="balanced").fit(x, y)
    return float(clf.predict(np.asarray(target_entropy, dtype=np.float64)[:, None]).mean())


def classification_metrics(
    train_logits,
    train_labels,
    test_logits,
    test_labels,
    forget_classes=None,
    forget_index=None,
    original_acc_ft: float | None = None,
    seed: int = 0,
    mia_max_samples: int | None = None,
) -> dict:
    """Every metric of the module docstring from the logits of one model on the train and test sets.

    Args:
        train_logits, train_labels: ``(N, K)``, ``(N,)`` on the whole training set (forget + retain).
        test_logits, test_labels: ``(M, K)``, ``(M,)`` on the test set.
        forget_classes: the forgotten classes (class unlearning), or ``None``.
        forget_index: the forgotten rows of the training set (sample unlearning; ignored with classes).
        original_acc_ft: ``acc_ft`` of the original model, for ``drop_ft`` and ``h_mean`` (class unlearning).
        seed: seeds the random retain-train subset of the SVC attack.
        mia_max_samples: cap on each side of the attacks' training sets (members / non-members), drawn at random
            (``None``: all). Caps the SVC's cost, which grows quadratically.

    Returns:
        A dict of the metrics (``None`` where a set is empty or a value is undefined).
    """
    train_labels, test_labels = np.asarray(train_labels), np.asarray(test_labels)
    if forget_classes is not None:
        forget = np.isin(train_labels, list(forget_classes))
        forget_test = np.isin(test_labels, list(forget_classes))
    elif forget_index is not None:
        forget = np.zeros(len(train_labels), dtype=bool)
        forget[np.asarray(forget_index, dtype=np.int64)] = True
        forget_test = np.zeros(len(test_labels), dtype=bool)
    else:
        raise ValueError("Give forget_classes (class unlearning) or forget_index (sample unlearning).")
    retain_test = ~forget_test
    out = {
        "acc_f": accuracy(train_logits[forget], train_labels[forget]),
        "acc_r": accuracy(train_logits[~forget], train_labels[~forget]),
        "acc_ft": accuracy(test_logits[forget_test], test_labels[forget_test]),
        "acc_rt": accuracy(test_logits[retain_test], test_labels[retain_test]),
        "acc_test": accuracy(test_logits, test_labels),
        "drop_ft": None,
        "h_mean": None,
    }
    if forget_classes is not None and original_acc_ft is not None and out["acc_ft"] is not None:
        out["drop_ft"] = original_acc_ft - out["acc_ft"]
        out["h_mean"] = h_mean(out["acc_rt"], out["drop_ft"])
    rng = np.random.default_rng(seed)

    def cap(idx):
        if mia_max_samples is None or len(idx) <= mia_max_samples:
            return idx
        return np.sort(rng.choice(idx, mia_max_samples, replace=False))

    train_features = mia_features(softmax(train_logits), train_labels)
    test_features = mia_features(softmax(test_logits), test_labels)
    retain_rows, forget_rows = np.flatnonzero(~forget), np.flatnonzero(forget)
    nonmembers = cap(np.flatnonzero(retain_test))
    members = np.sort(rng.choice(retain_rows, min(len(nonmembers), len(retain_rows)), replace=False))
    for name in MIA_FEATURES:
        member, nonmember = train_features[name][members], test_features[name][nonmembers]
        out[f"mia_svc_{name}"] = svc_mia(member, nonmember, train_features[name][forget_rows])
        out[f"mia_svc_{name}_attack_acc"] = attack_accuracy(member, nonmember, "svc", seed)
    lr_members, lr_nonmembers = cap(retain_rows), cap(np.arange(len(test_labels)))
    member, nonmember = train_features["entropy"][lr_members], test_features["entropy"][lr_nonmembers]
    out["mia_entropy_lr"] = entropy_lr_mia(member, nonmember, train_features["entropy"][forget_rows])
    out["mia_entropy_lr_attack_acc"] = attack_accuracy(member, nonmember, "lr", seed)
    return out


# --------------------------------------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------------------------------------


def _with_retain_subset(train, forget_classes, forget_index, size: int, seed: int):
    """``train`` reduced to every forget row plus ``size`` random retain rows, and the forget rows' new indices."""
    labels = train.select_columns(["labels"]).with_format("numpy")[:]["labels"]
    if forget_classes is not None:
        forget = np.isin(labels, list(forget_classes))
    else:
        forget = np.zeros(len(labels), dtype=bool)
        forget[np.asarray(forget_index, dtype=np.int64)] = True
    retain_rows = np.flatnonzero(~forget)
    if size < len(retain_rows):
        retain_rows = np.random.default_rng([seed, 2]).choice(retain_rows, size, replace=False)
    rows = np.sort(np.concatenate([np.flatnonzero(forget), retain_rows]))
    return take_rows(train, rows), np.flatnonzero(forget[rows])


@torch.no_grad()
def predict_logits(model, dataset, batch_size: int = 512, pad_token_id: int = 0, desc: str = "predict") -> np.ndarray:
    """``(N, K)`` float32 logits of ``model`` (in eval mode, restored afterwards) on a classification dataset.

    Raises:
        ValueError: the model does not return ``(B, K)`` logits, or the data's labels are out of range for ``K``.
    """
    arrays = dataset if isinstance(dataset, dict) else to_arrays(dataset)
    device = next(iter(model.parameters()), torch.empty(0)).device
    was_training = model.training
    model.eval()
    out = []
    try:
        total = -(-len(arrays["labels"]) // batch_size)
        for batch in tqdm(batches(arrays, batch_size, pad_token_id), total=total, desc=desc, leave=False):
            labels = batch.pop("labels")
            logits = classifier_logits(model, {k: v.to(device) for k, v in batch.items()})
            check_logits_shape(logits, len(labels))
            out.append(logits.float().cpu().numpy())
    finally:
        model.train(was_training)
    logits = np.concatenate(out) if out else np.zeros((0, 0), dtype=np.float32)
    if len(logits):
        check_labels(arrays["labels"], logits.shape[1], "evaluation labels")
    return logits


def evaluate_classifier(
    model,
    train,
    test,
    forget_classes=None,
    forget_index=None,
    original_acc_ft: float | None = None,
    batch_size: int = 512,
    pad_token_id: int = 0,
    seed: int = 0,
    mia_max_samples: int | None = None,
    retain_train_samples: int | None = None,
) -> dict:
    """:func:`classification_metrics` of ``model`` on the datasets ``train`` (forget + retain) and ``test``.

    ``forget_classes`` / ``forget_index`` / ``original_acc_ft`` / ``seed`` / ``mia_max_samples`` as there;
    ``retain_train_samples`` scores ``acc_r`` and the attacks' retain-train side on a seeded random subset of that
    many retain-train samples (every forget sample is always scored). The data is checked (labels in range, the
    forget classes present) before the model runs.
    """
    if retain_train_samples is not None:
        train, forget_index = _with_retain_subset(train, forget_classes, forget_index, retain_train_samples, seed)
    train_arrays, test_arrays = to_arrays(train), to_arrays(test)
    k = num_classes_of(train)
    if k is not None:
        check_labels(train_arrays["labels"], k, "train labels")
        check_labels(test_arrays["labels"], k, "test labels")
    if forget_classes is not None:
        missing = [c for c in forget_classes if not (train_arrays["labels"] == c).any()]
        if missing:
            raise ValueError(f"Forget class(es) {missing} have no samples in the training set.")
    train_logits = predict_logits(model, train_arrays, batch_size, pad_token_id, "predict train")
    test_logits = predict_logits(model, test_arrays, batch_size, pad_token_id, "predict test")
    if train_logits.shape[1] != test_logits.shape[1] or (k is not None and train_logits.shape[1] != k):
        raise ValueError(f"The model has {train_logits.shape[1]} outputs but the data has {k} classes.")
    return classification_metrics(
        train_logits,
        train_arrays["labels"],
        test_logits,
        test_arrays["labels"],
        forget_classes,
        forget_index,
        original_acc_ft,
        seed,
        mia_max_samples,
    )
