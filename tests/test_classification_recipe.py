"""The classifier recipe body and ``benchmarks/classifier.py`` end to end on sklearn's digits (seconds): the original,
the retrain oracle and the methods run, results files are written, a second run reuses every finished run, and bad
arguments fail before any training."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from rklu_llm.scripts.classifier import main as run_recipe

REPO = Path(__file__).resolve().parents[1]
QUICK = [
    "--train_epochs",
    "1",
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


def load_benchmark():
    spec = importlib.util.spec_from_file_location("classifier_benchmark", REPO / "benchmarks" / "classifier.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_benchmark_on_digits(tmp_path):
    benchmark = load_benchmark()
    work, results = tmp_path / "work", tmp_path / "results"
    argv = [
        "--image_dataset",
        "digits",
        "--scenarios",
        "cnn_class1,cnn_samples100",
        "--work_dir",
        str(work),
        "--results_dir",
        str(results),
        "--train_epochs",
        "1",
        "--eval_retain_samples",
        "300",
        "--mia_max_samples",
        "100",
        "--methods",
        "mask,finetune,redistribute@3e-4",
    ]
    benchmark.main(argv)
    data = json.loads((results / "classifier_digits.json").read_text())
    class1 = data["scenarios"]["cnn_class1"]
    methods = [row["method"] for row in class1["rows"]]
    assert methods == ["original", "retrain", "mask", "finetune", "redistribute@3e-4"]
    rows = {row["method"]: row for row in class1["rows"]}
    assert rows["retrain"]["fraction_of_oracle_time"] == 1.0 and rows["retrain"]["uses_retain_data"]
    assert rows["finetune"]["uses_retain_data"] and not rows["mask"]["uses_retain_data"]
    stored = json.loads((work / "digits_cnn_class1" / "redistribute@3e-4" / "classifier_eval.json").read_text())
    assert stored["method"] == "redistribute@3e-4"
    assert rows["retrain"]["acc_ft"] == 0.0  # never saw the class
    assert rows["mask"]["fraction_of_oracle_time"] > 0 and rows["original"]["h_mean"] is None
    for row in class1["rows"]:
        for key in ("acc_f", "acc_r", "acc_ft", "acc_rt", "mia_svc_entropy", "mia_entropy_lr"):
            assert 0.0 <= row[key] <= 1.0, (row["method"], key)
    samples = data["scenarios"]["cnn_samples100"]
    assert samples["scenario"]["forget_size"] == 100 and samples["rows"][1]["acc_ft"] is None
    table = (results / "classifier_digits.md").read_text()
    assert "python benchmarks/classifier.py --image_dataset digits" in table and "**retrain (oracle)**" in table
    assert "`mask`: Acc_ft" in table
    # both scenarios share one original; a second invocation reuses every finished run
    assert len(list(work.glob("digits_cnn_original"))) == 1
    records = {p: p.stat().st_mtime_ns for p in work.rglob("classifier_eval.json")}
    benchmark.main(argv)
    assert {p: p.stat().st_mtime_ns for p in work.rglob("classifier_eval.json")} == records
    assert len(json.loads((work / "invocations.json").read_text())) == 2


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
        (["--forget_classes", "3", "--model", "bert"], "does not fit image data"),
        (["--forget_classes", "12"], r"\[12\] have no samples"),
        (["--forget_classes", "3", "--model", "nowhere"], "--model must be one of"),
    ],
)
def test_recipe_rejects_bad_arguments_before_training(tmp_path, argv, match):
    with pytest.raises(ValueError, match=match):
        run_recipe(["--dataset", "digits", "--output_dir", str(tmp_path / "o"), *argv, *QUICK])
    assert not (tmp_path / "o" / "original").exists()


def test_method_lists():
    from rklu_llm.scripts.classifier import CLASSIFIER_METHODS, parse_methods

    assert parse_methods("all,mask@3e-4") == [*CLASSIFIER_METHODS, "mask@3e-4"]
    assert parse_methods(" mask , ga ") == ["mask", "ga"] and "retrain" not in CLASSIFIER_METHODS
