"""Classifier distillation towards a target with an exact zero on the forget class, ``KL(t || p_student)``:

* redistribute (paper 000): ``t`` = the original's softmax with ``p_y`` spread evenly over the other classes;
* mask (DELETE, paper 002): ``t`` = softmax of the original's logits with ``l_y = -inf``.
"""

from __future__ import annotations

from ..classifiers import classifier_logits
from ..losses import masked_target, redistributive_target, target_kl
from .entry import Method


def redistribute(frozen, student, forget: dict, step) -> tuple:
    """``KL(t || p_student)``, ``t`` = :func:`rklu_llm.losses.redistributive_target` of the original's logits."""
    logits = classifier_logits(student, forget)
    return logits, target_kl(logits, redistributive_target(frozen.class_logits(forget), forget["labels"]))


def mask(frozen, student, forget: dict, step) -> tuple:
    """``KL(t || p_student)``, ``t`` = :func:`rklu_llm.losses.masked_target` of the original's logits."""
    logits = classifier_logits(student, forget)
    return logits, target_kl(logits, masked_target(frozen.class_logits(forget), forget["labels"]))


REDISTRIBUTE = Method(
    loss="KL(t || p), t = original p with p_y spread evenly over the other classes",
    needs_reference=True,
    batch="classifier",
    classifier_loss=redistribute,
)

MASK = Method(
    loss="KL(t || p), t = softmax of the original's logits with l_y = -inf (DELETE)",
    needs_reference=True,
    batch="classifier",
    classifier_loss=mask,
)
