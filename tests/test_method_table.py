"""The method table (issue 21): every method is one entry of ``rklu_llm.methods.METHODS`` with its docs page, its
config, its card entry and its test case, and nothing else names it; ``docs/extending.md``'s walk-through, followed
with a toy method in a temporary module, trains."""

from __future__ import annotations

import importlib
import re
import sys
from dataclasses import fields
from pathlib import Path

import pytest
import torch
import yaml
from conftest import build_tiny_model, tiny_config
from test_classification_trainer import CLASSIFIER_METHODS
from test_trainer import TRAINING_METHODS

from rklu_llm import METHODS, UnlearnConfig, UnlearnTrainer, build_unlearning_dataset, load_tofu
from rklu_llm.hub import write_model_card
from rklu_llm.scripts.classifier import ORACLE, PROTOCOL

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "recipes" / "configs"
#: the method named in each example config (``method:``)
CONFIG_METHODS = {yaml.safe_load(p.read_text()).get("method") for p in CONFIGS.glob("*.yaml")}
TESTS_TEXT = "\n".join(p.read_text() for p in (REPO / "tests").glob("test_*.py"))


def missing_pieces(name: str) -> list[str]:
    """What method ``name`` still lacks besides its entry: a docs page, a config, a test case."""
    spec = METHODS[name]
    missing = []
    if not (REPO / "docs" / "methods" / f"{name}.md").is_file():
        missing.append(f"docs/methods/{name}.md")
    lm_config = name in CONFIG_METHODS  # recipes/configs/<...>_<name>.yaml with method: <name>
    classifier_config = name in PROTOCOL or name == ORACLE  # the classifier recipe's per-method settings
    if spec.batch != "classifier" and not lm_config:
        missing.append(f"a recipes/configs/*.yaml with method: {name}")
    if spec.batch == "classifier" and not classifier_config:
        missing.append(f"{name}'s settings in rklu_llm.scripts.classifier.PROTOCOL")
    tested = (
        (spec.trains and spec.batch != "classifier" and name in TRAINING_METHODS)
        or (spec.batch != "lm" and name in CLASSIFIER_METHODS)
        or f'"{name}"' in TESTS_TEXT
    )
    if not tested:
        missing.append(f"a test case of {name}")
    return missing


@pytest.mark.parametrize("name", sorted(METHODS))
def test_every_method_has_its_docs_page_config_and_test(name):
    assert missing_pieces(name) == []


@pytest.mark.parametrize("name", sorted(METHODS))
def test_every_entry_is_complete(name):
    """Its loss for every kind of batch it accepts, its card fields real config fields, its counts a real group."""
    spec = METHODS[name]
    assert spec.batch in ("lm", "classifier", "both")
    if spec.trains and not spec.uses_retain_data:
        assert (spec.lm_loss is not None) == (spec.batch != "classifier"), name
        assert (spec.classifier_loss is not None) == (spec.batch != "lm"), name
    assert spec.trains == (spec.edit is None), name
    assert set(spec.card_fields) <= {f.name for f in fields(UnlearnConfig)}, name
    assert spec.counts in {(g, k) for g in ("forget", "refusal") for k in ("tokens", "sequences")}
    assert spec.default_divergence in ("reverse", "forward")


@pytest.mark.parametrize("name", sorted(METHODS))
def test_every_method_has_its_card_entry(tmp_path, name):
    """The card names the method, its loss in words and each of its settings (``card_fields``) with its value."""
    config = UnlearnConfig(output_dir=str(tmp_path / "out"), method=name, use_cpu=True, report_to="none")
    write_model_card(tmp_path, config, "base", "data")
    card = (tmp_path / "README.md").read_text()
    assert f"`{name}`: {METHODS[name].loss}" in card
    for field_name in METHODS[name].card_fields:
        assert f"| `{field_name}` |" in card, field_name


def test_no_method_name_is_compared_outside_the_table():
    """Method names are compared only in ``rklu_llm/methods`` and ``config.py``: everything else reads entry fields."""
    names = "|".join(re.escape(m) for m in METHODS)
    comparison = re.compile(  # == "ga", in ("ga", ...), "ga" in methods, .startswith("token_")
        rf"""(==|!=)\s*["']({names})["']|\bin\s*\(?\s*["']({names})["']\s*[,)]|["']({names})["']\s+(not\s+)?in\b"""
        r"""|startswith\(["']token"""
    )
    offenders = [
        f"{path.relative_to(REPO)}:{number}: {line.strip()}"
        for path in sorted((REPO / "rklu_llm").rglob("*.py"))
        if "methods" not in path.parts and path.name != "config.py"
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if comparison.search(line)
    ]
    assert offenders == []


# ---------------------------------------------------------------------------------------------------------------
# docs/extending.md, followed: a toy method in a module of its own, one table line, a few training steps
# ---------------------------------------------------------------------------------------------------------------
TOY_MODULE = '''
"""Unlikelihood on the forget answers: L = -mean_t log(1 - p_theta(y_t | y_<t))."""

import torch

from rklu_llm.losses import answer_positions
from rklu_llm.methods import Method
from rklu_llm.methods.entry import student_logits


def unlikelihood(frozen, student, inputs, step):
    forget = inputs["forget"]
    logits = student_logits(student, forget)  # (B, T, V)
    answers, mask = answer_positions(logits, forget["labels"])  # (N, V), (B, T - 1)
    targets = forget["labels"][:, 1:][mask]  # (N,)
    p = answers.float().softmax(-1).gather(-1, targets[:, None]).squeeze(-1)  # (N,)
    return -torch.log1p(-p.clamp(max=1 - 1e-6)).sum() / step.num_items, logits


UNLIKELIHOOD = Method(
    loss="unlikelihood: -log(1 - p(y)) on every forget answer token",
    lm_loss=unlikelihood,
)
'''
#: the files the walk-through touches in the repository: the new method's file, the table's line, its docs page and its
#: config; its test case comes with the table line (docs/extending.md)
WALK_THROUGH_FILES = 4


def test_extending_walk_through_trains_a_toy_method(tmp_path, monkeypatch, tiny_tokenizer, tofu_dir):
    module_dir = tmp_path / "toy"
    module_dir.mkdir()
    (module_dir / "toy_unlikelihood.py").write_text(TOY_MODULE)  # step 1: the method's file
    monkeypatch.syspath_prepend(str(module_dir))
    toy = importlib.import_module("toy_unlikelihood")
    monkeypatch.setitem(METHODS, "unlikelihood", toy.UNLIKELIHOOD)  # step 2: its line in the table
    monkeypatch.delitem(sys.modules, "toy_unlikelihood")
    # steps 3-4 are what the table's tests ask for; the every-method tests already count it as a test case
    assert missing_pieces("unlikelihood") == [
        "docs/methods/unlikelihood.md",
        "a recipes/configs/*.yaml with method: unlikelihood",
    ]
    extending = (REPO / "docs" / "extending.md").read_text()
    assert f"{WALK_THROUGH_FILES} files" in extending and "UNLIKELIHOOD = Method(" in extending

    config = tiny_config(tmp_path / "out", "unlikelihood", max_steps=3, max_length=256)
    assert config.retain_mode == "none" and config.divergence == "reverse" and not config.needs_reference
    dataset = build_unlearning_dataset(tiny_tokenizer, load_tofu("forget01", tofu_dir).select(range(8)), max_length=256)
    trainer = UnlearnTrainer(
        model=build_tiny_model(tiny_tokenizer), args=config, train_dataset=dataset, processing_class=tiny_tokenizer
    )
    assert trainer.ref_model is None and trainer.aug_model is None  # it asked for no frozen model
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    trainer.save_model()
    assert trainer.state.global_step == 3
    logged = [row for row in trainer.state.log_history if "forget/loss" in row]
    assert len(logged) == 3 and all(row["forget/loss"] > 0 and "forget/nll" in row for row in logged)
    assert any(not torch.equal(before[n], p) for n, p in trainer.model.named_parameters())
    card = (tmp_path / "out" / "README.md").read_text()
    assert "`unlikelihood`: unlikelihood: -log(1 - p(y))" in card and "| `forget_weight` |" in card
