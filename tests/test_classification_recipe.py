"""The classifier recipe body and ``benchmarks/classifier.py`` end to end on sklearn's digits (seconds): the original,
the retrain oracle and the methods run, results files are written, a second run reuses every finished run, and bad
arguments fail before any training."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import load_benchmark

from rklu_llm.scripts.classifier import main as run_recipe

REPO = Path(__file__).resolve().parents[1]
QUICK = [
    "--train_epochs",
    "1",
    "--unlearn_settings",
    "flags",
    "--num_train_epochs",
    "1",
    "--use_cpu",
    "--disable_tqdm",
    "true",
    "--mia_max_samples",
    "100",
    "--logging_steps",
    "1000",
    "--num_threads",
    "1",
]

pytestmark = pytest.mark.slow


def load_classifier_benchmark():
    return load_benchmark("classifier")


def test_benchmark_on_digits(tmp_path):
    """Two stages on two classes: one record per job with its command, the report built from the records, and a
    second invocation that finds every record and runs nothing."""
    benchmark = load_classifier_benchmark()
    work, records, results = tmp_path / "work", tmp_path / "records", tmp_path / "results"
    argv = [
        "--dataset",
        "digits",
        "--stages",
        "main,tune",
        "--seeds",
        "0",
        "--classes",
        "0,1",
        "--work_dir",
        str(work),
        "--records_dir",
        str(records),
        "--results_dir",
        str(results),
        "--eval_retain_samples",
        "300",
        "--mia_max_samples",
        "100",
        "--recipe_args",
        "--train_epochs 1",
    ]
    benchmark.main(argv)
    assert sorted(p.name for p in records.glob("*.json")) == [
        "main_s0_class0.json",
        "main_s0_class1.json",
        "tune_s0_class0.json",
    ]
    record = json.loads((records / "main_s0_class1.json").read_text())
    rows = {row["method"]: row for row in record["rows"]}
    assert list(rows) == ["original", "retrain", "mask", "redistribute", "mask@0.001@1"]
    assert record["command"].startswith("rklu-llm classifier --dataset digits --forget_classes 1")
    assert str(tmp_path) not in json.dumps(record)  # no local path in a record
    assert rows["retrain"]["acc_ft"] == 0.0 and rows["retrain"]["uses_retain_data"]
    assert rows["mask"]["settings"]["optim"] == "sgd" and rows["mask"]["settings"]["num_train_epochs"] == 20
    assert rows["mask@0.001@1"]["settings"]["num_train_epochs"] == 1.0
    assert 0.0 <= rows["mask"]["mia_svc_confidence_attack_acc"] <= 1.0
    tune = json.loads((records / "tune_s0_class0.json").read_text())
    assert len(tune["rows"]) == 2 + len(benchmark.BASELINES) * len(benchmark.TUNE_GRID)
    assert next(r for r in tune["rows"] if r["method"] == "retrain")["reused"]  # the main job's oracle
    data = json.loads((results / "classifier_fashion_mnist.json").read_text())
    assert data["single_class_summary"]["mask"]["runs"] == 2 and set(data["tuning"]) == set(benchmark.BASELINES)
    table = (results / "classifier_fashion_mnist.md").read_text()
    assert "mask Acc_ft mean" in table and "| ga |" in table and (results / "classifier_fashion_mnist.png").is_file()
    stamps = {p: p.stat().st_mtime_ns for p in records.glob("*.json")}
    benchmark.main(argv)
    assert {p: p.stat().st_mtime_ns for p in records.glob("*.json")} == stamps


def test_recipe_refuses_another_run_in_the_same_output_dir(tmp_path):
    out = tmp_path / "out"
    common = ["--dataset", "digits", "--output_dir", str(out), "--methods", "mask", "--no_oracle", *QUICK]
    result = run_recipe(["--forget_classes", "3", *common])
    assert [row["method"] for row in result["rows"]] == ["original", "mask"]
    assert (out / "mask" / "model.safetensors").is_file() and (out / "original" / "classifier_model.json").is_file()
    with pytest.raises(ValueError, match="belongs to that run"):
        run_recipe(["--forget_classes", "4", *common])


@pytest.mark.parametrize(
    "argv,match",
    [
        (["--methods", "mask"], "Say what to forget"),
        (["--forget_classes", "3", "--forget_samples", "5"], "Say what to forget"),
        (["--forget_classes", "3", "--methods", "rklu"], "Unknown classifier method"),
        (["--forget_classes", "3", "--methods", "mask@fast"], "method@1e-4"),
        (["--forget_classes", "3", "--methods", "mask@1e-3@x"], "method@1e-4@2"),
        (["--forget_classes", "0", "--class_groups", "0,1|2"], "missing"),
        (["--forget_classes", "3", "--model", "bert"], "does not fit image data"),
        (["--forget_classes", "12"], r"\[12\] have no samples"),
        (["--forget_classes", "3", "--model", "nowhere"], "--model must be one of"),
    ],
)
def test_recipe_rejects_bad_arguments_before_training(tmp_path, argv, match):
    with pytest.raises(ValueError, match=match):
        run_recipe(["--dataset", "digits", "--output_dir", str(tmp_path / "o"), *argv, *QUICK])
    assert not (tmp_path / "o" / "original").exists()


def test_protocol_refuses_flags_it_would_ignore(tmp_path):
    """Under the protocol (the default) a given --learning_rate would be silently replaced: refused, before any
    data or model work, with the two ways out."""
    argv = ["--dataset", "digits", "--forget_classes", "3", "--output_dir", str(tmp_path / "o"), "--learning_rate"]
    with pytest.raises(ValueError, match="--unlearn_settings flags"):
        run_recipe([*argv, "1e-4"])
    assert not (tmp_path / "o").exists()


def test_method_lists():
    from rklu_llm.scripts.classifier import CLASSIFIER_METHODS, method_overrides, parse_methods

    assert method_overrides("mask@1e-3@2") == {"learning_rate": 1e-3, "num_train_epochs": 2.0}
    assert method_overrides("mask@3e-4") == {"learning_rate": 3e-4} and method_overrides("mask") == {}

    assert parse_methods("all,mask@3e-4") == [*CLASSIFIER_METHODS, "mask@3e-4"]
    assert parse_methods(" mask , ga ") == ["mask", "ga"] and "retrain" not in CLASSIFIER_METHODS


def _record(scenario: dict, rows: dict[str, tuple[float, float]]) -> dict:
    """A benchmark record with the given (acc_rt, seconds) per method; every other metric equal to acc_rt."""
    keys = ("acc_f", "acc_r", "acc_ft", "acc_test", "h_mean", "mia_svc_confidence", "mia_entropy_lr")
    return {
        "scenario": scenario,
        "rows": [
            {"method": m, "acc_rt": rt, "seconds": sec, **dict.fromkeys(keys, rt), "mia_svc_confidence_attack_acc": 0.5}
            for m, (rt, sec) in rows.items()
        ],
    }


def test_multi_and_regime_tables_aggregate_over_seeds():
    """Hand-computed: gaps to each job's own oracle, sample sd over seeds, the worst group by its mean over seeds."""
    benchmark = load_classifier_benchmark()
    scenario = {"forget_classes": [0, 1], "forget_samples": None, "forget_size": 12, "class_names": ["a"]}
    records = {
        "multi_s0_class2": _record(scenario, {"original": (0.9, 10.0), "retrain": (0.9, 10.0), "mask": (0.8, 1.0)}),
        "multi_s1_class2": _record(scenario, {"original": (0.9, 10.0), "retrain": (0.8, 20.0), "mask": (0.8, 4.0)}),
    }
    multi = benchmark.multi_table(records)["class2"]
    assert multi["seeds"] == [0, 1] and "class_names" not in multi["scenario"]
    mask = multi["methods"]["mask"]
    assert mask["gap_rt"]["mean"] == pytest.approx(-0.05) and mask["gap_rt"]["std"] == pytest.approx(0.1 / 2**0.5)
    assert mask["time_ratio"]["mean"] == pytest.approx(0.15)  # 1/10 and 4/20
    assert multi["methods"]["original"]["time_ratio"] is None
    short = benchmark.SHORT_MASK
    regime = {
        f"regime_k2_s{seed}_group{g}": _record(
            {"forget_classes": [g]}, {"retrain": (0.9, 1.0), short: (0.9 - gap, 1.0), "redistribute": (0.9, 1.0)}
        )
        for seed, g, gap in [(0, 0, 0.02), (1, 0, 0.04), (0, 1, 0.0), (1, 1, 0.02)]
    }
    main = {short: [{"class": 3, "seed": 1, "gap_rt": -0.1, "acc_ft": 0.0}, {"class": 3, "seed": 5, "gap_rt": -9.0}]}
    table = benchmark.regime_table(regime, main)
    k2 = table["2"][short]
    assert (k2["groups"], k2["seeds"], k2["runs"]) == (2, [0, 1], 4)
    assert k2["gap_rt_mean"] == pytest.approx(-0.02) and k2["gap_rt_min"] == pytest.approx(-0.03)
    assert table["10"][short]["gap_rt_mean"] == pytest.approx(-0.1)  # seed 5 is not a regime seed
    assert table["2"]["redistribute"]["redistributed_share_per_class"] == 1.0
