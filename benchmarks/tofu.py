"""The TOFU benchmark on the embedded SmolLM2-135M-Instruct: every method, forget01/05/10, one command.

    python benchmarks/tofu.py --data_dir ../shared/data/tofu --work_dir /root/bench --results_dir benchmarks/results

1. fine-tunes the model on TOFU ``full`` (the "original") and on ``retain90/95/99`` (the oracles) with
   recipes/finetune_tofu.py, each evaluated and stored (the oracles' evaluations are the forget-quality references);
2. unlearns forget01/05/10 with every method and no retain data, and RKL-U, GD, NPO also with the retain NLL term;
   the augmented model of a split is built once and shared by rklu / fklu / ta (its time is counted in each);
3. evaluates every run after each unlearning epoch on the splits given by ``--every_epoch`` (the others at the end),
   reports the final epoch and the epoch of peak forget quality;
4. writes ``tofu_smollm2.json``, ``tofu_smollm2.md`` and ``tofu_smollm2_fq_vs_mu.png`` into ``--results_dir``.

Resumable: finished fine-tunes and runs (under ``--work_dir``) are not redone. ``--deadline_s`` stops starting new
work after that many seconds, so one command fits a time limit; run it again to continue.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "recipes"))

from rklu_llm import METHODS, UnlearnConfig, UnlearnTrainer, build_unlearning_dataset, load_model, load_refusals  # noqa: E402
from rklu_llm.data import FORGET_OF_RETAIN, RETAIN_OF_FORGET, load_tofu, tokenize_qa  # noqa: E402
from rklu_llm.eval.callback import TofuEvalCallback  # noqa: E402
from rklu_llm.eval.tofu import load_tofu_eval, summary_row, write_json_atomic  # noqa: E402
from rklu_llm.teacher import build_augmented_model  # noqa: E402

SPLITS = ("forget10", "forget05", "forget01")
PLAN = [(m, "none") for m in ("rklu", "fklu", "ga", "npo", "dpo", "idk", "ta")] + [
    ("rklu", "rt"), ("gd", "rt"), ("npo", "rt")]
NAME = "tofu_smollm2"


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data_dir", required=True, help="local TOFU folder")
    p.add_argument("--work_dir", required=True, help="models and per-run results (resumable state)")
    p.add_argument("--results_dir", default=str(REPO / "benchmarks" / "results"))
    p.add_argument("--model", default="embedded:smollm2-135m-instruct")
    p.add_argument("--splits", default=",".join(SPLITS))
    p.add_argument("--methods", default=None, help="comma-separated method[:retain_mode] subset of the plan")
    p.add_argument("--every_epoch", default="forget10", help="splits evaluated after every epoch (others: at the end)")
    p.add_argument("--finetune_lr", type=float, default=2e-4)
    p.add_argument("--finetune_epochs", type=float, default=5)
    p.add_argument("--unlearn_lr", type=float, default=1e-4)
    p.add_argument("--unlearn_epochs", type=float, default=5)
    p.add_argument("--augment_epochs", type=float, default=10)
    p.add_argument("--teacher_alpha", type=float, default=8.0)
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--eval_batch_size", type=int, default=128)
    p.add_argument("--generation_batch_size", type=int, default=1024)
    p.add_argument("--max_new_tokens", type=int, default=200)
    p.add_argument("--eval_max_items", type=int, default=None, help="smoke tests only")
    p.add_argument("--train_max_items", type=int, default=None, help="smoke tests only (fine-tunes)")
    p.add_argument("--max_steps", type=int, default=-1, help="smoke tests only")
    p.add_argument("--deadline_s", type=float, default=math.inf, help="start no new work after this many seconds")
    p.add_argument("--cpu", action="store_true", help="no GPU: fp32, use_cpu")
    return p.parse_args()


def finetune(args, split: str) -> Path:
    """recipes/finetune_tofu.py on ``split``; returns the model directory (with tofu_eval.json, train_metrics.json)."""
    import finetune_tofu

    out = Path(args.work_dir) / "models" / split
    if (out / "tofu_eval.json").is_file():
        return out
    argv = [
        "--model", args.model, "--split", split, "--data_dir", args.data_dir, "--output_dir", str(out),
        "--learning_rate", str(args.finetune_lr), "--num_train_epochs", str(args.finetune_epochs),
        "--per_device_train_batch_size", str(args.batch_size), "--save_strategy", "no", "--report_to", "none",
        "--disable_tqdm", "true", "--logging_steps", "25", "--eval_batch_size", str(args.eval_batch_size),
        "--eval_generation_batch_size", str(args.generation_batch_size), "--max_new_tokens", str(args.max_new_tokens),
        "--max_steps", str(args.max_steps),
    ]
    argv += ["--use_cpu"] if args.cpu else ["--bf16", "--tf32", "true"]
    if args.train_max_items:
        argv += ["--max_train_items", str(args.train_max_items)]
    if args.eval_max_items:
        argv += ["--eval_max_items", str(args.eval_max_items)]
    finetune_tofu.main(argv)
    return out


def unlearning_config(args, output_dir: Path, method: str, retain_mode: str, augmented: Path | None) -> UnlearnConfig:
    return UnlearnConfig(
        output_dir=str(output_dir), method=method, retain_mode=retain_mode, teacher_alpha=args.teacher_alpha,
        augmented_model_path=None if augmented is None else str(augmented), augment_epochs=args.augment_epochs,
        augment_learning_rate=args.finetune_lr, learning_rate=args.unlearn_lr, num_train_epochs=args.unlearn_epochs,
        max_steps=args.max_steps, augment_max_steps=args.max_steps, per_device_train_batch_size=args.batch_size,
        bf16=not args.cpu, tf32=None if args.cpu else True, use_cpu=args.cpu, save_strategy="no", report_to="none",
        logging_steps=5, disable_tqdm=True, seed=0,
    )


def augmented_model(args, split: str, original, tokenizer) -> tuple[Path, float]:
    """The split's augmented model (built once, full fine-tune on the forget set) and the seconds it took."""
    out = Path(args.work_dir) / "augmented" / split
    timing = Path(args.work_dir) / "augmented" / f"{split}.json"
    if timing.is_file() and (out / "config.json").is_file():
        return out, json.loads(timing.read_text())["seconds"]
    forget = tokenize_qa(load_tofu(split, args.data_dir), tokenizer, 512)
    config = unlearning_config(args, out.parent / f".{split}-config", "rklu", "none", None)
    start = time.perf_counter()
    build_augmented_model(original, tokenizer, forget, config, out)
    seconds = time.perf_counter() - start
    write_json_atomic(timing, {"seconds": seconds})
    return out, seconds


def unlearn(args, split: str, method: str, retain_mode: str) -> dict:
    name = f"{split}_{method}" + ("" if retain_mode == "none" else f"_{retain_mode}")
    record = Path(args.work_dir) / "runs" / f"{name}.json"
    if record.is_file():
        return json.loads(record.read_text())
    work = Path(args.work_dir)
    reference = work / "models" / RETAIN_OF_FORGET[split] / "tofu_eval.json"
    model, tokenizer = load_model(str(work / "models" / "full"))
    if not args.cpu:
        model.to("cuda")
    spec = METHODS[method]
    augmented, augment_seconds = (None, 0.0)
    if spec.needs_augmented:
        augmented, augment_seconds = augmented_model(args, split, model, tokenizer)
    forget = load_tofu(split, args.data_dir)
    retain = load_tofu(RETAIN_OF_FORGET[split], args.data_dir) if retain_mode != "none" else None
    refusals = load_refusals() if spec.needs_refusals else None
    dataset = build_unlearning_dataset(tokenizer, forget, retain, refusals, max_length=512, seed=0)
    eval_kwargs = dict(batch_size=args.eval_batch_size, generation_batch_size=args.generation_batch_size,
                       max_new_tokens=args.max_new_tokens, max_items=args.eval_max_items)
    every_epoch = split in args.every_epoch.split(",") and spec.trains
    callback = TofuEvalCallback(tokenizer, split, args.data_dir, reference, **eval_kwargs)
    config = unlearning_config(args, work / "runs" / name, method, retain_mode, augmented)
    trainer = UnlearnTrainer(model=model, args=config, train_dataset=dataset, processing_class=tokenizer,
                             callbacks=[callback] if every_epoch else None)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    trainer.train()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    train_seconds = time.perf_counter() - start - callback.eval_seconds
    peaks = [h["train_peak_memory_bytes"] for h in callback.history if h["train_peak_memory_bytes"]]
    if torch.cuda.is_available():
        peaks.append(torch.cuda.max_memory_allocated())
    if not every_epoch:  # one evaluation at the end
        callback.on_epoch_end(config, trainer.state, trainer.control, model=trainer.model)
    epochs = callback.history
    final = epochs[-1]
    peak = max(epochs, key=lambda row: (row.get(f"{split}_forget_quality") or -1.0))
    result = {
        "name": name, "split": split, "method": method, "retain_mode": retain_mode,
        "train_seconds": train_seconds, "augment_seconds": augment_seconds,
        "wall_seconds": train_seconds + augment_seconds, "peak_memory_gib": max(peaks) / 2**30 if peaks else None,
        "evaluated_every_epoch": every_epoch, "final": final, "peak": peak, "epochs": epochs,
    }
    write_json_atomic(record, result)
    del trainer, model
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return result


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
            if split != "full" and FORGET_OF_RETAIN[split] != forget_split:
                continue
            row = summary_row(result)
            row.update(name=f"{forget_split}_{'original' if split == 'full' else 'oracle_' + split}",
                       split=forget_split, method="original" if split == "full" else f"oracle ({split})",
                       retain_mode="", wall_seconds=metrics.get("train_runtime"))
            if split == "full":  # forget quality of the original against the split's oracle
                oracle = work / RETAIN_OF_FORGET[forget_split] / "tofu_eval.json"
                if oracle.is_file():
                    from rklu_llm.eval.tofu import compare_to_reference

                    items = result["sets"][f"{forget_split}_perturbed"]["items"]
                    fq = compare_to_reference(items["truth_ratio"], items["question"], load_tofu_eval(oracle),
                                              forget_split)
                    row[f"{forget_split}_forget_quality"] = fq["forget_quality"]
            rows.append(row)
    return rows


def fmt(value, spec=".3f") -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float) and spec == "fq":
        return f"{value:.2e}" if value < 0.01 else f"{value:.3f}"
    return format(value, spec) if isinstance(value, (int, float)) else str(value)


def previous_invocations(args) -> list[float]:
    path = Path(args.work_dir) / "invocations.json"
    return json.loads(path.read_text()) if path.is_file() else []


def write_outputs(args, runs: list[dict], started: float) -> None:
    out = Path(args.results_dir)
    out.mkdir(parents=True, exist_ok=True)
    refs = reference_rows(args)
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    settings = {k: v for k, v in vars(args).items() if k not in ("work_dir", "results_dir", "deadline_s")}
    finetune_seconds = {r["name"]: r["wall_seconds"] for r in refs}
    write_json_atomic(out / f"{NAME}.json", {"device": device, "settings": settings, "references": refs, "runs": runs,
                                "finetune_train_seconds": finetune_seconds})

    lines = [f"# TOFU on SmolLM2-135M-Instruct ({device})", "",
             "Command: `python benchmarks/tofu.py --data_dir <tofu> --work_dir <dir>` (settings in the JSON). "
             "FQ = forget quality (KS p-value vs the oracle), MU = model utility; *final* = after the last epoch, "
             "*peak* = the evaluated epoch with the highest FQ. P / R = answer probability / ROUGE-L recall. "
             "Wall = unlearning seconds (augmentation included, evaluations excluded); memory = peak allocated.", ""]
    head = ("| split | method | retain | FQ final | MU final | FQ peak (epoch) | MU peak | forget P | forget R | "
            "retain P | retain R | wall s | peak GiB |")
    lines += [head, "|" + "---|" * (head.count("|") - 1)]
    for split in [s for s in SPLITS if s in args.splits.split(",")]:
        for row in [r for r in refs if r["split"] == split]:
            lines.append(
                f"| {split} | {row['method']} | | {fmt(row.get(f'{split}_forget_quality'), 'fq')} | "
                f"{fmt(row['model_utility'])} | | | {fmt(row.get(f'{split}_probability'))} | "
                f"{fmt(row.get(f'{split}_rouge_l_recall'))} | {fmt(row.get('retain_probability'))} | "
                f"{fmt(row.get('retain_rouge_l_recall'))} | {fmt(row['wall_seconds'], '.0f')} | |")
        for run in [r for r in runs if r["split"] == split]:
            f, p = run["final"], run["peak"]
            peak_text = f"{fmt(p.get(f'{split}_forget_quality'), 'fq')} ({p['epoch']:g})" if run[
                "evaluated_every_epoch"] else "n/a"
            lines.append(
                f"| {split} | {run['method']} | {run['retain_mode']} | {fmt(f.get(f'{split}_forget_quality'), 'fq')} "
                f"| {fmt(f['model_utility'])} | {peak_text} | "
                f"{fmt(p['model_utility']) if run['evaluated_every_epoch'] else 'n/a'} | "
                f"{fmt(f.get(f'{split}_probability'))} | {fmt(f.get(f'{split}_rouge_l_recall'))} | "
                f"{fmt(f.get('retain_probability'))} | {fmt(f.get('retain_rouge_l_recall'))} | "
                f"{fmt(run['wall_seconds'], '.0f')} | {fmt(run['peak_memory_gib'], '.2f')} |")
    invocations = previous_invocations(args) + [time.time() - started]
    lines += ["", f"Wall time of the benchmark: {sum(invocations):.0f} s over {len(invocations)} invocation(s) "
              f"({', '.join(f'{s:.0f}' for s in invocations)} s), evaluations included."]
    (out / f"{NAME}.md").write_text("\n".join(lines) + "\n")
    plot(out / f"{NAME}_fq_vs_mu.png", refs, runs)


def plot(path: Path, refs: list[dict], runs: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(SPLITS), figsize=(5 * len(SPLITS), 4.2), sharey=True)
    markers = dict(rklu="*", fklu="P", ga="v", gd="^", npo="o", dpo="s", idk="D", ta="X")
    for ax, split in zip(axes, SPLITS):
        for run in [r for r in runs if r["split"] == split]:
            f = run["final"]
            fq, mu = f.get(f"{split}_forget_quality"), f["model_utility"]
            if fq is None or mu is None:
                continue
            label = run["method"] + ("" if run["retain_mode"] == "none" else f"+{run['retain_mode']}")
            ax.scatter(mu, max(fq, 1e-30), marker=markers.get(run["method"], "o"), s=90 if run["method"] == "rklu"
                       else 45, label=label, edgecolors="black" if run["retain_mode"] != "none" else "none")
        for row in [r for r in refs if r["split"] == split]:
            fq = row.get(f"{split}_forget_quality")
            if fq is not None and row["model_utility"] is not None:
                ax.scatter(row["model_utility"], max(fq, 1e-30), marker="o", facecolors="none", edgecolors="gray",
                           s=90, label=row["method"])
        ax.axhline(0.05, color="red", lw=0.8, ls="--")
        ax.set_yscale("log")
        ax.set_title(split)
        ax.set_xlabel("model utility")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("forget quality (log)")
    handles, labels = axes[-1].get_legend_handles_labels()
    fig.legend(handles, labels, loc="center right", fontsize=8)
    fig.tight_layout(rect=(0, 0, 0.86, 1))
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    args = parse()
    started = time.time()
    if not args.cpu:
        torch.backends.cuda.matmul.allow_tf32 = True
    splits = [s for s in args.splits.split(",") if s]
    plan = PLAN
    if args.methods:
        wanted = {tuple((m.split(":") + ["none"])[:2]) for m in args.methods.split(",")}
        plan = [p for p in PLAN if p in wanted]
    runs: list[dict] = []
    todo = [("finetune", "full", None, None)]
    for split in splits:
        todo.append(("finetune", RETAIN_OF_FORGET[split], None, None))
        todo += [("unlearn", split, m, r) for m, r in plan]
    for kind, split, method, retain_mode in todo:
        if time.time() - started > args.deadline_s:
            print(f"deadline reached before {kind} {split} {method or ''}: run the command again to continue")
            break
        print(f"=== {kind} {split} {method or ''} {retain_mode or ''} ({time.time() - started:.0f} s)", flush=True)
        if kind == "finetune":
            finetune(args, split)
        else:
            runs.append(unlearn(args, split, method, retain_mode))
        write_outputs(args, runs, started)
    write_json_atomic(Path(args.work_dir) / "invocations.json", previous_invocations(args) + [time.time() - started])
    print(f"done in {time.time() - started:.0f} s")


if __name__ == "__main__":
    main()
