"""token_redistribute and token_mask: the classifier targets of papers 000 / 002, per answer token of a causal LM.

At each answer position the frozen original's distribution gives the target: the label token's probability spread
evenly over the rest of the vocabulary (redistribute), or the label token masked out and the rest renormalised
(mask) (:func:`rklu_llm.losses.token_target_logits`); the student is distilled towards it with the KL of
``divergence`` (default forward, ``KL(target || p_student)``), averaged over the forget answer tokens.
"""

from __future__ import annotations

from ..losses import answer_positions, distillation_kl, token_target_logits
from .entry import Method, student_logits


def _token_target_kl(frozen, student, inputs: dict, step, kind: str) -> tuple:
    forget, config = inputs["forget"], step.config
    labels = forget["labels"]
    logits = student_logits(student, forget)
    answers, mask = answer_positions(logits, labels)
    original = frozen.answer_logits("original", student, forget, mask)
    target = token_target_logits(original, labels[:, 1:][mask], kind, config.kl_chunk_size)
    loss = distillation_kl(
        answers, target, direction=config.divergence, chunk_size=config.kl_chunk_size, num_items=step.num_items
    )
    return loss, logits


def token_redistribute(frozen, student, inputs: dict, step) -> tuple:
    """KL to the original with each answer token's probability spread over the vocabulary."""
    return _token_target_kl(frozen, student, inputs, step, "redistribute")


def token_mask(frozen, student, inputs: dict, step) -> tuple:
    """KL to the original with each answer token masked out and the rest renormalised."""
    return _token_target_kl(frozen, student, inputs, step, "mask")


TOKEN_REDISTRIBUTE = Method(
    loss="KL to the original with each answer token's probability spread over the vocabulary",
    needs_reference=True,
    default_divergence="forward",
    lm_loss=token_redistribute,
    card_fields=("divergence",),
)

TOKEN_MASK = Method(
    loss="KL to the original with each answer token masked out and renormalised",
    needs_reference=True,
    default_divergence="forward",
    lm_loss=token_mask,
    card_fields=("divergence",),
)
