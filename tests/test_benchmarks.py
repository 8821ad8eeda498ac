"""benchmarks/tofu.py end to end on a tiny model and the CPU: fine-tunes, unlearning runs with forget quality followed
every epoch, full evaluations of the peak and final epochs, a learning-rate grid and seeds, the plan and its cost
estimate, the deadline, the results files, resuming, the CPU mini-run; and the plan's pure parts in process."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import load_benchmark

from rklu_llm import METHODS
from rklu_llm.eval.stopping import first_peak
from rklu_llm.methods import Method as MethodSpec

REPO = Path(__file__).resolve().parents[1]


def _argv(tiny_model_dir: Path, tofu_dir: Path, work: Path, *extra: str, methods: str = "rklu,ga,ta") -> list[str]:
    return [
        "--cpu",
        "--model",
        str(tiny_model_dir),
        "--data_dir",
        str(tofu_dir),
        "--work_dir",
        str(work),
        "--splits",
        "forget01",
        "--methods",
        methods,
        "--finetune_epochs",
        "1",
        "--unlearn_epochs",
        "2",
        "--augment_epochs",
        "1",
        "--batch_size",
        "16",
        "--eval_batch_size",
        "16",
        "--generation_batch_size",
        "64",
        "--eval_max_items",
        "8",
        "--max_new_tokens",
        "4",
        "--unlearn_lrs",
        "1e-3",
        *extra,
    ]


def run_benchmark(tiny_model_dir: Path, tofu_dir: Path, work: Path, *extra: str, methods: str = "rklu,ga,ta") -> str:
    command = [
        sys.executable,
        str(REPO / "benchmarks" / "tofu.py"),
        *_argv(tiny_model_dir, tofu_dir, work, *extra, methods=methods),
    ]
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "OMP_NUM_THREADS": "1",
    }
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, f"--- stdout ---\n{done.stdout[-3000:]}\n--- stderr ---\n{done.stderr[-6000:]}"
    return done.stdout


@pytest.mark.slow
def test_tofu_benchmark_on_a_tiny_model(tmp_path, tiny_model_dir, tofu_dir, capsys):
    work, results = tmp_path / "work", tmp_path / "results"
    run_benchmark(tiny_model_dir, tofu_dir, work, "--results_dir", str(results), "--train_max_items", "64")

    data = json.loads((results / "tofu_smollm2.json").read_text())
    assert data["device"] == "cpu" and data["settings"]["track_peak"] == "all" and data["protocol"] == "all"
    assert {r["name"] for r in data["references"]} == {"forget01_original", "forget01_oracle_retain99"}
    original = next(r for r in data["references"] if r["method"] == "original")
    assert original["forget01_forget_quality"] is not None  # the original against the oracle
    runs = {r["name"]: r for r in data["runs"]}
    assert set(runs) == {"forget01_rklu_lr0.001_s0", "forget01_ga_lr0.001_s0", "forget01_ta_lr0.001_s0"}
    for name in ("forget01_rklu_lr0.001_s0", "forget01_ga_lr0.001_s0"):
        run = runs[name]
        assert run["evaluation"] == "track_peak" and run["lr"] == 1e-3 and run["seed"] == 0
        assert [row["epoch"] for row in run["epochs"]] == [1.0, 2.0]
        assert all(row["forget01_forget_quality"] is not None for row in run["epochs"])
        assert all(row["model_utility"] is None for row in run["epochs"])  # per epoch: forget set only
        best = max(row["forget01_forget_quality"] for row in run["epochs"])
        assert run["peak"]["forget01_forget_quality"] == pytest.approx(best)
        assert run["final"]["epoch"] == 2.0 and run["final"]["forget01_forget_quality"] == pytest.approx(
            run["epochs"][-1]["forget01_forget_quality"]
        )
        for row in (run["peak"], run["final"]):
            assert 0 <= row["model_utility"] <= 1
        assert run["train_seconds"] > 0 and run["eval_seconds"] > 0
        assert len(run["fq_eval_seconds"]) == 2 and 1 <= len(run["full_eval_seconds"]) <= 2
        assert run["forget_items"] == 40 and run["epochs_trained"] == 2.0
    assert runs["forget01_rklu_lr0.001_s0"]["augment_seconds"] > 0
    ta = runs["forget01_ta_lr0.001_s0"]  # a weight edit, no epochs: evaluated once
    assert ta["evaluation"] == "final" and ta["peak"] is None and ta["final"]["model_utility"] is not None

    table = (results / "tofu_smollm2.md").read_text()
    assert "benchmarks/tofu.py --cpu --model" in table and "protocol **all**" in table
    assert table.count("| forget01 |") == 5  # original, oracle, three runs
    assert (results / "tofu_smollm2_fq_vs_mu.png").stat().st_size > 10_000
    assert (results / "tofu_smollm2_epochs.png").stat().st_size > 10_000

    # a second command: a grid and two seeds for ga, with a deadline that lets exactly one new run start
    records = {p: p.stat().st_mtime_ns for p in (work / "runs").glob("*.json")}
    grid = (
        "--methods",
        "ga",
        "--unlearn_lrs",
        "1e-3,2e-3",
        "--seeds",
        "0,1",
        "--results_dir",
        str(results),
        "--train_max_items",
        "64",
    )
    stdout = run_benchmark(tiny_model_dir, tofu_dir, work, "--deadline_s", "0", *grid[2:], methods="ga")
    assert "deadline: unlearn forget01 forget01_ga_lr0.002_s0 not started" in stdout and "done in" in stdout
    assert {p: p.stat().st_mtime_ns for p in records} == records  # finished runs are not redone
    assert {p.name for p in (work / "runs").glob("*.json")} - {p.name for p in records} == {
        "forget01_ga_lr0.001_s1.json"
    }
    data = json.loads((results / "tofu_smollm2.json").read_text())
    ga = next(g for g in data["groups"] if g["method"] == "ga" and g["lr"] == 1e-3)
    assert ga["seeds"] == [0, 1] and ga["mu_final_std"] is not None
    finals = [r["final"]["model_utility"] for r in data["runs"] if r["method"] == "ga"]
    assert ga["mu_final"] == pytest.approx(sum(finals) / 2)
    table = (results / "tofu_smollm2.md").read_text()
    assert "| forget01 | ga | none | 0.001 | 2 |" in table and " ± " in table and "; then " in table
    assert len(json.loads((work / "invocations.json").read_text())) == 2

    # the plan (in process: no model work): the two runs left, estimated from this work dir's measurements
    bench = load_bench()
    argv = _argv(tiny_model_dir, tofu_dir, work, *grid[2:], methods="ga")
    bench.main([*argv, "--plan"])
    stdout = capsys.readouterr().out
    assert stdout.count(" done") == 4 and "forget01_ga_lr0.002_s1" in stdout
    assert "train:ga:none: work_dir" in stdout and "full_eval: work_dir" in stdout
    # what the plan computes, not its rounded printout (a fast machine prints 0.0 minutes for these tiny runs)
    args = bench.parse([*argv, "--plan"])
    args.data = bench.mini_data(args)
    todo = bench.todo_list(args)
    seconds, _ = bench.plan_estimates(args, todo)
    left = [s for item, s in zip(todo, seconds) if not bench.is_done(args, item)]
    assert len(left) == 2 and all(s is not None and s > 0 for s in left)
    assert all(s == 0 for item, s in zip(todo, seconds) if bench.is_done(args, item))
    assert f"Estimated CPU minutes left: {sum(seconds) / 60:.1f}" in stdout
    assert len(list((work / "runs").glob("*.json"))) == 4

    # other settings on the same work dir are refused before any work
    with pytest.raises(SystemExit, match="other settings.*unlearn_epochs"):
        bench.main([*argv, "--unlearn_epochs", "3"])


@pytest.mark.slow
def test_tofu_benchmark_mini_run_with_lora_on_the_cpu(tmp_path, tiny_model_dir, tofu_dir):
    """The no-GPU variant: forget01 + 32 retain items, LoRA fine-tunes (merged), a LoRA augmented adapter, a LoRA
    student; ta edits full weights; results in the work dir; TOFU's item protocol."""
    work = tmp_path / "work"
    run_benchmark(
        tiny_model_dir,
        tofu_dir,
        work,
        "--lora",
        "--augment_lora",
        "--retain_subset",
        "32",
        "--protocol",
        "tofu",
        "--audit",
        "membership,extraction",
        "--holdout_rule",
        "--utility_retain_items",
        "6",
        "--augment_lr",
        "unlearn",
        methods="rklu,ta",
    )
    data = work / "data-forget01-retain32-utility6"
    assert len((data / "full.jsonl").read_text().splitlines()) == 32 + 40
    learned = [json.loads(line)["question"] for line in (data / "retain99.jsonl").read_text().splitlines()]
    assert len(learned) == 32
    utility = [json.loads(line)["question"] for line in (data / "retain_perturbed.jsonl").read_text().splitlines()]
    assert len(utility) == 6 and set(utility) <= set(learned)  # utility's retain part: items the original learned
    metrics = json.loads((work / "models" / "full" / "train_metrics.json").read_text())
    assert metrics["train_items"] == 72
    assert (work / "models" / "full" / "model.safetensors").is_file()  # the fine-tune's adapter was merged
    # --augment_lr unlearn: the augmented adapter of the run's lr, trained at that lr, shared by rklu and ta
    assert (work / "augmented" / "forget01_s0_lr0.001" / "adapter_config.json").is_file()
    assert json.loads((work / "augmented" / "forget01_s0_lr0.001.json").read_text())["lr"] == 0.001
    results = work / "results"  # --cpu: never the committed results folder
    data = json.loads((results / "tofu_smollm2.json").read_text())
    runs = {r["name"]: r for r in data["runs"]}
    rklu = runs["forget01_rklu_lr0.001_s0"]
    assert rklu["evaluation"] == "track_peak" and rklu["peak"] is not None and rklu["protocol"] == "tofu"
    # the first peak of forget quality (the RKL-U paper's epoch), fully evaluated, and the teacher check
    fq = [row["forget01_forget_quality"] for row in rklu["epochs"]]
    assert rklu["first_peak_epoch"] == rklu["epochs"][first_peak(fq)]["epoch"]
    assert rklu["first_peak"]["epoch"] == rklu["first_peak_epoch"] and rklu["first_peak"]["model_utility"] is not None
    assert rklu["teacher_check"]["verdict"] in ("ok", "weak")
    assert runs["forget01_ta_lr0.001_s0"]["final"]["model_utility"] is not None
    table = (results / "tofu_smollm2.md").read_text()
    assert "NOT the benchmark" in table and "protocol **tofu**" in table
    # --audit: every final model, the original and the oracle (privleak's reference) in a second table
    for run in runs.values():
        assert 0 <= run["audit"]["mia_auc_min_k"] <= 1 and 0 <= run["audit"]["extraction_strength"] <= 1
    oracle = json.loads((work / "audits" / "forget01_oracle_retain99" / "audit_eval.json").read_text())
    assert rklu["audit"]["privleak"] == pytest.approx(
        ((1 - rklu["audit"]["mia_auc_min_k"]) - (1 - oracle["membership"]["auc"]["min_k"]))
        / (1 - oracle["membership"]["auc"]["min_k"] + 1e-10)
        * 100
    )
    assert {r["method"] for r in data["references"] if r["audit"]} == {"original", "oracle (retain99)"}
    assert "| min-k% AUC | privleak |" in table and "| forget01 | rklu | none | 0.001 |" in table
    # --holdout_rule: every epoch carries the holdout signal; the rule's epoch is fully evaluated and tabled
    assert all(0 <= row["holdout_ks_p"] <= 1 for row in rklu["epochs"])
    assert rklu["selected_epoch"] in [row["epoch"] for row in rklu["epochs"]]
    assert rklu["selected"]["epoch"] == rklu["selected_epoch"] and rklu["selected"]["model_utility"] is not None
    assert "| rule epoch | FQ at rule epoch |" in table


# ---------------------------------------------------------------------------------------------------------------------
# The plan's pure parts, in process
# ---------------------------------------------------------------------------------------------------------------------


def load_bench():
    """benchmarks/tofu.py as a module."""
    return load_benchmark("tofu")


@pytest.fixture(scope="module")
def bench():
    return load_bench()


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--utility_retain_items", "10"], "needs N >= 1 and --retain_subset"),
        (["--retain_subset", "20", "--utility_retain_items", "0"], "needs N >= 1 and --retain_subset"),
    ],
)
def test_utility_subset_needs_the_retain_subset(bench, tmp_path, tofu_dir, extra, message):
    argv = ["--data_dir", str(tofu_dir), "--work_dir", str(tmp_path), "--splits", "forget01", "--cpu", "--plan"]
    with pytest.raises(SystemExit, match=message):
        bench.parse([*argv, *extra])


def test_new_language_model_methods_join_the_default_plan(bench, monkeypatch):
    monkeypatch.setitem(METHODS, "new_llm", MethodSpec("a new LLM loss", False, False, False, True, "none"))
    classifier = MethodSpec("a classifier loss", False, False, False, True, "none")
    if "batch" in MethodSpec._fields:
        classifier = classifier._replace(batch="classifier")
        monkeypatch.setitem(METHODS, "new_classifier", classifier)
    plan = bench.parse_methods(None)
    assert ("new_llm", "none") in plan and ("rklu", "rt") in plan and ("rklu", "none") in plan
    assert all(m != "new_classifier" for m, _ in plan)
    assert bench.parse_methods("new_llm,npo:rt,npo:rt") == [("new_llm", "none"), ("npo", "rt")]
    with pytest.raises(SystemExit, match="not a language-model method"):
        bench.parse_methods("nonsense")
    with pytest.raises(SystemExit, match="retain mode"):
        bench.parse_methods("ga:everything")


def test_plan_estimate_from_committed_numbers(bench, monkeypatch, tmp_path, tofu_dir):
    """Costs from a committed run when the work dir has none, the arithmetic written out."""
    committed = {
        "settings": {"unlearn_epochs": 5, "augment_epochs": 10, "finetune_epochs": 5},
        "runs": [  # forget01 has 40 items
            {
                "split": "forget01",
                "method": "ga",
                "retain_mode": "none",
                "train_seconds": 4.0,
                "augment_seconds": 0,
                "final": {"eval_seconds": 10.0},
            },
            {
                "split": "forget01",
                "method": "rklu",
                "retain_mode": "none",
                "train_seconds": 8.0,
                "augment_seconds": 2.0,
                "final": {"eval_seconds": 14.0},
            },
        ],
        "finetune_train_seconds": {"forget01_original": 40.0},
    }
    path = tmp_path / "committed.json"
    path.write_text(json.dumps(committed))
    monkeypatch.setattr(bench, "COMMITTED", path)
    args = bench.parse(
        [
            "--data_dir",
            str(tofu_dir),
            "--work_dir",
            str(tmp_path / "work"),
            "--splits",
            "forget01",
            "--methods",
            "ga,rklu",
            "--unlearn_epochs",
            "10",
            "--plan",
            "--cpu",
        ]
    )
    args.data = args.data_dir
    costs, sources = bench.measured_costs(args)
    # ga: 4 s / (40 items x 5 epochs) = 0.02 s per item-epoch; rklu 8 / 200 = 0.04; augmentation 2 / (40 x 10)
    assert costs["train:ga:none"] == pytest.approx(0.02) and costs["train:rklu:none"] == pytest.approx(0.04)
    assert costs["augment"] == pytest.approx(0.005) and costs["full_eval"] == pytest.approx(12.0)  # median 10, 14
    assert costs["finetune"] == pytest.approx(40.0 / (4000 * 5)) and "full_eval: H100" in sources
    seconds, _ = bench.plan_estimates(args, bench.todo_list(args))
    # forget-quality-only evaluation, not measured: 12 s x forget pairs / all pairs = 12 x 280 / (280 + 2800 + 868)
    fq_eval = 12.0 * 280 / (280 + 2800 + 4 * 217)
    # full evaluations of a tracked run, at most: the last, the best and the first-peak epochs (no --holdout_rule)
    ga = 0.02 * 40 * 10 + 10 * fq_eval + 3 * 12.0
    rklu = 0.04 * 40 * 10 + 0.005 * 40 * 10 + 10 * fq_eval + 3 * 12.0
    full = 40.0 / 20000 * 4000 * 5 + 12.0
    retain99 = 40.0 / 20000 * 3960 * 5 + 12.0
    assert seconds == pytest.approx([full, retain99, ga, rklu])
    assert not math.isnan(sum(seconds))
    args.holdout_rule = True  # the rule's epoch is evaluated in full too
    seconds, _ = bench.plan_estimates(args, bench.todo_list(args))
    assert seconds[2:] == pytest.approx([ga + 12.0, rklu + 12.0])


@pytest.mark.slow
def test_speed_benchmark_smoke_on_the_cpu(tmp_path, tiny_model_dir, tofu_dir):
    """benchmarks/speed.py runs without a GPU: step times as ratios to GA (no memory figures), RKL-U end to end for
    two augmentation lengths against retraining the oracle, with forget quality."""
    command = [
        sys.executable,
        str(REPO / "benchmarks" / "speed.py"),
        "--cpu",
        "--data_dir",
        str(tofu_dir),
        "--model",
        str(tiny_model_dir),
        "--base_model",
        str(tiny_model_dir),
        "--work_dir",
        str(tmp_path / "work"),
        "--results_dir",
        str(tmp_path),
        "--configs",
        "ga,fklu",
        "--steps",
        "2",
        "--warmup",
        "1",
        "--batch_size",
        "8",
        "--train_max_items",
        "16",
        "--end_to_end",
        "--augment_epochs",
        "1,2",
        "--unlearn_epochs",
        "1",
        "--finetune_epochs",
        "1",
    ]
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "OMP_NUM_THREADS": "1",
    }
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-6000:]
    data = json.loads((tmp_path / "speed_smollm2.json").read_text())
    rows = {r["config"]: r for r in data["rows"]}
    assert set(rows) == {"ga", "fklu (augmented = LoRA on the original)"}
    assert rows["ga"]["step_ratio_to_ga"] == 1.0 and all(
        r["steps_timed"] == 2 and r["peak_gib"] is None for r in rows.values()
    )
    e2e = data["end_to_end"]
    assert [r["augment_epochs"] for r in e2e["runs"]] == [1.0, 2.0]
    for run in e2e["runs"]:
        assert run["ratio"] == pytest.approx(run["rklu_forget10_seconds"] / e2e["retrain_retain90_seconds"])
        assert 0 <= run["forget_quality"] <= 1
    assert "| 2 |" in (tmp_path / "speed_smollm2.md").read_text()


def test_demo_settings_table_shows_saturation_and_old_rows_without_it(tmp_path):
    """A row written before the check reported saturation shows "-" in that column; a new row shows its share."""
    demo_settings = load_benchmark("demo_settings")
    row = {
        "source": "tofu",
        "teach": {},
        "settings": {},
        "forgotten_facts": "4/8",
        "kept_facts": ["9/9"],
        "kept_unchanged": [6],
        "states_another": 0,
        "forgotten_states_another": 0,
        "degenerate": 0,
        "meets_targets": False,
        "unlearn_seconds": 1.0,
    }
    old = {**row, "teacher_check": {"teacher_top1_true": 0.18}}
    demo_settings.write_results(tmp_path, [old])
    new = {**row, "teacher_check": {"teacher_top1_true": 0.24, "saturated_fraction": 0.63}}
    demo_settings.write_results(tmp_path, [new])
    lines = (tmp_path / "demo_settings.md").read_text().splitlines()
    assert "original P > 0.99" in lines[0] and len(lines) == 4
    assert lines[2].split(" | ")[5:7] == ["0.18", "-"]
    assert lines[3].split(" | ")[5:7] == ["0.24", "0.63"]
    assert len(json.loads((tmp_path / "demo_settings.json").read_text())) == 2
    demo_settings.write_results(tmp_path, [old, new, {**new, "unlearn_seconds": 2.0}])
    assert len(json.loads((tmp_path / "demo_settings.json").read_text())) == 3
    assert len((tmp_path / "demo_settings.md").read_text().splitlines()) == 5
