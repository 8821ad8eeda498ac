"""The TOFU benchmark on the embedded SmolLM2-135M-Instruct: every LLM method, forget01/05/10, a learning-rate grid,
seeds, one command (or several of at most ``--deadline_s`` seconds each).

    python benchmarks/tofu.py --data_dir data/tofu --work_dir /root/bench --plan          # what would run
    python benchmarks/tofu.py --data_dir data/tofu --work_dir /root/bench --splits forget10 \\
        --unlearn_lrs 1e-5,2e-5,5e-5,1e-4 --deadline_s 540                                        # repeat until done
    python benchmarks/tofu.py ... --methods rklu,npo:rt --unlearn_lrs 2e-5 --seeds 0,1,2             # chosen lr, seeds

1. fine-tunes the model on TOFU ``full`` (the "original") and on ``retain90/95/99`` (the oracles) with
   recipes/finetune_tofu.py, each evaluated and stored (the oracles' evaluations are the forget-quality references);
2. unlearns every forget split with every method of ``--methods`` (default: every LLM method of
   ``rklu_llm.config.METHODS`` without retain data, and RKL-U, GD, NPO with the retain NLL term; a method added to
   METHODS is in the default list), at every learning rate of ``--unlearn_lrs`` (the same grid for every method) and
   every seed of ``--seeds``; the augmented model of a (split, seed) is built once and shared by rklu / fklu / ta
   (its time is counted in each);
3. follows every run's forget quality after each of the ``--unlearn_epochs`` epochs (10 by default; forget-set
   likelihoods only, a fraction of a full evaluation) and fully evaluates the final epoch and the epoch of peak forget
   quality (whose weights are kept in memory); ``--every_epoch`` splits get a full evaluation after every epoch
   instead (per-epoch utility curves), ``--track_peak none`` leaves only the final one;
4. writes ``tofu_smollm2.json``, ``tofu_smollm2.md`` (one row per split, method, retain mode and learning rate: mean
   and standard deviation over the seeds), ``tofu_smollm2_fq_vs_mu.png`` (forget quality, log scale, against model
   utility, one panel per split, like the RKL-U paper's Figure 3) and ``tofu_smollm2_epochs.png`` (forget quality and
   model utility per epoch) into ``--results_dir``. Tables and plots hold every run finished in ``--work_dir``, by
   this command or an earlier one.

``--protocol tofu`` scores TOFU's own item counts (the first 300 items of every set: forget10 and retain 300 of
400) instead of every item; it is named in every table (the KS p-value of forget quality depends on the item count).

``--plan`` prints the runs (finished ones marked) with their estimated minutes and stops. The estimate uses the
costs measured in ``--work_dir`` (seconds per training item-epoch of each method, per augmentation item-epoch, per
fine-tuning item-epoch, per full and per forget-quality evaluation) and, for what was not measured there yet, the
committed H100 numbers in ``benchmarks/results/tofu_smollm2.json``; it says which.

Resumable: finished fine-tunes and runs (under ``--work_dir``) are not redone. ``--deadline_s`` starts no new work
after that many seconds, nor a piece whose estimate would end past it (the first piece of a command always starts),
so one command fits a time limit; run it again to continue. A work directory belongs to one set of settings (model,
epochs, protocol, ...): a later command with other values is refused before any work.

CPU mini-run (NOT the benchmark: tiny data, for checking the pipeline): ``--cpu --lora --augment_lora --splits
forget01 --retain_subset 200 --eval_max_items 20`` fine-tunes the original on forget01 + the first 200 retain99 items
and the oracle on those 200 items (a derived TOFU folder under ``--work_dir/data``).
"""

from __future__ import annotations

import argparse
import functools
import gc
import json
import math
import resource
import shutil
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from a checkout without installing

from rklu_llm import METHODS, UnlearnConfig, UnlearnTrainer, build_unlearning_dataset, load_model, load_refusals  # noqa: E402
from rklu_llm.config import RETAIN_MODES  # noqa: E402
from rklu_llm.data import (  # noqa: E402
    FORGET_OF_RETAIN,
    HOLDOUT_OF_FORGET,
    RETAIN_OF_FORGET,
    DataUnavailableError,
    load_tofu,
    tokenize_qa,
)
from rklu_llm.eval.audit import audit_summary_row, check_audit, evaluate_audit, resolve_parts  # noqa: E402
from rklu_llm.eval.callback import TofuEvalCallback  # noqa: E402
from rklu_llm.eval.tofu import PROTOCOLS, UTILITY_SETS, compare_to_reference, load_tofu_eval, summary_row  # noqa: E402
from rklu_llm.io import waiting_lock, write_json_atomic  # noqa: E402
from rklu_llm.paths import portable_path  # noqa: E402
from rklu_llm.teacher import build_augmented_model, is_augmented_dir  # noqa: E402

SPLITS = ("forget10", "forget05", "forget01")
#: ``--augment_lr unlearn``: the augmentation runs at each run's unlearning lr
AUGMENT_AT_UNLEARN_LR = "unlearn"
WITH_RETAIN = [("rklu", "rt"), ("gd", "rt"), ("npo", "rt")]
NAME = "tofu_smollm2"
COMMITTED = REPO / "benchmarks" / "results" / f"{NAME}.json"
#: settings every command on one work directory must share (they change what a finished run means)
#: TOFU's retain evaluation set (questions of the retain split, with perturbed answers): model utility's retain part
RETAIN_EVAL_SET = UTILITY_SETS[0]

FIXED = (
    "model",
    "utility_retain_items",
    "holdout_rule",
    "holdout_min_p",
    "finetune_lr",
    "finetune_epochs",
    "unlearn_epochs",
    "augment_epochs",
    "augment_lr",
    "teacher_alpha",
    "batch_size",
    "finetune_batch_size",
    "max_new_tokens",
    "eval_max_items",
    "train_max_items",
    "max_steps",
    "protocol",
    "retain_subset",
    "cpu",
    "lora",
    "augment_lora",
)


def llm_methods() -> list[str]:
    """The methods of METHODS that unlearn language models (a row whose ``batch`` is "classifier" does not)."""
    return [m for m, spec in METHODS.items() if getattr(spec, "batch", "lm") != "classifier"]


def default_plan() -> list[tuple[str, str]]:
    return [(m, "none") for m in llm_methods()] + [p for p in WITH_RETAIN if p[0] in METHODS]


def parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data_dir", required=True, help="local TOFU folder")
    p.add_argument("--work_dir", required=True, help="models and per-run results (resumable state)")
    p.add_argument(
        "--results_dir",
        default=None,
        help="where the tables and plots go (default: benchmarks/results; <work_dir>/results for --cpu "
        "runs, so that a CPU run never overwrites the committed GPU results)",
    )
    p.add_argument("--model", default="embedded:smollm2-135m-instruct")
    p.add_argument(
        "--splits", "--forget_split", dest="splits", default=",".join(SPLITS), help="comma-separated forget splits"
    )
    p.add_argument(
        "--methods",
        default=None,
        help="comma-separated method[:retain_mode] (default: every LLM method of METHODS without retain "
        f"data, plus {', '.join(f'{m}:{r}' for m, r in WITH_RETAIN)}); 'all' = that default",
    )
    p.add_argument("--unlearn_lrs", default="1e-5", help="comma-separated learning rates, the same for every method")
    p.add_argument("--seeds", default="0", help="comma-separated seeds of the unlearning runs (and augmentations)")
    p.add_argument(
        "--protocol",
        default="all",
        choices=sorted(PROTOCOLS),
        help="TOFU items scored: all, or tofu (the original scripts' first 300 items per set)",
    )
    p.add_argument("--plan", action="store_true", help="print the runs and their estimated minutes, start nothing")
    p.add_argument(
        "--audit",
        default="none",
        help="audit parts (rklu_llm.eval.audit: membership, extraction, leak; 'none') of every final model, the "
        "original and the oracle (the privleak reference), as a second table",
    )
    p.add_argument("--every_epoch", default="none", help="splits fully evaluated after every epoch")
    p.add_argument(
        "--track_peak",
        default="all",
        help="splits (or all / none) whose forget quality is followed every epoch, with full evaluations "
        "of the peak and the final epoch; the other splits are evaluated after the last epoch only",
    )
    p.add_argument(
        "--holdout_rule",
        action="store_true",
        help="also choose each run's epoch without the oracle (rklu_llm.eval.stopping: the first epoch whose forget "
        "and holdout answer NLLs are indistinguishable, KS p >= --holdout_min_p), fully evaluate it and report it "
        "next to the oracle's peak",
    )
    p.add_argument("--holdout_min_p", type=float, default=0.05, help="the holdout rule's threshold")
    p.add_argument(
        "--holdout_floor",
        type=float,
        default=None,
        help="the holdout rule's model-utility floor (in [0, 1]): it keeps only epochs at or above it; needs the "
        "utility of every epoch, so it applies to the --every_epoch splits (the others' rule has no floor)",
    )
    p.add_argument("--finetune_lr", type=float, default=2e-4)
    p.add_argument("--finetune_epochs", type=float, default=5)
    p.add_argument("--unlearn_epochs", type=float, default=10)
    p.add_argument("--augment_epochs", type=float, default=10)
    p.add_argument(
        "--augment_lr",
        default=None,
        help="augmentation lr (default: --finetune_lr); 'unlearn' = each run's unlearning lr (the RKL-U paper's "
        "protocol: one augmented model per split, seed and lr)",
    )
    p.add_argument("--teacher_alpha", type=float, default=8.0)
    p.add_argument("--batch_size", type=int, default=32, help="unlearning (and augmentation) batch size")
    p.add_argument(
        "--finetune_batch_size", type=int, default=None, help="fine-tuning batch size (default: --batch_size)"
    )
    p.add_argument("--eval_batch_size", type=int, default=128)
    p.add_argument("--generation_batch_size", type=int, default=1024)
    p.add_argument("--max_new_tokens", type=int, default=200)
    p.add_argument("--eval_max_items", type=int, default=None, help="smoke tests only")
    p.add_argument("--train_max_items", type=int, default=None, help="smoke tests only (fine-tunes)")
    p.add_argument(
        "--retain_subset",
        type=int,
        default=None,
        help="CPU mini-run (not the benchmark): the original learns the forget split + the first N items "
        "of its retain set, the oracle those N items; needs exactly one split",
    )
    p.add_argument(
        "--utility_retain_items",
        type=int,
        default=None,
        help="with --retain_subset: model utility's retain part scores only the first N items of TOFU's retain "
        "evaluation set that the original learned (a fixed subset; the other utility sets stay whole)",
    )
    p.add_argument("--max_steps", type=int, default=-1, help="smoke tests only")
    p.add_argument("--deadline_s", type=float, default=math.inf, help="start no new work after this many seconds")
    p.add_argument("--cpu", action="store_true", help="no GPU: fp32, use_cpu")
    p.add_argument("--lora", action="store_true", help="LoRA fine-tunes (merged) and LoRA students (e.g. on a CPU)")
    p.add_argument("--augment_lora", action="store_true", help="the augmented model as a LoRA adapter on the original")
    p.add_argument(
        "--cache_frozen_answers",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="keep the frozen models' answer logits of every forget item in memory after the first epoch "
        "(UnlearnConfig.cache_frozen_answers: one process only; a speed option, not part of the protocol)",
    )
    args = p.parse_args(argv)
    args.splits = [s for s in args.splits.split(",") if s]
    args.plan_runs = parse_methods(args.methods)
    try:
        args.lrs = [float(v) for v in args.unlearn_lrs.split(",") if v]
        args.seed_list = [int(v) for v in args.seeds.split(",") if v]
    except ValueError as exc:
        raise SystemExit(f"--unlearn_lrs takes numbers and --seeds integers, comma-separated: {exc}") from exc
    problems = []
    if args.augment_lr not in (None, AUGMENT_AT_UNLEARN_LR):
        try:
            args.augment_lr = float(args.augment_lr)
        except ValueError:
            args.augment_lr = -1.0
        if not args.augment_lr > 0:
            problems.append(f"--augment_lr takes a positive number or '{AUGMENT_AT_UNLEARN_LR}'")
    if args.finetune_batch_size is None:
        args.finetune_batch_size = args.batch_size
    elif args.finetune_batch_size < 1:
        problems.append("--finetune_batch_size needs a positive integer")
    if not args.splits or any(s not in SPLITS for s in args.splits):
        problems.append(f"--splits {','.join(args.splits)}: choose among {', '.join(SPLITS)}")
    if not args.lrs or any(not lr > 0 for lr in args.lrs):
        problems.append("--unlearn_lrs needs positive learning rates")
    if not args.seed_list:
        problems.append("--seeds needs at least one seed")
    if args.retain_subset is not None and (args.retain_subset < 1 or len(args.splits) != 1):
        problems.append("--retain_subset N needs N >= 1 and exactly one split (--splits forget01)")
    if args.utility_retain_items is not None and (args.retain_subset is None or args.utility_retain_items < 1):
        problems.append("--utility_retain_items N needs N >= 1 and --retain_subset (the items the original learned)")
    if args.holdout_floor is not None and not (args.holdout_rule and 0 <= args.holdout_floor <= 1):
        problems.append("--holdout_floor needs --holdout_rule and a utility in [0, 1]")
    if not args.cpu and not args.plan and not torch.cuda.is_available():
        problems.append("no GPU is visible: pass --cpu (e.g. for the mini-run) or run on a GPU machine")
    if problems:
        raise SystemExit("benchmarks/tofu.py: " + "; ".join(problems))
    if args.results_dir is None:
        args.results_dir = str(Path(args.work_dir) / "results" if args.cpu else REPO / "benchmarks" / "results")
    return args


def parse_methods(text: str | None) -> list[tuple[str, str]]:
    """``method[:retain_mode]`` items; only language-model methods of METHODS; 'all' or nothing = the default."""
    if not text or text == "all":
        return default_plan()
    plan = []
    for item in text.split(","):
        method, _, retain = item.partition(":")
        retain = retain or "none"
        if method not in llm_methods():
            raise SystemExit(
                f"--methods: {method!r} is not a language-model method of METHODS; choose among "
                f"{', '.join(llm_methods())}"
            )
        if retain not in RETAIN_MODES:
            raise SystemExit(f"--methods: retain mode {retain!r} of {method} is not one of {RETAIN_MODES}")
        if (method, retain) not in plan:
            plan.append((method, retain))
    return plan


def run_name(split: str, method: str, retain_mode: str, lr: float, seed: int) -> str:
    return f"{split}_{method}" + ("" if retain_mode == "none" else f"_{retain_mode}") + f"_lr{lr:g}_s{seed}"


def check_work_dir(args) -> None:
    """Record the work directory's settings on the first command; refuse a later one that differs."""
    path = Path(args.work_dir) / "settings.json"
    settings = {k: getattr(args, k) for k in FIXED}
    if path.is_file():
        stored = json.loads(path.read_text())
        changed = {k: (stored.get(k), v) for k, v in settings.items() if stored.get(k) != v}
        if changed:
            raise SystemExit(
                f"--work_dir {args.work_dir} holds runs made with other settings "
                f"({', '.join(f'{k}: {a!r} there, {b!r} now' for k, (a, b) in changed.items())}): use "
                "the same settings or another --work_dir."
            )
    elif not args.plan:
        write_json_atomic(path, settings)


def mini_data(args) -> str:
    """``--retain_subset N``: a TOFU folder where ``full`` = the first N retain items + the forget split and the
    retain split = those N items; the evaluation sets are copies. Returns the folder to use as ``--data_dir``."""
    if args.retain_subset is None:
        return args.data_dir
    split = args.splits[0]
    retain = RETAIN_OF_FORGET[split]
    utility = "" if args.utility_retain_items is None else f"-utility{args.utility_retain_items}"
    out = Path(args.work_dir) / f"data-{split}-retain{args.retain_subset}{utility}"  # named by what it holds
    holdout = HOLDOUT_OF_FORGET[split]  # the audit's non-members (copied when the source has them)
    copies = [split, f"{split}_perturbed", *UTILITY_SETS]
    if any((Path(args.data_dir) / f"{holdout}{ext}").is_file() for ext in (".jsonl", ".json")):
        copies.append(holdout)
    if all((out / f"{name}.jsonl").is_file() for name in ["full", retain, *copies]):
        return str(out)  # named by its split and subset: never another setting's folder
    tmp = out.with_name(f".{out.name}-partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    subset = load_tofu(retain, args.data_dir).select(range(args.retain_subset))
    forget = load_tofu(split, args.data_dir)
    from datasets import concatenate_datasets

    subset.to_json(tmp / f"{retain}.jsonl", lines=True)
    concatenate_datasets([subset, forget]).to_json(tmp / "full.jsonl", lines=True)
    for name in copies:
        rows = load_tofu(name, args.data_dir)
        if name == RETAIN_EVAL_SET and args.utility_retain_items is not None:
            learned = set(subset["question"])
            keep = [i for i, q in enumerate(rows["question"]) if q in learned][: args.utility_retain_items]
            if len(keep) < args.utility_retain_items:
                shutil.rmtree(tmp, ignore_errors=True)
                raise SystemExit(
                    f"--utility_retain_items {args.utility_retain_items}: only {len(keep)} items of {name} are among "
                    f"the {args.retain_subset} retain items the original learns; raise --retain_subset or lower it"
                )
            rows = rows.select(keep)
        rows.to_json(tmp / f"{name}.jsonl", lines=True)
    shutil.rmtree(out, ignore_errors=True)  # an older, incomplete copy
    tmp.rename(out)
    return str(out)


# --------------------------------------------------------------------------------------------------------------------
# The work
# --------------------------------------------------------------------------------------------------------------------


def finetune(args, split: str) -> Path:
    """recipes/finetune_tofu.py on ``split``; returns the model directory (with tofu_eval.json, train_metrics.json)."""
    from rklu_llm.scripts import finetune as finetune_tofu

    out = Path(args.work_dir) / "models" / split
    if (out / "tofu_eval.json").is_file():
        return out
    argv = [
        "--model",
        args.model,
        "--split",
        split,
        "--data_dir",
        args.data,
        "--output_dir",
        str(out),
        "--learning_rate",
        str(args.finetune_lr),
        "--num_train_epochs",
        str(args.finetune_epochs),
        "--per_device_train_batch_size",
        str(args.finetune_batch_size),
        "--save_strategy",
        "no",
        "--report_to",
        "none",
        "--disable_tqdm",
        "true",
        "--logging_steps",
        "25",
        "--eval_batch_size",
        str(args.eval_batch_size),
        "--eval_generation_batch_size",
        str(args.generation_batch_size),
        "--max_new_tokens",
        str(args.max_new_tokens),
        "--max_steps",
        str(args.max_steps),
        "--eval_protocol",
        args.protocol,
    ]
    if split == "full":  # evaluated on the benchmark's forget splits (an oracle: on its own one)
        argv += ["--eval_forget_splits", ",".join(args.splits)]
    argv += ["--use_cpu"] if args.cpu else ["--bf16", "--tf32", "true"]
    if args.train_max_items:
        argv += ["--max_train_items", str(args.train_max_items)]
    if args.lora:
        argv += ["--use_lora", "true"]
    if args.eval_max_items:
        argv += ["--eval_max_items", str(args.eval_max_items)]
    finetune_tofu.main(argv)
    return out


def unlearning_config(
    args, output_dir: Path, method: str, retain_mode: str, augmented: Path | None, lr: float, seed: int
) -> UnlearnConfig:
    return UnlearnConfig(
        output_dir=str(output_dir),
        method=method,
        retain_mode=retain_mode,
        teacher_alpha=args.teacher_alpha,
        augmented_model_path=None if augmented is None else str(augmented),
        augment_epochs=args.augment_epochs,
        augment_learning_rate=augment_lr(args, lr),
        learning_rate=lr,
        num_train_epochs=args.unlearn_epochs,
        max_steps=args.max_steps,
        augment_max_steps=args.max_steps,
        per_device_train_batch_size=args.batch_size,
        bf16=not args.cpu,
        tf32=None if args.cpu else True,
        use_cpu=args.cpu,
        save_strategy="no",
        report_to="none",
        logging_steps=5,
        disable_tqdm=True,
        seed=seed,
        use_lora=args.lora and METHODS[method].trains,
        augment_lora=args.augment_lora,
        cache_frozen_answers=args.cache_frozen_answers,
    )


def augment_lr(args, lr: float) -> float:
    """The augmentation's learning rate for a run at unlearning lr ``lr``."""
    if args.augment_lr == AUGMENT_AT_UNLEARN_LR:
        return lr
    return args.augment_lr or args.finetune_lr


def augmented_name(args, split: str, seed: int, lr: float) -> str:
    """One augmented model per (split, seed), or per (split, seed, lr) when it is trained at the unlearning lr."""
    return f"{split}_s{seed}" + (f"_lr{lr:g}" if args.augment_lr == AUGMENT_AT_UNLEARN_LR else "")


def augmented_model(args, split: str, seed: int, lr: float, original, tokenizer) -> tuple[Path, float]:
    """The run's augmented model (built once per :func:`augmented_name`, fine-tuned on the forget set) and the
    seconds it took."""
    out = Path(args.work_dir) / "augmented" / augmented_name(args, split, seed, lr)
    timing = out.with_name(f"{out.name}.json")
    with waiting_lock(out):  # another driver on this work dir may be building it (tofu_protocol.py --methods)
        if timing.is_file() and is_augmented_dir(out):
            return out, json.loads(timing.read_text())["seconds"]
        forget = tokenize_qa(load_tofu(split, args.data), tokenizer, 512)
        config = unlearning_config(args, out.parent / f".{out.name}-config", "rklu", "none", None, lr, seed)
        start = time.perf_counter()
        build_augmented_model(original, tokenizer, forget, config, out)
        seconds = time.perf_counter() - start
        write_json_atomic(
            timing,
            {
                "seconds": seconds,
                "forget_items": len(forget),
                "epochs": args.augment_epochs,
                "lr": augment_lr(args, lr),
            },
        )
    return out, seconds


def evaluation_mode(args, split: str, method: str) -> str:
    if METHODS[method].trains and split in args.every_epoch.split(","):
        return "every_epoch"
    if METHODS[method].trains and (args.track_peak == "all" or split in args.track_peak.split(",")):
        return "track_peak"
    return "final"


def evaluation_callback(args, tokenizer, split: str, reference, evaluation: str, eval_kwargs: dict):
    """The run's ``TofuEvalCallback`` for its ``evaluation_mode``: forget quality every epoch (``track_peak``) or a
    full evaluation (``every_epoch``; ``final``: called once after training); with ``--holdout_rule`` it also keeps the
    oracle-free rule's epoch, at ``--holdout_floor`` where the utility of every epoch is known."""
    return TofuEvalCallback(
        tokenizer,
        split,
        args.data,
        reference,
        per_epoch="forget_quality" if evaluation == "track_peak" else "full",
        select_by="holdout" if args.holdout_rule and evaluation != "final" else "forget_quality",
        holdout_min_p=args.holdout_min_p,
        min_model_utility=args.holdout_floor if evaluation == "every_epoch" else None,
        track_first_peak=True,
        **eval_kwargs,
    )


#: audit parts the benchmark runs on each model (the relearning attack and quantization are separate studies)
AUDIT_PARTS = ("membership", "extraction", "leak")


def audit(args, model, tokenizer, split: str, name: str, reference: Path | None) -> dict | None:
    """``--audit`` of one model on ``split`` (written to ``<work_dir>/audits/<name>/audit_eval.json``, resumable);
    returns its :func:`~rklu_llm.eval.audit.audit_summary_row`, or ``None`` without ``--audit``."""
    if args.audit == "none":
        return None
    result = evaluate_audit(
        model,
        tokenizer,
        split,
        args.audit,
        data_dir=args.data,
        output_dir=Path(args.work_dir) / "audits" / name,
        membership_reference=reference if reference is not None and reference.is_file() else None,
        batch_size=args.eval_batch_size,
        generation_batch_size=args.generation_batch_size,
        max_new_tokens=args.max_new_tokens,
        max_items=args.eval_max_items,
    )
    return audit_summary_row(result)


def reference_audits(args, split: str) -> Path | None:
    """Audit the original and the split's oracle once (the oracle's AUCs are every run's privleak reference);
    returns the oracle's ``audit_eval.json``."""
    if args.audit == "none":
        return None
    work = Path(args.work_dir)
    oracle_name = f"{split}_oracle_{RETAIN_OF_FORGET[split]}"  # the names of reference_rows
    oracle = work / "audits" / oracle_name / "audit_eval.json"
    for model_split, name in ((RETAIN_OF_FORGET[split], oracle_name), ("full", f"{split}_original")):
        if (work / "audits" / name / "audit_eval.json").is_file():
            continue
        model, tokenizer = load_model(str(work / "models" / model_split))
        if not args.cpu:
            model.to("cuda")
        audit(args, model, tokenizer, split, name, oracle if model_split == "full" else None)
        del model
        gc.collect()
    return oracle


def peak_rss_gib() -> float:
    """This process's resident-memory high-water mark so far (Linux ``ru_maxrss``, KiB), in GiB: with the value at a
    run's start, it says whether the run raised the peak of a driver that runs one run after another."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def unlearn(args, split: str, method: str, retain_mode: str, lr: float, seed: int) -> dict:
    name = run_name(split, method, retain_mode, lr, seed)
    record = Path(args.work_dir) / "runs" / f"{name}.json"
    if record.is_file():
        return json.loads(record.read_text())
    work = Path(args.work_dir)
    rss_at_start = peak_rss_gib()
    reference = work / "models" / RETAIN_OF_FORGET[split] / "tofu_eval.json"
    audit_reference = reference_audits(args, split)
    model, tokenizer = load_model(str(work / "models" / "full"))
    if not args.cpu:
        model.to("cuda")
    spec = METHODS[method]
    augmented, augment_seconds = (None, 0.0)
    if spec.needs_augmented:
        augmented, augment_seconds = augmented_model(args, split, seed, lr, model, tokenizer)
    forget = load_tofu(split, args.data)
    retain = load_tofu(RETAIN_OF_FORGET[split], args.data) if retain_mode != "none" else None
    refusals = load_refusals() if spec.needs_refusals else None
    dataset = build_unlearning_dataset(tokenizer, forget, retain, refusals, max_length=512, seed=seed)
    eval_kwargs = dict(
        batch_size=args.eval_batch_size,
        generation_batch_size=args.generation_batch_size,
        max_new_tokens=args.max_new_tokens,
        max_items=args.eval_max_items,
        protocol=args.protocol,
    )
    evaluation = evaluation_mode(args, split, method)
    callback = evaluation_callback(args, tokenizer, split, reference, evaluation, eval_kwargs)
    config = unlearning_config(args, work / "runs" / name, method, retain_mode, augmented, lr, seed)
    trainer = UnlearnTrainer(
        model=model,
        args=config,
        train_dataset=dataset,
        processing_class=tokenizer,
        callbacks=None if evaluation == "final" else [callback],
    )
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    trainer.train()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    train_seconds = time.perf_counter() - start - callback.eval_seconds
    peaks = [h["train_peak_memory_bytes"] for h in callback.history if h["train_peak_memory_bytes"]]
    if torch.cuda.is_available() and evaluation == "final":  # else the per-epoch rows hold the training peaks
        peaks.append(torch.cuda.max_memory_allocated())
    if evaluation == "final":  # one evaluation, after the last epoch
        callback.on_epoch_end(config, trainer.state, trainer.control, model=trainer.model)
        callback.on_train_end(config, trainer.state, trainer.control, model=trainer.model)
    if evaluation == "track_peak":  # per epoch forget quality only; full evaluations of the final and the peak epoch
        full_rows = [callback.final] + ([callback.peak] if callback.peak is not callback.final else [])
        if callback.selected is not None and callback.selected_epoch not in {r["epoch"] for r in full_rows if r}:
            full_rows.append(callback.selected)  # the holdout rule's epoch, evaluated on its own
        if callback.first_peak is not None and callback.first_peak_epoch not in {r["epoch"] for r in full_rows if r}:
            full_rows.append(callback.first_peak)
        fq_rows = callback.history
    else:
        full_rows, fq_rows = callback.history, []
    result = {
        "name": name,
        "split": split,
        "method": method,
        "retain_mode": retain_mode,
        "lr": lr,
        "seed": seed,
        "protocol": args.protocol,
        "forget_items": len(forget),
        "epochs_trained": trainer.state.epoch,
        "steps": trainer.state.global_step,
        "train_seconds": train_seconds,
        "augment_seconds": augment_seconds,
        "wall_seconds": train_seconds + augment_seconds,
        "cache_frozen_answers": args.cache_frozen_answers,
        "peak_memory_gib": max(peaks) / 2**30 if peaks else None,
        # the process's resident-memory high-water mark before and after this run (the audit below not included)
        "process_peak_rss_gib": {"at_start": rss_at_start, "after_evaluation": peak_rss_gib()},
        "eval_seconds": callback.eval_seconds,
        "evaluation": evaluation,
        "full_eval_seconds": [r["eval_seconds"] for r in full_rows if r is not None],
        "fq_eval_seconds": [r["eval_seconds"] for r in fq_rows],
        "final": callback.final,
        "peak": callback.peak if evaluation != "final" else None,
        "selected": callback.selected,  # the holdout rule's epoch (--holdout_rule), fully evaluated
        "selected_epoch": callback.selected_epoch,
        "first_peak": callback.first_peak if evaluation != "final" else None,  # the RKL-U paper's selection
        "first_peak_epoch": callback.first_peak_epoch,
        "teacher_check": trainer.teacher_check,
        "epochs": callback.history,
        "audit": audit(args, trainer.model, tokenizer, split, name, audit_reference),  # the final weights
    }
    write_json_atomic(record, result)
    del trainer, model
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return result


# --------------------------------------------------------------------------------------------------------------------
# The plan and its cost
# --------------------------------------------------------------------------------------------------------------------


@functools.cache
def n_items(config: str, data_dir: str) -> int:
    """Rows of a TOFU config (read once)."""
    return len(load_tofu(config, data_dir))


def _records(path: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(path.glob("*.json"))] if path.is_dir() else []


def eval_items(args, items: int) -> int:
    """Items of a set evaluated under ``--protocol`` and ``--eval_max_items``."""
    return min(items, args.eval_max_items or items, PROTOCOLS[args.protocol] or items)


def measured_costs(args) -> tuple[dict, list[str]]:
    """Seconds per unit of work, with where each came from.

    ``train:<method>:<retain mode>`` and ``augment``: per forget item and epoch; ``finetune``: per training item and
    epoch; ``full_eval``: per full evaluation; ``fq_eval``: per evaluated forget item of a forget-quality-only
    evaluation. Medians over the finished runs of ``--work_dir`` (same device and settings) where it has them, else
    over the committed H100 run (``benchmarks/results/tofu_smollm2.json``).
    """
    work = Path(args.work_dir)
    samples: dict[str, dict[str, list[float]]] = {"work_dir": {}, "H100": {}}

    def add(source, key, value):
        if value is not None and value > 0:
            samples[source].setdefault(key, []).append(value)

    def add_runs(source, runs, items_of, epochs_default):
        for run in runs:
            items = run.get("forget_items") or items_of(run["split"])
            epochs = run.get("epochs_trained") or epochs_default
            if METHODS.get(run["method"]) is not None and METHODS[run["method"]].trains:
                add(source, f"train:{run['method']}:{run['retain_mode']}", run["train_seconds"] / (items * epochs))
            full = run.get("full_eval_seconds")
            for seconds in full if full is not None else [(run["final"] or {}).get("eval_seconds")]:
                add(source, "full_eval", seconds)
            for seconds in run.get("fq_eval_seconds", []):
                add(source, "fq_eval", seconds / eval_items(args, items))

    add_runs("work_dir", _records(work / "runs"), lambda split: n_items(split, args.data), args.unlearn_epochs)
    for timing in sorted((work / "augmented").glob("*.json")) if (work / "augmented").is_dir() else []:
        t = json.loads(timing.read_text())
        add("work_dir", "augment", t["seconds"] / (t["forget_items"] * t["epochs"]))
    for metrics in sorted((work / "models").glob("*/train_metrics.json")) if (work / "models").is_dir() else []:
        m = json.loads(metrics.read_text())
        add("work_dir", "finetune", m["train_runtime"] / (m["train_items"] * args.finetune_epochs))
    if COMMITTED.is_file():
        committed = json.loads(COMMITTED.read_text())
        settings = committed["settings"]
        counts = {s: n_items(s, args.data_dir) for s in SPLITS}
        add_runs("H100", committed["runs"], counts.get, settings["unlearn_epochs"])
        for run in committed["runs"]:
            if run["augment_seconds"] and METHODS.get(run["method"]) and METHODS[run["method"]].needs_augmented:
                add("H100", "augment", run["augment_seconds"] / (counts[run["split"]] * settings["augment_epochs"]))
        for name, seconds in committed["finetune_train_seconds"].items():
            split = "full" if name.endswith("_original") else name.rsplit("_", 1)[-1]
            add("H100", "finetune", seconds / (n_items(split, args.data_dir) * settings["finetune_epochs"]))
    costs, sources = {}, []
    for source in ("work_dir", "H100"):
        for key, values in sorted(samples[source].items()):
            if key not in costs:
                costs[key] = statistics.median(values)
                sources.append(f"{key}: {source}")
    return costs, sources


def estimate(args, costs: dict, item: tuple, forget_items: int, augment: bool) -> float | None:
    """Estimated seconds of one piece of work (``None`` when a cost is unknown); ``augment``: it builds the
    augmented model of its (split, seed)."""
    kind, split, method, retain_mode, _, _ = item
    full_eval = costs.get("full_eval")
    if full_eval is None:
        return None
    if kind == "finetune":
        items = n_items(split, args.data)
        items = min(items, args.train_max_items or items)
        return costs["finetune"] * items * args.finetune_epochs + full_eval if "finetune" in costs else None
    n_eval = eval_items(args, forget_items)
    if "fq_eval" in costs:
        fq_eval = costs["fq_eval"] * n_eval
    else:  # not measured yet: a full evaluation's share of answer pairs (7 per forget / retain item, 4 per factual)
        factual = eval_items(args, 100) + eval_items(args, 117)
        fq_eval = full_eval * 7 * n_eval / (7 * n_eval + 7 * eval_items(args, 400) + 4 * factual)
    spec = METHODS[method]
    seconds = 0.0
    if spec.trains:
        train = costs.get(f"train:{method}:{retain_mode}")
        if train is None:  # a method not measured yet: the median of the measured ones
            others = [v for k, v in costs.items() if k.startswith("train:")]
            train = statistics.median(others) if others else None
        if train is None:
            return None
        seconds += train * forget_items * args.unlearn_epochs
    if augment:
        seconds += costs.get("augment", 0.0) * forget_items * args.augment_epochs
    epochs = math.ceil(args.unlearn_epochs)
    # a tracked run fully evaluates its last, best and first-peak epochs, and the rule's epoch when the rule is on:
    # distinct epochs only, so this many at most (the estimate takes the most)
    tracked = min(epochs, 4 if args.holdout_rule else 3)
    return (
        seconds
        + {
            "every_epoch": epochs * full_eval,
            "track_peak": epochs * fq_eval + tracked * full_eval,
            "final": full_eval,
        }[evaluation_mode(args, split, method)]
    )


def todo_list(args) -> list[tuple]:
    """``(kind, split, method, retain mode, lr, seed)`` of every piece of work, in order."""
    todo = [("finetune", "full", None, None, None, None)]
    for split in args.splits:
        todo.append(("finetune", RETAIN_OF_FORGET[split], None, None, None, None))
        todo += [
            ("unlearn", split, m, r, lr, seed) for lr in args.lrs for seed in args.seed_list for m, r in args.plan_runs
        ]
    return todo


def is_done(args, item: tuple) -> bool:
    kind, split, method, retain_mode, lr, seed = item
    if kind == "finetune":
        return (Path(args.work_dir) / "models" / split / "tofu_eval.json").is_file()
    return (Path(args.work_dir) / "runs" / f"{run_name(split, method, retain_mode, lr, seed)}.json").is_file()


def plan_estimates(args, todo: list[tuple]) -> tuple[list[float | None], list[str]]:
    """Estimated seconds of every piece (0 when finished) and the sources of the costs."""
    costs, sources = measured_costs(args)
    augmented = Path(args.work_dir) / "augmented"
    built = {p.stem for p in augmented.glob("*.json")} if augmented.is_dir() else set()
    counts = {s: n_items(s, args.data) for s in args.splits}
    out = []
    for item in todo:
        kind, split, method, _, lr, seed = item
        if is_done(args, item):
            out.append(0.0)
            continue
        augment = kind == "unlearn" and METHODS[method].needs_augmented
        if augment:
            key = augmented_name(args, split, seed, lr)
            augment = key not in built
            built.add(key)
        out.append(estimate(args, costs, item, counts.get(split, 0), augment))
    return out, sources


def print_plan(args, todo: list[tuple], seconds: list[float | None], sources: list[str]) -> None:
    device = "GPU" if not args.cpu else "CPU"
    print(
        f"Plan: {len(todo)} pieces, {sum(is_done(args, t) for t in todo)} finished (protocol {args.protocol}, "
        f"{args.unlearn_epochs:g} unlearning epochs)."
    )
    for item, s in zip(todo, seconds):
        kind, split, method, retain_mode, lr, seed = item
        label = f"finetune {split}" if kind == "finetune" else run_name(split, method, retain_mode, lr, seed)
        status = "done" if is_done(args, item) else ("? min" if s is None else f"{s / 60:.1f} min")
        print(f"  {label:<45} {status}")
    known = [s for s in seconds if s is not None]
    unknown = sum(s is None for s in seconds)
    print(
        f"Estimated {device} minutes left: {sum(known) / 60:.1f}"
        + (f" (+ {unknown} pieces without an estimate)" if unknown else "")
    )
    print(
        "Costs from: " + ("; ".join(sources) if sources else "nothing measured yet") + " (work_dir = measured in "
        f"{portable_path(args.work_dir)}; H100 = the committed {COMMITTED.name}, 5 epochs, all items, evaluation "
        "before the faster evaluator)."
    )


# --------------------------------------------------------------------------------------------------------------------
# Tables and plots
# --------------------------------------------------------------------------------------------------------------------


def reference_rows(args) -> list[dict]:
    rows = []
    work = Path(args.work_dir) / "models"
    for split in ("full", "retain90", "retain95", "retain99"):
        path = work / split / "tofu_eval.json"
        if not path.is_file():
            continue
        result = load_tofu_eval(path)
        metrics = json.loads((work / split / "train_metrics.json").read_text())
        for forget_split in result["forget"]:
            other_oracle = split != "full" and FORGET_OF_RETAIN[split] != forget_split
            if other_oracle:
                continue
            row = summary_row(result)
            row.update(
                name=f"{forget_split}_{'original' if split == 'full' else 'oracle_' + split}",
                split=forget_split,
                method="original" if split == "full" else f"oracle ({split})",
                retain_mode="",
                wall_seconds=metrics.get("train_runtime"),
            )
            if split == "full":  # forget quality of the original against the split's oracle
                oracle = work / RETAIN_OF_FORGET[forget_split] / "tofu_eval.json"
                if oracle.is_file():
                    items = result["sets"][f"{forget_split}_perturbed"]["items"]
                    fq = compare_to_reference(
                        items["truth_ratio"], items["question"], load_tofu_eval(oracle), forget_split
                    )
                    row[f"{forget_split}_forget_quality"] = fq["forget_quality"]
            audited = Path(args.work_dir) / "audits" / row["name"] / "audit_eval.json"
            row["audit"] = audit_summary_row(json.loads(audited.read_text())) if audited.is_file() else None
            rows.append(row)
    return rows


def aggregate(runs: list[dict]) -> list[dict]:
    """One entry per (split, method, retain mode, lr): the runs of its seeds and their mean / standard deviation."""
    groups: dict[tuple, list[dict]] = {}
    for run in runs:
        groups.setdefault((run["split"], run["method"], run["retain_mode"], run["lr"]), []).append(run)
    out = []
    for (split, method, retain_mode, lr), members in groups.items():
        entry = {
            "split": split,
            "method": method,
            "retain_mode": retain_mode,
            "lr": lr,
            "seeds": sorted(r["seed"] for r in members),
            "names": [r["name"] for r in members],
        }
        values = {
            "fq_final": [(r["final"] or {}).get(f"{split}_forget_quality") for r in members],
            "mu_final": [(r["final"] or {}).get("model_utility") for r in members],
            "fq_peak": [(r["peak"] or {}).get(f"{split}_forget_quality") for r in members if r["peak"]],
            "mu_peak": [(r["peak"] or {}).get("model_utility") for r in members if r["peak"]],
            "peak_epoch": [r["peak"]["epoch"] for r in members if r["peak"]],
            "fq_rule": [(r.get("selected") or {}).get(f"{split}_forget_quality") for r in members],
            "mu_rule": [(r.get("selected") or {}).get("model_utility") for r in members],
            "rule_epoch": [r.get("selected_epoch") for r in members],
            "forget_p": [(r["final"] or {}).get(f"{split}_probability") for r in members],
            "forget_r": [(r["final"] or {}).get(f"{split}_rouge_l_recall") for r in members],
            "retain_p": [(r["final"] or {}).get("retain_probability") for r in members],
            "retain_r": [(r["final"] or {}).get("retain_rouge_l_recall") for r in members],
            "wall_s": [r["wall_seconds"] for r in members],
            "peak_gib": [r["peak_memory_gib"] for r in members],
            **{
                f"audit_{key}": [(r.get("audit") or {}).get(key) for r in members]
                for key in ("mia_auc_min_k", "privleak", "extraction_strength", "exact_memorization")
            },
        }
        for key, vals in values.items():
            vals = [v for v in vals if v is not None]
            entry[key] = statistics.mean(vals) if vals else None
            entry[f"{key}_std"] = statistics.stdev(vals) if len(vals) > 1 else None
        out.append(entry)
    order = {s: i for i, s in enumerate(SPLITS)}
    methods = {m: i for i, m in enumerate(dict.fromkeys([m for m, _ in default_plan()] + list(METHODS)))}
    return sorted(
        out, key=lambda e: (order[e["split"]], e["retain_mode"] != "none", methods.get(e["method"], 99), e["lr"])
    )


def fmt(value, spec=".3f", std=None) -> str:
    if value is None:
        return "n/a"
    if spec == "fq":
        text = f"{value:.2e}" if value < 0.01 else f"{value:.3f}"
        return text + ("" if std is None else f" ± {std:.1e}" if std < 0.01 else f" ± {std:.3f}")
    return format(value, spec) + ("" if std is None else f" ± {format(std, spec)}")


def previous_invocations(args) -> list[dict]:
    """``{"seconds", "command"}`` of the earlier invocations on this ``--work_dir``."""
    path = Path(args.work_dir) / "invocations.json"
    entries = json.loads(path.read_text()) if path.is_file() else []
    return [e if isinstance(e, dict) else {"seconds": e, "command": None} for e in entries]


def this_invocation(started: float, argv) -> dict:
    return {
        "seconds": time.time() - started,
        "command": " ".join(["python", "benchmarks/tofu.py", *(sys.argv[1:] if argv is None else argv)]),
    }


def write_outputs(args, started: float, argv=None) -> None:
    with waiting_lock(Path(args.work_dir) / "outputs"):  # drivers sharing the work dir write one at a time
        _write_outputs(args, started, argv)


def _write_outputs(args, started: float, argv=None) -> None:
    out = Path(args.results_dir)
    out.mkdir(parents=True, exist_ok=True)
    refs = reference_rows(args)
    runs = _records(Path(args.work_dir) / "runs")
    groups = aggregate(runs)
    splits = [s for s in SPLITS if s in args.splits or any(r["split"] == s for r in runs)]
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    settings = {
        k: v
        for k, v in vars(args).items()
        if k not in ("work_dir", "results_dir", "deadline_s", "plan", "plan_runs", "lrs", "seed_list", "data")
    }
    settings["data_dir"] = portable_path(settings["data_dir"])
    write_json_atomic(
        out / f"{NAME}.json",
        {
            "device": device,
            "protocol": args.protocol,
            "settings": settings,
            "references": refs,
            "groups": groups,
            "runs": runs,
            "finetune_train_seconds": {r["name"]: r["wall_seconds"] for r in refs},
        },
    )

    invocations = previous_invocations(args) + [this_invocation(started, argv)]
    commands = [f"`{i['command']}` ({i['seconds']:.0f} s)" for i in invocations if i["command"]]
    mini = (
        f" **CPU mini-run, NOT the benchmark**: the original learned {args.splits[0]} + the first "
        f"{args.retain_subset} retain items, the oracle those items."
        + (
            f" Model utility's retain part: the first {args.utility_retain_items} items of {RETAIN_EVAL_SET} among "
            "those learned."
            if args.utility_retain_items
            else ""
        )
        if args.retain_subset
        else ""
    )
    lines = [
        f"# TOFU on SmolLM2-135M-Instruct ({device}, protocol {args.protocol})",
        "",
        "Commands: " + ("; then ".join(commands) or "not recorded") + ". Settings in the JSON." + mini,
        f" Item protocol **{args.protocol}** ("
        + ("every item of every set" if args.protocol == "all" else "TOFU's first 300 items per set")
        + "; the KS p-value depends on the item count). "
        "FQ = forget quality (KS p-value vs the oracle), MU = model utility; *final* = after the last epoch, "
        "*peak* = the epoch with the highest FQ (FQ followed after every epoch, the peak epoch's weights then "
        "fully evaluated; n/a: evaluated after the last epoch only). Values are means over the seeds "
        "± their standard deviation. P / R = answer probability / ROUGE-L recall after the last epoch. Wall = "
        "unlearning seconds (augmentation included, evaluations excluded); memory = peak allocated during "
        "training.",
        "",
    ]
    head = (
        "| split | method | retain | lr | seeds | FQ final | MU final | FQ peak (epoch) | MU peak | forget P | "
        "forget R | retain P | retain R | wall s | peak GiB |"
    )
    lines += [head, "|" + "---|" * (head.count("|") - 1)]
    for split in splits:
        for row in [r for r in refs if r["split"] == split]:
            lines.append(
                f"| {split} | {row['method']} | | | | {fmt(row.get(f'{split}_forget_quality'), 'fq')} | "
                f"{fmt(row['model_utility'])} | | | {fmt(row.get(f'{split}_probability'))} | "
                f"{fmt(row.get(f'{split}_rouge_l_recall'))} | {fmt(row.get('retain_probability'))} | "
                f"{fmt(row.get('retain_rouge_l_recall'))} | {fmt(row['wall_seconds'], '.0f')} | |"
            )
        for g in [g for g in groups if g["split"] == split]:
            peak = (
                "n/a" if g["fq_peak"] is None else f"{fmt(g['fq_peak'], 'fq', g['fq_peak_std'])} ({g['peak_epoch']:g})"
            )
            lines.append(
                f"| {split} | {g['method']} | {g['retain_mode']} | {g['lr']:g} | {len(g['seeds'])} | "
                f"{fmt(g['fq_final'], 'fq', g['fq_final_std'])} | {fmt(g['mu_final'], '.3f', g['mu_final_std'])} | "
                f"{peak} | {fmt(g['mu_peak'], '.3f', g['mu_peak_std'])} | {fmt(g['forget_p'])} | "
                f"{fmt(g['forget_r'])} | {fmt(g['retain_p'])} | {fmt(g['retain_r'])} | {fmt(g['wall_s'], '.0f')} | "
                f"{fmt(g['peak_gib'], '.2f')} |"
            )
    audited = [r for r in refs if r.get("audit")] + [g for g in groups if g["audit_mia_auc_min_k"] is not None]
    if audited:
        lines += audit_table(refs, groups, splits)
    if any(g["rule_epoch"] is not None for g in groups):
        lines += rule_table(groups, splits)
    seconds = [i["seconds"] for i in invocations]
    lines += [
        "",
        f"Wall time of the benchmark: {sum(seconds):.0f} s over {len(seconds)} invocation(s) "
        f"({', '.join(f'{s:.0f}' for s in seconds)} s), evaluations included; of it, unlearning evaluations "
        f"{sum(r.get('eval_seconds', 0.0) for r in runs):.0f} s.",
    ]
    (out / f"{NAME}.md").write_text("\n".join(lines) + "\n")
    plot_fq_vs_mu(out / f"{NAME}_fq_vs_mu.png", refs, groups, splits)
    plot_epochs(out / f"{NAME}_epochs.png", runs, splits)


def rule_table(groups: list[dict], splits: list[str]) -> list[str]:
    """``--holdout_rule``: the epoch a user without the oracle keeps, next to the oracle's peak."""
    lines = [
        "",
        "Choosing the epoch without the oracle (--holdout_rule, rklu_llm.eval.stopping): the first epoch whose forget "
        "and holdout answer NLLs are indistinguishable (KS p >= the threshold in the JSON), else the highest p; "
        "that epoch fully evaluated, next to the epoch the oracle's forget quality picks. Means over the seeds.",
        "",
        "| split | method | retain | lr | seeds | peak epoch (oracle) | FQ peak | rule epoch | FQ at rule epoch | "
        "MU at rule epoch |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for split in splits:
        for g in [g for g in groups if g["split"] == split and g["rule_epoch"] is not None]:
            lines.append(
                f"| {split} | {g['method']} | {g['retain_mode']} | {g['lr']:g} | {len(g['seeds'])} | "
                f"{fmt(g['peak_epoch'], '.1f')} | {fmt(g['fq_peak'], 'fq', g['fq_peak_std'])} | "
                f"{fmt(g['rule_epoch'], '.1f', g['rule_epoch_std'])} | {fmt(g['fq_rule'], 'fq', g['fq_rule_std'])} | "
                f"{fmt(g['mu_rule'], '.3f', g['mu_rule_std'])} |"
            )
    return lines


def audit_table(refs: list[dict], groups: list[dict], splits: list[str]) -> list[str]:
    """The ``--audit`` columns: min-k% membership AUC (forget vs holdout; 0.5 = cannot tell), privleak against the
    oracle (0 = leaks like the oracle), extraction strength and exact memorisation of the final weights."""
    lines = [
        "",
        "Audit of the final weights (rklu_llm.eval.audit; the same items as the evaluation): min-k% AUC of telling "
        "forget from holdout items (0.5 = cannot tell), privleak vs the oracle's AUC (0 = like the oracle, -100 = "
        "every forget item recognised), extraction strength and exact memorisation of the forget answers.",
        "",
        "| split | method | retain | lr | min-k% AUC | privleak | extraction strength | exact memorisation |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for split in splits:
        for row in [r for r in refs if r["split"] == split and r.get("audit")]:
            a = row["audit"]
            oracle = row["method"].startswith("oracle")  # the reference itself: privleak 0 by definition
            leak = "0 (the reference)" if oracle else fmt(a.get("privleak"), ".1f")
            lines.append(
                f"| {split} | {row['method']} | | | {fmt(a.get('mia_auc_min_k'))} | {leak} | "
                f"{fmt(a.get('extraction_strength'))} | {fmt(a.get('exact_memorization'))} |"
            )
        for g in [g for g in groups if g["split"] == split and g["audit_mia_auc_min_k"] is not None]:
            lines.append(
                f"| {split} | {g['method']} | {g['retain_mode']} | {g['lr']:g} | {fmt(g['audit_mia_auc_min_k'])} | "
                f"{fmt(g['audit_privleak'], '.1f')} | {fmt(g['audit_extraction_strength'])} | "
                f"{fmt(g['audit_exact_memorization'])} |"
            )
    return lines


MARKERS = dict(
    rklu="*", fklu="P", ga="v", gd="^", npo="o", dpo="s", idk="D", ta="X", token_mask="<", token_redistribute=">"
)


def _style(plt):
    """Colour per (method, retain mode) and marker per method, the same in every plot."""
    pairs = default_plan()
    colors = {f"{m}+{r}": plt.get_cmap("tab20")(i % 20) for i, (m, r) in enumerate(pairs)}
    return lambda m, r: (colors.get(f"{m}+{r}", "black"), MARKERS.get(m, "o"))


def plot_fq_vs_mu(path: Path, refs: list[dict], groups: list[dict], splits: list[str]) -> None:
    """Forget quality (log) against model utility, one panel per split (the RKL-U paper's Figure 3): per (method,
    retain mode, lr) a filled marker at the peak epoch and a hollow one at the final epoch (joined), means over the
    seeds with their standard deviation as error bars; the marker grows with the learning rate; gray circles for the
    original and the oracle; the dashed line is FQ = 0.05."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    style = _style(plt)
    lrs = sorted({g["lr"] for g in groups})
    fig, axes = plt.subplots(1, max(len(splits), 1), figsize=(5 * max(len(splits), 1), 4.2), sharey=True, squeeze=False)
    legend = {}
    for ax, split in zip(axes[0], splits):
        for g in [g for g in groups if g["split"] == split]:
            points = [(g[f"mu_{k}"], g[f"fq_{k}"], g[f"mu_{k}_std"], g[f"fq_{k}_std"]) for k in ("peak", "final")]
            points = [
                (mu, max(fq, 1e-30), dmu, dfq) for mu, fq, dmu, dfq in points if mu is not None and fq is not None
            ]
            if not points:
                continue
            label = g["method"] + ("" if g["retain_mode"] == "none" else f"+{g['retain_mode']}")
            color, marker = style(g["method"], g["retain_mode"])
            size = (60 if g["method"] == "rklu" else 30) * (1 + lrs.index(g["lr"]))
            mu, fq, dmu, dfq = points[0]
            if dmu is not None or dfq is not None:
                ax.errorbar(mu, fq, xerr=dmu, yerr=dfq, color=color, lw=0.6, alpha=0.6, fmt="none")
            legend[label] = ax.scatter(
                mu, fq, marker=marker, s=size, color=color, edgecolors="black" if g["retain_mode"] != "none" else "none"
            )
            if len(points) == 2 and points[1][:2] != points[0][:2]:
                ax.plot([points[0][0], points[1][0]], [points[0][1], points[1][1]], color=color, lw=0.6, alpha=0.6)
                ax.scatter(points[1][0], points[1][1], marker=marker, s=size, facecolors="none", edgecolors=color)
        for row in [r for r in refs if r["split"] == split]:
            fq = row.get(f"{split}_forget_quality")
            if fq is not None and row["model_utility"] is not None:
                legend[row["method"]] = ax.scatter(
                    row["model_utility"], max(fq, 1e-30), marker="o", facecolors="none", edgecolors="gray", s=90
                )
        ax.axhline(0.05, color="red", lw=0.8, ls="--")
        ax.set_yscale("log")
        ax.set_title(f"{split} (filled: peak epoch, hollow: final)", fontsize=10)
        ax.set_xlabel("model utility")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("forget quality (log)")
    if legend:
        fig.legend(list(legend.values()), list(legend), loc="center right", fontsize=8)
    fig.tight_layout(rect=(0, 0, 0.86, 1))
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_epochs(path: Path, runs: list[dict], splits: list[str]) -> None:
    """Per split (rows): forget quality (log) and model utility after each epoch, one line per (method, retain mode,
    lr), the mean over the seeds. Utility needs a full evaluation: after every epoch for ``--every_epoch`` splits,
    else at the peak and the final epoch only (two joined points)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    style = _style(plt)
    fig, axes = plt.subplots(max(len(splits), 1), 2, figsize=(11, 3.6 * max(len(splits), 1)), squeeze=False)
    legend = {}
    for (ax_fq, ax_mu), split in zip(axes, splits):
        groups: dict[tuple, list[dict]] = {}
        for run in runs:
            if run["split"] == split and run["epochs"]:
                groups.setdefault((run["method"], run["retain_mode"], run["lr"]), []).append(run)
        for (method, retain_mode, _lr), members in groups.items():
            color, marker = style(method, retain_mode)
            label = method + ("" if retain_mode == "none" else f"+{retain_mode}")
            fq, mu = {}, {}
            for run in members:
                rows = run["epochs"] + [r for r in (run["peak"], run["final"]) if r]
                for row in rows:
                    if row.get(f"{split}_forget_quality") is not None and row in run["epochs"]:
                        fq.setdefault(row["epoch"], []).append(max(row[f"{split}_forget_quality"], 1e-30))
                    if row.get("model_utility") is not None:
                        mu.setdefault(row["epoch"], []).append(row["model_utility"])
            for ax, series in ((ax_fq, fq), (ax_mu, mu)):
                if series:
                    epochs = sorted(series)
                    legend[label] = ax.plot(
                        epochs,
                        [statistics.mean(dict.fromkeys(series[e])) for e in epochs],
                        marker=marker,
                        color=color,
                        lw=0.8,
                        ms=4,
                        alpha=0.5 + 0.5 / len(groups),
                        ls="-" if retain_mode == "none" else "--",
                    )[0]
        ax_fq.axhline(0.05, color="red", lw=0.8, ls="--")
        ax_fq.set_yscale("log")
        ax_fq.set_title(f"{split}: forget quality per epoch", fontsize=10)
        ax_mu.set_title(f"{split}: model utility (full evaluations)", fontsize=10)
        for ax in (ax_fq, ax_mu):
            ax.set_xlabel("epoch")
            ax.grid(alpha=0.3)
    if legend:
        fig.legend(list(legend.values()), list(legend), loc="center right", fontsize=8)
    fig.tight_layout(rect=(0, 0, 0.86, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --------------------------------------------------------------------------------------------------------------------


def validate_runs(args) -> None:
    """Build every planned run's UnlearnConfig once (cheap), so a bad method / retain-mode pair fails now; check the
    audit parts (the relearning attack and quantization need more than a run has: not offered here)."""
    if args.audit != "none":
        try:
            parts = resolve_parts(args.audit)
        except ValueError as exc:
            raise SystemExit(f"--audit: {exc}") from exc
        if set(parts) - set(AUDIT_PARTS):
            raise SystemExit(f"--audit: choose among {', '.join(AUDIT_PARTS)} (got {args.audit!r}).")
    checked = argparse.Namespace(**{**vars(args), "cpu": True})  # no GPU settings: a plan may be made on a CPU
    for method, retain_mode in args.plan_runs:
        try:
            unlearning_config(
                checked,
                Path(args.work_dir) / "runs" / "check",
                method,
                retain_mode,
                None,
                args.lrs[0],
                args.seed_list[0],
            )
        except ValueError as exc:
            raise SystemExit(f"--methods {method}:{retain_mode}: {exc}") from exc


def main(argv=None) -> None:
    args = parse(argv)
    started = time.time()
    validate_runs(args)
    check_work_dir(args)
    args.data = mini_data(args)  # the TOFU folder every step reads (a derived one for --retain_subset)
    if args.audit != "none":  # the audit's data (holdout sets) and settings, before any work
        for split in args.splits:
            try:
                check_audit(split, parts=args.audit, data_dir=args.data, max_items=args.eval_max_items)
            except (ValueError, OSError, DataUnavailableError) as exc:
                raise SystemExit(f"--audit: {exc}") from exc
    todo = todo_list(args)
    seconds, sources = plan_estimates(args, todo)
    print_plan(args, todo, seconds, sources)
    if args.plan:
        return
    if not args.cpu:
        torch.backends.cuda.matmul.allow_tf32 = True
    first = True
    for index, item in enumerate(todo):
        if is_done(args, item):
            continue
        kind, split, method, retain_mode, lr, seed = item
        elapsed = time.time() - started
        label = f"{kind} {split}" + ("" if kind == "finetune" else f" {run_name(split, method, retain_mode, lr, seed)}")
        too_long = seconds[index] is not None and elapsed + seconds[index] > args.deadline_s
        if not first and (elapsed > args.deadline_s or too_long):  # the first piece of a command always starts
            needed = "?" if seconds[index] is None else f"{seconds[index]:.0f}"
            print(
                f"deadline: {label} not started ({elapsed:.0f} s spent, about {needed} s needed, --deadline_s "
                f"{args.deadline_s:g}): run the command again to continue"
            )
            break
        first = False
        print(f"=== {label} ({elapsed:.0f} s)", flush=True)
        if kind == "finetune":
            finetune(args, split)
        else:
            unlearn(args, split, method, retain_mode, lr, seed)
        write_outputs(args, started, argv)
        seconds, _ = plan_estimates(args, todo)  # the costs just measured refine the rest
    write_outputs(args, started, argv)
    invocations = Path(args.work_dir) / "invocations.json"
    with waiting_lock(invocations):  # several drivers may share the work dir (tofu_protocol.py --methods)
        write_json_atomic(invocations, previous_invocations(args) + [this_invocation(started, argv)])
    print(f"done in {time.time() - started:.0f} s")


if __name__ == "__main__":
    main()
