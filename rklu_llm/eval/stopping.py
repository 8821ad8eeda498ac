"""Choosing the epoch to keep without a retrained model.

TOFU's forget quality compares the unlearned model with a model retrained without the forget set (the oracle), which
a user who must unlearn does not have. What a user does have is data the model never saw that looks like the forget
set: TOFU's holdout authors (``holdout01/05/10``, the same number of items as ``forget01/05/10``), or any held-out
text of the same kind. Forgetting has gone far enough when the model can no longer tell its forget items from those:
the per-item mean answer NLL of the forget items and of the holdout items come from one distribution.

The signal (:func:`holdout_signal`) is the two-sample Kolmogorov-Smirnov p-value of those two NLL samples
(``scipy.stats.ks_2samp``; high = indistinguishable; the same test TOFU uses for forget quality, here between two
sets of the same model), with the membership AUC of the loss score beside it (0.5 = indistinguishable).

The rule (:func:`select_epoch`): the first epoch whose p-value reaches ``min_p`` and whose model utility reaches the
floor; when none does, the epoch with the highest p-value among those at the floor; ``None`` when no epoch reaches the
floor. Going on past that epoch over-forgets: the forget items become *less* likely than unseen ones, which an
attacker can tell apart again (the p-value falls).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.stats import ks_2samp

from .metrics import membership_auc

SIGNAL = "holdout_ks_p"
AUC = "holdout_auc_loss"
#: the mean per-item answer NLL of each sample, kept with the signal: the holdout items' own loss shows when the model
#: got worse at answering *any* such question (a broken model makes forget and holdout alike by failing both)
FORGET_NLL, HOLDOUT_NLL = "holdout_rule_forget_nll", "holdout_rule_holdout_nll"


def holdout_signal(forget_loss: Sequence[float], holdout_loss: Sequence[float]) -> dict[str, float]:
    """``{holdout_ks_p, holdout_auc_loss}`` of per-item mean answer NLLs of the forget and the holdout items, and
    the mean of each sample (``FORGET_NLL``, ``HOLDOUT_NLL``).

    Raises:
        ValueError: either sample is empty.
    """
    forget = np.asarray(forget_loss, dtype=np.float64)
    holdout = np.asarray(holdout_loss, dtype=np.float64)
    if forget.size == 0 or holdout.size == 0:
        raise ValueError("The holdout signal needs at least one forget and one holdout item.")
    return {
        SIGNAL: float(ks_2samp(forget, holdout).pvalue),
        AUC: membership_auc(forget, holdout),
        FORGET_NLL: float(forget.mean()),
        HOLDOUT_NLL: float(holdout.mean()),
    }


def check_rule(min_p: float, min_model_utility: float | None) -> None:
    """Raise ``ValueError`` unless ``0 < min_p <= 1`` and the floor (when given) is in ``[0, 1]``."""
    if not 0 < min_p <= 1:
        raise ValueError(f"holdout_min_p must be in (0, 1] (got {min_p}).")
    if min_model_utility is not None and not 0 <= min_model_utility <= 1:
        raise ValueError(f"min_model_utility must be in [0, 1] (got {min_model_utility}).")


def select_epoch(
    rows: Sequence[dict], min_p: float = 0.05, min_model_utility: float | None = None, signal: str = SIGNAL
) -> int | None:
    """Index of the epoch the rule keeps (see the module docstring), from per-epoch ``rows``.

    Args:
        rows: one dict per epoch, in order, with ``signal`` (``None`` = not measured: never chosen) and, when a floor
            is given, ``model_utility``.
        min_p: the p-value at which forget and holdout items count as indistinguishable.
        min_model_utility: the utility floor (``None``: none).
        signal: the key of the signal in ``rows``.
    """
    check_rule(min_p, min_model_utility)
    eligible = [
        i
        for i, row in enumerate(rows)
        if row.get(signal) is not None
        and (min_model_utility is None or (row.get("model_utility") or 0.0) >= min_model_utility)
    ]
    for i in eligible:
        if rows[i][signal] >= min_p:
            return i
    if not eligible:
        return None
    return max(eligible, key=lambda i: rows[i][signal])  # max() keeps the earliest of equal values


def first_peak(values: Sequence[float | None]) -> int | None:
    """Index of the first peak of per-epoch ``values`` (the RKL-U paper's epoch: where forget quality first peaks).

    The first measured epoch after which the values next go down, epochs with an equal value skipped: a plateau is
    not a peak unless the values fall after it, and then its first epoch is the peak (forget quality is a KS p-value
    over a few dozen items, so equal values in a row are common). The start of the last plateau when the values
    never go down; ``None`` when nothing was measured (``None`` entries are skipped).
    """
    peak = None
    for i, value in enumerate(values):
        if value is None:
            continue
        if peak is None or value > values[peak]:
            peak = i
        elif value < values[peak]:
            return peak
    return peak
