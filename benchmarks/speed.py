"""Step time and peak memory of every method at the same batch size, as ratios to gradient ascent; optionally the
whole RKL-U run (augmentation + distillation) against retraining the retain90 oracle, all in one run.

    python benchmarks/speed.py --data_dir ../shared/data/tofu --model /root/bench/models/full --end_to_end

Each configuration gets a fresh trainer on TOFU forget10 (batch ``--batch_size``, bf16 autocast over fp32 weights);
``--warmup`` steps are run before timing ``--steps`` optimizer steps (CUDA-synchronised) and reading the peak
allocated memory of those steps. Writes ``speed_smollm2.json`` and ``speed_smollm2.md`` into ``--results_dir``.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from transformers import TrainerCallback

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from a checkout without installing

from rklu_llm import UnlearnConfig, UnlearnTrainer, build_unlearning_dataset, load_model, load_refusals  # noqa: E402
from rklu_llm.data import load_tofu, tokenize_qa  # noqa: E402
from rklu_llm.teacher import build_augmented_model  # noqa: E402

#: label -> UnlearnConfig overrides (the augmented model path is filled in per variant)
CONFIGS = {
    "ga": dict(method="ga"),
    "gd (+rt)": dict(method="gd", retain_mode="rt"),
    "npo": dict(method="npo"),
    "dpo": dict(method="dpo"),
    "idk": dict(method="idk"),
    "rklu (augmented = full copy)": dict(method="rklu", augmented="full"),
    "rklu (augmented = LoRA on the original)": dict(method="rklu", augmented="lora"),
    "fklu (augmented = LoRA on the original)": dict(method="fklu", augmented="lora"),
    "rklu + kl (augmented = LoRA)": dict(method="rklu", retain_mode="kl", augmented="lora"),
    "rklu, LoRA student (one shared base)": dict(method="rklu", augmented="lora", use_lora=True),
}


class StepTimer(TrainerCallback):
    def __init__(self, warmup: int):
        self.warmup, self.times, self.start, self.peak = warmup, [], None, None

    def on_step_begin(self, args, state, control, **kwargs):
        torch.cuda.synchronize()
        if state.global_step == self.warmup:
            torch.cuda.reset_peak_memory_stats()
        self.start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        torch.cuda.synchronize()
        if state.global_step > self.warmup:
            self.times.append(time.perf_counter() - self.start)
            self.peak = torch.cuda.max_memory_allocated()


def config(args, output_dir, **overrides) -> UnlearnConfig:
    return UnlearnConfig(
        output_dir=str(output_dir), per_device_train_batch_size=args.batch_size, learning_rate=1e-5, bf16=True,
        tf32=True, save_strategy="no", report_to="none", logging_steps=1000, disable_tqdm=True, seed=0,
        augment_learning_rate=args.finetune_lr, **overrides,
    )


def measure(args, label: str, spec: dict, augmented: dict, data) -> dict:
    spec = dict(spec)
    kind = spec.pop("augmented", None)
    model, tokenizer = load_model(args.model)
    model.to("cuda")
    forget, retain, refusals = data
    cfg = config(args, Path(args.work_dir) / "speed" / "run", max_steps=args.warmup + args.steps,
                 augmented_model_path=str(augmented[kind]) if kind else None, augment_lora=kind == "lora", **spec)
    dataset = build_unlearning_dataset(
        tokenizer, forget, retain if cfg.retain_mode != "none" else None,
        refusals if cfg.spec.needs_refusals else None, max_length=512, seed=0,
    )
    timer = StepTimer(args.warmup)
    trainer = UnlearnTrainer(model=model, args=cfg, train_dataset=dataset, processing_class=tokenizer,
                             callbacks=[timer])
    trainer.train()
    row = {"config": label, "step_ms": 1000 * statistics.median(timer.times), "peak_gib": timer.peak / 2**30,
           "steps_timed": len(timer.times)}
    del trainer, model
    gc.collect()
    torch.cuda.empty_cache()
    return row


def build_augmented(args, forget) -> dict:
    """One augmented model per kind (its quality is irrelevant to speed: a few steps)."""
    model, tokenizer = load_model(args.model)
    model.to("cuda")
    tokenized = tokenize_qa(forget, tokenizer, 512)
    out = {}
    for kind in ("full", "lora"):
        cfg = config(args, Path(args.work_dir) / "speed" / f"aug-{kind}", method="rklu", augment_max_steps=2,
                     augment_lora=kind == "lora")
        out[kind] = build_augmented_model(model, tokenizer, tokenized, cfg, Path(args.work_dir) / "speed" / kind)
    del model
    torch.cuda.empty_cache()
    return out


def end_to_end(args) -> dict:
    """Wall seconds of a complete RKL-U run on forget10 (``--augment_epochs`` augmentation + ``--unlearn_epochs``
    distillation epochs: ``trainer.train()``) and of retraining the retain90 oracle (``--finetune_epochs``,
    recipes/finetune_tofu.py's ``train_runtime``), same batch size and device; model loading excluded from both."""
    from rklu_llm.scripts import finetune as finetune_tofu

    work = Path(args.work_dir) / "speed"
    finetune_tofu.main([
        "--model", args.base_model, "--split", "retain90", "--data_dir", args.data_dir, "--output_dir",
        str(work / "retain90"), "--learning_rate", str(args.finetune_lr),
        "--num_train_epochs", str(args.finetune_epochs), "--per_device_train_batch_size", str(args.batch_size),
        "--bf16", "--tf32", "true", "--save_strategy", "no", "--report_to", "none", "--disable_tqdm", "true",
        "--skip_eval",
    ])
    retrain = json.loads((work / "retain90" / "train_metrics.json").read_text())["train_runtime"]
    model, tokenizer = load_model(args.model)
    model.to("cuda")
    cfg = config(args, work / "rklu_e2e", method="rklu", num_train_epochs=args.unlearn_epochs,
                 augment_epochs=args.augment_epochs, augment_lora=args.augment_lora, learning_rate=args.unlearn_lr)
    dataset = build_unlearning_dataset(tokenizer, load_tofu("forget10", args.data_dir), max_length=512)
    start = time.perf_counter()
    trainer = UnlearnTrainer(model=model, args=cfg, train_dataset=dataset, processing_class=tokenizer)
    trainer.train()
    torch.cuda.synchronize()
    rklu = time.perf_counter() - start
    return {"retrain_retain90_seconds": retrain, "rklu_forget10_seconds": rklu, "ratio": rklu / retrain,
            "augment_epochs": args.augment_epochs, "unlearn_epochs": args.unlearn_epochs,
            "augment_lora": args.augment_lora, "finetune_epochs": args.finetune_epochs}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data_dir", required=True)
    p.add_argument("--model", required=True, help="the TOFU fine-tuned model (e.g. <work_dir>/models/full)")
    p.add_argument("--base_model", default="embedded:smollm2-135m-instruct", help="what the oracle retrains from")
    p.add_argument("--work_dir", default="/tmp/rklu_speed")
    p.add_argument("--results_dir", default=str(REPO / "benchmarks" / "results"))
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--finetune_lr", type=float, default=2e-4)
    p.add_argument("--unlearn_lr", type=float, default=1e-4)
    p.add_argument("--finetune_epochs", type=float, default=5, help="end to end: epochs of the oracle's retraining")
    p.add_argument("--augment_epochs", type=float, default=10, help="end to end: RKL-U augmentation epochs")
    p.add_argument("--unlearn_epochs", type=float, default=5, help="end to end: RKL-U distillation epochs")
    p.add_argument("--augment_lora", action="store_true", help="end to end: the augmented model as a LoRA adapter")
    p.add_argument("--end_to_end", action="store_true", help="also time RKL-U end to end vs retraining retain90")
    args = p.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = True

    forget = load_tofu("forget10", args.data_dir)
    data = (forget, load_tofu("retain90", args.data_dir), load_refusals())
    augmented = build_augmented(args, forget)
    rows = [measure(args, label, spec, augmented, data) for label, spec in CONFIGS.items()]
    ga = next(r for r in rows if r["config"] == "ga")
    for row in rows:
        row["step_ratio_to_ga"] = row["step_ms"] / ga["step_ms"]
        row["memory_ratio_to_ga"] = row["peak_gib"] / ga["peak_gib"]
    e2e = end_to_end(args) if args.end_to_end else None

    device = torch.cuda.get_device_name(0)
    out = Path(args.results_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "speed_smollm2.json").write_text(json.dumps(
        {"device": device, "settings": vars(args), "rows": rows, "end_to_end": e2e}, indent=2))
    lines = [f"# Step time and peak memory, SmolLM2-135M, TOFU forget10, batch {args.batch_size} ({device})", "",
             f"Command: `{' '.join(['python', 'benchmarks/speed.py', *sys.argv[1:]])}`; median of {args.steps} "
             f"steps after {args.warmup} warm-up steps, "
             "bf16 autocast, fp32 master weights, frozen copies in bf16.", "",
             "| configuration | step ms | × GA | peak GiB | × GA |", "|---|---|---|---|---|"]
    lines += [f"| {r['config']} | {r['step_ms']:.1f} | {r['step_ratio_to_ga']:.2f} | {r['peak_gib']:.2f} | "
              f"{r['memory_ratio_to_ga']:.2f} |" for r in rows]
    if e2e:
        lines += ["", f"RKL-U end to end on forget10 ({args.augment_epochs:g} augmentation"
                      f"{' (LoRA)' if args.augment_lora else ''} + {args.unlearn_epochs:g} distillation epochs): "
                      f"{e2e['rklu_forget10_seconds']:.1f} s; retraining the retain90 oracle "
                      f"({args.finetune_epochs:g} epochs): "
                      f"{e2e['retrain_retain90_seconds']:.1f} s; ratio {e2e['ratio']:.3f}."]
    (out / "speed_smollm2.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
