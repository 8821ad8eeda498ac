"""benchmarks/tofu.py end to end on a tiny model and the CPU: fine-tunes, unlearning runs with forget quality followed
every epoch, full evaluations of the peak and final epochs, the results files, and resuming."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow


def run_benchmark(tiny_model_dir: Path, tofu_dir: Path, work: Path, results: Path, *extra: str,
                  methods: str = "rklu,ga,ta") -> str:
    command = [
        sys.executable, str(REPO / "benchmarks" / "tofu.py"), "--cpu", "--model", str(tiny_model_dir),
        "--data_dir", str(tofu_dir), "--work_dir", str(work), "--results_dir", str(results), "--splits", "forget01",
        "--methods", methods, "--train_max_items", "64", "--finetune_epochs", "1", "--unlearn_epochs", "2",
        "--augment_epochs", "1", "--batch_size", "16", "--eval_batch_size", "16", "--generation_batch_size", "64",
        "--eval_max_items", "8", "--max_new_tokens", "4", "--unlearn_lr", "1e-3", *extra,
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, f"--- stdout ---\n{done.stdout[-3000:]}\n--- stderr ---\n{done.stderr[-6000:]}"
    return done.stdout


def test_tofu_benchmark_on_a_tiny_model(tmp_path, tiny_model_dir, tofu_dir):
    work, results = tmp_path / "work", tmp_path / "results"
    run_benchmark(tiny_model_dir, tofu_dir, work, results)

    data = json.loads((results / "tofu_smollm2.json").read_text())
    assert data["device"] == "cpu" and data["settings"]["track_peak"] == "all"
    assert {r["name"] for r in data["references"]} == {"forget01_original", "forget01_oracle_retain99"}
    original = next(r for r in data["references"] if r["method"] == "original")
    assert original["forget01_forget_quality"] is not None  # the original against the oracle
    runs = {r["name"]: r for r in data["runs"]}
    assert set(runs) == {"forget01_rklu", "forget01_ga", "forget01_ta"}
    for name in ("forget01_rklu", "forget01_ga"):
        run = runs[name]
        assert run["evaluation"] == "track_peak"
        assert [row["epoch"] for row in run["epochs"]] == [1.0, 2.0]
        assert all(row["forget01_forget_quality"] is not None for row in run["epochs"])
        assert all(row["model_utility"] is None for row in run["epochs"])  # per epoch: forget set only
        best = max(row["forget01_forget_quality"] for row in run["epochs"])
        assert run["peak"]["forget01_forget_quality"] == pytest.approx(best)
        assert run["final"]["epoch"] == 2.0 and run["final"]["forget01_forget_quality"] == pytest.approx(
            run["epochs"][-1]["forget01_forget_quality"])
        for row in (run["peak"], run["final"]):
            assert 0 <= row["model_utility"] <= 1
        assert run["train_seconds"] > 0 and run["eval_seconds"] > 0
    assert runs["forget01_rklu"]["augment_seconds"] > 0
    ta = runs["forget01_ta"]  # a weight edit, no epochs: evaluated once
    assert ta["evaluation"] == "final" and ta["peak"] is None and ta["final"]["model_utility"] is not None

    table = (results / "tofu_smollm2.md").read_text()
    assert "benchmarks/tofu.py --cpu --model" in table
    assert table.count("| forget01 |") == 5  # original, oracle, three runs
    assert (results / "tofu_smollm2_fq_vs_mu.png").stat().st_size > 10_000

    # a second invocation reuses every finished fine-tune and run
    records = {p: p.stat().st_mtime_ns for p in (work / "runs").glob("*.json")}
    stdout = run_benchmark(tiny_model_dir, tofu_dir, work, results)
    assert "done in" in stdout
    assert {p: p.stat().st_mtime_ns for p in (work / "runs").glob("*.json")} == records
    assert len(json.loads((work / "invocations.json").read_text())) == 2
    assert "; then " in (results / "tofu_smollm2.md").read_text()


def test_tofu_benchmark_with_lora_on_the_cpu(tmp_path, tiny_model_dir, tofu_dir):
    """The no-GPU variant: LoRA fine-tunes (merged), a LoRA augmented adapter, a LoRA student; ta edits full weights."""
    work, results = tmp_path / "work", tmp_path / "results"
    run_benchmark(tiny_model_dir, tofu_dir, work, results, "--lora", "--augment_lora", methods="rklu,ta")
    assert (work / "models" / "full" / "model.safetensors").is_file()  # the fine-tune's adapter was merged
    assert (work / "augmented" / "forget01" / "adapter_config.json").is_file()
    data = json.loads((results / "tofu_smollm2.json").read_text())
    runs = {r["name"]: r for r in data["runs"]}
    assert runs["forget01_rklu"]["evaluation"] == "track_peak" and runs["forget01_rklu"]["peak"] is not None
    assert runs["forget01_ta"]["final"]["model_utility"] is not None
