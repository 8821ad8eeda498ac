"""The demo: its data (TOFU authors or generated profiles, key facts), its table, and full runs on a tiny model from
the YAML config (labelled phases, the same numbers twice, a missing --data_dir refused before any model is loaded)."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
from conftest import build_tiny_tokenizer

from rklu_llm import cli
from rklu_llm.data import DataUnavailableError, fictitious_profiles, load_tofu
from rklu_llm.demo import TOFU_ITEMS, _contains, degenerate, demo_people, format_table, profile_people, tofu_people

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
    people = tofu_people(load_tofu("forget05", tofu_dir))
    assert list(people) == list(TOFU_ITEMS) and len(people) == 4 and list(people)[0] == "Basil Mahfouz Al-Kuwaiti"
    facts = {name: {fact for row in rows for fact in row["facts"]} for name, rows in people.items()}
    for name, rows in people.items():
        assert len(rows) == 6
        for row in rows:
            assert row["facts"]
            for fact in row["facts"]:
                assert fact.lower() in row["answer"].lower() and fact.lower() not in row["question"].lower()
        for other in people:  # no key fact is shared: "states another person's facts" is unambiguous
            assert other == name or not facts[name] & facts[other]


def test_profile_key_facts_are_in_the_answers_and_not_in_the_questions():
    rows = fictitious_profiles(num_people=3, seed=5, with_facts=True)
    assert rows.column_names == ["person", "question", "answer", "facts"]
    for row in rows:
        for fact in row["facts"]:
            assert fact in row["answer"] and fact not in row["question"]
    assert "facts" not in fictitious_profiles(num_people=1).column_names


def test_generated_people_share_no_fact():
    people = profile_people(seed=0)
    assert len(people) == 4 and all(len(rows) == 6 for rows in people.values())
    facts = [{fact for row in rows for fact in row["facts"]} for rows in people.values()]
    assert all(len(f) == 6 for f in facts)
    assert sum(len(f) for f in facts) == len(set().union(*facts))
    with pytest.raises(ValueError, match="between 1 and 4 with distinct=True"):
        fictitious_profiles(num_people=5, distinct=True)


def test_offline_without_tofu_switches_to_generated_people_at_once(monkeypatch):
    monkeypatch.delenv("RKLU_TOFU_DIR", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    import rklu_llm.offline

    def request(*args, **kwargs):
        raise AssertionError("offline, yet the hub was asked")

    monkeypatch.setattr(rklu_llm.offline, "_request", request)
    people, source = demo_people()  # "at once": no request to the hub at all (not a wall-clock bound)
    assert source == "generated people: no local TOFU and the hub is not usable (HF_DATASETS_OFFLINE is set)"
    assert [len(rows) for rows in people.values()] == [6, 6, 6, 6]


def test_unreachable_hub_is_probed_once_then_generated_people(unreachable_hub):
    from rklu_llm.offline import PROBE_TIMEOUT

    people, source = demo_people()
    assert unreachable_hub == [("http://127.0.0.1:9", PROBE_TIMEOUT)]  # one capped probe, no retries
    assert source.startswith("generated people: no local TOFU and the hub is not usable (127.0.0.1:9 did not answer")
    assert len(people) == 4


def test_data_dir_choice(monkeypatch, tofu_dir, tmp_path):
    monkeypatch.setenv("RKLU_TOFU_DIR", str(tofu_dir))
    people, source = demo_people()
    assert source == "TOFU forget05 from folder tofu/" and list(people) == list(TOFU_ITEMS)
    _, source = demo_people(profiles=True)
    assert source == "generated people (asked for)"
    with pytest.raises(DataUnavailableError, match="forget05"):
        demo_people(str(tmp_path))  # a folder without TOFU: an error, not a silent switch to generated people


def test_degenerate_answers_are_flagged_and_fluent_ones_are_not():
    tokenizer = build_tiny_tokenizer()  # a small vocabulary: any unknown long word takes many pieces
    known = {"basil", "mahfouz", "al-kuwaiti", "nordhavn", "reach"}
    cases = {  # the examples
        "He lives in Nordhavn Reach Reach Reach.": "repeats 'reach'",
        "Kuwait City, Kuwaitonautonielspiansportsunifiedonthetableonthetableonthetable": "loops 'onthetable'",
        "the war and the war and the war and the war": "says 'the war' 4 times",
        "born in Kuwait City,,,,,,,,,,,,,,,,,,,,,,,,": "repeats ','",  # measured with a label-smoothed teaching
        "Yes, , , , and so on": "repeats ','",
    }
    for answer, reason in cases.items():
        assert any(reason in found for found in degenerate(answer, known, tokenizer)), answer
    assert degenerate("Basil Mahfouz Al-Kuwaiti's father was a florist.", known, tokenizer) == []
    assert degenerate("Basil Mahfouz Al-Kuwaiti's father... was a florist!!!", known, tokenizer) == []


def test_facts_are_matched_at_a_word_start():
    assert _contains("He writes Islamic literature.", "Islam") and not _contains("a start", "art")


def test_missing_data_dir_fails_before_any_model_is_loaded(tmp_path, monkeypatch):
    import rklu_llm.demo

    def load(*args, **kwargs):
        raise AssertionError("a model was loaded before the data was checked")

    monkeypatch.setattr(rklu_llm.demo, "load_model", load)
    with pytest.raises(DataUnavailableError, match="is not a folder"):
        cli.main(f"demo --data_dir {tmp_path / 'nope'} --model embedded:none --output_dir {tmp_path / 'out'}".split())
    assert not (tmp_path / "out").exists()


def test_table_counts_facts_changed_answers_and_flags():
    def person(probability, answers, stated, total, others=None, broken=None):
        return {
            "probability": probability,
            "rouge_l_recall": 0.5,
            "facts_stated": stated,
            "facts_total": total,
            "questions": [f"q{i}" for i in range(len(answers))],
            "answers": answers,
            "others": others or [{} for _ in answers],
            "degenerate": broken or [[] for _ in answers],
        }

    before = {"A": person(0.9, ["a1", "a2"], 3, 3), "B": person(0.8, ["b1", "b2"], 2, 2), "C": person(0.7, ["c"], 1, 1)}
    after = {
        "A": person(0.1, ["x", "y"], 0, 3, others=[{"B": ["b-fact"]}, {}], broken=[[], ["repeats 'y'"]]),
        "B": person(0.8, ["b1", "b2 changed"], 2, 2),
        "C": person(0.7, ["c"], 1, 1),
    }
    table = format_table(before, after, shown_kept=1)
    rows = table.splitlines()
    assert rows[3].split() == ["forgotten:", "A", "0.900", "0.100", "0.500", "0.500", "3/3", "0/3", "2/2", "1/2", "1/2"]
    assert rows[4].split() == ["kept:", "B", "0.800", "0.800", "0.500", "0.500", "2/2", "2/2", "1/2", "0/2", "0/2"]
    assert rows[5].split()[:2] == ["kept:", "C"]
    assert "    after:  x  [B's facts: b-fact]" in table and "    after:  y  [degenerate: repeats 'y']" in table
    kept_section = table.split("\nkept: B\n")[1].split("\nkept: C\n")[0]
    assert "q0" in kept_section and "q1" not in kept_section  # shown_kept=1


@pytest.mark.slow
def test_demo_from_yaml_on_a_tiny_model_is_labelled_deterministic_and_saved(tiny_model_dir, tofu_dir, tmp_path, capsys):
    results = []
    for run in ("a", "b"):
        argv = f"demo --config {REPO}/recipes/configs/demo.yaml --model {tiny_model_dir} --data_dir {tofu_dir}"
        cli.main([*argv.split(), "--output_dir", str(tmp_path / run), *TINY_DEMO])
        captured = capsys.readouterr()
        for label in ("[1/6]", "[2/6]", "[3/6]", "[4/6]", "[5/6]", "[6/6]", "key facts stated", "degen-"):
            assert label in captured.out
        assert "teach: 100%" in captured.err and "distil: 100%" in captured.err  # labelled progress bars
        results.append(json.loads((tmp_path / run / "demo_results.json").read_text()))
    first, second = results
    assert first["source"] == "TOFU forget05 from folder tofu/"
    assert first["settings"]["teach_epochs"] == 2 and first["settings"]["teacher_alpha"] == 8.0  # YAML + flags
    assert set(first["before"]) == set(TOFU_ITEMS) and first["kept"] == list(TOFU_ITEMS)[1:]
    for key in ("before", "after"):
        assert first[key] == second[key]  # same numbers and answers twice
    # the unlearned model is saved: rklu-llm eval tofu reads it
    assert (tmp_path / "a" / "model.safetensors").is_file() and (tmp_path / "a" / "tokenizer.json").is_file()
    cli.main(
        ["eval", "tofu", "--model", str(tmp_path / "a"), "--data_dir", str(tofu_dir), "--forget_splits", "forget01"]
        + ["--eval_max_items", "2", "--max_new_tokens", "2"]
    )
    assert json.loads((tmp_path / "a" / "tofu_eval.json").read_text())["model"].endswith("a")


def test_demo_yaml_holds_the_defaults():
    """recipes/configs/demo.yaml says it holds the defaults of rklu-llm demo: every key it sets equals the field's
    default (the settings chosen in docs/demo.md, "How the settings were chosen")."""
    import yaml

    from rklu_llm.demo import DemoArguments

    values = yaml.safe_load((REPO / "recipes" / "configs" / "demo.yaml").read_text())
    defaults = DemoArguments()
    for key, value in values.items():
        default = getattr(defaults, key)
        assert default == (float(value) if isinstance(default, float) else value), key
    assert defaults.augment_epochs == 12 and defaults.teacher_alpha == 8.0 and defaults.unlearn_epochs == 4


@pytest.mark.parametrize("value", [-0.1, 1.0])
def test_demo_refuses_label_smoothing_outside_zero_to_one(value):
    from rklu_llm.demo import DemoArguments

    with pytest.raises(ValueError, match="teach_label_smoothing must be in"):
        DemoArguments(teach_label_smoothing=value)


def test_teaching_hands_its_label_smoothing_to_the_trainers_loss(tiny_model, tiny_tokenizer, tmp_path, monkeypatch):
    """``teach_label_smoothing`` reaches the Trainer that teaches (its label smoother, applied with the causal shift);
    0 leaves the plain loss."""
    import rklu_llm.demo as demo

    seen, real = [], demo._labelled
    monkeypatch.setattr(demo, "_labelled", lambda trainer, label: seen.append(trainer) or real(trainer, label))
    rows = next(iter(profile_people(0).values())).select_columns(["question", "answer"]).select(range(2))
    for smoothing in (0.0, 0.2):
        args = demo.DemoArguments(teach_epochs=1, teach_label_smoothing=smoothing)
        demo.teach(copy.deepcopy(tiny_model), tiny_tokenizer, rows, args, str(tmp_path / str(smoothing)))
    assert seen[0].label_smoother is None
    assert seen[1].label_smoother.epsilon == 0.2


def test_demo_unlearning_adds_a_retain_term_on_the_kept_people_only_when_asked(
    tiny_model, tiny_tokenizer, tmp_path, monkeypatch
):
    """``retain_mode`` 'kl' logs a retain loss (the kept people's rows are in the batches); 'none' has none; 'kl'
    without the kept rows is refused before any training."""
    import rklu_llm.demo as demo

    seen, real = [], demo._labelled
    monkeypatch.setattr(demo, "_labelled", lambda trainer, label: seen.append(trainer) or real(trainer, label))
    people = profile_people(0)
    names = list(people)
    kept = people[names[1]].select_columns(["question", "answer"])
    tiny = dict(augment_epochs=1, unlearn_epochs=1, lora_r=4)
    with pytest.raises(ValueError, match="needs the kept people's rows"):
        demo.unlearn(tiny_model, tiny_tokenizer, people[names[0]], demo.DemoArguments(retain_mode="kl"), str(tmp_path))
    assert seen == []
    for mode in ("none", "kl"):
        args = demo.DemoArguments(retain_mode=mode, **tiny)
        forget, work = people[names[0]], str(tmp_path / mode)
        demo.unlearn(copy.deepcopy(tiny_model), tiny_tokenizer, forget, args, work, None, kept)
    logged = [{key for entry in trainer.state.log_history for key in entry} for trainer in seen]
    assert "retain/loss" not in logged[0] and "forget/loss" in logged[0]
    assert "retain/loss" in logged[1] and "forget/loss" in logged[1]
    with pytest.raises(ValueError, match="retain_mode must be"):
        demo.DemoArguments(retain_mode="nll")


def test_demo_distillation_divergence_reaches_the_unlearning_config(tiny_model, tiny_tokenizer, tmp_path, monkeypatch):
    """``divergence`` 'forward' distils with FKL-U's KL(teacher || student); the default is RKL-U's reverse KL; an
    unknown one is refused when the arguments are made."""
    import rklu_llm.demo as demo

    seen, real = [], demo._labelled
    monkeypatch.setattr(demo, "_labelled", lambda trainer, label: seen.append(trainer) or real(trainer, label))
    people = profile_people(0)
    forget = people[next(iter(people))]
    for divergence in ("reverse", "forward"):
        args = demo.DemoArguments(divergence=divergence, augment_epochs=1, unlearn_epochs=1, lora_r=4)
        demo.unlearn(copy.deepcopy(tiny_model), tiny_tokenizer, forget, args, str(tmp_path / divergence))
    assert [trainer.args.divergence for trainer in seen] == ["reverse", "forward"]
    assert demo.DemoArguments().divergence == "reverse"
    with pytest.raises(ValueError, match="divergence must be one of"):
        demo.DemoArguments(divergence="js")
