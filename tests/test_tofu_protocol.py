"""benchmarks/tofu_protocol.py: the declared choices (lr per method, the strongest baselines, the stages) on
hand-built run records, the oracle-free rule's verdict, bad input refused before any work, and one resumable pass
on a tiny model that writes the results."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from conftest import load_benchmark

REPO = Path(__file__).resolve().parents[1]
FQ, MU = "forget01_forget_quality", "model_utility"


@pytest.fixture(scope="module")
def protocol():
    return load_benchmark("tofu_protocol")


@pytest.fixture(scope="module")
def bench(protocol):
    return protocol.load_bench()


def run(method, lr, fq, mu, seed=0, retain="none", epoch=1.0, rule_epoch=None, rule_fq=None, rule_mu=None):
    row = {"epoch": epoch, FQ: fq, MU: mu}
    selected = None if rule_epoch is None else {"epoch": rule_epoch, FQ: rule_fq, MU: rule_mu}
    return {"method": method, "retain_mode": retain, "lr": lr, "seed": seed, "first_peak": row, "selected": selected}


def records(bench, *runs):
    return {bench.run_name("forget01", r["method"], r["retain_mode"], r["lr"], r["seed"]): r for r in runs}


GRID = [1e-4, 1e-3]


def test_lr_is_the_highest_forget_quality_at_the_utility_floor(protocol, bench):
    runs = records(bench, run("ga", 1e-4, 0.01, 0.5), run("ga", 1e-3, 0.4, 0.2))  # 1e-3 forgets more, below floor
    assert protocol.choose_lr(runs, bench, "ga", GRID, floor=0.4) == 1e-4
    assert protocol.choose_lr(runs, bench, "ga", GRID, floor=0.1) == 1e-3  # both at the floor: the higher FQ
    # none at the floor: the lr that keeps the most utility
    assert protocol.choose_lr(runs, bench, "ga", GRID, floor=0.9) == 1e-4
    # a grid value not run yet, or no floor yet (fine-tunes unfinished): no choice
    assert protocol.choose_lr(runs, bench, "ga", [*GRID, 1e-2], floor=0.4) is None
    assert protocol.choose_lr(runs, bench, "ga", GRID, floor=None) is None


def test_lr_a_user_without_the_oracle_would_choose(protocol, bench):
    """The rule epoch's holdout p-value at the utility floor, which needs no retrained model."""
    low = run("ga", 1e-4, 0.5, 0.5, rule_epoch=2.0, rule_fq=0.5, rule_mu=0.5)
    high = run("ga", 1e-3, 0.01, 0.5, rule_epoch=2.0, rule_fq=0.01, rule_mu=0.45)
    low["selected"]["holdout_ks_p"], high["selected"]["holdout_ks_p"] = 0.02, 0.3
    runs = records(bench, low, high)
    assert protocol.choose_lr(runs, bench, "ga", GRID, floor=0.4) == 1e-4  # the oracle's forget quality
    assert protocol.choose_lr_without_oracle(runs, bench, "ga", GRID, floor=0.4) == 1e-3  # the holdout p-value
    assert protocol.choose_lr_without_oracle(runs, bench, "ga", GRID, floor=0.48) == 1e-4  # 1e-3 below the floor


def test_stages_follow_the_sweep(protocol, bench):
    args = protocol.parse(["--data_dir", str(REPO), "--work_dir", "w", "--lrs", "1e-4,1e-3"])
    floor = 0.3
    sweep = []
    for method in protocol.SWEPT:  # every swept method: 1e-3 forgets more, at the floor
        sweep += [run(method, 1e-4, 0.01, 0.5), run(method, 1e-3, 0.2 if method == "npo" else 0.05, 0.4)]
    runs = records(bench, *sweep)
    stages = dict(protocol.stages(args, bench, runs, floor))
    # every method at one lr before any method at the next
    assert [(m, lr) for m, lr, _ in stages["sweep"]] == [(m, lr) for lr in GRID for m in protocol.SWEPT]
    assert all(lr == 1e-3 and seeds == (0,) for _, lr, seeds in stages["family"])  # their families' lr
    assert [m for m, _, _ in stages["family"]] == list(protocol.FAMILY)
    # the seeds stage waits for every baseline's chosen run
    assert stages["seeds"][0] == ("rklu", 1e-3, protocol.EXTRA_SEEDS)
    assert all(lr is None for _, lr, _ in stages["seeds"][1:])
    family = [
        run(*protocol.key(m)[:1], 1e-3, 0.3 if m == "dpo" else 0.01, 0.35, retain=protocol.key(m)[1])
        for m in protocol.FAMILY
    ]
    stages = dict(protocol.stages(args, bench, records(bench, *sweep, *family), floor))
    assert [m for m, _, _ in stages["seeds"]] == ["rklu", "dpo", "npo"]  # the two strongest baselines by the score


def test_the_reported_lr_is_the_chosen_one_not_the_sweeps_last(protocol, bench, tmp_path):
    # every swept method: 1e-4 at the floor, 1e-3 forgets more below it; the sweep runs 1e-3 last
    args = protocol.parse(["--data_dir", str(REPO), "--work_dir", "w", "--lrs", "1e-4,1e-3"])
    sweep = []
    for method in protocol.SWEPT:
        sweep += [run(method, 1e-4, 0.01, 0.5), run(method, 1e-3, 0.6, 0.1)]
    runs = records(bench, *sweep)
    assert protocol.sweep_order(args.grid)[-1] == 1e-3
    chosen = protocol.chosen_lrs(args, bench, runs, 0.3)
    assert chosen == {m: 1e-4 for m in [*protocol.SWEPT, *protocol.FAMILY]}
    assert protocol.chosen_lrs(args, bench, runs, None) == {m: None for m in [*protocol.SWEPT, *protocol.FAMILY]}
    # the results file and its table report that choice (they had reported each method's last sweep lr)
    work = tmp_path / "work"
    (work / "runs").mkdir(parents=True)
    for name, record in runs.items():
        record["epochs"] = [{**record["first_peak"], MU: None}]  # the per-epoch curves the plot draws
        (work / "runs" / f"{name}.json").write_text(json.dumps(record))
    args = protocol.parse(
        ["--data_dir", str(REPO), "--work_dir", str(work), "--results_dir", str(tmp_path / "out"), "--lrs", "1e-4,1e-3"]
    )
    protocol.write_report(args, bench, runs, {}, 0.3)
    data = json.loads((tmp_path / "out" / "tofu_cpu_forget01.json").read_text())
    assert data["chosen_lr"] == {m: 1e-4 for m in [*protocol.SWEPT, *protocol.FAMILY]}
    table = (tmp_path / "out" / "tofu_cpu_forget01.md").read_text().split("at its chosen lr")[1]
    assert all(f"| {m} | 0.0001 | 1 |" in table for m in protocol.SWEPT)


def test_drivers_split_the_ready_runs_by_methods(protocol, bench):
    # two drivers on one work dir (--methods): each takes its own methods' ready runs, in plan order, and counts
    # the rest as another driver's; runs whose lr waits for the sweep are nobody's yet
    args = protocol.parse(["--data_dir", str(REPO), "--work_dir", "w", "--lrs", "1e-4,1e-3"])
    done = records(bench, run("rklu", 1e-4, 0.01, 0.5), run("ga", 1e-4, 0.01, 0.5))
    plan = protocol.stages(args, bench, done, 0.3)
    mine, others = protocol.ready_runs(plan, done, bench, {"rklu", "ta", "fklu"})
    assert mine == [("ta", 1e-4, 0), ("rklu", 1e-3, 0), ("ta", 1e-3, 0)]
    assert others == [(m, lr, 0) for lr in GRID for m in ("ga", "npo", "idk") if (m, lr) != ("ga", 1e-4)]
    everything, nobody = protocol.ready_runs(plan, done, bench, protocol.METHOD_KEYS)
    assert nobody == [] and sorted(everything) == sorted(mine + others)


def test_unknown_methods_are_refused_before_any_work(protocol, tofu_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(protocol, "load_bench", lambda: pytest.fail("the benchmark was loaded"))
    with pytest.raises(SystemExit, match="unknown gd; the protocol's methods: .*gd:rt"):
        protocol.main(["--data_dir", str(tofu_dir), "--work_dir", str(tmp_path / "w"), "--methods", "rklu,gd"])
    with pytest.raises(SystemExit, match="empty list"):
        protocol.main(["--data_dir", str(tofu_dir), "--work_dir", str(tmp_path / "w"), "--methods", ","])
    assert not (tmp_path / "w").exists()


@pytest.mark.parametrize(
    "grid, order",
    [
        ([3e-4, 1e-3, 3e-3], [1e-3, 3e-4, 3e-3]),  # the centre, then lower, then higher
        ([3e-3, 3e-4, 1e-3], [1e-3, 3e-4, 3e-3]),  # the order given does not matter
        ([1e-4, 3e-4, 1e-3, 3e-3], [3e-4, 1e-4, 1e-3, 3e-3]),  # even: the lower centre, then outwards
    ],
)
def test_sweep_visits_the_grid_from_its_centre(protocol, grid, order):
    assert protocol.sweep_order(grid) == order


def test_records_made_before_the_plateau_rule_get_the_current_first_peak(protocol):
    """A record whose stored first peak ended at a plateau (epoch 2) gets the current one: forget quality rose again
    and next fell after epoch 4, whose full row is the record's best; a record already right is left as it is."""
    epochs = [{"epoch": float(e), FQ: fq} for e, fq in enumerate([0.01, 0.03, 0.03, 0.2, 0.1], start=1)]
    best = {"epoch": 4.0, FQ: 0.2, MU: 0.3}
    old = {"epochs": epochs, "first_peak": {"epoch": 2.0, FQ: 0.03, MU: 0.5}, "peak": best, "final": {"epoch": 5.0}}
    new = protocol.current_first_peak(old)
    assert new["first_peak"] is best and new["first_peak_epoch"] == 4.0
    assert old["first_peak"]["epoch"] == 2.0  # the record itself is not touched
    assert protocol.current_first_peak(new) is new
    no_full_row = protocol.current_first_peak({**old, "peak": {"epoch": 3.0}})
    assert no_full_row["first_peak"] is epochs[3]  # forget quality only: no utility to show


def test_rule_verdict(protocol):
    near = run("rklu", 1e-3, 0.01, 0.5, epoch=3.0, rule_epoch=4.0, rule_fq=0.001, rule_mu=0.1)
    far_but_good = run("rklu", 1e-3, 0.01, 0.5, epoch=3.0, rule_epoch=6.0, rule_fq=0.1, rule_mu=0.5)
    far_and_bad = run("rklu", 1e-3, 0.01, 0.5, epoch=3.0, rule_epoch=6.0, rule_fq=0.1, rule_mu=0.2)
    assert protocol.rule_verdict(near, floor=0.4) is True
    assert protocol.rule_verdict(far_but_good, floor=0.4) is True
    assert protocol.rule_verdict(far_and_bad, floor=0.4) is False
    assert protocol.rule_verdict(run("rklu", 1e-3, 0.01, 0.5), floor=0.4) is None  # no rule epoch recorded


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--lrs", "1e-3"], "at least two learning rates"),
        (["--lrs", "1e-3,-1"], "positive"),
        (["--lrs", "x,y"], "numbers"),
    ],
)
def test_bad_grid_is_refused_before_any_work(protocol, tofu_dir, tmp_path, monkeypatch, extra, message):
    monkeypatch.setattr(protocol, "load_bench", lambda: pytest.fail("the benchmark was loaded"))
    with pytest.raises(SystemExit, match=message):
        protocol.main(["--data_dir", str(tofu_dir), "--work_dir", str(tmp_path / "w"), *extra])
    assert not (tmp_path / "w").exists()


def test_missing_data_is_refused(protocol, tmp_path):
    with pytest.raises(SystemExit, match="no such folder"):
        protocol.main(["--data_dir", str(tmp_path / "nothing"), "--work_dir", str(tmp_path / "w")])


@pytest.mark.parametrize("flag,cached", [([], True), (["--no-cache_frozen_answers"], False)])
def test_frozen_answer_cache_reaches_every_runs_config(protocol, bench, tofu_dir, tmp_path, flag, cached):
    # on by default (a speed option outside the protocol), off on request; the run's UnlearnConfig gets it
    args = protocol.parse(["--data_dir", str(tofu_dir), "--work_dir", str(tmp_path), *flag])
    argv = protocol.bench_argv(args, "rklu", [1e-3], (0,))
    config = bench.unlearning_config(bench.parse(argv), tmp_path / "run", "rklu", "none", None, 1e-3, 0)
    assert config.cache_frozen_answers is cached


def test_the_seed_1_runs_measure_utility_after_every_epoch(protocol, bench, tofu_dir, tmp_path):
    # runs follow forget quality every epoch and fully evaluate four epochs; the seed-1 runs of the seeds stage (the
    # per-epoch utility curves) fully evaluate every epoch, the rest of the protocol unchanged
    args = protocol.parse(["--data_dir", str(tofu_dir), "--work_dir", str(tmp_path)])
    modes, floors = {}, {}
    for seed in (0, *protocol.EXTRA_SEEDS):
        parsed = bench.parse(protocol.bench_argv(args, "rklu", [1e-3], (seed,), 0.258))
        modes[seed], floors[seed] = bench.evaluation_mode(parsed, "forget01", "rklu"), parsed.holdout_floor
        assert parsed.unlearn_epochs == 10 and parsed.teacher_alpha == 8 and parsed.holdout_rule
    assert modes == {0: "track_peak", 1: "every_epoch", 2: "track_peak"} and protocol.CURVES_SEED == 1
    assert floors == {0: None, 1: 0.258, 2: None}  # the rule's utility floor where utility is known every epoch


def test_the_rule_floor_reaches_the_callback_only_where_utility_is_known_every_epoch(
    protocol, bench, tofu_dir, tmp_path
):
    args = protocol.parse(["--data_dir", str(tofu_dir), "--work_dir", str(tmp_path)])
    floors = {}
    for seed in (0, 1):
        parsed = bench.parse(protocol.bench_argv(args, "rklu", [1e-3], (seed,), 0.258))
        parsed.data = str(tofu_dir)
        mode = bench.evaluation_mode(parsed, "forget01", "rklu")
        callback = bench.evaluation_callback(parsed, None, "forget01", None, mode, {"max_items": 4})
        floors[mode] = (callback.per_epoch, callback.select_by, callback._holdout_floor)
    assert floors == {"track_peak": ("forget_quality", "holdout", None), "every_epoch": ("full", "holdout", 0.258)}


def test_the_benchmarks_rule_floor_is_checked(bench):
    base = ["--data_dir", "d", "--work_dir", "w", "--cpu"]
    assert bench.parse([*base, "--holdout_rule", "--holdout_floor", "0.3"]).holdout_floor == 0.3
    for bad in (["--holdout_floor", "0.3"], ["--holdout_rule", "--holdout_floor", "1.5"]):
        with pytest.raises(SystemExit, match="--holdout_floor needs --holdout_rule"):
            bench.parse([*base, *bad])


@pytest.mark.slow
def test_one_pass_on_a_tiny_model_resumes_and_reports(protocol, tiny_model_dir, tofu_dir, tmp_path):
    work, results = tmp_path / "work", tmp_path / "results"
    tiny = (
        "--retain_subset 32 --utility_retain_items 6 --eval_max_items 8 --max_new_tokens 4 --finetune_epochs 1 "
        "--unlearn_epochs 2 --augment_epochs 1 --batch_size 16 --eval_batch_size 16 --generation_batch_size 64"
    )
    argv = [
        "--data_dir",
        str(tofu_dir),
        "--work_dir",
        str(work),
        "--results_dir",
        str(results),
        "--model",
        str(tiny_model_dir),
        "--lrs",
        "1e-3,1e-2",
        "--extra",
        tiny,
        "--min_original_probability",
        "0",
    ]
    protocol.main([*argv, "--max_runs", "1"])  # the fine-tunes, then the first run (nothing after)
    assert (work / "models" / "full" / "tofu_eval.json").is_file()
    assert (work / "models" / "retain99" / "tofu_eval.json").is_file()
    finished = sorted(p.name for p in (work / "runs").glob("*.json"))
    assert finished == ["forget01_rklu_lr0.001_s0.json"]
    record = json.loads((work / "runs" / finished[0]).read_text())
    assert record["cache_frozen_answers"] is True
    rss = record["process_peak_rss_gib"]  # a high-water mark: it never falls
    assert 0 < rss["at_start"] <= rss["after_evaluation"]
    data = json.loads((results / "tofu_cpu_forget01.json").read_text())
    assert data["runs"] == ["forget01_rklu_lr0.001_s0"] and data["grid"] == [1e-3, 1e-2]
    assert set(data["references"]) == {"original", "oracle"} and data["utility_floor"] is not None
    assert data["invocations"] and str(tmp_path) not in json.dumps(data)  # no absolute local path in the results
    assert (results / "tofu_cpu_forget01_runs" / "forget01_rklu_lr0.001_s0.json").is_file()
    table = (results / "tofu_cpu_forget01.md").read_text()
    assert "| rklu | 0.001 | 0 |" in table and "Utility floor" in table
    compact = table.split(protocol.COMPACT_HEADING)[1].split("\n## ")[0]  # the README's table: one line per run
    assert "| rklu | 0.001 | 0 |" in compact and compact.count("\n| rklu ") == 1
    progress = "Progress: 1 of the protocol's 22 runs finished (12 wait for earlier stages to name their method or lr)"
    assert progress in table
    assert "forget01 8, retain 6," in table  # the item counts scored (--eval_max_items 8, 6 utility retain items)
    for plot in ("fq_vs_mu", "epochs"):
        assert (results / f"tofu_cpu_forget01_{plot}.png").stat().st_size > 0
    # a second pass resumes: the finished run is not redone, the next one in the plan runs (every method at the
    # grid's centre before any method at another lr: ga at 1e-3)
    protocol.main([*argv, "--max_runs", "1", "--no-cache_frozen_answers"])  # a speed option: the work dir accepts it
    finished = sorted(p.name for p in (work / "runs").glob("*.json"))
    assert finished == ["forget01_ga_lr0.001_s0.json", "forget01_rklu_lr0.001_s0.json"]
    assert json.loads((work / "runs" / finished[0]).read_text())["cache_frozen_answers"] is False
    # an original that does not know the forget set stops the protocol, before any run
    with pytest.raises(SystemExit, match="does not know the forget set"):
        protocol.main([*argv[:-2], "--min_original_probability", "1.0", "--max_runs", "1"])
    assert len(list((work / "runs").glob("*.json"))) == 2

    # a new machine: a fresh work dir rebuilds the original and oracle; they evaluate as the committed ones did, so the
    # committed runs are adopted and nothing finished is redone
    fresh = [a if a != str(work) else str(tmp_path / "fresh") for a in argv]
    torch.manual_seed(1234)  # whatever the global generator holds: the fine-tunes seed their adapters themselves
    protocol.main([*fresh, "--max_runs", "0"])
    adopted = sorted(p.name for p in (tmp_path / "fresh" / "runs").glob("*.json"))
    assert adopted == ["forget01_ga_lr0.001_s0.json", "forget01_rklu_lr0.001_s0.json"]
    data = json.loads((results / "tofu_cpu_forget01.json").read_text())
    rebuild = data["reference_rebuilds"][0]
    assert (rebuild["adopted"], rebuild["largest_difference"], rebuild["tolerance"]) == (2, 0.0, 1e-3)
    assert rebuild["earlier_model_utility"]["original"] == data["references"]["original"]["model_utility"]
    assert len(data["invocations"]) > 2 and str(tmp_path) not in json.dumps(data)
    assert "Rebuilt on a new machine" in (results / "tofu_cpu_forget01.md").read_text()
    # a fresh checkout's report_only reads the committed results
    protocol.main([*[a if a != str(work) else str(tmp_path / "empty") for a in argv], "--report_only"])
    assert json.loads((results / "tofu_cpu_forget01.json").read_text())["runs"] == data["runs"]
    # committed references that the rebuild does not match: the runs are not mixed
    committed = copy.deepcopy(data)
    data["references"]["original"]["model_utility"] += 0.1
    (results / "tofu_cpu_forget01.json").write_text(json.dumps(data))
    other = [a if a != str(work) else str(tmp_path / "other") for a in argv]
    with pytest.raises(SystemExit, match="do not evaluate as the ones the committed runs"):
        protocol.main([*other, "--max_runs", "0"])
    assert not (tmp_path / "other" / "runs").exists()
    # a rebuild before any run had finished: nothing to adopt, and the report says how closely it matched
    (results / "tofu_cpu_forget01.json").write_text(json.dumps({**committed, "runs": []}))
    early = [a if a != str(work) else str(tmp_path / "early") for a in argv]
    protocol.main([*early, "--max_runs", "0"])
    rebuild = json.loads((tmp_path / "early" / "rebuilds.json").read_text())[-1]
    assert (rebuild["adopted"], rebuild["largest_difference"], rebuild["beyond_tolerance"]) == (0, 0.0, 0)
    assert not (tmp_path / "early" / "runs").exists()
    assert "Rebuilt on a new machine before any run had finished" in (results / "tofu_cpu_forget01.md").read_text()
