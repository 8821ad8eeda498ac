"""The ``rklu-llm`` command: help, --version, methods, --config files, and every sub-command end to end on a tiny
model (finetune, unlearn through a recipe and a YAML config, eval tofu, push against a fake hub)."""

from __future__ import annotations

import json
import runpy
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml
from test_hub import TOKEN, FakeHfApi, card_metadata

from rklu_llm import __version__, cli, hub
from rklu_llm.cli import COMMANDS, parse_arguments
from rklu_llm.models import ModelLoadError

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "recipes" / "configs"
FAST_EVAL = ["--eval_max_items", "4", "--max_new_tokens", "8", "--eval_batch_size", "8"]
TINY_RUN = [
    "--use_cpu",
    "true",
    "--bf16",
    "false",
    "--save_strategy",
    "no",
    "--disable_tqdm",
    "true",
    "--per_device_train_batch_size",
    "8",
    "--max_steps",
    "2",
    "--max_length",
    "256",
]


def run_cli(argv: list[str], capsys) -> tuple[int, str, str]:
    """``rklu-llm argv`` in this process: (exit code, stdout, stderr)."""
    try:
        cli.main(argv)
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# ---------------------------------------------------------------------------------------------------------------
# Help, version, methods
# ---------------------------------------------------------------------------------------------------------------
def test_top_level_help_describes_the_tool(capsys):
    code, out, _ = run_cli(["--help"], capsys)
    assert code == 0 and "machine unlearning" in out and "--config" in out
    for name in ("unlearn", "finetune", "eval", "demo", "push", "methods"):
        assert f"\n    {name}" in out


def test_version(capsys):
    code, out, _ = run_cli(["--version"], capsys)
    assert code == 0 and out.strip() == f"rklu-llm {__version__}"


@pytest.mark.parametrize("flag", ["--version", "--help"])
def test_version_and_help_import_no_heavy_package(flag):
    """`rklu-llm --version` / `--help` start without torch, transformers, peft or bitsandbytes (what made every
    command take seconds and print a bitsandbytes warning): checked by what a fresh interpreter imported, not by a
    clock."""
    import subprocess

    heavy = ["torch", "transformers", "peft", "bitsandbytes", "accelerate", "datasets"]
    code = (
        "import sys\n"
        "from rklu_llm import cli\n"
        f"try:\n    cli.main([{flag!r}])\nexcept SystemExit:\n    pass\n"
        f"print('IMPORTED', sorted(m for m in {heavy!r} if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "IMPORTED []" in done.stdout and "rklu-llm" in done.stdout
    assert "gemm_4bit" not in done.stderr


def test_only_the_cpu_kernel_hint_of_bitsandbytes_is_dropped(capsys):
    import logging

    logger = logging.getLogger("bitsandbytes.backends.cpu.ops")
    run_cli(["--version"], capsys)  # installs the filter
    hint = "Failed to load CPU gemm_4bit_forward from kernels-community: %s."
    record = logger.makeRecord(logger.name, logging.WARNING, __file__, 1, hint, ("No module named 'kernels'",), None)
    other = logger.makeRecord(logger.name, logging.WARNING, __file__, 1, "something else", (), None)
    assert not logger.filter(record) and logger.filter(other)


def test_package_exports_load_on_first_use():
    import rklu_llm

    assert sorted(rklu_llm.__all__) == sorted(rklu_llm._EXPORTS) and set(rklu_llm.__all__) <= set(dir(rklu_llm))
    for name in rklu_llm.__all__:
        assert getattr(rklu_llm, name) is not None
    with pytest.raises(AttributeError, match="no attribute 'nonsense'"):
        rklu_llm.nonsense  # noqa: B018


def test_methods_say_what_each_needs(capsys):
    code, out, _ = run_cli(["methods"], capsys)
    lines = out.splitlines()
    needs = {
        lines[i].split()[0]: lines[i + 1]
        for i in range(0, len(lines) - 1)
        if lines[i][:1].isalpha() and lines[i + 1].strip().startswith("needs:")
    }
    assert code == 0
    assert "retain data" in needs["gd"] and "retain data" not in needs["ga"]
    assert "augmented model" in needs["rklu"] and "frozen original" in needs["rklu"]
    assert "refusal answers" in needs["dpo"] and "refusal answers" in needs["idk"]
    assert "no training loop" in needs["ta"]


#: a field every command's --help must show, with its default
HELP_FIELDS = {
    "unlearn": ("--teacher_alpha", "(default: 8.0)"),
    "finetune": ("--split", "(default: full)"),
    "diagnose": ("--teacher_check_max_top1", "(default: 0.5)"),
    "eval tofu": ("--forget_splits", "(default: forget10)"),
    "demo": ("--teach_epochs", "(default:"),
    "push": ("--dry_run", "(default: False)"),
    "eval audit": ("--forget_split", "(default: forget10)"),
    "eval copyright": ("--chunk_tokens", "(default: 512)"),
    "eval general": ("--general_limit", "(default: None)"),
    "copyright": ("--finetune_learning_rate", "(default: 0.0001)"),
    "classifier": ("--dataset", "(default: fashion_mnist)"),
}


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_command_help_shows_config_fields_and_defaults(name, capsys):
    code, out, _ = run_cli([*name.split(), "--help"], capsys)
    flag, default = HELP_FIELDS[name]
    assert code == 0
    assert out.startswith(f"usage: rklu-llm {name} ")
    out = " ".join(out.split())  # argparse wraps lines at the terminal width
    assert "--config FILE.yaml" in out and flag in out and default in out
    module_doc = " ".join(__import__(COMMANDS[name][0], fromlist=["_"]).__doc__.strip().splitlines()[0].split())
    assert module_doc in out  # the description is the script's own


def test_recipe_help_shows_config(capsys, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["recipes/tofu_forget10.py", "--help"])
    with pytest.raises(SystemExit) as exc:
        runpy.run_path(str(REPO / "recipes" / "tofu_forget10.py"), run_name="__main__")
    out = " ".join(capsys.readouterr().out.split())
    assert exc.value.code == 0 and "--config FILE.yaml" in out and "--forget_split" in out


# ---------------------------------------------------------------------------------------------------------------
# parse_arguments: defaults < caller defaults < YAML < command line
# ---------------------------------------------------------------------------------------------------------------
@dataclass
class Example:
    name: str = field(default="a", metadata={"help": "A name."})
    rate: float = field(default=1.0, metadata={"help": "A rate."})
    flag: bool = field(default=False, metadata={"help": "A flag."})


def test_precedence_of_defaults_yaml_and_flags(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text("rate: 1.0e-5\nflag: true\n")
    assert parse_arguments((Example,), []) == (Example("a", 1.0, False),)
    assert parse_arguments((Example,), [], defaults={"name": "b", "rate": 2.0}) == (Example("b", 2.0, False),)
    (parsed,) = parse_arguments((Example,), ["--config", str(config)], defaults={"name": "b", "rate": 2.0})
    assert parsed == Example("b", 1e-5, True)
    (parsed,) = parse_arguments((Example,), [f"--config={config}", "--rate", "3", "--name", "c"])
    assert parsed == Example("c", 3.0, True)
    (parsed,) = parse_arguments((Example,), [str(config)])  # a lone YAML path
    assert parsed == Example("a", 1e-5, True)
    config.write_text("rate: 1e-5\n")  # YAML 1.1 reads this as a string; argparse converts it like a flag
    assert parse_arguments((Example,), ["--config", str(config)]) == (Example("a", 1e-5, False),)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("- rate: 1\n- name: x\n", "must hold a mapping of field: value at its top level"),
        ("just a string\n", "not a str"),
        ("rate: 1\nlearning_rat: 2\n", "unknown key(s)"),
        ("rate: [1\n", "is not valid YAML"),
    ],
)
def test_bad_config_files_get_a_clear_error(content, message, tmp_path, capsys):
    config = tmp_path / "bad.yaml"
    config.write_text(content)
    with pytest.raises(SystemExit) as exc:
        parse_arguments((Example,), ["--config", str(config)])
    assert exc.value.code == 2 and message in capsys.readouterr().err


def test_missing_config_and_unknown_flags_are_errors(tmp_path, capsys):
    for argv, message in (
        (["--config", str(tmp_path / "none.yaml")], "no such file"),
        (["--config"], "needs a YAML"),
        (["--rte", "1"], "unrecognized arguments: --rte 1"),
    ):
        with pytest.raises(SystemExit):
            parse_arguments((Example,), argv)
        assert message in capsys.readouterr().err


def test_every_example_config_parses_into_its_script():
    """Each file of recipes/configs/ is valid for the command its name says (finetune_*, tofu_*, demo)."""
    from rklu_llm import demo
    from rklu_llm.scripts import finetune, unlearn

    files = sorted(CONFIGS.glob("*.yaml"))
    assert len(files) >= 14
    for path in files:
        module = finetune if path.name.startswith("finetune") else demo if path.name == "demo.yaml" else unlearn
        parsed = parse_arguments(
            module.ARGUMENTS, ["--config", str(path), *(["--use_cpu", "true"] if module is not demo else [])]
        )
        values = yaml.safe_load(path.read_text())
        merged = {k: v for obj in parsed for k, v in vars(obj).items()}
        for key, value in values.items():
            expected = float(value) if isinstance(merged[key], float) else value
            if key == "report_to" and value == "none":  # TrainingArguments turns "none" into []
                expected = []
            assert getattr(merged[key], "value", merged[key]) == expected, (path.name, key)
    methods = {yaml.safe_load(p.read_text()).get("method") for p in files if p.name.startswith("tofu_forget10")}
    assert methods == {"rklu", "fklu", "ga", "gd", "npo", "dpo", "idk", "ta"}  # one config per TOFU method


# ---------------------------------------------------------------------------------------------------------------
# Every command end to end on a tiny model
# ---------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_model_dir, tofu_dir) -> dict[str, Path]:
    """``rklu-llm finetune`` (retain90 oracle) then ``python recipes/tofu_forget10.py`` from the rklu YAML config."""
    root = tmp_path_factory.mktemp("runs")
    saved_argv = sys.argv[:]
    try:
        finetune = f"finetune --config {CONFIGS}/finetune_retain90.yaml --model {tiny_model_dir} --data_dir {tofu_dir}"
        cli.main([*finetune.split(), "--output_dir", str(root / "retain90"), "--max_train_items", "16", *TINY_RUN,
                  *FAST_EVAL])  # fmt: skip
        recipe = f"recipes/tofu_forget10.py --config recipes/configs/tofu_forget10_rklu.yaml --model {tiny_model_dir}"
        sys.argv = [*recipe.split(), "--data_dir", str(tofu_dir), "--output_dir", str(root / "rklu"), "--retain_eval",
                    str(root / "retain90" / "tofu_eval.json"), "--augment_max_steps", "2", "--hub_token", TOKEN,
                    *TINY_RUN, *FAST_EVAL]  # fmt: skip
        runpy.run_path(str(REPO / "recipes" / "tofu_forget10.py"), run_name="__main__")
    finally:
        sys.argv = saved_argv
    return {"retain90": root / "retain90", "rklu": root / "rklu", "root": root}


@pytest.mark.slow
def test_finetune_command_writes_model_and_evaluation(runs):
    result = json.loads((runs["retain90"] / "tofu_eval.json").read_text())
    assert (runs["retain90"] / "model.safetensors").is_file() and 0 <= result["model_utility"] <= 1


@pytest.mark.slow
def test_recipe_from_yaml_config_writes_a_card_with_results(runs):
    result = json.loads((runs["rklu"] / "tofu_eval.json").read_text())
    assert 0 <= result["forget"]["forget10"]["forget_quality"] <= 1
    text = (runs["rklu"] / "README.md").read_text()
    meta = card_metadata(text)
    metrics = {
        m["type"]: m["value"]
        for r in meta["model-index"][0]["results"]
        for m in r["metrics"]
        if m["name"].endswith("(forget10)") or m["type"] == "model_utility"
    }
    assert metrics["forget_quality"] == pytest.approx(result["forget"]["forget10"]["forget_quality"])
    assert metrics["model_utility"] == pytest.approx(result["model_utility"])
    assert "teacher_alpha` | 8" in text and "config `forget10`" in text  # the YAML's settings
    assert "python recipes/tofu_forget10.py --config recipes/configs/tofu_forget10_rklu.yaml" in text
    assert TOKEN not in text and str(runs["root"]) not in text and "--hub_token '<redacted>'" in text


@pytest.mark.slow
def test_eval_tofu_command_updates_the_card_or_writes_elsewhere(runs, tofu_dir, capsys):
    reference = runs["retain90"] / "tofu_eval.json"
    argv = f"eval tofu --model {runs['rklu']} --data_dir {tofu_dir} --retain_eval {reference} --eval_max_items 3"
    code, out, err = run_cli([*argv.split(), "--max_new_tokens", "4"], capsys)
    assert code == 0, err
    assert json.loads((runs["rklu"] / "tofu_eval.json").read_text())["settings"]["max_items"] == 3
    card = (runs["rklu"] / "README.md").read_text()
    assert "| forget10 |" in card and "| 3 |" in card
    elsewhere = runs["root"] / "eval_retain90"
    argv = f"eval tofu --model {runs['retain90']} --data_dir {tofu_dir} --forget_splits forget01,forget05"
    argv += f" --output_dir {elsewhere} --eval_max_items 2 --max_new_tokens 4"
    code, _, err = run_cli(argv.split(), capsys)
    assert code == 0, err
    result = json.loads((elsewhere / "tofu_eval.json").read_text())
    assert set(result["forget"]) == {"forget01", "forget05"} and not (runs["retain90"] / "README.md").exists()


def test_eval_tofu_checks_its_inputs_before_loading_a_model(tmp_path, tofu_dir, capsys):
    with pytest.raises(RuntimeError, match="is a folder without a model: no config.json"):
        cli.main(["eval", "tofu", "--model", str(tmp_path)])  # e.g. an output folder that holds only results
    (tmp_path / "config.json").write_text("{}")  # a folder that looks like a model: the other checks come next
    for argv, error in (
        (["--model", "embedded:nothing-here"], "--output_dir is required"),
        (["--model", str(tmp_path), "--forget_splits", "forget11"], "forget_splits"),
        (["--model", str(tmp_path), "--retain_eval", str(tmp_path)], "is not a file"),
        (["--model", str(tmp_path), "--data_dir", str(tmp_path)], "neither"),
    ):
        with pytest.raises((ValueError, FileNotFoundError, RuntimeError), match=error):
            cli.main(["eval", "tofu", *argv])


@pytest.mark.slow
def test_push_command_dry_run_and_fake_upload(runs, monkeypatch, capsys):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    code, out, err = run_cli(["push", str(runs["rklu"]), "--dry_run"], capsys)
    assert code == 0, err
    listed = out.split("Would upload:")[1].split()
    assert "model.safetensors" in listed and "README.md" in listed and "tofu_eval.json" in listed
    assert not any(name.startswith(("augmented", "checkpoint", "training_args")) for name in listed)
    api = FakeHfApi()
    monkeypatch.setattr(hub, "HfApi", lambda: api)
    code, out, err = run_cli(["push", str(runs["rklu"]), "someone/tiny-rklu"], capsys)
    assert code == 0, err
    assert sorted(api.uploaded) == sorted(listed) and api.calls[0][2] is True  # private
    assert TOKEN not in out + err and all(TOKEN.encode() not in content for content in api.uploaded.values())
    code, _, err = run_cli(["push", str(runs["rklu"])], capsys)
    assert code != 0 and "usage: rklu-llm push MODEL_DIR REPO_ID" in err


# ---------------------------------------------------------------------------------------------------------------
# The other evaluators through the command (their metrics are pinned in test_eval_copyright / test_eval_general)
# ---------------------------------------------------------------------------------------------------------------
def test_eval_copyright_command_on_a_tiny_model(tiny_model_dir, tofu_dir, tmp_path, capsys):
    data = tofu_dir.parent
    argv = ["eval", "copyright", "--model", str(tiny_model_dir), "--output_dir", str(tmp_path / "eval")]
    argv += ["--books_dir", str(data / "books"), "--forget_text", "pride_and_prejudice.txt", "--control_text"]
    argv += ["sense_and_sensibility.txt", "--wikitext_dir", str(data / "wikitext"), "--chunk_tokens", "32"]
    argv += ["--num_chunks", "3", "--prefix_tokens", "16", "--segment_tokens", "32", "--num_segments", "4"]
    code, out, err = run_cli(argv, capsys)
    assert code == 0, err
    result = json.loads((tmp_path / "eval" / "copyright_eval.json").read_text())
    forget, wikitext = result["sets"]["forget"]["aggregate"], result["perplexity"]["wikitext"]
    assert forget["num_chunks"] == 3 and result["sets"]["control"]["aggregate"]["num_chunks"] == 3
    assert wikitext["num_segments"] == 4 and wikitext["perplexity"] > 1 and 0 <= forget["bleu"] <= 100
    assert str(tmp_path) not in json.dumps(result)


def test_eval_general_command_on_a_tiny_model(tiny_model_dir, tofu_dir, tmp_path, capsys):
    argv = ["eval", "general", "--model", str(tiny_model_dir), "--output_dir", str(tmp_path / "eval")]
    argv += ["--general_tasks", "copa,piqa", "--general_data_dir", str(tofu_dir.parent / "general")]
    code, out, err = run_cli([*argv, "--general_limit", "4"], capsys)
    assert code == 0, err
    result = json.loads((tmp_path / "eval" / "general_eval.json").read_text())
    assert set(result["tasks"]) == {"copa", "piqa"} and all(v["num_samples"] == 4 for v in result["tasks"].values())


def test_new_evaluators_check_inputs_before_loading_a_model(tmp_path, capsys):
    missing = str(tmp_path / "no-such-model")
    for argv, error in (
        (["eval", "general", "--model", missing, "--output_dir", str(tmp_path), "--general_limit", "0"], "limit"),
        (["eval", "general", "--model", missing, "--output_dir", str(tmp_path), "--general_tasks", "chess"], "chess"),
        (
            ["eval", "copyright", "--model", missing, "--output_dir", str(tmp_path), "--forget_text", "x"],
            "no-such-model",
        ),
    ):
        with pytest.raises((ValueError, FileNotFoundError, ModelLoadError), match=error):
            cli.main(argv)
