"""Classifier baselines that need no retain data: random label, Boundary Shrink, JiT."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..classifiers import classifier_logits, model_inputs
from ..losses import lipschitz_quotient, nearest_wrong_label
from .entry import Method


def continuous_input(model, batch: dict, unwrap) -> tuple[str, torch.Tensor, dict]:
    """``(key, x, other_inputs)``: the input to perturb. Images: ``pixel_values``; token ids: their embeddings under
    ``model``, passed back as ``inputs_embeds``."""
    inputs = model_inputs(batch)
    if "input_ids" in inputs:
        ids = inputs.pop("input_ids")
        return "inputs_embeds", unwrap(model).get_input_embeddings()(ids), inputs
    key = "pixel_values" if "pixel_values" in inputs else next(iter(inputs))
    return key, inputs.pop(key), inputs


def random_label(frozen, student, forget: dict, step) -> tuple:
    """CE of the student's ``(B, K)`` logits to a fixed random wrong label per sample (drawn by the dataset)."""
    logits = classifier_logits(student, forget)
    return logits, F.cross_entropy(logits.float(), forget["random_labels"])


def boundary_shrink(frozen, student, forget: dict, step) -> tuple:
    """Boundary Shrink (Chen et al., CVPR 2023): one FGSM step on the frozen original,
    ``x' = x + eps * sign(grad_x CE(f_o(x), y))``, and CE to the original's highest class other than ``y`` on ``x'``."""
    original, labels = frozen.original, forget["labels"]
    key, x, rest = continuous_input(original, forget, step.unwrap)
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        loss = F.cross_entropy(classifier_logits(original, {key: x, **rest}).float(), labels)
        (grad,) = torch.autograd.grad(loss, x)
    with torch.no_grad():
        adversarial = x + step.config.boundary_shrink_eps * grad.sign()
        targets = nearest_wrong_label(classifier_logits(original, {key: adversarial, **rest}), labels)
    logits = classifier_logits(student, forget)
    return logits, F.cross_entropy(logits.float(), targets)


def jit(frozen, student, forget: dict, step) -> tuple:
    """JiT (Foster et al. 2024, arXiv:2402.01401): ``mean ||f(x) - f(x + e)||_2 / ||e||_2`` over ``jit_samples``
    draws ``e ~ N(0, jit_noise_std^2 I)`` per forget sample; the perturbed outputs carry no gradient, as in the
    reference code. The noise is seeded by (seed, step), so a resumed run draws the same noise."""
    config = step.config
    key, x, rest = continuous_input(student, forget, step.unwrap)
    logits = classifier_logits(student, {key: x, **rest})
    samples = config.jit_samples
    generator = torch.Generator(device=x.device).manual_seed(config.seed * 1_000_003 + step.global_step)
    noise = torch.randn((samples, *x.shape), generator=generator, device=x.device, dtype=x.dtype)
    noisy_x = x.detach() + config.jit_noise_std * noise
    repeated = {k: v.repeat(samples, *([1] * (v.dim() - 1))) for k, v in rest.items()}
    with torch.no_grad():
        noisy = classifier_logits(student, {key: noisy_x.flatten(0, 1), **repeated}).view(samples, *logits.shape)
    return logits, lipschitz_quotient(logits, noisy, x.detach(), noisy_x)


RANDOM_LABEL = Method(
    loss="CE to a fixed random wrong label",
    batch="classifier",
    classifier_loss=random_label,
)

BOUNDARY_SHRINK = Method(
    loss="CE to the original's nearest wrong label after an FGSM step (Boundary Shrink)",
    needs_reference=True,
    batch="classifier",
    classifier_loss=boundary_shrink,
    perturbs_inputs=True,
    card_fields=("boundary_shrink_eps",),
)

JIT = Method(
    loss="Lipschitz quotient of the outputs under input noise (JiT, zero-shot)",
    batch="classifier",
    classifier_loss=jit,
    perturbs_inputs=True,
    card_fields=("jit_noise_std", "jit_samples"),
)
