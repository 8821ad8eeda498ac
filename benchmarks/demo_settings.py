"""How the demo's unlearning settings were chosen: teach the people once, then unlearn with every setting of a grid
and score each against the demo's targets (issue 22).

    python benchmarks/demo_settings.py --work_dir runs/demo_settings --results_dir benchmarks/results \
        --grid "augment_epochs=2,4;teacher_alpha=4,8;unlearn_epochs=4;unlearn_learning_rate=1.2e-3,2e-3"
    python benchmarks/demo_settings.py --profiles ...      # the generated people instead of TOFU

Per setting: the teacher check of its augmented adapter (before distilling: the true token's mean logit rise, the
original's median margin, the share of positions where the teacher's top-1 is still the true token), the forgotten
person's key facts still stated, per kept person the key facts kept and the answers unchanged, the answers that state
another person's facts, the degenerate answers, and the seconds (wall and CPU) of unlearning.
A setting meets the targets when the forgotten person states 0 facts, every kept person keeps all facts with at
least 5 of 6 answers unchanged, and no answer is degenerate. The taught model is saved in ``work_dir`` and reused.
Appends to ``demo_settings.json`` / ``.md`` in ``results_dir``.
"""

from __future__ import annotations

import argparse
import copy
import itertools
import json
import tempfile
import time
from dataclasses import asdict, replace
from pathlib import Path

import torch

from rklu_llm.demo import DemoArguments, demo_people, measure, qa_rows, teach, unlearn
from rklu_llm.models import load_model

#: the teacher check's numbers kept per setting (see rklu_llm.teacher_check.check_teacher)
CHECK = (
    "mean_rise",
    "median_rise",
    "median_margin",
    "moved_fraction",
    "original_top1_true",
    "teacher_top1_true",
    "teacher_true_probability",
    "original_true_probability",
    "saturated_fraction",
    "median_start_gradient_reverse",
    "median_start_gradient_forward",
    "verdict",
)


#: teaching settings already named in the taught model's folder
TEACH_NAMED = ("teach_epochs", "teach_learning_rate")


def _num(check: dict, key: str) -> str:
    return f"{check[key]:.2f}" if key in check else "-"


def parse_grid(text: str) -> list[dict]:
    axes = []
    for part in filter(None, (p.strip() for p in text.split(";"))):
        name, _, values = part.partition("=")
        kind = type(getattr(DemoArguments(), name.strip()))
        axes.append([(name.strip(), kind(v)) for v in values.split(",")])
    return [dict(combo) for combo in itertools.product(*axes)] or [{}]


def score(before: dict, after: dict) -> dict:
    names = list(before)
    forgotten, kept = names[0], names[1:]
    row = {
        "forgotten_facts": f"{after[forgotten]['facts_stated']}/{after[forgotten]['facts_total']}",
        "kept_facts": [f"{after[n]['facts_stated']}/{after[n]['facts_total']}" for n in kept],
        "kept_unchanged": [sum(x == y for x, y in zip(before[n]["answers"], after[n]["answers"])) for n in kept],
        "states_another": sum(bool(f) for n in names for f in after[n]["others"]),
        "forgotten_states_another": sum(bool(f) for f in after[forgotten]["others"]),
        "degenerate": sum(bool(f) for n in names for f in after[n]["degenerate"]),
    }
    row["meets_targets"] = (
        after[forgotten]["facts_stated"] == 0
        and all(after[n]["facts_stated"] == before[n]["facts_stated"] == before[n]["facts_total"] for n in kept)
        and all(count >= len(before[n]["answers"]) - 1 for n, count in zip(kept, row["kept_unchanged"]))
        and row["degenerate"] == 0
    )
    return row


def write_results(out: Path, rows: list[dict]) -> None:
    """Append ``rows`` to ``out/demo_settings.json`` and write the table of all rows to ``out/demo_settings.md``.

    A row equal to one already in the file (the same record, timings included) is not appended again, so results
    copied back from a worktree whose file already held them do not double the table.
    """
    out.mkdir(parents=True, exist_ok=True)
    path = out / "demo_settings.json"
    old = json.loads(path.read_text()) if path.is_file() else []
    rows = [r for r in json.loads(json.dumps(rows)) if r not in old]
    path.write_text(json.dumps(old + rows, indent=1) + "\n")
    lines = [
        "| source | teach | settings | rise (mean) | margin (median) | teacher top-1 true | original P > 0.99 | "
        "forgotten facts | "
        "kept facts | kept unchanged | states another (forgotten's) | degenerate | meets targets | unlearn s "
        "(CPU s) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in old + rows:
        tc = r.get("teacher_check") or {}
        lines.append(
            f"| {r['source']} | {r['teach'] or 'default'} | {r['settings']} | {_num(tc, 'mean_rise')} | "
            f"{_num(tc, 'median_margin')} | {_num(tc, 'teacher_top1_true')} | {_num(tc, 'saturated_fraction')} | "
            f"{r['forgotten_facts']} | "
            f"{', '.join(r['kept_facts'])} | {r['kept_unchanged']} | {r['states_another']} "
            f"({r['forgotten_states_another']}) | {r['degenerate']} | {r['meets_targets']} | "
            f"{r['unlearn_seconds']} ({r.get('unlearn_cpu_seconds', '-')}) |"
        )
    (out / "demo_settings.md").write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_dir", default=None, help="TOFU folder (default: $RKLU_TOFU_DIR, else the hub)")
    parser.add_argument("--profiles", action="store_true", help="the generated people")
    parser.add_argument("--work_dir", required=True)
    parser.add_argument("--results_dir", default=None)
    parser.add_argument("--grid", default="", help="name=v1,v2;name=v1,... over DemoArguments fields")
    parser.add_argument("--teach", default="", help="name=value;... DemoArguments of the teaching")
    args = parser.parse_args(argv)
    teach_settings = parse_grid(args.teach)[0]
    base = replace(DemoArguments(profiles=args.profiles, data_dir=args.data_dir), **teach_settings)
    torch.set_num_threads(base.threads)
    torch.use_deterministic_algorithms(True, warn_only=True)
    people, source = demo_people(base.data_dir, base.profiles, base.seed)
    names = list(people)
    key = "profiles" if source.startswith("generated") else "tofu"
    # one folder per teaching: epochs, lr, then the other --teach settings (the first folders had only the two)
    teaching = [f"{base.teach_epochs}", f"{base.teach_learning_rate:g}"]
    teaching += [f"{name}{value}" for name, value in teach_settings.items() if name not in TEACH_NAMED]
    taught_dir = Path(args.work_dir) / "_".join([f"taught_{key}", *teaching])
    start = time.time()
    if (taught_dir / "config.json").is_file():
        model, tokenizer = load_model(str(taught_dir))
    else:
        model, tokenizer = load_model(base.model)
        with tempfile.TemporaryDirectory() as work:
            model = teach(model, tokenizer, qa_rows(people, names), base, work)
        model.save_pretrained(taught_dir)
        tokenizer.save_pretrained(taught_dir)
    teach_seconds = time.time() - start
    before = measure(model, tokenizer, people, base.max_new_tokens, "before")
    print(
        f"{source}: taught in {teach_seconds:.0f} s; facts before:",
        [f"{before[n]['facts_stated']}/{before[n]['facts_total']}" for n in names],
    )
    kept = qa_rows(people, names[1:])
    rows = []
    for settings in parse_grid(args.grid):
        demo_args = replace(base, **settings)
        start, cpu, check = time.time(), time.process_time(), {}
        with tempfile.TemporaryDirectory() as work:
            student = unlearn(copy.deepcopy(model), tokenizer, people[names[0]], demo_args, work, check, kept)
        seconds, cpu = time.time() - start, time.process_time() - cpu
        after = measure(student, tokenizer, people, base.max_new_tokens, "after")
        row = {
            "source": key,
            "teach": teach_settings,
            "settings": settings,
            "unlearn_seconds": round(seconds, 1),
            "unlearn_cpu_seconds": round(cpu, 1),
            "teacher_check": {k: check[k] for k in CHECK},
            **score(before, after),
        }
        row["answers_after"] = {n: after[n]["answers"] for n in names}
        rows.append(row)
        print(json.dumps({k: v for k, v in row.items() if k != "answers_after"}), flush=True)
        del student
    if args.results_dir:
        write_results(Path(args.results_dir), rows)
    print("defaults:", asdict(DemoArguments()))


if __name__ == "__main__":
    main()
