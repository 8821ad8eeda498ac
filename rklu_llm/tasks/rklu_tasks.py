"""Data loading and the few prompt helpers of the shipped lm-eval tasks (``rklu_<name>.yaml`` beside this file).

lm-eval imports this file by path (``!function rklu_tasks.<name>`` in the YAMLs), so it needs nothing but
``datasets`` and ``lm_eval``. Every task's ``custom_dataset`` is :func:`load`, called by lm-eval with the task's
metadata and ``dataset_kwargs`` (``rklu_task: <name>``):

* local: ``<data_dir>/<folder>/<split>.jsonl`` (JSON Lines with the Hugging Face dataset's own fields), where
  ``data_dir`` is the ``data_dir`` metadata entry (``TaskManager(metadata={"data_dir": ...})``, or
  ``lm_eval --metadata '{"data_dir": "..."}'``), else ``$RKLU_GENERAL_DIR``;
* otherwise the hub dataset lm-eval's own task reads (``TASKS[name]``).

Splits scored (as lm-eval's tasks do, except OpenBookQA): validation for PIQA, HellaSwag, COPA, Winogrande, BoolQ and
OpenBookQA (lm-eval scores its test split; the local copy has validation only); test for ARC-Easy, ARC-Challenge,
WSC273 and MathQA. BoolQ's local copy (HF ``boolq``: ``answer`` is a bool) gets ``label = int(answer)``, the field of
``super_glue/boolq`` that lm-eval's prompt reads.
"""

from __future__ import annotations

import os
from pathlib import Path

import datasets

DATA_DIR_ENV = "RKLU_GENERAL_DIR"

#: task -> (local folder, split, hub dataset, hub config)
TASKS = {
    "piqa": ("piqa", "validation", "baber/piqa", None),
    "hellaswag": ("hellaswag", "validation", "Rowan/hellaswag", None),
    "arc_easy": ("arc_easy", "test", "allenai/ai2_arc", "ARC-Easy"),
    "arc_challenge": ("arc_challenge", "test", "allenai/ai2_arc", "ARC-Challenge"),
    "copa": ("copa", "validation", "aps/super_glue", "copa"),
    "wsc273": ("wsc273", "test", "lighteval/winograd_wsc", "wsc273"),
    "mathqa": ("mathqa", "test", "regisss/math_qa", None),
    "winogrande": ("winogrande", "validation", "allenai/winogrande", "winogrande_xl"),
    "boolq": ("boolq", "validation", "aps/super_glue", "boolq"),
    "openbookqa": ("openbookqa", "validation", "allenai/openbookqa", "main"),
}
#: The RKL-U paper's general-capability suite (its average accuracy).
PAPER_TASKS = ("piqa", "hellaswag", "arc_easy", "arc_challenge", "copa", "wsc273", "mathqa")


def data_file(task: str, data_dir: str | os.PathLike) -> Path:
    """``<data_dir>/<folder>/<split>.jsonl`` of ``task``."""
    folder, split, _, _ = TASKS[task]
    return Path(data_dir).expanduser() / folder / f"{split}.jsonl"


def load(rklu_task: str, data_dir: str | None = None, **metadata):
    """The ``DatasetDict`` of one task: local JSON Lines when a data folder is known, else the hub."""
    folder, split, hub_path, hub_name = TASKS[rklu_task]
    data_dir = data_dir or os.environ.get(DATA_DIR_ENV)
    if data_dir:
        path = data_file(rklu_task, data_dir)
        if not path.is_file():
            raise FileNotFoundError(
                f"lm-eval task rklu_{rklu_task}: {path} is missing. The data folder needs <task>/<split>.jsonl "
                f"files ({folder}/{split}.jsonl here); fix data_dir / ${DATA_DIR_ENV}, or unset both to use the hub "
                f"({hub_path})."
            )
        dataset = datasets.load_dataset("json", data_files={split: str(path)})
        if rklu_task == "boolq" and "label" not in dataset[split].column_names:
            dataset = dataset.map(lambda row: {"label": int(row["answer"])})
        return dataset
    return datasets.load_dataset(hub_path, hub_name)


# Prompt helpers: lm-eval's own functions (imported when a task uses them: lm-eval is an optional extra), named
# here so that the YAMLs can refer to them relative to this folder.
def hellaswag_process_docs(dataset):
    from lm_eval.tasks.hellaswag.utils import process_docs

    return process_docs(dataset)


def wsc273_process_docs(dataset):
    from lm_eval.tasks.wsc273.utils import process_doc

    return process_doc(dataset)


def mathqa_doc_to_choice(doc):
    from lm_eval.tasks.mathqa.utils import doc_to_choice

    return doc_to_choice(doc)


def copa_doc_to_text(doc):
    from lm_eval.tasks.super_glue.copa.utils import doc_to_text

    return doc_to_text(doc)


def copa_doc_to_target(doc):
    from lm_eval.tasks.super_glue.copa.utils import doc_to_target

    return doc_to_target(doc)


def copa_doc_to_choice(doc):
    from lm_eval.tasks.super_glue.copa.utils import doc_to_choice

    return doc_to_choice(doc)


def winogrande_doc_to_text(doc):
    from lm_eval.tasks.winogrande.preprocess_winogrande import doc_to_text

    return doc_to_text(doc)


def winogrande_doc_to_target(doc):
    from lm_eval.tasks.winogrande.preprocess_winogrande import doc_to_target

    return doc_to_target(doc)


def winogrande_doc_to_choice(doc):
    from lm_eval.tasks.winogrande.preprocess_winogrande import doc_to_choice

    return doc_to_choice(doc)


__all__ = [
    "DATA_DIR_ENV",
    "PAPER_TASKS",
    "TASKS",
    "copa_doc_to_choice",
    "copa_doc_to_target",
    "copa_doc_to_text",
    "data_file",
    "hellaswag_process_docs",
    "load",
    "mathqa_doc_to_choice",
    "winogrande_doc_to_choice",
    "winogrande_doc_to_target",
    "winogrande_doc_to_text",
    "wsc273_process_docs",
]
