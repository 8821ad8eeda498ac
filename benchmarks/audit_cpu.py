"""RKL-U on TOFU forget01 on a CPU, followed epoch by epoch by TofuEvalCallback, then audited (rklu_llm.eval.audit).

    python benchmarks/audit_cpu.py --data_dir data/tofu --work_dir runs/audit_cpu \
        --results_dir benchmarks/results

A machine without a GPU cannot fine-tune on all of TOFU, so everything is small and LoRA:

1. the "original": the embedded SmolLM2-135M-Instruct fine-tuned (LoRA, merged) on the first ``--forget_items``
   forget01 items plus the first ``--retain_items`` items of retain99; the "oracle": the same on those retain items
   alone (``--retain_items 0``: the untouched base model), a model that never saw forget01. Both are evaluated on
   TOFU (first ``--eval_items`` items of each set, or of the forget set alone with ``--eval_sets forget``); the
   oracle's evaluation is the forget-quality reference, its membership audit the privleak reference;
2. RKL-U (LoRA student, LoRA augmented adapter, no retain data) unlearns those forget items with
   ``TofuEvalCallback(per_epoch=..., trainer=trainer, best_dir=...)``: an evaluation after every epoch, logged through
   ``trainer.log``, the epoch of best forget quality (at ``--min_model_utility`` when given) kept on disk;
3. the unlearned model is audited (``--audit_parts``: membership, extraction, leak@k, relearning next to the oracle
   and optionally the original, 8/4-bit quantization), the original and the oracle on membership (and extraction);
4. ``audit_cpu.json`` (every number), ``audit_cpu.md`` (tables) and ``audit_cpu_epochs.png`` (the per-epoch curve)
   go to ``--results_dir``.

On a shared, busy 2-core CPU one forward pass of SmolLM2 over 10 answers took about a minute, so the committed
results use the smallest settings that still show the curve (see the command in ``audit_cpu.md``): 20 forget items
taught, 5 evaluated, likelihood-only evaluations per epoch (``--no_generate``), membership and extraction audits.

Resumable: each finished step leaves its files under ``--work_dir`` and is skipped by a rerun; evaluations and
audits resume from their caches.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from a checkout without installing

from datasets import concatenate_datasets  # noqa: E402
from transformers import Trainer, TrainingArguments  # noqa: E402

from rklu_llm import UnlearnConfig, UnlearnTrainer, build_unlearning_dataset, load_model  # noqa: E402
from rklu_llm.data import QACollator, load_tofu, tokenize_qa  # noqa: E402
from rklu_llm.eval.audit import audit_summary_row, evaluate_audit  # noqa: E402
from rklu_llm.eval.callback import TofuEvalCallback  # noqa: E402
from rklu_llm.eval.tofu import evaluate_tofu, load_tofu_eval, summary_row  # noqa: E402
from rklu_llm.io import write_json_atomic  # noqa: E402
from rklu_llm.models import lora_config, staged_save  # noqa: E402

SPLIT = "forget01"
NAME = "audit_cpu"
FQ = f"{SPLIT}_forget_quality"


def parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data_dir", required=True, help="local TOFU folder")
    p.add_argument("--work_dir", required=True, help="models, evaluations and caches (resumable state)")
    p.add_argument("--results_dir", default=str(REPO / "benchmarks" / "results"))
    p.add_argument("--model", default="embedded:smollm2-135m-instruct")
    p.add_argument(
        "--retain_items",
        type=int,
        default=100,
        help="retain99 items in both fine-tunes; 0: the oracle is the untouched base model",
    )
    p.add_argument("--forget_items", type=int, default=40, help="first N forget01 items taught, unlearned, audited")
    p.add_argument("--per_epoch", default="full", choices=("full", "forget_quality"))
    p.add_argument("--eval_sets", default="all", help="'all', or 'forget' to evaluate the forget set alone")
    p.add_argument(
        "--no_generate",
        action="store_true",
        help="oracle and per-epoch evaluations score likelihoods only (no ROUGE-L): a slow CPU",
    )
    p.add_argument("--finetune_epochs", type=float, default=5)
    p.add_argument("--finetune_lr", type=float, default=2e-3)
    p.add_argument("--unlearn_epochs", type=float, default=5)
    p.add_argument("--unlearn_lr", type=float, default=1e-3)
    p.add_argument("--augment_epochs", type=float, default=5)
    p.add_argument("--teacher_alpha", type=float, default=4.0)
    p.add_argument("--batch_size", type=int, default=10)
    p.add_argument("--eval_items", type=int, default=20)
    p.add_argument("--eval_batch_size", type=int, default=20)
    p.add_argument("--max_new_tokens", type=int, default=40)
    p.add_argument(
        "--min_model_utility",
        type=float,
        default=None,
        help="floor of the best checkpoint (needs --per_epoch full and all sets)",
    )
    p.add_argument("--leak_k", type=int, default=5)
    p.add_argument("--leak_max_new_tokens", type=int, default=32)
    p.add_argument("--relearn_steps", type=int, default=10)
    p.add_argument("--relearn_lr", type=float, default=1e-4)
    p.add_argument("--relearn_batch_size", type=int, default=4)
    p.add_argument("--relearn_original", action="store_true", help="also attack the original (costs a third attack)")
    p.add_argument("--audit_parts", default="all", help="audit parts of the unlearned model (see eval.audit.PARTS)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--max_steps", type=int, default=-1, help="smoke tests only")
    return p.parse_args(argv)


def eval_kwargs(args, generate: bool | None = None) -> dict:
    sets = (SPLIT,) if args.eval_sets == "forget" else None
    return dict(
        batch_size=args.eval_batch_size,
        max_new_tokens=args.max_new_tokens,
        max_items=args.eval_items,
        sets=sets,
        generate=not args.no_generate if generate is None else generate,
    )


def forget_rows(args):
    return load_tofu(SPLIT, args.data_dir).select(range(args.forget_items))


def finetune(args, name: str, with_forget: bool) -> Path:
    """LoRA fine-tune (merged on save) on retain99[:retain_items] (+ the forget items), then a TOFU evaluation.
    Without any training item (the oracle with ``--retain_items 0``) the base model is saved as it is."""
    out = Path(args.work_dir) / name
    if (out / "tofu_eval.json").is_file():
        return out
    data = load_tofu("retain99", args.data_dir).select(range(args.retain_items))
    if with_forget:
        data = concatenate_datasets([data, forget_rows(args)])
    if (out / "model.safetensors").is_file():  # trained before, evaluation interrupted
        model, tokenizer = load_model(str(out))
    elif len(data) == 0:
        model, tokenizer = load_model(args.model)
        out.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(out)
        tokenizer.save_pretrained(out)
    else:
        model, tokenizer = load_model(args.model)
        from peft import get_peft_model

        model = get_peft_model(model, lora_config(16, 32))
        training = TrainingArguments(
            output_dir=str(out),
            num_train_epochs=args.finetune_epochs,
            learning_rate=args.finetune_lr,
            per_device_train_batch_size=args.batch_size,
            warmup_steps=0.1,
            save_strategy="no",
            report_to="none",
            logging_steps=1,
            use_cpu=True,
            seed=0,
            max_steps=args.max_steps,
            disable_tqdm=True,
        )
        train = tokenize_qa(data, tokenizer, 512).select_columns(["input_ids", "labels"]).shuffle(seed=0)
        trainer = Trainer(
            model=model,
            args=training,
            train_dataset=train,
            processing_class=tokenizer,
            data_collator=QACollator(tokenizer.pad_token_id),
        )
        trainer.train()
        trainer.model = trainer.model.merge_and_unload()
        staged_save(trainer, out)
        model = trainer.model
    # the original's ROUGE-L is the curve's starting point: generated even with --no_generate
    evaluate_tofu(model, tokenizer, SPLIT, args.data_dir, output_dir=out, **eval_kwargs(args, with_forget or None))
    return out


def unlearn(args, original: Path, oracle: Path) -> dict:
    work = Path(args.work_dir)
    record = work / "rklu_epochs.json"
    if record.is_file():
        return json.loads(record.read_text())
    model, tokenizer = load_model(str(original))
    dataset = build_unlearning_dataset(tokenizer, forget_rows(args), max_length=512, seed=0)
    config = UnlearnConfig(
        output_dir=str(work / "rklu"),
        method="rklu",
        teacher_alpha=args.teacher_alpha,
        use_lora=True,
        augment_lora=True,
        augment_epochs=args.augment_epochs,
        augment_learning_rate=args.finetune_lr,
        learning_rate=args.unlearn_lr,
        num_train_epochs=args.unlearn_epochs,
        per_device_train_batch_size=args.batch_size,
        lora_r=16,
        lora_alpha=32,
        save_strategy="no",
        report_to="none",
        logging_steps=2,
        use_cpu=True,
        seed=0,
        disable_tqdm=True,
        max_steps=args.max_steps,
        augment_max_steps=args.max_steps,
    )
    callback = TofuEvalCallback(
        tokenizer,
        SPLIT,
        args.data_dir,
        oracle / "tofu_eval.json",
        per_epoch=args.per_epoch,
        best_dir=work / "rklu" / "best_forget_quality",
        min_model_utility=args.min_model_utility if args.per_epoch == "full" else None,
        **eval_kwargs(args),
    )
    trainer = UnlearnTrainer(
        model=model, args=config, train_dataset=dataset, processing_class=tokenizer, callbacks=[callback]
    )
    callback.trainer = trainer
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    student = trainer.accelerator.unwrap_model(trainer.model)
    if "augmented" in student.peft_config:  # the augmented adapter never travels with the unlearned model
        student.delete_adapter("augmented")
    trainer.model = student.merge_and_unload()
    final_dir = work / "rklu" / "final"
    staged_save(trainer, final_dir)
    logged = [entry for entry in trainer.state.log_history if any(k.startswith("tofu/") for k in entry)]
    result = {
        "epochs": callback.history,
        "peak_epoch": callback.peak_epoch,
        "best_epoch": callback.best_epoch,
        "final": callback.final,
        "peak": callback.peak,
        "train_seconds_without_eval": seconds - callback.eval_seconds,
        "eval_seconds": callback.eval_seconds,
        "logged_rows": logged,
        "final_dir": "rklu/final",
    }
    write_json_atomic(record, result)
    return result


def audit(args, path: Path, parts: str, **kwargs) -> dict:
    model, tokenizer = load_model(str(path))
    return evaluate_audit(
        model,
        tokenizer,
        SPLIT,
        parts=parts,
        data_dir=args.data_dir,
        output_dir=path,
        max_items=args.eval_items,
        batch_size=args.eval_batch_size,
        max_new_tokens=args.max_new_tokens,
        leak_k=args.leak_k,
        leak_max_new_tokens=args.leak_max_new_tokens,
        **kwargs,
    )


def plot(path: Path, rows: list[dict], title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [row["epoch"] for row in rows]
    fig, left = plt.subplots(figsize=(7.5, 4.4))
    left.plot(epochs, [row[FQ] for row in rows], "o-", color="tab:red", label="forget quality (KS p, log)")
    left.axhline(0.05, color="tab:red", ls="--", lw=0.8)
    left.set_yscale("log")
    left.set_xlabel("epoch of unlearning (0 = the original)")
    left.set_ylabel("forget quality", color="tab:red")
    right = left.twinx()
    for key, label, color in (
        ("model_utility", "model utility", "tab:blue"),
        (f"{SPLIT}_probability", "forget probability", "tab:green"),
        (f"{SPLIT}_rouge_l_recall", "forget ROUGE-L recall", "tab:olive"),
        ("retain_probability", "retain probability", "tab:purple"),
    ):
        values = [float("nan") if row.get(key) is None else row[key] for row in rows]
        if any(v == v for v in values):  # not all NaN: the series was evaluated
            right.plot(epochs, values, "s-", ms=4, color=color, label=label)
    right.set_ylim(0, 1)
    handles = left.get_legend_handles_labels()[0] + right.get_legend_handles_labels()[0]
    labels = left.get_legend_handles_labels()[1] + right.get_legend_handles_labels()[1]
    left.legend(handles, labels, fontsize=8, loc="center right")
    left.set_title(title, fontsize=9)
    left.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def fmt(value) -> str:
    if value is None:
        return "n/a"
    return (
        f"{value:.2e}"
        if isinstance(value, float) and 0 < abs(value) < 0.01
        else (f"{value:.3f}" if isinstance(value, float) else str(value))
    )


def main(argv=None) -> None:
    args = parse(argv)
    torch.set_num_threads(args.threads)
    started = time.time()
    work = Path(args.work_dir)
    original = finetune(args, "original", with_forget=True)
    oracle = finetune(args, "oracle", with_forget=False)
    print(f"=== fine-tunes done ({time.time() - started:.0f} s)", flush=True)
    run = unlearn(args, original, oracle)
    print(f"=== unlearning done ({time.time() - started:.0f} s)", flush=True)
    oracle_audit = audit(args, oracle, "membership")
    original_audit = audit(args, original, "membership,extraction", membership_reference=oracle)
    final = work / "rklu" / "final"
    unlearned_audit = audit(
        args,
        final,
        args.audit_parts,
        membership_reference=oracle,
        relearn_original=original if args.relearn_original else None,
        relearn_oracle=oracle,
        relearn_steps=args.relearn_steps,
        relearn_learning_rate=args.relearn_lr,
        relearn_batch_size=args.relearn_batch_size,
    )
    print(f"=== audits done ({time.time() - started:.0f} s)", flush=True)

    original_eval = load_tofu_eval(original)
    from rklu_llm.eval.tofu import compare_to_reference

    items = original_eval["sets"][f"{SPLIT}_perturbed"]["items"]
    epoch0 = {"epoch": 0.0, **summary_row(original_eval)}
    epoch0[FQ] = compare_to_reference(items["truth_ratio"], items["question"], oracle / "tofu_eval.json", SPLIT)[
        "forget_quality"
    ]
    rows = [epoch0, *run["epochs"]]
    out = Path(args.results_dir)
    out.mkdir(parents=True, exist_ok=True)
    command = " ".join(["python", "benchmarks/audit_cpu.py", *(argv if argv is not None else sys.argv[1:])])
    settings = {k: v for k, v in vars(args).items() if k not in ("work_dir", "results_dir", "data_dir")}
    audits = {
        "oracle": audit_summary_row(oracle_audit),
        "original": audit_summary_row(original_audit),
        "unlearned (rklu, final epoch)": audit_summary_row(unlearned_audit),
    }
    write_json_atomic(
        out / f"{NAME}.json",
        {
            "device": "cpu (2 threads)",
            "command": command,
            "settings": settings,
            "epochs": rows,
            "peak_epoch": run["peak_epoch"],
            "best_epoch": run["best_epoch"],
            "logged_rows": run["logged_rows"],
            "audits": audits,
            "relearn": {
                role: {k: v for k, v in entry.items() if k in ("before", "after", "delta", "recovered_fraction")}
                for role, entry in unlearned_audit.get("relearn", {}).get("models", {}).items()
            },
            "quantization": {k: v for k, v in unlearned_audit.get("quantization", {}).items() if k != "runs"},
            "leak_examples": {
                kind: {
                    key: unlearned_audit["leak"][kind]["items"][key][:3]
                    for key in ("question", "prompt_suffix", "gold", "candidates", "leaked")
                }
                for kind in ("question", "fill_in_blank")
            }
            if "leak" in unlearned_audit
            else None,
        },
    )
    title = (
        f"RKL-U on TOFU {SPLIT}, SmolLM2-135M + LoRA, CPU run (2 threads): per-epoch TofuEvalCallback\n"
        f"{args.retain_items} retain items in fine-tuning; first {args.eval_items} items of "
        + ("every eval set" if args.eval_sets == "all" else "the forget set (the only set evaluated)")
    )
    plot(out / f"{NAME}_epochs.png", rows, title)
    lines = [
        f"# Audit of an RKL-U run on a CPU (TOFU {SPLIT}, SmolLM2-135M-Instruct + LoRA)",
        "",
        f"Command: `{command}` (2-core CPU, {time.time() - started:.0f} s for this invocation). Settings in "
        f"`{NAME}.json`.",
        "",
        f"## Per-epoch evaluation (TofuEvalCallback, per_epoch='{args.per_epoch}')",
        "",
        "| epoch | forget quality | model utility | forget P | forget ROUGE-L | retain P |",
        "|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['epoch']:g} | {fmt(row[FQ])} | {fmt(row.get('model_utility'))} | "
            f"{fmt(row.get(f'{SPLIT}_probability'))} | {fmt(row.get(f'{SPLIT}_rouge_l_recall'))} | "
            f"{fmt(row.get('retain_probability'))} |"
        )
    floor = f" at model utility >= {args.min_model_utility}" if args.min_model_utility is not None else ""
    lines += [
        "",
        f"Peak epoch {run['peak_epoch']}; best checkpoint (highest forget quality{floor}) epoch {run['best_epoch']}.",
        "",
        "## Audit",
        "",
    ]
    keys = sorted({k for row in audits.values() for k in row})
    lines += ["| metric | " + " | ".join(audits) + " |", "|---" * (len(audits) + 1) + "|"]
    for key in keys:
        lines.append(f"| {key} | " + " | ".join(fmt(row.get(key)) for row in audits.values()) + " |")
    if "relearn" in unlearned_audit:
        lines += [
            "",
            "Relearning attack (odd-position forget items, after fine-tuning on the even ones):",
            "",
            "| model | P before | P after | ROUGE-L before | ROUGE-L after |",
            "|---|---|---|---|---|",
        ]
        for role, entry in unlearned_audit["relearn"]["models"].items():
            lines.append(
                f"| {role} | {fmt(entry['before']['probability'])} | {fmt(entry['after']['probability'])} "
                f"| {fmt(entry['before']['rouge_l_recall'])} | {fmt(entry['after']['rouge_l_recall'])} |"
            )
    if "quantization" in unlearned_audit:
        lines += [
            "",
            f"Quantization ({unlearned_audit['quantization']['library']}), forget set:",
            "",
            "| weights | P | ROUGE-L |",
            "|---|---|---|",
        ]
        for bits, entry in unlearned_audit["quantization"]["runs"].items():
            lines.append(
                f"| {'full precision' if bits == 'none' else bits + '-bit round trip'} | "
                f"{fmt(entry['probability'])} | {fmt(entry['rouge_l_recall'])} |"
            )
    (out / f"{NAME}.md").write_text("\n".join(lines) + "\n")
    print(f"done in {time.time() - started:.0f} s")


if __name__ == "__main__":
    main()
