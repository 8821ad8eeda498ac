"""Try the recipes with bad or unlucky inputs, as a new user would, and tabulate what happens.

    python benchmarks/bad_inputs.py --data_dir data/tofu --work_dir /tmp/bad_inputs \
        --output benchmarks/results/bad_inputs.md

Every case runs ``recipes/tofu_forget10.py`` or ``recipes/finetune_tofu.py`` as a user would (a subprocess, a tiny
random Llama so that a case takes seconds) and records: the exit code, the error's last line, *when* it failed, read
from the scripts' own progress lines (``inputs checked`` is printed after every input was validated, ``training
starts`` once the model is loaded and the run accepted): "before load", "before training" or "later"; and what the
case wrote into its output folder (and the augmented model's folder beside it), set against what was there before.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

SECRET = "hf_NOT_A_REAL_TOKEN_bad_inputs"
FAST = [
    "--max_steps",
    "2",
    "--per_device_train_batch_size",
    "4",
    "--augment_max_steps",
    "2",
    "--use_cpu",
    "--report_to",
    "none",
    "--max_length",
    "256",
    "--disable_tqdm",
    "true",
    "--save_strategy",
    "no",
    "--learning_rate",
    "1e-3",
    "--augment_learning_rate",
    "1e-3",
]
FAST_EVAL = ["--eval_max_items", "2", "--max_new_tokens", "4"]


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data_dir", default=os.environ.get("RKLU_TOFU_DIR"), help="TOFU folder (JSON Lines)")
    p.add_argument("--work_dir", default="runs/bad_inputs", help="scratch folder (deleted first)")
    p.add_argument("--output", default="benchmarks/results/bad_inputs.md", help="the Markdown table")
    p.add_argument("--only", default=None, help="comma-separated case numbers to run")
    return p.parse_args()


def prepare(work: Path, data_dir: Path) -> dict:
    """The tiny model, broken copies of the data, references, adapters and runs the cases point at."""
    import torch
    from conftest import build_tiny_model, build_tiny_tokenizer
    from peft import get_peft_model

    from rklu_llm.models import lora_config

    tokenizer = build_tiny_tokenizer()
    paths = {"model": work / "tiny-model"}
    build_tiny_model(tokenizer).save_pretrained(paths["model"])
    tokenizer.save_pretrained(paths["model"])

    def data_copy(name: str, change=None) -> Path:
        folder = work / "data" / name
        folder.mkdir(parents=True)
        for file in data_dir.glob("*.jsonl"):
            (folder / file.name).symlink_to(file.resolve())
        if change is not None:
            change(folder)
        return folder

    def rewrite(file: str, text: str | None):
        def change(folder: Path):
            (folder / file).unlink()
            if text is not None:
                (folder / file).write_text(text)

        return change

    paths["no_world_facts"] = data_copy("no_world_facts", rewrite("world_facts_perturbed.jsonl", None))
    paths["empty_forget"] = data_copy("empty_forget", rewrite("forget10.jsonl", ""))
    paths["null_answer"] = data_copy(
        "null_answer",
        rewrite("forget10.jsonl", '{"question": "Who?", "answer": "Her."}\n{"question": "Where?", "answer": null}\n'),
    )
    paths["bad_json"] = data_copy(
        "bad_json", rewrite("forget10.jsonl", '{"question": "Who?", "answer": "Her."}\n{oops\n')
    )
    refs = work / "refs"
    refs.mkdir()
    (refs / "malformed.json").write_text('{"sets": {"forget10_perturbed"')
    (refs / "forget05.json").write_text(json.dumps({"sets": {"forget05_perturbed": {"items": {}}}}))
    (refs / "folder").mkdir()
    (refs / "empty_refusals.txt").write_text("\n\n")
    (work / "empty_folder").mkdir()
    # a LoRA adapter whose base model was deleted
    base = work / "gone-base"
    build_tiny_model(tokenizer).save_pretrained(base)
    get_peft_model(build_tiny_model(tokenizer), lora_config(r=2, alpha=4)).save_pretrained(work / "orphan-adapter")
    config = json.loads((work / "orphan-adapter" / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = str(base)
    (work / "orphan-adapter" / "adapter_config.json").write_text(json.dumps(config))
    tokenizer.save_pretrained(work / "orphan-adapter")
    shutil.rmtree(base)
    # an augmented model of another vocabulary
    other = build_tiny_model(tokenizer)
    other.resize_token_embeddings(len(tokenizer) + 64)
    other.save_pretrained(work / "other-vocab-augmented")
    del torch
    return paths


def snapshot(*folders: Path) -> dict:
    files = {}
    for folder in folders:
        if folder.exists():
            for path in folder.rglob("*"):
                if path.is_file():
                    stat = path.stat()
                    files[str(path)] = (stat.st_size, stat.st_mtime_ns)
    return files


def written(before: dict, after: dict, root: Path) -> str:
    """Files created or changed, as ``folder/entry`` (deeper paths folded into their entry)."""
    names = []
    for path in sorted(p for p in after if before.get(p) != after[p]):
        parts = Path(path).relative_to(root).parts
        name = "/".join(parts[:2]) + ("/" if len(parts) > 2 else "")
        if name not in names:
            names.append(name)
    if not names:
        return "nothing"
    return ", ".join(names[:6]) + (f" (+{len(names) - 6} more)" if len(names) > 6 else "")


def phase(stderr: str) -> str:
    if "training starts" in stderr:
        return "later (training)"
    if "inputs checked" in stderr:
        return "before training"
    return "before load"


def message(stderr: str, rc: int) -> str:
    lines = [line.strip() for line in stderr.splitlines() if line.strip() and "%|" not in line]  # no progress bars
    if rc == 0:
        return "(accepted)"
    for at in range(len(lines) - 1, -1, -1):  # the exception's first line, and any lines of its message after it
        head = lines[at].split(":")[0]
        if "Error" in head or "Diverged" in head or lines[at].startswith("error:"):
            return " / ".join(lines[at:])
    return lines[-1] if lines else ""


def cases(work: Path, paths: dict, data_dir: Path) -> list[dict]:
    unlearn, finetune = str(REPO / "recipes" / "tofu_forget10.py"), str(REPO / "recipes" / "finetune_tofu.py")
    model, data = str(paths["model"]), str(data_dir)
    refs = work / "refs"

    def folder(name: str) -> str:
        return str(work / "out" / re.sub(r"\W+", "_", name).strip("_"))

    def u(name, *args, data_dir=data, model=model, out=None, **kw):
        out = out or folder(name)
        return dict(
            name=name,
            command=[
                unlearn,
                "--model",
                model,
                "--data_dir",
                str(data_dir),
                "--output_dir",
                out,
                *FAST,
                *FAST_EVAL,
                *args,
            ],
            out=out,
            **kw,
        )

    def f(name, *args, **kw):
        out = folder(name)
        return dict(
            name=name,
            command=[
                finetune,
                "--model",
                model,
                "--split",
                "retain99",
                "--data_dir",
                data,
                "--output_dir",
                out,
                "--max_train_items",
                "8",
                "--max_steps",
                "3",
                "--per_device_train_batch_size",
                "4",
                "--use_cpu",
                "--report_to",
                "none",
                "--save_strategy",
                "no",
                "--max_length",
                "256",
                "--disable_tqdm",
                "true",
                *FAST_EVAL,
                *args,
            ],
            out=out,
            **kw,
        )

    finished = str(work / "out" / "finished_ga")
    locked = str(work / "out" / "locked")
    return [
        u("learning_rate 1e10", "--method", "ga", "--learning_rate", "1e10", "--max_steps", "6", "--skip_eval"),
        u("teacher_alpha inf", "--teacher_alpha", "inf"),
        u("teacher_alpha nan", "--teacher_alpha", "nan"),
        u("learning_rate nan", "--learning_rate", "nan"),
        u("retain_weight -1", "--retain_mode", "rt", "--retain_weight", "-1"),
        u("per_device_train_batch_size 0", "--per_device_train_batch_size", "0"),
        u("gradient_accumulation_steps 0", "--gradient_accumulation_steps", "0"),
        u("eval_batch_size 0", "--eval_batch_size", "0"),
        u("eval_max_items 0", "--eval_max_items", "0"),
        u("max_new_tokens 0", "--max_new_tokens", "0"),
        u("method unknown", "--method", "forget_everything"),
        u("retain_mode unknown", "--retain_mode", "everything"),
        u("forget_split forget50", "--forget_split", "forget50"),
        u("max_length 1", "--max_length", "1"),
        u("npo_beta 0", "--method", "npo", "--npo_beta", "0"),
        u("max_retain_items 0", "--retain_mode", "rt", "--max_retain_items", "0"),
        u("data_dir missing", data_dir="/nonexistent/tofu"),
        u("world_facts_perturbed missing", data_dir=paths["no_world_facts"]),
        u("forget10.jsonl empty", data_dir=paths["empty_forget"]),
        u("forget10.jsonl null answer", data_dir=paths["null_answer"]),
        u("forget10.jsonl malformed line", data_dir=paths["bad_json"]),
        u("retain_eval missing", "--retain_eval", str(refs / "missing.json")),
        u("retain_eval a folder", "--retain_eval", str(refs / "folder")),
        u("retain_eval malformed JSON", "--retain_eval", str(refs / "malformed.json")),
        u("retain_eval of another split", "--retain_eval", str(refs / "forget05.json")),
        u("eval_every_epoch without retain_eval", "--eval_every_epoch"),
        u("output_dir == model", out=model),
        u("output_dir inside the model folder", out=str(paths["model"] / "unlearned")),
        u(
            "output_dir == augmented_model_path",
            "--augmented_model_path",
            str(work / "other-vocab-augmented"),
            out=str(work / "other-vocab-augmented"),
        ),
        u("augmented_model_path empty folder", "--augmented_model_path", str(work / "empty_folder")),
        u("augmented_model_path other vocabulary", "--augmented_model_path", str(work / "other-vocab-augmented")),
        u("refusal_file missing", "--method", "idk", "--refusal_file", str(refs / "missing.txt")),
        u("refusal_file empty", "--method", "idk", "--refusal_file", str(refs / "empty_refusals.txt")),
        u("model missing", model="/nonexistent/model"),
        u("model: LoRA adapter, base gone", model=str(work / "orphan-adapter")),
        u("augment_learning_rate 1e10", "--augment_learning_rate", "1e10", "--augment_max_steps", "4", "--skip_eval"),
        u(
            "finished ga run, then npo in its folder",
            "--method",
            "npo",
            "--skip_eval",
            out=finished,
            before=[
                unlearn,
                "--model",
                model,
                "--data_dir",
                data,
                "--output_dir",
                finished,
                *FAST,
                "--method",
                "ga",
                "--skip_eval",
            ],
        ),
        u("same run again (resume, finished)", "--method", "ga", "--skip_eval", out=finished),
        u("output_dir locked by a live run", "--skip_eval", out=locked, hold_lock=locked),
        u(
            "hub_token given (secret kept out)",
            "--method",
            "ga",
            "--skip_eval",
            "--hub_token",
            SECRET,
            "--save_strategy",
            "steps",
            "--save_steps",
            "1",
            check_secret=True,
        ),
        f("finetune: learning_rate 1e10", "--learning_rate", "1e10", "--warmup_steps", "0", "--max_steps", "6"),
        f("finetune: eval_forget_splits forget50", "--eval_forget_splits", "forget50"),
        f("finetune: per_device_train_batch_size 0", "--per_device_train_batch_size", "0"),
    ]


def run_case(case: dict, env: dict) -> dict:
    out = Path(case["out"])
    sibling = out.with_name(out.name + ".augmented")
    holder = None
    if case.get("before"):
        subprocess.run([sys.executable, *case["before"]], env=env, capture_output=True, text=True, timeout=600)
    if case.get("hold_lock"):
        holder = subprocess.Popen(
            [
                sys.executable,
                "-c",
                "import sys, time; from rklu_llm.run_state import acquire_run_lock; "
                f"acquire_run_lock({case['hold_lock']!r}); print('locked', flush=True); time.sleep(600)",
            ],
            env=env,
            stdout=subprocess.PIPE,
            text=True,
        )
        holder.stdout.readline()
    before = snapshot(out, sibling)
    start = time.perf_counter()
    result = subprocess.run([sys.executable, *case["command"]], env=env, capture_output=True, text=True, timeout=900)
    seconds = time.perf_counter() - start
    if holder is not None:
        holder.kill()
        holder.wait()
    after = snapshot(out, sibling)
    row = {
        "case": case["name"],
        "rc": result.returncode,
        "when": phase(result.stderr),
        "message": message(result.stderr, result.returncode),
        "written": written(before, after, out.parent),
        "seconds": round(seconds, 1),
    }
    if case.get("check_secret"):
        leaks = [p for p in after if SECRET.encode() in Path(p).read_bytes()]
        row["message"] = (
            f"(accepted) token found in {len(leaks)} of {len(after)} files written; in the logs: "
            f"{SECRET in result.stdout + result.stderr}"
        )
    return row


def main():
    args = parse_args()
    if not args.data_dir:
        raise SystemExit("pass --data_dir <TOFU folder> (or set RKLU_TOFU_DIR)")
    work = Path(args.work_dir).resolve()
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    data_dir = Path(args.data_dir).resolve()
    paths = prepare(work, data_dir)
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "OMP_NUM_THREADS": "1",
    }
    chosen = cases(work, paths, data_dir)
    only = None if args.only is None else {int(i) for i in args.only.split(",")}
    rows = []
    for number, case in enumerate(chosen, 1):
        if only is not None and number not in only:
            continue
        row = {"#": number, **run_case(case, env)}
        rows.append(row)
        print(json.dumps(row), flush=True)
    lines = ["| # | input | exit code | failed | message (last line) | written |", "|---|---|---|---|---|---|"]
    for row in rows:
        text = row["message"].replace("|", "\\|").replace(str(work), "<work>")
        if len(text) > 300:
            text = text[:297] + "..."
        lines.append(f"| {row['#']} | {row['case']} | {row['rc']} | {row['when']} | {text} | {row['written']} |")
    header = (
        "# Bad inputs tried on the recipes\n\nCommand: `python benchmarks/bad_inputs.py --data_dir <TOFU> "
        '--work_dir <scratch>` (tiny random Llama, 2-core CPU). "failed": before load = before any model was '
        "loaded; before training = after loading, before the first step; later = during training. "
        '"written": files created or changed in the case\'s output folder (and `<output_dir>.augmented`), '
        "paths relative to the folder holding it.\n\n"
    )
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(header + "\n".join(lines) + "\n")
    print(f"{len(rows)} cases -> {args.output}")


if __name__ == "__main__":
    main()
