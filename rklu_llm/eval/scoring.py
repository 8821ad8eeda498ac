"""Model-side scoring shared by every evaluator: batched likelihoods of token sequences and batched generation.

Two primitives, each batched over inputs sorted by length (few pad tokens) and returning results in input order:

* :func:`score_examples`: per example (``input_ids`` + ``labels``, ``-100`` where a token does not count) the summed
  negative log-likelihood of the counted tokens and their number, optionally the per-token log-probabilities and the
  mean / standard deviation of ``log p`` under the model's own next-token distribution (for min-k%++).
* :func:`generate_continuations`: greedy (or beam) continuations of token-id prompts, left-padded, decoded without
  special tokens.

:func:`score_answers` and :func:`generate_answers` apply them to question / answer text with the toolkit's prompt
(:func:`rklu_llm.data.qa.encode_prompt`). Attention masks are built from lengths, never from ``input_ids != pad``, so a
pad token equal to EOS cannot hide a real EOS.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..data.qa import encode_answer, encode_prompt, join_prompt_answer, pad_examples
from ..losses import answer_positions


def model_device(model) -> torch.device:
    """The device of ``model``'s inputs (its first parameter's, unless it says otherwise)."""
    device = getattr(model, "device", None)
    if isinstance(device, torch.device):
        return device
    return next(model.parameters()).device


def pad_token_id(tokenizer) -> int:
    """The tokenizer's pad token id, or its EOS id when it has no pad token."""
    pad = tokenizer.pad_token_id
    if pad is None:
        pad = tokenizer.eos_token_id
    if pad is None:
        raise ValueError("The tokenizer has neither a pad nor an EOS token.")
    return pad


@contextlib.contextmanager
def eval_mode(model):
    """Eval mode (dropout off) inside the block; the previous mode is restored afterwards."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def batches(order: list[int], batch_size: int, desc: str):
    """Slices of ``order`` of at most ``batch_size`` indices, with a labelled progress bar."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    starts = range(0, len(order), batch_size)
    for start in tqdm(starts, desc=desc, unit="batch", leave=False):
        yield order[start : start + batch_size]


@torch.no_grad()
def score_examples(
    model,
    examples: Sequence[dict],
    pad_id: int,
    batch_size: int = 16,
    desc: str = "Scoring",
    token_values: bool = False,
) -> dict:
    """Likelihood of the counted tokens of every example.

    Position ``t``'s logits predict token ``t + 1``; a token counts where its label is not ``-100``. Log-probabilities
    are taken in float32 on the counted positions only (never the whole ``(B, T, V)`` tensor).

    Args:
        model: causal LM (eval mode for the call; the previous mode is restored).
        examples: ``N`` dicts with ``input_ids`` and ``labels`` lists of one length.
        pad_id: padding token id (padding never counts: its label is ``-100`` and its attention mask 0).
        batch_size: sequences per forward pass.
        desc: progress-bar label.
        token_values: also return per-token values (for membership scores).

    Returns:
        ``{"nll_sum": (N,) float64, "num_tokens": (N,) int64}``; with ``token_values`` also ``"token_logprob"``,
        ``"token_mu"`` and ``"token_sigma"``: ``N`` float64 arrays of the counted tokens' ``log p(x_t)``, and of the
        mean ``mu_t = sum_v p(v) log p(v)`` and standard deviation ``sigma_t = sqrt(sum_v p(v) (log p(v) - mu_t)^2)`` of
        ``log p`` under the model's next-token distribution ``p`` at that position; and ``"token_is_argmax"``: ``N``
        boolean arrays, ``x_t == argmax_v p(v)`` (the first index on ties), for memorisation metrics.
    """
    n = len(examples)
    out = {"nll_sum": np.zeros(n, dtype=np.float64), "num_tokens": np.zeros(n, dtype=np.int64)}
    if token_values:
        out.update({key: [np.zeros(0)] * n for key in ("token_logprob", "token_mu", "token_sigma")})
        out["token_is_argmax"] = [np.zeros(0, dtype=bool)] * n
    if n == 0:
        return out
    order = sorted(range(n), key=lambda i: -len(examples[i]["input_ids"]))
    device = model_device(model)
    with eval_mode(model):
        for index in batches(order, batch_size, desc):
            batch = {k: v.to(device) for k, v in pad_examples([examples[i] for i in index], pad_id).items()}
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False).logits
            selected, mask = answer_positions(logits, batch["labels"])  # (M, V), (B, T - 1)
            log_p = F.log_softmax(selected.float(), dim=-1)
            targets = batch["labels"][:, 1:][mask]
            token_logprob = log_p.gather(-1, targets.unsqueeze(-1)).squeeze(-1).double()
            counts = mask.sum(-1).cpu()
            rows = torch.arange(len(index), device=mask.device).unsqueeze(1).expand_as(mask)[mask]
            nll = torch.zeros(len(index), dtype=torch.float64, device=log_p.device).index_add_(0, rows, -token_logprob)
            out["nll_sum"][index] = nll.cpu().numpy()
            out["num_tokens"][index] = counts.numpy()
            if token_values:
                p = log_p.exp()
                mu = (p * log_p).sum(-1)
                sigma = (p * (log_p - mu.unsqueeze(-1)).square()).sum(-1).sqrt()
                for key, values in (("token_logprob", token_logprob), ("token_mu", mu), ("token_sigma", sigma)):
                    for i, part in zip(index, values.double().cpu().split(counts.tolist())):
                        out[key][i] = part.numpy()
                is_argmax = (selected.argmax(-1) == targets).cpu()
                for i, part in zip(index, is_argmax.split(counts.tolist())):
                    out["token_is_argmax"][i] = part.numpy()
    return out


def score_answers(
    model,
    tokenizer,
    questions: Sequence[str],
    answers: Sequence[str],
    batch_size: int = 16,
    max_length: int = 512,
    desc: str = "Scoring answers",
) -> tuple[np.ndarray, np.ndarray]:
    """Summed answer NLL and answer-token count of every (question, answer) pair.

    Tokenization is the toolkit's: ``encode_prompt(question) + encode_answer(answer)`` (the answer ends with EOS, which
    counts), cut to ``max_length`` by ``join_prompt_answer``; scored by :func:`score_examples`.

    Args:
        model: causal LM (put in eval mode for the call; its previous mode is restored).
        tokenizer: its tokenizer.
        questions: ``N`` questions.
        answers: ``N`` answers.
        batch_size: sequences per forward pass.
        max_length: prompt + answer tokens kept per pair.

    Returns:
        ``(nll_sum, num_tokens)``: ``(N,)`` float64 ``-log p(answer | question)`` summed over answer tokens, and
        ``(N,)`` int64 answer-token counts.

    Raises:
        AnswerTruncatedError: a prompt alone fills ``max_length``.
    """
    examples = qa_examples(tokenizer, questions, answers, max_length)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    scored = score_examples(model, examples, pad_token_id(tokenizer), batch_size, desc)
    return scored["nll_sum"], scored["num_tokens"]


def qa_examples(tokenizer, questions: Sequence[str], answers: Sequence[str], max_length: int = 512) -> list[dict]:
    """``input_ids`` / ``labels`` of (question, answer) pairs, the prompt masked (the toolkit's QA tokenization)."""
    if len(questions) != len(answers):
        raise ValueError(f"{len(questions)} questions but {len(answers)} answers.")
    prompts: dict[str, list[int]] = {}
    examples = []
    for i, (question, answer) in enumerate(zip(questions, answers)):
        if question not in prompts:
            prompts[question] = encode_prompt(tokenizer, question)
        examples.append(
            join_prompt_answer(prompts[question], encode_answer(tokenizer, answer), max_length, where=f"item {i}: ")
        )
    return examples


def greedy_generation_config(model, tokenizer, max_new_tokens: int, num_beams: int = 1, num_return_sequences: int = 1):
    """Plain greedy (or beam) decoding, none of the model's sampling / penalty defaults, stopping at any EOS id."""
    from transformers import GenerationConfig

    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    model_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    for token in [model_eos] if isinstance(model_eos, int) else list(model_eos or []):
        if token not in eos:
            eos.append(token)
    if not eos:
        raise ValueError("Neither the tokenizer nor the model's generation config has an EOS token.")
    return GenerationConfig(
        do_sample=False,
        num_beams=num_beams,
        num_return_sequences=num_return_sequences,
        max_new_tokens=max_new_tokens,
        pad_token_id=pad_token_id(tokenizer),
        eos_token_id=eos,
    )


@torch.no_grad()
def generate_continuations(
    model,
    tokenizer,
    prompts: Sequence[Sequence[int]],
    batch_size: int = 16,
    max_new_tokens: int = 200,
    desc: str = "Generating",
    num_beams: int = 1,
    num_return_sequences: int = 1,
) -> list:
    """Greedy (``num_beams=1``) or beam-search continuations of token-id prompts.

    Prompts are sorted by length and left-padded with the attention mask passed, so a prompt gives the same output
    alone or in a batch. Only the new tokens are decoded (``skip_special_tokens=True``, stripped); generation stops at
    EOS or after ``max_new_tokens``.

    Args:
        model: causal LM (eval mode for the call; the previous mode is restored).
        tokenizer: its tokenizer.
        prompts: ``N`` lists of token ids.
        batch_size: prompts per ``generate`` call.
        max_new_tokens: generation budget per continuation.
        num_beams: beams (1 = greedy).
        num_return_sequences: continuations per prompt (``<= num_beams``), best first.

    Returns:
        ``N`` strings in input order; with ``num_return_sequences > 1``, ``N`` lists of that many strings.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if not 1 <= num_return_sequences <= num_beams:
        raise ValueError(f"need 1 <= num_return_sequences <= num_beams, got {num_return_sequences} and {num_beams}")
    n = len(prompts)
    outputs: list = [None] * n
    if n == 0:
        return outputs
    order = sorted(range(n), key=lambda i: -len(prompts[i]))
    device = model_device(model)
    config = greedy_generation_config(model, tokenizer, max_new_tokens, num_beams, num_return_sequences)
    with eval_mode(model):
        for index in batches(order, batch_size, desc):
            batch = pad_examples([{"input_ids": list(prompts[i])} for i in index], config.pad_token_id, "left")
            input_ids = batch["input_ids"].to(device)
            sequences = model.generate(
                input_ids=input_ids, attention_mask=batch["attention_mask"].to(device), generation_config=config
            )
            if not isinstance(sequences, torch.Tensor):  # return_dict_in_generate set somewhere
                sequences = sequences.sequences
            texts = [t.strip() for t in tokenizer.batch_decode(sequences[:, input_ids.shape[1] :], skip_special_tokens=True)]
            for row, i in enumerate(index):
                chunk = texts[row * num_return_sequences : (row + 1) * num_return_sequences]
                outputs[i] = chunk if num_return_sequences > 1 else chunk[0]
    return outputs


def generate_answers(
    model,
    tokenizer,
    questions: Sequence[str],
    batch_size: int = 16,
    max_new_tokens: int = 200,
    desc: str = "Generating answers",
) -> list[str]:
    """Greedy answers to ``questions``, from the same prompt as :func:`score_answers` (see
    :func:`generate_continuations`).

    Returns:
        ``N`` strings, in input order.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    prompts = [encode_prompt(tokenizer, q) for q in questions]
    return generate_continuations(model, tokenizer, prompts, batch_size, max_new_tokens, desc)
