"""The TOFU benchmark on the embedded SmolLM2-135M-Instruct: every method, forget01/05/10, one command.

    python benchmarks/tofu.py --data_dir ../shared/data/tofu --work_dir /root/bench --results_dir benchmarks/results

1. fine-tunes the model on TOFU ``full`` (the "original") and on ``retain90/95/99`` (the oracles) with
   recipes/finetune_tofu.py, each evaluated and stored (the oracles' evaluations are the forget-quality references);
2. unlearns forget01/05/10 with every method and no retain data, and RKL-U, GD, NPO also with the retain NLL term;
   the augmented model of a split is built once and shared by rklu / fklu / ta (its time is counted in each);
3. follows every run's forget quality after each unlearning epoch (forget-set likelihoods only, a fraction of a full
   evaluation) and fully evaluates the final epoch and the epoch of peak forget quality (whose weights are kept in
   memory); ``--every_epoch`` splits get a full evaluation after every epoch instead, ``--track_peak none`` leaves
   only the final one;
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
sys.path.insert(0, str(REPO))  # run from a checkout without installing

from rklu_llm import METHODS, UnlearnConfig, UnlearnTrainer, build_unlearning_dataset, load_model, load_refusals  # noqa: E402
from rklu_llm.data import FORGET_OF_RETAIN, RETAIN_OF_FORGET, load_tofu, tokenize_qa  # noqa: E402
from rklu_llm.eval.callback import TofuEvalCallback  # noqa: E402
from rklu_llm.eval.io import write_json_atomic  # noqa: E402
from rklu_llm.eval.tofu import load_tofu_eval, summary_row  # noqa: E402
from rklu_llm.teacher import build_augmented_model, is_augmented_dir  # noqa: E402

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
    p.add_argument("--every_epoch", default="none", help="splits fully evaluated after every epoch")
    p.add_argument("--track_peak", default="all",
                   help="splits (or all / none) whose forget quality is followed every epoch, with full evaluations "
                        "of the peak and the final epoch; the other splits are evaluated after the last epoch only")
    p.add_argument("--finetune_lr", type=float, default=2e-4)
    p.add_argument("--finetune_epochs", type=float, default=5)
    p.add_argument("--unlearn_lr", type=float, default=1e-4)
    p.add_argument("--unlearn_epochs", type=float, default=5)
    p.add_argument("--augment_epochs", type=float, default=10)
    p.add_argument("--augment_lr", type=float, default=None, help="augmentation lr (default: --finetune_lr)")
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
    p.add_argument("--lora", action="store_true", help="LoRA fine-tunes (merged) and LoRA students (e.g. on a CPU)")
    p.add_argument("--augment_lora", action="store_true", help="the augmented model as a LoRA adapter on the original")
    return p.parse_args()


def finetune(args, split: str) -> Path:
    """recipes/finetune_tofu.py on ``split``; returns the model directory (with tofu_eval.json, train_metrics.json)."""
    from rklu_llm.scripts import finetune as finetune_tofu

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
    if split == "full":  # evaluated on the benchmark's forget splits (an oracle: on its own one)
        argv += ["--eval_forget_splits", args.splits]
    argv += ["--use_cpu"] if args.cpu else ["--bf16", "--tf32", "true"]
    if args.train_max_items:
        argv += ["--max_train_items", str(args.train_max_items)]
    if args.lora:
        argv += ["--use_lora", "true"]
    if args.eval_max_items:
        argv += ["--eval_max_items", str(args.eval_max_items)]
    finetune_tofu.main(argv)
    return out


def unlearning_config(args, output_dir: Path, method: str, retain_mode: str, augmented: Path | None) -> UnlearnConfig:
    return UnlearnConfig(
        output_dir=str(output_dir), method=method, retain_mode=retain_mode, teacher_alpha=args.teacher_alpha,
        augmented_model_path=None if augmented is None else str(augmented), augment_epochs=args.augment_epochs,
        augment_learning_rate=args.augment_lr or args.finetune_lr, learning_rate=args.unlearn_lr,
        num_train_epochs=args.unlearn_epochs,
        max_steps=args.max_steps, augment_max_steps=args.max_steps, per_device_train_batch_size=args.batch_size,
        bf16=not args.cpu, tf32=None if args.cpu else True, use_cpu=args.cpu, save_strategy="no", report_to="none",
        logging_steps=5, disable_tqdm=True, seed=0, use_lora=args.lora and METHODS[method].trains,
        augment_lora=args.augment_lora,
    )


def augmented_model(args, split: str, original, tokenizer) -> tuple[Path, float]:
    """The split's augmented model (built once, full fine-tune on the forget set) and the seconds it took."""
    out = Path(args.work_dir) / "augmented" / split
    timing = Path(args.work_dir) / "augmented" / f"{split}.json"
    if timing.is_file() and is_augmented_dir(out):
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
    evaluation = "final"
    if spec.trains and split in args.every_epoch.split(","):
        evaluation = "every_epoch"
    elif spec.trains and (args.track_peak == "all" or split in args.track_peak.split(",")):
        evaluation = "track_peak"
    callback = TofuEvalCallback(tokenizer, split, args.data_dir, reference,
                                per_epoch="forget_quality" if evaluation == "track_peak" else "full", **eval_kwargs)
    config = unlearning_config(args, work / "runs" / name, method, retain_mode, augmented)
    trainer = UnlearnTrainer(model=model, args=config, train_dataset=dataset, processing_class=tokenizer,
                             callbacks=None if evaluation == "final" else [callback])
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
    result = {
        "name": name, "split": split, "method": method, "retain_mode": retain_mode,
        "train_seconds": train_seconds, "augment_seconds": augment_seconds,
        "wall_seconds": train_seconds + augment_seconds, "peak_memory_gib": max(peaks) / 2**30 if peaks else None,
        "eval_seconds": callback.eval_seconds, "evaluation": evaluation, "final": callback.final,
        "peak": callback.peak if evaluation != "final" else None, "epochs": callback.history,
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
            other_oracle = split != "full" and FORGET_OF_RETAIN[split] != forget_split
            if forget_split not in args.splits.split(",") or other_oracle:
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


def previous_invocations(args) -> list[dict]:
    """``{"seconds", "command"}`` of the earlier invocations on this ``--work_dir``."""
    path = Path(args.work_dir) / "invocations.json"
    entries = json.loads(path.read_text()) if path.is_file() else []
    return [e if isinstance(e, dict) else {"seconds": e, "command": None} for e in entries]


def this_invocation(started: float) -> dict:
    return {"seconds": time.time() - started, "command": " ".join(["python", "benchmarks/tofu.py", *sys.argv[1:]])}


def write_outputs(args, runs: list[dict], started: float) -> None:
    out = Path(args.results_dir)
    out.mkdir(parents=True, exist_ok=True)
    refs = reference_rows(args)
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    settings = {k: v for k, v in vars(args).items() if k not in ("work_dir", "results_dir", "deadline_s")}
    finetune_seconds = {r["name"]: r["wall_seconds"] for r in refs}
    write_json_atomic(out / f"{NAME}.json", {"device": device, "settings": settings, "references": refs, "runs": runs,
                                "finetune_train_seconds": finetune_seconds})

    invocations = previous_invocations(args) + [this_invocation(started)]
    commands = [f"`{i['command']}` ({i['seconds']:.0f} s)" for i in invocations if i["command"]]
    lines = [f"# TOFU on SmolLM2-135M-Instruct ({device})", "",
             "Commands: " + ("; then ".join(commands) or "not recorded") + ". Settings in the JSON. "
             "FQ = forget quality (KS p-value vs the oracle), MU = model utility; *final* = after the last epoch, "
             "*peak* = the epoch with the highest FQ (FQ followed after every epoch, the peak epoch's weights then "
             "fully evaluated; n/a: evaluated after the last epoch only). P / R = answer probability / ROUGE-L "
             "recall. Wall = unlearning seconds (augmentation included, evaluations excluded); memory = peak "
             "allocated during training.", ""]
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
            peak_text = f"{fmt(p.get(f'{split}_forget_quality'), 'fq')} ({p['epoch']:g})" if p else "n/a"
            lines.append(
                f"| {split} | {run['method']} | {run['retain_mode']} | {fmt(f.get(f'{split}_forget_quality'), 'fq')} "
                f"| {fmt(f['model_utility'])} | {peak_text} | {fmt(p['model_utility']) if p else 'n/a'} | "
                f"{fmt(f.get(f'{split}_probability'))} | {fmt(f.get(f'{split}_rouge_l_recall'))} | "
                f"{fmt(f.get('retain_probability'))} | {fmt(f.get('retain_rouge_l_recall'))} | "
                f"{fmt(run['wall_seconds'], '.0f')} | {fmt(run['peak_memory_gib'], '.2f')} |")
    seconds = [i["seconds"] for i in invocations]
    lines += ["", f"Wall time of the benchmark: {sum(seconds):.0f} s over {len(seconds)} invocation(s) "
              f"({', '.join(f'{s:.0f}' for s in seconds)} s), evaluations included; of it, unlearning evaluations "
              f"{sum(r.get('eval_seconds', 0.0) for r in runs):.0f} s."]
    (out / f"{NAME}.md").write_text("\n".join(lines) + "\n")
    plot(out / f"{NAME}_fq_vs_mu.png", refs, runs, [s for s in SPLITS if s in args.splits.split(",")])


def plot(path: Path, refs: list[dict], runs: list[dict], splits: list[str]) -> None:
    """Forget quality (log) against model utility, one panel per split: a filled marker at the peak epoch, a hollow
    one at the final epoch (joined), gray circles for the original and the oracle."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(splits), figsize=(5 * len(splits), 4.2), sharey=True, squeeze=False)
    markers = dict(rklu="*", fklu="P", ga="v", gd="^", npo="o", dpo="s", idk="D", ta="X")
    colors = {f"{m}+{r}": plt.get_cmap("tab20")(i % 20) for i, (m, r) in enumerate(PLAN)}
    legend = {}
    for ax, split in zip(axes[0], splits):
        for run in [r for r in runs if r["split"] == split]:
            points = [(row["model_utility"], row.get(f"{split}_forget_quality")) for row in (run["peak"], run["final"])
                      if row is not None]
            points = [(mu, max(fq, 1e-30)) for mu, fq in points if mu is not None and fq is not None]
            if not points:
                continue
            label = run["method"] + ("" if run["retain_mode"] == "none" else f"+{run['retain_mode']}")
            color = colors.get(f"{run['method']}+{run['retain_mode']}", "black")
            marker, size = markers.get(run["method"], "o"), 90 if run["method"] == "rklu" else 45
            legend[label] = ax.scatter(*points[0], marker=marker, s=size, color=color,
                                       edgecolors="black" if run["retain_mode"] != "none" else "none")
            if len(points) == 2 and points[1] != points[0]:
                ax.plot(*zip(*points), color=color, lw=0.6, alpha=0.6)
                ax.scatter(*points[1], marker=marker, s=size, facecolors="none", edgecolors=color)
        for row in [r for r in refs if r["split"] == split]:
            fq = row.get(f"{split}_forget_quality")
            if fq is not None and row["model_utility"] is not None:
                legend[row["method"]] = ax.scatter(row["model_utility"], max(fq, 1e-30), marker="o",
                                                   facecolors="none", edgecolors="gray", s=90)
        ax.axhline(0.05, color="red", lw=0.8, ls="--")
        ax.set_yscale("log")
        ax.set_title(f"{split} (filled: peak epoch, hollow: final)", fontsize=10)
        ax.set_xlabel("model utility")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("forget quality (log)")
    fig.legend(list(legend.values()), list(legend), loc="center right", fontsize=8)
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
    write_json_atomic(Path(args.work_dir) / "invocations.json", previous_invocations(args) + [this_invocation(started)])
    print(f"done in {time.time() - started:.0f} s")


if __name__ == "__main__":
    main()
