"""IDK: NLL on (forget question, a random refusal answer); its items are the refusal answer tokens."""

from __future__ import annotations

from ..losses import token_nll
from .entry import Method, student_logits


def refusal_nll(frozen, student, inputs: dict, step) -> tuple:
    """NLL of the refusal answers, summed over their tokens and divided by ``step.num_items``; the student never
    sees the forget answers, so no forget logits."""
    refusal = inputs["refusal"]
    return token_nll(student_logits(student, refusal), refusal["labels"], step.num_items), None


IDK = Method(
    loss="NLL on (forget question, refusal answer)",
    needs_refusals=True,
    counts=("refusal", "tokens"),
    lm_loss=refusal_nll,
    card_fields=("refusal_file",),
)
