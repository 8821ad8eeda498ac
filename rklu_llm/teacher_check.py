"""The teacher check: after the augmentation (phase 1) and before any distillation, would RKL-U's teacher still
reproduce the forget set?

The teacher ``l_t = l_o - alpha * relu(l_a - l_o)`` moves a token's logit only by ``alpha`` times the rise the
augmentation gave it, so the true next token stays the teacher's top-1 wherever ``alpha x rise`` is smaller than the
original's margin (its true-token logit minus the best other logit). A student distilled towards such a teacher
learns to reproduce the forget set: the teacher, not the distillation, is then the limit. The check measures, on the
forget set's answer (or continuation) tokens:

- the logit rise of the true token, ``l_a[y] - l_o[y]`` (mean and median), and the original's margin (median);
- how often the true token is the top-1 of the original and of the teacher, and the teacher's mean probability of it;
- how fast distillation can start: the original's probability of the true token, the share of positions where it is
  above ``SATURATED_PROBABILITY`` (0.99), and the norm of the loss's gradient with respect to the student's logits at
  the first step (the student is the original then), for the reverse KL (RKL-U) and the forward KL (FKL-U). The
  reverse KL's gradient at a position is ``p_o * (log p_o - log p_t - KL)``: where the original is nearly certain of
  the true token it shrinks with ``1 - p_o(y)`` however far the teacher is (at ``p_o(y)`` 0.999 it is about a
  hundredth of its size at 0.9), while the forward KL's ``p_o - p_t`` does not shrink;
- optionally, on a sample of items, the teacher's own greedy continuation of each prompt (decoded from the teacher
  logits, one token at a time) scored against the true continuation (sentence BLEU, ROUGE-L recall), beside the
  original's greedy continuation scored the same way.

Verdict (:func:`verdict`): ``weak`` when the teacher's top-1 is still the true token at more than ``max_top1``
(default 0.5) times the share of positions where the original's is, i.e. the teacher keeps more than half of the
original's correct predictions; else ``ok``. Relative, because an original that does not predict every token of the
forget set (a book it knows without having memorised it: top-1 true at about half the positions) would otherwise pass
with a teacher that changed nothing. Separately, ``saturated`` when the original is above ``SATURATED_PROBABILITY``
at more than half of the positions: then a good teacher is not enough, reverse-KL distillation starts slowly there
(``saturation_note`` says so, with what to change). :class:`~rklu_llm.UnlearnTrainer` runs the check before distillation
(``teacher_check``), logs it, stores it in the run record and the model card; ``rklu-llm diagnose`` runs phase 1 and
the check alone.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import numpy as np
import torch

from .data.qa import QACollator
from .eval.metrics import rouge_l_recall, sentence_bleu
from .losses import IGNORE_INDEX, logit_subtraction_teacher

#: ``logits_of(which, batch)``: ``(B, T, V)`` logits of the frozen ``"original"`` or ``"augmented"`` model
LogitsOf = Callable[[str, dict], torch.Tensor]

WEAK, OK = "weak", "ok"


def verdict(teacher_top1_true: float, original_top1_true: float, max_top1: float) -> str:
    """``weak`` when the teacher's top-1 is the true token at more than ``max_top1`` x the original's share of such
    positions (``teacher_top1_true`` and ``original_top1_true``: fractions of the forget set's positions), else
    ``ok``. The check's records hold all three numbers, so a report can apply the rule to them again."""
    return WEAK if teacher_top1_true > max_top1 * original_top1_true else OK


def stored_verdict(check: dict | None) -> str | None:
    """The verdict of a stored check result (a run record's ``teacher_check``) by the current rule, from the numbers it
    holds, so that records made under an earlier rule are judged alike; its stored verdict when it lacks them, None
    when no check ran."""
    check = check or {}
    if check.get("teacher_top1_true") is None or check.get("original_top1_true") is None:
        return check.get("verdict")
    return verdict(check["teacher_top1_true"], check["original_top1_true"], check.get("max_top1", 0.5))


#: the original's true-token probability above which a position counts as saturated (see the module docstring)
SATURATED_PROBABILITY = 0.99


@torch.no_grad()
def teacher_token_stats(
    orig_logits: torch.Tensor, aug_logits: torch.Tensor, labels: torch.Tensor, alpha: float
) -> dict[str, torch.Tensor]:
    """Per counted target position, what the teacher does to the true next token.

    Args:
        orig_logits: ``(B, T, V)`` logits of the original model.
        aug_logits: ``(B, T, V)`` logits of the augmented model.
        labels: ``(B, T)`` token ids, ``-100`` where not counted; position ``t``'s logits predict ``labels[:, t + 1]``.
        alpha: the teacher's strength (``teacher_alpha``).

    Returns:
        ``(N,)`` float32 tensors over the ``N`` counted targets ``y``: ``rise`` = ``l_a[y] - l_o[y]``; ``margin`` =
        ``l_o[y] - max_{v != y} l_o[v]``; ``original_top1`` / ``teacher_top1`` = 1.0 where ``y`` is that model's
        argmax (ties count as top-1); ``teacher_probability`` = ``softmax(l_t)[y]``; ``original_probability`` =
        ``softmax(l_o)[y]``; ``start_gradient_reverse`` / ``start_gradient_forward``: the L2 norm over the vocabulary
        of the gradient of ``KL(p_s || p_t)`` / ``KL(p_t || p_s)`` with respect to the student's logits at
        ``p_s = p_o`` (the first step of distillation): ``p_o * (log p_o - log p_t - KL(p_o || p_t))`` and
        ``p_o - p_t``.
    """
    targets = labels[:, 1:]
    mask = targets != IGNORE_INDEX
    orig = orig_logits[:, :-1][mask].float()  # (N, V)
    aug = aug_logits[:, :-1][mask].float()
    y = targets[mask].unsqueeze(1)  # (N, 1)
    teacher = logit_subtraction_teacher(orig, aug, alpha)
    true_orig = orig.gather(1, y).squeeze(1)
    best_other = orig.scatter(1, y, float("-inf")).max(dim=1).values
    true_teacher = teacher.gather(1, y).squeeze(1)
    log_p_o, log_p_t = torch.log_softmax(orig, dim=1), torch.log_softmax(teacher, dim=1)
    p_o, p_t = log_p_o.exp(), log_p_t.exp()
    reverse_kl = (p_o * (log_p_o - log_p_t)).sum(dim=1, keepdim=True)
    return {
        "rise": aug.gather(1, y).squeeze(1) - true_orig,
        "margin": true_orig - best_other,
        "original_top1": (true_orig >= orig.max(dim=1).values).float(),
        "teacher_top1": (true_teacher >= teacher.max(dim=1).values).float(),
        "teacher_probability": p_t.gather(1, y).squeeze(1),
        "original_probability": p_o.gather(1, y).squeeze(1),
        "start_gradient_reverse": (p_o * (log_p_o - log_p_t - reverse_kl)).norm(dim=1),
        "start_gradient_forward": (p_o - p_t).norm(dim=1),
    }


@torch.no_grad()
def greedy_continuation(
    logits_of: LogitsOf, prompt: Sequence[int], max_new_tokens: int, eos_token_id: int | None, alpha: float | None
) -> list[int]:
    """Greedy decoding of one prompt from the teacher logits (``alpha`` given) or from the original (``None``).

    No cache: every step scores the whole sequence again (a diagnostic on a handful of items).
    """
    ids = list(prompt)
    new: list[int] = []
    for _ in range(max_new_tokens):
        batch = {"input_ids": torch.tensor([ids]), "attention_mask": torch.ones(1, len(ids), dtype=torch.long)}
        last = logits_of("original", batch)[0, -1]
        if alpha is not None:
            last = logit_subtraction_teacher(last, logits_of("augmented", batch)[0, -1], alpha)
        token = int(last.argmax())
        if token == eos_token_id:
            break
        ids.append(token)
        new.append(token)
    return new


def continuation_scores(
    logits_of: LogitsOf,
    tokenizer,
    items: Sequence[dict],
    alpha: float,
    max_new_tokens: int,
) -> dict:
    """The teacher's and the original's greedy continuations of ``items`` (each with ``prompt_ids`` and
    ``input_ids``), scored against the true continuation: mean sentence BLEU (0-100) and ROUGE-L recall (0-1)."""
    references, texts = [], {"teacher": [], "original": []}
    for item in items:
        prompt = list(item["prompt_ids"])
        truth = list(item["input_ids"])[len(prompt) :]
        budget = max(1, min(max_new_tokens, len(truth)))
        references.append(tokenizer.decode(truth, skip_special_tokens=True))
        for who, strength in (("teacher", alpha), ("original", None)):
            tokens = greedy_continuation(logits_of, prompt, budget, tokenizer.eos_token_id, strength)
            texts[who].append(tokenizer.decode(tokens, skip_special_tokens=True))
    out = {"samples": len(items), "max_new_tokens": max_new_tokens}
    for who, generated in texts.items():
        out[f"{who}_bleu"] = float(np.mean(sentence_bleu(generated, references)))
        out[f"{who}_rouge_l_recall"] = float(np.mean(rouge_l_recall(generated, references)))
    out["example"] = {"reference": references[0], "teacher": texts["teacher"][0], "original": texts["original"][0]}
    return out


def check_forget_set(logits_of: LogitsOf, forget, tokenizer, config) -> dict:
    """:func:`check_teacher` on a tokenized forget set (columns ``input_ids``, ``labels``, ``prompt_ids``) in batches
    of ``config.per_device_train_batch_size``, with the settings of an :class:`~rklu_llm.UnlearnConfig`
    (``teacher_alpha``, ``teacher_check_max_top1``, and the greedy continuations of its first
    ``teacher_check_samples`` items, up to ``teacher_check_max_new_tokens`` tokens)."""
    collate = QACollator(tokenizer.pad_token_id)
    rows = [{"input_ids": ids, "labels": labels} for ids, labels in zip(forget["input_ids"], forget["labels"])]
    size = config.per_device_train_batch_size
    samples = min(config.teacher_check_samples, len(rows))
    continuation = None
    if samples:
        items = [{"prompt_ids": forget["prompt_ids"][i], "input_ids": forget["input_ids"][i]} for i in range(samples)]
        continuation = {"tokenizer": tokenizer, "items": items, "max_new_tokens": config.teacher_check_max_new_tokens}
    return check_teacher(
        logits_of,
        (collate(rows[at : at + size]) for at in range(0, len(rows), size)),
        config.teacher_alpha,
        config.teacher_check_max_top1,
        continuation,
    )


def check_teacher(
    logits_of: LogitsOf,
    batches: Iterable[dict],
    alpha: float,
    max_top1: float = 0.5,
    continuation: dict | None = None,
) -> dict:
    """Run the check over ``batches`` (collated forget batches: ``input_ids``, ``attention_mask``, ``labels``).

    Args:
        logits_of: the frozen models' logits, see :data:`LogitsOf`.
        batches: the forget set, collated.
        alpha: ``teacher_alpha``.
        max_top1: the verdict is ``weak`` when the teacher's top-1 is the true token at more than this fraction of
            the original's share of such positions (:func:`verdict`).
        continuation: ``{"tokenizer", "items", "max_new_tokens"}`` to score greedy continuations too (``None``: skip).

    Returns:
        A JSON-ready dict: ``tokens``, ``alpha``, the statistics, ``continuation`` (or ``None``), ``verdict`` and
        ``advice`` (what to change when weak).

    Raises:
        ValueError: ``alpha <= 0`` (the teacher would be the original: nothing to check), ``max_top1`` outside
            ``(0, 1]``, or no counted token in ``batches``.
    """
    if not alpha > 0:
        raise ValueError(
            f"teacher_alpha must be > 0 for the teacher check (got {alpha}): at 0 the teacher is the original."
        )
    if not 0 < max_top1 <= 1:
        raise ValueError(f"teacher_check_max_top1 must be in (0, 1] (got {max_top1}).")
    parts: dict[str, list[torch.Tensor]] = {}
    for batch in batches:
        stats = teacher_token_stats(logits_of("original", batch), logits_of("augmented", batch), batch["labels"], alpha)
        for key, value in stats.items():
            parts.setdefault(key, []).append(value.cpu())
    if not parts or sum(v.numel() for v in parts["rise"]) == 0:
        raise ValueError("The teacher check found no answer token in the forget set: nothing to check.")
    values = {k: torch.cat(v) for k, v in parts.items()}
    result = {
        "tokens": int(values["rise"].numel()),
        "alpha": alpha,
        "mean_rise": float(values["rise"].mean()),
        "median_rise": float(values["rise"].median()),
        "median_margin": float(values["margin"].median()),
        "moved_fraction": float((alpha * values["rise"] > values["margin"]).float().mean()),
        "original_top1_true": float(values["original_top1"].mean()),
        "teacher_top1_true": float(values["teacher_top1"].mean()),
        "teacher_true_probability": float(values["teacher_probability"].mean()),
        "original_true_probability": float(values["original_probability"].mean()),
        "saturated_fraction": float((values["original_probability"] > SATURATED_PROBABILITY).float().mean()),
        "median_start_gradient_reverse": float(values["start_gradient_reverse"].median()),
        "median_start_gradient_forward": float(values["start_gradient_forward"].median()),
        "max_top1": max_top1,
    }
    result["continuation"] = (
        None
        if continuation is None
        else continuation_scores(
            logits_of, continuation["tokenizer"], continuation["items"], alpha, continuation["max_new_tokens"]
        )
    )
    result["verdict"] = verdict(result["teacher_top1_true"], result["original_top1_true"], max_top1)
    weak = result["verdict"] == WEAK
    result["advice"] = advice(result) if weak else ""
    result["saturated"] = result["saturated_fraction"] > 0.5
    result["saturation_note"] = saturation_note(result) if result["saturated"] else ""
    return result


def advice(result: dict) -> str:
    """What to change when the teacher is weak, with the numbers that say why."""
    return (
        f"The teacher still predicts the true next token at {result['teacher_top1_true']:.0%} of the forget set's "
        f"positions (the original: {result['original_top1_true']:.0%}), so distilling towards it will not forget. "
        f"The augmentation raised the true token's logit by {result['median_rise']:+.2f} (median) against the "
        f"original's median margin of {result['median_margin']:.2f}; alpha x rise must exceed the margin to move the "
        f"top-1 (alpha {result['alpha']:g}: {result['moved_fraction']:.0%} of positions moved). Strengthen the "
        "augmentation (more augment_epochs, the paper uses 10; or a higher augment_learning_rate) or raise "
        "teacher_alpha, then check again (rklu-llm diagnose) before distilling."
    )


def saturation_note(result: dict) -> str:
    """What a saturated original means for distillation, with the numbers that say why."""
    return (
        f"The original gives the true token a probability above {SATURATED_PROBABILITY:g} at "
        f"{result['saturated_fraction']:.0%} of the forget set's positions (mean "
        f"{result['original_true_probability']:.3f}). "
        "Reverse-KL distillation (RKL-U) starts slowly there whatever the teacher: its gradient at a position shrinks "
        f"with 1 - p (median norm at the first step {result['median_start_gradient_reverse']:.3g}, against "
        f"{result['median_start_gradient_forward']:.3g} for the forward KL of FKL-U). Expect to need more distillation "
        "steps or a higher learning rate than for a model that is less sure of the forget set, and check the retained "
        "knowledge after them: larger changes also reach what should be kept."
    )


def summary_line(result: dict) -> str:
    """One line for logs and printouts."""
    line = (
        f"teacher check ({result['tokens']} forget tokens, alpha {result['alpha']:g}): {result['verdict']}; teacher "
        f"top-1 = true token at {result['teacher_top1_true']:.0%} of positions (original "
        f"{result['original_top1_true']:.0%}; weak above {result['max_top1']:.0%} of the original's); true-token logit "
        "rise median "
        f"{result['median_rise']:+.2f} vs original margin median {result['median_margin']:.2f}"
    )
    if "saturated_fraction" in result:  # a record written before this statistic existed has none
        line += (
            f"; original true-token probability > {SATURATED_PROBABILITY:g} at {result['saturated_fraction']:.0%} of "
            "positions"
        )
    cont = result.get("continuation")
    if cont:
        line += (
            f"; greedy continuation of {cont['samples']} items: teacher BLEU {cont['teacher_bleu']:.1f} / ROUGE-L "
            f"{cont['teacher_rouge_l_recall']:.2f}, original BLEU {cont['original_bleu']:.1f} / ROUGE-L "
            f"{cont['original_rouge_l_recall']:.2f}"
        )
    return line
