"""RKL-U and FKL-U (paper 001): distillation on the forget set towards the logit-subtraction teacher.

``l_t = l_o - teacher_alpha * relu(l_a - l_o)`` per answer position over the whole vocabulary (``o`` the frozen
original, ``a`` the augmented model); RKL-U minimises the reverse ``KL(p_student || p_teacher)``, FKL-U the forward
``KL(p_teacher || p_student)`` (``divergence`` overrides either), averaged over the forget answer tokens.
"""

from __future__ import annotations

from ..losses import answer_positions, distillation_kl
from .entry import Method, student_logits

CARD_FIELDS = ("teacher_alpha", "divergence", "augment_epochs", "augment_learning_rate", "augment_lora")


def teacher_distillation(frozen, student, inputs: dict, step) -> tuple:
    """:func:`rklu_llm.losses.distillation_kl` of the student's ``(N, V)`` answer logits to the teacher built from the
    original's and the augmented model's, summed over the ``N`` answer tokens and divided by ``step.num_items``."""
    forget, config = inputs["forget"], step.config
    logits = student_logits(student, forget)
    answers, mask = answer_positions(logits, forget["labels"])
    original = frozen.answer_logits("original", student, forget, mask)
    augmented = frozen.answer_logits("augmented", student, forget, mask)
    loss = distillation_kl(
        answers, original, augmented, config.teacher_alpha, config.divergence, config.kl_chunk_size, step.num_items
    )
    return loss, logits


def teacher_card_lines(config) -> list[str]:
    direction = "KL(p_student || p_teacher)" if config.divergence == "reverse" else "KL(p_teacher || p_student)"
    return [
        f"- **Teacher:** per answer token over the whole vocabulary, `l_t = l_o - {config.teacher_alpha} * "
        f"relu(l_a - l_o)` (`l_o`: original logits, `l_a`: the augmented model's, fine-tuned "
        f"{config.augment_epochs} epochs on the forget set); distillation with the {config.divergence} KL "
        f"`{direction}`"
    ]


RKLU = Method(
    loss="reverse KL to the logit-subtraction teacher",
    needs_reference=True,
    needs_augmented=True,
    uses_teacher=True,
    lm_loss=teacher_distillation,
    card_fields=CARD_FIELDS,
    card_lines=teacher_card_lines,
)

FKLU = Method(
    loss="forward KL to the logit-subtraction teacher",
    needs_reference=True,
    needs_augmented=True,
    default_divergence="forward",
    uses_teacher=True,
    lm_loss=teacher_distillation,
    card_fields=CARD_FIELDS,
    card_lines=teacher_card_lines,
)
