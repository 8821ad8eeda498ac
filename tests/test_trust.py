"""Trustworthy runs on tiny models: divergence stops a run, an output folder holds one run (fingerprint, lock),
every input is validated before a model is loaded, a kill during a checkpoint save is survived, inputs are never
written over, no token reaches an artefact, gradient accumulation gives the same gradient, losses upcast only the
answer rows, and frozen models come from the model's path."""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import build_tiny_model, held_elsewhere, tiny_config
from datasets import Dataset
from peft import get_peft_model
from transformers import AutoModelForCausalLM

from rklu_llm import (
    UnlearnConfig,
    UnlearnTrainer,
    build_unlearning_dataset,
    load_model,
    load_refusals,
    load_tofu,
    losses,
)
from rklu_llm.data import DataUnavailableError, UnlearnCollator, check_qa
from rklu_llm.eval.arguments import TofuEvalArguments
from rklu_llm.models import ModelLoadError, check_model_source, check_output_dir, lora_config
from rklu_llm.run_state import (
    RUN_LOCK,
    RUN_RECORD,
    RunConflictError,
    TrainingDiverged,
    acquire_run_lock,
    checkpoint_problem,
)
from rklu_llm.scripts import finetune as finetune_script
from rklu_llm.scripts import unlearn as unlearn_script

SECRET = "hf_NOT_A_REAL_TOKEN_4a7c9e"


@pytest.fixture(scope="module")
def qa(tofu_dir):
    return load_tofu("forget01", tofu_dir).select(range(8)), load_tofu("retain99", tofu_dir).select(range(16))


def config(tmp_path, method="ga", retain_mode="none", name="out", **overrides):
    return tiny_config(tmp_path / name, method, retain_mode=retain_mode, **{"max_length": 256, **overrides})


def trainer_for(tmp_path, tokenizer, qa, method="ga", retain_mode="none", model=None, forget=None, **overrides):
    args = config(tmp_path, method, retain_mode, **overrides)
    dataset = build_unlearning_dataset(
        tokenizer,
        forget if forget is not None else qa[0],
        qa[1] if args.retain_mode != "none" else None,
        load_refusals() if args.spec.needs_refusals else None,
        max_length=256,
    )
    model = model if model is not None else build_tiny_model(tokenizer)
    return UnlearnTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer)


def weights_finite(folder: Path) -> bool:
    from safetensors.torch import load_file

    tensors = load_file(folder / "model.safetensors")
    return all(bool(torch.isfinite(t).all()) for t in tensors.values())


# ---- 1. divergence -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "field",
    [
        "teacher_alpha",
        "learning_rate",
        "adam_beta1",
        "retain_weight",
        "ta_scale",
        "augment_learning_rate",
        "forget_weight",
        "npo_beta",
        "warmup_epochs",
    ],
)
@pytest.mark.parametrize("value", [math.inf, math.nan])
def test_config_rejects_non_finite_numbers(tmp_path, field, value):
    with pytest.raises(ValueError, match=f"{field} must be a finite number"):
        UnlearnConfig(output_dir=str(tmp_path / "o"), use_cpu=True, **{field: value})


def test_diverging_run_stops_at_the_first_non_finite_loss_and_saves_no_nan(tmp_path, tiny_tokenizer, qa):
    """lr 1e10: step 2 makes the weights huge, step 3's loss is NaN. The run stops there, before the optimizer step,
    names the step and the learning rate; every checkpoint written holds finite weights; no final model."""
    trainer = trainer_for(
        tmp_path,
        tiny_tokenizer,
        qa,
        learning_rate=1e10,
        max_steps=6,
        save_strategy="steps",
        save_steps=1,
        save_total_limit=None,
    )
    with pytest.raises(TrainingDiverged, match=r"step \d.*learning_rate=1e\+10 may be too high"):
        trainer.train()
    out = tmp_path / "out"
    checkpoints = sorted(out.glob("checkpoint-*"))
    assert checkpoints and all(weights_finite(c) for c in checkpoints)
    assert not (out / "model.safetensors").exists()
    assert json.loads((out / RUN_RECORD).read_text())["status"] == "diverged"
    with pytest.raises(TrainingDiverged, match="NaN or infinite"):  # and a direct save refuses the NaN weights
        with torch.no_grad():
            next(trainer.model.parameters()).fill_(math.nan)
        trainer.save_model()


def test_every_staged_save_refuses_non_finite_weights(tmp_path, tiny_tokenizer):
    """The shared save path (final models, TOFU and book fine-tunes, best checkpoints) checks the weights itself."""
    from transformers import Trainer, TrainingArguments

    from rklu_llm.models import STAGING_DIR, staged_save

    model = build_tiny_model(tiny_tokenizer)
    with torch.no_grad():
        next(model.parameters())[0] = math.inf
    args = TrainingArguments(output_dir=str(tmp_path / "scratch"), use_cpu=True, report_to="none")
    with pytest.raises(TrainingDiverged, match="NaN or infinite"):
        staged_save(Trainer(model=model, args=args), tmp_path / "out")
    assert not (tmp_path / "out" / "model.safetensors").exists() and not (tmp_path / "out" / STAGING_DIR).exists()


def test_diverging_augmentation_publishes_nothing(tmp_path, tiny_tokenizer, qa):
    trainer = trainer_for(tmp_path, tiny_tokenizer, qa, "rklu", augment_learning_rate=1e10, augment_max_steps=3)
    with pytest.raises(TrainingDiverged, match="augmentation fine-tune.*augment_learning_rate=1e\\+10"):
        trainer.train()
    assert not (tmp_path / "out.augmented").exists()
    assert not list(tmp_path.glob(".out.augmented-staging*"))


def test_non_finite_gradient_norm_stops_before_the_optimizer_step(tmp_path, tiny_tokenizer, qa):
    """A NaN gradient with a finite loss (clipping off) is caught by the DivergenceGuard before the weights move."""
    trainer = trainer_for(tmp_path, tiny_tokenizer, qa, max_grad_norm=0.0)
    poisoned = next(trainer.model.parameters())
    poisoned.register_hook(lambda grad: torch.full_like(grad, math.nan))
    before = poisoned.detach().clone()
    with pytest.raises(TrainingDiverged, match="step 1: the gradient norm is nan.*clipping is off"):
        trainer.train()
    torch.testing.assert_close(poisoned.detach(), before)


def test_finetune_script_stops_on_divergence(tmp_path, tiny_model_dir, tofu_dir):
    out = tmp_path / "ft"
    with pytest.raises(TrainingDiverged, match="learning_rate=1e\\+10"):
        finetune_script.main(
            [
                "--model",
                str(tiny_model_dir),
                "--split",
                "retain99",
                "--data_dir",
                str(tofu_dir),
                "--output_dir",
                str(out),
                "--max_train_items",
                "8",
                "--max_steps",
                "6",
                "--per_device_train_batch_size",
                "4",
                "--learning_rate",
                "1e10",
                "--use_cpu",
                "--report_to",
                "none",
                "--save_strategy",
                "no",
                "--skip_eval",
                "--max_length",
                "256",
                "--warmup_steps",
                "0",
                "--disable_tqdm",
                "true",
            ]
        )
    assert not (out / "model.safetensors").exists() and not (out / ".rklu-staging").exists()
    assert not (out / RUN_LOCK).exists()  # released on the way out


# ---- 2. run fingerprint ----------------------------------------------------------------------------------------------


def test_a_finished_run_of_another_method_is_refused(tmp_path, tiny_tokenizer, qa):
    first = trainer_for(tmp_path, tiny_tokenizer, qa, "ga")
    first.train()
    first.save_model()
    assert json.loads((tmp_path / "out" / RUN_RECORD).read_text())["status"] == "finished"
    with pytest.raises(RunConflictError, match=r"(?s)method\.method: 'ga' recorded, 'npo' now.*--overwrite_output_dir"):
        trainer_for(tmp_path, tiny_tokenizer, qa, "npo")
    # the same run again is accepted, and --overwrite_output_dir starts over
    trainer_for(tmp_path, tiny_tokenizer, qa, "ga")
    again = trainer_for(tmp_path, tiny_tokenizer, qa, "npo", overwrite_output_dir=True)
    again.train()
    assert json.loads((tmp_path / "out" / RUN_RECORD).read_text())["fingerprint"]["method"]["method"] == "npo"


def test_another_base_model_or_forget_set_is_refused(tmp_path, tiny_tokenizer, qa):
    trainer_for(tmp_path, tiny_tokenizer, qa, "ga").train()
    with pytest.raises(RunConflictError, match="base_model: another model"):
        trainer_for(tmp_path, tiny_tokenizer, qa, "ga", model=build_tiny_model(tiny_tokenizer, seed=1))
    with pytest.raises(RunConflictError, match="data.forget_sha256"):
        trainer_for(tmp_path, tiny_tokenizer, qa, "ga", forget=qa[0].select(range(1, 8)))
    with pytest.raises(RunConflictError, match="training.learning_rate: 0.001 recorded, 0.002 now"):
        trainer_for(tmp_path, tiny_tokenizer, qa, "ga", learning_rate=2e-3)


def test_folder_with_checkpoints_but_no_record_is_refused(tmp_path, tiny_tokenizer, qa):
    (tmp_path / "out" / "checkpoint-3").mkdir(parents=True)
    with pytest.raises(RunConflictError, match="checkpoint-3 but no run record"):
        trainer_for(tmp_path, tiny_tokenizer, qa, "ga")


def test_augmented_model_is_reused_only_with_the_same_fingerprint(tmp_path, tiny_tokenizer, qa):
    trainer_for(tmp_path, tiny_tokenizer, qa, "rklu", max_steps=1).train()
    augmented = tmp_path / "out.augmented"
    marker = augmented / "rklu_augmented.json"
    assert marker.is_file() and not (tmp_path / "out" / "augmented").exists()
    built = marker.stat().st_mtime_ns
    # another run pointed at the same augmented_dir: same settings -> reused, other settings -> refused
    trainer_for(tmp_path, tiny_tokenizer, qa, "rklu", name="other", augmented_dir=str(augmented), max_steps=1).train()
    assert marker.stat().st_mtime_ns == built
    with pytest.raises(RunConflictError, match="augment.learning_rate: 0.001 recorded, 0.002 now"):
        trainer_for(
            tmp_path, tiny_tokenizer, qa, "rklu", name="third", augmented_dir=str(augmented), augment_learning_rate=2e-3
        ).train()
    # a given augmented model made from another base model is refused before any work
    with pytest.raises(ValueError, match="made for another run"):
        trainer_for(
            tmp_path,
            tiny_tokenizer,
            qa,
            "ta",
            name="ta",
            augmented_model_path=str(augmented),
            model=build_tiny_model(tiny_tokenizer, seed=3),
        )


def test_dataset_fingerprint(tiny_tokenizer, qa):
    fp = build_unlearning_dataset(tiny_tokenizer, qa[0], qa[1], max_length=256).fingerprint()
    assert fp["forget_items"] == 8 and fp["retain_items"] == 16 and len(fp["forget_sha256"]) == 64
    other = build_unlearning_dataset(tiny_tokenizer, qa[0].select(range(7)), max_length=256).fingerprint()
    assert other["forget_sha256"] != fp["forget_sha256"] and other["retain_sha256"] is None


# ---- 3. validation before any model is loaded --------------------------------------------------------------------


@pytest.fixture
def data_copy(tmp_path, tofu_dir):
    """A TOFU folder of links to the shared files, to break one file at a time."""
    folder = tmp_path / "tofu"
    folder.mkdir()
    for file in tofu_dir.glob("*.jsonl"):
        (folder / file.name).symlink_to(file)
    return folder


def unlearn(tmp_path, data_dir, *extra):
    """The unlearn script with a model folder that cannot be loaded (a config.json of nothing): any failure is a
    validation failure."""
    (tmp_path / "no-model-here").mkdir(exist_ok=True)
    (tmp_path / "no-model-here" / "config.json").write_text("{}")
    return unlearn_script.main(
        argv=[
            "--model",
            str(tmp_path / "no-model-here"),
            "--data_dir",
            str(data_dir),
            "--output_dir",
            str(tmp_path / "o"),
            "--use_cpu",
            "--report_to",
            "none",
            *extra,
        ]
    )


def replace(folder: Path, name: str, text: str) -> Path:
    (folder / name).unlink()
    (folder / name).write_text(text)
    return folder / name


@pytest.mark.parametrize(
    "extra,breaks,error,match",
    [
        ((), "world_facts_perturbed.jsonl", DataUnavailableError, "world_facts_perturbed"),
        ((), "forget10_perturbed.jsonl", DataUnavailableError, "forget10_perturbed"),
        (("--retain_eval", "{tmp}/missing.json"), None, FileNotFoundError, "does not exist"),
        (("--retain_eval", "{tmp}"), None, ValueError, "is a folder, not a file"),
        (("--retain_eval", "{tmp}/bad.json"), None, ValueError, "not valid JSON"),
        (("--retain_eval", "{tmp}/forget05.json"), None, ValueError, "no evaluation of forget10_perturbed"),
        (("--eval_batch_size", "0"), None, ValueError, "eval_batch_size must be >= 1"),
        (("--eval_max_items", "0"), None, ValueError, "eval_max_items must be >= 1"),
        (("--max_new_tokens", "0"), None, ValueError, "max_new_tokens must be >= 1"),
        (("--per_device_train_batch_size", "0"), None, ValueError, "per_device_train_batch_size must be >= 1"),
        (
            ("--method", "idk", "--refusal_file", "{tmp}/missing.txt"),
            None,
            FileNotFoundError,
            "missing.txt' does not exist",
        ),
        (("--model", "{tmp}/gone"), None, ModelLoadError, "gone' does not exist"),
        (("--augmented_model_path", "{tmp}/empty"), None, ValueError, "holds neither a model"),
        ((), "forget10.jsonl:", DataUnavailableError, "is empty"),
        (
            (),
            'forget10.jsonl:{"question": "q?", "answer": "a"}\n{"question": "q2?", "answer": null}\n',
            ValueError,
            "row 2: the 'answer' field is null",
        ),
    ],
)
def test_unlearn_script_validates_before_loading_a_model(tmp_path, data_copy, extra, breaks, error, match):
    (tmp_path / "bad.json").write_text("{not json")
    (tmp_path / "empty").mkdir()
    (tmp_path / "forget05.json").write_text(json.dumps({"sets": {"forget05_perturbed": {"items": {}}}}))
    if breaks is not None:
        name, _, text = breaks.partition(":")
        (data_copy / name).unlink()
        if _:
            (data_copy / name).write_text(text)
    with pytest.raises(error, match=match):
        unlearn(tmp_path, data_copy, *[e.format(tmp=tmp_path) for e in extra])
    assert not (tmp_path / "o").exists()


def test_finetune_script_rejects_unknown_eval_split(tmp_path, tofu_dir):
    (tmp_path / "none").mkdir()
    (tmp_path / "none" / "config.json").write_text("{}")  # looks like a model folder; never loaded
    with pytest.raises(ValueError, match=r"Unknown forget split\(s\) \['forget50'\]"):
        finetune_script.main(
            [
                "--model",
                str(tmp_path / "none"),
                "--data_dir",
                str(tofu_dir),
                "--output_dir",
                str(tmp_path / "o"),
                "--eval_forget_splits",
                "forget10,forget50",
                "--use_cpu",
            ]
        )
    assert not (tmp_path / "o").exists()


def test_eval_arguments_reject_zero():
    with pytest.raises(ValueError, match="eval_generation_batch_size must be >= 1"):
        TofuEvalArguments(eval_generation_batch_size=0)


# ---- 4. a kill while a checkpoint is written -------------------------------------------------------------------------


def test_resume_skips_an_incomplete_checkpoint(tmp_path, tiny_tokenizer, qa, caplog):
    overrides = dict(max_steps=3, save_strategy="steps", save_steps=1, save_total_limit=None)
    trainer_for(tmp_path, tiny_tokenizer, qa, **overrides).train()
    out = tmp_path / "out"
    (out / "checkpoint-3" / "trainer_state.json").write_text('{"global_step": 3, "log_hi')  # killed mid-write
    resumed = trainer_for(tmp_path, tiny_tokenizer, qa, **overrides)
    with caplog.at_level(logging.WARNING, logger="rklu_llm"):
        resumed.train(resume_from_checkpoint=True)
    assert resumed.state.global_step == 3
    assert "Skipping" in caplog.text and "checkpoint-3" in caplog.text and "unreadable" in caplog.text
    assert "Resuming from" in caplog.text and "checkpoint-2" in caplog.text
    assert checkpoint_problem(out / "checkpoint-3") is None  # written again, whole


def test_checkpoint_problems(tmp_path):
    folder = tmp_path / "checkpoint-5"
    folder.mkdir()
    assert "no trainer_state.json" in checkpoint_problem(folder)
    (folder / "trainer_state.json").write_text('{"global_step": 5}')
    assert "no model weights" in checkpoint_problem(folder)
    build = torch.nn.Linear(4, 4)
    from safetensors.torch import save_file

    save_file(build.state_dict(), folder / "model.safetensors")
    assert checkpoint_problem(folder) is None
    data = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[: len(data) // 2])  # killed mid-write
    assert "unreadable" in checkpoint_problem(folder)


# ---- 5. inputs are never written -------------------------------------------------------------------------------------


def test_paths_that_would_overwrite_an_input(tmp_path, tiny_model_dir):
    with pytest.raises(ValueError, match="is augmented_model_path"):
        UnlearnConfig(output_dir=str(tmp_path / "aug"), augmented_model_path=str(tmp_path / "aug"), use_cpu=True)
    with pytest.raises(ValueError, match="is inside augmented_model_path"):
        UnlearnConfig(output_dir=str(tmp_path / "aug" / "x"), augmented_model_path=str(tmp_path / "aug"), use_cpu=True)
    with pytest.raises(ValueError, match="augmented_dir .* overlaps output_dir"):
        UnlearnConfig(output_dir=str(tmp_path / "o"), augmented_dir=str(tmp_path / "o" / "aug"), use_cpu=True)
    with pytest.raises(ValueError, match="inside the input model's directory"):
        check_output_dir(tiny_model_dir / "unlearned", model_path=str(tiny_model_dir))
    with pytest.raises(ValueError, match="a folder holding the input model"):
        check_output_dir(tiny_model_dir.parent, model_path=str(tiny_model_dir))


# ---- 6. secrets ------------------------------------------------------------------------------------------------------


def test_hub_token_never_reaches_an_artefact(tmp_path, tiny_tokenizer, qa, capsys, caplog):
    trainer = trainer_for(tmp_path, tiny_tokenizer, qa, "rklu", hub_token=SECRET, save_strategy="steps", save_steps=1)
    trainer.train()
    trainer.save_model()
    assert trainer.args.hub_token == SECRET  # still there for push_to_hub
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert any(p.name == "training_args.bin" and "checkpoint-" in str(p) for p in files)
    assert any(p.name == "training_args.bin" and p.parent.name == "out" for p in files)
    leaking = [p for p in files if SECRET.encode() in p.read_bytes()]
    assert not leaking, leaking
    assert SECRET not in capsys.readouterr().out + caplog.text
    record = (tmp_path / "out" / RUN_RECORD).read_text()
    assert str(tmp_path) not in record  # portable paths only


# ---- 7. one run per output folder at a time ----------------------------------------------------------------------


def _hold_lock(output_dir, ready):
    acquire_run_lock(output_dir)
    ready.set()
    time.sleep(120)


def test_second_run_into_a_locked_folder_is_refused(tmp_path, tiny_tokenizer, qa, caplog):
    out = tmp_path / "out"
    with (
        held_elsewhere(_hold_lock, out) as holder,
        pytest.raises(RunConflictError, match=f"in use by another run \\(pid {holder.pid}"),
    ):
        trainer_for(tmp_path, tiny_tokenizer, qa).train()
    with caplog.at_level(logging.WARNING, logger="rklu_llm"):  # the dead holder's lock is taken over
        lock = acquire_run_lock(out)
    assert f"left by pid {holder.pid}" in caplog.text
    lock.release()
    assert not (out / RUN_LOCK).exists()


# ---- 8. gradient accumulation ---------------------------------------------------------------------------------------

ACCUMULATION_CASES = [
    ("ga", "none"),
    ("gd", "rt"),
    ("rklu", "none"),
    ("fklu", "kl"),
    ("idk", "none"),
    ("npo", "rt"),
    ("dpo", "none"),
]


def accumulated_gradient(tmp_path, tokenizer, qa, method, retain_mode, batch, steps, name):
    augmented = tmp_path / "augmented"  # built by the first call, given to the second: the same teacher for both
    where = dict(augmented_model_path=str(augmented)) if augmented.is_dir() else dict(augmented_dir=str(augmented))
    trainer = trainer_for(
        tmp_path,
        tokenizer,
        qa,
        method,
        retain_mode,
        name=name,
        per_device_train_batch_size=batch,
        gradient_accumulation_steps=steps,
        **where,
    )
    trainer.setup_frozen_models()
    collate = UnlearnCollator(tokenizer.pad_token_id)
    items = [trainer.train_dataset[i] for i in range(8)]
    batches = iter([collate(items[i : i + batch]) for i in range(0, 8, batch)])
    samples, counts = trainer.get_batch_samples(batches, steps, torch.device("cpu"))
    trainer.model.zero_grad()
    for inputs in samples:
        trainer.training_step(trainer.model, inputs, counts)
    return {n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("method,retain_mode", ACCUMULATION_CASES)
def test_accumulation_gives_the_gradient_of_one_batch(tmp_path, tiny_tokenizer, qa, method, retain_mode):
    """8 items in one micro-batch vs 2 micro-batches of 4 with different answer-token counts: same gradient, because
    each term is a sum over the accumulated batch divided by its item count (tokens; sequences for npo/dpo)."""
    one = accumulated_gradient(tmp_path, tiny_tokenizer, qa, method, retain_mode, 8, 1, "one")
    two = accumulated_gradient(tmp_path, tiny_tokenizer, qa, method, retain_mode, 4, 2, "two")
    assert one.keys() == two.keys() and one
    for name in one:
        torch.testing.assert_close(two[name], one[name], rtol=1e-4, atol=1e-7, msg=name)


def test_micro_batches_differ_in_answer_tokens(tiny_tokenizer, qa):
    """The premise of the test above: a mean of micro-batch means would differ from the mean over all tokens."""
    dataset = build_unlearning_dataset(tiny_tokenizer, qa[0], max_length=256)
    counts = [
        sum(sum(1 for t in dataset[i]["forget"]["labels"][1:] if t != -100) for i in range(j, j + 4)) for j in (0, 4)
    ]
    assert counts[0] != counts[1]


# ---- 9. losses upcast only the answer rows ---------------------------------------------------------------------------


def test_token_losses_upcast_only_answer_rows(monkeypatch):
    """token_nll / sequence_log_likelihood: same values as the full-tensor formulas, and never a float32 copy of the
    (B, T, V) logits: only the N answer rows are upcast."""
    torch.manual_seed(0)
    logits = torch.randn(3, 7, 11, dtype=torch.bfloat16, requires_grad=True)
    labels = torch.full((3, 7), -100)
    labels[0, 4:], labels[1, 2:5], labels[2, 6] = 3, 5, 9
    n = int((labels[:, 1:] != -100).sum())
    seen = []
    real = losses._upcast
    monkeypatch.setattr(losses, "_upcast", lambda t: (seen.append(tuple(t.shape)), real(t))[1])
    nll, seq = losses.token_nll(logits, labels), losses.sequence_log_likelihood(logits, labels)
    assert seen and all(shape == (n, 11) for shape in seen), seen
    flat = F.cross_entropy(logits[:, :-1].float().flatten(0, 1), labels[:, 1:].flatten(), reduction="none")
    torch.testing.assert_close(nll, flat.sum() / n)
    torch.testing.assert_close(seq, -flat.view(3, 6).sum(-1))
    assert losses.token_nll(logits, labels, num_items=1.0).item() == pytest.approx(nll.item() * n, rel=1e-6)


# ---- 10. lesser inputs ---------------------------------------------------------------------------------------------


def test_check_qa_names_the_row():
    with pytest.raises(ValueError, match="rows, row 3: the 'question' field is ''"):
        check_qa(Dataset.from_dict({"question": ["a?", "b?", ""], "answer": ["x", "y", "z"]}), "rows")


def test_empty_jsonl(tmp_path):
    (tmp_path / "forget01.jsonl").write_text("\n")
    with pytest.raises(DataUnavailableError, match="is empty"):
        load_tofu("forget01", tmp_path)


def test_augmented_model_with_another_vocabulary(tmp_path, tiny_tokenizer, qa):
    other = build_tiny_model(tiny_tokenizer)
    other.resize_token_embeddings(len(tiny_tokenizer) + 7)
    other.save_pretrained(tmp_path / "aug")
    with pytest.raises(ValueError, match=f"vocab_size is {len(tiny_tokenizer) + 7}, the model's {len(tiny_tokenizer)}"):
        trainer_for(tmp_path, tiny_tokenizer, qa, "rklu", augmented_model_path=str(tmp_path / "aug"))


def test_adapter_whose_base_is_gone(tmp_path, tiny_model_dir, tiny_tokenizer):
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    base.save_pretrained(tmp_path / "base")
    adapter = get_peft_model(AutoModelForCausalLM.from_pretrained(tmp_path / "base"), lora_config(r=2, alpha=4))
    adapter.save_pretrained(tmp_path / "adapter")
    tiny_tokenizer.save_pretrained(tmp_path / "adapter")
    for file in (tmp_path / "base").iterdir():
        file.unlink()
    (tmp_path / "base").rmdir()
    with pytest.raises(ModelLoadError, match=r"LoRA adapter whose base model .*base' .*does not exist"):
        load_model(str(tmp_path / "adapter"))  # load_model checks the source first too
    with pytest.raises(ModelLoadError, match=r"LoRA adapter whose base model .*base' .*does not exist"):
        check_model_source(str(tmp_path / "adapter"))  # what the scripts check before loading anything


# ---- issue 12: the augmented model stays out of the unlearned model's folder; checkpoints kept -----------------------


def test_keep_augmented_false_deletes_it_after_the_save(tmp_path, tiny_tokenizer, qa):
    trainer = trainer_for(tmp_path, tiny_tokenizer, qa, "rklu", keep_augmented=False, max_steps=1)
    trainer.train()
    assert (tmp_path / "out.augmented" / "rklu_augmented.json").is_file()
    trainer.save_model()
    assert not (tmp_path / "out.augmented").exists()
    assert UnlearnConfig(output_dir=str(tmp_path / "d"), use_cpu=True).save_total_limit == 1


# ---- issue 13: frozen models loaded from the model's path ------------------------------------------------------------


def test_frozen_original_is_loaded_from_the_models_path(tmp_path, tiny_model_dir, tiny_tokenizer, qa):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    trainer = trainer_for(tmp_path, tiny_tokenizer, qa, "npo", model=model)
    assert trainer.reference_source == "path"
    batch = UnlearnCollator(tiny_tokenizer.pad_token_id)([trainer.train_dataset[i] for i in range(2)])["forget"]
    with torch.no_grad():
        want = AutoModelForCausalLM.from_pretrained(tiny_model_dir)(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
        ).logits
    torch.testing.assert_close(trainer.frozen_logits("original", trainer.model, batch), want)
    changed = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    with torch.no_grad():
        next(changed.parameters()).add_(0.5)  # no longer what its path holds: deep-copied instead
    copied = trainer_for(tmp_path, tiny_tokenizer, qa, "npo", name="changed", model=changed)
    assert copied.reference_source == "deepcopy"
