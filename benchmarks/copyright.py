"""Copyright unlearning on SmolLM2-135M-Instruct: memorise Pride and Prejudice, unlearn it with every method, compare.

    python benchmarks/copyright.py --data_root data --work_dir /tmp/copyright_bench \
        --results_dir benchmarks/results

Runs ``recipes/copyright_book.py`` (``rklu_llm.scripts.copyright``) in this process: the untouched model, the
fine-tune on the book's chunks, then rklu / ga / gd / npo / dpo / idk / ta / fklu, each evaluated on continuation
BLEU / ROUGE-L of the book and of the never-seen control (Sense and Sensibility), WikiText perplexity and the mean
lm-eval accuracy over the paper's seven tasks. Writes ``copyright_smollm2_reduced.{json,md,png}`` into
``--results_dir`` (one model at one lr per method: not a tuned comparison; ``benchmarks/copyright_protocol.py`` is
the protocol, ``copyright_smollm2.*``).

The defaults are a reduced CPU run (no GPU here): 16 chunks of 64 tokens with a 32-token prefix (paper: 400 x 512,
prefix 200), 50 WikiText segments of 64 tokens (paper: 200), lm-eval on the first 10 items of each task, LoRA
fine-tune / augmented model / students, one torch thread. ``--paper`` sets the paper's sizes (a GPU run).
Resumable: every finished stage (under ``--work_dir``) is reused, so an interrupted run continues where it stopped.
Wall and CPU seconds of each invocation are recorded (on a shared machine the CPU time is the stable number).
One run at one lr for every method is not a fair comparison: ``benchmarks/copyright_protocol.py`` runs the declared
protocol (a checked original, one lr grid for all, a selection rule) through this script's ``recipe_argv``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from a checkout without installing

from rklu_llm.eval.general import resolve_tasks  # noqa: E402
from rklu_llm.io import write_json_atomic  # noqa: E402
from rklu_llm.scripts import copyright as recipe  # noqa: E402

NAME = "copyright_smollm2_reduced"
STAGES = ("base", "finetuned")


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data_root", required=True, help="folder with books/, wikitext/ and general/")
    p.add_argument("--work_dir", required=True, help="models and per-stage results (resumable state)")
    p.add_argument("--results_dir", default=str(REPO / "benchmarks" / "results"))
    p.add_argument("--model", default="embedded:smollm2-135m-instruct")
    p.add_argument("--forget_text", default="pride_and_prejudice.txt")
    p.add_argument("--control_text", default="sense_and_sensibility.txt")
    p.add_argument("--retain_text", default="emma.txt", help="gd's retain corpus")
    p.add_argument("--methods", default=",".join(recipe.DEFAULT_METHODS))
    p.add_argument("--chunk_tokens", type=int, default=64)
    p.add_argument("--num_chunks", type=int, default=16)
    p.add_argument("--prefix_tokens", type=int, default=32)
    p.add_argument("--segment_tokens", type=int, default=64)
    p.add_argument("--num_segments", type=int, default=50)
    p.add_argument("--general_tasks", default="rklu_general")
    p.add_argument("--general_limit", type=int, default=10)
    p.add_argument("--finetune_epochs", type=float, default=12)
    p.add_argument("--finetune_lr", type=float, default=1e-3)
    p.add_argument("--unlearn_epochs", type=float, default=5)
    p.add_argument("--unlearn_lr", type=float, default=1e-3)
    p.add_argument("--augment_epochs", type=float, default=1)
    p.add_argument("--teacher_alpha", type=float, default=4.0)
    p.add_argument("--batch_size", type=int, default=4)
    p.add_argument("--eval_batch_size", type=int, default=32)
    p.add_argument(
        "--lora",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="LoRA fine-tune (merged), augmented adapter and students (ta edits full weights)",
    )
    p.add_argument(
        "--paper",
        action="store_true",
        help="the paper's sizes: 300 x 512 (P&P has 327), prefix 200, "
        "200 WikiText segments of 512, all lm-eval items, no LoRA",
    )
    p.add_argument("--threads", type=int, default=1, help="torch threads on the CPU")
    args = p.parse_args()
    if args.paper:
        args.chunk_tokens, args.num_chunks, args.prefix_tokens = 512, 300, 200
        args.segment_tokens, args.num_segments, args.general_limit, args.lora = 512, 200, None, False
    return args


def recipe_argv(args, methods: str) -> list[str]:
    data = Path(args.data_root)
    cpu = not torch.cuda.is_available()
    argv = [
        "--model",
        args.model,
        "--output_dir",
        str(Path(args.work_dir) / "runs"),
        "--methods",
        methods,
        "--books_dir",
        str(data / "books"),
        "--forget_text",
        args.forget_text,
        "--control_text",
        args.control_text,
        "--retain_text",
        args.retain_text,
        "--wikitext_dir",
        str(data / "wikitext"),
        "--general_data_dir",
        str(data / "general"),
        "--general_tasks",
        args.general_tasks,
        "--chunk_tokens",
        str(args.chunk_tokens),
        "--num_chunks",
        str(args.num_chunks),
        "--prefix_tokens",
        str(args.prefix_tokens),
        "--segment_tokens",
        str(args.segment_tokens),
        "--num_segments",
        str(args.num_segments),
        "--finetune_epochs",
        str(args.finetune_epochs),
        "--finetune_learning_rate",
        str(args.finetune_lr),
        "--num_train_epochs",
        str(args.unlearn_epochs),
        "--learning_rate",
        str(args.unlearn_lr),
        "--augment_epochs",
        str(args.augment_epochs),
        "--augment_learning_rate",
        str(args.finetune_lr),
        "--teacher_alpha",
        str(args.teacher_alpha),
        "--per_device_train_batch_size",
        str(args.batch_size),
        "--eval_batch_size",
        str(args.eval_batch_size),
        "--general_batch_size",
        str(args.eval_batch_size),
        "--save_strategy",
        "no",
        "--report_to",
        "none",
        "--logging_steps",
        "1",
        "--disable_tqdm",
        "true",
        "--seed",
        "0",
        "--save_models",
        "false",
    ]
    if args.general_limit is not None:
        argv += ["--general_limit", str(args.general_limit)]
    argv += ["--use_cpu", "true"] if cpu else ["--bf16", "true"]
    if args.lora:
        argv += ["--finetune_lora", "true", "--use_lora", "true", "--augment_lora", "true"]
    return argv


def rows(args) -> list[dict]:
    found = []
    for name in (*STAGES, *args.methods.split(",")):
        path = Path(args.work_dir) / "runs" / name / "run.json"
        if path.is_file():
            found.append(json.loads(path.read_text()))
    return found


def fmt(value, spec=".2f") -> str:
    return "n/a" if value is None else format(value, spec)


def targets(table: list[dict]) -> list[str]:
    """The issue's targets, each with the numbers measured here (never a pass without the numbers)."""
    by = {r["name"]: r for r in table}
    lines = []

    def ratio(a, b):
        return a / b if a is not None and b not in (None, 0) else math.inf if a else None

    ft, rklu, ga = by.get("finetuned"), by.get("rklu"), by.get("ga")
    if ft:
        r = ratio(ft["forget_bleu"], ft["control_bleu"])
        lines.append(
            f"- fine-tuned: forget BLEU {ft['forget_bleu']:.2f} vs control BLEU {ft['control_bleu']:.2f} "
            f"= {fmt(r)}x (target >= 5x): {'met' if r is not None and r >= 5 else 'NOT met'}"
        )
    if rklu:
        rb, rr = (
            ratio(rklu["forget_bleu"], rklu["control_bleu"]),
            ratio(rklu["forget_rouge_l_recall"], rklu["control_rouge_l_recall"]),
        )
        lines.append(
            f"- rklu: forget BLEU {rklu['forget_bleu']:.2f} = {fmt(rb)}x its control BLEU, forget ROUGE-L "
            f"recall {rklu['forget_rouge_l_recall']:.2f} = {fmt(rr)}x its control's (target <= 1.5x): "
            f"{'met' if rb is not None and rr is not None and rb <= 1.5 and rr <= 1.5 else 'NOT met'}"
        )
    if rklu and ft:
        change = rklu["wikitext_perplexity"] / ft["wikitext_perplexity"] - 1
        lines.append(
            f"- rklu: WikiText perplexity {rklu['wikitext_perplexity']:.2f} vs fine-tuned "
            f"{ft['wikitext_perplexity']:.2f} ({100 * change:+.1f}%, target within 5%): "
            f"{'met' if abs(change) <= 0.05 else 'NOT met'}"
        )
        if rklu.get("general_average_acc") is not None and ft.get("general_average_acc") is not None:
            diff = 100 * (rklu["general_average_acc"] - ft["general_average_acc"])
            lines.append(
                f"- rklu: lm-eval mean accuracy {100 * rklu['general_average_acc']:.1f} vs fine-tuned "
                f"{100 * ft['general_average_acc']:.1f} ({diff:+.1f} points, target within 1): "
                f"{'met' if abs(diff) <= 1 else 'NOT met'}"
            )
    if ga and ft:
        lines.append(
            f"- ga: WikiText perplexity {ga['wikitext_perplexity']:.4g} vs fine-tuned "
            f"{ft['wikitext_perplexity']:.2f} ({ga['wikitext_perplexity'] / ft['wikitext_perplexity']:.2f}x)"
        )
    return lines


def write_outputs(args, invocations: list[dict]) -> None:
    table = rows(args)
    out = Path(args.results_dir)
    out.mkdir(parents=True, exist_ok=True)
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "2-core CPU"
    settings = {k: v for k, v in vars(args).items() if k not in ("work_dir", "results_dir", "data_root")}
    write_json_atomic(
        out / f"{NAME}.json",
        {"device": device, "settings": settings, "invocations": invocations, "rows": table, "targets": targets(table)},
    )
    commands = "; then ".join(
        f"`{i['command']}` ({i['seconds']:.0f} s wall, {i['cpu_seconds']:.0f} s CPU, load average "
        f"{i['load_average']:.1f}"
        + ("" if i.get("finished", True) else f"; stopped after the stage {i.get('last_stage', '?')}")
        + ")"
        for i in invocations
    )
    reduced = ("Reduced CPU run" if not args.paper else "Paper-size run") + (
        f": {args.num_chunks} chunks of {args.chunk_tokens} tokens of Pride and Prejudice, the first "
        f"{args.prefix_tokens} of each the prompt (paper: 400 x 512, prefix 200); control: the same number of chunks "
        f"of Sense and Sensibility (never trained on); perplexity on {args.num_segments} WikiText-2 test segments of "
        f"{args.segment_tokens} tokens (paper: 200); lm-eval mean accuracy over "
        f"{', '.join(resolve_tasks(args.general_tasks))} on the first {args.general_limit or 'all'} items of each task"
        + (", LoRA fine-tune / augmented adapter / students (ta edits the full weights)" if args.lora else "")
        + "."
    )
    lines = [
        f"# Copyright unlearning on SmolLM2-135M-Instruct ({device})",
        "",
        f"Commands: {commands}. {reduced} Settings in the JSON.",
        "",
        "BLEU: mean sentence BLEU (sacrebleu, 13a, exp smoothing) x100; R-L: ROUGE-L recall / F1 (rouge_score, "
        "stemmer) x100, of the greedy continuation of each chunk's prefix against its true continuation. "
        "Seconds: training (fine-tune; unlearning with the augmentation included for rklu / fklu / ta) and evaluation.",
        "",
        "| model | forget BLEU | forget R-L recall | forget R-L F1 | control BLEU | control R-L recall | "
        "WikiText PPL | lm-eval avg acc | train s | eval s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in table:
        acc = r.get("general_average_acc")
        lines.append(
            f"| {r['method']} | {fmt(r['forget_bleu'])} | {fmt(r['forget_rouge_l_recall'])} | "
            f"{fmt(r['forget_rouge_l_f1'])} | {fmt(r['control_bleu'])} | {fmt(r['control_rouge_l_recall'])} | "
            f"{fmt(r['wikitext_perplexity'], '.4g')} | {fmt(None if acc is None else 100 * acc, '.1f')} | "
            f"{fmt(r['seconds'], '.0f')} | {fmt(r['eval_seconds'], '.0f')} |"
        )
    lines += [
        "",
        "Targets (issue 8), as measured:",
        "",
        *targets(table),
        "",
        f"Time: {sum(i['seconds'] for i in invocations):.0f} s wall, "
        f"{sum(i['cpu_seconds'] for i in invocations):.0f} s CPU over {len(invocations)} invocation(s) (the "
        "machine is shared: the load average is the mean of the 1-minute load sampled at each stage).",
    ]
    (out / f"{NAME}.md").write_text("\n".join(lines) + "\n")
    plot(out / f"{NAME}.png", table)


def plot(path: Path, table: list[dict]) -> None:
    """Left: forget vs control BLEU per model; right: WikiText perplexity (log) per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not table:
        return
    names = [r["name"] for r in table]
    x = range(len(names))
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.2))
    left.bar([i - 0.2 for i in x], [r["forget_bleu"] for r in table], width=0.4, label="forget book (P&P)")
    left.bar([i + 0.2 for i in x], [r["control_bleu"] for r in table], width=0.4, label="control book (S&S)")
    left.set_ylabel("continuation BLEU (x100)")
    right.bar(list(x), [r["wikitext_perplexity"] for r in table], color="gray")
    right.set_yscale("log")
    right.set_ylabel("WikiText perplexity (log)")
    for ax in (left, right):
        ax.set_xticks(list(x))
        ax.set_xticklabels(names, rotation=30, ha="right")
        ax.grid(axis="y", alpha=0.3)
    left.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    args = parse()
    started, cpu_started = time.time(), time.process_time()
    loads = []
    if not torch.cuda.is_available():
        torch.set_num_threads(args.threads)
    history = Path(args.work_dir) / "invocations.json"
    invocations = json.loads(history.read_text()) if history.is_file() else []
    command = " ".join(["python", "benchmarks/copyright.py", *sys.argv[1:]])

    def this() -> dict:
        loads.append(os.getloadavg()[0])
        return {
            "seconds": time.time() - started,
            "cpu_seconds": time.process_time() - cpu_started,
            "load_average": sum(loads) / len(loads),
            "command": command,
        }

    def on_stage(name: str) -> None:  # after every stage: an interrupted invocation keeps its record
        current = invocations + [{**this(), "finished": False, "last_stage": name}]
        write_json_atomic(history, current)
        write_outputs(args, current)

    recipe.main(recipe_argv(args, args.methods), on_stage=on_stage)
    invocations.append({**this(), "finished": True})
    write_json_atomic(history, invocations)
    write_outputs(args, invocations)
    print(f"done in {time.time() - started:.0f} s")


if __name__ == "__main__":
    main()
