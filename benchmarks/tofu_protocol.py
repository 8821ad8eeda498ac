"""TOFU forget01 on a CPU under the RKL-U paper's protocol: does RKL-U forget without retain data?

    python benchmarks/tofu_protocol.py --data_dir data/tofu --work_dir runs/tofu_forget01 --plan   # plan, estimate
    python benchmarks/tofu_protocol.py --data_dir data/tofu --work_dir runs/tofu_forget01 --deadline_s 3600  # again

The protocol (written once here and used for every method alike; ``PROTOCOL`` holds its fixed settings, passed to
``benchmarks/tofu.py`` for every run, so the work directory refuses any other):

- **original**: the embedded SmolLM2-135M-Instruct taught forget01 (40 items) plus the first 200 retain99 items
  (LoRA rank 16, merged; lr 3e-3, 5 epochs, batch 8, linear decay) until its forget-set answer probability is at
  least 0.9 (checked: the command stops when it is not); **oracle**: the same recipe on the 200 retain items alone;
- **evaluation**: all 40 forget01 items (with their paraphrased and perturbed answers), all 40 holdout01 items
  (the oracle-free rule), the first 100 retain items the original learned (model utility's retain part), all 100
  real-author and 117 world-fact items; ROUGE-L on at most 64 new tokens;
- **unlearning**: LoRA students, batch 32 (the paper's), 10 epochs, forget quality after every epoch; RKL-U and
  FKL-U with the paper's augmentation (a LoRA adapter trained 10 epochs on the forget set at the run's own
  unlearning lr) and alpha 8; no retain data unless the method is named ``:rt``;
- **selection** (declared before any run): each run's *first peak* (the paper's choice: the first epoch after which
  forget quality next falls, equal values skipped; the last plateau's first epoch if it never falls; until run 3 a
  plateau also ended the rise, see ``current_first_peak``), its *best* epoch and its *last* are fully evaluated, and
  the epoch the oracle-free rule keeps (``rklu_llm.eval.stopping``: the first epoch whose forget and holdout answer
  NLLs are indistinguishable, KS p >= 0.05);
- **learning rates**: ``SWEPT`` methods over the same grid (``--lrs``, at least two values), seed 0; a method's lr is
  the grid value whose first peak has the highest forget quality among those with model utility at the floor
  (``min(0.95 x original, oracle)``), else the one whose first peak keeps the most utility; the other methods run at
  the lr chosen for their family (``FAMILY``); RKL-U and the two strongest baselines by the same score then run
  with seeds 1 and 2, the seed-1 runs evaluating model utility after every epoch as well (``CURVES``: the per-epoch
  utility curves; about twice a run's time on one core; the other runs fully evaluate only the epochs above), so that
  there the oracle-free rule also keeps only epochs at the utility floor (elsewhere it sees no utility). The
  sweep runs every method at the grid's middle lr first, then outwards, so a sweep that
  its deadline cuts short still compares all methods at the same lr (the next lower lr before the next higher).

Resumable (finished runs are read from ``--work_dir``); ``--deadline_s`` starts nothing new past that many seconds.
Not part of the protocol: ``--cache_frozen_answers`` (on by default for the runs started after the first four)
keeps the frozen models' answer logits in memory after a run's first epoch, so the teacher methods' later epochs
skip two forward passes; the logits equal the recomputed ones up to float rounding, and each run's record says
whether the cache was on (a record without the field ran without it).
A work directory on a new machine rebuilds the original and the oracle (their LoRA adapters seeded, so the same
command gives the same models) and adopts the runs committed in ``--results_dir`` when both evaluate as the committed
ones did (``--adopt_tolerance``; the report states the largest difference); a rebuild that differs stops the driver
(before any run had finished there is nothing to adopt, and the report only states how closely the rebuild matched).
Writes ``tofu_cpu_forget01.{json,md}``, ``tofu_cpu_forget01_fq_vs_mu.png``, ``tofu_cpu_forget01_epochs.png`` and
every finished run's record (``tofu_cpu_forget01_runs/``) to ``--results_dir``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import shutil
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from a checkout without installing

from rklu_llm import io as bench_io  # noqa: E402
from rklu_llm.eval.stopping import SIGNAL, first_peak  # noqa: E402
from rklu_llm.models import DEFAULT_MODEL  # noqa: E402
from rklu_llm.paths import portable_path  # noqa: E402
from rklu_llm.teacher_check import stored_verdict  # noqa: E402

NAME = "tofu_cpu_forget01"
SPLIT = "forget01"
FQ, MU = f"{SPLIT}_forget_quality", "model_utility"
#: the fixed settings of every run (benchmarks/tofu.py flags)
PROTOCOL = [
    "--cpu",
    "--lora",
    "--augment_lora",
    "--splits",
    "forget01",
    "--retain_subset",
    "200",
    "--utility_retain_items",
    "100",
    "--holdout_rule",
    "--finetune_lr",
    "3e-3",
    "--finetune_epochs",
    "5",
    "--finetune_batch_size",
    "8",
    "--batch_size",
    "32",
    "--augment_lr",
    "unlearn",
    "--augment_epochs",
    "10",
    "--teacher_alpha",
    "8",
    "--unlearn_epochs",
    "10",
    "--max_new_tokens",
    "64",
    "--every_epoch",
    "none",
    "--track_peak",
    "all",
]
#: methods whose lr is swept (the paper's method and one per baseline family)
SWEPT = ("rklu", "ga", "npo", "ta", "idk")
#: every other method runs at the lr chosen for its family
FAMILY = {
    "fklu": "rklu",
    "token_mask": "rklu",
    "token_redistribute": "rklu",
    "gd:rt": "ga",
    "npo:rt": "npo",
    "dpo": "idk",
}
EXTRA_SEEDS = (1, 2)
#: the seeds stage's seed-1 runs evaluate model utility after every epoch too (the per-epoch utility curves of RKL-U
#: and the two strongest baselines; it overrides PROTOCOL's "--every_epoch none" and changes what is measured, not the
#: training); one seed, for the cost: about twice a run's time on one core
CURVES_SEED = 1
CURVES = ["--every_epoch", SPLIT]
#: the sweep's grid (series 2); series 1 swept {3e-4, 1e-3, 3e-3}, and at 1e-3 every method's first peak was below
#: the utility floor (rklu and ga at 3e-4 too), so the grid moved one step down: 3e-3 could only have been worse
DEFAULT_LRS = "1e-4,3e-4,1e-3"
#: the original must know the forget set at least this well (mean answer probability)
MIN_ORIGINAL_PROBABILITY = 0.9
#: the utility floor: this fraction of the original's utility, or the oracle's when it is lower
UTILITY_FRACTION = 0.95
#: the fully evaluated epochs of every run, in the tables' order
EPOCHS = (("first_peak", "first peak"), ("peak", "best"), ("final", "last"), ("selected", "rule"))


def load_bench():
    """benchmarks/tofu.py as a module (it is a script, not a package)."""
    spec = importlib.util.spec_from_file_location("bench_tofu", REPO / "benchmarks" / "tofu.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data_dir", required=True, help="local TOFU folder")
    p.add_argument("--work_dir", required=True, help="models and run records (resumable state)")
    p.add_argument("--results_dir", default=str(REPO / "benchmarks" / "results"), help="tables, plots, records")
    p.add_argument("--model", default="embedded:smollm2-135m-instruct")
    p.add_argument("--lrs", default=DEFAULT_LRS, help="the learning-rate grid of the sweep (two values or more)")
    p.add_argument("--deadline_s", type=float, default=float("inf"), help="start no new run after this many seconds")
    p.add_argument("--max_runs", type=int, default=None, help="start at most this many unlearning runs")
    p.add_argument("--plan", action="store_true", help="print the stages, their runs and estimates; run nothing")
    p.add_argument("--report_only", action="store_true", help="write the results from the finished runs; run nothing")
    p.add_argument("--extra", default="", help="more benchmarks/tofu.py flags (tests: a tiny model's sizes)")
    p.add_argument(
        "--methods",
        default=None,
        help="run only these of the protocol's methods (comma-separated, default all); drivers given disjoint lists "
        "share one --work_dir, one per core (memory permitting: a driver peaked at 15 GiB resident here, 10-13 GiB "
        "with glibc's MALLOC_MMAP_THRESHOLD_=1048576 in its environment, and two of those fit in 24 GiB); the plan, "
        "the stages and the report still cover every method",
    )
    p.add_argument(
        "--cache_frozen_answers",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="rklu, fklu, token_mask, token_redistribute: keep the frozen models' answer logits in memory after the "
        "first epoch (a speed option, not part of the protocol; each run's record says whether it was on)",
    )
    p.add_argument(
        "--adopt_tolerance",
        type=float,
        default=bench_io.REBUILD_TOLERANCE,
        help="a new work dir adopts the committed runs when its rebuilt original and oracle evaluate within this of "
        "the committed ones on every metric (the report states the largest difference)",
    )
    p.add_argument(
        "--min_original_probability",
        type=float,
        default=MIN_ORIGINAL_PROBABILITY,
        help="stop when the original's forget-set answer probability is below this (tests: 0 for a tiny model)",
    )
    args = p.parse_args(argv)
    try:
        args.grid = sorted({float(v) for v in args.lrs.split(",") if v.strip()})
    except ValueError as exc:
        raise SystemExit(f"--lrs takes comma-separated numbers: {exc}") from exc
    if len(args.grid) < 2:
        raise SystemExit(
            f"--lrs {args.lrs}: a sweep needs at least two learning rates (the protocol: 3 values spanning 10x)"
        )
    if any(not lr > 0 for lr in args.grid):
        raise SystemExit(f"--lrs {args.lrs}: learning rates must be positive")
    if not Path(args.data_dir).is_dir():
        raise SystemExit(f"--data_dir {args.data_dir}: no such folder (a local TOFU copy, see the README's Data)")
    args.method_set = METHOD_KEYS
    if args.methods is not None:
        args.method_set = {m.strip() for m in args.methods.split(",") if m.strip()}
        unknown = sorted(args.method_set - METHOD_KEYS)
        if unknown or not args.method_set:
            raise SystemExit(
                f"--methods {args.methods}: unknown {', '.join(unknown) or '(empty list)'}; the protocol's methods: "
                f"{', '.join(sorted(METHOD_KEYS))}"
            )
    return args


def bench_argv(args, methods: str, lrs: list[float], seeds, floor: float | None = None) -> list[str]:
    """``benchmarks/tofu.py``'s flags for these runs: the protocol's, and for seed ``CURVES_SEED``'s runs a full
    evaluation after every epoch (``CURVES``) instead of forget quality alone, where the oracle-free rule then keeps
    only epochs whose utility is at ``floor`` (the utility floor)."""
    argv = ["--data_dir", args.data_dir, "--work_dir", args.work_dir, "--model", args.model, *PROTOCOL]
    argv += ["--cache_frozen_answers" if args.cache_frozen_answers else "--no-cache_frozen_answers"]
    if CURVES_SEED in seeds:
        argv += CURVES + ([] if floor is None else ["--holdout_floor", f"{floor:.6g}"])
    argv += args.extra.split()
    return (
        argv
        + ["--methods", methods, "--unlearn_lrs", ",".join(f"{lr:g}" for lr in lrs), "--seeds"]
        + [",".join(str(s) for s in seeds)]
    )


def records(work_dir) -> dict[str, dict]:
    runs = Path(work_dir) / "runs"
    found = {p.stem: json.loads(p.read_text()) for p in sorted(runs.glob("*.json"))} if runs.is_dir() else {}
    return {name: current_first_peak(run) for name, run in found.items()}


def current_first_peak(run: dict) -> dict:
    """``run`` with its first peak by the current definition (``stopping.first_peak``) over its per-epoch forget
    quality. Records made before the definition skipped plateaus name another epoch; that epoch's full evaluation is
    then taken from the run's best / last / rule rows, else its per-epoch row stands in (forget quality, no utility).
    """
    epochs = run.get("epochs") or []
    index = first_peak([row.get(FQ) for row in epochs])
    if index is None or (run.get("first_peak") or {}).get("epoch") == epochs[index]["epoch"]:
        return run
    epoch = epochs[index]["epoch"]
    full = [run[k] for k in ("peak", "final", "selected") if (run.get(k) or {}).get("epoch") == epoch]
    return {**run, "first_peak": full[0] if full else epochs[index], "first_peak_epoch": epoch}


def key(method: str) -> tuple[str, str]:
    name, _, retain = method.partition(":")
    return name, retain or "none"


def run_of(runs: dict, bench, method: str, lr: float, seed: int) -> dict | None:
    name, retain = key(method)
    return runs.get(bench.run_name(SPLIT, name, retain, lr, seed))


# --------------------------------------------------------------------------------------------------------------------
# The declared choices
# --------------------------------------------------------------------------------------------------------------------


def utility_floor(references: dict) -> float | None:
    """``min(UTILITY_FRACTION x the original's utility, the oracle's)``; ``None`` before both are evaluated."""
    original, oracle = references.get("original"), references.get("oracle")
    if not original or not oracle or original.get(MU) is None or oracle.get(MU) is None:
        return None
    return min(UTILITY_FRACTION * original[MU], oracle[MU])


def score(run: dict, floor: float, epoch: str = "first_peak", signal: str = FQ) -> tuple:
    """Sort key of a run at one of its evaluated epochs (higher is better): at the floor before below it; then
    ``signal`` at the floor, utility below it. The protocol's score: forget quality at the first peak (it needs the
    oracle); :func:`choose_lr_without_oracle`'s: the holdout KS p-value at the oracle-free rule's epoch."""
    row = run.get(epoch) or run.get("final") or {}
    value, mu = row.get(signal) or 0.0, row.get(MU) or 0.0
    at_floor = mu >= floor
    return (at_floor, value if at_floor else mu, mu)


def choose_lr(runs: dict, bench, method: str, grid: list[float], floor: float | None, **score_by) -> float | None:
    """The swept method's lr by :func:`score` at seed 0; ``None`` until every grid run has finished."""
    done = [(lr, run_of(runs, bench, method, lr, 0)) for lr in grid]
    if floor is None or any(run is None for _, run in done):
        return None
    return max(done, key=lambda item: score(item[1], floor, **score_by))[0]


def choose_lr_without_oracle(runs: dict, bench, method: str, grid: list[float], floor: float | None) -> float | None:
    """What a user without the oracle could choose (reported, not used): the lr whose rule epoch has forget and
    holdout items least distinguishable (highest KS p) with model utility, which a user can measure, at the floor."""
    return choose_lr(runs, bench, method, grid, floor, epoch="selected", signal=SIGNAL)


def sweep_order(grid: list[float]) -> list[float]:
    """The grid's middle value, then outwards (the next lower before the next higher).

    The sweep runs every method at one lr before any method at the next, so a sweep cut short by its deadline still
    compares all methods at the same lr, at the grid's centre. Lower first: this grid is already 10-100x the paper's
    lrs (a CPU-sized budget), and series 1 lost utility at every lr it swept."""
    ordered = sorted(grid)
    middle = (len(ordered) - 1) // 2
    outwards = sorted(range(len(ordered)), key=lambda i: (abs(i - middle), i > middle))
    return [ordered[i] for i in outwards]


def chosen_lrs(args, bench, runs: dict, floor: float | None) -> dict[str, float | None]:
    """Every method's lr: a swept method's by :func:`choose_lr`, the others' their family's (``None``: not yet)."""
    chosen = {m: choose_lr(runs, bench, m, args.grid, floor) for m in SWEPT}
    return chosen | {m: chosen[parent] for m, parent in FAMILY.items()}


def stages(args, bench, runs: dict, floor: float | None) -> list[tuple[str, list[tuple[str, float | None, tuple]]]]:
    """``(stage, [(method, lr or None = not chosen yet, seeds)])`` of the protocol, in order."""
    at_lr = chosen_lrs(args, bench, runs, floor)
    sweep = [(m, lr, (0,)) for lr in sweep_order(args.grid) for m in SWEPT]
    family = [(m, at_lr[m], (0,)) for m in FAMILY]
    strongest = strongest_baselines(runs, bench, at_lr, floor)
    seeds = [("rklu", at_lr["rklu"], EXTRA_SEEDS)] + [(m, at_lr[m], EXTRA_SEEDS) for m in strongest]
    if len(strongest) < 2:
        seeds += [("(two strongest baselines)", None, EXTRA_SEEDS)] * (2 - len(strongest))
    return [("sweep", sweep), ("family", family), ("seeds", seeds)]


def ready_runs(plan, runs: dict, bench, methods) -> tuple[list[tuple], list[tuple]]:
    """``(mine, others)``: the plan's unfinished runs whose lr is known, as ``(method, lr, seed)`` in plan order,
    split into those of ``methods`` (this driver's ``--methods``) and those left to other drivers."""
    ready = [
        (method, lr, seed)
        for _, items in plan
        for method, lr, seeds in items
        if lr is not None and method in METHOD_KEYS
        for seed in seeds
        if run_of(runs, bench, method, lr, seed) is None
    ]
    return [r for r in ready if r[0] in methods], [r for r in ready if r[0] not in methods]


def strongest_baselines(runs: dict, bench, at_lr: dict, floor: float | None) -> list[str]:
    """The two baselines whose seed-0 run at their chosen lr scores highest; ``[]`` until all have finished."""
    baselines = [m for m in at_lr if m != "rklu"]
    done = {m: run_of(runs, bench, m, at_lr[m], 0) if at_lr[m] is not None else None for m in baselines}
    if floor is None or any(run is None for run in done.values()):
        return []
    return sorted(baselines, key=lambda m: score(done[m], floor), reverse=True)[:2]


# --------------------------------------------------------------------------------------------------------------------
# Running
# --------------------------------------------------------------------------------------------------------------------


def reference_summaries(args, bench) -> dict:
    """The original's and the oracle's evaluation rows (``{}`` before the fine-tunes)."""
    bench_args = bench.parse(bench_argv(args, "rklu", args.grid, (0,)))
    rows = bench.reference_rows(bench_args)
    out = {}
    for row in rows:
        label = "original" if row["method"] == "original" else "oracle"
        model = "full" if label == "original" else bench.RETAIN_OF_FORGET[SPLIT]
        result = bench.load_tofu_eval(Path(args.work_dir) / "models" / model / "tofu_eval.json")
        out[label] = {**row, "item_counts": {k: v["aggregate"]["num_items"] for k, v in result["sets"].items()}}
    return out


def check_original(references: dict, minimum: float) -> None:
    original = references.get("original")
    if original is None:
        return
    probability = original.get(f"{SPLIT}_probability") or 0.0
    if probability < minimum:
        raise SystemExit(
            f"The original's forget-set answer probability is {probability:.3f} < {minimum}: it "
            "does not know the forget set well enough to measure unlearning. Fine-tune longer (a new --work_dir)."
        )


def print_plan(args, bench, runs, floor, plan) -> None:
    bench_args = bench.parse(bench_argv(args, "rklu", args.grid, (0,)))
    curve_args = bench.parse(bench_argv(args, "rklu", args.grid, (CURVES_SEED,)))
    costs, sources = bench.measured_costs(bench_args)
    forget_items = bench.n_items(SPLIT, args.data_dir)
    total, unknown = 0.0, 0
    print(f"Protocol plan ({NAME}); utility floor: {'after the fine-tunes' if floor is None else f'{floor:.3f}'}")
    for stage, items in plan:
        print(f"  stage {stage}:")
        for method, lr, seeds in items:
            for seed in seeds:
                run = run_of(runs, bench, method, lr, seed) if lr is not None and method in METHOD_KEYS else None
                if run is not None:
                    print(f"    {method:<20} lr {lr:g} seed {seed}: done")
                    continue
                name, retain = key(method) if method in METHOD_KEYS else ("rklu", "none")
                item = ("unlearn", SPLIT, name, retain, lr or args.grid[len(args.grid) // 2], seed)
                run_args = curve_args if seed == CURVES_SEED else bench_args  # utility every epoch: dearer
                seconds = bench.estimate(run_args, costs, item, forget_items, bench.METHODS[name].needs_augmented)
                total += seconds or 0.0
                unknown += seconds is None
                when = "lr after the sweep" if lr is None else f"lr {lr:g}"
                est = "?" if seconds is None else f"{seconds / 60:.0f} min"
                mine = method in args.method_set or method not in METHOD_KEYS  # a placeholder is nobody's yet
                other = "" if mine else " (another driver: not in --methods)"
                print(f"    {method:<20} {when} seed {seed}: {est}{other}")
    print(f"Estimated CPU minutes left for the runs: {total / 60:.0f}" + (f" (+{unknown} unknown)" if unknown else ""))
    print(
        "Costs from: " + ("; ".join(sources) or "nothing measured yet") + " (work_dir = measured here, H100 = the "
        "committed GPU benchmark: a CPU plan is only estimated once a run here has finished)"
    )


METHOD_KEYS = set(SWEPT) | set(FAMILY)


def committed_results(args) -> dict:
    """The committed results file of this protocol (same fixed settings, model and extra flags), else ``{}``."""
    path = Path(args.results_dir) / f"{NAME}.json"
    data = json.loads(path.read_text()) if path.is_file() else {}
    same = (data.get("protocol"), data.get("model", DEFAULT_MODEL), data.get("extra", "")) == (
        PROTOCOL,
        args.model,
        args.extra,
    )
    return data if same else {}


def adopt_committed_runs(args, references: dict, rebuilt_now: bool = False) -> dict | None:
    """A work directory on a new machine starts without the runs finished elsewhere. Once its original and oracle
    are rebuilt (the same recipe and seeds) and evaluate as the committed ones did (every metric within
    ``--adopt_tolerance``, default :data:`rklu_llm.io.REBUILD_TOLERANCE`), the committed run records are copied into
    it, with the commands that made them, so the protocol goes on where it stopped. A rebuild that differs stops
    here: those runs were made against another original. Returns ``{"adopted", "largest_difference", "tolerance"}``
    (None when nothing was to adopt). ``rebuilt_now`` (the original and oracle were fine-tuned by this invocation)
    with committed references but no runs to adopt: the comparison is returned all the same (``adopted`` 0), so the
    report says how closely the rebuild matched, and nothing stops: no run was measured against the earlier models."""
    data = committed_results(args)
    mirror = Path(args.results_dir) / f"{NAME}_runs"
    runs = Path(args.work_dir) / "runs"
    missing = [
        n for n in data.get("runs", []) if (mirror / f"{n}.json").is_file() and not (runs / f"{n}.json").is_file()
    ]
    earlier = data.get("references") or {}
    committed = {label: earlier.get(label) or {} for label in ("original", "oracle")}
    largest, problems = bench_io.metric_differences(references, committed, args.adopt_tolerance)
    found = {
        "largest_difference": largest,
        "tolerance": args.adopt_tolerance,
        "beyond_tolerance": len(problems),
        # what the committed runs (if any) were measured against, for the report
        "earlier_model_utility": {label: committed[label].get(MU) for label in ("original", "oracle")},
    }
    if not missing:
        return {"adopted": 0, **found} if rebuilt_now and all(committed.values()) else None
    if problems:
        raise SystemExit(
            f"The original and oracle rebuilt in --work_dir {args.work_dir} do not evaluate as the ones the committed "
            f"runs in {args.results_dir} were made with (tolerance {args.adopt_tolerance:g}):\n- "
            + "\n- ".join(problems[:10])
            + "\nThe committed runs cannot be mixed with runs against this original: give another --results_dir to "
            "start a new series (or rebuild where the committed one was made)."
        )
    runs.mkdir(parents=True, exist_ok=True)
    for name in missing:
        shutil.copyfile(mirror / f"{name}.json", runs / f"{name}.json")
    invocations = Path(args.work_dir) / "invocations.json"
    here = json.loads(invocations.read_text()) if invocations.is_file() else []
    earlier = [{**i, "machine": "earlier"} for i in data.get("invocations", []) if i not in here]
    bench_io.write_json_atomic(invocations, earlier + here)
    print(f"{NAME}: adopted {len(missing)} committed runs (rebuilt references within {largest:.2g} of the committed)")
    return {"adopted": len(missing), **found}


def main(argv=None) -> None:
    args = parse(argv)
    started = time.time()
    bench = load_bench()
    unknown = [m for m in METHOD_KEYS if key(m)[0] not in bench.METHODS]
    if unknown:
        raise SystemExit(f"methods of the protocol missing from METHODS: {unknown}")
    built_now = False
    if not args.report_only and not args.plan:  # the original and the oracle first, one benchmark command each
        for model in ("full", bench.RETAIN_OF_FORGET[SPLIT]):
            target = Path(args.work_dir) / "models" / model
            with bench_io.waiting_lock(target):  # a second driver (--methods) waits for the first to build it
                if not (target / "tofu_eval.json").is_file():
                    if time.time() - started > args.deadline_s:
                        break
                    bench.main([*bench_argv(args, "rklu", args.grid[:1], (0,)), "--deadline_s", "0"])
                    built_now = True
    rebuilt = {} if args.report_only or args.plan else reference_summaries(args, bench)
    if rebuilt.get("oracle"):
        adopted = adopt_committed_runs(args, rebuilt, built_now)
        if adopted:
            bench_io.write_json_atomic(Path(args.work_dir) / "rebuilds.json", rebuilds(args) + [adopted])
    started_runs = 0
    while True:
        runs, references = records(args.work_dir), reference_summaries(args, bench)
        if args.report_only and not references:  # a fresh checkout: the committed results
            data = committed_results(args)
            references = data.get("references") or {}
            mirror = Path(args.results_dir) / f"{NAME}_runs"
            runs = {n: current_first_peak(json.loads((mirror / f"{n}.json").read_text())) for n in data.get("runs", [])}
        check_original(references, args.min_original_probability)
        floor = utility_floor(references)
        plan = stages(args, bench, runs, floor)
        if args.plan:
            print_plan(args, bench, runs, floor, plan)
            return
        pending, others = ready_runs(plan, runs, bench, args.method_set)
        left = args.deadline_s - (time.time() - started)
        if (
            args.report_only
            or not pending
            or left <= 0
            or (args.max_runs is not None and started_runs >= args.max_runs)
        ):
            break
        started_runs += 1
        method, lr, seed = pending[0]
        print(f"=== protocol: {method} lr {lr:g} seed {seed} ({time.time() - started:.0f} s)", flush=True)
        bench.main([*bench_argv(args, method, [lr], (seed,), floor), "--deadline_s", f"{max(left, 1):.0f}"])
        write_report(args, bench, records(args.work_dir), references, floor)
        if run_of(records(args.work_dir), bench, method, lr, seed) is None:
            break  # the benchmark stopped at its deadline
    write_report(args, bench, runs, references, floor)
    waiting = [m for _, items in plan for m, lr, seeds in items if lr is None for _ in seeds]
    print(
        f"{NAME}: {len(runs)} runs finished"
        + (f"; {len(waiting)} runs wait for earlier stages" if waiting else "")
        + (f"; {len(others)} ready runs left to other drivers (not in --methods)" if others else "")
        + f"; results in {args.results_dir}"
    )


# --------------------------------------------------------------------------------------------------------------------
# The report
# --------------------------------------------------------------------------------------------------------------------


def _row(run: dict, which: str) -> dict:
    return run.get(which) or {}


def _fmt(value, spec=".3f") -> str:
    if value is None:
        return "n/a"
    if spec == "fq":
        return f"{value:.2e}" if value < 0.01 else f"{value:.3f}"
    return format(value, spec)


def _teacher(run: dict, missing: str = "") -> str:
    """The run's teacher-check verdict and its teacher's top-1-true share (``missing`` for a run without a check)."""
    check = run.get("teacher_check") or {}
    text = stored_verdict(check) or missing
    if check.get("teacher_top1_true") is not None:
        text += f" ({check['teacher_top1_true']:.0%} true)"
    return text


def _method(run: dict) -> str:
    return run["method"] + ("" if run["retain_mode"] == "none" else f":{run['retain_mode']}")


#: a run's seconds, in the order the report gives them (their sum is the run's cost)
SECONDS = ("augment_seconds", "train_seconds", "eval_seconds")


def _mean_sd(values: list, spec=".3f") -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "n/a"
    text = _fmt(statistics.mean(values), spec)
    return text + (f" ± {_fmt(statistics.stdev(values), spec)}" if len(values) > 1 else "")


def item_counts(references: dict) -> list[tuple[str, int]]:
    """``(set, items)`` of the evaluations (from the original's evaluation: every run scores the same items), with
    the holdout set the oracle-free rule compares the forget set with (as many items as the forget set)."""
    original = references.get("original") or {}
    counts = [(name.removesuffix("_perturbed"), n) for name, n in (original.get("item_counts") or {}).items()]
    forget = dict(counts).get(SPLIT)
    return counts + ([("holdout01 (the rule)", forget)] if forget else [])


def rule_verdict(run: dict, floor: float) -> bool | None:
    """The oracle-free rule's target for one run: its epoch within one of the first peak, or forget quality >= 0.05
    with utility at the floor there."""
    rule, first = run.get("selected"), run.get("first_peak")
    if rule is None or first is None:
        return None
    near = abs(rule["epoch"] - first["epoch"]) <= 1
    return near or ((rule.get(FQ) or 0.0) >= 0.05 and (rule.get(MU) or 0.0) >= floor)


#: the order of the methods in the compact table
TABLE_ORDER = ("rklu", "fklu", "token_mask", "token_redistribute", "ga", "gd", "npo", "dpo", "idk", "ta")
#: the compact table's heading in the report (the README quotes the table under it; tests/test_readme.py checks that)
COMPACT_HEADING = "## In short: every run's first peak, last epoch and oracle-free rule"


def compact_table(runs: dict) -> list[str]:
    """Every run in one line: the teacher check, the first peak, the last epoch, the oracle-free rule's epoch (with its
    KS p, and whether it fired) and the minutes (a shared augmented model counted with each run that uses it)."""
    lines = [
        "| method | lr | seed | teacher check (top-1 true) | first peak: epoch, FQ, MU | last: FQ, MU "
        "| oracle-free rule: epoch, FQ, MU (KS p) | min |",
        "|---|---|---|---|---|---|---|---|",
    ]

    def order(name: str) -> tuple:
        run = runs[name]
        rank = TABLE_ORDER.index(run["method"]) if run["method"] in TABLE_ORDER else len(TABLE_ORDER)
        return rank, run["method"], run["retain_mode"], run["lr"], run["seed"]

    for name in sorted(runs, key=order):
        run = runs[name]
        first, last, rule = _row(run, "first_peak"), _row(run, "final"), _row(run, "selected")
        p = rule.get(SIGNAL)
        rule_cell = "n/a"
        if rule:
            fired = ", fired" if p is not None and p >= 0.05 else ""
            rule_cell = (
                f"{rule['epoch']:g}, {_fmt(rule.get(FQ), 'fq')}, {_fmt(rule.get(MU))} (p {_fmt(p, '.2g')}{fired})"
            )
        minutes = sum(run.get(k) or 0.0 for k in SECONDS) / 60
        lines.append(
            f"| {_method(run)} | {run['lr']:g} | {run['seed']} | {_teacher(run, '–')} | "
            f"{_fmt(first.get('epoch'), 'g')}, {_fmt(first.get(FQ), 'fq')}, {_fmt(first.get(MU))} | "
            f"{_fmt(last.get(FQ), 'fq')}, {_fmt(last.get(MU))} | {rule_cell} | {minutes:.0f} |"
        )
    return lines


def write_report(args, bench, runs: dict, references: dict, floor: float | None) -> None:
    with bench_io.waiting_lock(Path(args.work_dir) / "report"):  # drivers sharing a work dir (--methods) take turns
        _write_report(args, bench, runs, references, floor)


def _write_report(args, bench, runs: dict, references: dict, floor: float | None) -> None:
    out = Path(args.results_dir)
    out.mkdir(parents=True, exist_ok=True)
    mirror = out / f"{NAME}_runs"
    mirror.mkdir(exist_ok=True)
    for name in runs:
        target = mirror / f"{name}.json"
        if not target.is_file():
            shutil.copyfile(Path(args.work_dir) / "runs" / f"{name}.json", target)
    # the lrs the stages run at (a method's sweep runs at every grid lr: its choice is choose_lr's, not its last run)
    chosen = {m: lr for m, lr in chosen_lrs(args, bench, runs, floor).items() if lr is not None}
    invocations = Path(args.work_dir) / "invocations.json"
    machine = {
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "load_average_at_report": os.getloadavg(),
    }
    data = {
        "protocol": PROTOCOL,
        "grid": args.grid,
        "swept": SWEPT,
        "family": FAMILY,
        "utility_floor": floor,
        "references": references,
        "chosen_lr": chosen,
        "machine": machine,
        "invocations": portable_invocations(invocations)
        if invocations.is_file()
        else committed_results(args).get("invocations", []),
        "runs": sorted(runs),
        "model": args.model,
        "extra": args.extra,
        "reference_rebuilds": rebuilds(args),
    }
    bench.write_json_atomic(out / f"{NAME}.json", data)
    (out / f"{NAME}.md").write_text(markdown(args, bench, runs, references, floor, chosen, machine))
    plot(out, bench, runs, references, floor, chosen)


def rebuilds(args) -> list[dict]:
    """Each time the original and oracle were rebuilt on a new machine and the committed runs adopted: how many, and
    the largest difference of the rebuilt references' metrics from the committed ones."""
    path = Path(args.work_dir) / "rebuilds.json"
    return json.loads(path.read_text()) if path.is_file() else committed_results(args).get("reference_rebuilds", [])


def portable_invocations(path: Path) -> list[dict]:
    """The benchmark's invocations on the work directory, absolute paths in their commands made portable."""
    entries = json.loads(path.read_text()) if path.is_file() else []
    out = []
    for entry in entries:
        command = entry.get("command") or ""
        words = [portable_path(w) if w.startswith("/") else w for w in command.split()]
        out.append({**entry, "command": " ".join(words)})
    return out


def rebuild_line(rebuild: dict) -> str:
    """The report's sentence on one rebuild of the original and oracle (:func:`adopt_committed_runs`)."""
    earlier = rebuild.get("earlier_model_utility") or {}
    tolerance = rebuild.get("tolerance", bench_io.REBUILD_TOLERANCE)
    was = f"model utility: original {_fmt(earlier.get('original'))}, oracle {_fmt(earlier.get('oracle'))}"
    if rebuild["adopted"]:
        return (
            "Rebuilt on a new machine: the original and oracle fine-tuned again with the same recipe evaluated within "
            f"{rebuild['largest_difference']:.2g} on every metric (tolerance {tolerance:g}) of those the "
            f"{rebuild['adopted']} runs finished before were measured against ({was}), so those runs went on counting; "
            "the table above and the utility floor are the rebuilt models'."
        )
    beyond, largest = rebuild.get("beyond_tolerance"), rebuild["largest_difference"]
    if beyond:
        closeness = f"up to {largest:.2g} apart from the committed ones"
        detail = f"{beyond} metrics beyond the tolerance {tolerance:g}"
    elif largest:
        closeness, detail = f"within {largest:.2g} of the committed ones on every metric", f"tolerance {tolerance:g}"
    else:
        closeness, detail = "exactly as the committed ones did", "every metric equal"
    return (
        "Rebuilt on a new machine before any run had finished: the original and oracle fine-tuned again with the same "
        f"recipe evaluated {closeness} ({detail}; {was}); the table above is the rebuilt models'."
    )


def markdown(args, bench, runs, references, floor, chosen, machine) -> str:
    command = f"python benchmarks/tofu_protocol.py --data_dir data/tofu --work_dir <work dir> --lrs {args.lrs}"
    lines = [
        "# TOFU forget01 on a CPU, the RKL-U paper's protocol (SmolLM2-135M-Instruct, LoRA)",
        "",
        f"Command: `{command}` (repeated until every stage has run; each command resumes). Machine: "
        f"{machine['cpus']} CPU cores, {machine['platform']}; other work shared it (load average at this report "
        f"{machine['load_average_at_report'][1]:.1f}). Protocol: the module docstring of "
        "`benchmarks/tofu_protocol.py`; fixed settings in the JSON.",
        "",
    ]
    original, oracle = references.get("original"), references.get("oracle")
    if original:
        lines += [
            "| model | FQ | MU | forget P | forget R | retain P | retain R | fine-tune s |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for label, row in (("original", original), ("oracle (retain only)", oracle)):
            if row:
                lines.append(
                    f"| {label} | {_fmt(row.get(FQ), 'fq')} | {_fmt(row.get(MU))} | "
                    f"{_fmt(row.get(f'{SPLIT}_probability'))} | {_fmt(row.get(f'{SPLIT}_rouge_l_recall'))} | "
                    f"{_fmt(row.get('retain_probability'))} | {_fmt(row.get('retain_rouge_l_recall'))} | "
                    f"{_fmt(row.get('wall_seconds'), '.0f')} |"
                )
        lines += [
            "",
            f"Utility floor: {_fmt(floor)} (min of {UTILITY_FRACTION} x the original's utility and the oracle's).",
            "",
        ]
        for rebuild in rebuilds(args):
            lines += [rebuild_line(rebuild), ""]
    planned = [
        (method, lr, seed)
        for _, items in (stages(args, bench, runs, floor) if floor is not None else [])
        for method, lr, seeds in items
        for seed in seeds
    ]
    waiting = sum(lr is None for _, lr, _ in planned)
    lines += [
        f"Progress: {len(runs)} of the protocol's {len(planned) or 'n/a'} runs finished"
        + (f" ({waiting} wait for earlier stages to name their method or lr)" if waiting else "")
        + ". Item counts per evaluation: "
        + ", ".join(f"{name} {count}" for name, count in item_counts(references))
        + ".",
        "",
        COMPACT_HEADING,
        "",
        *compact_table(runs),
        "",
        "## Every run (seed 0 unless said): the fully evaluated epochs",
        "",
        "FQ = forget quality (KS p-value of the 40 forget items' truth ratios against the oracle's), MU = model "
        "utility. *first peak* = the paper's epoch, *best* = the highest FQ (the oracle's choice), *last* = epoch 10, "
        "*rule* = the oracle-free rule's epoch, with its forget-vs-holdout KS p (below 0.05: the rule never fired "
        "and kept the epoch of highest p). Teacher: the RKL-U teacher check's verdict (rklu_llm.teacher_check) and "
        "the share of forget-set positions whose teacher top-1 is still the true token. Seconds: the augmentation "
        "(built once per lr and seed), the unlearning run's training, its evaluations (every per-epoch and full "
        "one) and the three together.",
        "",
        "| method | lr | seed | first peak: epoch, FQ, MU | best: epoch, FQ, MU | last: FQ, MU | rule: epoch, FQ, "
        "MU | rule p | teacher | augment s | train s | eval s | total s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name in sorted(runs, key=lambda n: (runs[n]["method"], runs[n]["retain_mode"], runs[n]["lr"], runs[n]["seed"])):
        run = runs[name]
        cells = []
        for which, _ in EPOCHS:
            row = _row(run, which)
            epoch = "" if which == "final" else f"{row['epoch']:g}, " if row.get("epoch") is not None else ""
            cells.append(f"{epoch}{_fmt(row.get(FQ), 'fq')}, {_fmt(row.get(MU))}" if row else "n/a")
        parts = [run.get(k) or 0.0 for k in SECONDS]
        seconds = [_fmt(value, ".0f") for value in (*parts, sum(parts))]
        lines.append(
            f"| {_method(run)} | {run['lr']:g} | {run['seed']} | {' | '.join(cells)} | "
            f"{_fmt(_row(run, 'selected').get(SIGNAL), '.2g')} | {_teacher(run)} | {' | '.join(seconds)} |"
        )
    if chosen and floor is not None:
        lines += [
            "",
            "## Each method at its chosen lr (mean ± sd over the seeds run)",
            "",
            "The lr is chosen with the oracle (forget quality at the first peak, the paper's tuning). The last column "
            "is the lr a user without the oracle would pick from the same sweep (the rule epoch's holdout p-value at "
            "the utility floor) and that run's forget quality and utility at its rule epoch.",
            "",
            "| method | lr | seeds | FQ first peak | MU first peak | FQ best | FQ last | MU last | FQ rule | MU rule |"
            " rule within 1 epoch of the first peak, or FQ >= 0.05 at the floor | oracle-free lr: FQ, MU |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for method, lr in chosen.items():
            members = [r for s in (0, *EXTRA_SEEDS) if (r := run_of(runs, bench, method, lr, s)) is not None]
            if not members:
                continue
            verdicts = [rule_verdict(r, floor) for r in members]
            lines.append(
                f"| {method} | {lr:g} | {len(members)} | "
                + " | ".join(
                    _mean_sd([_row(r, which).get(metric) for r in members], "fq" if metric == FQ else ".3f")
                    for which, metric in (
                        ("first_peak", FQ),
                        ("first_peak", MU),
                        ("peak", FQ),
                        ("final", FQ),
                        ("final", MU),
                        ("selected", FQ),
                        ("selected", MU),
                    )
                )
                + f" | {sum(bool(v) for v in verdicts)}/{len(verdicts)} | "
                + f"{oracle_free(runs, bench, method, args, floor)} |"
            )
    return "\n".join(lines) + "\n"


def oracle_free(runs, bench, method: str, args, floor: float) -> str:
    if method not in SWEPT:
        return "(not swept)"
    lr = choose_lr_without_oracle(runs, bench, method, args.grid, floor)
    row = _row(run_of(runs, bench, method, lr, 0) or {}, "selected") if lr is not None else {}
    return "n/a" if lr is None else f"{lr:g}: {_fmt(row.get(FQ), 'fq')}, {_fmt(row.get(MU))}"


def plot(out: Path, bench, runs, references, floor, chosen) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 5))
    methods = sorted({_method(r) for r in runs.values()})
    colours = dict(zip(methods, plt.cm.tab20.colors))
    for run in runs.values():
        method = _method(run)
        row = run.get("first_peak") or {}
        if row.get(FQ) is None or row.get(MU) is None:
            continue
        ax.scatter(row[MU], max(row[FQ], 1e-6), color=colours[method], s=30 if run["seed"] == 0 else 12)
    for method in methods:
        ax.scatter([], [], color=colours[method], label=method)
    for label, marker in (("original", "*"), ("oracle", "P")):
        row = references.get(label)
        if row and row.get(MU) is not None:
            ax.scatter(row[MU], max(row.get(FQ) or 1.0, 1e-6), marker=marker, s=150, color="black", label=label)
    if floor is not None:
        ax.axvline(floor, color="grey", linestyle=":", label="utility floor")
    ax.axhline(0.05, color="grey", linestyle="--", label="FQ 0.05")
    ax.set(yscale="log", xlabel="model utility (first peak)", ylabel="forget quality (first peak)")
    ax.set_title("TOFU forget01, CPU, every run at its first peak")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(out / f"{NAME}_fq_vs_mu.png", dpi=110)
    plt.close(fig)

    shown = [m for m in ("rklu", *[m for m in chosen if m != "rklu"]) if m in chosen][:4]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for method in shown:
        run = run_of(runs, bench, method, chosen[method], 0)
        if run is None:
            continue
        epochs = [row["epoch"] for row in run["epochs"]]
        label = f"{method} lr {chosen[method]:g}"
        line = axes[0].plot(epochs, [max(row.get(FQ) or 1e-6, 1e-6) for row in run["epochs"]], marker="o", label=label)
        color = line[0].get_color()
        axes[0].plot(epochs, [row.get("holdout_ks_p") for row in run["epochs"]], linestyle=":", color=color)
        evaluated = sorted({(r["epoch"], r[MU]) for w, _ in EPOCHS if (r := run.get(w)) and r.get(MU) is not None})
        axes[1].plot([e for e, _ in evaluated], [m for _, m in evaluated], marker="s", label=label, color=color)
        curves = run_of(runs, bench, method, chosen[method], CURVES_SEED) or {}  # utility after every epoch
        curve = [(row["epoch"], row[MU]) for row in curves.get("epochs") or [] if row.get(MU) is not None]
        if curve:
            axes[1].plot(*zip(*curve), linestyle="--", linewidth=1, color=color, label=f"{label} seed {CURVES_SEED}")
    axes[0].axhline(0.05, color="grey", linestyle="--")
    axes[0].set(yscale="log", xlabel="epoch", ylabel="forget quality (solid), holdout KS p (dotted)")
    axes[1].set(xlabel="epoch", ylabel="model utility (seed 0: fully evaluated epochs; dashed: every epoch)")
    if floor is not None:
        axes[1].axhline(floor, color="grey", linestyle=":")
    for ax in axes:
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / f"{NAME}_epochs.png", dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
