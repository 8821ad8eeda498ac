"""`Method`: one entry of the :data:`~rklu_llm.methods.METHODS` table, everything the toolkit knows about a method.

The trainer, the config, the model card, the run record and the recipes read a method only through its entry: what it
needs (frozen models, refusals, retain data), the batches it accepts, the settings its card shows, how its forget
term is counted, and its loss, a function of (frozen models, student, batch) that calls :mod:`rklu_llm.losses`.

A loss function of a causal-LM method::

    lm_loss(frozen, student, inputs, step) -> (forget_loss, forget_logits_or_None)

``inputs`` is the nested batch (``forget``, and ``retain`` / ``refusal`` when present), ``frozen`` a
:class:`rklu_llm.frozen.FrozenModels` (``frozen.logits("original" | "augmented", student, batch)``, ``(B, T, V)``),
``step`` a :class:`Step`; the forget term is a sum over the items ``counts`` names, divided by ``step.num_items``
(their number in the whole accumulated batch). The logits are the student's on ``inputs["forget"]`` (logged as the
forget NLL), or ``None`` when the method never runs the student on the forget answers.

A loss function of a classifier method::

    classifier_loss(frozen, student, forget, step) -> (logits, forget_loss)

``forget`` is the forget micro-batch (inputs, ``labels``), ``logits`` the student's ``(B, K)`` on it and
``forget_loss`` a mean over its samples (the trainer scales it by the micro-batch's share of the accumulated batch).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import torch


class Step(NamedTuple):
    """What a loss function reads besides the frozen models, the student and the batch."""

    config: Any  #: the run's :class:`~rklu_llm.UnlearnConfig`
    num_items: torch.Tensor | float  #: divisor of the forget term: its items in the whole accumulated batch
    global_step: int  #: optimizer steps done (seeds per-step noise, so that a resumed run draws the same)
    unwrap: Callable  #: the model under the accelerator's wrappers (``accelerator.unwrap_model``)


def no_card_lines(config) -> list[str]:
    return []


def no_check(config) -> None:
    return None


class Method(NamedTuple):
    """One method: its requirements as named fields, its loss functions, its card.

    Every field but ``loss`` has the default of a method that needs nothing and trains on causal-LM batches, so an
    entry names what sets it apart.
    """

    loss: str  #: the forget-side loss in words, for the README, ``rklu-llm methods`` and model cards
    needs_reference: bool = False  #: a frozen copy of the original model
    needs_augmented: bool = False  #: the model fine-tuned on the forget set (phase 1 of RKL-U)
    needs_refusals: bool = False  #: refusal answers paired with the forget questions
    trains: bool = True  #: False: a weight edit (``edit``), no optimisation loop
    default_retain_mode: str = "none"  #: the retain term when ``retain_mode`` is not given: "none", "rt" or "kl"
    #: the batches it trains on: "lm" (QA token sequences), "classifier" (inputs + class), "both"
    batch: str = "lm"
    #: a REFERENCE that trains on the retain set itself (classifiers), not a retain-free method
    uses_retain_data: bool = False
    #: the KL direction when ``divergence`` is not given ("reverse" or "forward"); classifier methods: "forward"
    default_divergence: str = "reverse"
    #: distils towards the logit-subtraction teacher ``l_o - alpha * relu(l_a - l_o)``: the teacher check runs
    #: before training and a diverged run points at ``teacher_alpha``
    uses_teacher: bool = False
    #: the forget term's items: (batch group, "tokens" | "sequences"); its divisor and its logged count
    counts: tuple[str, str] = ("forget", "tokens")
    #: the causal-LM loss (see the module docstring); None: the method does not train causal LMs
    lm_loss: Callable | None = None
    #: the classifier loss (see the module docstring); None: the method does not train classifiers
    classifier_loss: Callable | None = None
    #: a weight edit instead of training: ``edit(student, augmented_dir, config) -> metrics``
    edit: Callable | None = None
    #: classifier methods that perturb the inputs (token ids: their embeddings, so a transformers model is needed)
    perturbs_inputs: bool = False
    #: re-initialise the classifier's weights before training (the retrain-from-scratch oracle)
    reinitialize: bool = False
    #: the retain term is part of the method: ``retain_mode`` must stay ``default_retain_mode``
    retain_mode_fixed: bool = False
    #: text unlearning (the copyright recipe): the chunk's prefix is a prompt, its labels -100
    masks_text_prefix: bool = False
    #: UnlearnConfig fields its model card shows besides the common ones
    card_fields: tuple[str, ...] = ()
    #: the card's lines about the method itself, after "Method:": ``card_lines(config) -> [str]``
    card_lines: Callable = no_card_lines
    #: checks of a config for this method beyond the fields above: raises ValueError with the fix
    check: Callable = no_check


def student_logits(student, batch: dict) -> torch.Tensor:
    """``(B, T, V)`` logits of the causal LM ``student`` on a QA batch (with gradients)."""
    return student(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
