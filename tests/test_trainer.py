"""UnlearnTrainer on tiny random Llamas: every method x retain mode trains, changes the student, keeps frozen models
frozen and resumes from a checkpoint; frozen models exist only where a method uses them; bad inputs fail early."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import build_tiny_model, tiny_config
from peft import PeftModel
from transformers import AutoModelForCausalLM, LlamaModel

from rklu_llm import METHODS, UnlearnConfig, UnlearnTrainer, build_unlearning_dataset, load_refusals, load_tofu
from rklu_llm.data.qa import UnlearnCollator
from rklu_llm.models import ModelLoadError
from rklu_llm.teacher import task_arithmetic

TRAINING_METHODS = [m for m, spec in METHODS.items() if spec.trains and spec.batch != "classifier"]  # LM batches
# token_* share the retain-term code with every other method: their retain-free runs suffice
CASES = [
    (m, r)
    for m in TRAINING_METHODS
    for r in ("none", "rt", "kl")
    if not (m == "gd" and r != "rt") and not (m.startswith("token_") and r != "none")
]


@pytest.fixture(scope="module")
def qa(tofu_dir):
    return load_tofu("forget01", tofu_dir).select(range(8)), load_tofu("retain99", tofu_dir).select(range(16))


def make_config(tmp_path, method, retain_mode="none", **overrides):
    steps = dict(max_steps=4, augment_max_steps=2, save_strategy="steps", save_steps=2, save_total_limit=None)
    return tiny_config(tmp_path / "out", method, retain_mode=retain_mode, **{"max_length": 256, **steps, **overrides})


def make_trainer(tmp_path, tokenizer, qa, method, retain_mode="none", model=None, **overrides):
    config = make_config(tmp_path, method, retain_mode, **overrides)
    forget, retain = qa
    dataset = build_unlearning_dataset(
        tokenizer,
        forget,
        retain if config.retain_mode != "none" else None,
        load_refusals() if config.spec.needs_refusals else None,
        max_length=256,
    )
    model = model if model is not None else build_tiny_model(tokenizer)
    return UnlearnTrainer(model=model, args=config, train_dataset=dataset, processing_class=tokenizer)


def trainable_state(trainer) -> dict[str, torch.Tensor]:
    model = trainer.accelerator.unwrap_model(trainer.model)
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def probe_batch(trainer):
    collate = UnlearnCollator(trainer.processing_class.pad_token_id)
    return collate([trainer.train_dataset[i] for i in range(2)])["forget"]


def reference_logits(tokenizer, batch, augmented_dir=None):
    """Logits of a freshly built original (same seed) or of the augmented model loaded from disk."""
    model = build_tiny_model(tokenizer)
    if augmented_dir is not None:
        if (augmented_dir / "adapter_config.json").is_file():
            model = PeftModel.from_pretrained(model, augmented_dir).merge_and_unload()
        else:
            model = AutoModelForCausalLM.from_pretrained(augmented_dir)
    model.eval()
    with torch.no_grad():
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits


@pytest.mark.parametrize("method,retain_mode", CASES)
@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_every_method_trains_and_resumes(tmp_path, tiny_tokenizer, qa, method, retain_mode, lora):
    extra = {"use_lora": lora, "augment_lora": lora}
    trainer = make_trainer(tmp_path, tiny_tokenizer, qa, method, retain_mode, **extra)
    before = trainable_state(trainer)
    result = trainer.train()
    assert math.isfinite(result.training_loss)
    after = trainable_state(trainer)
    assert any(not torch.equal(before[n], after[n]) for n in before), "the student did not change"
    logged = {k for entry in trainer.state.log_history for k in entry}
    assert "forget/loss" in logged and (retain_mode == "none" or "retain/loss" in logged)

    # Frozen models are still exactly the original / the saved augmented model.
    batch = probe_batch(trainer)
    if METHODS[method].needs_reference or retain_mode == "kl":
        got = trainer.frozen_logits("original", trainer.model, batch)
        torch.testing.assert_close(got, reference_logits(tiny_tokenizer, batch), rtol=1e-4, atol=1e-4)
    if METHODS[method].needs_augmented:
        got = trainer.frozen_logits("augmented", trainer.model, batch)
        want = reference_logits(tiny_tokenizer, batch, tmp_path / "out.augmented")
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)

    # Resuming from the step-2 checkpoint reproduces the uninterrupted run.
    resumed = make_trainer(tmp_path, tiny_tokenizer, qa, method, retain_mode, **extra)
    resumed.train(resume_from_checkpoint=str(tmp_path / "out" / "checkpoint-2"))
    assert resumed.state.global_step == 4
    for name, value in trainable_state(resumed).items():
        torch.testing.assert_close(value, after[name], rtol=1e-5, atol=1e-6)


def held_parameter_bytes(trainer) -> int:
    """Bytes of every distinct parameter storage reachable from the trainer's models."""
    seen, total = set(), 0
    for model in (trainer.model, trainer.ref_model, trainer.aug_model):
        if model is None:
            continue
        for p in model.parameters():
            if p.data_ptr() not in seen:
                seen.add(p.data_ptr())
                total += p.numel() * p.element_size()
    return total


@pytest.mark.parametrize(
    "method,retain_mode,lora,augment_lora,copies",
    [
        ("ga", "none", False, False, 1),
        ("gd", "rt", False, False, 1),
        ("idk", "none", False, False, 1),
        ("ga", "kl", False, False, 2),
        ("npo", "none", False, False, 2),
        ("dpo", "none", False, False, 2),
        ("rklu", "none", False, False, 3),
        ("rklu", "none", False, True, 2),  # augmented adapter shares the frozen original's weights
        ("npo", "none", True, False, 1),  # LoRA student: the original is the base with the adapter off
        ("rklu", "none", True, True, 1),  # student, original and augmented share one base
    ],
)
def test_no_method_holds_a_model_it_does_not_use(
    tmp_path, tiny_tokenizer, qa, method, retain_mode, lora, augment_lora, copies
):
    trainer = make_trainer(tmp_path, tiny_tokenizer, qa, method, retain_mode, use_lora=lora, augment_lora=augment_lora)
    trainer.setup_frozen_models()
    base = sum(p.numel() * p.element_size() for p in build_tiny_model(tiny_tokenizer).parameters())
    held = held_parameter_bytes(trainer)
    assert copies * base <= held < copies * base + 0.5 * base, (held / base, copies)
    assert (trainer.ref_model is not None) == (copies > 1 and not lora)


def test_frozen_copies_follow_bf16(tmp_path, tiny_tokenizer, qa):
    trainer = make_trainer(tmp_path, tiny_tokenizer, qa, "npo", bf16=True)
    assert next(trainer.ref_model.parameters()).dtype == torch.bfloat16
    assert not any(p.requires_grad for p in trainer.ref_model.parameters())
    assert next(trainer.model.parameters()).dtype == torch.float32  # fp32 master weights, bf16 autocast


def test_teacher_alpha_zero_distils_towards_the_original(tmp_path, tiny_tokenizer, qa):
    """alpha = 0 makes the teacher the original model, so the first RKL-U loss is exactly 0."""
    trainer = make_trainer(tmp_path, tiny_tokenizer, qa, "rklu", teacher_alpha=0.0, max_steps=1)
    trainer.setup_frozen_models()
    batch = {"forget": probe_batch(trainer)}
    loss = trainer.compute_loss(trainer.model, batch)
    assert abs(loss.item()) < 1e-6


def test_task_arithmetic_moves_away_from_the_augmented_model(tmp_path, tiny_tokenizer, qa):
    trainer = make_trainer(tmp_path, tiny_tokenizer, qa, "ta", ta_scale=2.0)
    original = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    augmented = AutoModelForCausalLM.from_pretrained(tmp_path / "out.augmented")
    for name, theta_a in augmented.named_parameters():
        expected = original[name] - 2.0 * (theta_a - original[name])
        torch.testing.assert_close(dict(trainer.model.named_parameters())[name], expected, rtol=1e-5, atol=1e-6)


def test_save_writes_model_card_and_no_staging_left(tmp_path, tiny_tokenizer, qa):
    trainer = make_trainer(tmp_path, tiny_tokenizer, qa, "ga", max_steps=1, save_strategy="no")
    trainer.train()
    trainer.save_model()
    out = tmp_path / "out"
    card = (out / "README.md").read_text()
    assert "- unlearning" in card and "`ga`" in card
    fingerprint = trainer.train_dataset.fingerprint()  # the forget data is identified by its counts and hashes
    assert fingerprint["forget_sha256"] in card and f"| forget_items | {fingerprint['forget_items']} |" in card
    assert (out / "model.safetensors").is_file() and not (out / ".rklu-staging").exists()
    reloaded = AutoModelForCausalLM.from_pretrained(out)
    for (name, p), q in zip(trainer.model.named_parameters(), reloaded.parameters(), strict=True):
        torch.testing.assert_close(p, q, msg=name)


# ---- bad inputs, each before any training ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "overrides,match",
    [
        ({"method": "forget_everything"}, "Unknown method"),
        ({"teacher_alpha": -1.0}, "teacher_alpha must be >= 0"),
        ({"npo_beta": 0.0}, "npo_beta must be > 0"),
        ({"dpo_beta": -0.1}, "dpo_beta must be > 0"),
        ({"retain_mode": "everything"}, "Unknown retain_mode"),
        ({"divergence": "sideways"}, "Unknown divergence"),
        ({"method": "gd", "retain_mode": "none"}, "gd is gradient ascent plus retain NLL"),
        ({"method": "ta", "augment_epochs": 0}, "ta needs an augmented model"),
        ({"method": "rklu", "augment_epochs": 0}, "rklu needs an augmented model"),
        ({"method": "ta", "use_lora": True}, "ta edits the full weights"),
    ],
)
def test_config_rejects(tmp_path, overrides, match):
    values = dict(output_dir=str(tmp_path / "o"), use_cpu=True)
    values.update(overrides)
    with pytest.raises(ValueError, match=match):
        UnlearnConfig(**values)


def test_retain_mode_needs_retain_set(tmp_path, tiny_tokenizer, qa):
    config = make_config(tmp_path, "ga", "rt")
    dataset = build_unlearning_dataset(tiny_tokenizer, qa[0], max_length=256)
    with pytest.raises(ValueError, match="needs a retain set"):
        UnlearnTrainer(
            model=build_tiny_model(tiny_tokenizer), args=config, train_dataset=dataset, processing_class=tiny_tokenizer
        )


def test_refusal_methods_need_refusals(tmp_path, tiny_tokenizer, qa):
    dataset = build_unlearning_dataset(tiny_tokenizer, qa[0], max_length=256)
    with pytest.raises(ValueError, match="needs refusal answers"):
        UnlearnTrainer(
            model=build_tiny_model(tiny_tokenizer),
            args=make_config(tmp_path, "idk"),
            train_dataset=dataset,
            processing_class=tiny_tokenizer,
        )


def test_processes_that_would_train_alone_are_refused(tmp_path, tiny_tokenizer, qa, monkeypatch):
    """A launcher started 2 processes (WORLD_SIZE=2) but the Trainer sees one: each would train alone, same output."""
    dataset = build_unlearning_dataset(tiny_tokenizer, qa[0], max_length=256)
    config = make_config(tmp_path, "ga")
    assert config.world_size == 1
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(RuntimeError, match="accelerate_configs/cpu.yaml"):
        UnlearnTrainer(
            model=build_tiny_model(tiny_tokenizer), args=config, train_dataset=dataset, processing_class=tiny_tokenizer
        )
    assert not (tmp_path / "out").exists()


def test_empty_forget_set(tiny_tokenizer, qa):
    with pytest.raises(ValueError, match="forget set is empty"):
        build_unlearning_dataset(tiny_tokenizer, qa[0].select([]), max_length=256)


def test_model_without_lm_head(tmp_path, tiny_tokenizer, qa):
    headless = LlamaModel(build_tiny_model(tiny_tokenizer).config)
    dataset = build_unlearning_dataset(tiny_tokenizer, qa[0], max_length=256)
    with pytest.raises(ModelLoadError, match="no language-model head"):
        UnlearnTrainer(
            model=headless, args=make_config(tmp_path, "ga"), train_dataset=dataset, processing_class=tiny_tokenizer
        )


def test_output_dir_equal_to_model_dir(tiny_model_dir, tiny_tokenizer, qa):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    dataset = build_unlearning_dataset(tiny_tokenizer, qa[0], max_length=256)
    config = UnlearnConfig(output_dir=str(tiny_model_dir), method="ga", use_cpu=True)
    with pytest.raises(ValueError, match="input model's own directory"):
        UnlearnTrainer(model=model, args=config, train_dataset=dataset, processing_class=tiny_tokenizer)


def test_task_arithmetic_rejects_other_architecture(tmp_path, tiny_tokenizer, qa):
    """Another architecture is refused when the trainer is built (before any work), and by task_arithmetic itself."""
    other = build_tiny_model(tiny_tokenizer, hidden=32)
    other.save_pretrained(tmp_path / "other")
    with pytest.raises(ValueError, match="hidden_size is 32, the model's 64"):
        make_trainer(tmp_path, tiny_tokenizer, qa, "ta", augmented_model_path=str(tmp_path / "other"))
    with pytest.raises(ValueError, match="same architecture"):
        task_arithmetic(build_tiny_model(tiny_tokenizer), other, 2.5)


def test_augmented_model_path_must_hold_a_model(tmp_path, tiny_tokenizer, qa):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="holds neither a model"):
        make_trainer(tmp_path, tiny_tokenizer, qa, "rklu", augmented_model_path=str(tmp_path / "empty"))


def test_saving_a_lora_student_leaves_the_augmented_adapter_out(tmp_path, tiny_tokenizer, qa):
    """With a LoRA student the augmented adapter rides on the student; PEFT would save it into <output_dir>/augmented
    (and into every checkpoint). Saves hold the student only; the augmented model stays beside the output folder,
    reusable (its marker), and still loaded after the save."""
    trainer = make_trainer(
        tmp_path,
        tiny_tokenizer,
        qa,
        "rklu",
        use_lora=True,
        augment_lora=True,
        max_steps=2,
        save_steps=1,
        keep_augmented=True,  # the default deletes it after the save
    )
    trainer.train()
    trainer.save_model()
    out = tmp_path / "out"
    assert (tmp_path / "out.augmented" / "rklu_augmented.json").is_file()
    assert (out / "adapter_config.json").is_file() and (out / "README.md").is_file()
    leaked = [p for p in out.rglob("*") if "augmented" in p.name or "augmented" in p.parent.name]
    assert not leaked, leaked
    assert "augmented" in trainer.accelerator.unwrap_model(trainer.model).peft_config


def test_the_evaluation_callbacks_best_checkpoint_leaves_the_augmented_adapter_out(tmp_path, tiny_tokenizer, qa):
    """The best checkpoint TofuEvalCallback saves goes through the same FrozenModels as the trainer's own saves."""
    from rklu_llm.eval.callback import BEST_FILE, TofuEvalCallback

    trainer = make_trainer(
        tmp_path, tiny_tokenizer, qa, "rklu", use_lora=True, augment_lora=True, max_steps=1, save_strategy="no"
    )
    trainer.train()
    best = tmp_path / "best"
    callback = TofuEvalCallback(tiny_tokenizer, "forget01", reference={}, trainer=trainer, best_dir=best)
    callback._maybe_save_best({"forget01_forget_quality": 0.5, "epoch": 1.0}, trainer.state)
    assert (best / "adapter_config.json").is_file() and (best / BEST_FILE).is_file()
    leaked = [p for p in best.rglob("*") if "augmented" in p.name or "augmented" in p.parent.name]
    assert not leaked, leaked
    assert "augmented" in trainer.accelerator.unwrap_model(trainer.model).peft_config


def test_cached_frozen_answers_train_as_the_uncached_and_skip_the_forward_passes(
    tmp_path, tiny_tokenizer, qa, monkeypatch
):
    """cache_frozen_answers: 3 epochs of rklu with the retain KL term end where the uncached run ends (float rounding
    apart), and after the first epoch the forget items' frozen forward passes are skipped."""
    from rklu_llm.frozen import FrozenModels

    calls = []
    real = FrozenModels.logits

    def counted(self, which, student, batch):
        calls.append((which, batch["input_ids"].shape[0]))
        return real(self, which, student, batch)

    monkeypatch.setattr(FrozenModels, "logits", counted)
    states = {}
    for cache in (False, True):
        calls.clear()
        trainer = make_trainer(
            tmp_path / str(cache),
            tiny_tokenizer,
            qa,
            "rklu",
            "kl",
            use_lora=True,
            augment_lora=True,
            max_steps=6,  # 8 forget items in batches of 4: 3 epochs
            save_strategy="no",
            teacher_check=False,
            cache_frozen_answers=cache,
        )
        trainer.train()
        states[cache] = trainable_state(trainer)
        augmented_calls = sum(1 for which, _ in calls if which == "augmented")
        if cache:
            assert augmented_calls == 2  # the first epoch's two batches, then the cache
            assert len(trainer.frozen.answer_cache["augmented"]) == 8
            assert len(trainer.frozen.answer_cache["original"]) >= 8 + 8  # forget items and the retain items seen
        else:
            assert augmented_calls == 6 and trainer.frozen.answer_cache is None
    assert states[True].keys() == states[False].keys()
    for name in states[False]:
        torch.testing.assert_close(states[True][name], states[False][name], rtol=1e-4, atol=1e-5)


def test_an_items_cached_answers_do_not_depend_on_its_batch(tmp_path, tiny_tokenizer, qa):
    """The cache keys an item by its tokens and answer positions: batched with a longer item (so padded) it is found
    again alone, and the logits stored for it equal those of its own forward pass."""
    from rklu_llm.losses import answer_positions

    trainer = make_trainer(tmp_path, tiny_tokenizer, qa, "rklu", cache_frozen_answers=True, teacher_check=False)
    trainer.setup_frozen_models()
    collate = UnlearnCollator(tiny_tokenizer.pad_token_id)
    items = [trainer.train_dataset[i]["forget"] for i in range(len(trainer.train_dataset))]
    items = sorted(items, key=lambda item: len(item["input_ids"]))
    short, long = items[0], items[-1]
    assert len(short["input_ids"]) < len(long["input_ids"])
    model = trainer.model

    def answers(batch):
        _, mask = answer_positions(torch.zeros(*batch["input_ids"].shape, 1), batch["labels"])
        return trainer.frozen.answer_logits("original", model, batch, mask), mask

    together, mask = answers(collate([{"forget": short}, {"forget": long}])["forget"])
    cache = trainer.frozen.answer_cache["original"]
    assert len(cache) == 2
    alone_batch = collate([{"forget": short}])["forget"]
    alone, alone_mask = answers(alone_batch)
    assert len(cache) == 2  # found, not recomputed
    trainer.frozen.answer_cache = None
    fresh, _ = answers(alone_batch)
    assert together.shape[0] == int(mask.sum()) and alone.shape[0] == int(alone_mask.sum())
    torch.testing.assert_close(alone, together[: alone.shape[0]], rtol=0, atol=0)  # the cached copy
    torch.testing.assert_close(alone, fresh, rtol=1e-5, atol=1e-5)  # padded or not, the same logits


def test_cached_frozen_answers_need_one_process(tmp_path, monkeypatch):
    monkeypatch.setattr(UnlearnConfig, "world_size", property(lambda self: 2))
    with pytest.raises(ValueError, match="cache_frozen_answers works in one process"):
        tiny_config(tmp_path / "out", "rklu", cache_frozen_answers=True)
