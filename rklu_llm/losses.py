"""Loss functions: pure tensor code, no forward passes, no config objects.

Conventions used throughout:

* ``B`` batch, ``T`` sequence length, ``V`` vocabulary, ``N`` number of selected (answer) positions.
* Causal LM logits at position ``t`` predict token ``t + 1``; :func:`answer_positions` does the shift.
* Labels are ``-100`` wherever a token must not count (prompt, padding).
* Every loss is computed in at least float32 (bf16/fp16 logits are upcast, float64 stays float64), and an empty
  selection gives a loss of exactly ``0`` (still attached to the graph, so backward and DDP see every parameter).
* Normalisation: a loss is a mean over its items (answer tokens, or sequences for npo/dpo). With ``num_items`` it
  is instead ``sum / num_items``: the trainer passes the item count of the whole accumulated batch (all micro-batches
  of one optimizer step, all processes), so gradient accumulation and data parallelism give the gradient of one big
  batch.
* KL directions are written out in each docstring. ``torch.nn.functional.kl_div(input, target)`` computes
  ``KL(target || exp(input))``; nothing here relies on that argument order.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100


def _upcast(t: torch.Tensor) -> torch.Tensor:
    """``t`` in float32, or float64 if it already is (never a lower precision than float32)."""
    return t.to(torch.promote_types(t.dtype, torch.float32))


def _zero_like_graph(t: torch.Tensor) -> torch.Tensor:
    """A scalar 0 that still depends on ``t`` (gradient 0 everywhere)."""
    return _upcast(t).sum() * 0.0


def answer_mask(labels: torch.Tensor) -> torch.Tensor:
    """``(B, T - 1)`` boolean: position ``t`` predicts an answer token (``labels[:, t + 1]`` is not ``-100``)."""
    return labels[:, 1:] != IGNORE_INDEX


def answer_positions(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Shift for next-token prediction and keep the positions whose target is an answer token.

    Args:
        logits: ``(B, T, V)``.
        labels: ``(B, T)``, ``-100`` outside the answer.

    Returns:
        ``(logits_sel, mask)``: ``logits_sel`` is ``(N, V)``, the logits at positions ``t`` whose target
        ``labels[:, t + 1]`` is not ``-100``; ``mask`` is the ``(B, T - 1)`` boolean selection, to apply to other
        logits of the same batch (``other[:, :-1][mask]``).
    """
    mask = answer_mask(labels)
    return logits[:, :-1][mask], mask


def logit_subtraction_teacher(orig_logits: torch.Tensor, aug_logits: torch.Tensor, alpha: float) -> torch.Tensor:
    """RKL-U teacher logits: ``l_t = l_o - alpha * relu(l_a - l_o)``.

    Tokens whose logit the augmented model raised above the original are pushed down by ``alpha`` times the rise;
    every other logit is the original's.

    Args:
        orig_logits: ``(..., V)`` logits of the frozen original model ``o``.
        aug_logits: ``(..., V)`` logits of the augmented model ``a`` (same shape).
        alpha: subtraction strength, ``>= 0``.

    Returns:
        ``(..., V)`` teacher logits in float32 (float64 for float64 inputs).
    """
    if alpha < 0:
        raise ValueError(f"alpha must be >= 0, got {alpha}")
    orig = _upcast(orig_logits)
    return orig - alpha * torch.relu(_upcast(aug_logits) - orig)


def reverse_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Token-level reverse KL, ``KL(p_s || p_t) = sum_v p_s(v) * (log p_s(v) - log p_t(v))``, averaged over ``mask``.

    Mode-seeking: the student is penalised for putting mass where the teacher has little.

    Args:
        student_logits: ``(..., V)``.
        teacher_logits: ``(..., V)``, treated as a constant target (detach it yourself if it has a graph).
        mask: ``(...)`` boolean, the positions to average over.

    Returns:
        Scalar float32: mean KL over the selected positions, ``0`` if none is selected.
    """
    if not mask.any():
        return _zero_like_graph(student_logits)
    log_p_s = F.log_softmax(_upcast(student_logits[mask]), dim=-1)
    log_p_t = F.log_softmax(_upcast(teacher_logits[mask]), dim=-1)
    return (log_p_s.exp() * (log_p_s - log_p_t)).sum(-1).mean()


def forward_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Token-level forward KL, ``KL(p_t || p_s) = sum_v p_t(v) * (log p_t(v) - log p_s(v))``, averaged over ``mask``.

    Mass-covering: the student is penalised for putting little mass where the teacher has much.
    Shapes and return value as in :func:`reverse_kl`.
    """
    if not mask.any():
        return _zero_like_graph(student_logits)
    log_p_s = F.log_softmax(_upcast(student_logits[mask]), dim=-1)
    log_p_t = F.log_softmax(_upcast(teacher_logits[mask]), dim=-1)
    return (log_p_t.exp() * (log_p_t - log_p_s)).sum(-1).mean()


class _ChunkedDistillationKL(torch.autograd.Function):
    """Forward computes the summed KL chunk by chunk, divided by ``num_items``, and stores only its gradient w.r.t.
    the student logits.

    Gradients (``p = softmax(z)`` the student, ``q`` the teacher, ``d = log p - log q``):
    reverse ``KL(p || q)``: ``dKL/dz_k = p_k * (d_k - KL)``; forward ``KL(q || p)``: ``dKL/dz_k = p_k - q_k``.
    """

    @staticmethod
    def forward(ctx, student, original, augmented, alpha, reverse, chunk_size, num_items):
        n = student.shape[0]
        grad = torch.empty_like(student)
        total = torch.zeros((), dtype=torch.promote_types(student.dtype, torch.float32), device=student.device)
        for start in range(0, n, chunk_size):
            stop = min(start + chunk_size, n)
            teacher = _upcast(original[start:stop])
            if augmented is not None:
                teacher = logit_subtraction_teacher(teacher, augmented[start:stop], alpha)
            log_p = F.log_softmax(_upcast(student[start:stop]), dim=-1)
            log_q = F.log_softmax(teacher, dim=-1)
            p = log_p.exp()
            if reverse:
                diff = log_p - log_q
                kl = (p * diff).sum(-1)
                chunk_grad = p * (diff - kl.unsqueeze(-1))
            else:
                q = log_q.exp()
                kl = (q * (log_q - log_p)).sum(-1)
                chunk_grad = p - q
            total += kl.sum()
            grad[start:stop] = chunk_grad.to(grad.dtype)
        ctx.save_for_backward(grad)
        ctx.n = num_items
        return total / num_items

    @staticmethod
    def backward(ctx, grad_output):
        (grad,) = ctx.saved_tensors
        scale = (grad_output / ctx.n).to(grad.dtype)
        return grad * scale, None, None, None, None, None, None


def distillation_kl(
    student_logits: torch.Tensor,
    original_logits: torch.Tensor,
    augmented_logits: torch.Tensor | None = None,
    alpha: float = 0.0,
    direction: str = "reverse",
    chunk_size: int = 1024,
    num_items: float | torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean token-level KL between the student and a teacher built on the fly, computed in position chunks.

    The teacher is ``logit_subtraction_teacher(original, augmented, alpha)`` when ``augmented_logits`` is given and
    ``original_logits`` itself otherwise. The value and gradient equal
    ``reverse_kl(student, teacher, all_true)`` (``direction="reverse"``, ``KL(p_s || p_t)``) or
    ``forward_kl(...)`` (``direction="forward"``, ``KL(p_t || p_s)``), but no float32 ``(N, V)`` tensor outlives a
    chunk: the forward pass keeps only the gradient, in the student logits' dtype.

    Args:
        student_logits: ``(N, V)`` student logits at the selected positions (requires grad).
        original_logits: ``(N, V)`` frozen original logits at the same positions.
        augmented_logits: ``(N, V)`` frozen augmented-model logits, or ``None``.
        alpha: teacher subtraction strength (ignored without ``augmented_logits``).
        direction: ``"reverse"`` or ``"forward"``.
        chunk_size: positions per chunk.
        num_items: divide the summed KL by this instead of ``N`` (the accumulated batch's answer-token count).

    Returns:
        Scalar float32, ``0`` for ``N == 0``.
    """
    if direction not in ("reverse", "forward"):
        raise ValueError(f"direction must be 'reverse' or 'forward', got {direction!r}")
    if alpha < 0:
        raise ValueError(f"alpha must be >= 0, got {alpha}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    if student_logits.shape[0] == 0:
        return _zero_like_graph(student_logits)
    original_logits = original_logits.detach()
    if augmented_logits is not None:
        augmented_logits = augmented_logits.detach()
    return _ChunkedDistillationKL.apply(
        student_logits,
        original_logits,
        augmented_logits,
        float(alpha),
        direction == "reverse",
        int(chunk_size),
        float(student_logits.shape[0] if num_items is None else num_items),
    )


def _answer_token_log_probs(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``log p(y_t | y_<t)`` of every answer token, ``(N,)`` float32, and the ``(B, T - 1)`` answer mask.

    Only the ``N`` answer rows of the logits are upcast: never the whole ``(B, T, V)`` tensor (prompt and padding
    positions make up most of it).
    """
    selected, mask = answer_positions(logits, labels)
    targets = labels[:, 1:][mask]
    return -F.cross_entropy(_upcast(selected), targets, reduction="none"), mask


def token_nll(
    logits: torch.Tensor, labels: torch.Tensor, num_items: float | torch.Tensor | None = None
) -> torch.Tensor:
    """Mean negative log-likelihood of the answer tokens, ``-mean_t log p(y_t | y_<t)``.

    Args:
        logits: ``(B, T, V)``; position ``t`` predicts ``labels[:, t + 1]``.
        labels: ``(B, T)``, ``-100`` where a token does not count.
        num_items: divide the summed NLL by this instead of the number of answer tokens.

    Returns:
        Scalar float32, ``0`` when no token counts.
    """
    if not answer_mask(labels).any():
        return _zero_like_graph(logits)
    log_probs, _ = _answer_token_log_probs(logits, labels)
    return -log_probs.sum() / (log_probs.numel() if num_items is None else num_items)


def sequence_log_likelihood(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-sequence answer log-likelihood, ``log p(y | x) = sum_t log p(y_t | x, y_<t)`` over answer tokens.

    Args:
        logits: ``(B, T, V)``.
        labels: ``(B, T)``, ``-100`` where a token does not count.

    Returns:
        ``(B,)`` float32 (``0`` for a row without answer tokens).
    """
    log_probs, mask = _answer_token_log_probs(logits, labels)
    rows = mask.nonzero()[:, 0]
    return torch.zeros(labels.shape[0], dtype=log_probs.dtype, device=log_probs.device).index_add(0, rows, log_probs)


def npo_loss(
    logp_theta: torch.Tensor, logp_ref: torch.Tensor, beta: float, num_items: float | torch.Tensor | None = None
) -> torch.Tensor:
    """Negative preference optimisation: ``-(2 / beta) * mean log sigmoid(-beta * (logp_theta - logp_ref))``.

    Args:
        logp_theta: ``(B,)`` sequence log-likelihoods of the forget answers under the student.
        logp_ref: ``(B,)`` the same under the frozen reference (original model).
        beta: inverse temperature, ``> 0``.
        num_items: divide the sum over sequences by this instead of ``B`` (the accumulated batch's sequences).

    Returns:
        Scalar float32. At ``logp_theta == logp_ref`` it is ``(2 / beta) * log 2``; it falls towards 0 as the student
        lowers the forget likelihood below the reference's.
    """
    if beta <= 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    log_ratio = _upcast(logp_theta) - _upcast(logp_ref)
    terms = F.logsigmoid(-beta * log_ratio)
    return -(2.0 / beta) * terms.sum() / (terms.numel() if num_items is None else num_items)


def dpo_loss(
    logp_theta_chosen: torch.Tensor,
    logp_ref_chosen: torch.Tensor,
    logp_theta_rejected: torch.Tensor,
    logp_ref_rejected: torch.Tensor,
    beta: float,
    num_items: float | torch.Tensor | None = None,
) -> torch.Tensor:
    """Direct preference optimisation, sigmoid form:
    ``-mean log sigmoid(beta * ((logp_theta_w - logp_ref_w) - (logp_theta_l - logp_ref_l)))``.

    For unlearning the chosen answer ``w`` is a refusal and the rejected answer ``l`` is the forget answer.

    Why not TRL's DPO: `trl.DPOTrainer` is a whole trainer (its own dataset format, collator, reference handling and
    loss as methods of that trainer); our batches pair each forget item with a refusal *and* a retain item, and the
    retain term and frozen-model sharing live in `UnlearnTrainer`. The sigmoid DPO loss itself is the four-term
    expression below, so it is written here rather than reached through a trainer instance.

    Args:
        logp_theta_chosen, logp_ref_chosen, logp_theta_rejected, logp_ref_rejected: ``(B,)`` sequence
            log-likelihoods (student / frozen reference, chosen / rejected).
        beta: inverse temperature, ``> 0``.
        num_items: divide the sum over pairs by this instead of ``B`` (the accumulated batch's pairs).

    Returns:
        Scalar float32; ``log 2`` when the student equals the reference.
    """
    if beta <= 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    margin = (_upcast(logp_theta_chosen) - _upcast(logp_ref_chosen)) - (
        _upcast(logp_theta_rejected) - _upcast(logp_ref_rejected)
    )
    terms = F.logsigmoid(beta * margin)
    return -terms.sum() / (terms.numel() if num_items is None else num_items)


# --------------------------------------------------------------------------------------------------------------------
# Classifier unlearning (redistributive KL, DELETE masked distillation, baselines) and its token-level version
# --------------------------------------------------------------------------------------------------------------------


def _check_class_targets(logits: torch.Tensor, labels: torch.Tensor) -> None:
    if logits.dim() < 1 or logits.shape[-1] < 2:
        raise ValueError(f"logits must be (..., K) with K >= 2 classes, got shape {tuple(logits.shape)}")
    if labels.shape != logits.shape[:-1]:
        raise ValueError(
            f"labels must have shape {tuple(logits.shape[:-1])} (logits without K), got {tuple(labels.shape)}"
        )
    if labels.numel() and (labels.min() < 0 or labels.max() >= logits.shape[-1]):
        raise ValueError(
            f"labels must be class ids in [0, {logits.shape[-1]}), got values in "
            f"[{labels.min().item()}, {labels.max().item()}]"
        )


def redistributive_target(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Redistributive target: the forget label's probability spread evenly over the other ``K - 1`` classes.

    With ``p = softmax(logits)`` and ``y = labels``: ``t_y = 0`` and ``t_k = p_k + p_y / (K - 1)`` for ``k != y``.
    Rows sum to 1 and the order of the other classes is kept (each gains the same amount).

    Args:
        logits: ``(..., K)`` logits of the frozen original model (a classifier's ``(B, K)``, or an LM's ``(N, V)`` at
            answer positions).
        labels: ``(...)`` the class (token) to forget at each row.

    Returns:
        ``(..., K)`` probabilities in float32 (float64 for float64 logits), no gradient to ``logits``.
    """
    _check_class_targets(logits, labels)
    with torch.no_grad():
        p = torch.softmax(_upcast(logits), dim=-1)
        index = labels.unsqueeze(-1)
        p_forget = p.gather(-1, index)
        return (p + p_forget / (p.shape[-1] - 1)).scatter(-1, index, 0.0)


def masked_target(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Masked target (DELETE): the softmax of the logits with the forget label's logit set to ``-inf``.

    ``t_y = 0`` and ``t_k = p_k / (1 - p_y)`` for ``k != y``: the other classes keep their ratios ("dark knowledge").
    Shapes and dtype as in :func:`redistributive_target`.
    """
    _check_class_targets(logits, labels)
    with torch.no_grad():
        masked = _upcast(logits).scatter(-1, labels.unsqueeze(-1), float("-inf"))
        return torch.softmax(masked, dim=-1)


def target_kl(student_logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Forward KL to a fixed target distribution, ``KL(t || p_s) = sum_k t_k (log t_k - log p_s,k)``, batch mean.

    Terms with ``t_k = 0`` count 0 (``0 log 0 = 0``), so targets with an exact zero (the forget class) are fine.

    Args:
        student_logits: ``(B, K)``.
        target: ``(B, K)`` probabilities (rows summing to 1), a constant.

    Returns:
        Scalar float32; 0 for an empty batch.
    """
    if student_logits.shape[0] == 0:
        return _zero_like_graph(student_logits)
    log_p = F.log_softmax(_upcast(student_logits), dim=-1)
    target = target.detach().to(log_p.dtype)
    return (torch.xlogy(target, target) - target * log_p).sum(-1).mean()


#: probability given to the forget token when a token-level target becomes logits (``log 0`` would be ``-inf``)
TOKEN_TARGET_FLOOR = 1e-12


def token_target_logits(
    original_logits: torch.Tensor, labels: torch.Tensor, kind: str, chunk_size: int = 1024
) -> torch.Tensor:
    """Per answer token, the redistributed or masked target of the original model, as log-probabilities.

    Row ``n`` is ``log max(t_n, TOKEN_TARGET_FLOOR)`` with ``t_n = redistributive_target`` (``kind="redistribute"``)
    or ``masked_target`` (``kind="mask"``) of ``original_logits[n]`` for the label token ``labels[n]``: a teacher for
    :func:`distillation_kl` (its softmax is ``t_n`` up to the floor, ``1e-12`` on the forget token, which keeps the
    reverse KL finite). Computed in chunks of rows; no gradient.

    Args:
        original_logits: ``(N, V)`` frozen original logits at answer positions.
        labels: ``(N,)`` the answer token each position predicts.
        kind: ``"redistribute"`` or ``"mask"``.
        chunk_size: rows per chunk (bounds the float32 temporaries).

    Returns:
        ``(N, V)`` in ``original_logits``' dtype.
    """
    targets = {"redistribute": redistributive_target, "mask": masked_target}
    if kind not in targets:
        raise ValueError(f"kind must be 'redistribute' or 'mask', got {kind!r}")
    _check_class_targets(original_logits, labels)
    out = torch.empty_like(original_logits)
    for start in range(0, original_logits.shape[0], chunk_size):
        stop = start + chunk_size
        target = targets[kind](original_logits[start:stop], labels[start:stop])
        out[start:stop] = target.clamp_min(TOKEN_TARGET_FLOOR).log().to(out.dtype)
    return out


def nearest_wrong_label(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The highest-scoring class other than the true one, ``argmax_{k != y} logits_k`` (Boundary Shrink's label).

    Args:
        logits: ``(B, K)`` (the frozen original's, on the FGSM-perturbed inputs).
        labels: ``(B,)`` true classes.

    Returns:
        ``(B,)`` int64.
    """
    _check_class_targets(logits, labels)
    return logits.detach().scatter(-1, labels.unsqueeze(-1), float("-inf")).argmax(-1)


def lipschitz_quotient(
    outputs: torch.Tensor, noisy_outputs: torch.Tensor, inputs: torch.Tensor, noisy_inputs: torch.Tensor
) -> torch.Tensor:
    """JiT's smoothness loss: the mean empirical Lipschitz quotient ``||f(x) - f(x')||_2 / ||x - x'||_2``.

    Foster et al., "Zero-Shot Machine Unlearning at Scale via Lipschitz Regularization" (arXiv:2402.01401; the JiT
    baseline of the redistributive-KL paper): minimised over forget samples ``x`` and ``S`` Gaussian perturbations
    ``x' = x + eps``, it flattens the model around the forget samples. Norms are over all non-batch dimensions;
    the mean is over perturbations and samples (the reference code sums over a batch; a mean keeps the scale
    independent of the batch size).

    Args:
        outputs: ``(B, K)`` model outputs (logits) on ``x``.
        noisy_outputs: ``(S, B, K)`` outputs on the ``S`` perturbed copies.
        inputs: ``(B, ...)`` the inputs ``x``.
        noisy_inputs: ``(S, B, ...)`` the perturbed inputs.

    Returns:
        Scalar float32.
    """
    if noisy_outputs.shape[1:] != outputs.shape or noisy_inputs.shape[1:] != inputs.shape:
        raise ValueError(
            f"noisy tensors must be (S, *x.shape): outputs {tuple(outputs.shape)} vs "
            f"{tuple(noisy_outputs.shape)}, inputs {tuple(inputs.shape)} vs {tuple(noisy_inputs.shape)}"
        )
    out_norm = torch.linalg.vector_norm((_upcast(outputs) - _upcast(noisy_outputs)).flatten(2), dim=-1)
    in_norm = torch.linalg.vector_norm((_upcast(inputs) - _upcast(noisy_inputs)).flatten(2), dim=-1)
    return (out_norm / in_norm).mean()
