"""GA and GD: gradient ascent on the forget set, for causal LMs (``-NLL`` over the answer tokens) and classifiers
(``-CE``); GD (gradient difference) adds the retain NLL term, ``retain_mode='rt'``, as part of the method."""

from __future__ import annotations

import torch.nn.functional as F

from ..classifiers import classifier_logits
from ..losses import token_nll
from .entry import Method, student_logits


def negative_nll(frozen, student, inputs: dict, step) -> tuple:
    """``-NLL`` of the forget answers, summed over their tokens and divided by ``step.num_items``."""
    forget = inputs["forget"]
    logits = student_logits(student, forget)
    return -token_nll(logits, forget["labels"], step.num_items), logits


def negative_cross_entropy(frozen, student, forget: dict, step) -> tuple:
    """``-CE`` of the student's ``(B, K)`` logits against the forget labels (a mean over the samples)."""
    logits = classifier_logits(student, forget)
    return logits, -F.cross_entropy(logits.float(), forget["labels"])


def check_gd(config) -> None:
    if config.retain_mode != "rt":
        raise ValueError(
            "gd is gradient ascent plus retain NLL (retain_mode='rt'); for another retain term use method='ga' "
            f"with retain_mode={config.retain_mode!r}."
        )


GA = Method(
    loss="-NLL (classifier: -CE) on the forget set (gradient ascent)",
    batch="both",
    lm_loss=negative_nll,
    classifier_loss=negative_cross_entropy,
)

GD = Method(
    loss="-NLL on forget + NLL on retain (gradient difference)",
    default_retain_mode="rt",
    batch="both",
    lm_loss=negative_nll,
    classifier_loss=negative_cross_entropy,
    retain_mode_fixed=True,
    check=check_gd,
)
