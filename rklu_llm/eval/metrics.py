"""Pure metric functions: arrays in, numbers out; no model, no files.

TOFU's definitions (``p`` is always the length-normalised answer probability):

* ``p(a | q) = exp(-NLL_sum(a | q) / |a|)`` over the answer tokens, the EOS after the answer included.
* Truth ratio per item ``TR = geometric_mean_j p(perturbed_j) / p(base)``; aggregates: forget ``mean(min(TR, 1/TR))``,
  retain / real authors / world facts ``mean(max(0, 1 - TR))``.
* Probability of real authors / world facts ``mean p(answer) / (p(answer) + sum_j p(perturbed_j))``.
* Model utility: harmonic mean of 9 values; forget quality: a two-sample KS p-value of truth ratios.
* ROUGE-L recall of a generation against the gold answer (``rouge_score``, stemmer on).

Copyright (continuations of book chunks) and utility:

* sentence BLEU x100 (``sacrebleu.sentence_bleu``: 13a tokenizer, exp smoothing, effective order) and corpus BLEU;
* ROUGE-L recall / precision / F1 (``rouge_score``, stemmer on), x100 in the copyright results;
* token-weighted perplexity ``exp(sum NLL / sum tokens)``.

Every evaluator (TOFU, copyright, audits) takes its metrics from here; a new metric is one more function here with a
hand-derived test.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence

import numpy as np
from scipy.stats import hmean, ks_2samp

#: The three aggregates of each utility set that make up TOFU model utility.
UTILITY_METRICS = ("probability", "rouge_l_recall", "truth_ratio")


def answer_probability(nll_sum, num_tokens) -> np.ndarray:
    """Length-normalised answer probability, ``p = exp(-nll_sum / num_tokens)``, element-wise.

    Args:
        nll_sum: ``(...)`` summed negative log-likelihood of the answer tokens.
        num_tokens: ``(...)`` number of answer tokens (same shape, or broadcastable).

    Returns:
        ``(...)`` float64 array in ``[0, 1]`` (for ``nll_sum >= 0``).
    """
    nll_sum = np.asarray(nll_sum, dtype=np.float64)
    num_tokens = np.asarray(num_tokens, dtype=np.float64)
    return np.exp(-nll_sum / num_tokens)


# TOFU's code stores exp(mean_j perturbed_loss_j - paraphrased_loss) = 1/TR per item and scores retain-type sets with
# max(0, 1 - 1/that) = max(0, 1 - TR): identical aggregates; min(x, 1/x) and the KS p-value are invariant to x -> 1/x.
def truth_ratio(base_prob, perturbed_probs) -> np.ndarray:
    """Per-item truth ratio ``TR_i = (prod_j p(pert_ij))^(1/K) / p(base_i)``.

    Computed in log space: ``exp(mean_j log p(pert_ij) - log p(base_i))``.

    Args:
        base_prob: ``(N,)`` probability of the base answer (paraphrased answer, or the answer itself on
            real authors / world facts).
        perturbed_probs: ``(N, K)`` probabilities of the ``K`` perturbed (wrong) answers.

    Returns:
        ``(N,)`` float64; ``< 1`` when the model prefers the base answer over the perturbed ones.
    """
    base = np.asarray(base_prob, dtype=np.float64)
    pert = np.asarray(perturbed_probs, dtype=np.float64)
    if base.ndim != 1 or pert.ndim != 2 or pert.shape[0] != base.shape[0]:
        raise ValueError(
            f"truth_ratio expects base_prob (N,) and perturbed_probs (N, K); got {base.shape} and {pert.shape}."
        )
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.exp(np.log(pert).mean(axis=1) - np.log(base))


def forget_truth_ratio_score(tr) -> float:
    """Forget-set truth-ratio aggregate, ``mean_i min(TR_i, 1/TR_i)`` (1 = no preference for the true answer).

    Args:
        tr: ``(N,)`` per-item truth ratios.
    """
    tr = np.asarray(tr, dtype=np.float64)
    with np.errstate(divide="ignore"):
        return float(np.mean(np.minimum(tr, 1.0 / tr)))


def retain_truth_ratio_score(tr) -> float:
    """Retain / real authors / world facts truth-ratio aggregate, ``mean_i max(0, 1 - TR_i)`` (higher is better).

    Args:
        tr: ``(N,)`` per-item truth ratios.
    """
    tr = np.asarray(tr, dtype=np.float64)
    return float(np.mean(np.maximum(0.0, 1.0 - tr)))


def normalized_probability_items(answer_prob, perturbed_probs) -> np.ndarray:
    """``(N,)`` per-item ``p(ans_i) / (p(ans_i) + sum_j p(pert_ij))``."""
    ans = np.asarray(answer_prob, dtype=np.float64)
    pert = np.asarray(perturbed_probs, dtype=np.float64)
    if ans.ndim != 1 or pert.ndim != 2 or pert.shape[0] != ans.shape[0]:
        raise ValueError(
            f"normalized_probability expects answer_prob (N,) and perturbed_probs (N, K); got {ans.shape} and "
            f"{pert.shape}."
        )
    return ans / (ans + pert.sum(axis=1))


def normalized_probability(answer_prob, perturbed_probs) -> float:
    """Probability score of real authors / world facts, ``mean_i p(ans_i) / (p(ans_i) + sum_j p(pert_ij))``.

    Args:
        answer_prob: ``(N,)`` probabilities of the true answers.
        perturbed_probs: ``(N, K)`` probabilities of the perturbed answers.
    """
    return float(np.mean(normalized_probability_items(answer_prob, perturbed_probs)))


def model_utility(values: Mapping) -> float:
    """Model utility, ``scipy.stats.hmean`` of 9 values, ``9 / sum_v 1/v`` (0 as soon as one value is 0).

    Args:
        values: ``{set: {metric: value}}`` with set in ``retain``, ``real_authors``, ``world_facts`` (the
            ``*_perturbed`` config names are accepted too) and metric in ``probability``, ``rouge_l_recall``,
            ``truth_ratio`` (the set's aggregates, e.g. ``result["sets"][name]["aggregate"]``).

    Raises:
        ValueError: one of the 9 values is missing, or one is negative or not finite.
    """
    collected, missing = [], []
    for short in ("retain", "real_authors", "world_facts"):
        entry = values.get(short, values.get(f"{short}_perturbed"))
        for metric in UTILITY_METRICS:
            value = None if entry is None else entry.get(metric)
            if value is None:
                missing.append(f"{short}.{metric}")
            else:
                collected.append((f"{short}.{metric}", float(value)))
    if missing:
        raise ValueError(
            "model_utility needs the 9 values {retain, real_authors, world_facts} x "
            f"{{{', '.join(UTILITY_METRICS)}}}; missing: {', '.join(missing)}."
        )
    bad = [f"{name}={value}" for name, value in collected if not math.isfinite(value) or value < 0]
    if bad:
        raise ValueError(f"model_utility needs finite non-negative values; got {', '.join(bad)}.")
    return float(hmean([value for _, value in collected]))


def forget_quality(tr_unlearned, tr_reference) -> float:
    """Forget quality, the two-sample Kolmogorov-Smirnov p-value ``ks_2samp(tr_unlearned, tr_reference).pvalue``.

    Args:
        tr_unlearned: ``(N,)`` per-item truth ratios of the evaluated model on the forget set.
        tr_reference: ``(M,)`` the same for the retain-only reference model.

    Returns:
        p-value in ``[0, 1]``; above 0.05 the two distributions are statistically indistinguishable.
    """
    a = np.asarray(tr_unlearned, dtype=np.float64)
    b = np.asarray(tr_reference, dtype=np.float64)
    if a.size == 0 or b.size == 0:
        raise ValueError("forget_quality needs at least one truth ratio on each side.")
    return float(ks_2samp(a, b).pvalue)


@functools.cache
def _rouge_l_scorer():
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)


def rouge_l_recall(generated: Sequence[str], gold: Sequence[str]) -> np.ndarray:
    """Per-item ROUGE-L recall, ``RougeScorer(["rougeL"], use_stemmer=True).score(gold, generated)["rougeL"].recall``.

    Recall = LCS(gold, generated) / len(gold) over stemmed word tokens.

    Args:
        generated: ``N`` generated strings.
        gold: ``N`` reference answers.

    Returns:
        ``(N,)`` float64 in ``[0, 1]``.
    """
    return rouge_l(generated, gold)["recall"]


def rouge_l(generated: Sequence[str], gold: Sequence[str]) -> dict[str, np.ndarray]:
    """Per-item ROUGE-L of ``RougeScorer(["rougeL"], use_stemmer=True).score(gold, generated)["rougeL"]``.

    Over the lower-cased, alphanumeric, Porter-stemmed word tokens of both texts, with ``LCS`` the length of their
    longest common subsequence: ``recall = LCS / len(gold)``, ``precision = LCS / len(generated)``,
    ``fmeasure = 2 * precision * recall / (precision + recall)`` (0 when either is 0, e.g. an empty generation).

    Args:
        generated: ``N`` generated strings.
        gold: ``N`` references.

    Returns:
        ``{"recall", "precision", "fmeasure"}``, each ``(N,)`` float64 in ``[0, 1]``.
    """
    if len(generated) != len(gold):
        raise ValueError(f"rouge_l: {len(generated)} generations but {len(gold)} references.")
    scorer = _rouge_l_scorer()
    scores = [scorer.score(g, s)["rougeL"] for s, g in zip(generated, gold, strict=True)]
    return {key: np.array([getattr(x, key) for x in scores], dtype=np.float64)
            for key in ("recall", "precision", "fmeasure")}


def sentence_bleu(generated: Sequence[str], references: Sequence[str]) -> np.ndarray:
    """Per-item BLEU x100, ``sacrebleu.sentence_bleu(generated_i, [reference_i]).score``.

    sacrebleu's defaults for sentence BLEU: ``13a`` tokenization, case-sensitive, n-grams up to 4, ``exp`` smoothing
    (the k-th n-gram order with no match counts as precision ``1 / (2^k * total_n)``), effective order (orders with
    no n-gram in the generation are left out of the geometric mean), and the brevity penalty
    ``BP = exp(1 - len(ref) / len(gen))`` when the generation is shorter. ``100 * BP * (prod_n p_n)^(1/orders)``;
    0 when no unigram matches (an empty generation included).

    Args:
        generated: ``N`` generated strings.
        references: ``N`` references (one each).

    Returns:
        ``(N,)`` float64 in ``[0, 100]``.
    """
    import sacrebleu

    if len(generated) != len(references):
        raise ValueError(f"sentence_bleu: {len(generated)} generations but {len(references)} references.")
    scores = [sacrebleu.sentence_bleu(g, [r]).score for g, r in zip(generated, references, strict=True)]
    return np.array(scores, dtype=np.float64)


def corpus_bleu(generated: Sequence[str], references: Sequence[str]) -> float:
    """Corpus BLEU x100, ``sacrebleu.corpus_bleu(generated, [references]).score``: n-gram matches and lengths summed
    over all items before the precisions and the brevity penalty are taken (13a tokenization, no smoothing needed)."""
    import sacrebleu

    if len(generated) != len(references):
        raise ValueError(f"corpus_bleu: {len(generated)} generations but {len(references)} references.")
    return float(sacrebleu.corpus_bleu(list(generated), [list(references)]).score)


def perplexity(nll_sum, num_tokens) -> float:
    """Token-weighted perplexity ``exp(sum_i nll_sum_i / sum_i num_tokens_i)``: every token weighs the same, whatever
    the length of its segment (not the mean of per-segment perplexities).

    Args:
        nll_sum: ``(N,)`` summed negative log-likelihood (nats) of each segment's predicted tokens.
        num_tokens: ``(N,)`` their numbers of predicted tokens.
    """
    nll = np.asarray(nll_sum, dtype=np.float64)
    count = np.asarray(num_tokens, dtype=np.float64)
    if count.sum() <= 0:
        raise ValueError("perplexity needs at least one predicted token.")
    return float(np.exp(nll.sum() / count.sum()))
