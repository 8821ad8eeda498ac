"""Copyright unlearning under a declared protocol: every method tuned alike, the original checked first.

    python benchmarks/copyright_protocol.py --data_root data --work_dir runs/copyright --plan
    python benchmarks/copyright_protocol.py --data_root data --work_dir runs/copyright --deadline_s 36000
    python benchmarks/copyright_protocol.py --data_root data --work_dir runs/copyright --report_only

The protocol (written once here, echoed in the results; the fixed part is ``protocol_settings()``, stored in the work
directory, which then refuses any other):

- **model**: the embedded SmolLM2-135M-Instruct (``--model``); LoRA for the fine-tune (merged), the augmented model
  (an adapter) and the students (ta edits the full weights).
- **data**: the first ``--num_chunks`` (>= 64) chunks of ``--chunk_tokens`` (128) tokens of Pride and Prejudice, the
  first half of each the prompt, the rest the continuation to score; the control novel (Sense and Sensibility) is
  never trained on; gd's retain text is Emma. Perplexity on 200 WikiText-2 test segments of 128 tokens.
  General capability: lm-eval on the *full* sets of the cheaper tasks (``DEFAULT_TASKS``: Winogrande 1267,
  OpenBookQA 500, WSC273 273 and COPA 100 items, about 5,300 short log-likelihood requests; PIQA, ARC, HellaSwag,
  MathQA and BoolQ are left out for their cost on a CPU), reported as the mean accuracy and its standard error
  ``sqrt(sum_t se_t^2) / n`` (lm-eval's ``acc_stderr`` per task, the tasks independent; about 1.6 points at 50%
  accuracy), and each change from the original with the standard error of the difference: a change is called
  resolved only beyond twice that (a 1-point change is not resolved at these sizes, and the table says so).
  lm-eval is most of an evaluation's cost and the selection rule below does not read it, so by default
  (``--general_at selected``) it runs on the base model, the original and each method's *selected* setting only (once
  every setting of that method in the grid has finished; a grid that grows may select, and evaluate, another one);
  ``--general_at every`` runs it on every setting.
- **original**: the model fine-tuned on the forget chunks (NLL on every token; LoRA, ``--finetune_epochs`` 5 at
  ``--finetune_lr`` 1e-3, batch ``--batch_size``). It must *know* the book without having memorised it, which is
  **checked before any unlearning**: forget continuation BLEU at least ``MIN_KNOWLEDGE_RATIO`` (1.5) x the control
  novel's and at most ``MAX_KNOWLEDGE_RATIO`` (10) x, WikiText perplexity at most ``MAX_ORIGINAL_PPL_RATIO`` (1.5) x
  the base model's. A failed check stops the driver with what to change. The bounds issue 19 asked for (2x the
  control at most 1.10x the base's perplexity) are out of reach of a book-only fine-tune of this model: knowing the
  book better cost perplexity at every setting measured (forget / control BLEU, perplexity / the base's: 3 epochs at
  3e-4 1.28x, 0.95x; 12 epochs at 3e-4, after 4 1.39x, 1.09x and after 8 1.68x, 1.37x; 5 epochs at 1e-3 1.74x,
  1.45x), so the original trades some general perplexity for a forget-set BLEU clearly above the control's (the
  unlearning target), and every perplexity below is also given relative to the original's.
- **unlearning**: every method in ``METHODS`` (rklu, fklu, ga, gd, npo, dpo, idk, ta) from the original, 5 epochs
  (``--unlearn_epochs``), the same batch, over the same learning-rate grid (``--lrs``, at least two values); rklu and
  fklu also over augmentation epochs ``--augment_epochs`` {1, 10} x teacher alpha ``--alphas`` {4, 8}, the augmented
  model trained at the run's own lr; ta (scale 2.5) uses the augmented model of ``TA_AUGMENT_EPOCHS`` (1, the paper's
  books setting) at its lr. One augmented model per (lr, augmentation epochs), shared by every setting that uses it.
- **selection** (declared before the runs, the same for every method): among a method's settings, the one with the
  lowest forget BLEU whose WikiText perplexity is at most ``MAX_PPL_RATIO`` (1.10) x the original's; when none is,
  the one with the lowest perplexity ratio (reported as such).
- **teacher check**: every rklu / fklu setting runs ``rklu_llm.teacher_check`` before distilling (the trainer stores
  it in the run record); its verdict is reported beside the setting's outcome, with one line saying whether it
  predicted the outcome: every setting it calls weak *kept the book* (its forget / control BLEU ratio closed at most
  ``PREDICT_SHARE``, half, of the original's gap to the control: with this original, above 1.37), every setting it
  passes did not. Issue 19 asked for "weak ends above 2x the control's BLEU, ok at or below", which an original at
  1.74x the control's cannot fail for ``ok`` nor meet for ``weak``; the rule and the check's verdict (relative to the
  original since the first rklu setting, whose teacher kept 48% top-1 true against the original's 50% and was called
  ``ok`` by the absolute 0.5) were changed after that first setting, and the report applies both to every record.

Each setting runs the book recipe (``rklu_llm.scripts.copyright``, through ``benchmarks/copyright.py``'s
``recipe_argv``) in its own folder ``<work_dir>/settings/<setting>``, with the checked original as its given model
(under ``--general_at selected`` its unlearned model is kept there, for lm-eval should the rule select it); rklu and
fklu keep the frozen models' logits of every chunk in memory after the first epoch (``--cache_frozen_answers``, a speed
setting: later epochs skip two forward passes per step).
Every finished setting leaves one record, ``<results_dir>/copyright_runs/<setting>.json``; the driver skips those, so
work stopped mid-way (``--deadline_s``: start nothing new past that many seconds; ``--max_runs``) loses at most the
setting under way. A new machine rebuilds the original in its work directory (the fine-tune is seeded) and goes on
only if it evaluates as the committed one did (``--adopt_tolerance``); a selected setting whose model is not in the
work directory (its record adopted from another machine's) is run again before lm-eval and measured only if it
evaluates as its record did. ``--plan`` prints the settings with estimated
minutes (measured costs from the work directory's finished settings when there are any, else ``FALLBACK_*``,
measured on the committed reduced run and scaled to this machine by the methods measured here; ``training_rate``)
and runs nothing;
``--report_only`` writes the results from the records. Results: ``copyright_smollm2.{json,md,png}`` in
``--results_dir``: a table per method at its selected setting (forget BLEU and ROUGE-L relative to the original and to
the control, perplexity ratio, lm-eval mean +- standard error, seconds), the teacher check of every rklu / fklu setting
beside its outcome, and forget BLEU against perplexity for every setting (the frontier).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import NamedTuple

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from a checkout without installing

from rklu_llm.io import REBUILD_TOLERANCE, metric_differences, write_json_atomic  # noqa: E402
from rklu_llm.teacher_check import stored_verdict  # noqa: E402

NAME = "copyright_smollm2"
RUNS_DIR = "copyright_runs"
METHODS = ("rklu", "fklu", "ga", "gd", "npo", "dpo", "idk", "ta")
#: the methods distilled from RKL-U's teacher: swept over augmentation epochs x alpha too, teacher-checked
DISTILLED = ("rklu", "fklu")
#: the methods that need the augmented model
AUGMENTED = ("rklu", "fklu", "ta")
TA_AUGMENT_EPOCHS = 1.0
DEFAULT_LRS = "3e-4,1e-3,3e-3"
DEFAULT_AUGMENT_EPOCHS = "1,10"
DEFAULT_ALPHAS = "4,8"
DEFAULT_TASKS = "winogrande,openbookqa,wsc273,copa"
MIN_CHUNKS = 64
#: the original's check: forget BLEU within [MIN, MAX] x the control's, WikiText perplexity <= MAX x the base's
MIN_KNOWLEDGE_RATIO = 1.5
MAX_KNOWLEDGE_RATIO = 10.0
MAX_ORIGINAL_PPL_RATIO = 1.5
#: the selection rule's perplexity budget: unlearned WikiText perplexity <= this x the original's
MAX_PPL_RATIO = 1.10
#: the teacher check's prediction: a setting *kept the book* when its forget / control BLEU ratio stays above
#: ``1 + PREDICT_SHARE x (the original's ratio - 1)``, i.e. it closed at most this share of the original's gap to the
#: control; ``weak`` predicts kept, ``ok`` predicts not kept
PREDICT_SHARE = 0.5
#: costs before anything is measured here, from the committed reduced run (benchmarks/copyright.py, 2-core CPU, one
#: torch thread, load average ~8): training seconds per trained token (rows' seconds / (5 epochs x 16 x 64 tokens);
#: fklu: rklu's), fine-tune / augmentation seconds per token (445 s / (12 x 16 x 64)), and one evaluation (a guess:
#: a forward token costs about a third of a trained one, 0.013 s; ~130k lm-eval tokens, 26k WikiText tokens, 128
#: greedy continuations of 64 tokens: ~40 min)
FALLBACK_S_PER_TOKEN = {
    "rklu": 0.155,
    "fklu": 0.155,
    "ga": 0.040,
    "gd": 0.066,
    "npo": 0.117,
    "dpo": 0.083,
    "idk": 0.011,
    "ta": 0.0,
}
FALLBACK_AUGMENT_S_PER_TOKEN = 0.036
FALLBACK_EVAL_S = 2400.0
#: of which lm-eval (the guess above: ~130k tokens at 0.013 s)
FALLBACK_GENERAL_S = 1700.0


def load_bench():
    """benchmarks/copyright.py as a module (a script, not a package): its ``recipe_argv`` builds every recipe call."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_copyright", REPO / "benchmarks" / "copyright.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# --------------------------------------------------------------------------------------------------------------------
# Arguments: every input checked before any model is loaded
# --------------------------------------------------------------------------------------------------------------------


def _grid(text: str, flag: str) -> list[float]:
    try:
        values = sorted({float(v) for v in text.split(",") if v.strip()})
    except ValueError as exc:
        raise SystemExit(f"{flag} takes comma-separated numbers, got {text!r}: {exc}") from exc
    if not values:
        raise SystemExit(f"{flag}: no value given")
    return values


def parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data_root", required=True, help="folder with books/, wikitext/ and general/")
    p.add_argument("--work_dir", required=True, help="models and per-setting folders (resumable state)")
    p.add_argument("--results_dir", default=str(REPO / "benchmarks" / "results"), help="tables, plot, run records")
    p.add_argument("--model", default="embedded:smollm2-135m-instruct")
    p.add_argument("--forget_text", default="pride_and_prejudice.txt")
    p.add_argument("--control_text", default="sense_and_sensibility.txt")
    p.add_argument("--retain_text", default="emma.txt", help="gd's retain corpus")
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--lrs", default=DEFAULT_LRS, help="the learning-rate grid of every method (two values or more)")
    p.add_argument("--augment_epochs", default=DEFAULT_AUGMENT_EPOCHS, help="rklu / fklu: augmentation epochs grid")
    p.add_argument("--alphas", default=DEFAULT_ALPHAS, help="rklu / fklu: teacher alpha grid (> 0)")
    p.add_argument("--chunk_tokens", type=int, default=128)
    p.add_argument("--num_chunks", type=int, default=MIN_CHUNKS)
    p.add_argument("--prefix_tokens", type=int, default=None, help="default: half of --chunk_tokens")
    p.add_argument("--segment_tokens", type=int, default=128)
    p.add_argument("--num_segments", type=int, default=200)
    p.add_argument("--general_tasks", default=DEFAULT_TASKS)
    p.add_argument("--general_limit", type=int, default=None, help="items per lm-eval task (default: all; tests)")
    p.add_argument(
        "--general_at",
        choices=("selected", "every"),
        default="selected",
        help="lm-eval on each method's selected setting only (the rule does not read it), or on every setting",
    )
    p.add_argument("--finetune_epochs", type=float, default=5.0, help="the original's fine-tune on the forget chunks")
    p.add_argument("--finetune_lr", type=float, default=1e-3)
    p.add_argument("--unlearn_epochs", type=float, default=5.0)
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument("--eval_batch_size", type=int, default=32)
    p.add_argument("--lora", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument(
        "--teacher_check",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="check RKL-U's teacher of every rklu / fklu setting (needs an augmented model)",
    )
    p.add_argument("--min_knowledge_ratio", type=float, default=MIN_KNOWLEDGE_RATIO)
    p.add_argument("--max_knowledge_ratio", type=float, default=MAX_KNOWLEDGE_RATIO)
    p.add_argument("--max_original_ppl_ratio", type=float, default=MAX_ORIGINAL_PPL_RATIO)
    p.add_argument("--max_ppl_ratio", type=float, default=MAX_PPL_RATIO, help="the selection rule's budget")
    p.add_argument("--min_chunks", type=int, default=MIN_CHUNKS, help="the protocol's smallest forget set (tests: 1)")
    p.add_argument(
        "--adopt_tolerance",
        type=float,
        default=REBUILD_TOLERANCE,
        help="a rebuilt original (a new machine) continues the finished settings only if it evaluates within this of "
        "the committed one on every metric",
    )
    p.add_argument("--deadline_s", type=float, default=float("inf"), help="start no new setting after this long")
    p.add_argument("--max_runs", type=int, default=None, help="start at most this many settings")
    p.add_argument("--plan", action="store_true", help="print the settings and estimates; run nothing")
    p.add_argument("--report_only", action="store_true", help="write the results from the records; run nothing")
    p.add_argument(
        "--cache_frozen_answers",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="rklu / fklu: keep the original's and augmented model's logits of every chunk in memory after the first "
        "epoch (about 1.6 GB each for 64 chunks of 128 tokens; a speed setting, not part of the protocol)",
    )
    p.add_argument("--threads", type=int, default=None, help="torch threads on a CPU (default: torch's)")
    args = p.parse_args(argv)
    check(args)
    return args


def check(args) -> None:
    """Every input the protocol can check without a model; ``SystemExit`` with what to change."""
    args.grid = _grid(args.lrs, "--lrs")
    if len(args.grid) < 2:
        raise SystemExit(
            f"--lrs {args.lrs}: the protocol sweeps every method over the same grid of at least two learning "
            f"rates (the default: {DEFAULT_LRS}); one value is one guess, not a tuning budget."
        )
    if any(not lr > 0 for lr in args.grid):
        raise SystemExit(f"--lrs {args.lrs}: learning rates must be positive")
    args.method_list = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in args.method_list if m not in METHODS]
    if unknown or not args.method_list:
        raise SystemExit(f"--methods: unknown {unknown or 'empty list'}; the protocol's methods: {', '.join(METHODS)}")
    args.alpha_grid = _grid(args.alphas, "--alphas")
    if any(not a > 0 for a in args.alpha_grid):
        raise SystemExit(
            f"--alphas {args.alphas}: teacher alpha must be > 0 (at 0 the teacher is the original: nothing unlearned)"
        )
    args.augment_grid = _grid(args.augment_epochs, "--augment_epochs")
    needs_augmented = any(m in AUGMENTED for m in args.method_list)
    if any(not e > 0 for e in args.augment_grid) and needs_augmented:
        raise SystemExit(
            f"--augment_epochs {args.augment_epochs}: rklu / fklu / ta need an augmented model, built by at least "
            "some augmentation (every value must be > 0)"
        )
    if args.teacher_check and not any(m in DISTILLED for m in args.method_list):
        raise SystemExit(
            "--teacher_check needs an augmented model, which only rklu / fklu settings build and distil from: add "
            "rklu or fklu to --methods, or pass --no-teacher_check"
        )
    if args.num_chunks < max(1, args.min_chunks):
        what = "an empty forget set" if args.num_chunks < 1 else f"fewer than the protocol's {args.min_chunks}"
        raise SystemExit(f"--num_chunks {args.num_chunks}: {what} chunks of the book")
    if args.prefix_tokens is None:
        args.prefix_tokens = args.chunk_tokens // 2
    for flag, value in (("--unlearn_epochs", args.unlearn_epochs), ("--finetune_epochs", args.finetune_epochs)):
        if not value > 0:
            raise SystemExit(f"{flag} must be > 0, got {value}")
    books = Path(args.data_root) / "books"
    for flag in ("forget_text", "control_text", "retain_text"):
        name = getattr(args, flag)
        path = Path(name) if Path(name).is_file() else books / name
        if not path.is_file():
            raise SystemExit(f"--{flag} {name}: no such file (looked in {books})")
        if flag == "forget_text" and not path.read_text(encoding="utf-8", errors="replace").strip():
            raise SystemExit(f"--forget_text {name}: the book is empty, so is the forget set")
    if args.max_runs is not None and args.max_runs < 0:
        raise SystemExit(f"--max_runs must be >= 0, got {args.max_runs}")


def protocol_settings(args) -> dict:
    """The fixed part of the protocol (the grids may grow; these may not change within a work directory)."""
    keys = [
        "model",
        "forget_text",
        "control_text",
        "retain_text",
        "chunk_tokens",
        "num_chunks",
        "prefix_tokens",
        "segment_tokens",
        "num_segments",
        "general_tasks",
        "general_limit",
        "finetune_epochs",
        "finetune_lr",
        "unlearn_epochs",
        "batch_size",
        "lora",
    ]
    return {k: getattr(args, k) for k in keys} | {"ta_augment_epochs": TA_AUGMENT_EPOCHS, "seed": 0}


# --------------------------------------------------------------------------------------------------------------------
# Settings
# --------------------------------------------------------------------------------------------------------------------


class Setting(NamedTuple):  # not a dataclass: this script is loaded without a sys.modules entry (tests)
    method: str
    lr: float
    augment_epochs: float | None = None  # rklu / fklu / ta
    alpha: float | None = None  # rklu / fklu

    @property
    def name(self) -> str:
        name = f"{self.method}_lr{self.lr:g}"
        if self.method in DISTILLED:
            name += f"_aug{self.augment_epochs:g}_a{self.alpha:g}"
        return name

    @property
    def augment_key(self) -> str | None:
        return None if self.augment_epochs is None else f"lr{self.lr:g}_aug{self.augment_epochs:g}"


def settings(args) -> list[Setting]:
    """Every setting of the protocol, in the order they run: lr by lr, the methods in ``--methods`` order."""
    out = []
    for lr in args.grid:
        for method in args.method_list:
            if method in DISTILLED:
                out += [Setting(method, lr, e, a) for e in args.augment_grid for a in args.alpha_grid]
            elif method == "ta":
                out.append(Setting(method, lr, TA_AUGMENT_EPOCHS))
            else:
                out.append(Setting(method, lr))
    return out


def load_records(results_dir, protocol: dict | None = None) -> dict[str, dict]:
    """The finished settings' records (those of another protocol left out)."""
    folder = Path(results_dir) / RUNS_DIR
    found = {}
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        record = json.loads(path.read_text())
        if protocol is None or record.get("protocol") == protocol:
            found[path.stem] = record
    return found


# --------------------------------------------------------------------------------------------------------------------
# The declared rules
# --------------------------------------------------------------------------------------------------------------------


def ratio(a: float | None, b: float | None) -> float | None:
    """``a / b``; a zero denominator gives inf (or 1.0 when ``a`` is zero too: both at the floor)."""
    if a is None or b is None:
        return None
    if b == 0:
        return 1.0 if a == 0 else math.inf
    return a / b


def select(records: list[dict], original_ppl: float, max_ppl_ratio: float = MAX_PPL_RATIO) -> tuple[dict, str] | None:
    """The protocol's choice among one method's settings: the lowest forget BLEU with WikiText perplexity <=
    ``max_ppl_ratio`` x the original's, else the lowest perplexity ratio. Returns ``(record, why)``."""
    if not records:
        return None
    within = [r for r in records if r["wikitext_perplexity"] <= max_ppl_ratio * original_ppl]
    if within:
        best = min(within, key=lambda r: (r["forget_bleu"], r["wikitext_perplexity"]))
        return best, f"lowest forget BLEU with perplexity <= {max_ppl_ratio:g}x the original's"
    best = min(records, key=lambda r: (r["wikitext_perplexity"], r["forget_bleu"]))
    return best, f"no setting within {max_ppl_ratio:g}x the original's perplexity: the lowest perplexity"


def kept_threshold(original: dict, share: float = PREDICT_SHARE) -> float:
    """The forget / control BLEU ratio above which a setting kept the book (see :data:`PREDICT_SHARE`)."""
    return 1.0 + share * (ratio(original["forget_bleu"], original["control_bleu"]) - 1.0)


def teacher_prediction(records: list[dict], original: dict, share: float = PREDICT_SHARE) -> dict:
    """Did the teacher check predict the outcome? ``weak`` predicts that the setting kept the book (forget / control
    BLEU above :func:`kept_threshold`), ``ok`` that it did not. Returns the counts, the misses and one line."""
    threshold = kept_threshold(original, share)
    verdicts = {r["setting"]: stored_verdict(r.get("teacher_check")) for r in records}
    checked = [r for r in records if verdicts[r["setting"]] in ("weak", "ok")]
    misses = [
        r["setting"]
        for r in checked
        if (verdicts[r["setting"]] == "weak") != (ratio(r["forget_bleu"], r["control_bleu"]) > threshold)
    ]
    if not checked:
        line = "Teacher check: no rklu / fklu setting has finished with a check yet."
    else:
        said = "predicted" if not misses else "did NOT predict"
        line = (
            f"Teacher check {said} the outcome: {len(checked) - len(misses)}/{len(checked)} settings as predicted "
            f"(weak -> kept the book, forget / control BLEU above {threshold:.2f}, i.e. less than {share:.0%} of the "
            f"original's excess over the control removed; ok -> at or below)"
            + (f"; not as predicted: {', '.join(misses)}" if misses else "")
            + "."
        )
    return {
        "checked": len(checked),
        "as_predicted": len(checked) - len(misses),
        "misses": misses,
        "threshold": threshold,
        "line": line,
    }


def general_stats(general_eval: dict | None) -> dict:
    """Mean lm-eval accuracy and its standard error, ``sqrt(sum se_t^2) / n`` over independent tasks."""
    if not general_eval or not general_eval.get("tasks"):
        return {"general_average_acc": None, "general_average_stderr": None, "general_tasks": {}}
    tasks = general_eval["tasks"]
    errors = [t.get("acc_stderr") for t in tasks.values()]
    stderr = None if any(e is None for e in errors) else math.sqrt(sum(e * e for e in errors)) / len(errors)
    return {
        "general_average_acc": sum(t["acc"] for t in tasks.values()) / len(tasks),
        "general_average_stderr": stderr,
        "general_tasks": {
            k: {"acc": t["acc"], "acc_stderr": t.get("acc_stderr"), "num_samples": t.get("num_samples")}
            for k, t in tasks.items()
        },
    }


def original_problems(args, base: dict, original: dict) -> list[str]:
    """What keeps the original from the protocol (empty: it passes): it must know the book without having memorised
    it, its perplexity near the base model's. Each problem says what to change."""
    knows = ratio(original["forget_bleu"], original["control_bleu"])
    ppl = ratio(original["wikitext_perplexity"], base["wikitext_perplexity"])
    problems = []
    if knows < args.min_knowledge_ratio:
        problems.append(
            f"forget BLEU {original['forget_bleu']:.2f} is only {knows:.2f}x the control's "
            f"{original['control_bleu']:.2f} (needed >= {args.min_knowledge_ratio:g}x): it does not know the book; "
            "raise --finetune_epochs or --finetune_lr"
        )
    if knows > args.max_knowledge_ratio:
        problems.append(
            f"forget BLEU {original['forget_bleu']:.2f} is {knows:.2f}x the control's {original['control_bleu']:.2f} "
            f"(allowed <= {args.max_knowledge_ratio:g}x): it has memorised the book; lower --finetune_epochs or "
            "--finetune_lr"
        )
    if ppl > args.max_original_ppl_ratio:
        problems.append(
            f"WikiText perplexity {original['wikitext_perplexity']:.2f} is {ppl:.2f}x the base model's "
            f"{base['wikitext_perplexity']:.2f} (allowed <= {args.max_original_ppl_ratio:g}x): the fine-tune damaged "
            "the model; lower --finetune_lr or --finetune_epochs (LoRA: --lora)"
        )
    return problems


def check_original(args, base: dict, original: dict) -> None:
    """:func:`original_problems`, raised (before any unlearning) when there are any."""
    problems = original_problems(args, base, original)
    if problems:
        raise SystemExit(
            "The original fails the protocol's check, so no unlearning was started:\n- "
            + "\n- ".join(problems)
            + f"\nThen rerun with a new --work_dir (this one holds that original: {args.work_dir})."
        )


# --------------------------------------------------------------------------------------------------------------------
# Running
# --------------------------------------------------------------------------------------------------------------------


def recipe_argv(args, bench, method: str, root: Path, model: str, finetune_epochs: float, **run) -> list[str]:
    """``benchmarks/copyright.py``'s recipe call for one folder, with the protocol's sizes (later flags win)."""
    lr = run.get("lr", args.grid[0])
    ns = argparse.Namespace(**vars(args))
    ns.model, ns.finetune_epochs, ns.unlearn_lr = model, finetune_epochs, lr
    ns.augment_epochs = run.get("augment_epochs") or 1.0
    ns.teacher_alpha = run.get("alpha") or 4.0
    argv = bench.recipe_argv(ns, method)
    argv += ["--output_dir", str(root), "--augment_learning_rate", str(lr)]
    argv += ["--finetune_learning_rate", str(args.finetune_lr)]
    argv += ["--teacher_check", "true" if args.teacher_check else "false"]
    argv += ["--cache_frozen_answers", "true" if args.cache_frozen_answers else "false"]
    if method != "none":  # a setting: the base model was evaluated with the original
        argv += ["--evaluate_base", "false"]
    return argv


def original_dir(args) -> Path:
    return Path(args.work_dir) / "original"


def make_original(args, bench, recipe) -> tuple[dict, dict]:
    """Base and original (fine-tuned) evaluated through the recipe (``--methods none``); their rows."""
    root = original_dir(args)
    if not (root / "finetuned" / "run.json").is_file():
        recipe.main(recipe_argv(args, bench, "none", root, args.model, args.finetune_epochs))
    return reference_rows(args)


def reference_rows(args, from_results: bool = False) -> tuple[dict | None, dict | None]:
    """The base model's and the original's rows from the work directory; with ``from_results`` (``--report_only``
    in a fresh checkout) from the committed results file when the work directory has none and that file's protocol
    is this one."""
    if from_results and not (original_dir(args) / "finetuned" / "run.json").is_file():
        references = committed_references(args, protocol_settings(args))
        if references:
            return references.get("base"), references.get("original")
    rows = []
    for name in ("base", "finetuned"):
        path = original_dir(args) / name / "run.json"
        if not path.is_file():
            rows.append(None)
            continue
        row = json.loads(path.read_text())
        general = path.parent / "general_eval.json"
        rows.append(row | general_stats(json.loads(general.read_text()) if general.is_file() else None))
    return rows[0], rows[1]


def link_augmented(args, setting: Setting, root: Path, plan: list[Setting]) -> None:
    """Share one augmented model per (lr, augmentation epochs): link a finished one into ``root``."""
    if setting.augment_key is None or (root / "augmented.json").is_file():
        return
    if (root / "augmented").exists() or (root / "augmented").is_symlink():
        return  # an interrupted build of this setting's own: the recipe builds it again
    for other in plan:
        source = Path(args.work_dir) / "settings" / other.name
        if other.augment_key == setting.augment_key and other != setting and (source / "augmented.json").is_file():
            root.mkdir(parents=True, exist_ok=True)
            target = os.path.relpath((source / "augmented").resolve(), root.resolve())  # the work dir may move
            (root / "augmented").symlink_to(target, target_is_directory=True)
            shutil.copyfile(source / "augmented.json", root / "augmented.json")
            return


def run_setting(
    args, bench, recipe, setting: Setting, original: dict, plan: list[Setting], protocol: dict, write: bool = True
) -> dict:
    """One setting through the recipe, from the checked original; its record written under the results (``write``)."""
    from rklu_llm.run_state import read_run_record

    root = Path(args.work_dir) / "settings" / setting.name
    (root / "finetuned").mkdir(parents=True, exist_ok=True)
    # the recipe's stage 2 is the original, already evaluated (a finished stage is never redone)
    shutil.copyfile(original_dir(args) / "finetuned" / "run.json", root / "finetuned" / "run.json")
    link_augmented(args, setting, root, plan)
    run = {"lr": setting.lr, "augment_epochs": setting.augment_epochs, "alpha": setting.alpha}
    model = str(original_dir(args) / "finetuned")
    argv = recipe_argv(args, bench, setting.method, root, model, 0, **run)
    if args.general_at == "selected":
        # lm-eval later, on the selected setting (evaluate_selected), which needs the model kept (a LoRA adapter for
        # the distilled and trained methods; ta's edited weights are a full model)
        argv += ["--skip_general", "true", "--save_models", "true"]
    recipe.main(argv)
    out = unlearned_dir(args, setting.name, setting.method)
    row = json.loads((out / "run.json").read_text())
    general = out / "general_eval.json"
    check_result = (read_run_record(out) or {}).get("teacher_check")
    augment = root / "augmented.json"
    record = {
        "setting": setting.name,
        "method": setting.method,
        "lr": setting.lr,
        "augment_epochs": setting.augment_epochs,
        "alpha": setting.alpha,
        **{k: row.get(k) for k in row if not k.endswith("_acc") and k not in ("name", "method")},
        **general_stats(json.loads(general.read_text()) if general.is_file() else None),
        "augment_seconds": json.loads(augment.read_text())["seconds"] if augment.is_file() else 0.0,
        "teacher_check": None if check_result is None else {k: v for k, v in check_result.items() if k != "advice"},
        "general_at": args.general_at,
        "protocol": protocol,
    }
    if write:
        write_json_atomic(Path(args.results_dir) / RUNS_DIR / f"{setting.name}.json", record)
    return record


def saved_model(folder: Path) -> bool:
    """Whether ``folder`` holds a saved model: a full one (``config.json``) or a LoRA adapter."""
    return (folder / "config.json").is_file() or (folder / "adapter_config.json").is_file()


def unlearned_dir(args, setting: str, method: str) -> Path:
    """Where ``run_setting`` leaves the setting's unlearned model."""
    return Path(args.work_dir) / "settings" / setting / method


def final_choice(args, method: str, plan: list[Setting], records: dict, original: dict) -> dict | None:
    """``method``'s selected record once every one of its settings in ``plan`` has finished, else ``None``."""
    mine = [r for r in records.values() if r["method"] == method]
    if not mine or len(mine) < len([s for s in plan if s.method == method]):
        return None
    return select(mine, original["wikitext_perplexity"], args.max_ppl_ratio)[0]


def rebuild_selected(args, bench, recipe, chosen: dict, original: dict, plan: list[Setting], protocol: dict) -> bool:
    """Run the selected setting again when its unlearned model is not in the work directory (a record adopted from
    another machine's work), so that lm-eval measures the model the record describes: the rebuild (seeded) counts
    only if it evaluates as the record did (every metric within ``--adopt_tolerance``). Returns whether the model is
    there and is that one; the record itself is never rewritten here."""
    out = unlearned_dir(args, chosen["setting"], chosen["method"])
    if saved_model(out):
        return True
    setting = next(s for s in plan if s.name == chosen["setting"])
    print(f"=== copyright protocol: {setting.name}'s model is not in {args.work_dir}; running it again", flush=True)
    shutil.rmtree(out, ignore_errors=True)  # a partial folder: the recipe redoes the stage
    rebuilt = run_setting(args, bench, recipe, setting, original, plan, protocol, write=False)
    largest, problems = metric_differences({"rebuilt": rebuilt}, {"rebuilt": chosen}, args.adopt_tolerance)
    if problems:
        print(
            f"=== copyright protocol: {setting.name} run again here does not evaluate as its record (tolerance "
            f"{args.adopt_tolerance:g}), so lm-eval is not run on it:\n- " + "\n- ".join(problems[:10]),
            flush=True,
        )
        return False
    print(
        f"=== copyright protocol: {setting.name} run again evaluates as its record (largest difference {largest:.2g})",
        flush=True,
    )
    return True


def evaluate_selected(
    args, bench, recipe, plan: list[Setting], records: dict, original: dict, protocol: dict
) -> list[str]:
    """lm-eval on each method's selected setting (``--general_at selected``) once all of the method's settings in
    ``plan`` have finished and its choice has no lm-eval result yet (its model rebuilt first when the work directory
    lacks it: ``rebuild_selected``); the record gains the accuracies and ``general_seconds``. Returns the settings
    evaluated."""
    from rklu_llm.scripts import eval_general

    evaluated = []
    for method in args.method_list:
        chosen = final_choice(args, method, plan, records, original)
        if chosen is None or chosen.get("general_average_acc") is not None:
            continue
        if not rebuild_selected(args, bench, recipe, chosen, original, plan, protocol):
            continue
        out = unlearned_dir(args, chosen["setting"], method)
        print(f"=== copyright protocol: lm-eval on {method}'s selected setting {chosen['setting']}", flush=True)
        argv = [
            "--model",
            str(out),
            "--output_dir",
            str(out),
            "--general_data_dir",
            str(Path(args.data_root) / "general"),
        ]
        argv += ["--general_tasks", args.general_tasks, "--general_batch_size", str(args.eval_batch_size)]
        if args.general_limit is not None:
            argv += ["--general_limit", str(args.general_limit)]
        start = time.perf_counter()
        result = eval_general.main(argv)
        record = chosen | general_stats(result) | {"general_seconds": time.perf_counter() - start}
        write_json_atomic(Path(args.results_dir) / RUNS_DIR / f"{chosen['setting']}.json", record)
        evaluated.append(chosen["setting"])
    return evaluated


def committed_references(args, protocol: dict) -> dict:
    """``{"base", "original"}`` rows of the results file in ``--results_dir`` when it was made under ``protocol``,
    else ``{}``."""
    path = Path(args.results_dir) / f"{NAME}.json"
    data = json.loads(path.read_text()) if path.is_file() else {}
    return (data.get("references") or {}) if data.get("protocol") == protocol else {}


def check_rebuild(args, protocol: dict, base: dict, original: dict) -> None:
    """A work directory on a new machine rebuilds the original (the fine-tune is seeded): the settings already
    finished in ``--results_dir`` count only if the rebuilt base and original evaluate as the committed ones did
    (every metric within ``--adopt_tolerance``); otherwise stop before any setting is run against another original."""
    references = committed_references(args, protocol)
    if not references.get("original") or not load_records(args.results_dir, protocol):
        return
    committed = {label: references.get(label) or {} for label in ("base", "original")}
    problems = metric_differences({"base": base, "original": original}, committed, args.adopt_tolerance)[1]
    if problems:
        raise SystemExit(
            f"The original rebuilt in --work_dir {args.work_dir} does not evaluate as the one the settings finished in "
            f"{args.results_dir} were run from (tolerance {args.adopt_tolerance:g}):\n- "
            + "\n- ".join(problems[:10])
            + "\nThose settings cannot be mixed with settings run from this original: give another --results_dir."
        )


def check_protocol(args, protocol: dict) -> None:
    """A work directory holds one protocol: refuse another (a new --work_dir for a new original)."""
    path = Path(args.work_dir) / "protocol.json"
    if path.is_file():
        stored = json.loads(path.read_text())
        changed = sorted(k for k in set(stored) | set(protocol) if stored.get(k) != protocol.get(k))
        if changed:
            raise SystemExit(
                f"--work_dir {args.work_dir} holds a run of another protocol (differs in: {', '.join(changed)}); "
                "use a new --work_dir."
            )
    elif not args.plan and not args.report_only:
        write_json_atomic(path, protocol)


def main(argv=None) -> None:
    args = parse(argv)  # every input checked: nothing loaded, nothing written before this line
    started = time.time()
    protocol = protocol_settings(args)
    check_protocol(args, protocol)
    plan = settings(args)
    bench = load_bench()
    if not args.report_only:
        print_plan(args, plan, load_records(args.results_dir, protocol))  # before starting, what is left
    if args.plan:
        return
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    from rklu_llm.scripts import copyright as recipe

    base, original = reference_rows(args, from_results=args.report_only)
    if not args.report_only and original is None:
        base, original = make_original(args, bench, recipe)
        check_rebuild(args, protocol, base, original)
        # the original's numbers land in the results whatever its check says
        write_report(args, load_records(args.results_dir, protocol), base, original)
    if base is not None and original is not None:
        check_original(args, base, original)  # before any unlearning
    started_runs = 0
    while not args.report_only and original is not None:
        done = load_records(args.results_dir, protocol)
        pending = [s for s in plan if s.name not in done]
        if not pending or time.time() - started > args.deadline_s:
            break
        if args.max_runs is not None and started_runs >= args.max_runs:
            break
        setting = pending[0]
        started_runs += 1
        print(f"=== copyright protocol: {setting.name} ({time.time() - started:.0f} s)", flush=True)
        run_setting(args, bench, recipe, setting, original, plan, protocol)
        if args.general_at == "selected":
            evaluate_selected(args, bench, recipe, plan, load_records(args.results_dir, protocol), original, protocol)
        write_report(args, load_records(args.results_dir, protocol), base, original)
    in_time = time.time() - started <= args.deadline_s
    if not args.report_only and original is not None and args.general_at == "selected" and in_time:
        evaluate_selected(
            args, bench, recipe, plan, load_records(args.results_dir, protocol), original, protocol
        )  # a resumed run
    records = load_records(args.results_dir, protocol)
    write_report(args, records, base, original)
    left = len([s for s in plan if s.name not in records])
    print(f"{NAME}: {len(records)} settings finished, {left} left; results in {args.results_dir}")


# --------------------------------------------------------------------------------------------------------------------
# Plan and estimates
# --------------------------------------------------------------------------------------------------------------------


def trained_tokens(args) -> float:
    return args.unlearn_epochs * args.num_chunks * args.chunk_tokens


def measured_costs(args, records: dict) -> dict:
    """Seconds per trained token by method, seconds per augmentation token, seconds per evaluation: the work
    directory's finished settings (and the original's evaluation) where measured, else the ``FALLBACK_*`` values."""
    per_token: dict[str, list[float]] = {}
    augment, evals, generals = [], [], []
    for r in records.values():
        if r.get("seconds") is not None:
            train = max(0.0, r["seconds"] - (r.get("augment_seconds") or 0.0))
            per_token.setdefault(r["method"], []).append(train / trained_tokens(args))
        if r.get("augment_seconds") and r.get("augment_epochs"):
            augment.append(r["augment_seconds"] / (r["augment_epochs"] * args.num_chunks * args.chunk_tokens))
        # a setting evaluated without lm-eval (general_at "selected") measures the rest of an evaluation
        if r.get("eval_seconds") is not None and (r.get("general_at") == "selected") == (args.general_at == "selected"):
            evals.append(r["eval_seconds"])
        if r.get("general_seconds") is not None:
            generals.append(r["general_seconds"])
    _, original = reference_rows(args)
    if original is not None and original.get("eval_seconds") is not None and args.general_at == "every":
        evals.append(original["eval_seconds"])
    costs = {
        "s_per_token": {m: statistics.mean(v) for m, v in per_token.items()},
        "augment_s_per_token": statistics.mean(augment) if augment else None,
        "eval_s": statistics.mean(evals) if evals else None,
        "general_s": statistics.mean(generals) if generals else None,
    }
    costs["measured"] = (
        sorted(costs["s_per_token"])
        + (["augment"] if augment else [])
        + (["eval"] if evals else [])
        + (["lm-eval"] if generals else [])
    )
    return costs


def eval_estimate(args, costs: dict) -> float:
    """One setting's evaluation: measured, else the fallback (without lm-eval under ``--general_at selected``)."""
    if costs["eval_s"] is not None:
        return costs["eval_s"]
    return FALLBACK_EVAL_S - (FALLBACK_GENERAL_S if args.general_at == "selected" else 0.0)


#: methods whose training steps cost the same (the same frozen models and forward passes, another KL direction)
SAME_COST = {"rklu": "fklu", "fklu": "rklu"}


def training_rate(method: str, measured: dict[str, float]) -> float:
    """Seconds per trained token of ``method``: measured here, else measured for a method of the same cost
    (:data:`SAME_COST`), else its ``FALLBACK_S_PER_TOKEN`` scaled by how this machine compares with the reduced run's
    (the median of measured / fallback over the training methods measured here)."""
    if method in measured:
        return measured[method]
    if SAME_COST.get(method) in measured:
        return measured[SAME_COST[method]]
    scales = [rate / FALLBACK_S_PER_TOKEN[m] for m, rate in measured.items() if FALLBACK_S_PER_TOKEN.get(m)]
    return FALLBACK_S_PER_TOKEN[method] * (statistics.median(scales) if scales else 1.0)


def estimate(args, setting: Setting, costs: dict, augmented_done: set) -> float:
    rate = training_rate(setting.method, costs["s_per_token"])
    seconds = rate * trained_tokens(args) + eval_estimate(args, costs)
    if setting.augment_key is not None and setting.augment_key not in augmented_done:
        augment_rate = costs["augment_s_per_token"] or FALLBACK_AUGMENT_S_PER_TOKEN
        seconds += augment_rate * setting.augment_epochs * args.num_chunks * args.chunk_tokens
        augmented_done.add(setting.augment_key)
    return seconds


def rebuild_seconds(args, method: str, plan: list[Setting], records: dict, original: dict | None) -> float:
    """The measured cost of running ``method``'s selected setting again before its lm-eval (``rebuild_selected``):
    its record's seconds when every setting of the method has finished and the work dir lacks its model, else 0."""
    chosen = None if original is None else final_choice(args, method, plan, records, original)
    if chosen is None or saved_model(unlearned_dir(args, chosen["setting"], method)):
        return 0.0
    return (chosen.get("seconds") or 0.0) + (chosen.get("eval_seconds") or 0.0)


def print_plan(args, plan: list[Setting], records: dict) -> None:
    costs = measured_costs(args, records)
    augmented_done = {Setting(r["method"], r["lr"], r["augment_epochs"]).augment_key for r in records.values()}
    augmented_done.discard(None)
    _, original = reference_rows(args)
    total = 0.0
    print(f"Copyright protocol plan ({NAME}); work dir {args.work_dir}")
    general_s = costs["general_s"] or FALLBACK_GENERAL_S
    if original is None:
        full_eval = costs["eval_s"] or FALLBACK_EVAL_S  # with lm-eval, which the base and the original always get
        if costs["eval_s"] is not None and args.general_at == "selected":
            full_eval = costs["eval_s"] + general_s
        seconds = FALLBACK_AUGMENT_S_PER_TOKEN * args.finetune_epochs * args.num_chunks * args.chunk_tokens + 2 * (
            full_eval
        )
        total += seconds
        print(f"  original: fine-tune + base and original evaluated: ~{seconds / 60:.0f} min, then checked")
    else:
        print("  original: done")
    for setting in plan:
        if setting.name in records:
            print(f"  {setting.name:<32} done")
            continue
        seconds = estimate(args, setting, costs, augmented_done)
        total += seconds
        print(f"  {setting.name:<32} ~{seconds / 60:.0f} min")
    if args.general_at == "selected":
        for method in args.method_list:
            done = any(
                r["method"] == method and r.get("general_average_acc") is not None and r.get("general_at") == "selected"
                for r in records.values()
            )
            seconds = 0.0 if done else general_s + rebuild_seconds(args, method, plan, records, original)
            total += seconds
            label = f"lm-eval: {method}, selected"
            rebuilt = " (its model run again first: not in the work dir)" if seconds > general_s else ""
            print(f"  {label:<32} " + ("done" if done else f"~{seconds / 60:.0f} min{rebuilt}"))
    left = len([s for s in plan if s.name not in records])
    print(f"{left} of {len(plan)} settings left; estimated {total / 60:.0f} min ({total / 3600:.1f} h) in all")
    print(
        "Costs: measured here for "
        + (", ".join(costs["measured"]) or "nothing yet")
        + "; the rest from FALLBACK_* (the committed reduced run on a 2-core CPU, one thread), fklu from rklu and "
        "vice versa, the others scaled by the median measured / fallback ratio of the methods measured here."
    )


# --------------------------------------------------------------------------------------------------------------------
# The report
# --------------------------------------------------------------------------------------------------------------------


def _f(value, spec=".2f") -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float) and math.isinf(value):
        return "inf"
    return format(value, spec)


def _acc(row: dict) -> str:
    acc, se = row.get("general_average_acc"), row.get("general_average_stderr")
    if acc is None:
        return "n/a"
    return f"{100 * acc:.1f}" + ("" if se is None else f" ± {100 * se:.1f}")


def _acc_change(row: dict, original: dict) -> str:
    """The change in mean accuracy from the original, in points, with the standard error of the difference (the two
    evaluations treated as independent: conservative) and whether it is resolved (beyond 2 SE)."""
    a, b = row.get("general_average_acc"), original.get("general_average_acc")
    sa, sb = row.get("general_average_stderr"), original.get("general_average_stderr")
    if a is None or b is None:
        return "n/a"
    diff = 100 * (a - b)
    if sa is None or sb is None:
        return f"{diff:+.1f}"
    se = 100 * math.sqrt(sa * sa + sb * sb)
    return f"{diff:+.1f} ± {se:.1f} ({'resolved' if abs(diff) > 2 * se else 'not resolved'})"


def reported_methods(args, records: dict) -> list[str]:
    """The methods the report covers: every method with a finished setting and this driver's ``--methods`` (drivers
    limited to some methods share one report)."""
    ran = {r["method"] for r in records.values()}
    return [m for m in METHODS if m in ran or m in args.method_list]


def summary(args, records: dict, base: dict | None, original: dict | None) -> dict:
    selected = {}
    if original is not None:
        for method in reported_methods(args, records):
            mine = [r for r in records.values() if r["method"] == method]
            chosen = select(mine, original["wikitext_perplexity"], args.max_ppl_ratio)
            if chosen is not None:
                selected[method] = {"setting": chosen[0]["setting"], "why": chosen[1], "settings_run": len(mine)}
    distilled = [r for r in records.values() if r["method"] in DISTILLED]
    prediction = teacher_prediction(distilled, original) if original is not None else None
    return {"selected": selected, "teacher_prediction": prediction}


def protocol_text() -> str:
    """The module docstring's protocol, echoed in the results."""
    doc = __doc__
    start = doc.index("The protocol")
    return doc[start : doc.index("Each setting runs")].strip()


def write_report(args, records: dict, base: dict | None, original: dict | None) -> None:
    """The results files from ``records``. Their plan is the settings of every reported method, not only this driver's
    ``--methods`` (drivers limited to some methods share one report)."""
    plan = settings(argparse.Namespace(**{**vars(args), "method_list": reported_methods(args, records)}))
    out = Path(args.results_dir)
    out.mkdir(parents=True, exist_ok=True)
    result = summary(args, records, base, original)
    problems = original_problems(args, base, original) if base and original else None
    machine = {
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "load_average_at_report": os.getloadavg(),
    }
    data = {
        "protocol": protocol_settings(args),
        "protocol_text": protocol_text(),
        "thresholds": {
            "min_knowledge_ratio": args.min_knowledge_ratio,
            "max_knowledge_ratio": args.max_knowledge_ratio,
            "max_original_ppl_ratio": args.max_original_ppl_ratio,
            "max_ppl_ratio": args.max_ppl_ratio,
            "predict_share": PREDICT_SHARE,
        },
        "grids": {"lrs": args.grid, "augment_epochs": args.augment_grid, "alphas": args.alpha_grid},
        "references": {"base": base, "original": original},
        "original_check": None if problems is None else {"passed": not problems, "problems": problems},
        "settings_planned": [s.name for s in plan],
        "settings_finished": sorted(records),
        **result,
        "machine": machine,
    }
    write_json_atomic(out / f"{NAME}.json", data)
    (out / f"{NAME}.md").write_text(markdown(args, plan, records, base, original, result, machine))
    chosen = {v["setting"] for v in result["selected"].values()}
    plot(out / f"{NAME}.png", records, original, chosen, args.max_ppl_ratio)


#: the compact table's heading in the report (the README quotes the table under it; tests/test_readme.py checks that)
COMPACT_HEADING = "## In short: each method at its selected setting"


def _setting_text(record: dict) -> str:
    text = f"lr {record['lr']:g}"
    if record["method"] in ("rklu", "fklu"):
        epochs = record["augment_epochs"]
        text += f", {epochs:g} aug. epoch{'' if epochs == 1 else 's'}, alpha {record['alpha']:g}"
    return text


def compact_table(plan: list[Setting], records: dict, original: dict, selected: dict) -> list[str]:
    """Each method's selected setting in one line: its settings finished of those planned, forget BLEU, forget /
    control BLEU, perplexity / the original's, lm-eval and its change from the original."""
    lines = [
        "| method | selected setting (finished of planned) | forget BLEU | forget / control BLEU | PPL / original's "
        "| lm-eval mean ± SE | change from original |",
        "|---|---|---|---|---|---|---|",
    ]
    for method, chosen in selected.items():
        r = records[chosen["setting"]]
        planned = len([s for s in plan if s.method == method])
        outside = "" if "lowest perplexity" not in chosen["why"] else " (none within the budget: lowest perplexity)"
        lines.append(
            f"| {method} | {_setting_text(r)} ({chosen['settings_run']} of {planned}){outside} | "
            f"{_f(r['forget_bleu'])} | {_f(ratio(r['forget_bleu'], r['control_bleu']))} | "
            f"{_f(ratio(r['wikitext_perplexity'], original['wikitext_perplexity']), '.3f')} | "
            f"{_acc(r).replace('n/a', 'not yet')} | {_acc_change(r, original).replace('n/a', 'not yet')} |"
        )
    return lines


def markdown(args, plan, records, base, original, result, machine) -> str:
    command = (
        "python benchmarks/copyright_protocol.py --data_root data --work_dir <work dir> "
        f"--lrs {','.join(f'{v:g}' for v in args.grid)}"
    )
    lines = [
        "# Copyright unlearning on SmolLM2-135M-Instruct, under a declared protocol",
        "",
        f"Command: `{command}` (repeated until every setting has run; each command resumes). Machine: "
        f"{machine['cpus']} CPU cores, {machine['platform']} (load average at this report "
        f"{machine['load_average_at_report'][1]:.1f}). {len(records)} of {len(plan)} settings finished.",
        "",
        "## Protocol (from `benchmarks/copyright_protocol.py`)",
        "",
        protocol_text(),
        "",
        "## Base and original",
        "",
        "| model | forget BLEU | control BLEU | forget / control BLEU | forget R-L | control R-L | WikiText PPL | "
        "lm-eval avg (± SE) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for label, row in (("base (never saw the book)", base), ("original (fine-tuned on the book)", original)):
        if row:
            lines.append(
                f"| {label} | {_f(row['forget_bleu'])} | {_f(row['control_bleu'])} | "
                f"{_f(ratio(row['forget_bleu'], row['control_bleu']))} | {_f(row['forget_rouge_l_recall'])} | "
                f"{_f(row['control_rouge_l_recall'])} | {_f(row['wikitext_perplexity'])} | {_acc(row)} |"
            )
    if base and original:
        problems = original_problems(args, base, original)
        verdict = "passed." if not problems else "**failed**, so no unlearning ran: " + "; ".join(problems) + "."
        lines += [
            "",
            f"Original check: forget/control BLEU {_f(ratio(original['forget_bleu'], original['control_bleu']))} "
            f"(required {args.min_knowledge_ratio:g} to {args.max_knowledge_ratio:g}), perplexity "
            f"{_f(ratio(original['wikitext_perplexity'], base['wikitext_perplexity']))}x the base's (required <= "
            f"{args.max_original_ppl_ratio:g}): {verdict}",
        ]
    if original and result["selected"]:
        lines += ["", COMPACT_HEADING, "", *compact_table(plan, records, original, result["selected"])]
    lines += [
        "",
        "## Each method at its selected setting",
        "",
        "BLEU: mean sentence BLEU (sacrebleu) x100, R-L: ROUGE-L recall (rouge_score, stemmer) x100, of the greedy "
        "continuation of each chunk's prompt; *vs original* = the unlearned model's score / the original's; *vs "
        "control* = its forget score / its own control score (1 = the level of a never-seen book). PPL ratio = "
        "WikiText perplexity / the original's. lm-eval: mean accuracy ± its standard error; change from the original "
        "± the standard error of the difference. Seconds: training (with the augmentation for rklu / fklu / ta, its "
        "build time counted in full in every setting that shares it) and evaluation.",
        "",
        "| method | selected setting | why | forget BLEU | BLEU vs original | BLEU vs control | R-L vs original | "
        "R-L vs control | PPL ratio | lm-eval avg | change (points) | train s | eval s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for method, chosen in result["selected"].items():
        r = records[chosen["setting"]]
        lines.append(
            f"| {method} | {chosen['setting']} (of {chosen['settings_run']}) | {chosen['why']} | "
            f"{_f(r['forget_bleu'])} | {_f(ratio(r['forget_bleu'], original['forget_bleu']))} | "
            f"{_f(ratio(r['forget_bleu'], r['control_bleu']))} | "
            f"{_f(ratio(r['forget_rouge_l_recall'], original['forget_rouge_l_recall']))} | "
            f"{_f(ratio(r['forget_rouge_l_recall'], r['control_rouge_l_recall']))} | "
            f"{_f(ratio(r['wikitext_perplexity'], original['wikitext_perplexity']), '.3f')} | {_acc(r)} | "
            f"{_acc_change(r, original)} | {_f(r.get('seconds'), '.0f')} | {_f(r.get('eval_seconds'), '.0f')} |"
        )
    lines += [
        "",
        "## Teacher check of every rklu / fklu setting, beside its outcome",
        "",
        "Teacher top-1 = the fraction of forget-set positions where the teacher's top token is the true one (weak "
        "when it keeps more than the check's share, 0.5, of the original's; the verdict is the current rule applied to "
        "the record's numbers); outcome = the unlearned model's forget BLEU / its control BLEU, and whether it kept "
        "the book (above the threshold of the line below the table).",
        "",
        "| setting | verdict | teacher top-1 true | original top-1 true | median rise | median margin | "
        "forget / control BLEU | kept the book | PPL ratio |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    prediction = result["teacher_prediction"]
    for name in sorted(records):
        r = records[name]
        if r["method"] not in DISTILLED:
            continue
        tc = r.get("teacher_check") or {}
        outcome = ratio(r["forget_bleu"], r["control_bleu"])
        kept = "n/a" if prediction is None else ("yes" if outcome > prediction["threshold"] else "no")
        lines.append(
            f"| {name} | {stored_verdict(tc) or 'not run'} | {_f(tc.get('teacher_top1_true'))} | "
            f"{_f(tc.get('original_top1_true'))} | {_f(tc.get('median_rise'))} | {_f(tc.get('median_margin'))} | "
            f"{_f(outcome)} | {kept} | "
            f"{_f(ratio(r['wikitext_perplexity'], original['wikitext_perplexity']) if original else None, '.3f')} |"
        )
    lines += ["", "n/a" if prediction is None else prediction["line"], "", "## Every setting", ""]
    lines += [
        "| setting | forget BLEU | control BLEU | forget R-L | PPL | lm-eval avg | train s | eval s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name in sorted(records):
        r = records[name]
        lines.append(
            f"| {name} | {_f(r['forget_bleu'])} | {_f(r['control_bleu'])} | {_f(r['forget_rouge_l_recall'])} | "
            f"{_f(r['wikitext_perplexity'], '.4g')} | {_acc(r)} | {_f(r.get('seconds'), '.0f')} | "
            f"{_f(r.get('eval_seconds'), '.0f')} |"
        )
    return "\n".join(lines) + "\n"


def frontier(records: list[dict]) -> list[dict]:
    """The settings no other beats on both forget BLEU and perplexity (lower is better), by perplexity."""
    ordered = sorted(records, key=lambda r: (r["wikitext_perplexity"], r["forget_bleu"]))
    front, best = [], math.inf
    for r in ordered:
        if r["forget_bleu"] < best:
            front.append(r)
            best = r["forget_bleu"]
    return front


def plot(
    path: Path, records: dict, original: dict | None, chosen: set = frozenset(), max_ppl_ratio: float = MAX_PPL_RATIO
) -> None:
    """Forget BLEU against WikiText perplexity for every setting, one colour per method, the selected setting of each
    ringed, and the frontier (the settings no other beats on both) as a line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 5))
    methods = sorted({r["method"] for r in records.values()})
    colours = dict(zip(methods, plt.cm.tab10.colors))
    for method in methods:
        mine = [r for r in records.values() if r["method"] == method]
        ax.scatter(
            [r["wikitext_perplexity"] for r in mine],
            [r["forget_bleu"] for r in mine],
            color=colours[method],
            label=method,
        )
    selected = [r for r in records.values() if r["setting"] in chosen]
    if selected:
        ax.scatter(
            [r["wikitext_perplexity"] for r in selected],
            [r["forget_bleu"] for r in selected],
            s=160,
            facecolors="none",
            edgecolors="black",
            label="selected",
        )
    front = frontier(list(records.values()))
    if len(front) > 1:
        ax.step(
            [r["wikitext_perplexity"] for r in front],
            [r["forget_bleu"] for r in front],
            where="post",
            color="black",
            alpha=0.4,
            label="frontier",
        )
    if original:
        ax.scatter(original["wikitext_perplexity"], original["forget_bleu"], marker="*", s=200, color="black")
        ax.axvline(max_ppl_ratio * original["wikitext_perplexity"], color="grey", linestyle=":", label="PPL budget")
        ax.axhline(original["control_bleu"], color="grey", linestyle="--", label="original's control BLEU")
        ax.scatter([], [], marker="*", color="black", label="original")
    ax.set(xscale="log", xlabel="WikiText perplexity (log)", ylabel="forget continuation BLEU (x100)")
    ax.set_title("Copyright protocol: every setting")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
