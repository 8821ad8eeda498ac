"""Interchange with open-unlearning (locuslab/open-unlearning): read its TOFU evaluation logs, write ours in its layout.

open-unlearning's TOFU evaluator writes two files into its output folder:

* ``TOFU_EVAL.json``: one entry per metric, ``{"<metric>": {"agg_value": float, "value_by_index": {"<i>": {...}}}}``,
  ``i`` the item's index in the evaluated set. The entries this module reads or writes:

  - ``forget_truth_ratio``: ``value_by_index[i] = {"score": TR_i}``, ``TR = gmean_j p(perturbed_j) / p(paraphrased)``
    (the same direction as ours); the retain model's entry is what its ``forget_quality`` (``ks_test``) compares to;
  - ``forget_Q_A_Prob`` (``{"prob", "avg_loss"}`` per item), ``forget_Q_A_ROUGE`` (``{"rougeL_recall", "input",
    "generation"}`` per item), ``forget_quality``, ``model_utility`` and the retain / real-authors (``ra_``) /
    world-facts (``wf_``) entries behind model utility;
  - ``mia_loss``, ``mia_zlib``, ``mia_min_k``, ``mia_min_k_plus_plus``: ``{"agg_value": AUC, "auc": AUC, "forget":
    {...}, "holdout": {...}}`` with per-item ``{"score": s}`` under ``forget`` / ``holdout``; the retain model's
    ``mia_min_k`` AUC is what its ``privleak`` compares to;
  - ``privleak``, ``extraction_strength``, ``exact_memorization``.

* ``TOFU_SUMMARY.json``: ``{"<metric>": agg_value}`` for the metrics that were asked for; aggregates only.

A ``TOFU_EVAL.json`` carries no split name; the forget split is recognised by its item count (forget01/05/10 hold
40/200/400 items), and its questions, when ``forget_Q_A_ROUGE`` is present, by the prompts in its ``input`` texts.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from ..io import to_builtin, write_json_atomic
from ..paths import portable_path

EVAL_FILE = "TOFU_EVAL.json"
SUMMARY_FILE = "TOFU_SUMMARY.json"
#: Items of each TOFU forget split (and of its holdout set).
FORGET_SIZES = {"forget01": 40, "forget05": 200, "forget10": 400}
#: Our membership score name -> open-unlearning's metric name.
MIA_METRICS = {"loss": "mia_loss", "zlib": "mia_zlib", "min_k": "mia_min_k", "min_k_plus_plus": "mia_min_k_plus_plus"}
#: Our TOFU set -> open-unlearning's metric-name prefix.
SET_PREFIX = {"retain_perturbed": "retain", "real_authors_perturbed": "ra", "world_facts_perturbed": "wf"}


def is_eval_log(obj) -> bool:
    """Whether ``obj`` looks like an open-unlearning ``TOFU_EVAL.json`` (metric entries with ``agg_value``)."""
    return (
        isinstance(obj, Mapping)
        and bool(obj)
        and any(isinstance(v, Mapping) and "agg_value" in v for v in obj.values())
        and "sets" not in obj
    )


def is_summary(obj) -> bool:
    """Whether ``obj`` looks like an open-unlearning ``TOFU_SUMMARY.json`` (metric names -> numbers)."""
    known = {"forget_quality", "model_utility", "forget_truth_ratio", "privleak", "extraction_strength"}
    return (
        isinstance(obj, Mapping)
        and bool(obj)
        and bool(known & set(obj))
        and all(v is None or isinstance(v, (int, float)) for v in obj.values())
    )


def read_eval_log(source, label: str | None = None) -> tuple[dict, str]:
    """``(TOFU_EVAL.json as a dict, a label)`` from a path, a folder holding ``TOFU_EVAL.json``, or a dict (named
    ``label`` in messages).

    Raises:
        FileNotFoundError: no such file / no ``TOFU_EVAL.json`` in the folder.
        ValueError: a ``TOFU_SUMMARY.json`` (aggregates only), or not an open-unlearning evaluation.
    """
    if isinstance(source, Mapping):
        obj, label = dict(source), label or "<dict: open-unlearning TOFU_EVAL>"
    else:
        path = Path(source).expanduser()
        if path.is_dir():
            path = path / EVAL_FILE
        if not path.is_file():
            raise FileNotFoundError(f"open-unlearning evaluation {str(path)!r} does not exist.")
        with open(path, encoding="utf-8") as handle:
            obj = json.load(handle)
        label = portable_path(path)
    if is_summary(obj):
        raise ValueError(
            f"{label} is an open-unlearning TOFU_SUMMARY.json: it holds aggregates only, while forget quality and "
            f"privleak need the per-item values of the {EVAL_FILE} written beside it; pass that file instead."
        )
    if not is_eval_log(obj):
        raise ValueError(f"{label} is not an open-unlearning {EVAL_FILE} (no metric entries with 'agg_value').")
    return obj, label


def _ordered(value_by_index: Mapping) -> list[str]:
    return sorted(value_by_index, key=int)


def split_of_count(count: int) -> str | None:
    """The forget split with ``count`` items, or ``None``."""
    return next((split for split, size in FORGET_SIZES.items() if size == count), None)


def _check_split(count: int, split: str, label: str, what: str) -> None:
    found = split_of_count(count)
    if found is not None and found != split:
        raise ValueError(
            f"{label}: its {what} holds {count} items, i.e. open-unlearning evaluated {found}, not {split}; pass the "
            f"evaluation of the retain model for {split} (forget_split={split} in open-unlearning)."
        )


def forget_truth_ratios(
    obj: Mapping, split: str, label: str = "open-unlearning log"
) -> tuple[np.ndarray, list[str] | None]:
    """Per-item forget truth ratios of a ``TOFU_EVAL.json`` and, when it has ``forget_Q_A_ROUGE``, the prompt texts
    they were scored on (the question inside its chat template; matched to our questions by containment).

    Raises:
        KeyError: no ``forget_truth_ratio`` entry.
        ValueError: the entry holds the item count of another forget split.
    """
    entry = obj.get("forget_truth_ratio")
    if not isinstance(entry, Mapping) or not isinstance(entry.get("value_by_index"), Mapping):
        raise KeyError(f"{label} has no per-item 'forget_truth_ratio' (open-unlearning's forget_quality needs it)")
    values = entry["value_by_index"]
    keys = _ordered(values)
    _check_split(len(keys), split, label, "forget_truth_ratio")
    tr = np.array([np.nan if values[k].get("score") is None else values[k]["score"] for k in keys], dtype=np.float64)
    questions = None
    rouge = obj.get("forget_Q_A_ROUGE", {}).get("value_by_index")
    if isinstance(rouge, Mapping) and all(isinstance(rouge.get(k), Mapping) and "input" in rouge[k] for k in keys):
        questions = [str(rouge[k]["input"]) for k in keys]
    return tr, questions


def membership_aucs(obj: Mapping, split: str, label: str = "open-unlearning log") -> dict[str, float]:
    """``{score name: AUC}`` of the ``mia_*`` entries of a ``TOFU_EVAL.json`` (our score names, see
    :data:`MIA_METRICS`); empty when it has none.

    Raises:
        ValueError: an entry's forget side holds the item count of another forget split.
    """
    aucs = {}
    for ours, theirs in MIA_METRICS.items():
        entry = obj.get(theirs)
        if not isinstance(entry, Mapping) or entry.get("agg_value") is None:
            continue
        forget = entry.get("forget", {}).get("value_by_index")
        if isinstance(forget, Mapping):
            _check_split(len(forget), split, label, theirs)
        aucs[ours] = float(entry["agg_value"])
    return aucs


# --------------------------------------------------------------------------------------------------------------------
# Writing ours in open-unlearning's layout
# --------------------------------------------------------------------------------------------------------------------


def _by_index(values, key: str = "score", **extra_lists) -> dict:
    out = {}
    for i, value in enumerate(values):
        item = {key: value}
        for name, column in extra_lists.items():
            item[name] = column[i]
        out[str(i)] = item
    return out


def _tofu_entries(tofu: Mapping, split: str) -> dict:
    forget = tofu["sets"][f"{split}_perturbed"]
    items, aggregate = forget["items"], forget["aggregate"]
    probs = np.asarray(items["answer_probability"], dtype=np.float64)
    with np.errstate(divide="ignore"):
        avg_loss = -np.log(probs)
    logs = {
        "forget_truth_ratio": {
            "agg_value": aggregate["truth_ratio"],
            "value_by_index": _by_index(items["truth_ratio"]),
        },
        "forget_Q_A_Prob": {
            "agg_value": float(np.mean(probs)),
            "value_by_index": _by_index(probs, "prob", avg_loss=avg_loss),
        },
    }
    if "rouge_l_recall" in items:
        logs["forget_Q_A_ROUGE"] = {
            "agg_value": aggregate["rouge_l_recall"],
            "value_by_index": _by_index(
                items["rouge_l_recall"], "rougeL_recall", input=items["question"], generation=items["generated"]
            ),
        }
    entry = tofu.get("forget", {}).get(split, {})
    if entry.get("forget_quality") is not None:
        logs["forget_quality"] = {"agg_value": entry["forget_quality"]}
    if tofu.get("model_utility") is not None:
        logs["model_utility"] = {"agg_value": tofu["model_utility"]}
    for name, prefix in SET_PREFIX.items():
        if name not in tofu["sets"]:
            continue
        items, aggregate = tofu["sets"][name]["items"], tofu["sets"][name]["aggregate"]
        prob_metric = f"{prefix}_Q_A_Prob" if prefix == "retain" else f"{prefix}_Q_A_Prob_normalised"
        logs[prob_metric] = {
            "agg_value": aggregate["probability"],
            "value_by_index": _by_index(items["probability"], "prob"),
        }
        logs[f"{prefix}_Truth_Ratio"] = {
            "agg_value": aggregate["truth_ratio"],
            "value_by_index": _by_index(items["truth_ratio"]),
        }
        if "rouge_l_recall" in items:
            logs[f"{prefix}_Q_A_ROUGE"] = {
                "agg_value": aggregate["rouge_l_recall"],
                "value_by_index": _by_index(
                    items["rouge_l_recall"], "rougeL_recall", input=items["question"], generation=items["generated"]
                ),
            }
    return logs


def _audit_entries(audit: Mapping) -> dict:
    logs = {}
    membership = audit.get("membership")
    if membership:
        for ours, theirs in MIA_METRICS.items():
            auc = membership["auc"][ours]
            sides = {
                side: {
                    "agg_value": float(np.mean(membership["items"][side][ours])),
                    "value_by_index": _by_index(membership["items"][side][ours]),
                }
                for side in ("forget", "holdout")
            }
            logs[theirs] = {"agg_value": auc, "auc": auc, **sides}
        logs["privleak"] = {"agg_value": membership["privleak"]["min_k"]}
    extraction = audit.get("extraction")
    if extraction:
        for metric in ("extraction_strength", "exact_memorization"):
            logs[metric] = {"agg_value": extraction[metric], "value_by_index": _by_index(extraction["items"][metric])}
    return logs


def to_open_unlearning(
    tofu: Mapping | None = None, audit: Mapping | None = None, split: str | None = None
) -> tuple[dict, dict]:
    """``(TOFU_EVAL, TOFU_SUMMARY)`` dicts in open-unlearning's layout from our ``tofu_eval.json`` and / or
    ``audit_eval.json`` results.

    Args:
        tofu: a result of :func:`~rklu_llm.eval.tofu.evaluate_tofu` (or ``None``).
        audit: a result of :func:`~rklu_llm.eval.audit.evaluate_audit` (or ``None``).
        split: the forget split to write (open-unlearning's files hold one); default: the only one evaluated.

    Raises:
        ValueError: nothing given, several forget splits and no ``split``, or the two results disagree on it.
    """
    if tofu is None and audit is None:
        raise ValueError("to_open_unlearning needs a TOFU result, an audit result, or both.")
    splits = list(tofu["settings"]["forget_splits"]) if tofu is not None else []
    if audit is not None:
        audit_split = audit["settings"]["forget_split"]
        if splits and audit_split not in splits:
            raise ValueError(f"The audit evaluated {audit_split}, the TOFU result {', '.join(splits)}.")
        splits = [audit_split]
    if split is None:
        if len(splits) != 1:
            raise ValueError(f"Several forget splits were evaluated ({', '.join(splits)}): choose one with split=.")
        split = splits[0]
    elif split not in splits:
        raise ValueError(f"split {split!r} was not evaluated (evaluated: {', '.join(splits)}).")
    logs = {}
    if tofu is not None:
        logs.update(_tofu_entries(tofu, split))
    if audit is not None:
        logs.update(_audit_entries(audit))
    logs = to_builtin(dict(sorted(logs.items())))
    summary = {name: entry["agg_value"] for name, entry in logs.items() if entry.get("agg_value") is not None}
    return logs, summary


def write_open_unlearning(
    output_dir: str | os.PathLike, tofu: Mapping | None = None, audit: Mapping | None = None, split: str | None = None
) -> tuple[Path, Path]:
    """Write ``TOFU_EVAL.json`` and ``TOFU_SUMMARY.json`` (atomically) into ``output_dir``; see
    :func:`to_open_unlearning`. open-unlearning reads the ``TOFU_EVAL.json`` of a retain model as
    ``retain_logs_path`` (forget quality, privleak). Returns the two paths."""
    logs, summary = to_open_unlearning(tofu, audit, split)
    out = Path(output_dir)
    write_json_atomic(out / EVAL_FILE, logs)
    write_json_atomic(out / SUMMARY_FILE, summary)
    return out / EVAL_FILE, out / SUMMARY_FILE
