"""Old vs new evaluation paths on the same inputs, timed in one run: greedy generation of TOFU answers and the
likelihood pass of a TOFU set, with the outputs compared.

    python benchmarks/eval_speed.py --data_dir data/tofu                  # CPU: eval_speed_cpu.{json,md}
    python benchmarks/eval_speed.py --data_dir <tofu> --device cuda --name eval_speed_gpu --prompts 1024 \\
        --score_items 400 --old_batch_size 16 --new_batch_size 1024 --variants static --full_eval

* generation: the first ``--prompts`` questions of forget10, ``--max_new_tokens`` new tokens at most.
  old = ``generate_continuations(decoder="generate")`` (``model.generate``, finished rows stay in the batch) at
  ``--old_batch_size`` prompts per batch (the previous default of the evaluation, 16); new = ``decoder="compact"``
  (finished rows leave the batch) at ``--new_batch_size``. ``--variants static`` also times ``decoder="static"``.
* likelihood: every (question, candidate) pair of the first ``--score_items`` items of ``--score_set``
  (answer, paraphrased answer, 5 perturbed answers per item). old = ``score_examples(scoring="plain")`` (whole
  sequences) at ``--old_batch_size``; new = ``scoring="shared_prefix"`` (each question once per batch) at
  ``--new_batch_size``.

Old and new alternate (old first in even repeats, new first in odd ones), so load changes on a shared machine hit both;
the tables give medians of wall and CPU (process) seconds and their ratios old / new. Outputs are compared: the
generated texts must be identical, the likelihoods equal up to float rounding. ``--full_eval`` also times one
complete ``evaluate_tofu`` of the model (all sets of forget10, every item, new paths): the GPU target is <= 4 s for
SmolLM2-135M.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from a checkout without installing

from rklu_llm import load_model  # noqa: E402
from rklu_llm.data.qa import encode_prompt  # noqa: E402
from rklu_llm.data.tofu import load_tofu  # noqa: E402
from rklu_llm.eval.scoring import DECODERS, generate_continuations, qa_examples, score_examples  # noqa: E402
from rklu_llm.io import write_json_atomic  # noqa: E402
from rklu_llm.paths import portable_path  # noqa: E402


def parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data_dir", required=True, help="local TOFU folder")
    p.add_argument("--model", default="embedded:smollm2-135m-instruct")
    p.add_argument("--results_dir", default=str(REPO / "benchmarks" / "results"))
    p.add_argument("--name", default="eval_speed_cpu", help="result files <name>.json / <name>.md")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--bf16", action="store_true", help="evaluate in bfloat16 (GPU)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--prompts", type=int, default=64, help="forget10 questions generated")
    p.add_argument("--max_new_tokens", type=int, default=200)
    p.add_argument("--score_set", default="forget10_perturbed", help="TOFU set whose pairs are scored")
    p.add_argument("--score_items", type=int, default=40, help="its first N items (7 pairs each on forget/retain)")
    p.add_argument("--old_batch_size", type=int, default=16)
    p.add_argument("--new_batch_size", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--variants", default="", help="more greedy decoders to time, e.g. 'static'")
    p.add_argument("--full_eval", action="store_true", help="also time one full evaluate_tofu (new paths)")
    p.add_argument("--render", action="store_true", help="only rewrite <name>.md from <name>.json (no measurement)")
    args = p.parse_args(argv)
    for name in ("prompts", "max_new_tokens", "score_items", "old_batch_size", "new_batch_size", "repeats", "threads"):
        if getattr(args, name) < 1:
            raise SystemExit(f"--{name} must be >= 1")
    args.variants = [v for v in args.variants.split(",") if v]
    bad = [v for v in args.variants if v not in DECODERS]
    if bad:
        raise SystemExit(f"--variants: unknown decoder(s) {bad}; choose among {DECODERS}")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("--device cuda but no GPU is visible")
    return args


def timed(device: str, fn):
    """``(result, wall seconds, CPU seconds of this process)``, synchronising a GPU around ``fn``."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    wall, cpu = time.perf_counter(), time.process_time()
    result = fn()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return result, time.perf_counter() - wall, time.process_time() - cpu


def compare_timings(runs: dict[str, list[tuple[float, float]]], old: str, new: str) -> dict:
    out = {
        label: {
            "wall_seconds": [w for w, _ in values],
            "cpu_seconds": [c for _, c in values],
            "median_wall_seconds": statistics.median(w for w, _ in values),
            "median_cpu_seconds": statistics.median(c for _, c in values),
        }
        for label, values in runs.items()
    }
    out["ratio_wall"] = out[old]["median_wall_seconds"] / out[new]["median_wall_seconds"]
    out["ratio_cpu"] = out[old]["median_cpu_seconds"] / out[new]["median_cpu_seconds"]
    return out


def main(argv=None) -> None:
    args = parse(argv)
    out = Path(args.results_dir)
    if args.render:  # the measurement's own settings and command, read back
        stored = json.loads((out / f"{args.name}.json").read_text())
        settings = argparse.Namespace(**stored["settings"])
        write_markdown(
            out / f"{args.name}.md",
            settings,
            stored["device"],
            stored["command"],
            stored["generation"],
            stored["likelihood"],
            stored["full_evaluation"],
        )
        return
    torch.set_num_threads(args.threads)
    rows = load_tofu("forget10_perturbed", args.data_dir).select_columns(["question"])
    score_rows = load_tofu(args.score_set, args.data_dir)  # both fail here, before the model, when TOFU is missing
    if args.prompts > len(rows) or args.score_items > len(score_rows):
        raise SystemExit(f"--prompts <= {len(rows)} and --score_items <= {len(score_rows)}")
    model, tokenizer = load_model(args.model)
    model.to(args.device).eval()
    if args.bf16:
        model.to(torch.bfloat16)
    device = (
        torch.cuda.get_device_name(0)
        if args.device.startswith("cuda")
        else f"{args.threads}-thread CPU of a {os.cpu_count()}-core machine"
    )

    prompts = [encode_prompt(tokenizer, q) for q in rows["question"][: args.prompts]]
    score_rows = score_rows.select(range(args.score_items))
    questions, answers = [], []
    for row in score_rows:
        candidates = [row["answer"]] + ([row["paraphrased_answer"]] if "paraphrased_answer" in row else [])
        for answer in candidates + list(row["perturbed_answer"]):
            questions.append(row["question"])
            answers.append(answer)
    examples = qa_examples(tokenizer, questions, answers)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

    generators = {
        "old": lambda: generate_continuations(
            model, tokenizer, prompts, args.old_batch_size, args.max_new_tokens, decoder="generate"
        ),
        "new": lambda: generate_continuations(
            model, tokenizer, prompts, args.new_batch_size, args.max_new_tokens, decoder="compact"
        ),
    }
    for variant in args.variants:
        generators[variant] = lambda v=variant: generate_continuations(
            model, tokenizer, prompts, args.new_batch_size, args.max_new_tokens, decoder=v
        )
    scorers = {
        "old": lambda: score_examples(model, examples, pad, args.old_batch_size, scoring="plain"),
        "new": lambda: score_examples(model, examples, pad, args.new_batch_size, scoring="shared_prefix"),
    }
    gen_times: dict[str, list] = {k: [] for k in generators}
    score_times: dict[str, list] = {k: [] for k in scorers}
    texts, scores = {}, {}
    for repeat in range(args.repeats):
        order = list(generators) if repeat % 2 == 0 else list(generators)[::-1]
        for label in order:
            texts[label], wall, cpu = timed(args.device, generators[label])
            gen_times[label].append((wall, cpu))
            print(f"repeat {repeat}: generation {label}: {wall:.1f} s wall, {cpu:.1f} s CPU", flush=True)
        for label in ["old", "new"] if repeat % 2 == 0 else ["new", "old"]:
            scores[label], wall, cpu = timed(args.device, scorers[label])
            score_times[label].append((wall, cpu))
            print(f"repeat {repeat}: likelihood {label}: {wall:.1f} s wall, {cpu:.1f} s CPU", flush=True)

    new_tokens = [len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts["new"]]
    generation = {
        "prompts": len(prompts),
        "max_new_tokens": args.max_new_tokens,
        "identical_outputs": sum(a == b for a, b in zip(texts["old"], texts["new"])),
        "answer_tokens": {"mean": float(np.mean(new_tokens)), "min": min(new_tokens), "max": max(new_tokens)},
        **compare_timings({k: gen_times[k] for k in ("old", "new")}, "old", "new"),
        "variants": {
            v: {
                "identical_outputs": sum(a == b for a, b in zip(texts["old"], texts[v])),
                **compare_timings({"old": gen_times["old"], v: gen_times[v]}, "old", v),
            }
            for v in args.variants
        },
        "examples": [{"old": a, "new": b} for a, b in zip(texts["old"][:3], texts["new"][:3])],
    }
    difference = np.abs(scores["old"]["nll_sum"] - scores["new"]["nll_sum"])
    likelihood = {
        "set": args.score_set,
        "items": args.score_items,
        "pairs": len(examples),
        "tokens_per_pair": float(np.mean([len(e["input_ids"]) for e in examples])),
        "max_abs_nll_difference": float(difference.max()),
        "max_rel_nll_difference": float((difference / np.maximum(np.abs(scores["old"]["nll_sum"]), 1e-12)).max()),
        "same_token_counts": bool((scores["old"]["num_tokens"] == scores["new"]["num_tokens"]).all()),
        **compare_timings(score_times, "old", "new"),
    }
    full = None
    if args.full_eval:
        from rklu_llm.eval.tofu import evaluate_tofu

        result, wall, cpu = timed(
            args.device,
            lambda: evaluate_tofu(
                model,
                tokenizer,
                "forget10",
                data_dir=args.data_dir,
                batch_size=args.new_batch_size,
                generation_batch_size=args.new_batch_size,
                max_new_tokens=args.max_new_tokens,
            ),
        )
        full = {"wall_seconds": wall, "cpu_seconds": cpu, "model_utility": result["model_utility"]}

    command = " ".join(["python", "benchmarks/eval_speed.py", *(sys.argv[1:] if argv is None else argv)])
    settings = {k: portable_path(v) if k in ("data_dir", "model", "results_dir") else v for k, v in vars(args).items()}
    write_json_atomic(
        out / f"{args.name}.json",
        {
            "device": device,
            "torch": torch.__version__,
            "command": command,
            "settings": settings,
            "generation": generation,
            "likelihood": likelihood,
            "full_evaluation": full,
        },
    )
    write_markdown(out / f"{args.name}.md", args, device, command, generation, likelihood, full)
    print((out / f"{args.name}.md").read_text())


def write_markdown(path: Path, args, device: str, command: str, generation: dict, likelihood: dict, full) -> None:
    def row(task, label, entry, batch, note=""):
        return (
            f"| {task} | {label} | {batch} | {entry['median_wall_seconds']:.1f} | "
            f"{entry['median_cpu_seconds']:.1f} | {note} |"
        )

    lines = [
        f"# Evaluation speed, old vs new paths ({device})",
        "",
        f"Command: `{command}` ({device}; {args.repeats} repeats, old and new alternating; medians). "
        'Old = the previous implementation (`decoder="generate"`: `model.generate`, finished rows stay in the '
        'batch; `scoring="plain"`: whole sequences), new = the defaults (`decoder="compact"`: finished rows leave '
        'the batch; `scoring="shared_prefix"`: each question\'s prompt once per batch, its key/value cache reused '
        "for its answers). CPU = seconds of CPU time of the process (the machine is shared: CPU time is the steadier "
        "measure).",
        "",
        "| task | path | batch | wall s | CPU s | outputs |",
        "|---|---|---|---|---|---|",
    ]
    gen_task = f"generation, {generation['prompts']} prompts x <= {generation['max_new_tokens']} new tokens"
    lines.append(row(gen_task, "old", generation["old"], args.old_batch_size))
    lines.append(
        row(
            gen_task,
            "new",
            generation["new"],
            args.new_batch_size,
            f"{generation['identical_outputs']}/{generation['prompts']} identical texts",
        )
    )
    for variant, entry in generation["variants"].items():
        lines.append(
            row(
                gen_task,
                f"{variant} (decoder)",
                entry[variant],
                args.new_batch_size,
                f"{entry['identical_outputs']}/{generation['prompts']} identical; × old: "
                f"{entry['ratio_wall']:.2f} wall",
            )
        )
    score_task = f"likelihood, {likelihood['set']} first {likelihood['items']} items ({likelihood['pairs']} pairs)"
    lines.append(row(score_task, "old", likelihood["old"], args.old_batch_size))
    lines.append(
        row(
            score_task,
            "new",
            likelihood["new"],
            args.new_batch_size,
            f"max |ΔNLL| {likelihood['max_abs_nll_difference']:.1e} (relative "
            f"{likelihood['max_rel_nll_difference']:.1e}), token counts "
            f"{'equal' if likelihood['same_token_counts'] else 'DIFFER'}",
        )
    )
    tokens = generation["answer_tokens"]
    lines += [
        "",
        f"Speed-up old / new: generation {generation['ratio_wall']:.2f}× wall, {generation['ratio_cpu']:.2f}× CPU; "
        f"likelihood {likelihood['ratio_wall']:.2f}× wall, {likelihood['ratio_cpu']:.2f}× CPU. Generated answers: "
        f"{tokens['mean']:.0f} tokens on average (min {tokens['min']}, max {tokens['max']}); dropping finished rows "
        f"saves more the more the answer lengths differ. Pairs average {likelihood['tokens_per_pair']:.0f} tokens.",
    ]
    if full is not None:
        lines += [
            "",
            f"One full `evaluate_tofu` (forget10 and the utility sets, every item, new paths): "
            f"{full['wall_seconds']:.1f} s wall.",
        ]
    if args.device == "cpu":
        lines += [
            "",
            "GPU target, not measured here: a full TOFU evaluation of SmolLM2-135M (forget10 and the utility "
            "sets, every item, 200 new tokens) in <= 4 s. Command: `python benchmarks/eval_speed.py "
            "--data_dir data/tofu --device cuda --name eval_speed_gpu --prompts 400 --score_items "
            "400 --new_batch_size 1024 --variants static --full_eval` (add `--bf16` to evaluate in "
            "bfloat16).",
        ]
    path.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
