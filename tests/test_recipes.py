"""The recipes end to end on a tiny model: fine-tune a retain oracle, unlearn with every method through
``python recipes/tofu_forget10.py --method M``, and a 2-process ``accelerate launch`` run with forget quality.

Each entry point runs once as its own process (``finetune_tofu.py``, ``tofu_forget10.py``, ``accelerate launch``);
the other runs execute the same recipe file in this process (``runpy``, ``sys.argv`` set), which proves the same and
saves the ~10 s start-up of a Python process that imports torch, transformers and peft.
"""

from __future__ import annotations

import json
import os
import runpy
import subprocess
import sys
from pathlib import Path

import pytest

from rklu_llm import METHODS

REPO = Path(__file__).resolve().parents[1]
RECIPES = REPO / "recipes"
FAST_EVAL = ["--eval_max_items", "4", "--max_new_tokens", "8", "--eval_batch_size", "8"]
FAST_UNLEARN = [
    "--max_steps",
    "2",
    "--per_device_train_batch_size",
    "4",
    "--augment_epochs",
    "1",
    "--augment_max_steps",
    "2",
    "--max_retain_items",
    "16",
    "--save_strategy",
    "no",
    "--use_cpu",
    "--report_to",
    "none",
    "--disable_tqdm",
    "true",
    "--learning_rate",
    "1e-3",
    "--max_length",
    "256",
]

pytestmark = pytest.mark.slow


def run(command: list[str], cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "OMP_NUM_THREADS": "1",
    }
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, (
        f"{' '.join(command)}\n--- stdout ---\n{result.stdout[-3000:]}\n--- stderr ---\n{result.stderr[-6000:]}"
    )
    return result


def inputs(model: Path, tofu_dir: Path, out: Path, retain_eval: Path) -> list[str]:
    """A tofu_forget10.py run's inputs and output, with the fast unlearning and evaluation settings."""
    paths = ["--model", model, "--data_dir", tofu_dir, "--output_dir", out, "--retain_eval", retain_eval]
    return [*map(str, paths), *FAST_UNLEARN, *FAST_EVAL]


def run_in_process(monkeypatch, recipe: str, argv: list[str]) -> None:
    """``python recipes/<recipe> argv`` inside this test process: the recipe file runs as ``__main__``."""
    for name, value in (("HF_HUB_OFFLINE", "1"), ("HF_DATASETS_OFFLINE", "1"), ("TOKENIZERS_PARALLELISM", "false")):
        monkeypatch.setenv(name, value)
    monkeypatch.chdir(REPO)
    monkeypatch.setattr(sys, "argv", [str(RECIPES / recipe), *argv])
    runpy.run_path(str(RECIPES / recipe), run_name="__main__")


@pytest.fixture(scope="module")
def retain_eval(tmp_path_factory, tiny_model_dir, tofu_dir) -> Path:
    """A (barely) fine-tuned retain90 oracle and its stored TOFU evaluation: the forget-quality reference."""
    out = tmp_path_factory.mktemp("retain90")
    run(
        [
            sys.executable,
            str(RECIPES / "finetune_tofu.py"),
            "--model",
            str(tiny_model_dir),
            "--split",
            "retain90",
            "--data_dir",
            str(tofu_dir),
            "--output_dir",
            str(out),
            "--max_train_items",
            "16",
            "--max_steps",
            "2",
            "--per_device_train_batch_size",
            "8",
            "--use_cpu",
            "--report_to",
            "none",
            "--save_strategy",
            "no",
            "--max_length",
            "256",
            *FAST_EVAL,
        ],
        cwd=REPO,
    )
    assert (out / "model.safetensors").is_file() and not (out / ".rklu-staging").exists()
    return out / "tofu_eval.json"


def test_finetune_recipe_stores_its_evaluation(retain_eval):
    result = json.loads(retain_eval.read_text())
    assert 0 <= result["model_utility"] <= 1
    assert "forget10_perturbed" in result["sets"]


# LM methods only; token_redistribute takes token_mask's path through the recipe line for line (45 s a run on the CPU)
@pytest.mark.parametrize(
    "method", sorted(m for m, spec in METHODS.items() if spec.batch != "classifier" and m != "token_redistribute")
)
def test_tofu_forget10_recipe_runs_every_method(method, tmp_path, tiny_model_dir, tofu_dir, retain_eval, monkeypatch):
    """rklu through ``python recipes/tofu_forget10.py`` (its own process); every other method through the same file
    in this process."""
    out = tmp_path / method
    retain_mode = ["--retain_mode", "rt"] if method == "gd" else []
    argv = ["--method", method, *retain_mode, *inputs(tiny_model_dir, tofu_dir, out, retain_eval)]
    if method == "rklu":
        run([sys.executable, str(RECIPES / "tofu_forget10.py"), *argv], cwd=REPO)
    else:
        run_in_process(monkeypatch, "tofu_forget10.py", argv)
    result = json.loads((out / "tofu_eval.json").read_text())
    assert 0 <= result["forget"]["forget10"]["forget_quality"] <= 1
    assert 0 <= result["model_utility"] <= 1
    assert method in (out / "README.md").read_text()


def test_accelerate_launch_two_processes(tmp_path, tiny_model_dir, tofu_dir, retain_eval):
    out = tmp_path / "rklu_ddp"
    run(
        [
            sys.executable,
            "-m",
            "accelerate.commands.launch",
            "--config_file",
            str(REPO / "accelerate_configs" / "cpu.yaml"),
            str(RECIPES / "tofu_forget10.py"),
            *inputs(tiny_model_dir, tofu_dir, out, retain_eval),
            "--retain_mode",
            "kl",
            "--keep_augmented",  # kept (the default deletes it after the save) to check where it was built
            "true",
        ],
        cwd=REPO,
    )
    result = json.loads((out / "tofu_eval.json").read_text())
    assert 0 <= result["forget"]["forget10"]["forget_quality"] <= 1
    assert 0 <= result["model_utility"] <= 1
    assert (tmp_path / "rklu_ddp.augmented" / "rklu_augmented.json").is_file()  # beside the output, never inside
    assert not (out / "augmented").exists()


def test_recipe_refuses_to_overwrite_its_input_model(tiny_model_dir, tofu_dir, monkeypatch):
    argv = ["--model", str(tiny_model_dir), "--data_dir", str(tofu_dir), "--output_dir", str(tiny_model_dir)]
    with pytest.raises(ValueError, match="input model's own directory"):
        run_in_process(monkeypatch, "tofu_forget10.py", [*argv, "--use_cpu"])


def test_recipe_fails_before_loading_a_model_without_data(tmp_path, monkeypatch):
    from rklu_llm.data import DataUnavailableError

    argv = ["--model", "embedded:does-not-exist", "--data_dir", str(tmp_path), "--output_dir", str(tmp_path / "o")]
    with pytest.raises(DataUnavailableError, match="forget10.jsonl"):
        run_in_process(monkeypatch, "tofu_forget10.py", [*argv, "--use_cpu"])


def test_recipe_follows_forget_quality_every_epoch(tmp_path, tiny_model_dir, tofu_dir, retain_eval, monkeypatch):
    out = tmp_path / "ga_epochs"
    run_in_process(
        monkeypatch,
        "tofu_forget10.py",
        [
            *inputs(tiny_model_dir, tofu_dir, out, retain_eval),
            "--method",
            "ga",
            "--eval_every_epoch",
            "--max_steps",
            "-1",
            "--num_train_epochs",
            "2",
            "--per_device_train_batch_size",
            "32",
        ],
    )
    epochs = json.loads((out / "tofu_eval_epochs.json").read_text())
    final = json.loads((out / "tofu_eval.json").read_text())
    assert [row["epoch"] for row in epochs["epochs"]] == [1.0, 2.0]
    curve = [row["forget10_forget_quality"] for row in epochs["epochs"]]
    assert epochs["peak_epoch"] == [1.0, 2.0][curve.index(max(curve))]
    assert epochs["peak"]["epoch"] == epochs["peak_epoch"] and 0 <= epochs["peak"]["model_utility"] <= 1
    assert epochs["final"]["model_utility"] == final["model_utility"]
    assert epochs["final"]["forget10_forget_quality"] == pytest.approx(curve[-1])


def test_eval_every_epoch_needs_a_reference(tmp_path, tiny_model_dir, tofu_dir, monkeypatch):
    argv = ["--model", str(tiny_model_dir), "--data_dir", str(tofu_dir), "--output_dir", str(tmp_path / "o")]
    with pytest.raises(ValueError, match="needs --retain_eval"):
        run_in_process(monkeypatch, "tofu_forget10.py", [*argv, "--use_cpu", "--eval_every_epoch"])
    assert not (tmp_path / "o").exists()
