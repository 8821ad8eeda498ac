"""Hand-derived tests of ``rklu_llm.losses`` (torchtune style: each docstring shows the arithmetic).

Notation: ``p`` the student distribution, ``q`` the teacher distribution, ``ln`` the natural log.
"""

from __future__ import annotations

import math

import pytest
import torch

from rklu_llm.losses import (
    IGNORE_INDEX,
    answer_positions,
    distillation_kl,
    dpo_loss,
    forward_kl,
    logit_subtraction_teacher,
    npo_loss,
    reverse_kl,
    sequence_log_likelihood,
    token_nll,
)

LN2 = math.log(2.0)


def _all(n: int) -> torch.Tensor:
    return torch.ones(n, dtype=torch.bool)


# --------------------------------------------------------------------------------------------------------------------
# logit_subtraction_teacher
# --------------------------------------------------------------------------------------------------------------------


def test_teacher_worked_example():
    """orig = [1, 2, 3], aug = [2, 1, 3], alpha = 2.

    relu(aug - orig) = relu([1, -1, 0]) = [1, 0, 0]
    teacher = orig - 2 * [1, 0, 0] = [1 - 2, 2, 3] = [-1, 2, 3]
    Only the token the augmentation raised is pushed down; a lowered or unchanged logit stays as in orig.
    """
    orig = torch.tensor([1.0, 2.0, 3.0])
    aug = torch.tensor([2.0, 1.0, 3.0])
    out = logit_subtraction_teacher(orig, aug, 2.0)
    torch.testing.assert_close(out, torch.tensor([-1.0, 2.0, 3.0]), rtol=0, atol=0)


def test_teacher_batched_shape_and_second_example():
    """(2, 3) input, alpha = 0.5; row 1: orig [0, 0, 0], aug [4, -4, 2] -> relu = [4, 0, 2] -> [-2, 0, -1]."""
    orig = torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]])
    aug = torch.tensor([[2.0, 1.0, 3.0], [4.0, -4.0, 2.0]])
    out = logit_subtraction_teacher(orig, aug, 0.5)
    expected = torch.tensor([[0.5, 2.0, 3.0], [-2.0, 0.0, -1.0]])
    torch.testing.assert_close(out, expected, rtol=0, atol=0)


def test_teacher_alpha_zero_is_original():
    """alpha = 0: teacher = orig - 0 * relu(...) = orig, whatever aug is."""
    torch.manual_seed(0)
    orig, aug = torch.randn(4, 9), torch.randn(4, 9) * 5
    torch.testing.assert_close(logit_subtraction_teacher(orig, aug, 0.0), orig, rtol=0, atol=0)


def test_teacher_negative_alpha_raises():
    with pytest.raises(ValueError, match="alpha"):
        logit_subtraction_teacher(torch.zeros(3), torch.zeros(3), -0.1)


def test_teacher_bf16_inputs_give_float32():
    """bf16 in, float32 out; values exactly representable so the example stays exact: [-1, 2, 3]."""
    orig = torch.tensor([1.0, 2.0, 3.0], dtype=torch.bfloat16)
    aug = torch.tensor([2.0, 1.0, 3.0], dtype=torch.bfloat16)
    out = logit_subtraction_teacher(orig, aug, 2.0)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, torch.tensor([-1.0, 2.0, 3.0]), rtol=0, atol=0)


# --------------------------------------------------------------------------------------------------------------------
# reverse_kl / forward_kl
# --------------------------------------------------------------------------------------------------------------------

# Student logits [0, 0]   -> p = [1/2, 1/2].
# Teacher logits [ln 3, 0] -> q = [3/4, 1/4].
_S2 = torch.tensor([[0.0, 0.0]])
_T2 = torch.tensor([[math.log(3.0), 0.0]])
# reverse KL(p || q) = 1/2 ln((1/2)/(3/4)) + 1/2 ln((1/2)/(1/4)) = 1/2 ln(2/3) + 1/2 ln 2 = 1/2 ln(4/3)
RKL_HAND = 0.5 * math.log(4.0 / 3.0)  # 0.143841...
# forward KL(q || p) = 3/4 ln((3/4)/(1/2)) + 1/4 ln((1/4)/(1/2)) = 3/4 ln(3/2) - 1/4 ln 2
FKL_HAND = 0.75 * math.log(1.5) - 0.25 * LN2  # 0.130812...


def test_kl_identical_logits_is_zero():
    """p == q -> every log-ratio is 0 -> both KLs are 0."""
    torch.manual_seed(0)
    x = torch.randn(2, 5, 17)
    mask = torch.ones(2, 5, dtype=torch.bool)
    assert reverse_kl(x, x.clone(), mask).item() == pytest.approx(0.0, abs=1e-6)
    assert forward_kl(x, x.clone(), mask).item() == pytest.approx(0.0, abs=1e-6)


def test_reverse_kl_hand_example():
    """p = [1/2, 1/2], q = [3/4, 1/4]:
    KL(p || q) = 0.5 * ln(0.5 / 0.75) + 0.5 * ln(0.5 / 0.25)
               = 0.5 * (-0.405465) + 0.5 * 0.693147 = 0.143841 (= 0.5 * ln(4/3)).
    """
    out = reverse_kl(_S2, _T2, _all(1))
    assert out.item() == pytest.approx(RKL_HAND, abs=1e-6)
    assert out.item() == pytest.approx(0.143841, abs=1e-6)


def test_forward_kl_hand_example():
    """p = [1/2, 1/2], q = [3/4, 1/4]:
    KL(q || p) = 0.75 * ln(0.75 / 0.5) + 0.25 * ln(0.25 / 0.5)
               = 0.75 * 0.405465 + 0.25 * (-0.693147) = 0.304099 - 0.173287 = 0.130812.
    """
    out = forward_kl(_S2, _T2, _all(1))
    assert out.item() == pytest.approx(FKL_HAND, abs=1e-6)
    assert out.item() == pytest.approx(0.130812, abs=1e-6)


def test_kl_three_token_hand_example():
    """Student logits [0, 0, 0] -> p = [1/3, 1/3, 1/3]; teacher logits [ln 2, 0, 0] -> q = [1/2, 1/4, 1/4].

    KL(p || q) = 1/3 * [ln((1/3)/(1/2)) + 2 ln((1/3)/(1/4))] = 1/3 * [ln(2/3) + 2 ln(4/3)]
               = 1/3 * [-0.405465 + 0.575364] = 0.056633
    KL(q || p) = 1/2 ln((1/2)/(1/3)) + 2 * 1/4 ln((1/4)/(1/3)) = 1/2 ln(3/2) + 1/2 ln(3/4)
               = 0.202733 - 0.143841 = 0.058892
    """
    s = torch.zeros(1, 3)
    t = torch.tensor([[LN2, 0.0, 0.0]])
    rkl = (math.log(2 / 3) + 2 * math.log(4 / 3)) / 3
    fkl = 0.5 * math.log(1.5) + 0.5 * math.log(0.75)
    assert reverse_kl(s, t, _all(1)).item() == pytest.approx(rkl, abs=1e-6)
    assert forward_kl(s, t, _all(1)).item() == pytest.approx(fkl, abs=1e-6)
    assert rkl == pytest.approx(0.056633, abs=1e-6) and fkl == pytest.approx(0.058892, abs=1e-6)


def test_kl_mean_over_positions():
    """Two positions: the hand example (KL = 0.143841) and an identical pair (KL = 0): mean = 0.071921."""
    s = torch.tensor([[0.0, 0.0], [1.0, -1.0]])
    t = torch.tensor([[math.log(3.0), 0.0], [1.0, -1.0]])
    assert reverse_kl(s, t, _all(2)).item() == pytest.approx(RKL_HAND / 2, abs=1e-6)
    assert forward_kl(s, t, _all(2)).item() == pytest.approx(FKL_HAND / 2, abs=1e-6)


def test_kl_direction():
    """reverse_kl(s, t) = KL(p_s || p_t) = forward_kl(t, s); the two directions differ on an asymmetric pair
    (0.143841 vs 0.130812 above)."""
    torch.manual_seed(1)
    s, t = torch.randn(3, 4, 10) * 2, torch.randn(3, 4, 10) * 2
    mask = torch.ones(3, 4, dtype=torch.bool)
    torch.testing.assert_close(reverse_kl(s, t, mask), forward_kl(t, s, mask))
    torch.testing.assert_close(forward_kl(s, t, mask), reverse_kl(t, s, mask))
    assert abs(reverse_kl(s, t, mask).item() - forward_kl(s, t, mask).item()) > 1e-3
    assert abs(reverse_kl(_S2, _T2, _all(1)).item() - forward_kl(_S2, _T2, _all(1)).item()) > 1e-2


@pytest.mark.parametrize("kl", [reverse_kl, forward_kl])
def test_kl_empty_mask_is_exact_zero_with_backward(kl):
    """No selected position: the mean over 0 positions would be 0/0 = NaN; the function must return exactly 0.0,
    float32, attached to the graph so that backward runs and gives a zero gradient."""
    s = torch.randn(2, 3, 7, requires_grad=True)
    t = torch.randn(2, 3, 7)
    out = kl(s, t, torch.zeros(2, 3, dtype=torch.bool))
    assert out.dtype == torch.float32
    assert out.item() == 0.0 and not torch.isnan(out)
    out.backward()
    assert s.grad is not None
    assert torch.equal(s.grad, torch.zeros_like(s))


@pytest.mark.parametrize("kl", [reverse_kl, forward_kl])
def test_kl_empty_mask_bf16(kl):
    s = torch.randn(2, 3, 7, dtype=torch.bfloat16, requires_grad=True)
    out = kl(s, torch.randn(2, 3, 7, dtype=torch.bfloat16), torch.zeros(2, 3, dtype=torch.bool))
    assert out.dtype == torch.float32 and out.item() == 0.0
    out.backward()
    assert torch.equal(s.grad, torch.zeros_like(s))


@pytest.mark.parametrize("kl", [reverse_kl, forward_kl])
def test_kl_bf16_computed_in_float32(kl):
    """bf16 logits -> float32 result, equal to the float32 computation on the (exactly) upcast bf16 values and close
    to the float32 computation on the original values."""
    torch.manual_seed(2)
    s, t = torch.randn(2, 5, 50) * 3, torch.randn(2, 5, 50) * 3
    mask = torch.ones(2, 5, dtype=torch.bool)
    out = kl(s.bfloat16(), t.bfloat16(), mask)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, kl(s.bfloat16().float(), t.bfloat16().float(), mask), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(out, kl(s, t, mask), rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize("kl,hand", [(reverse_kl, RKL_HAND), (forward_kl, FKL_HAND)])
def test_kl_mask_selects_positions(kl, hand):
    """(1, 3, 2) logits, mask [True, False, False]: only position 0 (the hand example) counts; positions 1 and 2
    hold +-1e4 logits (a huge KL) that must not change the result."""
    s = torch.tensor([[[0.0, 0.0], [1e4, -1e4], [-1e4, 1e4]]])
    t = torch.tensor([[[math.log(3.0), 0.0], [-1e4, 1e4], [1e4, -1e4]]])
    mask = torch.tensor([[True, False, False]])
    assert kl(s, t, mask).item() == pytest.approx(hand, abs=1e-6)
    # and with the second position selected too the result blows up, so the selection is what kept it small
    assert kl(s, t, torch.tensor([[True, True, False]])).item() > 100


def test_kl_gradient_matches_closed_form():
    """d KL(p || q) / d z_k = p_k (d_k - KL), d_k = ln p_k - ln q_k. At the hand example:
    d = [ln(2/3), ln 2] = [-0.405465, 0.693147], KL = 0.143841,
    grad = 0.5 * [-0.405465 - 0.143841, 0.693147 - 0.143841] = [-0.274653, 0.274653].
    Forward: d KL(q || p) / d z = p - q = [0.5 - 0.75, 0.5 - 0.25] = [-0.25, 0.25]."""
    s = _S2.clone().requires_grad_(True)
    reverse_kl(s, _T2, _all(1)).backward()
    torch.testing.assert_close(s.grad, torch.tensor([[-0.274653, 0.274653]]), rtol=0, atol=1e-6)
    s = _S2.clone().requires_grad_(True)
    forward_kl(s, _T2, _all(1)).backward()
    torch.testing.assert_close(s.grad, torch.tensor([[-0.25, 0.25]]), rtol=0, atol=1e-6)


# --------------------------------------------------------------------------------------------------------------------
# distillation_kl (chunked, custom autograd)
# --------------------------------------------------------------------------------------------------------------------

N, V = 7, 11


def _inputs(seed: int, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    student = (torch.randn(N, V, generator=g) * 2).to(dtype)
    original = torch.randn(N, V, generator=g) * 2
    augmented = original + torch.randn(N, V, generator=g) * 2
    return student, original, augmented


def _reference(student, original, augmented, alpha, direction):
    """Plain (unchunked, autograd) value and gradient."""
    s = student.detach().float().requires_grad_(True)
    teacher = original.float() if augmented is None else logit_subtraction_teacher(original, augmented, alpha)
    fn = reverse_kl if direction == "reverse" else forward_kl
    out = fn(s, teacher, _all(s.shape[0]))
    out.backward()
    return out.detach(), s.grad


@pytest.mark.parametrize("direction", ["reverse", "forward"])
@pytest.mark.parametrize("chunk_size", [1, 3, N, N + 5])
@pytest.mark.parametrize("alpha,use_aug", [(2.5, True), (0.0, True), (8.0, True), (3.0, False)])
def test_distillation_kl_equals_plain(direction, chunk_size, alpha, use_aug):
    """Chunked value and gradient == reverse_kl/forward_kl(student, logit_subtraction_teacher(o, a, alpha), all).
    With augmented=None the teacher is the original (alpha ignored)."""
    student, original, augmented = _inputs(seed=chunk_size * 10 + int(alpha))
    augmented = augmented if use_aug else None
    ref_value, ref_grad = _reference(student, original, augmented, alpha, direction)

    s = student.clone().requires_grad_(True)
    out = distillation_kl(s, original, augmented, alpha, direction=direction, chunk_size=chunk_size)
    assert out.dtype == torch.float32 and out.dim() == 0
    torch.testing.assert_close(out.detach(), ref_value, rtol=1e-5, atol=1e-6)
    out.backward()
    torch.testing.assert_close(s.grad, ref_grad, rtol=1e-4, atol=1e-6)


def test_distillation_kl_alpha_zero_equals_no_augmented():
    """alpha = 0: teacher = orig - 0 * relu(aug - orig) = orig, the same as augmented=None."""
    student, original, augmented = _inputs(seed=3)
    a = distillation_kl(student, original, augmented, 0.0)
    b = distillation_kl(student, original, None)
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_distillation_kl_hand_example():
    """The reverse/forward hand example (p = [1/2, 1/2], q = [3/4, 1/4]) through the chunked path, with the teacher
    built by subtraction: orig = [ln 3, 1], aug = [0, 2], alpha = 1 -> relu(aug - orig) = [0, 1] ->
    teacher = [ln 3, 0]. Reverse 0.143841, forward 0.130812."""
    orig = torch.tensor([[math.log(3.0), 1.0]])
    aug = torch.tensor([[0.0, 2.0]])
    assert distillation_kl(_S2, orig, aug, 1.0).item() == pytest.approx(RKL_HAND, abs=1e-6)
    assert distillation_kl(_S2, orig, aug, 1.0, direction="forward").item() == pytest.approx(FKL_HAND, abs=1e-6)


def test_distillation_kl_scales_upstream_gradient():
    """(3 * loss).backward() gives 3x the gradient: the custom backward multiplies by grad_output."""
    student, original, augmented = _inputs(seed=4)
    s1 = student.clone().requires_grad_(True)
    distillation_kl(s1, original, augmented, 2.0, chunk_size=2).backward()
    s3 = student.clone().requires_grad_(True)
    (3.0 * distillation_kl(s3, original, augmented, 2.0, chunk_size=2)).backward()
    torch.testing.assert_close(s3.grad, 3.0 * s1.grad)


def test_distillation_kl_teacher_gets_no_gradient():
    """The teacher inputs are constants: even if they require grad, nothing flows to them."""
    student, original, augmented = _inputs(seed=5)
    s = student.clone().requires_grad_(True)
    o = original.clone().requires_grad_(True)
    a = augmented.clone().requires_grad_(True)
    distillation_kl(s, o, a, 2.0).backward()
    assert s.grad is not None
    assert o.grad is None and a.grad is None


@pytest.mark.parametrize("direction", ["reverse", "forward"])
def test_distillation_kl_bf16_student(direction):
    """bf16 student logits: float32 loss, bf16 gradient (the saved gradient is stored in the student's dtype), both
    close to the float32 computation on the upcast bf16 values."""
    student, original, augmented = _inputs(seed=6)
    sb = student.bfloat16().requires_grad_(True)
    out = distillation_kl(sb, original.bfloat16(), augmented.bfloat16(), 2.0, direction=direction, chunk_size=3)
    assert out.dtype == torch.float32
    out.backward()
    assert sb.grad.dtype == torch.bfloat16
    ref_value, ref_grad = _reference(
        student.bfloat16().float(), original.bfloat16().float(), augmented.bfloat16().float(), 2.0, direction
    )
    torch.testing.assert_close(out.detach(), ref_value, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(sb.grad.float(), ref_grad, rtol=1e-2, atol=1e-3)


@pytest.mark.parametrize("direction", ["reverse", "forward"])
def test_distillation_kl_empty(direction):
    """N = 0 -> exactly 0 (not 0/0 = NaN), backward runs with a zero (empty) gradient."""
    s = torch.zeros(0, V, requires_grad=True)
    out = distillation_kl(s, torch.zeros(0, V), torch.zeros(0, V), 2.0, direction=direction)
    assert out.dtype == torch.float32 and out.item() == 0.0
    out.backward()
    assert s.grad is not None and s.grad.shape == (0, V)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"direction": "sideways"}, "direction"),
        ({"alpha": -1.0}, "alpha"),
        ({"chunk_size": 0}, "chunk_size"),
        ({"chunk_size": -4}, "chunk_size"),
    ],
)
def test_distillation_kl_bad_arguments(kwargs, match):
    student, original, augmented = _inputs(seed=7)
    with pytest.raises(ValueError, match=match):
        distillation_kl(student, original, augmented, **{"alpha": 1.0, **kwargs})


@pytest.mark.parametrize("direction", ["reverse", "forward"])
def test_distillation_kl_gradcheck_loose(direction):
    """torch.autograd.gradcheck with a coarse step (eps 1e-2): the analytic gradient of the chunked function agrees
    with central differences up to their truncation error (~eps^2 = 1e-4)."""
    g = torch.Generator().manual_seed(8)
    s = torch.randn(3, 4, dtype=torch.float64, generator=g, requires_grad=True)
    o = torch.randn(3, 4, dtype=torch.float64, generator=g)
    a = torch.randn(3, 4, dtype=torch.float64, generator=g)
    assert torch.autograd.gradcheck(
        lambda x: distillation_kl(x, o, a, 1.5, direction=direction, chunk_size=2), (s,), eps=1e-2, atol=5e-4, rtol=1e-3
    )


@pytest.mark.parametrize("direction", ["reverse", "forward"])
def test_distillation_kl_gradcheck_float64(direction):
    g = torch.Generator().manual_seed(9)
    s = torch.randn(3, 4, dtype=torch.float64, generator=g, requires_grad=True)
    o = torch.randn(3, 4, dtype=torch.float64, generator=g)
    a = torch.randn(3, 4, dtype=torch.float64, generator=g)
    assert torch.autograd.gradcheck(lambda x: distillation_kl(x, o, a, 1.5, direction=direction, chunk_size=2), (s,))


# --------------------------------------------------------------------------------------------------------------------
# answer_positions, token_nll, sequence_log_likelihood
# --------------------------------------------------------------------------------------------------------------------


def test_answer_positions_shift():
    """labels = [-100, -100, 5, 6] (prompt of 2 tokens, answer [5, 6]); T = 4.

    Position t predicts labels[t + 1]: mask = labels[1:] != -100 = [F, T, T], so logits at positions 1 and 2 are
    selected (they predict 5 and 6); position 0 predicts a prompt token and position 3 predicts nothing.
    Logits are filled with their position index so the selection can be read off.
    """
    V_ = 4
    logits = torch.arange(4, dtype=torch.float32).view(1, 4, 1).expand(1, 4, V_).clone()
    labels = torch.tensor([[IGNORE_INDEX, IGNORE_INDEX, 5, 6]])
    sel, mask = answer_positions(logits, labels)
    assert mask.tolist() == [[False, True, True]]
    assert sel.shape == (2, V_)
    assert sel[:, 0].tolist() == [1.0, 2.0]
    # the mask applies to other logits of the same batch
    other = logits * 10
    assert other[:, :-1][mask][:, 0].tolist() == [10.0, 20.0]


def test_answer_positions_batch_with_padding():
    """Row 0: labels [-100, 7, 8, -100(pad)] -> mask [T, T, F]; row 1: [-100, -100, -100, 9] -> mask [F, F, T].
    Selected (row, t): (0, 0), (0, 1), (1, 2) in row-major order."""
    logits = (torch.arange(8, dtype=torch.float32).view(2, 4, 1)).expand(2, 4, 3).clone()
    labels = torch.tensor([[IGNORE_INDEX, 7, 8, IGNORE_INDEX], [IGNORE_INDEX, IGNORE_INDEX, IGNORE_INDEX, 9]])
    sel, mask = answer_positions(logits, labels)
    assert mask.tolist() == [[True, True, False], [False, False, True]]
    assert sel[:, 0].tolist() == [0.0, 1.0, 6.0]


def test_token_nll_uniform():
    """Uniform logits over V = 8: p(y) = 1/8 for every target -> NLL = ln 8 = 2.079442 per token, mean ln 8."""
    logits = torch.zeros(2, 5, 8)
    labels = torch.tensor([[IGNORE_INDEX, IGNORE_INDEX, 3, 4, 5], [IGNORE_INDEX, 1, 2, IGNORE_INDEX, IGNORE_INDEX]])
    assert token_nll(logits, labels).item() == pytest.approx(math.log(8), abs=1e-6)


def test_token_nll_hand_example_and_ignore():
    """V = 2, one sequence of T = 3. Logits [0, ln 3] -> p = [1/4, 3/4] at both positions 0 and 1.
    labels = [-100, 1, 0]: position 0 predicts 1 -> -ln(3/4) = 0.287682; position 1 predicts 0 -> -ln(1/4) = 1.386294.
    Mean = (0.287682 + 1.386294) / 2 = 0.836988 = ln(16/3) / 2. Position 2 has no target (shifted away).
    Setting labels[2] = -100 leaves only the first term: 0.287682."""
    logits = torch.tensor([[[0.0, math.log(3.0)]] * 3])
    labels = torch.tensor([[IGNORE_INDEX, 1, 0]])
    assert token_nll(logits, labels).item() == pytest.approx(math.log(16 / 3) / 2, abs=1e-6)
    labels = torch.tensor([[IGNORE_INDEX, 1, IGNORE_INDEX]])
    assert token_nll(logits, labels).item() == pytest.approx(-math.log(0.75), abs=1e-6)


def test_token_nll_all_ignored_is_zero():
    logits = torch.randn(2, 4, 6, requires_grad=True)
    labels = torch.full((2, 4), IGNORE_INDEX)
    labels[:, 0] = 3  # position 0 is never a target after the shift
    out = token_nll(logits, labels)
    assert out.item() == 0.0 and out.dtype == torch.float32
    out.backward()
    assert torch.equal(logits.grad, torch.zeros_like(logits))


def test_token_nll_bf16_is_float32():
    logits = torch.zeros(1, 3, 16, dtype=torch.bfloat16)
    out = token_nll(logits, torch.tensor([[IGNORE_INDEX, 2, 3]]))
    assert out.dtype == torch.float32
    assert out.item() == pytest.approx(math.log(16), abs=1e-6)


def test_sequence_log_likelihood_uniform():
    """Uniform logits over V = 8: every answer token has ln p = -ln 8, so log p(y|x) = -(#answer tokens) * ln 8.
    Row 0 has answer tokens at 2, 3, 4 (3 tokens); row 1 has 1 token (index 1); row 2 none -> 0."""
    logits = torch.zeros(3, 5, 8)
    labels = torch.tensor(
        [
            [IGNORE_INDEX, IGNORE_INDEX, 3, 4, 5],
            [IGNORE_INDEX, 1, IGNORE_INDEX, IGNORE_INDEX, IGNORE_INDEX],
            [IGNORE_INDEX] * 5,
        ]
    )
    out = sequence_log_likelihood(logits, labels)
    assert out.shape == (3,) and out.dtype == torch.float32
    torch.testing.assert_close(out, torch.tensor([-3 * math.log(8), -math.log(8), 0.0]))


def test_sequence_log_likelihood_hand_example():
    """The token_nll hand example summed, not averaged: ln(3/4) + ln(1/4) = ln(3/16) = -1.673976."""
    logits = torch.tensor([[[0.0, math.log(3.0)]] * 3])
    out = sequence_log_likelihood(logits, torch.tensor([[IGNORE_INDEX, 1, 0]]))
    assert out.item() == pytest.approx(math.log(3 / 16), abs=1e-6)


# --------------------------------------------------------------------------------------------------------------------
# npo_loss, dpo_loss
# --------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("beta", [0.1, 1.0, 2.0])
def test_npo_at_reference(beta):
    """logp_theta == logp_ref -> log sigmoid(0) = -ln 2 -> loss = (2 / beta) * ln 2 (13.862944 for beta = 0.1)."""
    lp = torch.tensor([-12.0, -3.5, -40.0])
    assert npo_loss(lp, lp.clone(), beta).item() == pytest.approx(2 / beta * LN2, rel=1e-6)


def test_npo_worked_example():
    """beta = 0.1, logp_theta = -10, logp_ref = -5: log ratio = -5, -beta * ratio = 0.5,
    log sigmoid(0.5) = -ln(1 + e^-0.5) = -ln(1.606531) = -0.474077, loss = (2 / 0.1) * 0.474077 = 9.481535.
    A second row at equality adds 20 * ln 2 = 13.862944; mean = 11.672239."""
    out = npo_loss(torch.tensor([-10.0]), torch.tensor([-5.0]), 0.1)
    assert out.item() == pytest.approx(9.481535, abs=1e-5)
    out = npo_loss(torch.tensor([-10.0, -5.0]), torch.tensor([-5.0, -5.0]), 0.1)
    assert out.item() == pytest.approx((9.481535 + 13.862944) / 2, abs=1e-5)


def test_npo_decreases_as_likelihood_falls():
    """loss(ratio) = -(2/beta) log sigmoid(-beta * ratio) is increasing in the ratio, so lowering logp_theta lowers it,
    towards 0."""
    ref = torch.tensor([-5.0])
    values = [npo_loss(torch.tensor([lp]), ref, 0.1).item() for lp in (0.0, -5.0, -10.0, -50.0, -500.0)]
    assert all(a > b for a, b in zip(values, values[1:]))
    assert values[-1] == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("beta", [0.0, -0.1])
def test_npo_bad_beta(beta):
    with pytest.raises(ValueError, match="beta"):
        npo_loss(torch.zeros(2), torch.zeros(2), beta)


def test_npo_bf16_and_gradient():
    """d loss / d logp_theta = (2/beta) * beta * sigmoid(beta * ratio) / B = 2 * sigmoid(0) / 1 = 1 at equality."""
    lp = torch.tensor([-5.0], dtype=torch.bfloat16, requires_grad=True)
    out = npo_loss(lp, torch.tensor([-5.0], dtype=torch.bfloat16), 0.1)
    assert out.dtype == torch.float32
    out.backward()
    assert lp.grad.item() == pytest.approx(1.0, abs=1e-2)


def test_dpo_at_reference():
    """Student == reference for both answers: margin 0 -> -log sigmoid(0) = ln 2 = 0.693147, for any beta."""
    a, b = torch.tensor([-3.0, -7.0]), torch.tensor([-8.0, -1.0])
    for beta in (0.1, 1.0):
        assert dpo_loss(a, a.clone(), b, b.clone(), beta).item() == pytest.approx(LN2, abs=1e-6)


def test_dpo_worked_example():
    """beta = 0.5; chosen: theta -3, ref -5 (+2); rejected: theta -8, ref -6 (-2); margin = 2 - (-2) = 4;
    beta * margin = 2; loss = -log sigmoid(2) = ln(1 + e^-2) = ln(1.135335) = 0.126928.
    Swapping chosen and rejected gives margin -4: ln(1 + e^2) = 2.126928 (= 2 + 0.126928)."""
    out = dpo_loss(torch.tensor([-3.0]), torch.tensor([-5.0]), torch.tensor([-8.0]), torch.tensor([-6.0]), 0.5)
    assert out.item() == pytest.approx(0.126928, abs=1e-6)
    out = dpo_loss(torch.tensor([-8.0]), torch.tensor([-6.0]), torch.tensor([-3.0]), torch.tensor([-5.0]), 0.5)
    assert out.item() == pytest.approx(2.126928, abs=1e-6)


@pytest.mark.parametrize("beta", [0.0, -1.0])
def test_dpo_bad_beta(beta):
    z = torch.zeros(1)
    with pytest.raises(ValueError, match="beta"):
        dpo_loss(z, z, z, z, beta)
