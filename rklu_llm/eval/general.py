"""General capability through lm-eval-harness: the RKL-U paper's suite (PIQA, HellaSwag, ARC-Easy, ARC-Challenge, COPA,
WSC273, MathQA; Winogrande, BoolQ and OpenBookQA too) on a model in memory or a saved checkpoint.

The tasks are the YAMLs shipped in :mod:`rklu_llm.tasks` (``rklu_<name>``): lm-eval's own prompts, choices and
metrics, reading ``<data_dir>/<task>/<split>.jsonl`` (``data_dir=`` or ``$RKLU_GENERAL_DIR``) or the hub dataset
lm-eval itself uses. Zero-shot, log-likelihood multiple choice; ``acc`` is the fraction of items whose gold choice
has the highest summed log-likelihood (``acc_norm``, where lm-eval defines it, divides by the choice's length in
bytes). The summary is the paper's: the unweighted mean of the tasks' ``acc``.

In memory (``lm_eval.models.huggingface.HFLM(pretrained=model, tokenizer=tokenizer)`` and ``lm_eval.simple_evaluate``
with ``TaskManager(include_path=TASKS_DIR, include_defaults=False)``, one task at a time, each cached)::

    from rklu_llm.eval.general import evaluate_general
    result = evaluate_general(model, tokenizer, data_dir="data/general", limit=100, output_dir="runs/rklu")
    result["average_acc"], result["tasks"]["piqa"]["acc"]

A saved checkpoint with the upstream command (full weights; a LoRA adapter through ``peft=``; the group
``rklu_general`` prints the mean accuracy, ``rklu_general_all`` covers all ten tasks)::

    TASKS=$(python -c "import rklu_llm.tasks as t; print(t.TASKS_DIR)")
    lm_eval --model hf --model_args pretrained=runs/rklu --include_path $TASKS --tasks rklu_general \\
        --metadata '{"data_dir": "data/general"}'          # or: export RKLU_GENERAL_DIR=data/general
    lm_eval --model hf --model_args pretrained=HuggingFaceTB/SmolLM2-135M-Instruct,peft=runs/rklu_lora \\
        --include_path $TASKS --tasks rklu_piqa,rklu_copa --limit 100

Results JSON (``general_eval.json``, also the returned dict; accuracies are fractions in ``[0, 1]``)::

    {
      "model": str,
      "settings": {"tasks": [str], "limit": int|None, "num_fewshot": 0, "batch_size": int, "data": str,
                   "lm_eval_version": str},
      "tasks": {"<task>": {"acc": float, "acc_stderr": float|None, "acc_norm": float|None, "num_samples": int,
                           "num_docs": int, "split": str}},
      "average_acc": float               # unweighted mean of the tasks' acc
    }

Resuming: with ``output_dir`` each task's numbers are cached under ``output_dir/general_eval_cache/`` (keyed by model
name, a weights digest, the data file's digest, ``limit`` and ``num_fewshot``).
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Sequence
from pathlib import Path

from tqdm.auto import tqdm

from ..data.tofu import DataUnavailableError
from ..io import Evaluation
from ..offline import hub_advice, hub_problem
from ..paths import portable_path
from ..tasks import DATA_DIR_ENV, PAPER_TASKS, TASKS, TASKS_DIR, data_file
from .scoring import eval_mode

RESULT_FILE = "general_eval.json"
CACHE_DIR = "general_eval_cache"
ALL_TASKS = tuple(TASKS)


def resolve_tasks(tasks: Sequence[str] | str) -> list[str]:
    """Short task names (``piqa``), accepting the YAML names (``rklu_piqa``) and the groups ``rklu_general`` (the
    paper's seven) / ``rklu_general_all`` (all ten); a comma-separated string works too.

    Raises:
        ValueError: an unknown name (the message lists the valid ones), or no task at all.
    """
    if isinstance(tasks, str):
        tasks = [t for t in tasks.split(",") if t.strip()]
    chosen = []
    for task in tasks:
        task = task.strip()
        if task in ("rklu_general", "paper"):
            names = list(PAPER_TASKS)
        elif task in ("rklu_general_all", "all"):
            names = list(ALL_TASKS)
        else:
            short = task.removeprefix("rklu_")
            if short not in TASKS:
                raise ValueError(
                    f"Unknown lm-eval task {task!r}; shipped tasks: {', '.join(ALL_TASKS)} (or rklu_general for the "
                    "paper's seven, rklu_general_all for all)."
                )
            names = [short]
        chosen += [n for n in names if n not in chosen]
    if not chosen:
        raise ValueError("No lm-eval task given.")
    return chosen


def resolve_data(tasks: Sequence[str], data_dir: str | os.PathLike | None = None) -> dict[str, Path | None]:
    """The local data file of every task (``data_dir``, else ``$RKLU_GENERAL_DIR``), or ``None`` per task (the hub).

    Raises:
        FileNotFoundError: the data folder does not exist or lacks a task's ``<task>/<split>.jsonl``.
        DataUnavailableError: no data folder while the hub is switched off (``HF_DATASETS_OFFLINE`` /
            ``HF_HUB_OFFLINE``) or cannot be reached.
    """
    chosen = data_dir if data_dir is not None else os.environ.get(DATA_DIR_ENV)
    if not chosen:
        problem = hub_problem()
        if problem is not None:  # lm-eval reads the hub for each task: a missing folder fails here, in seconds
            raise DataUnavailableError(
                f"lm-eval tasks {', '.join(tasks)}: no data folder and the Hugging Face hub cannot be used "
                f"({problem}). "
                f"Pass --general_data_dir <folder with <task>/<split>.jsonl files> (data_dir=... in Python) or set "
                f"${DATA_DIR_ENV}, {hub_advice(problem)}."
            )
        return {task: None for task in tasks}
    root = Path(chosen).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(
            f"lm-eval data folder {portable_path(root)} does not exist (data_dir / ${DATA_DIR_ENV})."
        )
    files = {task: data_file(task, root) for task in tasks}
    missing = [f"{task}: {portable_path(path)}" for task, path in files.items() if not path.is_file()]
    if missing:
        raise FileNotFoundError(
            f"lm-eval data folder {portable_path(root)} lacks the expected files ({'; '.join(missing)}); it must hold "
            "<task>/<split>.jsonl for every task (JSON Lines with the Hugging Face dataset's fields)."
        )
    return files


def _file_digest(path: Path | None, task: str) -> str:
    if path is None:
        folder, split, hub_path, hub_name = TASKS[task]
        return f"hub:{hub_path}:{hub_name}:{split}"
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _task_numbers(results: dict, task: str) -> dict:
    name = f"rklu_{task}"
    values = results["results"][name]
    stderr = values.get("acc_stderr,none")
    return {
        "acc": float(values["acc,none"]),
        "acc_stderr": float(stderr) if isinstance(stderr, (int, float)) else None,
        "acc_norm": float(values["acc_norm,none"]) if "acc_norm,none" in values else None,
        "num_samples": int(results["n-samples"][name]["effective"]),
        "num_docs": int(results["n-samples"][name]["original"]),
        "split": TASKS[task][1],
    }


def evaluate_general(
    model,
    tokenizer,
    tasks: Sequence[str] | str = PAPER_TASKS,
    data_dir: str | os.PathLike | None = None,
    limit: int | None = None,
    batch_size: int = 16,
    output_dir: str | os.PathLike | None = None,
    num_fewshot: int = 0,
) -> dict:
    """lm-eval-harness accuracy of an in-memory model on the shipped tasks, and their unweighted mean.

    Args:
        model: causal LM (a ``transformers`` model, or a PEFT model; evaluated in eval mode, its mode restored).
        tokenizer: its tokenizer.
        tasks: short names (``piqa``, ...; ``rklu_`` prefixes and the groups ``rklu_general`` / ``rklu_general_all``
            accepted); default the paper's seven.
        data_dir: folder of ``<task>/<split>.jsonl`` files (default ``$RKLU_GENERAL_DIR``, else the hub).
        limit: score only the first ``limit`` items of each task (quick runs; default all).
        batch_size: sequences per forward pass.
        output_dir: where ``general_eval.json`` goes (atomically), with the per-task cache.
        num_fewshot: examples in context (the paper: 0). The shipped tasks carry no training split, so few-shot
            examples come from the scored split itself.

    Raises:
        ValueError: unknown task, ``limit`` or ``batch_size`` < 1, negative ``num_fewshot``.
        FileNotFoundError, DataUnavailableError: see :func:`resolve_data`. Every check runs before the model is used.
    """
    names = resolve_tasks(tasks)
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ValueError(f"limit must be a positive number of items per task (or None for all), got {limit!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if num_fewshot < 0:
        raise ValueError(f"num_fewshot must be >= 0, got {num_fewshot}")
    files = resolve_data(names, data_dir)
    root = data_dir if data_dir is not None else os.environ.get(DATA_DIR_ENV)

    import lm_eval  # the optional `lm-eval` extra (lm-eval-harness): imported only to run it
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    evaluation = Evaluation(
        model,
        output_dir,
        CACHE_DIR,
        RESULT_FILE,
        {
            "tasks": names,
            "limit": limit,
            "num_fewshot": num_fewshot,
            "batch_size": batch_size,
            "data": portable_path(root) if root else "hub",
            "lm_eval_version": lm_eval.__version__,
        },
    )
    cache = evaluation.cache
    settings = {"limit": limit, "num_fewshot": num_fewshot}
    metadata = {} if not root else {"data_dir": str(Path(root).expanduser().resolve())}
    lm = None
    per_task = {}
    logging.getLogger("lm_eval").setLevel(logging.WARNING)
    with eval_mode(model):
        for task in tqdm(names, desc="lm-eval tasks", unit="task", leave=False):

            def run(task=task):
                nonlocal lm
                if lm is None:
                    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
                manager = TaskManager(include_path=str(TASKS_DIR), include_defaults=False, metadata=metadata)
                results = lm_eval.simple_evaluate(
                    model=lm,
                    tasks=[f"rklu_{task}"],
                    num_fewshot=num_fewshot,
                    limit=limit,
                    task_manager=manager,
                    log_samples=False,
                    verbosity="WARNING",
                )
                return _task_numbers(results, task)

            per_task[task] = cache.get_or_compute(task, "lm_eval", settings, _file_digest(files[task], task), run)

    evaluation.result.update(tasks=per_task, average_acc=sum(per_task[t]["acc"] for t in names) / len(names))
    return evaluation.finish()
