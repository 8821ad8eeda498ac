"""benchmarks/copyright_protocol.py: the selection rule, the teacher check's prediction line and the lm-eval standard
error on hand-built records; the original's check; bad input refused before any model is loaded; one resumable pass
on a tiny model that writes records and the report, and a second that skips what finished."""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path

import pytest
from conftest import SHARED_DATA, load_benchmark


@pytest.fixture(scope="module")
def protocol():
    return load_benchmark("copyright_protocol")


def record(setting, forget_bleu, ppl, control_bleu=3.0, verdict=None, method=None):
    return {
        "setting": setting,
        "method": method or setting.split("_")[0],
        "forget_bleu": forget_bleu,
        "control_bleu": control_bleu,
        "wikitext_perplexity": ppl,
        "teacher_check": None if verdict is None else {"verdict": verdict},
    }


def test_selection_is_the_lowest_bleu_within_the_perplexity_budget(protocol):
    # original perplexity 20: budget 1.10 x 20 = 22
    runs = [record("ga_lr1", 1.0, 40.0), record("ga_lr2", 4.0, 21.9), record("ga_lr3", 6.0, 20.5)]
    best, why = protocol.select(runs, original_ppl=20.0)
    assert best["setting"] == "ga_lr2" and "lowest forget BLEU" in why  # ga_lr1 forgets more but costs 2x perplexity
    # nothing within the budget: the lowest perplexity ratio, said so
    best, why = protocol.select([record("ga_lr1", 1.0, 40.0), record("ga_lr3", 6.0, 30.0)], original_ppl=20.0)
    assert best["setting"] == "ga_lr3" and "no setting within 1.1x" in why
    # a wider budget is a flag
    assert protocol.select(runs, original_ppl=20.0, max_ppl_ratio=2.0)[0]["setting"] == "ga_lr1"
    assert protocol.select([], original_ppl=20.0) is None


def test_frontier(protocol):
    runs = [record("a", 5.0, 20.0), record("b", 6.0, 21.0), record("c", 1.0, 30.0), record("d", 0.5, 90.0)]
    assert [r["setting"] for r in protocol.frontier(runs)] == ["a", "c", "d"]  # b: a has lower BLEU and perplexity


def test_teacher_prediction_line(protocol):
    # the original at forget BLEU 9 against the control's 3 (3x): a setting kept the book above 1 + 0.5 x (3 - 1) = 2x
    original = {"forget_bleu": 9.0, "control_bleu": 3.0}
    assert protocol.kept_threshold(original) == pytest.approx(2.0)
    right = [
        record("rklu_a", 7.0, 20.0, verdict="weak"),  # 7 / 3 > 2: kept, as predicted
        record("rklu_b", 5.0, 20.0, verdict="ok"),  # 5 / 3 <= 2: not kept, as predicted
        record("fklu_c", 1.0, 20.0),  # no check: not counted
    ]
    result = protocol.teacher_prediction(right, original)
    assert result["checked"] == 2 and result["as_predicted"] == 2 and result["misses"] == []
    assert result["line"].startswith("Teacher check predicted the outcome: 2/2") and "above 2.00" in result["line"]
    wrong = right + [record("rklu_d", 7.0, 20.0, verdict="ok"), record("fklu_e", 2.0, 20.0, verdict="weak")]
    result = protocol.teacher_prediction(wrong, original)
    assert result["misses"] == ["rklu_d", "fklu_e"]
    assert "did NOT predict" in result["line"] and "2/4" in result["line"] and "rklu_d, fklu_e" in result["line"]
    assert "no rklu / fklu setting" in protocol.teacher_prediction([], original)["line"]


def test_the_report_judges_every_record_by_the_current_verdict():
    from rklu_llm.teacher_check import stored_verdict

    """A record stores the check's numbers: one made under the earlier absolute rule ("ok" at 48% top-1 true, below
    0.5) is judged by the relative rule (48% of an original's 50%: weak)."""
    stored = record("rklu_x", 4.8, 20.0, verdict="ok")
    stored["teacher_check"].update(teacher_top1_true=0.48, original_top1_true=0.50, max_top1=0.5)
    assert stored_verdict(stored["teacher_check"]) == "weak"
    assert stored_verdict({"verdict": "ok"}) == "ok"  # no numbers: as stored
    assert stored_verdict(None) is None


def test_mean_accuracy_and_its_standard_error(protocol):
    evaluation = {"tasks": {"a": {"acc": 0.5, "acc_stderr": 0.03}, "b": {"acc": 0.7, "acc_stderr": 0.04}}}
    stats = protocol.general_stats(evaluation)
    assert stats["general_average_acc"] == pytest.approx(0.6)
    assert stats["general_average_stderr"] == pytest.approx(math.sqrt(0.03**2 + 0.04**2) / 2)  # 0.025
    change = protocol._acc_change(
        {"general_average_acc": 0.62, "general_average_stderr": 0.005},
        {"general_average_acc": 0.60, "general_average_stderr": 0.005},
    )
    assert change == "+2.0 ± 0.7 (resolved)"  # 2 points > 2 x 0.71
    assert "not resolved" in protocol._acc_change(
        {"general_average_acc": 0.61, "general_average_stderr": 0.025},
        {"general_average_acc": 0.60, "general_average_stderr": 0.025},
    )


def args_for(protocol, tmp_path, *extra):
    return protocol.parse(["--data_root", str(SHARED_DATA), "--work_dir", str(tmp_path / "w"), *extra])


def test_the_original_must_know_the_book_without_having_memorised_it(protocol, tmp_path):
    args = args_for(protocol, tmp_path)
    base = {"forget_bleu": 3.0, "control_bleu": 3.0, "wikitext_perplexity": 80.0}
    good = {"forget_bleu": 12.0, "control_bleu": 3.0, "wikitext_perplexity": 84.0}
    protocol.check_original(args, base, good)  # 4x the control, perplexity 1.05x: passes
    with pytest.raises(SystemExit, match="does not know the book; raise --finetune_epochs"):
        protocol.check_original(args, base, good | {"forget_bleu": 4.0})  # 1.33x the control
    # the original measured with the defaults (5 epochs at 1e-3): 1.74x the control at 1.45x the base's perplexity
    measured = {"forget_bleu": 4.862, "control_bleu": 2.787, "wikitext_perplexity": 73.887}
    protocol.check_original(args, base | {"wikitext_perplexity": 50.98}, measured)
    with pytest.raises(SystemExit, match="damaged the model"):  # 1.6x
        protocol.check_original(args, base | {"wikitext_perplexity": 50.98}, measured | {"wikitext_perplexity": 81.6})
    with pytest.raises(SystemExit, match="memorised the book; lower --finetune_epochs"):
        protocol.check_original(args, base, good | {"forget_bleu": 99.0})
    with pytest.raises(SystemExit, match="damaged the model; lower --finetune_lr"):
        protocol.check_original(args, base, good | {"wikitext_perplexity": 560.0})


def test_the_settings_of_the_protocol(protocol, tmp_path):
    args = args_for(protocol, tmp_path, "--lrs", "1e-4,1e-3")
    plan = protocol.settings(args)
    names = [s.name for s in plan]
    assert len(names) == len(set(names)) == 2 * (6 + 2 * 4)  # 6 methods once, rklu / fklu x 2 epochs x 2 alphas
    assert "rklu_lr0.0001_aug10_a8" in names and "fklu_lr0.001_aug1_a4" in names and "ta_lr0.001" in names
    ta, rklu = plan[names.index("ta_lr0.001")], plan[names.index("rklu_lr0.001_aug1_a8")]
    assert ta.augment_key == rklu.augment_key == "lr0.001_aug1"  # one augmented model shared
    assert plan[names.index("ga_lr0.001")].augment_key is None


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--lrs", "1e-3"], "at least two learning rates"),
        (["--lrs", "1e-3,0"], "must be positive"),
        (["--alphas", "4,0"], "teacher alpha must be > 0"),
        (["--augment_epochs", "0,10"], "need an augmented model"),
        (["--methods", "ga,npo"], "--teacher_check needs an augmented model"),
        (["--methods", "rklu,sgd"], r"unknown \['sgd'\]"),
        (["--num_chunks", "0"], "an empty forget set"),
        (["--num_chunks", "16"], "fewer than the protocol's 64"),
        (["--forget_text", "ulysses.txt"], "--forget_text ulysses.txt: no such file"),
        (["--forget_text", "EMPTY"], "the book is empty"),
    ],
)
def test_bad_input_is_refused_before_any_model_is_loaded(protocol, tmp_path, monkeypatch, extra, message):
    from rklu_llm import models
    from rklu_llm.scripts import copyright as recipe

    monkeypatch.setattr(models, "load_model", lambda *a, **k: pytest.fail("a model was loaded"))
    monkeypatch.setattr(recipe, "load_model", lambda *a, **k: pytest.fail("a model was loaded"))  # imported at its top
    monkeypatch.setattr(protocol, "load_bench", lambda: pytest.fail("the benchmark was loaded"))
    empty = tmp_path / "empty.txt"
    empty.write_text("  \n")
    extra = [str(empty) if value == "EMPTY" else value for value in extra]
    with pytest.raises(SystemExit, match=message):
        protocol.main(["--data_root", str(SHARED_DATA), "--work_dir", str(tmp_path / "w"), *extra])
    assert not (tmp_path / "w").exists()


def test_training_rates_unmeasured_here_are_scaled_to_this_machine(protocol):
    fallback = protocol.FALLBACK_S_PER_TOKEN
    measured = {"ga": fallback["ga"] / 4, "rklu": fallback["rklu"] / 2, "ta": 0.5}  # ta trains nothing: no scale
    assert protocol.training_rate("ga", measured) == measured["ga"]
    assert protocol.training_rate("fklu", measured) == measured["rklu"]  # the same steps
    assert protocol.training_rate("npo", measured) == pytest.approx(fallback["npo"] * (0.25 + 0.5) / 2)
    assert protocol.training_rate("npo", {}) == fallback["npo"]


def test_plan_estimates_without_running(protocol, tmp_path, capsys, monkeypatch):
    from rklu_llm import models
    from rklu_llm.scripts import copyright as recipe

    monkeypatch.setattr(models, "load_model", lambda *a, **k: pytest.fail("a model was loaded"))
    monkeypatch.setattr(recipe, "load_model", lambda *a, **k: pytest.fail("a model was loaded"))  # imported at its top
    work, results = str(tmp_path / "w"), str(tmp_path / "r")
    protocol.main(
        ["--data_root", str(SHARED_DATA), "--work_dir", work, "--results_dir", results, "--lrs", "1e-4,1e-3", "--plan"]
    )
    out = capsys.readouterr().out
    assert "original: fine-tune" in out and "rklu_lr0.0001_aug10_a8" in out
    assert "28 of 28 settings left" in out and "measured here for nothing yet" in out
    assert not (tmp_path / "w").exists()


@pytest.mark.slow
def test_one_pass_on_a_tiny_model_resumes_and_reports(protocol, tiny_model_dir, tmp_path, capsys):
    work, results = tmp_path / "work", tmp_path / "results"
    argv = [
        "--data_root",
        str(SHARED_DATA),
        "--work_dir",
        str(work),
        "--results_dir",
        str(results),
        "--model",
        str(tiny_model_dir),
        "--methods",
        "rklu,ta,ga",
        "--lrs",
        "1e-3,1e-2",
        "--augment_epochs",
        "1",
        "--alphas",
        "4",
        "--num_chunks",
        "4",
        "--min_chunks",
        "1",
        "--chunk_tokens",
        "48",
        "--num_segments",
        "4",
        "--segment_tokens",
        "32",
        "--general_tasks",
        "copa",
        "--general_limit",
        "4",
        "--finetune_epochs",
        "1",
        "--unlearn_epochs",
        "1",
        "--batch_size",
        "4",
        # a tiny random model neither knows the book nor keeps its perplexity: the check's bounds opened
        "--min_knowledge_ratio",
        "0",
        "--max_knowledge_ratio",
        "inf",
        "--max_original_ppl_ratio",
        "inf",
    ]
    protocol.main([*argv, "--max_runs", "1"])  # the original, then the first setting only
    assert (work / "original" / "finetuned" / "run.json").is_file()
    assert (work / "original" / "base" / "run.json").is_file()
    runs = results / "copyright_runs"
    assert sorted(p.name for p in runs.glob("*.json")) == ["rklu_lr0.001_aug1_a4.json"]
    rklu = json.loads((runs / "rklu_lr0.001_aug1_a4.json").read_text())
    assert rklu["teacher_check"]["verdict"] in ("weak", "ok") and rklu["alpha"] == 4.0
    assert rklu["augment_seconds"] > 0 and rklu["seconds"] >= rklu["augment_seconds"]
    # lm-eval waits for the method's selected setting (general_at "selected", the default)
    assert rklu["general_at"] == "selected" and rklu["general_tasks"] == {} and rklu["general_average_acc"] is None
    data = json.loads((results / "copyright_smollm2.json").read_text())
    assert data["settings_finished"] == ["rklu_lr0.001_aug1_a4"] and len(data["settings_planned"]) == 6
    assert data["selected"]["rklu"]["setting"] == "rklu_lr0.001_aug1_a4"
    assert data["references"]["original"]["general_average_stderr"] is not None
    table = (results / "copyright_smollm2.md").read_text()
    assert "## Protocol" in table and "lowest forget BLEU" in table and "| rklu_lr0.001_aug1_a4 |" in table
    assert "Teacher check" in table
    compact = table.split(protocol.COMPACT_HEADING)[1].split("\n## ")[0]  # the README's table: one line per method
    assert "| rklu | lr 0.001, 1 aug. epoch, alpha 4 (1 of 2) |" in compact
    assert (results / "copyright_smollm2.png").stat().st_size > 0

    # a second pass resumes: nothing redone, the next setting (ta, on rklu's augmented model) runs
    stamp = (runs / "rklu_lr0.001_aug1_a4.json").stat().st_mtime_ns
    protocol.main([*argv, "--max_runs", "1"])
    assert sorted(p.name for p in runs.glob("*.json")) == ["rklu_lr0.001_aug1_a4.json", "ta_lr0.001.json"]
    assert (runs / "rklu_lr0.001_aug1_a4.json").stat().st_mtime_ns == stamp
    link = work / "settings" / "ta_lr0.001" / "augmented"
    assert link.is_symlink() and not Path(os.readlink(link)).is_absolute()  # shared, not rebuilt; relative
    assert (link / "adapter_config.json").is_file() or (link / "config.json").is_file()
    capsys.readouterr()
    protocol.main([*argv, "--plan"])
    plan = capsys.readouterr().out
    assert "original: done" in plan and "ta_lr0.001" in plan and "4 of 6 settings left" in plan
    assert "measured here for rklu, ta, augment, eval" in plan
    assert "lm-eval: rklu, selected" in plan and "lm-eval: ga, selected" in plan

    # another protocol in the same work dir is refused; report_only runs nothing
    with pytest.raises(SystemExit, match="another protocol"):
        protocol.main([*argv, "--unlearn_epochs", "2", "--max_runs", "1"])
    protocol.main([*argv, "--report_only"])
    protocol.main([*argv, "--deadline_s", "0"])  # past its deadline at once: starts nothing new
    assert len(list(runs.glob("*.json"))) == 2
    # the protocol's own bounds: this original (a tiny random model) does not know the book, so nothing more runs
    assert argv[-6] == "--min_knowledge_ratio"
    with pytest.raises(SystemExit, match="does not know the book; raise --finetune_epochs or --finetune_lr"):
        protocol.main([*argv[:-6], "--max_runs", "1"])
    assert len(list(runs.glob("*.json"))) == 2

    # every ta setting finished: lm-eval runs on ta's selected setting, and only there
    protocol.main([*argv, "--methods", "ta", "--no-teacher_check", "--max_runs", "1"])
    ta = {p.stem: json.loads(p.read_text()) for p in runs.glob("ta_*.json")}
    assert sorted(ta) == ["ta_lr0.001", "ta_lr0.01"]
    selected = json.loads((results / "copyright_smollm2.json").read_text())["selected"]
    assert set(selected) == {"rklu", "ta"}  # a driver limited to ta still reports rklu's finished setting
    assert "3 of 4 settings finished" in (results / "copyright_smollm2.md").read_text()  # rklu's and ta's settings
    chosen = selected["ta"]["setting"]
    assert set(ta[chosen]["general_tasks"]) == {"copa"} and ta[chosen]["general_average_stderr"] is not None
    assert ta[chosen]["general_seconds"] > 0
    assert all(ta[name]["general_average_acc"] is None for name in ta if name != chosen)
    assert json.loads((runs / "rklu_lr0.001_aug1_a4.json").read_text())["general_average_acc"] is None
    capsys.readouterr()
    protocol.main([*argv, "--methods", "ta", "--no-teacher_check", "--plan"])
    plan = capsys.readouterr().out
    measured = plan.split("measured here for")[1].split(";")[0]
    assert "lm-eval: ta, selected" in plan and "lm-eval" in measured

    # a record adopted from another machine's work dir has no model here: the selected setting is run again before
    # lm-eval, and measured only if the rebuild evaluates as its record did
    general_keys = ("general_average_acc", "general_average_stderr", "general_tasks", "general_seconds")
    adopted = {k: v for k, v in ta[chosen].items() if k not in general_keys} | protocol.general_stats(None)
    shutil.rmtree(work / "settings" / chosen / "ta")
    (runs / f"{chosen}.json").write_text(json.dumps(adopted))
    capsys.readouterr()
    protocol.main([*argv, "--methods", "ta", "--no-teacher_check", "--plan"])
    assert "lm-eval: ta, selected" in (plan := capsys.readouterr().out) and "its model run again first" in plan
    protocol.main([*argv, "--methods", "ta", "--no-teacher_check"])
    assert f"{chosen}'s model is not in" in (out := capsys.readouterr().out) and "evaluates as its record" in out
    assert (work / "settings" / chosen / "ta" / "config.json").is_file()
    measured = json.loads((runs / f"{chosen}.json").read_text())
    assert measured["general_average_acc"] == ta[chosen]["general_average_acc"]  # the same model, the same items
    assert measured["forget_bleu"] == ta[chosen]["forget_bleu"]  # the record kept, not replaced by the rebuild's
    # a rebuild that evaluates otherwise is not measured, and its record is left as it was
    shutil.rmtree(work / "settings" / chosen / "ta")
    other_record = adopted | {"control_bleu": adopted["control_bleu"] + 1.0}  # not read by the selection
    (runs / f"{chosen}.json").write_text(json.dumps(other_record))
    protocol.main([*argv, "--methods", "ta", "--no-teacher_check"])
    assert "does not evaluate as its record" in capsys.readouterr().out
    assert json.loads((runs / f"{chosen}.json").read_text()) == other_record
    (runs / f"{chosen}.json").write_text(json.dumps(ta[chosen]))

    # a fresh checkout (no work dir) rebuilds the report from the committed results, the original's rows included
    data = json.loads((results / "copyright_smollm2.json").read_text())
    assert data["original_check"] == {"passed": True, "problems": []}
    fresh = [a if a != str(work) else str(tmp_path / "fresh") for a in argv]
    protocol.main([*fresh, "--report_only"])
    again = json.loads((results / "copyright_smollm2.json").read_text())
    assert again["references"] == data["references"] and again["settings_finished"] == data["settings_finished"]
    assert "| original (fine-tuned on the book) |" in (results / "copyright_smollm2.md").read_text()
    assert not (tmp_path / "fresh").exists()

    # a new machine rebuilds the original (seeded: the same one) and goes on; another original is refused
    rebuilt = [a if a != str(work) else str(tmp_path / "rebuilt") for a in argv]
    protocol.main([*rebuilt, "--max_runs", "0"])
    assert (tmp_path / "rebuilt" / "original" / "finetuned" / "run.json").is_file()
    data = json.loads((results / "copyright_smollm2.json").read_text())
    data["references"]["original"]["wikitext_perplexity"] += 1.0
    (results / "copyright_smollm2.json").write_text(json.dumps(data))
    other = [a if a != str(work) else str(tmp_path / "other") for a in argv]
    with pytest.raises(SystemExit, match="does not evaluate as the one the settings finished"):
        protocol.main([*other, "--max_runs", "1"])
    assert json.loads((results / "copyright_smollm2.json").read_text()) == data  # the committed results untouched
