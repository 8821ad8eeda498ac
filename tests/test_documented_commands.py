"""Every command shown in README.md and docs/ runs as written (issue 22), up to the point where it would load a model,
start training or talk to the hub: there the test stops it (a run that long is not a unit test) and counts it as
valid. Everything before that point is the real command: argument parsing, the YAML config, every input check (data,
evaluation sets, references, output folder), data loading.

Each command runs in-process in its own empty working folder that holds ``data/<name>`` (links to the shared small
copies, as the README's Data section asks a user to make), links to ``recipes/``, ``benchmarks/`` scripts and
``accelerate_configs/``, and the ``runs/...`` inputs the command reads (a tiny random Llama for a model folder, a
small real ``tofu_eval.json`` / ``audit_eval.json`` for a reference), as if the commands before it had run.
The data variables of the README's Data table point at ``data/``. The ``benchmarks/`` scripts (hours of runs, some
in subprocesses) are checked up to their parsed arguments. ``...`` in a command stands for "more flags" and is
dropped; shell lines that are not commands of this project (``git clone``, ``cd``, ``. .venv/bin/activate``,
``pip install``, ``cat``) are checked for what can be checked (a make target exists) or skipped.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import os
import re
import runpy
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import transformers
import yaml
from conftest import SHARED_DATA

import rklu_llm
import rklu_llm.models
from rklu_llm import cli

REPO = Path(__file__).resolve().parents[1]
DOCUMENTS = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]
DATA = {
    "tofu": "tofu",
    "books": "books",
    "wikitext": "wikitext",
    "fashion-mnist": "fashion-mnist",
    "general": "general",
}
DATA_VARIABLES = {
    "RKLU_TOFU_DIR": "data/tofu",
    "RKLU_WIKITEXT_DIR": "data/wikitext",
    "RKLU_GENERAL_DIR": "data/general",
    "RKLU_FASHION_MNIST_DIR": "data/fashion-mnist",
    "RKLU_BOOKS_DIR": "data/books",
}
#: flags (and YAML keys) whose value is an input a command reads, made before it runs when it is a runs/... path
INPUT_FIELDS = ("model", "retain_eval", "original_eval", "audit_reference", "relearn_original", "relearn_oracle")
SKIPPED = ("git", "cd", ".", "source", "pip", "cat", "python -m venv")


class Reached(BaseException):
    """The command got to a model load, a training loop or the hub: it is valid up to there."""


def documented_commands() -> list[tuple[str, str]]:
    """``(where, command)`` for every command line of every ``bash`` block (continuation lines joined; a shell
    variable set earlier in the block, ``NAME=value``, written out in the commands after it)."""
    found = []
    for path in DOCUMENTS:
        text = path.read_text()
        for block in re.findall(r"```(?:bash|sh|shell)\n(.*?)```", text, re.DOTALL):
            joined = re.sub(r"\\\n\s*", " ", block)
            variables = {}
            for line in joined.splitlines():
                for name, value in variables.items():
                    line = line.replace(f"${{{name}}}", value).replace(f"${name}", value)
                assignment = re.match(r"^\s*([A-Z_]+)=(\$\(.*\)|\S+)\s*$", line)  # not NAME=value before a command
                if assignment:
                    variables[assignment.group(1)] = assignment.group(2)
                for command in re.split(r"\s&&\s", line):
                    if shlex.split(command, comments=True):
                        found.append((f"{path.relative_to(REPO)}: {command.strip()[:80]}", command.strip()))
    return found


def yaml_examples() -> dict[str, str]:
    """The YAML files the documents show (a ``yaml`` block whose first line is ``# <name>.yaml``), by name."""
    files = {}
    for path in DOCUMENTS:
        for block in re.findall(r"```yaml\n(.*?)```", path.read_text(), re.DOTALL):
            first = block.splitlines()[0].strip()
            if re.fullmatch(r"# [\w./-]+\.ya?ml", first):
                files[first[2:]] = block
    return files


COMMANDS = documented_commands()


def _substitute(command: str) -> str:
    """``$(python -c '...')`` replaced by what the code prints (the one substitution the documents use)."""

    def run(match: re.Match) -> str:
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            exec(match.group(2), {"__name__": "__main__"})
        return out.getvalue().strip()

    return re.sub(r"\"?\$\(python -c (['\"])(.*?)\1\)\"?", run, command)


@pytest.fixture(scope="module")
def references(tmp_path_factory, tiny_model_dir, tofu_dir):
    """A small real ``tofu_eval.json`` (every forget split) and ``audit_eval.json`` (forget01, forget10) of the tiny
    model: what ``--retain_eval`` / ``--audit_reference`` read."""
    from rklu_llm.eval.audit import evaluate_audit
    from rklu_llm.eval.tofu import evaluate_tofu

    root = tmp_path_factory.mktemp("references")
    model, tokenizer = rklu_llm.load_model(str(tiny_model_dir))
    splits = ("forget01", "forget05", "forget10")
    evaluate_tofu(
        model,
        tokenizer,
        forget_splits=splits,
        data_dir=tofu_dir,
        output_dir=root / "tofu",
        max_items=2,
        generate=False,
        sets=tuple(f"{s}_perturbed" for s in splits),
    )
    for split in ("forget01", "forget10"):
        evaluate_audit(
            model, tokenizer, split, parts="membership", data_dir=tofu_dir, output_dir=root / split, max_items=2
        )
    return {
        "tofu_eval.json": root / "tofu" / "tofu_eval.json",
        "audit_eval.json": {s: root / s / "audit_eval.json" for s in ("forget01", "forget10")},
    }


def _make_input(folder: Path, value: str, tiny_model_dir: Path, references: dict, split: str) -> None:
    path = folder / value
    if not value.startswith("runs/") or path.exists():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.name == "tofu_eval.json":
        shutil.copy(references["tofu_eval.json"], path)
    elif path.name == "audit_eval.json":
        shutil.copy(references["audit_eval.json"]["forget01" if split == "forget01" else "forget10"], path)
    else:  # a model folder: the tiny random Llama, with a model card
        path.mkdir()
        for file in tiny_model_dir.iterdir():
            (path / file.name).symlink_to(file)


def _inputs(argv: list[str], folder: Path) -> tuple[list[str], str]:
    """The input paths ``argv`` names (flags, the push command's folder, the --config file's keys) and the split."""
    values, split = [], "forget10"
    settings = {}
    if "--config" in argv:
        config = folder / argv[argv.index("--config") + 1]
        settings = yaml.safe_load(config.read_text()) if config.is_file() else {}
    for key in INPUT_FIELDS:
        if settings.get(key):
            values.append(str(settings[key]))
        if f"--{key}" in argv:
            values.append(argv[argv.index(f"--{key}") + 1])
    for key in ("forget_split", "split"):
        if settings.get(key):
            split = str(settings[key])
        if f"--{key}" in argv:
            split = argv[argv.index(f"--{key}") + 1]
    if argv[:1] == ["push"]:
        values.append(argv[1])
    return values, split


@pytest.fixture
def workdir(tmp_path, monkeypatch, tofu_dir):
    folder = tmp_path / "clone"
    folder.mkdir()
    (folder / "data").mkdir()
    for name, shared in DATA.items():
        if (SHARED_DATA / shared).exists():
            (folder / "data" / name).symlink_to(SHARED_DATA / shared)
    for name in ("recipes", "accelerate_configs"):
        (folder / name).symlink_to(REPO / name)
    (folder / "benchmarks").mkdir()
    for script in (REPO / "benchmarks").glob("*.py"):  # results go to this folder's benchmarks/results, not the repo's
        (folder / "benchmarks" / script.name).symlink_to(script)
    for name, text in yaml_examples().items():
        (folder / name).write_text(text)
    monkeypatch.chdir(folder)
    for name, value in DATA_VARIABLES.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("HF_TOKEN", "hf_" + "x" * 30)  # rklu-llm push: a token, never used (the hub is stopped)
    return folder


@pytest.fixture
def stops(monkeypatch):
    """Model loads, training loops and hub calls raise :class:`Reached`; a hub id is not looked up."""

    def reached(what):
        def stop(*args, **kwargs):
            raise Reached(what)

        return stop

    # every command's module imported first, so that its `load_model` is patched here and restored after the test
    # (a module first imported while the patch is on would keep the stand-in for the rest of the session)
    for module_name, _ in cli.COMMANDS.values():
        importlib.import_module(module_name)
    original = rklu_llm.models.load_model
    for module in list(sys.modules.values()):
        if getattr(module, "load_model", None) is original:
            monkeypatch.setattr(module, "load_model", reached("load_model"))
    monkeypatch.setattr(rklu_llm.models, "_check_hub_model", lambda hub_id: None)
    monkeypatch.setattr(transformers.Trainer, "train", reached("train"))
    import huggingface_hub

    for name in ("create_repo", "whoami", "repo_info", "upload_folder", "create_commit"):
        monkeypatch.setattr(huggingface_hub.HfApi, name, reached("hub"))


def run_python(argv: list[str], folder: Path) -> None:
    """``python <script> ...`` / ``python -m <module> ...`` / ``python -c <code>``, in-process."""
    if argv[0] == "-c":
        exec(argv[1], {"__name__": "__main__"})
        return
    saved = sys.argv[:]
    try:
        if argv[0] == "-m":
            sys.argv = [argv[1], *argv[2:]]
            runpy.run_module(argv[1], run_name="__main__", alter_sys=True)
        else:
            script = folder / argv[0]
            assert script.is_file(), f"{argv[0]} does not exist"
            if argv[0].startswith("benchmarks/"):  # hours of runs, some in subprocesses: the flags are checked
                parse = argparse.ArgumentParser.parse_args

                def parse_then_stop(self, args=None, namespace=None):
                    parse(self, args, namespace)
                    raise Reached("arguments parsed")

                argparse.ArgumentParser.parse_args = parse_then_stop
            sys.argv = [str(script), *argv[1:]]
            sys.path.insert(0, str(script.resolve().parent))
            try:
                runpy.run_path(str(script), run_name="__main__")
            finally:
                sys.path.remove(str(script.resolve().parent))
    finally:
        sys.argv = saved
        argparse.ArgumentParser.parse_args = PARSE_ARGS


PARSE_ARGS = argparse.ArgumentParser.parse_args


def run_lm_eval(argv: list[str]) -> None:
    """lm-eval's own command: its parser accepts the flags and the --include_path folder exists."""
    if importlib.util.find_spec("lm_eval") is None:
        pytest.skip("lm-eval is not installed (pip install 'rklu_llm[lm-eval]')")
    from lm_eval._cli.harness import HarnessCLI

    saved = sys.argv[:]
    try:
        sys.argv = ["lm_eval", *argv]
        HarnessCLI().parse_args()  # parses only; unknown flags exit with code 2
    finally:
        sys.argv = saved
    assert Path(argv[argv.index("--include_path") + 1]).is_dir()


@pytest.mark.parametrize("where,command", COMMANDS, ids=[where for where, _ in COMMANDS])
def test_documented_command_runs_as_written(where, command, workdir, stops, tiny_model_dir, references, monkeypatch):
    command = _substitute(command)
    argv = [token for token in shlex.split(command, comments=True) if token != "..."]
    assignment = re.match(r"^([A-Z_]+)=(.+)$", argv[-1])
    if argv[0] == "export" or (len(argv) == 1 and assignment):  # a variable for the commands after it
        name, value = assignment.groups()
        assert value.startswith("data/") or name == "TASKS", f"{where}: {name}={value} is not a folder of this clone"
        return
    while len(argv) > 1 and re.fullmatch(r"[A-Z_]+=\S+", argv[0]):  # NAME=value before a command: its environment
        monkeypatch.setenv(*argv.pop(0).split("=", 1))
    program = argv[0]
    if program == "make":
        targets = re.findall(r"^([a-z]+):", (REPO / "Makefile").read_text(), re.MULTILINE)
        assert argv[1] in targets, f"make {argv[1]}: no such target"
        return
    if program in SKIPPED or " ".join(argv[:3]) == "python -m venv":
        return
    folder = Path.cwd()
    if program == "accelerate":
        assert argv[1] == "launch"
        argv = argv[2:]
        if argv[0] == "--config_file":
            assert (folder / argv[1]).is_file(), f"{argv[1]} does not exist"
            argv = argv[2:]
        program, argv = "python", ["python", *argv]
    if program == "lm_eval":
        run_lm_eval(argv[1:])
        return
    inputs, split = _inputs(argv[1:] if program == "rklu-llm" else argv[2:], folder)
    for value in inputs:
        _make_input(folder, value, tiny_model_dir, references, split)
    try:
        if program == "rklu-llm":
            cli.main(argv[1:])
        elif program == "python":
            run_python(argv[1:], folder)
        else:
            pytest.fail(f"{where}: unknown program {program!r}")
    except Reached:
        pass
    except SystemExit as exc:
        assert exc.code in (0, None), f"{where}: exited with {exc.code}"
    os.chdir(folder)  # a script that changed directory does not leak into the next test


def test_every_document_is_read_and_no_command_names_a_local_absolute_path():
    assert len(COMMANDS) > 50
    for where, command in COMMANDS:
        assert "../shared" not in command and not re.search(r"(^|\s)/(root|tmp|home|work)/", command), where


def test_the_project_stands_alone():
    """No tracked code, document or result of the project names the workspace's shared folder (only the tests and
    CI, which read their data from it, may): a clone must not depend on a folder beside it."""
    shared = "../" + "shared"
    tracked = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    named = [
        name
        for name in tracked
        if name.split("/")[0] not in ("tests", ".ci")
        and (REPO / name).is_file()
        and shared in (REPO / name).read_text(errors="ignore")
    ]
    assert not named, named
