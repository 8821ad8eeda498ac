"""NPO and DPO: sequence-level preference losses against the frozen original (the reference policy).

Sequence log-likelihoods are summed over answer tokens (:func:`rklu_llm.losses.sequence_log_likelihood`); both losses
are means over forget sequences, so their items are sequences, not tokens.
"""

from __future__ import annotations

from ..losses import dpo_loss, npo_loss, sequence_log_likelihood
from .entry import Method, student_logits


def npo(frozen, student, inputs: dict, step) -> tuple:
    """``-(2/beta) * log sigmoid(-beta * (logp_student(y|x) - logp_original(y|x)))`` per forget sequence, summed and
    divided by ``step.num_items``."""
    forget = inputs["forget"]
    labels = forget["labels"]
    logits = student_logits(student, forget)
    reference = sequence_log_likelihood(frozen.logits("original", student, forget), labels)
    loss = npo_loss(sequence_log_likelihood(logits, labels), reference, step.config.npo_beta, step.num_items)
    return loss, logits


def dpo(frozen, student, inputs: dict, step) -> tuple:
    """``-log sigmoid(beta * [(logp(y_w) - logp_o(y_w)) - (logp(y_l) - logp_o(y_l))])`` with ``y_w`` a refusal and
    ``y_l`` the forget answer, per forget sequence, summed and divided by ``step.num_items``."""
    forget, refusal = inputs["forget"], inputs["refusal"]
    labels = forget["labels"]
    logits = student_logits(student, forget)
    loss = dpo_loss(
        sequence_log_likelihood(student_logits(student, refusal), refusal["labels"]),
        sequence_log_likelihood(frozen.logits("original", student, refusal), refusal["labels"]),
        sequence_log_likelihood(logits, labels),
        sequence_log_likelihood(frozen.logits("original", student, forget), labels),
        step.config.dpo_beta,
        step.num_items,
    )
    return loss, logits


NPO = Method(
    loss="negative preference optimisation against the original",
    needs_reference=True,
    counts=("forget", "sequences"),
    lm_loss=npo,
    card_fields=("npo_beta",),
)

DPO = Method(
    loss="DPO: refusal preferred over the forget answer",
    needs_reference=True,
    needs_refusals=True,
    counts=("forget", "sequences"),
    lm_loss=dpo,
    masks_text_prefix=True,
    card_fields=("dpo_beta", "refusal_file"),
)
