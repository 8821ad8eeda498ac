"""Hand-derived tests of the classifier-unlearning functions of ``rklu_llm.losses``: the redistributive and masked
targets, the forward KL to a target, the token-level target logits, Boundary Shrink's label and JiT's quotient."""

from __future__ import annotations

import math

import pytest
import torch

from rklu_llm.losses import (
    TOKEN_TARGET_FLOOR,
    distillation_kl,
    lipschitz_quotient,
    masked_target,
    nearest_wrong_label,
    redistributive_target,
    target_kl,
    token_target_logits,
)

P = torch.tensor([0.5, 0.3, 0.2])
LOGITS = P.log()  # softmax(log p) = p


def test_redistributive_target_worked_example():
    """p = [0.5, 0.3, 0.2], K = 3.
    y = 0: p_y / (K - 1) = 0.25 -> [0, 0.3 + 0.25, 0.2 + 0.25] = [0, 0.55, 0.45]
    y = 1: 0.3 / 2 = 0.15     -> [0.5 + 0.15, 0, 0.2 + 0.15] = [0.65, 0, 0.35]
    y = 2: 0.2 / 2 = 0.1      -> [0.6, 0.4, 0]"""
    out = redistributive_target(LOGITS.expand(3, 3), torch.tensor([0, 1, 2]))
    expected = torch.tensor([[0.0, 0.55, 0.45], [0.65, 0.0, 0.35], [0.6, 0.4, 0.0]])
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-6)


def test_masked_target_worked_example():
    """Mask then renormalise: t_k = p_k / (1 - p_y).
    y = 0: [0, 0.3 / 0.5, 0.2 / 0.5] = [0, 0.6, 0.4];  y = 2: [0.5 / 0.8, 0.3 / 0.8, 0] = [0.625, 0.375, 0]"""
    out = masked_target(LOGITS.expand(2, 3), torch.tensor([0, 2]))
    torch.testing.assert_close(out, torch.tensor([[0.0, 0.6, 0.4], [0.625, 0.375, 0.0]]), rtol=0, atol=1e-6)


def test_four_classes_keep_order_and_sum_to_one():
    """p = [0.1, 0.2, 0.3, 0.4], y = 3: redistribute adds 0.4 / 3 to each other class -> [0.2333, 0.3333, 0.4333, 0];
    mask divides by 0.6 -> [1/6, 2/6, 3/6, 0]. Both: the forget label 0, rows sum to 1, the others in the same order."""
    logits = torch.tensor([[0.1, 0.2, 0.3, 0.4]]).log()
    y = torch.tensor([3])
    red = redistributive_target(logits, y)
    msk = masked_target(logits, y)
    torch.testing.assert_close(
        red, torch.tensor([[0.1 + 0.4 / 3, 0.2 + 0.4 / 3, 0.3 + 0.4 / 3, 0.0]]), atol=1e-6, rtol=0
    )
    torch.testing.assert_close(msk, torch.tensor([[1 / 6, 2 / 6, 3 / 6, 0.0]]), atol=1e-6, rtol=0)
    for target in (red, msk):
        assert target[0, 3].item() == 0.0
        assert abs(target.sum().item() - 1.0) < 1e-6
        assert torch.equal(target[0, :3].argsort(), torch.tensor([0, 1, 2]))


@pytest.mark.parametrize("make", [redistributive_target, masked_target])
def test_targets_random_properties_and_no_gradient(make):
    torch.manual_seed(0)
    logits = torch.randn(6, 5, requires_grad=True)
    labels = torch.tensor([0, 1, 2, 3, 4, 0])
    target = make(logits, labels)
    assert not target.requires_grad and target.dtype == torch.float32
    torch.testing.assert_close(target.sum(-1), torch.ones(6))
    assert torch.all(target[torch.arange(6), labels] == 0)
    p = torch.softmax(logits.detach(), -1)
    for row in range(6):  # the other classes keep their order
        keep = [k for k in range(5) if k != labels[row]]
        assert torch.equal(target[row, keep].argsort(), p[row, keep].argsort())


@pytest.mark.parametrize("make", [redistributive_target, masked_target])
@pytest.mark.parametrize(
    "logits,labels,match",
    [
        (torch.zeros(2, 3), torch.tensor([0, 3]), "class ids in"),
        (torch.zeros(2, 3), torch.tensor([-1, 0]), "class ids in"),
        (torch.zeros(2, 1), torch.tensor([0, 0]), "K >= 2"),
        (torch.zeros(2, 3), torch.tensor([0, 1, 2]), "labels must have shape"),
    ],
)
def test_targets_reject_bad_input(make, logits, labels, match):
    with pytest.raises(ValueError, match=match):
        make(logits, labels)


def test_target_kl_worked_example_and_gradient():
    """t = [0, 0.5, 0.5], student logits 0 -> p = 1/3 each.
    KL(t || p) = 0 * ... + 2 * 0.5 * ln(0.5 / (1/3)) = ln 1.5 = 0.405465; dKL/dz = p - t = [1/3, -1/6, -1/6]."""
    z = torch.zeros(1, 3, requires_grad=True)
    loss = target_kl(z, torch.tensor([[0.0, 0.5, 0.5]]))
    assert loss.item() == pytest.approx(math.log(1.5), abs=1e-6)
    loss.backward()
    torch.testing.assert_close(z.grad, torch.tensor([[1 / 3, -1 / 6, -1 / 6]]), atol=1e-6, rtol=0)


def test_target_kl_is_a_batch_mean_and_zero_at_the_target():
    """Row 1 is the example above (ln 1.5); row 2 has the student equal to its target (KL 0): mean = ln(1.5) / 2."""
    target = torch.tensor([[0.0, 0.5, 0.5], [0.2, 0.3, 0.5]])
    student = torch.stack([torch.zeros(3), target[1].log()])
    assert target_kl(student, target).item() == pytest.approx(math.log(1.5) / 2, abs=1e-6)
    assert target_kl(torch.zeros(0, 3, requires_grad=True), torch.zeros(0, 3)).item() == 0.0


def test_token_target_logits_are_the_target_up_to_the_floor():
    """mask, p = [0.5, 0.3, 0.2], y = 0: out = [ln 1e-12, ln 0.6, ln 0.4]; its softmax is the target with 1e-12 on y."""
    out = token_target_logits(LOGITS.expand(2, 3), torch.tensor([0, 0]), "mask", chunk_size=1)
    torch.testing.assert_close(out[0], torch.tensor([math.log(TOKEN_TARGET_FLOOR), math.log(0.6), math.log(0.4)]))
    torch.testing.assert_close(torch.softmax(out, -1)[1], torch.tensor([0.0, 0.6, 0.4]), atol=1e-9, rtol=1e-6)
    red = token_target_logits(LOGITS[None], torch.tensor([1]), "redistribute")
    torch.testing.assert_close(red.exp(), torch.tensor([[0.65, TOKEN_TARGET_FLOOR, 0.35]]), rtol=1e-5, atol=0)
    with pytest.raises(ValueError, match="kind"):
        token_target_logits(LOGITS[None], torch.tensor([1]), "blur")


def test_token_targets_in_chunks_equal_one_chunk():
    torch.manual_seed(1)
    logits, labels = torch.randn(7, 11), torch.randint(0, 11, (7,))
    for kind in ("mask", "redistribute"):
        chunked = token_target_logits(logits, labels, kind, 3)
        torch.testing.assert_close(chunked, token_target_logits(logits, labels, kind))


def test_forward_distillation_to_token_targets_equals_target_kl():
    """With the target's logits as teacher, the forward distillation KL is KL(t || p_s) (the floor adds < 1e-10)."""
    torch.manual_seed(2)
    student, original, labels = torch.randn(5, 9), torch.randn(5, 9), torch.randint(0, 9, (5,))
    for kind, make in (("mask", masked_target), ("redistribute", redistributive_target)):
        teacher = token_target_logits(original, labels, kind)
        got = distillation_kl(student, teacher, direction="forward")
        assert got.item() == pytest.approx(target_kl(student, make(original, labels)).item(), abs=1e-6)


def test_nearest_wrong_label():
    """Row 0: y = 0 is the argmax, the next best is class 1. Row 1: y = 1 is the argmax of [0, 5, 4] -> 2.
    Row 2: y = 1 is not the argmax of [1, 3, 2]; the best other class is 2."""
    logits = torch.tensor([[3.0, 2.0, 1.0], [0.0, 5.0, 4.0], [1.0, 3.0, 2.0]])
    out = nearest_wrong_label(logits, torch.tensor([0, 1, 1]))
    assert out.tolist() == [1, 2, 2]


def test_lipschitz_quotient_worked_example():
    """One sample, two perturbations. 1st: outputs differ by (3, 4) (norm 5), inputs by (1, 0) (norm 1) -> 5.
    2nd: outputs differ by (0, 1) (norm 1), inputs by (0, 2) (norm 2) -> 0.5. Mean over perturbations = 2.75."""
    outputs, inputs = torch.zeros(1, 2), torch.zeros(1, 2)
    noisy_outputs = torch.tensor([[[3.0, 4.0]], [[0.0, 1.0]]])
    noisy_inputs = torch.tensor([[[1.0, 0.0]], [[0.0, 2.0]]])
    assert lipschitz_quotient(outputs, noisy_outputs, inputs, noisy_inputs).item() == pytest.approx(2.75)


def test_lipschitz_quotient_images_and_gradient():
    """Image inputs (B, C, H, W): the input norm runs over C, H, W. x' - x = 0.5 everywhere on a (1, 2, 2) image:
    ||.|| = sqrt(4 * 0.25) = 1; outputs differ by (z - 0) with z = (0, 2) -> quotient 2; gradient w.r.t. the clean
    outputs is (outputs - noisy) / (||.|| * in_norm) = (0, -2) / 2 = (0, -1)."""
    x = torch.zeros(1, 1, 2, 2)
    outputs = torch.zeros(1, 2, requires_grad=True)
    loss = lipschitz_quotient(outputs, torch.tensor([[[0.0, 2.0]]]), x, x[None] + 0.5)
    assert loss.item() == pytest.approx(2.0)
    loss.backward()
    torch.testing.assert_close(outputs.grad, torch.tensor([[0.0, -1.0]]))
    with pytest.raises(ValueError, match="noisy tensors"):
        lipschitz_quotient(torch.zeros(2, 3), torch.zeros(1, 1, 3), torch.zeros(2, 4), torch.zeros(1, 2, 4))
