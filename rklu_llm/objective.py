"""The loss of one micro-batch: ``L = forget_weight * L_forget + retain_weight * L_retain``, for both kinds of batch.

``L_forget`` is the method entry's loss (:mod:`rklu_llm.methods`: ``lm_loss`` on causal-LM batches, ``classifier_loss``
on classifier batches); ``L_retain`` is the optional retain term every method shares (``retain_mode``: ``rt`` = NLL /
cross-entropy, ``kl`` = forward ``KL(p_original || p_student)``). Each term is divided by its items in the whole
accumulated batch (:mod:`rklu_llm.item_counts`), its values are logged per item, and a non-finite loss stops the run
here, before backward (:class:`rklu_llm.run_state.TrainingDiverged`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .classifiers import classifier_logits
from .frozen import FrozenModels
from .item_counts import Counts, LoggedMetrics, count, normaliser
from .losses import answer_positions, distillation_kl, target_kl, token_nll
from .methods import Step
from .run_state import divergence_hint, stop_if_non_finite


def lm_objective(
    frozen: FrozenModels, model, inputs: dict, counts: Counts | None, metrics: LoggedMetrics, step: Step
) -> torch.Tensor:
    """The loss of a causal-LM micro-batch (``inputs``: ``forget``, and ``retain`` / ``refusal`` when present).

    The forget term's items are the entry's ``counts`` (forget answer tokens; refusal answer tokens for idk; forget
    sequences for the sequence-level npo and dpo); the retain term's (rt, kl) are the retain answer tokens. ``step``
    is the step's :class:`~rklu_llm.methods.Step` (its ``num_items`` is filled in here).
    """
    args = step.config
    spec = args.spec
    if spec.lm_loss is None:
        raise ValueError(f"{args.method} has no training step (it is a weight edit: call train()).")
    group, kind = spec.counts
    num_items = normaliser(counts, group, kind, inputs[group])
    forget_loss, logits = spec.lm_loss(frozen, model, inputs, step._replace(num_items=num_items))
    loss = args.forget_weight * forget_loss
    parts = {"forget term": forget_loss}
    metrics.record("forget/loss", forget_loss * num_items, count(inputs[group], kind))
    if logits is not None:  # summed NLL (num_items=1) over this micro-batch's answer tokens
        forget = inputs["forget"]
        metrics.record("forget/nll", token_nll(logits.detach(), forget["labels"], 1.0), count(forget, "tokens"))
    if args.retain_mode != "none":
        retain_loss = lm_retain_term(frozen, model, inputs["retain"], counts, metrics, args)
        loss = loss + args.retain_weight * retain_loss
        parts["retain term"] = retain_loss
    stop_if_non_finite(loss, step.global_step + 1, divergence_hint(args), parts)
    return loss


def lm_retain_term(
    frozen: FrozenModels, model, retain: dict, counts: Counts | None, metrics: LoggedMetrics, args
) -> torch.Tensor:
    """The retain term on the retain answer tokens: ``rt`` = NLL, ``kl`` = forward ``KL(p_original || p_student)``;
    a sum over the tokens divided by their number in the accumulated batch."""
    retain_tokens = normaliser(counts, "retain", "tokens", retain)
    retain_logits = model(input_ids=retain["input_ids"], attention_mask=retain["attention_mask"]).logits
    if args.retain_mode == "rt":
        retain_loss = token_nll(retain_logits, retain["labels"], retain_tokens)
    else:  # "kl": forward KL(p_original || p_student) on the retain answers
        student, mask = answer_positions(retain_logits, retain["labels"])
        original = frozen.answer_logits("original", model, retain, mask)
        retain_loss = distillation_kl(
            student, original, direction="forward", chunk_size=args.kl_chunk_size, num_items=retain_tokens
        )
        metrics.record("retain/nll", token_nll(retain_logits.detach(), retain["labels"], 1.0), count(retain, "tokens"))
    metrics.record("retain/loss", retain_loss * retain_tokens, count(retain, "tokens"))
    return retain_loss


def classifier_objective(
    frozen: FrozenModels, model, inputs: dict, counts: Counts | None, metrics: LoggedMetrics, step: Step
) -> torch.Tensor:
    """The loss of a classifier micro-batch, ``L_forget`` the entry's ``classifier_loss``. The references that use
    retain data (``Method.uses_retain_data``: finetune, retrain) train with CE on the retain set only.

    Every term is a mean over the samples of the whole accumulated batch (this micro-batch's mean times its share of
    the samples, ``counts`` from :func:`~rklu_llm.item_counts.count_items`), as for the LM methods.
    """
    args = step.config
    spec = args.spec

    def share(group: str, batch: dict) -> torch.Tensor:  # this micro-batch's samples / the accumulated samples
        return count(batch, "sequences") / normaliser(counts, group, "sequences", batch)

    if spec.uses_retain_data:
        retain = inputs["retain"]
        loss = F.cross_entropy(classifier_logits(model, retain).float(), retain["labels"])
        metrics.record("retain/loss", loss * count(retain, "sequences"), count(retain, "sequences"))
        stop_if_non_finite(loss, step.global_step + 1, divergence_hint(args), {"retain term": loss})
        return loss * share("retain", retain)
    if spec.classifier_loss is None:
        raise ValueError(f"{args.method} does not unlearn classifiers.")
    forget = inputs["forget"]
    n_forget = count(forget, "sequences")
    logits, forget_loss = spec.classifier_loss(frozen, model, forget, step._replace(num_items=n_forget))
    metrics.record("forget/loss", forget_loss * n_forget, n_forget)
    metrics.record("forget/accuracy", (logits.detach().argmax(-1) == forget["labels"]).float().sum(), n_forget)
    parts = {"forget term": forget_loss}
    loss = args.forget_weight * forget_loss * share("forget", forget)
    if args.retain_mode != "none":
        retain = inputs["retain"]
        retain_logits = classifier_logits(model, retain)
        if args.retain_mode == "rt":
            retain_loss = F.cross_entropy(retain_logits.float(), retain["labels"])
        else:  # "kl": forward KL(p_original || p_student) on the retain samples
            retain_loss = target_kl(retain_logits, torch.softmax(frozen.class_logits(retain).float(), -1))
        loss = loss + args.retain_weight * retain_loss * share("retain", retain)
        parts["retain term"] = retain_loss
        n_retain = count(retain, "sequences")
        metrics.record("retain/loss", retain_loss * n_retain, n_retain)
    stop_if_non_finite(loss, step.global_step + 1, divergence_hint(args), parts)
    return loss
