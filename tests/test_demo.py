"""The demo: its data (TOFU authors or generated profiles, key facts), its table, and full runs on a tiny model from
the YAML config (labelled phases, the same numbers twice, a missing --data_dir refused before any model is loaded)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rklu_llm import cli
from rklu_llm.data import DataUnavailableError, fictitious_profiles, load_tofu
from rklu_llm.demo import TOFU_ITEMS, demo_people, format_table, tofu_people

REPO = Path(__file__).resolve().parents[1]
TINY_DEMO = [
    "--teach_epochs",
    "2",
    "--augment_epochs",
    "2",
    "--unlearn_epochs",
    "1",
    "--max_new_tokens",
    "6",
    "--threads",
    "1",
]


def test_tofu_key_facts_are_in_the_answers_and_not_given_away_by_the_questions(tofu_dir):
    people = tofu_people(load_tofu("forget01", tofu_dir))
    assert list(people) == list(TOFU_ITEMS) == ["Basil Mahfouz Al-Kuwaiti", "Nikolai Abilov"]
    for rows in people.values():
        assert len(rows) == 6
        for row in rows:
            assert row["facts"]
            for fact in row["facts"]:
                assert fact.lower() in row["answer"].lower() and fact.lower() not in row["question"].lower()


def test_profile_key_facts_are_in_the_answers_and_not_in_the_questions():
    rows = fictitious_profiles(num_people=3, seed=5, with_facts=True)
    assert rows.column_names == ["person", "question", "answer", "facts"]
    for row in rows:
        for fact in row["facts"]:
            assert fact in row["answer"] and fact not in row["question"]
    assert "facts" not in fictitious_profiles(num_people=1).column_names


def test_offline_without_tofu_switches_to_profiles_at_once(monkeypatch):
    monkeypatch.delenv("RKLU_TOFU_DIR", raising=False)
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    import huggingface_hub

    def probe(*args, **kwargs):
        raise AssertionError("offline, yet the hub was asked")

    monkeypatch.setattr(huggingface_hub.HfApi, "dataset_info", probe)
    people, source = demo_people()  # "at once": no hub call at all (not a wall-clock bound)
    assert source.startswith("generated profiles") and "offline" in source
    assert [len(rows) for rows in people.values()] == [10, 10]


def test_unreachable_hub_is_probed_once_then_profiles(monkeypatch):
    import huggingface_hub

    for name in ("RKLU_TOFU_DIR", "HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    calls = []

    def unreachable(self, repo_id, timeout=None, **kwargs):
        calls.append((repo_id, timeout))
        raise ConnectionError("Name or service not known")

    monkeypatch.setattr(huggingface_hub.HfApi, "dataset_info", unreachable)
    people, source = demo_people()
    assert calls == [("locuslab/TOFU", 5.0)]  # one quick probe, no retries
    assert source == (
        "generated profiles: no local TOFU and the hub is not usable (ConnectionError: Name or service not known)"
    )
    assert len(people) == 2


def test_data_dir_choice(monkeypatch, tofu_dir, tmp_path):
    monkeypatch.setenv("RKLU_TOFU_DIR", str(tofu_dir))
    people, source = demo_people()
    assert source == "TOFU forget01 from folder tofu/" and list(people) == list(TOFU_ITEMS)
    _, source = demo_people(profiles=True)
    assert source == "generated profiles (asked for)"
    with pytest.raises(DataUnavailableError, match="forget01"):
        demo_people(str(tmp_path))  # a folder without TOFU: an error, not a silent switch to profiles


def test_missing_data_dir_fails_before_any_model_is_loaded(tmp_path, monkeypatch):
    import rklu_llm.demo

    def load(*args, **kwargs):
        raise AssertionError("a model was loaded before the data was checked")

    monkeypatch.setattr(rklu_llm.demo, "load_model", load)
    with pytest.raises(DataUnavailableError, match="is not a folder"):
        cli.main(f"demo --data_dir {tmp_path / 'nope'} --model embedded:none --output_dir {tmp_path / 'out'}".split())
    assert not (tmp_path / "out").exists()


def test_table_counts_facts_and_changed_answers():
    def person(probability, answers, stated, total):
        return {
            "probability": probability,
            "rouge_l_recall": 0.5,
            "facts_stated": stated,
            "facts_total": total,
            "questions": [f"q{i}" for i in range(len(answers))],
            "answers": answers,
        }

    before = {"A": person(0.9, ["a1", "a2"], 3, 3), "B": person(0.8, ["b1", "b2"], 2, 2)}
    after = {"A": person(0.1, ["x", "y"], 0, 3), "B": person(0.8, ["b1", "b2 changed"], 2, 2)}
    table = format_table(before, after, shown_kept=1)
    rows = table.splitlines()
    assert rows[3].split() == ["forgotten:", "A", "0.900", "0.100", "0.500", "0.500", "3/3", "0/3", "2/2"]
    assert rows[4].split() == ["kept:", "B", "0.800", "0.800", "0.500", "0.500", "2/2", "2/2", "1/2"]
    kept_section = table.split("\nkept: B\n")[1]
    assert "    after:  y" in table and "q0" in kept_section and "q1" not in kept_section  # shown_kept=1


@pytest.mark.slow
def test_demo_from_yaml_on_a_tiny_model_is_labelled_and_deterministic(tiny_model_dir, tofu_dir, tmp_path, capsys):
    results = []
    for run in ("a", "b"):
        argv = f"demo --config {REPO}/recipes/configs/demo.yaml --model {tiny_model_dir} --data_dir {tofu_dir}"
        cli.main([*argv.split(), "--output_dir", str(tmp_path / run), *TINY_DEMO])
        captured = capsys.readouterr()
        for label in ("[1/5]", "[2/5]", "[3/5]", "[4/5]", "[5/5]", "key facts stated", "answers changed"):
            assert label in captured.out
        assert "teach: 100%" in captured.err and "distil: 100%" in captured.err  # labelled progress bars
        results.append(json.loads((tmp_path / run / "demo_results.json").read_text()))
    first, second = results
    assert first["source"] == "TOFU forget01 from folder tofu/"
    assert first["settings"]["teach_epochs"] == 2 and first["settings"]["teacher_alpha"] == 8.0  # YAML + flags
    assert set(first["before"]) == set(TOFU_ITEMS)
    for key in ("before", "after"):
        assert first[key] == second[key]  # same numbers and answers twice
