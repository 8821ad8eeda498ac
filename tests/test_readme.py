"""The README's Python snippet runs as written, on a CPU, with a tiny model in place of the embedded one, 8 forget items
and a shorter TOFU evaluation (swapped in by monkeypatching; the code itself is executed verbatim)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

import rklu_llm
import rklu_llm.eval

README = Path(__file__).resolve().parents[1] / "README.md"


def python_snippet() -> str:
    section = README.read_text().split("## Python API", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.DOTALL).group(1)


@pytest.mark.slow
def test_readme_python_snippet_runs(tmp_path, monkeypatch, tiny_model_dir, tofu_dir, capsys):
    real_load, real_evaluate, real_tofu = rklu_llm.load_model, rklu_llm.eval.evaluate_tofu, rklu_llm.load_tofu

    def load_model(name_or_path, **kwargs):
        return real_load(str(tiny_model_dir) if name_or_path.startswith("embedded:") else name_or_path, **kwargs)

    def evaluate_tofu(*args, **kwargs):
        return real_evaluate(*args, **{**kwargs, "max_items": 4, "max_new_tokens": 8})

    def load_tofu(config, data_dir=None):
        return real_tofu(config, data_dir).select(range(8))

    monkeypatch.setattr(rklu_llm, "load_model", load_model)
    monkeypatch.setattr(rklu_llm, "load_tofu", load_tofu)
    monkeypatch.setattr(rklu_llm.eval, "evaluate_tofu", evaluate_tofu)
    monkeypatch.setenv("RKLU_TOFU_DIR", str(tofu_dir))
    monkeypatch.chdir(tmp_path)
    code = python_snippet()
    assert 'load_model("embedded:smollm2-135m-instruct")' in code and "bf16=True" not in code.replace("add bf16", "")
    exec(compile(code, str(README), "exec"), {"__name__": "readme"})

    out = tmp_path / "runs" / "rklu_forget01"
    assert (out / "adapter_model.safetensors").is_file() and (out / "tofu_eval.json").is_file()
    card = (out / "README.md").read_text()
    metadata = yaml.safe_load(card.split("---")[1])
    assert "rklu" in metadata["tags"] and metadata["model-index"][0]["results"]
    printed = capsys.readouterr().out
    assert "'probability':" in printed and "model_utility" in printed
    assert re.search(r"^evaluated .*runs/rklu_forget01$", printed, re.MULTILINE)  # the unlearned model ...
    assert re.search(r"^original +\d", printed, re.MULTILINE)  # ... and its yardstick, the model before unlearning


RESULTS = README.parent / "benchmarks" / "results"


def table_under(text: str, heading: str) -> list[str]:
    """The markdown table that follows ``heading`` in ``text`` (its lines, header included)."""
    lines = text.split("\n")
    start = lines.index(heading) + 1
    while not lines[start].startswith("|"):
        start += 1
    end = start
    while end < len(lines) and lines[end].startswith("|"):
        end += 1
    return lines[start:end]


@pytest.mark.parametrize(
    "report,heading",
    [
        ("tofu_cpu_forget01.md", "## In short: every run's first peak, last epoch and oracle-free rule"),
        ("copyright_smollm2.md", "## In short: each method at its selected setting"),
    ],
)
def test_the_readme_quotes_the_committed_results_table(report, heading):
    """A results table the README quotes is the committed report's, line for line (no number drifts)."""
    table = table_under((RESULTS / report).read_text(), heading)
    assert len(table) > 2, f"{report} has no rows under {heading!r}"
    assert "\n".join(table) in README.read_text(), f"README.md's copy of {report}'s table differs from the report"
