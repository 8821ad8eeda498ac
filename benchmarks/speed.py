"""Step time and peak memory of every method at the same batch size, as ratios to gradient ascent; optionally the
whole RKL-U run (augmentation + distillation) against retraining the retain90 oracle, with the augmentation length
as a knob and its effect on forget quality, all in one run.

    python benchmarks/speed.py --data_dir data/tofu --model /root/bench/models/full --end_to_end \\
        --augment_epochs 1,2,5,10
    python benchmarks/speed.py --cpu --data_dir data/tofu --model <tiny model> --configs ga,npo \\
        --steps 2 --warmup 1 --train_max_items 32 --end_to_end --augment_epochs 1 --unlearn_epochs 1 \\
        --finetune_epochs 1 --results_dir /tmp/speed                                   # CPU smoke test, not a result

Each configuration gets a fresh trainer on TOFU forget10 (batch ``--batch_size``; on a GPU bf16 autocast over fp32
weights); ``--warmup`` steps are run before timing ``--steps`` optimizer steps (CUDA-synchronised) and reading the
peak allocated GPU memory of those steps (not measured on a CPU). The configurations are the table below plus every
other language-model method of ``rklu_llm.config.METHODS`` (``--configs`` picks a subset by label or method).

``--end_to_end``: wall seconds of retraining the retain90 oracle (``--finetune_epochs``) and, for every
``--augment_epochs`` value, of a complete RKL-U run on forget10 (that many augmentation epochs, then
``--unlearn_epochs`` distillation epochs), model loading excluded; each RKL-U model's forget quality against the
retrained oracle (forget-set likelihoods only, ``--protocol``) shows what a shorter augmentation costs.

Writes ``speed_smollm2.json`` and ``speed_smollm2.md`` into ``--results_dir``.
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

from rklu_llm import METHODS, UnlearnConfig, UnlearnTrainer, build_unlearning_dataset, load_model, load_refusals  # noqa: E402
from rklu_llm.data import load_tofu, tokenize_qa  # noqa: E402
from rklu_llm.eval.tofu import PROTOCOLS, evaluate_tofu  # noqa: E402
from rklu_llm.io import write_json_atomic  # noqa: E402
from rklu_llm.paths import portable_path  # noqa: E402
from rklu_llm.teacher import build_augmented_model  # noqa: E402

#: label -> UnlearnConfig overrides (the augmented model path is filled in per variant)
CONFIGS = {
    "ga": {"method": "ga"},
    "gd (+rt)": {"method": "gd", "retain_mode": "rt"},
    "npo": {"method": "npo"},
    "dpo": {"method": "dpo"},
    "idk": {"method": "idk"},
    "rklu (augmented = full copy)": {"method": "rklu", "augmented": "full"},
    "rklu (augmented = LoRA on the original)": {"method": "rklu", "augmented": "lora"},
    "fklu (augmented = LoRA on the original)": {"method": "fklu", "augmented": "lora"},
    "rklu + kl (augmented = LoRA)": {"method": "rklu", "retain_mode": "kl", "augmented": "lora"},
    "rklu, LoRA student (one shared base)": {"method": "rklu", "augmented": "lora", "use_lora": True},
}


def all_configs() -> dict[str, dict]:
    """CONFIGS plus every other trained language-model method of METHODS (augmented model as LoRA if it needs one)."""
    configs = dict(CONFIGS)
    listed = {spec["method"] for spec in CONFIGS.values()}
    for method, spec in METHODS.items():
        if method not in listed and spec.trains and getattr(spec, "batch", "lm") != "classifier":
            configs[method] = {"method": method, **({"augmented": "lora"} if spec.needs_augmented else {})}
    return configs


def synchronize(args) -> None:
    if not args.cpu:
        torch.cuda.synchronize()


class StepTimer(TrainerCallback):
    """Seconds of every optimizer step after ``warmup`` and the peak GPU memory allocated during them."""

    def __init__(self, args, warmup: int):
        self.args, self.warmup, self.times, self.start, self.peak = args, warmup, [], None, None

    def on_step_begin(self, args, state, control, **kwargs):
        synchronize(self.args)
        if state.global_step == self.warmup and not self.args.cpu:
            torch.cuda.reset_peak_memory_stats()
        self.start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        synchronize(self.args)
        if state.global_step > self.warmup:
            self.times.append(time.perf_counter() - self.start)
            self.peak = None if self.args.cpu else torch.cuda.max_memory_allocated()


def config(args, output_dir, **overrides) -> UnlearnConfig:
    precision = {"use_cpu": True} if args.cpu else {"bf16": True, "tf32": True}
    return UnlearnConfig(
        output_dir=str(output_dir),
        per_device_train_batch_size=args.batch_size,
        learning_rate=args.unlearn_lr,
        save_strategy="no",
        report_to="none",
        logging_steps=1000,
        disable_tqdm=True,
        seed=0,
        augment_learning_rate=args.finetune_lr,
        **precision,
        **overrides,
    )


def forget_data(args, split: str = "forget10"):
    data = load_tofu(split, args.data_dir)
    return data.select(range(min(args.train_max_items, len(data)))) if args.train_max_items else data


def measure(args, label: str, spec: dict, augmented: dict, data) -> dict:
    spec = dict(spec)
    kind = spec.pop("augmented", None)
    model, tokenizer = load_model(args.model)
    if not args.cpu:
        model.to("cuda")
    forget, retain, refusals = data
    cfg = config(
        args,
        Path(args.work_dir) / "speed" / "run",  # a scratch folder: every configuration starts it over
        overwrite_output_dir=True,
        max_steps=args.warmup + args.steps,
        augmented_model_path=str(augmented[kind]) if kind else None,
        augment_lora=kind == "lora",
        **spec,
    )
    dataset = build_unlearning_dataset(
        tokenizer,
        forget,
        retain if cfg.retain_mode != "none" else None,
        refusals if cfg.spec.needs_refusals else None,
        max_length=512,
        seed=0,
    )
    timer = StepTimer(args, args.warmup)
    trainer = UnlearnTrainer(
        model=model, args=cfg, train_dataset=dataset, processing_class=tokenizer, callbacks=[timer]
    )
    trainer.train()
    row = {
        "config": label,
        "method": cfg.method,
        "step_ms": 1000 * statistics.median(timer.times),
        "peak_gib": None if timer.peak is None else timer.peak / 2**30,
        "steps_timed": len(timer.times),
    }
    del trainer, model
    gc.collect()
    if not args.cpu:
        torch.cuda.empty_cache()
    return row


def build_augmented(args, forget, kinds: set[str]) -> dict:
    """One augmented model per kind (its quality is irrelevant to speed: a few steps)."""
    model, tokenizer = load_model(args.model)
    if not args.cpu:
        model.to("cuda")
    tokenized = tokenize_qa(forget, tokenizer, 512)
    out = {}
    for kind in sorted(kinds):
        cfg = config(
            args,
            Path(args.work_dir) / "speed" / f"aug-{kind}",
            method="rklu",
            augment_max_steps=2,
            augment_lora=kind == "lora",
        )
        out[kind] = build_augmented_model(model, tokenizer, tokenized, cfg, Path(args.work_dir) / "speed" / kind)
    del model
    if not args.cpu:
        torch.cuda.empty_cache()
    return out


def end_to_end(args) -> dict:
    """Wall seconds of retraining the retain90 oracle (recipes/finetune_tofu.py's ``train_runtime``) and of complete
    RKL-U runs on forget10 (augmentation + distillation: ``trainer.train()``) for each augmentation length, same batch
    size and device, model loading excluded; forget quality of each RKL-U model against the retrained oracle."""
    from rklu_llm.scripts import finetune as finetune_tofu

    work = Path(args.work_dir) / "speed"
    oracle = work / "retain90"
    argv = [
        "--model",
        args.base_model,
        "--split",
        "retain90",
        "--data_dir",
        args.data_dir,
        "--output_dir",
        str(oracle),
        "--learning_rate",
        str(args.finetune_lr),
        "--num_train_epochs",
        str(args.finetune_epochs),
        "--per_device_train_batch_size",
        str(args.batch_size),
        "--save_strategy",
        "no",
        "--report_to",
        "none",
        "--disable_tqdm",
        "true",
        "--skip_eval",
    ]
    argv += ["--use_cpu"] if args.cpu else ["--bf16", "--tf32", "true"]
    if args.train_max_items:
        argv += ["--max_train_items", str(args.train_max_items)]
    if not (oracle / "train_metrics.json").is_file():
        finetune_tofu.main(argv)
    retrain = json.loads((oracle / "train_metrics.json").read_text())["train_runtime"]
    eval_kwargs = {
        "sets": ("forget10",),
        "generate": False,
        "protocol": args.protocol,
        "batch_size": args.eval_batch_size,
        "max_items": args.train_max_items,
    }
    oracle_model, tokenizer = load_model(str(oracle))
    if not args.cpu:
        oracle_model.to("cuda")
    reference = evaluate_tofu(oracle_model, tokenizer, "forget10", data_dir=args.data_dir, **eval_kwargs)
    del oracle_model
    rows = []
    for epochs in args.augment_epochs:
        model, tokenizer = load_model(args.model)
        if not args.cpu:
            model.to("cuda")
        cfg = config(
            args,
            work / f"rklu_e2e_aug{epochs:g}",
            method="rklu",
            num_train_epochs=args.unlearn_epochs,
            augment_epochs=epochs,
            augment_lora=args.augment_lora,
        )
        dataset = build_unlearning_dataset(tokenizer, forget_data(args), max_length=512)
        start = time.perf_counter()
        trainer = UnlearnTrainer(model=model, args=cfg, train_dataset=dataset, processing_class=tokenizer)
        trainer.train()
        synchronize(args)
        seconds = time.perf_counter() - start
        result = evaluate_tofu(
            trainer.model, tokenizer, "forget10", data_dir=args.data_dir, reference=reference, **eval_kwargs
        )
        rows.append(
            {
                "augment_epochs": epochs,
                "rklu_forget10_seconds": seconds,
                "ratio": seconds / retrain,
                "forget_quality": result["forget"]["forget10"]["forget_quality"],
                "forget_probability": result["sets"]["forget10_perturbed"]["aggregate"]["probability"],
            }
        )
        del trainer, model
        gc.collect()
    return {
        "retrain_retain90_seconds": retrain,
        "runs": rows,
        "unlearn_epochs": args.unlearn_epochs,
        "augment_lora": args.augment_lora,
        "finetune_epochs": args.finetune_epochs,
        "protocol": args.protocol,
    }


def parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data_dir", required=True)
    p.add_argument("--model", required=True, help="the TOFU fine-tuned model (e.g. <work_dir>/models/full)")
    p.add_argument("--base_model", default="embedded:smollm2-135m-instruct", help="what the oracle retrains from")
    p.add_argument("--work_dir", default="/tmp/rklu_speed")
    p.add_argument("--results_dir", default=str(REPO / "benchmarks" / "results"))
    p.add_argument("--configs", default=None, help="comma-separated labels or methods to time (default: all)")
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--eval_batch_size", type=int, default=128)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--finetune_lr", type=float, default=2e-4)
    p.add_argument("--unlearn_lr", type=float, default=1e-5)
    p.add_argument("--finetune_epochs", type=float, default=5, help="end to end: epochs of the oracle's retraining")
    p.add_argument("--augment_epochs", default="10", help="end to end: comma-separated RKL-U augmentation epochs")
    p.add_argument("--unlearn_epochs", type=float, default=5, help="end to end: RKL-U distillation epochs")
    p.add_argument("--augment_lora", action="store_true", help="end to end: the augmented model as a LoRA adapter")
    p.add_argument("--end_to_end", action="store_true", help="also time RKL-U end to end vs retraining retain90")
    p.add_argument("--protocol", default="all", choices=sorted(PROTOCOLS), help="end to end: forget-quality items")
    p.add_argument("--train_max_items", type=int, default=None, help="smoke tests only: items of every training set")
    p.add_argument("--cpu", action="store_true", help="no GPU (smoke test): fp32, no memory measurement")
    args = p.parse_args(argv)
    try:
        args.augment_epochs = [float(v) for v in args.augment_epochs.split(",") if v]
    except ValueError as exc:
        raise SystemExit(f"--augment_epochs takes comma-separated numbers: {exc}") from exc
    configs = all_configs()
    if args.configs:
        wanted = args.configs.split(",")
        unknown = [w for w in wanted if w not in configs and w not in {c["method"] for c in configs.values()}]
        if unknown:
            raise SystemExit(f"--configs: unknown {unknown}; labels: {list(configs)}")
        configs = {k: v for k, v in configs.items() if k in wanted or v["method"] in wanted}
    if "ga" not in configs:
        raise SystemExit("--configs must include ga: the ratios are to gradient ascent")
    args.config_table = configs
    if not args.cpu and not torch.cuda.is_available():
        raise SystemExit("no GPU is visible: pass --cpu for a smoke test")
    if args.steps < 1 or args.warmup < 0 or not args.augment_epochs or min(args.augment_epochs) <= 0:
        raise SystemExit("--steps >= 1, --warmup >= 0 and positive --augment_epochs, please")
    return args


def main(argv=None) -> None:
    args = parse(argv)
    if not args.cpu:
        torch.backends.cuda.matmul.allow_tf32 = True
    forget = forget_data(args)
    retain = load_tofu("retain90", args.data_dir)
    if args.train_max_items:
        retain = retain.select(range(min(args.train_max_items, len(retain))))
    data = (forget, retain, load_refusals())
    kinds = {spec["augmented"] for spec in args.config_table.values() if "augmented" in spec}
    augmented = build_augmented(args, forget, kinds) if kinds else {}
    rows = [measure(args, label, spec, augmented, data) for label, spec in args.config_table.items()]
    ga = next(r for r in rows if r["config"] == "ga")
    for row in rows:
        row["step_ratio_to_ga"] = row["step_ms"] / ga["step_ms"]
        row["memory_ratio_to_ga"] = None if row["peak_gib"] is None else row["peak_gib"] / ga["peak_gib"]
    e2e = end_to_end(args) if args.end_to_end else None

    device = "cpu" if args.cpu else torch.cuda.get_device_name(0)
    out = Path(args.results_dir)
    settings = {k: v for k, v in vars(args).items() if k != "config_table"}
    for key in ("data_dir", "model", "base_model", "work_dir", "results_dir"):
        settings[key] = portable_path(settings[key])
    command = " ".join(["python", "benchmarks/speed.py", *(sys.argv[1:] if argv is None else argv)])
    write_json_atomic(
        out / "speed_smollm2.json",
        {"device": device, "command": command, "settings": settings, "rows": rows, "end_to_end": e2e},
    )
    precision = "fp32 on the CPU" if args.cpu else "bf16 autocast, fp32 master weights, frozen copies in bf16"
    lines = [
        f"# Step time and peak memory, SmolLM2-135M, TOFU forget10, batch {args.batch_size} ({device})",
        "",
        f"Command: `{command}`; median of {args.steps} steps after {args.warmup} warm-up steps, {precision}.",
        "",
        "| configuration | step ms | × GA | peak GiB | × GA |",
        "|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['config']} | {r['step_ms']:.1f} | {r['step_ratio_to_ga']:.2f} | "
        + ("n/a | n/a |" if r["peak_gib"] is None else f"{r['peak_gib']:.2f} | {r['memory_ratio_to_ga']:.2f} |")
        for r in rows
    ]
    if e2e:
        lora = " as LoRA" if args.augment_lora else ""
        lines += [
            "",
            f"Retraining the retain90 oracle ({args.finetune_epochs:g} epochs): "
            f"{e2e['retrain_retain90_seconds']:.1f} s. RKL-U end to end on forget10 "
            f"({args.unlearn_epochs:g} distillation epochs, augmentation{lora} of the length below; forget "
            f"quality vs that oracle, protocol {args.protocol}):",
            "",
            "| augmentation epochs | RKL-U s | × retraining | forget quality | forget P |",
            "|---|---|---|---|---|",
        ]
        lines += [
            f"| {r['augment_epochs']:g} | {r['rklu_forget10_seconds']:.1f} | {r['ratio']:.3f} | "
            f"{'n/a' if r['forget_quality'] is None else format(r['forget_quality'], '.3g')} | "
            f"{r['forget_probability']:.3f} |"
            for r in e2e["runs"]
        ]
    (out / "speed_smollm2.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
