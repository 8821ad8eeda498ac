"""TOFU evaluation (Maini et al. 2024), with the benchmark's own metric definitions.

Metrics (``p`` is always the length-normalised answer probability):

* ``p(a | q) = exp(-NLL_sum(a | q) / |a|)`` over the answer tokens, the EOS after the answer included.
* Probability: forget / retain sets ``mean p(answer)``; real authors / world facts
  ``mean p(answer) / (p(answer) + sum_j p(perturbed_j))``.
* ROUGE-L recall of the greedy generation (at most ``max_new_tokens`` new tokens, cut at EOS) against ``answer``.
* Truth ratio per item ``TR = geometric_mean_j p(perturbed_j) / p(base)``, base = ``paraphrased_answer`` on the
  forget / retain sets and ``answer`` on real authors / world facts. Set aggregate: forget ``mean(min(TR, 1/TR))``,
  the others ``mean(max(0, 1 - TR))``.
* Model utility: harmonic mean of the 9 values {retain, real authors, world facts} x {probability, ROUGE-L recall,
  truth-ratio aggregate}.
* Forget quality: ``ks_2samp(TR_unlearned, TR_reference).pvalue`` on the forget set, the reference being the
  retain-only model (never trained on the forget set) evaluated on the same items.

The original TOFU code computes, per item, ``exp(avg_perturbed_loss - avg_paraphrased_loss)``, which is ``1/TR`` with
the definition above, and aggregates retain-type sets with ``max(0, 1 - 1/that)``: the same numbers as ours. The forget
aggregate ``min(x, 1/x)`` is symmetric in ``x <-> 1/x``, and the KS statistic and p-value are unchanged when both
samples go through the same monotone map (here ``x -> 1/x``), so every aggregate and the forget quality agree with
TOFU.
Item counts (``protocol``): ``"all"`` (default, as open-unlearning) scores every item; ``"tofu"`` scores what TOFU's
own scripts scored (``ds_size: 300`` in their ``config/eval_everything.yaml``): the first 300 items of every set, i.e.
forget10 and retain_perturbed 300 of their 400, the smaller sets whole (forget05 200, forget01 40, real authors 100,
world facts 117). The protocol matters for forget quality: at the same KS statistic ``D`` the p-value over 400 items
is smaller than over 300, so every result names its protocol. ``max_items`` cuts further (smoke tests).

Results JSON (``tofu_eval.json``, also the dict :func:`evaluate_tofu` returns)::

    {
      "model": str,                      # the folder / hub id evaluated (rklu_llm.io.model_name)
      "base_model": str,                 # only for a LoRA adapter folder: the base it was merged into
      "settings": {"forget_splits": [...], "sets": [...], "protocol": "all"|"tofu", "data_dir": str|None,
                   "batch_size": int, "max_new_tokens": int, "max_items": int|None, "max_length": int,
                   "generation_batch_size": int|None, "generate": bool, "scoring": str, "decoder": str,
                   "reference": str|None},
      "sets": {
        "<set name>": {                  # forget10_perturbed, retain_perturbed, real_authors_perturbed, ...
          "aggregate": {"probability": float, "rouge_l_recall": float|None, "truth_ratio": float, "num_items": int},
          "items": {
            "question": [str],
            "probability": [float],         # per-item term of the probability aggregate (normalised on real/world)
            "answer_probability": [float],  # p(answer | question)
            "rouge_l_recall": [float],      # this key and "generated" only when generate=True
            "truth_ratio": [float],         # TR per item (not the aggregate's min/max transform)
            "generated": [str]              # greedy generation, special tokens removed, stripped
          }
        }
      },
      "model_utility": float|None,        # None (with "model_utility_note") when a utility set was not evaluated
      "model_utility_note": str|None,
      "forget": {
        "<forget split>": {"forget_quality": float|None, "forget_quality_note": str|None,
                           "reference": str|None, "reference_items": int, "matched_by": "question"|"index"|None}
      }
    }

``forget_quality_note`` explains a ``None`` forget quality and also says when the reference covered only part of the
evaluated items or was matched by position. Non-finite floats are written as ``NaN`` / ``Infinity`` (Python ``json``).

Resuming: with ``output_dir`` every (set, metric) result, i.e. the answer likelihoods (``likelihood``) and the greedy
generations (``generation``), is cached as JSON under ``output_dir/tofu_eval_cache/``, keyed by set, metric, model
name, a digest of sampled weight values, a fingerprint of the set's rows and the settings that change it
(``protocol``, ``max_items``, ``max_length``, ``max_new_tokens``). A re-run with the same ``output_dir`` skips the
finished parts; an entry written for other weights or data is recomputed (with a warning). Likelihoods of
(question, answer) pairs already scored for another set of the same evaluation are reused (forget01 and forget05 are
forget10's last 40 / 200 items).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..data.tofu import RETAIN_OF_FORGET, load_tofu
from ..io import (
    Evaluation,
    MetricCache,
    data_fingerprint,
    to_builtin,
    write_json_atomic,
)
from ..paths import portable_path
from . import open_unlearning
from .metrics import (
    UTILITY_METRICS,
    answer_probability,
    forget_quality,
    forget_truth_ratio_score,
    model_utility,
    normalized_probability,
    normalized_probability_items,
    retain_truth_ratio_score,
    rouge_l_recall,
    truth_ratio,
)
from .scoring import DECODERS, SCORING, generate_answers, score_answers

__all__ = [
    "CACHE_DIR",
    "NO_REFERENCE_NOTE",
    "PROTOCOLS",
    "RESULT_FILE",
    "UTILITY_METRICS",
    "UTILITY_SETS",
    "answer_probability",
    "compare_to_reference",
    "evaluate_tofu",
    "forget_quality",
    "forget_truth_ratio_score",
    "generate_answers",
    "load_tofu_eval",
    "model_utility",
    "normalized_probability",
    "reference_truth_ratios",
    "retain_truth_ratio_score",
    "rouge_l_recall",
    "score_answers",
    "summary_row",
    "truth_ratio",
    "write_json_atomic",
]

#: The sets whose aggregates make up model utility.
UTILITY_SETS = ("retain_perturbed", "real_authors_perturbed", "world_facts_perturbed")
#: protocol -> items scored per set at most (None: all); "tofu" is TOFU's own ``ds_size: 300``.
PROTOCOLS = {"all": None, "tofu": 300}
RESULT_FILE = "tofu_eval.json"
CACHE_DIR = "tofu_eval_cache"
NO_REFERENCE_NOTE = (
    "no reference evaluation given: pass reference=<retain model's tofu_eval.json> (the retain-only model "
    "evaluated on the same forget split) or a TOFU eval_log_forget.json"
)

# --------------------------------------------------------------------------------------------------------------------
# References for forget quality
# --------------------------------------------------------------------------------------------------------------------

_TEMPLATES = (
    re.compile(r"^\s*\[INST\]\s*(.*?)\s*\[/INST\]\s*$", re.DOTALL),  # llama2-7b in the TOFU logs
    re.compile(r"^\s*Question:\s*(.*?)\s*(?:Answer:)?\s*$", re.DOTALL),  # phi in the TOFU logs
)


def _squash(text: str) -> str:
    """Text without any whitespace (detokenisation artefacts such as ``"Mammadov ,"`` vs ``"Mammadov,"`` vanish)."""
    return "".join(text.split())


def _log_question(prompt: str) -> str:
    for template in _TEMPLATES:
        match = template.match(prompt)
        if match:
            return match.group(1)
    return prompt


def _is_tofu_log(obj) -> bool:
    return isinstance(obj, Mapping) and "avg_paraphrased_loss" in obj and "average_perturb_loss" in obj


def _is_our_result(obj) -> bool:
    return isinstance(obj, Mapping) and isinstance(obj.get("sets"), Mapping)


def _read_reference(reference) -> tuple[dict, str]:
    """Parse ``reference`` (path to a file or folder, or a dict) into ``(object, label)``; fail on unknown formats."""
    if isinstance(reference, Mapping):
        label = f"<dict: {reference.get('model', 'TOFU log')}>" if _is_our_result(reference) else "<dict: TOFU log>"
        obj = dict(reference)
    else:
        path = Path(reference).expanduser()
        if path.is_dir():
            for name in (RESULT_FILE, "eval_log_aggregated.json", "eval_log_forget.json", open_unlearning.EVAL_FILE):
                if (path / name).is_file():
                    path = path / name
                    break
            else:
                raise FileNotFoundError(
                    f"Reference folder {str(path)!r} holds none of {RESULT_FILE}, eval_log_aggregated.json, "
                    f"eval_log_forget.json, {open_unlearning.EVAL_FILE}."
                )
        if not path.is_file():
            raise FileNotFoundError(f"Reference evaluation {str(path)!r} does not exist.")
        with open(path, encoding="utf-8") as handle:
            obj = json.load(handle)
        label = portable_path(path)
    if _is_our_result(obj) or _is_tofu_log(obj):
        return obj, label
    if open_unlearning.is_summary(obj) or open_unlearning.is_eval_log(obj):  # open-unlearning's TOFU_EVAL.json
        return open_unlearning.read_eval_log(obj, label)[0], label
    if isinstance(obj, Mapping) and _is_tofu_log(obj.get("eval_log_forget.json")):
        return obj["eval_log_forget.json"], label + "#eval_log_forget.json"
    raise ValueError(
        f"Reference {label} is neither a tofu_eval.json written by evaluate_tofu (no 'sets'), a TOFU eval log "
        f"(no 'avg_paraphrased_loss' / 'average_perturb_loss', no 'eval_log_forget.json') nor an open-unlearning "
        f"{open_unlearning.EVAL_FILE} (no metric entries)."
    )


def reference_truth_ratios(reference, split: str) -> tuple[np.ndarray, list[str] | None, str]:
    """Per-item forget-set truth ratios of a reference evaluation.

    Args:
        reference: a ``tofu_eval.json`` written by :func:`evaluate_tofu` (path or dict), a TOFU original-authors log
            (``eval_log_forget.json``, or ``eval_log_aggregated.json`` whose ``eval_log_forget.json`` entry is used),
            an open-unlearning ``TOFU_EVAL.json`` (its ``forget_truth_ratio`` items; a ``TOFU_SUMMARY.json`` is
            refused: it has no per-item values), or a folder holding one of those.
        split: forget split (``forget01`` / ``forget05`` / ``forget10``); selects the set of a ``tofu_eval.json``.
            A TOFU log holds one forget set and carries no split name: its items are matched by question later.

    Returns:
        ``(tr, questions, label)``: ``(M,)`` truth ratios; their ``M`` questions, or ``None`` when the source has none;
        a label naming the source. For TOFU logs ``TR = exp(avg_paraphrased_loss - mean_j average_perturb_loss_j)``
        per item (their own ``exp(perturbed - paraphrased)`` is ``1/TR``) and the questions are read from the
        prompts in ``generated_text``.

    Raises:
        KeyError: a ``tofu_eval.json`` without the set ``<split>_perturbed``.
    """
    obj, label = _read_reference(reference)
    return _truth_ratios_of(obj, label, split)


def _truth_ratios_of(obj: Mapping, label: str, split: str) -> tuple[np.ndarray, list[str] | None, str]:
    """:func:`reference_truth_ratios` of an already parsed reference."""
    if _is_our_result(obj):
        name = f"{split}_perturbed"
        if name not in obj["sets"]:
            raise KeyError(
                f"reference {label} has no evaluation of {name} (it has: {', '.join(obj['sets']) or 'no sets'})"
            )
        items = obj["sets"][name]["items"]
        return np.asarray(items["truth_ratio"], dtype=np.float64), list(items["question"]), label
    if open_unlearning.is_eval_log(obj):
        return (*open_unlearning.forget_truth_ratios(obj, split, label), label)
    keys = sorted(obj["avg_paraphrased_loss"], key=int)
    paraphrased = np.array([obj["avg_paraphrased_loss"][k] for k in keys], dtype=np.float64)
    perturbed = np.array([np.mean(obj["average_perturb_loss"][k]) for k in keys], dtype=np.float64)
    tr = np.exp(paraphrased - perturbed)
    questions = None
    generated = obj.get("generated_text")
    if isinstance(generated, Mapping) and all(k in generated for k in keys):
        questions = [_log_question(generated[k][0]) for k in keys]
    return tr, questions, label


def _match_questions(questions: Sequence[str], ref_questions: Sequence[str]) -> tuple[list[int], list[int]]:
    """Index pairs ``(i, j)`` with ``questions[i] == ref_questions[j]`` (whitespace ignored; in order for repeats).

    A question not found verbatim is looked for inside the unused reference texts (unknown prompt templates).
    """
    pool: dict[str, list[int]] = {}
    for j, q in enumerate(ref_questions):
        pool.setdefault(_squash(q), []).append(j)
    used: set[int] = set()
    ours, theirs = [], []
    squashed_refs = [_squash(q) for q in ref_questions]
    for i, q in enumerate(questions):
        key = _squash(q)
        j = next((j for j in pool.get(key, []) if j not in used), None)
        if j is None and key:
            j = next((j for j, text in enumerate(squashed_refs) if j not in used and key in text), None)
        if j is not None:
            used.add(j)
            ours.append(i)
            theirs.append(j)
    return ours, theirs


def compare_to_reference(truth_ratios, questions: Sequence[str], reference, split: str) -> dict:
    """Forget quality of one forget split against a reference evaluation, with a note when it cannot be computed.

    Items are matched by question text when the reference has questions (ours always do; TOFU logs through their
    ``generated_text`` prompts), else by position over the common prefix. The KS test runs on the matched items.

    Args:
        truth_ratios: ``(N,)`` per-item truth ratios of the evaluated model on ``<split>_perturbed``.
        questions: their ``N`` questions.
        reference: ``None``, or anything :func:`reference_truth_ratios` accepts.
        split: the forget split.

    Returns:
        ``{"forget_quality": float|None, "forget_quality_note": str|None, "reference": str|None,
        "reference_items": int, "matched_by": "question"|"index"|None}``. A ``None`` forget quality is never silent:
        the note says why and a ``UserWarning`` is emitted.
    """
    entry = {
        "forget_quality": None,
        "forget_quality_note": None,
        "reference": None,
        "reference_items": 0,
        "matched_by": None,
    }

    def missing(note: str) -> dict:
        entry["forget_quality_note"] = note
        warnings.warn(f"{split}: forget quality not computed: {note}", UserWarning, stacklevel=3)
        return entry

    if reference is None:
        return missing(NO_REFERENCE_NOTE)
    tr = np.asarray(truth_ratios, dtype=np.float64)
    if len(questions) != len(tr):
        raise ValueError(f"{len(tr)} truth ratios but {len(questions)} questions.")
    obj, label = _read_reference(reference)
    entry["reference"] = label
    try:
        ref_tr, ref_questions, label = _truth_ratios_of(obj, label, split)
    except KeyError as exc:
        return missing(str(exc.args[0]))
    if ref_questions is not None:
        ours, theirs = _match_questions(questions, ref_questions)
        entry["matched_by"] = "question"
        if not ours:
            return missing(
                f"none of the {len(tr)} evaluated {split} questions appears among the reference's {len(ref_tr)} "
                f"items: the reference evaluated another set (is it the right split's log?)"
            )
        notes = []
        if len(ours) < len(tr):
            notes.append(f"the reference covers {len(ours)} of the {len(tr)} evaluated items")
    else:
        common = min(len(tr), len(ref_tr))
        ours = theirs = list(range(common))
        entry["matched_by"] = "index"
        if common == 0:
            return missing("the reference holds no forget items")
        notes = [
            f"the reference has no questions: items matched by position over the common prefix of {common} "
            f"(evaluated {len(tr)}, reference {len(ref_tr)})"
        ]
    a, b = tr[ours], ref_tr[theirs]
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        notes.append("some truth ratios are not finite")
    entry["forget_quality"] = forget_quality(a, b)
    entry["reference_items"] = len(ours)
    if notes:
        entry["forget_quality_note"] = f"KS test on {len(ours)} matched items; " + "; ".join(notes)
    return entry


def load_tofu_eval(path) -> dict:
    """Read a ``tofu_eval.json`` written by :func:`evaluate_tofu` (``path`` may be the folder holding it)."""
    path = Path(path).expanduser()
    if path.is_dir():
        path = path / RESULT_FILE
    with open(path, encoding="utf-8") as handle:
        result = json.load(handle)
    if not _is_our_result(result):
        raise ValueError(f"{str(path)!r} is not a TOFU evaluation written by evaluate_tofu (no 'sets').")
    return result


# --------------------------------------------------------------------------------------------------------------------
# The evaluation
# --------------------------------------------------------------------------------------------------------------------


def _set_kind(name: str) -> str:
    if name.startswith("forget"):
        return "forget"
    if name == "retain_perturbed":
        return "retain"
    return "factual"  # real_authors_perturbed, world_facts_perturbed


def _resolve_sets(forget_splits: tuple[str, ...], sets) -> list[str]:
    available = [f"{f}_perturbed" for f in forget_splits] + list(UTILITY_SETS)
    if sets is None:
        return available
    if isinstance(sets, str):
        sets = (sets,)
    chosen = []
    for name in sets:
        full = name if name.endswith("_perturbed") else f"{name}_perturbed"
        if full not in available:
            raise ValueError(
                f"Unknown eval set {name!r} for forget_splits={list(forget_splits)}; choose among: "
                f"{', '.join(available)} (the '_perturbed' suffix may be left out)."
            )
        if full not in chosen:
            chosen.append(full)
    if not chosen:
        raise ValueError("sets is empty: nothing to evaluate.")
    return [name for name in available if name in chosen]


def load_eval_set(name: str, data_dir, max_items: int | None, protocol: str = "all") -> dict:
    """The first ``min(max_items, PROTOCOLS[protocol])`` rows of a set (those that are given), checked."""
    dataset = load_tofu(name, data_dir)
    limits = [m for m in (max_items, PROTOCOLS[protocol]) if m is not None]
    if limits:
        dataset = dataset.select(range(min(*limits, len(dataset))))
    base_key = "answer" if _set_kind(name) == "factual" else "paraphrased_answer"
    needed = {"question", "answer", "perturbed_answer", base_key}
    missing = needed - set(dataset.column_names)
    if missing:
        raise ValueError(f"TOFU set {name} lacks column(s) {sorted(missing)}; it has {dataset.column_names}.")
    rows = dataset.select_columns(sorted(needed)).to_dict()
    counts = {len(p) for p in rows["perturbed_answer"]}
    if len(counts) > 1 or 0 in counts:
        raise ValueError(f"TOFU set {name}: every row needs the same number (>0) of perturbed answers; got {counts}.")
    rows["base_key"] = base_key
    rows["fingerprint"] = data_fingerprint({k: rows[k] for k in sorted(needed)})
    return rows


def _set_pairs(rows: dict) -> list[tuple[str, str]]:
    """The set's (question, candidate) pairs: every answer, then every paraphrased answer (forget / retain sets),
    then each item's perturbed answers in order."""
    questions = rows["question"]
    pairs = list(zip(questions, rows["answer"]))
    if rows["base_key"] != "answer":
        pairs += list(zip(questions, rows["paraphrased_answer"]))
    pairs += [(q, a) for q, perturbed in zip(questions, rows["perturbed_answer"]) for a in perturbed]
    return pairs


def _likelihoods(
    model,
    tokenizer,
    name: str,
    rows: dict,
    batch_size: int,
    max_length: int,
    known: dict,
    scoring: str = "shared_prefix",
) -> dict:
    """The set's answer / paraphrase / perturbed likelihoods.

    Pairs found in ``known`` (``(question, answer) -> (nll_sum, num_tokens)``, filled by the sets scored before in
    the same evaluation, e.g. forget10 before forget05 and forget01, which are its last 200 / 40 items) are not scored
    again; the others go to one :func:`score_answers` call and into ``known``.
    """
    pairs = _set_pairs(rows)
    todo = [pair for pair in dict.fromkeys(pairs) if pair not in known]
    if todo:
        nll, ntok = score_answers(
            model,
            tokenizer,
            [q for q, _ in todo],
            [a for _, a in todo],
            batch_size=batch_size,
            max_length=max_length,
            desc=f"{name}: likelihood",
            scoring=scoring,
        )
        known.update(zip(todo, zip(nll.tolist(), ntok.tolist())))
    nll = np.array([known[pair][0] for pair in pairs], dtype=np.float64)
    ntok = np.array([known[pair][1] for pair in pairs], dtype=np.int64)
    n = len(rows["question"])
    k = len(rows["perturbed_answer"][0]) if n else 0
    data = {"answer_nll_sum": nll[:n], "answer_num_tokens": ntok[:n]}
    offset = n
    if rows["base_key"] != "answer":
        data["paraphrased_nll_sum"] = nll[n : 2 * n]
        data["paraphrased_num_tokens"] = ntok[n : 2 * n]
        offset = 2 * n
    data["perturbed_nll_sum"] = nll[offset:].reshape(n, k)
    data["perturbed_num_tokens"] = ntok[offset:].reshape(n, k)
    return to_builtin(data)


def _remember(known: dict, rows: dict, likelihood: dict) -> None:
    """Add a (cached) set's pair likelihoods to ``known`` (see :func:`_likelihoods`)."""
    nll = list(likelihood["answer_nll_sum"])
    ntok = list(likelihood["answer_num_tokens"])
    if rows["base_key"] != "answer":
        nll += likelihood["paraphrased_nll_sum"]
        ntok += likelihood["paraphrased_num_tokens"]
    nll += [v for item in likelihood["perturbed_nll_sum"] for v in item]
    ntok += [v for item in likelihood["perturbed_num_tokens"] for v in item]
    for pair, values in zip(_set_pairs(rows), zip(nll, ntok)):
        known.setdefault(pair, values)


def _set_result(name: str, rows: dict, likelihood: dict, generated: list[str] | None) -> dict:
    kind = _set_kind(name)
    p_answer = answer_probability(likelihood["answer_nll_sum"], likelihood["answer_num_tokens"])
    p_perturbed = answer_probability(likelihood["perturbed_nll_sum"], likelihood["perturbed_num_tokens"])
    if p_perturbed.ndim != 2:  # zero items
        p_perturbed = p_perturbed.reshape(len(p_answer), -1)
    if kind == "factual":
        p_base = p_answer
        probability = normalized_probability_items(p_answer, p_perturbed)
    else:
        p_base = answer_probability(likelihood["paraphrased_nll_sum"], likelihood["paraphrased_num_tokens"])
        probability = p_answer
    tr = truth_ratio(p_base, p_perturbed)
    tr_score = forget_truth_ratio_score(tr) if kind == "forget" else retain_truth_ratio_score(tr)
    items = {
        "question": list(rows["question"]),
        "probability": probability,
        "answer_probability": p_answer,
        "truth_ratio": tr,
    }
    rouge = None
    if generated is not None:
        items["rouge_l_recall"] = rouge_l_recall(generated, rows["answer"])
        items["generated"] = list(generated)
        rouge = float(np.mean(items["rouge_l_recall"]))
    return {
        "aggregate": {
            "probability": float(np.mean(probability)),
            "rouge_l_recall": rouge,
            "truth_ratio": tr_score,
            "num_items": len(p_answer),
        },
        "items": items,
    }


@dataclass
class TofuEvalSettings:
    """Every setting of a TOFU evaluation (:func:`evaluate_tofu` says what each means), checked when made: a bad value
    raises ``ValueError`` before any model work. ``forget_splits`` becomes a tuple without repeats, ``sets`` the
    resolved list of ``<name>_perturbed`` sets (every set of the forget splits and the utility sets when not given)."""

    forget_splits: Sequence[str] | str = ("forget10",)
    data_dir: str | os.PathLike | None = None
    reference: str | os.PathLike | Mapping | None = None
    batch_size: int = 16
    max_new_tokens: int = 200
    max_items: int | None = None
    sets: Sequence[str] | None = None
    max_length: int = 512
    generation_batch_size: int | None = None
    generate: bool = True
    protocol: str = "all"
    scoring: str = "shared_prefix"
    decoder: str = "compact"

    def __post_init__(self):
        if isinstance(self.forget_splits, str):
            self.forget_splits = (self.forget_splits,)
        self.forget_splits = tuple(dict.fromkeys(self.forget_splits))
        unknown = [f for f in self.forget_splits if f not in RETAIN_OF_FORGET]
        if unknown:
            raise ValueError(f"Unknown forget split(s) {unknown}; valid forget splits: {', '.join(RETAIN_OF_FORGET)}.")
        checks = [
            (self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}"),
            (self.max_new_tokens >= 1, f"max_new_tokens must be >= 1, got {self.max_new_tokens}"),
            (self.max_items is None or self.max_items >= 1, f"max_items must be >= 1 or None, got {self.max_items}"),
            (self.max_length >= 2, f"max_length must be >= 2, got {self.max_length}"),
            (
                self.generation_batch_size is None or self.generation_batch_size >= 1,
                f"generation_batch_size must be >= 1, got {self.generation_batch_size}",
            ),
            (
                self.protocol in PROTOCOLS,
                f"protocol must be one of {', '.join(PROTOCOLS)} (all items, or TOFU's first 300 per set), got "
                f"{self.protocol!r}",
            ),
            (self.scoring in SCORING, f"scoring must be one of {SCORING}, got {self.scoring!r}"),
            (self.decoder in DECODERS, f"decoder must be one of {DECODERS}, got {self.decoder!r}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)
        self.sets = _resolve_sets(self.forget_splits, self.sets)

    def record(self, reference_label: str | None) -> dict:
        """The result's ``settings`` entry (a portable data path; the reference by its label)."""
        return {
            "forget_splits": list(self.forget_splits),
            "sets": self.sets,
            "protocol": self.protocol,
            "data_dir": portable_path(self.data_dir),
            "batch_size": self.batch_size,
            "max_new_tokens": self.max_new_tokens,
            "max_items": self.max_items,
            "max_length": self.max_length,
            "generation_batch_size": self.generation_batch_size,
            "generate": self.generate,
            "scoring": self.scoring,
            "decoder": self.decoder,
            "reference": reference_label,
        }


def evaluate_tofu(
    model,
    tokenizer,
    forget_splits: Sequence[str] | str = ("forget10",),
    data_dir: str | os.PathLike | None = None,
    output_dir: str | os.PathLike | None = None,
    reference: str | os.PathLike | Mapping | None = None,
    *,
    settings: TofuEvalSettings | None = None,
    **options,
) -> dict:
    """Evaluate ``model`` on TOFU: per-set probability / ROUGE-L / truth ratio, model utility, forget quality.

    Args:
        model: causal LM (any device; put in eval mode for the call, its previous mode restored).
        tokenizer: its tokenizer (the toolkit's prompt: chat template, or ``"Question: ...\\nAnswer:"``).
        forget_splits: forget splits whose ``<split>_perturbed`` set is evaluated (``forget01/05/10``).
        data_dir: local TOFU folder for :func:`rklu_llm.data.tofu.load_tofu` (default ``$RKLU_TOFU_DIR`` or the hub).
        output_dir: when given, ``tofu_eval.json`` is written there (atomically) and per-(set, metric) results are
            cached under ``tofu_eval_cache/`` so an interrupted evaluation resumes.
        reference: the retain-only model's evaluation for forget quality: a ``tofu_eval.json`` (path or dict), a TOFU
            ``eval_log_forget.json`` / ``eval_log_aggregated.json``, or ``None`` (forget quality ``None`` with a note
            and a warning).
        settings: a :class:`TofuEvalSettings` holding every setting (then ``forget_splits``, ``data_dir``,
            ``reference`` and ``options`` are not given); else it is made from those and ``options``, its other
            fields:

            - ``batch_size``: sequences per forward pass / prompts per ``generate`` call;
            - ``max_new_tokens``: greedy generation budget for ROUGE;
            - ``max_items``: evaluate only the first ``max_items`` items of each set (default: all the protocol's);
            - ``sets``: evaluate only these sets (names from the default list, ``_perturbed`` suffix optional), e.g.
              ``("forget10", "retain")``; default all of ``<split>_perturbed`` per forget split,
              ``retain_perturbed``, ``real_authors_perturbed``, ``world_facts_perturbed``;
            - ``max_length``: prompt + answer tokens kept when scoring;
            - ``generation_batch_size``: prompts per ``generate`` call (default ``batch_size``); the questions of all
              sets are generated in one pass, so on a GPU a large value (e.g. 1024) needs only one or two calls;
            - ``generate``: ``False`` skips the greedy generation, by far the costliest part: ROUGE-L is then
              ``None`` (items without ``rouge_l_recall`` / ``generated``) and so is model utility, while
              probabilities, truth ratios and forget quality are computed as usual (e.g. to follow forget quality
              after every epoch);
            - ``protocol``: ``"all"`` items of every set, or ``"tofu"``: the original scripts' counts, the first 300
              items of every set (forget10 and retain 300 of 400; the others are smaller). Named in the result and
              its cache;
            - ``scoring``: how likelihoods are computed, ``"shared_prefix"`` (each question once per batch) or
              ``"plain"`` (see :func:`rklu_llm.eval.scoring.score_examples`); the numbers agree up to float rounding;
            - ``decoder``: greedy decoder, ``"compact"`` (finished answers leave the batch), ``"generate"`` or
              ``"static"`` (a static cache, compiled by transformers on a GPU); see
              :func:`rklu_llm.eval.scoring.generate_continuations`. All give the same tokens.

    Returns:
        The result dict whose layout the module docstring gives.

    Raises:
        ValueError: unknown forget split / set or bad numeric settings (before any model work).
        DataUnavailableError: a set cannot be loaded (before any model work).
        FileNotFoundError, ValueError: ``reference`` names a missing file or an unknown format (before any model work).
        TypeError: ``settings`` and single settings given together, or an unknown setting.
    """
    # ---- validate everything before touching the model
    if settings is None:
        settings = TofuEvalSettings(forget_splits, data_dir, reference, **options)
    elif options or forget_splits != ("forget10",) or data_dir is not None or reference is not None:
        raise TypeError("Pass either settings= or the settings one by one, not both.")
    s = settings
    reference, reference_label = _reference(s)
    data = {name: load_eval_set(name, s.data_dir, s.max_items, s.protocol) for name in s.sets}

    run = Evaluation(model, output_dir, CACHE_DIR, RESULT_FILE, s.record(reference_label))
    likelihoods, generations = _score_sets(model, tokenizer, s, data, run.cache)
    result = run.result
    result["sets"] = {name: _set_result(name, data[name], likelihoods[name], generations.get(name)) for name in s.sets}
    result["model_utility"], result["model_utility_note"] = _utility(result["sets"], s.generate)
    result["forget"] = {}
    for split in s.forget_splits:  # forget quality per forget split
        name = f"{split}_perturbed"
        if name not in result["sets"]:
            continue
        items = result["sets"][name]["items"]
        entry = compare_to_reference(items["truth_ratio"], items["question"], reference, split)
        if reference_label is not None:
            entry["reference"] = reference_label
        result["forget"][split] = entry
    return run.finish()


def _reference(settings: TofuEvalSettings) -> tuple[Mapping | None, str | None]:
    """The reference evaluation and its label, read now: a missing or unknown file, or an open-unlearning log of
    another split, fails before any model work."""
    if settings.reference is None:
        return None, None
    reference, label = _read_reference(settings.reference)
    if open_unlearning.is_eval_log(reference):
        for split in settings.forget_splits:
            with contextlib.suppress(KeyError):  # no truth ratios at all: a note in the result, as for ours
                open_unlearning.forget_truth_ratios(reference, split, label)
    return reference, label


def _score_sets(model, tokenizer, s: TofuEvalSettings, data: dict, cache: MetricCache) -> tuple[dict, dict]:
    """Per set: likelihoods (probability, truth ratio); then one greedy generation pass over every set (ROUGE); each
    piece taken from ``cache`` when it is there, and saved there when computed."""
    like_settings = {"max_items": s.max_items, "max_length": s.max_length, "protocol": s.protocol}
    gen_settings = {"max_items": s.max_items, "max_new_tokens": s.max_new_tokens, "protocol": s.protocol}
    likelihoods, generations = {}, {}
    for name in s.sets:
        likelihood = cache.load(name, "likelihood", like_settings, data[name]["fingerprint"])
        if likelihood is not None:
            likelihoods[name] = likelihood
        generation = cache.load(name, "generation", gen_settings, data[name]["fingerprint"]) if s.generate else None
        if generation is not None:
            generations[name] = generation["generated"]
    known: dict = {}  # (question, answer) -> likelihood, shared by the sets (forget01/05 are forget10's last items)
    for name in likelihoods:
        _remember(known, data[name], likelihoods[name])
    for name in sorted((n for n in s.sets if n not in likelihoods), key=lambda n: -len(data[n]["question"])):
        rows = data[name]
        likelihoods[name] = _likelihoods(model, tokenizer, name, rows, s.batch_size, s.max_length, known, s.scoring)
        cache.save(name, "likelihood", like_settings, rows["fingerprint"], likelihoods[name])
    pending = [name for name in s.sets if name not in generations] if s.generate else []
    if pending:  # all questions in one pass: few, large generate calls
        questions = [q for name in pending for q in data[name]["question"]]
        texts = generate_answers(
            model,
            tokenizer,
            questions,
            batch_size=s.generation_batch_size or s.batch_size,
            max_new_tokens=s.max_new_tokens,
            desc="Generating answers",
            decoder=s.decoder,
        )
        start = 0
        for name in pending:
            count = len(data[name]["question"])
            generations[name] = texts[start : start + count]
            start += count
            cache.save(name, "generation", gen_settings, data[name]["fingerprint"], {"generated": generations[name]})
    return likelihoods, generations


def _utility(sets: dict, generate: bool) -> tuple[float | None, str | None]:
    """Model utility and, when it could not be computed, why (also warned)."""
    utility, note = None, None
    missing = [s for s in UTILITY_SETS if s not in sets]
    if missing:
        note = f"not computed: set(s) {', '.join(missing)} were not evaluated"
    elif not generate:
        note = "not computed: generate=False, and ROUGE-L needs the generations"
    else:
        try:
            utility = model_utility({s: sets[s]["aggregate"] for s in UTILITY_SETS})
        except ValueError as exc:
            note = f"not computed: {exc}"
    if note is not None:
        warnings.warn(f"TOFU model utility {note}", UserWarning, stacklevel=3)
    return utility, note


def summary_row(result: Mapping) -> dict:
    """One flat table row of a TOFU result: model, item protocol, model utility, and per forget split its forget
    quality and forget-set probability / ROUGE-L recall / truth ratio, then the same three of every utility set
    (retain, real authors, world facts)."""
    row = {
        "model": result.get("model"),
        **({"base_model": result["base_model"]} if result.get("base_model") else {}),
        "protocol": result.get("settings", {}).get("protocol", "all"),
        "model_utility": result.get("model_utility"),
    }
    for split, entry in result.get("forget", {}).items():
        row[f"{split}_forget_quality"] = entry.get("forget_quality")
    # the forget sets, then model utility's nine parts (so a change of utility can be traced to its source)
    names = [f"{split}_perturbed" for split in result.get("settings", {}).get("forget_splits", [])] + list(UTILITY_SETS)
    for name in names:
        aggregate = result["sets"].get(name, {}).get("aggregate")
        if aggregate is not None:
            label = name.removesuffix("_perturbed")
            for metric in ("probability", "rouge_l_recall", "truth_ratio"):
                row[f"{label}_{metric}"] = aggregate[metric]
    return row


def yardstick_table(result: Mapping, original=None, oracle=None) -> str:
    """``result`` next to its yardsticks, one line each: the original model's and the oracle's (retain-only) stored
    ``tofu_eval.json`` (a path, a folder holding one, or a dict; a missing or foreign file is left out, said so).
    Columns: model utility, then per forget split its forget quality and forget-set probability, then the retain
    probability."""
    rows = [("evaluated", summary_row(result))]
    for label, source in (("original", original), ("oracle", oracle)):
        if source is None:
            continue
        path = Path(source) / RESULT_FILE if not isinstance(source, Mapping) and Path(source).is_dir() else source
        try:
            other = source if isinstance(source, Mapping) else json.loads(Path(path).read_text())
        except (OSError, ValueError):
            rows.append((label, None))
            continue
        rows.append((label, summary_row(other) if _is_our_result(other) else None))
    splits = result.get("settings", {}).get("forget_splits", [])
    keys = ["model_utility"] + [f"{s}_{m}" for s in splits for m in ("forget_quality", "probability")]
    keys.append("retain_probability")
    width = max(len(k) for k in keys) + 2
    lines = [f"{'':<10}" + "".join(f"{k:>{width}}" for k in keys)]
    for label, row in rows:
        if row is None:
            lines.append(f"{label:<10}  (no tofu_eval.json of rklu_llm to compare with)")
            continue
        cells = []
        for key in keys:
            value = row.get(key)
            cells.append(f"{'-' if value is None else f'{value:.4g}':>{width}}")
        lines.append(f"{label:<10}" + "".join(cells) + f"  {row.get('model')}")
    return "\n".join(lines)
