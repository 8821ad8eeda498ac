"""Classifier unlearning benchmark: every method side by side with the retrain oracle, on the CPU.

    python benchmarks/classifier.py --fashion_mnist_dir ../shared/data/fashion-mnist \
        --books_dir ../shared/data/books --work_dir /tmp/classifier_bench --results_dir benchmarks/results

Scenarios (the redistributive-KL and DELETE protocols): Fashion-MNIST with a small CNN forgetting one class (0,
T-shirt/top), two classes (0, 1), five classes (0-4), 100 and 500 random training samples; the same single class
with a small `transformers` ResNet; the six Austen novels with a small BERT forgetting one novel (Emma). Each
scenario is one run of the recipe body (``rklu_llm.scripts.classifier.main``): the original (trained once per model
and dataset, then reused), the retrain oracle, then every method from a copy of the original; a finished method is
reused when the command is run again, so an interrupted benchmark resumes. Timings are wall-clock seconds on this
machine; each method's time is reported as a fraction of the oracle's training time in the same scenario.

Writes ``classifier_<image dataset>.{json,md}`` and ``classifier_austen.{json,md}`` into ``--results_dir``.
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import sys
import time
from pathlib import Path

import torch
import transformers

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from a checkout without installing

from rklu_llm.eval.io import write_json_atomic  # noqa: E402
from rklu_llm.paths import portable_path  # noqa: E402
from rklu_llm.scripts.classifier import main as run_recipe  # noqa: E402

CLASS_METHODS = "redistribute,mask,ga,random_label,boundary_shrink,jit,finetune"
#: the two KL methods and the two contrasts (the redistributive-KL protocol leaves Boundary Shrink out of sample
#: unlearning)
CONTRAST_METHODS = "redistribute,mask,ga,random_label"
#: the two KL methods again at lower learning rates (added after a first run: text and sample unlearning
#: over-forgot at the shared 1e-3)
LOWER_LR = ",redistribute@1e-4,mask@1e-4"
#: name -> (family, model, forget flags + extra recipe flags, methods); method@lr runs a method at its own lr
SCENARIOS = {
    "cnn_class1": ("image", "cnn", ["--forget_classes", "0"], CLASS_METHODS + ",redistribute@3e-4,jit@1e-5"),
    "cnn_class2": ("image", "cnn", ["--forget_classes", "0,1"], CONTRAST_METHODS),
    "cnn_class5": ("image", "cnn", ["--forget_classes", "0,1,2,3,4"], CONTRAST_METHODS),
    "cnn_samples100": ("image", "cnn", ["--forget_samples", "100"], CONTRAST_METHODS + LOWER_LR),
    "cnn_samples500": ("image", "cnn", ["--forget_samples", "500"], CONTRAST_METHODS + LOWER_LR),
    "resnet_class1": ("image", "resnet", ["--forget_classes", "0", "--max_train_samples", "20000"], CONTRAST_METHODS),
    "bert_class1": (
        "text",
        "bert",
        ["--forget_classes", "0"],
        CLASS_METHODS + LOWER_LR + ",redistribute@3e-4,mask@3e-4",
    ),
}
PERCENT_KEYS = (
    "acc_f",
    "acc_r",
    "acc_ft",
    "acc_rt",
    "acc_test",
    "h_mean",
    "mia_svc_confidence",
    "mia_svc_entropy",
    "mia_svc_modified_entropy",
    "mia_entropy_lr",
)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fashion_mnist_dir", default=None, help="Fashion-MNIST IDX folder ($RKLU_FASHION_MNIST_DIR)")
    parser.add_argument("--books_dir", default=None, help="the six Austen novels ($RKLU_BOOKS_DIR)")
    parser.add_argument(
        "--image_dataset",
        default="fashion_mnist",
        choices=("fashion_mnist", "digits"),
        help="digits: sklearn's 8x8 digits (a quick check of the whole pipeline)",
    )
    parser.add_argument("--scenarios", default=",".join(SCENARIOS), help=f"comma-separated, from {list(SCENARIOS)}")
    parser.add_argument("--methods", default=None, help="replace every scenario's methods (a quick check)")
    parser.add_argument("--work_dir", required=True, help="models and per-method results (resumable)")
    parser.add_argument("--results_dir", default=str(REPO / "benchmarks" / "results"))
    parser.add_argument("--train_epochs", type=float, default=2.0, help="original and oracle epochs (images)")
    parser.add_argument("--train_lr", type=float, default=1e-3, help="original and oracle learning rate (images)")
    parser.add_argument("--text_train_epochs", type=float, default=5.0, help="original and oracle epochs (text)")
    parser.add_argument("--text_train_lr", type=float, default=3e-3, help="original and oracle learning rate (text)")
    parser.add_argument("--train_batch_size", type=int, default=128)
    parser.add_argument("--unlearn_epochs", type=float, default=1.0)
    parser.add_argument("--unlearn_lr", type=float, default=1e-3)
    parser.add_argument("--max_train_samples", type=int, default=None)
    parser.add_argument("--eval_retain_samples", type=int, default=10000)
    parser.add_argument("--mia_max_samples", type=int, default=500)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: fastest on a busy 2-core machine)")
    return parser.parse_args(argv)


def recipe_argv(args, name: str) -> list[str]:
    family, model, forget, methods = SCENARIOS[name]
    work = Path(args.work_dir)
    if family == "image":
        dataset, data_dir, epochs, lr = args.image_dataset, args.fashion_mnist_dir, args.train_epochs, args.train_lr
    else:
        dataset, data_dir, epochs, lr = "austen", args.books_dir, args.text_train_epochs, args.text_train_lr
    argv = [
        "--dataset",
        dataset,
        "--model",
        model,
        *forget,
        "--methods",
        args.methods or methods,
        "--original",
        str(work / f"{dataset}_{model}_original"),
        "--output_dir",
        str(work / f"{dataset}_{name}"),
        "--train_epochs",
        str(epochs),
        "--train_learning_rate",
        str(lr),
        "--train_batch_size",
        str(args.train_batch_size),
        "--num_train_epochs",
        str(args.unlearn_epochs),
        "--learning_rate",
        str(args.unlearn_lr),
        "--eval_retain_samples",
        str(args.eval_retain_samples),
        "--mia_max_samples",
        str(args.mia_max_samples),
        "--num_threads",
        str(args.threads),
        "--use_cpu",
        "--disable_tqdm",
        "true",
        "--logging_steps",
        "1000",
    ]
    if data_dir is not None and dataset != "digits":
        argv += ["--data_dir", data_dir]
    if args.max_train_samples is not None and "--max_train_samples" not in forget:
        argv += ["--max_train_samples", str(args.max_train_samples)]
    return argv


def _pct(value) -> str:
    return "–" if value is None else f"{100 * value:.1f}"


def scenario_table(name: str, result: dict) -> list[str]:
    scenario = result["scenario"]
    classes = scenario["forget_classes"]
    names = scenario.get("class_names") or []
    if classes is not None:
        what = ", ".join(f"{c} ({names[c]})" if c < len(names) else str(c) for c in classes)
        title = f"forget class{'es' if len(classes) > 1 else ''} {what}"
        columns = ("acc_f", "acc_r", "acc_ft", "acc_rt", "h_mean")
    else:
        title = f"forget {scenario['forget_samples']} random training samples"
        columns = ("acc_f", "acc_r", "acc_test")
    heads = {
        "acc_f": "Acc_f",
        "acc_r": "Acc_r",
        "acc_ft": "Acc_ft",
        "acc_rt": "Acc_rt",
        "acc_test": "Acc_test",
        "h_mean": "H-Mean",
    }
    lines = [
        f"### {name}: {scenario['dataset']}, {scenario['model']}, {title}",
        "",
        f"{scenario['train_samples']} train / {scenario['test_samples']} test samples, "
        f"forget set {scenario['forget_size']}."
        ' Percentages; MIA = fraction of forget-train samples called "member" (SVC on confidence / entropy / '
        "modified entropy; entropy logistic regression); time = wall seconds of the run and its fraction of the "
        "oracle's training time.",
        "",
        "| method | uses retain data | "
        + " | ".join(heads[c] for c in columns)
        + " | MIA SVC conf / ent / m-ent | MIA LR | time (s) | × oracle |",
        "|---" * (len(columns) + 6) + "|",
    ]
    for row in result["rows"]:
        label = {"original": "original", "retrain": "**retrain (oracle)**"}.get(row["method"], row["method"])
        mia = " / ".join(_pct(row[f"mia_svc_{f}"]) for f in ("confidence", "entropy", "modified_entropy"))
        fraction = row.get("fraction_of_oracle_time")
        seconds = row.get("seconds")
        lines.append(
            f"| {label} | {'**yes**' if row['uses_retain_data'] else 'no'} | "
            + " | ".join(_pct(row[c]) for c in columns)
            + f" | {mia} | {_pct(row['mia_entropy_lr'])} | {'–' if seconds is None else f'{seconds:.1f}'} | "
            + f"{'–' if fraction is None or row['method'] == 'original' else f'{fraction:.3f}'} |"
        )
    lines.append("")
    return lines


def target_lines(result: dict) -> list[str]:
    """The issue's targets, checked on a single-class scenario: Acc_ft <= 1%, Acc_rt within 1 point of the oracle,
    under 10% of the oracle's training time."""
    rows = {r["method"]: r for r in result["rows"]}
    oracle = rows.get("retrain")
    if oracle is None or result["scenario"]["forget_classes"] is None:
        return []
    out = []
    for method, row in rows.items():
        if method.partition("@")[0] not in ("mask", "redistribute"):
            continue
        gap = 100 * (row["acc_rt"] - oracle["acc_rt"])
        checks = [
            f"Acc_ft {_pct(row['acc_ft'])}% ({'meets' if row['acc_ft'] <= 0.01 else 'misses'} <= 1%)",
            f"Acc_rt {gap:+.2f} points from the oracle ({'meets' if abs(gap) <= 1 else 'misses'} within 1)",
            f"{row['fraction_of_oracle_time']:.3f} of the oracle's time "
            f"({'meets' if row['fraction_of_oracle_time'] < 0.1 else 'misses'} < 0.1)",
        ]
        out.append(f"- `{method}`: " + "; ".join(checks) + ".")
    return out + [""] if out else []


def write_results(args, family: str, names: list[str], results: dict, invocations: list[dict]) -> None:
    if not names:
        return
    stem = f"classifier_{args.image_dataset if family == 'image' else 'austen'}"
    machine = (
        f"{platform.machine()} CPU ({torch.get_num_threads()} torch thread(s) of a shared 2-core machine), "
        f"torch {torch.__version__}, transformers {transformers.__version__}"
    )
    data = {"machine": machine, "invocations": invocations, "scenarios": {n: results[n] for n in names}}
    write_json_atomic(Path(args.results_dir) / f"{stem}.json", data)
    lines = [
        f"# Classifier unlearning: {stem.removeprefix('classifier_')}",
        "",
        f"Machine: {machine}. Produced by (each command resumes the previous one's finished runs):",
        "",
        *[f"    {i['command']}" for i in invocations],
        "",
        "Retain-free methods use only the forget set; `finetune` and the retrain oracle train on the retain set "
        "(marked **yes**). Settings: original and oracle trained with Adam (lr "
        f"{args.train_lr if family == 'image' else args.text_train_lr:g}, linear decay, "
        f"{args.train_epochs if family == 'image' else args.text_train_epochs:g} epochs, batch "
        f"{args.train_batch_size}); unlearning with Adam at a constant lr {args.unlearn_lr}, batch 64, "
        f"{args.unlearn_epochs:g} epoch(s); Boundary Shrink eps 0.1; JiT 10 perturbations of std 0.1. Acc_r and the "
        f"attacks' retain-train side use {args.eval_retain_samples} random retain samples; each attack's training "
        f"set is capped at {args.mia_max_samples} members and {args.mia_max_samples} non-members.",
        "",
    ]
    for name in names:
        lines += scenario_table(name, results[name]) + target_lines(results[name])
    path = Path(args.results_dir) / f"{stem}.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_suffix(".md.tmp")
    staging.write_text("\n".join(lines))
    staging.replace(path)


def command_line(argv: list[str]) -> str:
    parts = ["python", "benchmarks/classifier.py"]
    for arg in argv:
        parts.append(portable_path(arg) if arg.startswith("/") else arg)
    return shlex.join(parts)


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    names = [n.strip() for n in args.scenarios.split(",") if n.strip()]
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        raise SystemExit(f"Unknown scenario(s) {unknown}; choose from {list(SCENARIOS)}.")
    torch.set_num_threads(args.threads)
    work = Path(args.work_dir)
    log = work / "invocations.json"
    invocations = json.loads(log.read_text()) if log.is_file() else []
    invocations.append({"command": command_line(argv), "started": time.strftime("%Y-%m-%d %H:%M:%S")})
    began = time.perf_counter()
    results = {}
    for name in names:
        start = time.perf_counter()
        print(f"== {name}", flush=True)
        results[name] = run_recipe(recipe_argv(args, name))
        print(f"== {name} done in {time.perf_counter() - start:.0f} s", flush=True)
    invocations[-1]["wall_seconds"] = round(time.perf_counter() - began)
    invocations[-1]["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
    write_json_atomic(log, invocations)
    for family in ("image", "text"):
        write_results(args, family, [n for n in names if SCENARIOS[n][0] == family], results, invocations)


if __name__ == "__main__":
    main()
