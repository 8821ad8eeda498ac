"""Token-level redistributive / masked targets for LLMs (``token_redistribute``, ``token_mask``) on a tiny random Llama:
the first loss equals the KL worked out from the original's own probabilities, both KL directions, unlearning lowers
the forget answers' likelihood, the frozen original stays the original. (Training, every retain mode, LoRA and
resuming run in tests/test_trainer.py with every other LM method.)"""

from __future__ import annotations

import pytest
import torch
from conftest import build_tiny_model, tiny_config

from rklu_llm import UnlearnConfig, UnlearnTrainer, build_unlearning_dataset, load_tofu
from rklu_llm.data.qa import UnlearnCollator
from rklu_llm.losses import TOKEN_TARGET_FLOOR, answer_positions, token_nll


@pytest.fixture(scope="module")
def forget_qa(tofu_dir):
    return load_tofu("forget01", tofu_dir).select(range(8))


def make_trainer(tmp_path, tokenizer, forget, method, **overrides):
    config = tiny_config(tmp_path / "out", method, **{"max_length": 256, **overrides})
    dataset = build_unlearning_dataset(tokenizer, forget, max_length=256)
    return UnlearnTrainer(
        model=build_tiny_model(tokenizer),
        args=config,
        train_dataset=dataset,
        processing_class=tokenizer,
    )


def first_batch(trainer):
    return UnlearnCollator(trainer.processing_class.pad_token_id)([trainer.train_dataset[i] for i in range(4)])


def original_answer_probs(trainer, batch):
    """``(N, V)`` probabilities of the original at the answer positions and ``(N,)`` the answer tokens."""
    with torch.no_grad():
        logits = trainer.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    selected, mask = answer_positions(logits, batch["labels"])
    return torch.softmax(selected.double(), -1), batch["labels"][:, 1:][mask]


def test_methods_default_to_the_forward_kl(tmp_path):
    for method in ("token_redistribute", "token_mask"):
        assert UnlearnConfig(output_dir=str(tmp_path), method=method, use_cpu=True).divergence == "forward"
        assert UnlearnConfig(output_dir=str(tmp_path), method=method, divergence="reverse", use_cpu=True).spec.trains


def test_token_mask_first_loss_is_minus_log_one_minus_p(tmp_path, tiny_tokenizer, forget_qa):
    """Student = original at step 0. The masked target is t_k = p_k / (1 - p_y) for k != y, so
    KL(t || p) = sum_{k != y} t_k ln(t_k / p_k) = sum_{k != y} t_k * (-ln(1 - p_y)) = -ln(1 - p_y),
    averaged over the answer tokens."""
    trainer = make_trainer(tmp_path, tiny_tokenizer, forget_qa, "token_mask")
    trainer.setup_frozen_models()
    batch = first_batch(trainer)
    loss = trainer.compute_loss(trainer.model, batch)
    p, y = original_answer_probs(trainer, batch["forget"])
    p_y = p[torch.arange(len(y)), y]
    assert loss.item() == pytest.approx((-torch.log1p(-p_y)).mean().item(), rel=1e-4)


def test_token_mask_reverse_first_loss(tmp_path, tiny_tokenizer, forget_qa):
    """Reverse KL(p || t) with t_y = floor (1e-12, then renormalised by 1 + 1e-12, negligible):
    sum_{k != y} p_k ln(p_k (1 - p_y) / p_k) + p_y ln(p_y / floor) = (1 - p_y) ln(1 - p_y) + p_y ln(p_y / 1e-12)."""
    trainer = make_trainer(tmp_path, tiny_tokenizer, forget_qa, "token_mask", divergence="reverse")
    trainer.setup_frozen_models()
    batch = first_batch(trainer)
    loss = trainer.compute_loss(trainer.model, batch)
    p, y = original_answer_probs(trainer, batch["forget"])
    p_y = p[torch.arange(len(y)), y]
    expected = (1 - p_y) * torch.log1p(-p_y) + p_y * torch.log(p_y / TOKEN_TARGET_FLOOR)
    assert loss.item() == pytest.approx(expected.mean().item(), rel=1e-3)


def test_token_redistribute_first_loss(tmp_path, tiny_tokenizer, forget_qa):
    """t_k = p_k + p_y / (V - 1) for k != y, t_y = 0: KL(t || p) = sum_{k != y} t_k ln(t_k / p_k), per answer token."""
    trainer = make_trainer(tmp_path, tiny_tokenizer, forget_qa, "token_redistribute")
    trainer.setup_frozen_models()
    batch = first_batch(trainer)
    loss = trainer.compute_loss(trainer.model, batch)
    p, y = original_answer_probs(trainer, batch["forget"])
    rows = torch.arange(len(y))
    t = p + p[rows, y].unsqueeze(-1) / (p.shape[-1] - 1)
    t[rows, y] = 0.0
    expected = torch.xlogy(t, t / p).sum(-1).mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-4)
    assert expected.item() > 0


@pytest.mark.parametrize("method,divergence", [("token_redistribute", "forward"), ("token_mask", "reverse")])
def test_unlearning_lowers_the_forget_answers_likelihood(tmp_path, tiny_tokenizer, forget_qa, method, divergence):
    trainer = make_trainer(
        tmp_path, tiny_tokenizer, forget_qa, method, divergence=divergence, max_steps=6, learning_rate=3e-3
    )
    batch = first_batch(trainer)["forget"]

    def nll(model):
        with torch.no_grad():
            return token_nll(
                model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits, batch["labels"]
            ).item()

    before = nll(trainer.model)
    trainer.train()
    assert nll(trainer.model) > before + 0.05
    # the frozen original is still the freshly built model
    original = build_tiny_model(tiny_tokenizer)
    with torch.no_grad():
        want = original(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    torch.testing.assert_close(trainer.frozen_logits("original", trainer.model, batch), want, rtol=1e-4, atol=1e-4)
