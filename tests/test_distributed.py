"""The sharded path on CPU processes: FSDP 2 over gloo (two processes, ``torchrun``), for RKL-U (original and
augmented models frozen and sharded beside the student) and GA with the retain KL term. The first step's loss equals
a single-process run's, parameters and gradients stay sharded, the saved model is one full state dict that plain
``transformers`` loads, holding the student after its step and nothing of the frozen models. A launch that asks for
FSDP or DeepSpeed where accelerate would not shard stops with a clear error before any model is loaded.

accelerate 1.16 does not engage FSDP on CPUs, so ``tests/distributed/fsdp_cpu.py`` shards with accelerate's and TRL's
own FSDP 2 functions and then runs the toolkit's code (see its docstring). DeepSpeed is not exercised here: its CPU
backend needs Intel's oneCCL bindings, which this project's CI does not install.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from rklu_llm import UnlearnConfig, UnlearnTrainer, build_unlearning_dataset, load_tofu
from rklu_llm.data.qa import UnlearnCollator
from rklu_llm.distributed import ShardingNotEngaged, check_sharding_possible, sharding_requested

HARNESS = Path(__file__).resolve().parent / "distributed" / "fsdp_cpu.py"
ITEMS = 8  # 4 per process
LR = 0.5  # plain SGD: the step is lr x gradient, so the saved weights compare the gradients too
#: float32 on the same machine; the sharded forward reduces in another order than the whole one
TOLERANCE = 1e-5


def config(output_dir: Path, method: str, retain_mode: str, augmented: Path | None = None) -> dict:
    return dict(
        output_dir=str(output_dir),
        method=method,
        retain_mode=retain_mode,
        use_cpu=True,
        per_device_train_batch_size=ITEMS // 2,
        max_steps=1,
        save_strategy="no",
        report_to="none",
        seed=0,
        disable_tqdm=True,
        learning_rate=LR,
        augment_epochs=1,
        augment_max_steps=2,
        augment_learning_rate=1e-2,
        max_length=256,
        augmented_model_path=None if augmented is None else str(augmented),
    )


def trainer_for(settings: dict, model_dir: Path, tofu_dir: Path) -> UnlearnTrainer:
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    args = UnlearnConfig(**settings)
    forget = load_tofu("forget01", tofu_dir).select(range(ITEMS))
    retain = load_tofu("retain99", tofu_dir).select(range(ITEMS)) if args.retain_mode != "none" else None
    dataset = build_unlearning_dataset(tokenizer, forget, retain, None, max_length=args.max_length)
    return UnlearnTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer)


def single_process_step(settings: dict, model_dir: Path, tofu_dir: Path) -> tuple[float, dict[str, torch.Tensor]]:
    """The whole batch in one process: the loss and the student's weights after one SGD step."""
    trainer = trainer_for(settings, model_dir, tofu_dir)
    trainer.setup_frozen_models()
    batch = UnlearnCollator(trainer.processing_class.pad_token_id)([trainer.train_dataset[i] for i in range(ITEMS)])
    student = trainer.model
    student.train()
    loss = trainer.compute_loss(student, batch, num_items_in_batch=trainer.count_items([batch]))
    loss.backward()
    torch.optim.SGD(student.parameters(), lr=LR).step()
    return float(loss.detach()), {k: v.detach().clone() for k, v in student.state_dict().items()}


@pytest.fixture(scope="module")
def augmented(tmp_path_factory, tiny_model_dir, tofu_dir) -> Path:
    """RKL-U's augmented model, built once in this process (phase 1 is plain fine-tuning, not under test here)."""
    out = tmp_path_factory.mktemp("augment") / "run"
    trainer = trainer_for(config(out, "rklu", "none"), tiny_model_dir, tofu_dir)
    return trainer.augmented_model_dir()


@pytest.mark.slow
def test_fsdp2_on_two_cpu_processes_matches_one_process(tmp_path, tiny_model_dir, tofu_dir, augmented):
    cases = {
        ("rklu", "none"): config(tmp_path / "rklu", "rklu", "none", augmented),
        ("ga", "kl"): config(tmp_path / "ga_kl", "ga", "kl"),
    }
    spec = [
        {
            "config": settings,
            "model": str(tiny_model_dir),
            "data": str(tofu_dir),
            "items": ITEMS,
            "lr": LR,
            "report": str(tmp_path / f"{method}_{retain}.json"),
        }
        for (method, retain), settings in cases.items()
    ]
    (tmp_path / "cases.json").write_text(json.dumps(spec))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    env.pop("ACCELERATE_USE_FSDP", None)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    done = subprocess.run(
        [*command, str(HARNESS), str(tmp_path / "cases.json")], env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, f"{done.stdout[-3000:]}\n{done.stderr[-6000:]}"

    for (method, retain), settings in cases.items():
        report = json.loads((tmp_path / f"{method}_{retain}.json").read_text())
        ranks = report["ranks"]
        assert [r["rank"] for r in ranks] == [0, 1]
        for r in ranks:
            # really sharded, before and after the step: every parameter a DTensor, each process holding half
            for state in ("student_before", "student_after"):
                s = r[state]
                assert s["dtensors"] == s["parameters"] > 0 and s["local_numel"] * 2 == s["global_numel"], s
            assert r["grad_is_sharded"]
            wanted = {"original", "augmented"} if method == "rklu" else {"original"}
            assert set(r["frozen"]) == wanted
            for s in r["frozen"].values():
                assert s["dtensors"] == s["parameters"] > 0 and s["local_numel"] * 2 == s["global_numel"], s

        # the loss of the whole batch: each process divides its sum by half the global count, so the mean of the two
        single = {**settings, "output_dir": str(tmp_path / f"single_{method}")}
        loss, weights = single_process_step(single, tiny_model_dir, tofu_dir)
        sharded_loss = sum(r["loss"] for r in ranks) / 2
        assert abs(sharded_loss - loss) <= TOLERANCE, (method, sharded_loss, loss)

        # one full state dict, loadable by plain transformers, equal to the single process's student after its step
        out = Path(settings["output_dir"])
        saved = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
        for name, value in saved.state_dict().items():
            torch.testing.assert_close(value, weights[name], rtol=0, atol=TOLERANCE, msg=name)
        original = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).state_dict()
        assert any(not torch.equal(saved.state_dict()[k], original[k]) for k in original), "the step was not saved"
        # nothing of the frozen models: one weights file of the student's own tensor names, no adapter, no copies
        weight_files = sorted(p.name for p in out.rglob("*.safetensors"))
        assert weight_files == ["model.safetensors"], weight_files
        assert set(load_file(out / "model.safetensors")) <= set(original)
        assert not list(out.rglob("adapter_*")) and not (out / ".rklu-staging").exists()


@pytest.mark.parametrize(
    "env,extra,kind",
    [
        ({"ACCELERATE_USE_FSDP": "true"}, {}, "FSDP"),
        ({"ACCELERATE_USE_DEEPSPEED": "true"}, {}, "DeepSpeed"),
        ({}, {"fsdp": "full_shard"}, "FSDP"),
    ],
)
def test_sharding_asked_for_on_cpus_is_refused_before_loading(tmp_path, monkeypatch, env, extra, kind):
    for name in ("ACCELERATE_USE_FSDP", "ACCELERATE_USE_DEEPSPEED"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ShardingNotEngaged, match=f"asks for {kind} sharding.*use_cpu is set.*cpu.yaml"):
        UnlearnConfig(output_dir=str(tmp_path / "out"), method="ga", use_cpu=True, report_to="none", **extra)


def test_sharding_without_an_accelerator_is_refused(monkeypatch):
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")

    class Args:
        use_cpu = False
        fsdp = None
        deepspeed = None

    assert sharding_requested(Args()) == "FSDP"
    monkeypatch.setattr("rklu_llm.distributed._accelerator_available", lambda: False)
    with pytest.raises(ShardingNotEngaged, match="no GPU or other accelerator"):
        check_sharding_possible(Args())
    monkeypatch.setattr("rklu_llm.distributed._accelerator_available", lambda: True)
    check_sharding_possible(Args())  # on GPUs: let accelerate shard (the trainer checks that it did)


def test_trainer_refuses_a_sharding_request_that_accelerate_did_not_honour(
    tmp_path, tiny_tokenizer, tofu_dir, monkeypatch
):
    """The request passed the early check (say, a GPU machine) but accelerate set the run up without sharding."""
    from conftest import build_tiny_model

    for name in ("ACCELERATE_USE_FSDP", "ACCELERATE_USE_DEEPSPEED"):
        monkeypatch.delenv(name, raising=False)
    args = UnlearnConfig(output_dir=str(tmp_path / "out"), method="ga", use_cpu=True, report_to="none")
    dataset = build_unlearning_dataset(tiny_tokenizer, load_tofu("forget01", tofu_dir).select(range(2)), max_length=256)
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")  # from here on the launch "asks" for FSDP
    with pytest.raises(ShardingNotEngaged, match="accelerate set this run up as"):
        UnlearnTrainer(
            model=build_tiny_model(tiny_tokenizer), args=args, train_dataset=dataset, processing_class=tiny_tokenizer
        )
