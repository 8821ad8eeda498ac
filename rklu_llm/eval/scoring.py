"""Model-side scoring shared by every evaluator: batched likelihoods of token sequences and batched generation.

Two primitives, each batched over inputs sorted by length (few pad tokens), computing repeated inputs once and
returning results in input order:

* :func:`score_examples`: per example (``input_ids`` + ``labels``, ``-100`` where a token does not count) the summed
  negative log-likelihood of the counted tokens and their number, optionally the per-token log-probabilities and the
  mean / standard deviation of ``log p`` under the model's own next-token distribution (for min-k%++). A prompt shared
  by several examples (a question and its candidate answers) runs once per batch, its key/value cache reused.
* :func:`generate_continuations`: greedy (or beam) continuations of token-id prompts, left-padded, decoded without
  special tokens; finished rows leave the batch (greedy), or ``model.generate`` with a static cache (compiled on GPUs).

:func:`score_answers` and :func:`generate_answers` apply them to question / answer text with the toolkit's prompt
(:func:`rklu_llm.data.qa.encode_prompt`). Attention masks are built from lengths, never from ``input_ids != pad``, so a
pad token equal to EOS cannot hide a real EOS.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm
from transformers import GenerationConfig

from ..data.qa import encode_answer, encode_prompt, join_prompt_answer, pad_examples
from ..losses import IGNORE_INDEX, answer_mask


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


def batches(order: list, batch_size: int, desc: str):
    """Slices of ``order`` of at most ``batch_size`` items, with a labelled progress bar."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    starts = range(0, len(order), batch_size)
    for start in tqdm(starts, desc=desc, unit="batch", leave=False):
        yield order[start : start + batch_size]


#: How :func:`score_examples` runs its forward passes.
SCORING = ("shared_prefix", "plain")


@torch.no_grad()
def score_examples(
    model,
    examples: Sequence[dict],
    pad_id: int,
    batch_size: int = 16,
    desc: str = "Scoring",
    token_values: bool = False,
    scoring: str = "shared_prefix",
) -> dict:
    """Likelihood of the counted tokens of every example.

    Position ``t``'s logits predict token ``t + 1``; a token counts where its label is not ``-100``. Log-probabilities
    are taken in float32 on the counted positions only, :data:`POSITION_CHUNK` positions at a time (never the whole
    ``(B, T, V)`` tensor).

    Two ways to run the model, equal up to floating-point rounding:

    * ``"shared_prefix"`` (default): every example is cut before its first counted token into a prefix (e.g. the
      question's prompt) and a continuation (the answer). Identical examples are scored once; each batch holds
      ``batch_size`` continuations, and a prefix shared by several of them (a question with its answer, paraphrase
      and perturbed answers) is run once, left-padded, with position ids from its attention mask; its key/value cache
      is then repeated for its continuations, which run right-padded at positions ``prefix_length + j``. Only the
      prefix's last position goes through the output layer (``logits_to_keep=1``). Batches are ordered by
      continuation length, so little padding is computed. TOFU's 7 answers per question cost about half the tokens.
    * ``"plain"``: each example whole, right-padded, in batches sorted by total length (the previous implementation).

    Args:
        model: causal LM (eval mode for the call; the previous mode is restored).
        examples: ``N`` dicts with ``input_ids`` and ``labels`` lists of one length.
        pad_id: padding token id (padding never counts: its label is ``-100`` and its attention mask 0).
        batch_size: sequences (``"shared_prefix"``: continuations) per forward pass.
        desc: progress-bar label.
        token_values: also return per-token values (for membership scores).
        scoring: ``"shared_prefix"`` or ``"plain"`` (see above).

    Returns:
        ``{"nll_sum": (N,) float64, "num_tokens": (N,) int64}``; with ``token_values`` also ``"token_logprob"``,
        ``"token_mu"`` and ``"token_sigma"``: ``N`` float64 arrays of the counted tokens' ``log p(x_t)``, and of the
        mean ``mu_t = sum_v p(v) log p(v)`` and standard deviation ``sigma_t = sqrt(sum_v p(v) (log p(v) - mu_t)^2)`` of
        ``log p`` under the model's next-token distribution ``p`` at that position; and ``"token_is_argmax"``: ``N``
        boolean arrays, ``x_t == argmax_v p(v)`` (the first index on ties), for memorisation metrics.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if scoring not in SCORING:
        raise ValueError(f"scoring must be one of {SCORING}, got {scoring!r}")
    n = len(examples)
    out = {"nll_sum": np.zeros(n, dtype=np.float64), "num_tokens": np.zeros(n, dtype=np.int64)}
    if token_values:
        out.update({key: [np.zeros(0)] * n for key in TOKEN_VALUES})
        out["token_is_argmax"] = [np.zeros(0, dtype=bool)] * n
    if n == 0:
        return out
    with eval_mode(model):
        if scoring == "plain":
            _score_plain(model, examples, pad_id, batch_size, desc, out)
        else:
            _score_shared_prefix(model, examples, pad_id, batch_size, desc, out)
    return out


#: The per-token float arrays of ``score_examples(..., token_values=True)``.
TOKEN_VALUES = ("token_logprob", "token_mu", "token_sigma")


#: Counted positions whose float32 log-probabilities are taken at once: bounds the ``(positions, V)`` copies of a batch
#: (49152-token vocabulary: 200 MB each) instead of materialising them for every counted position of the batch.
POSITION_CHUNK = 1024


def _store(
    out: dict,
    rows: Sequence[Sequence[int]],
    logits_at,
    targets: torch.Tensor,
    counts: list[int],
) -> None:
    """Write the scores of one batch into ``out``.

    Every value is computed position by position (a log-softmax over one row of logits), so taking the positions
    :data:`POSITION_CHUNK` at a time gives the same numbers as taking them all at once, with at most that many rows of
    ``V`` floats held.

    Args:
        out: :func:`score_examples`'s result being filled.
        rows: per batch row, the example indices that get its values (duplicates share one row).
        logits_at: ``logits_at(start, stop)`` returns the ``(stop - start, V)`` logits at counted positions
            ``start:stop`` (row by row, positions ascending).
        targets: ``(M,)`` the tokens those positions predict.
        counts: counted positions per row (summing to ``M``).
    """
    with_values = "token_logprob" in out
    parts: dict[str, list[torch.Tensor]] = {}
    for start in range(0, len(targets), POSITION_CHUNK):
        selected = logits_at(start, start + POSITION_CHUNK)
        target = targets[start : start + POSITION_CHUNK]
        log_p = F.log_softmax(selected.float(), dim=-1)
        values = {"token_logprob": log_p.gather(-1, target.unsqueeze(-1)).squeeze(-1).double()}
        if with_values:
            p = log_p.exp()
            mu = (p * log_p).sum(-1)
            values["token_mu"] = mu.double()
            values["token_sigma"] = (p * (log_p - mu.unsqueeze(-1)).square()).sum(-1).sqrt().double()
            values["token_is_argmax"] = selected.argmax(-1) == target
        for key, value in values.items():
            parts.setdefault(key, []).append(value.cpu())
    joined = {key: torch.cat(value) for key, value in parts.items()}
    token_logprob = joined["token_logprob"]
    row_of = torch.repeat_interleave(torch.arange(len(rows)), torch.tensor(counts))
    nll = torch.zeros(len(rows), dtype=torch.float64).index_add_(0, row_of, -token_logprob).numpy()
    for r, indices in enumerate(rows):
        out["nll_sum"][indices] = nll[r]
        out["num_tokens"][indices] = counts[r]
    if not with_values:
        return
    for key, tensor in joined.items():
        for indices, part in zip(rows, tensor.split(counts)):
            for i in indices:
                out[key][i] = part.numpy()


def _score_plain(model, examples: Sequence[dict], pad_id: int, batch_size: int, desc: str, out: dict) -> None:
    """Whole examples, right-padded, in batches sorted by length."""
    order = sorted(range(len(examples)), key=lambda i: -len(examples[i]["input_ids"]))
    device = model_device(model)
    for index in batches(order, batch_size, desc):
        batch = {k: v.to(device) for k, v in pad_examples([examples[i] for i in index], pad_id).items()}
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False).logits
        mask = answer_mask(batch["labels"])  # (B, T - 1): position t predicts token t + 1
        row, col = mask.nonzero(as_tuple=True)  # row-major: each row's positions in order

        def logits_at(start, stop, row=row, col=col, logits=logits):
            return logits[row[start:stop], col[start:stop]]

        _store(out, [[i] for i in index], logits_at, batch["labels"][:, 1:][mask], mask.sum(-1).tolist())
        del logits, logits_at  # freed before the next batch's forward pass, not after it


def _split_at_first_counted(example: dict) -> tuple[tuple, tuple, tuple] | None:
    """``(prefix ids, continuation ids, continuation labels)``, cut before the first counted token (never at 0: the
    first token has no prediction); ``None`` when no token counts."""
    ids, labels = example["input_ids"], example["labels"]
    if len(ids) != len(labels):
        raise ValueError(f"input_ids ({len(ids)}) and labels ({len(labels)}) differ in length")
    cut = next((t for t in range(1, len(ids)) if labels[t] != IGNORE_INDEX), None)
    if cut is None:
        return None
    return tuple(ids[:cut]), tuple(ids[cut:]), tuple(labels[cut:])


def _score_shared_prefix(model, examples: Sequence[dict], pad_id: int, batch_size: int, desc: str, out: dict) -> None:
    """Prefixes run once per batch, their key/value caches repeated for their continuations (see score_examples)."""
    owners: dict[tuple, list[int]] = {}  # (prefix, continuation, labels) -> the examples it scores
    for i, example in enumerate(examples):
        key = _split_at_first_counted(example)
        if key is not None:
            owners.setdefault(key, []).append(i)
    groups: dict[tuple, list[tuple]] = {}
    for key in owners:
        groups.setdefault(key[0], []).append(key)
    # groups by their longest continuation, longest first; inside a group longest first: batches of similar lengths
    for keys in groups.values():
        keys.sort(key=lambda k: -len(k[1]))
    ordered = [k for keys in sorted(groups.values(), key=lambda keys: -len(keys[0][1])) for k in keys]
    device = model_device(model)
    extra = {"logits_to_keep": 1} if accepts_argument(model, "logits_to_keep") else {}
    cache_name = cache_argument(model)
    for chunk in batches(ordered, batch_size, desc):
        prefixes = list(dict.fromkeys(k[0] for k in chunk))
        group_of = torch.tensor([prefixes.index(k[0]) for k in chunk], device=device)
        prompt = {
            k: v.to(device) for k, v in pad_examples([{"input_ids": list(p)} for p in prefixes], pad_id, "left").items()
        }
        positions = (prompt["attention_mask"].cumsum(-1) - 1).clamp(min=0)
        first = model(
            input_ids=prompt["input_ids"],
            attention_mask=prompt["attention_mask"],
            position_ids=positions,
            use_cache=True,
            **extra,
        )
        first_logits = first.logits[:, -1]  # (G, V): predicts each continuation's first token
        longest = max(len(k[1]) for k in chunk)
        labels = pad_examples([{"input_ids": list(k[1]), "labels": list(k[2])} for k in chunk], pad_id)["labels"]
        labels = labels.to(device)  # (R, C)
        cache = rest_logits = None  # (R, C - 1, V) logits: predict each continuation's tokens 2..C
        if longest > 1:  # the continuations but their last token, after their prefix's cache
            cache = returned_cache(first)
            cache.reorder_cache(group_of)
            rest = pad_examples([{"input_ids": list(k[1][:-1])} for k in chunk], pad_id)
            attention = torch.cat([prompt["attention_mask"][group_of], rest["attention_mask"].to(device)], dim=1)
            rest_positions = positions[group_of, -1:] + 1 + torch.arange(longest - 1, device=device)
            rest_logits = model(
                input_ids=rest["input_ids"].to(device),
                attention_mask=attention,
                position_ids=rest_positions,
                use_cache=True,
                **{cache_name: cache},
            ).logits
        counted = labels != IGNORE_INDEX  # (R, C)
        row, col = counted.nonzero(as_tuple=True)  # row-major: each row's positions in order
        at_first = col == 0

        def logits_at(
            start, stop, row=row, col=col, at_first=at_first, first=first_logits, later=rest_logits, of=group_of
        ):
            r, c, first_pos = row[start:stop], col[start:stop], at_first[start:stop]
            selected = first.new_empty((len(r), first.shape[-1]))
            selected[first_pos] = first[of[r[first_pos]]]
            if later is not None:
                selected[~first_pos] = later[r[~first_pos], c[~first_pos] - 1]
            return selected

        _store(out, [owners[k] for k in chunk], logits_at, labels[row, col], counted.sum(-1).tolist())
        # freed before the next batch's forward pass, not after it: two batches' logits and caches at once otherwise
        del first, first_logits, cache, rest_logits, logits_at


def accepts_argument(model, name: str) -> bool:
    """Whether ``model``'s forward (the wrapped model's, for PEFT) takes the keyword ``name``."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    try:
        return name in inspect.signature(base.forward).parameters
    except (TypeError, ValueError):
        return False


def cache_argument(model) -> str:
    """The keyword ``model``'s forward takes a key/value cache by: ``cache`` in newer transformers (which deprecate
    ``past_key_values``, and would pass the old name on unused through ``**kwargs`` once it is removed)."""
    return "cache" if accepts_argument(model, "cache") else "past_key_values"


def returned_cache(output):
    """The key/value cache of a forward pass's output (``cache``, or ``past_key_values`` in older transformers)."""
    cache = output.get("cache", output.get("past_key_values"))
    if cache is None:
        raise ValueError(f"{type(output).__name__} returned no key/value cache: the model must support use_cache=True")
    return cache


def score_answers(
    model,
    tokenizer,
    questions: Sequence[str],
    answers: Sequence[str],
    batch_size: int = 16,
    max_length: int = 512,
    desc: str = "Scoring answers",
    scoring: str = "shared_prefix",
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
        scoring: how the forward passes run (:func:`score_examples`; the default runs each question once per batch).

    Returns:
        ``(nll_sum, num_tokens)``: ``(N,)`` float64 ``-log p(answer | question)`` summed over answer tokens, and
        ``(N,)`` int64 answer-token counts.

    Raises:
        AnswerTruncatedError: a prompt alone fills ``max_length``.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if scoring not in SCORING:
        raise ValueError(f"scoring must be one of {SCORING}, got {scoring!r}")
    examples = qa_examples(tokenizer, questions, answers, max_length)
    scored = score_examples(model, examples, pad_token_id(tokenizer), batch_size, desc, scoring=scoring)
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


#: How :func:`generate_continuations` decodes greedily (beam search always uses ``model.generate``).
DECODERS = ("compact", "generate", "static")


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
    decoder: str = "compact",
) -> list:
    """Greedy (``num_beams=1``) or beam-search continuations of token-id prompts.

    Identical prompts are generated once. Prompts are sorted by length and left-padded with the attention mask
    passed, so a prompt gives the same output alone or in a batch (up to floating-point rounding of other batch
    shapes). Only the new tokens are decoded (``skip_special_tokens=True``, stripped); generation stops at EOS or
    after ``max_new_tokens``. Greedy decoders, all giving the same tokens:

    * ``"compact"`` (default): the toolkit's greedy loop over the model's forward with a dynamic key/value cache
      (position ids from the attention mask, as ``generate`` does). Rows that reached EOS are dropped from the batch
      (and from the cache) once an eighth of it has finished, so a batch is not run until its longest answer ends.
    * ``"generate"``: ``model.generate`` with its dynamic cache; finished rows stay in the batch (the previous
      implementation).
    * ``"static"``: ``model.generate`` with ``cache_implementation="static"``: a preallocated cache of
      ``prompt + max_new_tokens`` positions, whose decoding step transformers compiles (``torch.compile``, CUDA
      graphs) on a GPU. On a CPU it runs uncompiled over the whole preallocated length: slower there.

    Args:
        model: causal LM (eval mode for the call; the previous mode is restored).
        tokenizer: its tokenizer.
        prompts: ``N`` lists of token ids.
        batch_size: prompts per batch (a GPU takes hundreds).
        max_new_tokens: generation budget per continuation.
        num_beams: beams (1 = greedy).
        num_return_sequences: continuations per prompt (``<= num_beams``), best first.
        decoder: greedy decoder, one of :data:`DECODERS` (ignored for beam search).

    Returns:
        ``N`` strings in input order; with ``num_return_sequences > 1``, ``N`` lists of that many strings.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if not 1 <= num_return_sequences <= num_beams:
        raise ValueError(f"need 1 <= num_return_sequences <= num_beams, got {num_return_sequences} and {num_beams}")
    if decoder not in DECODERS:
        raise ValueError(f"decoder must be one of {DECODERS}, got {decoder!r}")
    unique = list(dict.fromkeys(tuple(p) for p in prompts))
    if any(not p for p in unique):
        raise ValueError("an empty prompt: every prompt needs at least one token")
    texts: dict[tuple, object] = {}
    order = sorted(unique, key=lambda p: -len(p))
    device = model_device(model)
    config = greedy_generation_config(model, tokenizer, max_new_tokens, num_beams, num_return_sequences)
    if num_beams == 1 and decoder == "static":
        config.cache_implementation = "static"
    with eval_mode(model):
        for chunk in batches(order, batch_size, desc):
            batch = pad_examples([{"input_ids": list(p)} for p in chunk], config.pad_token_id, "left")
            input_ids, attention = batch["input_ids"].to(device), batch["attention_mask"].to(device)
            if num_beams == 1 and decoder == "compact":
                new_tokens = greedy_compact(model, input_ids, attention, max_new_tokens, config.eos_token_id)
            else:
                sequences = model.generate(input_ids=input_ids, attention_mask=attention, generation_config=config)
                if not isinstance(sequences, torch.Tensor):  # return_dict_in_generate set somewhere
                    sequences = sequences.sequences
                new_tokens = sequences[:, input_ids.shape[1] :]
            decoded = [t.strip() for t in tokenizer.batch_decode(new_tokens, skip_special_tokens=True)]
            for row, prompt in enumerate(chunk):
                part = decoded[row * num_return_sequences : (row + 1) * num_return_sequences]
                texts[prompt] = part if num_return_sequences > 1 else part[0]
    return [texts[tuple(p)] for p in prompts]


def greedy_compact(
    model, input_ids: torch.Tensor, attention_mask: torch.Tensor, max_new_tokens: int, eos_token_id
) -> list[list[int]]:
    """Greedy decoding that drops finished rows: ``x_{t+1} = argmax_v logits_t(v)`` (float32), stop at EOS.

    Position ids are ``cumsum(attention_mask) - 1`` for the left-padded prompts and one more per new token, as
    ``model.generate`` computes them. Rows whose last token is an EOS are removed from the batch and from the key/value
    cache (``Cache.reorder_cache``) once at least an eighth of the rows still computed have finished (not after every
    row: each drop copies the cache).

    Args:
        model: causal LM in eval mode.
        input_ids: ``(B, P)`` left-padded prompts.
        attention_mask: ``(B, P)``, 0 on padding.
        max_new_tokens: tokens generated at most per row.
        eos_token_id: an id or a list of ids that end a row (kept as its last token).

    Returns:
        ``B`` lists of new token ids (an EOS included when one was generated).
    """
    eos = torch.tensor([eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id), device=input_ids.device)
    extra = {"logits_to_keep": 1} if accepts_argument(model, "logits_to_keep") else {}
    positions = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    out = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=positions, use_cache=True, **extra)
    cache, cache_name = returned_cache(out), cache_argument(model)
    rows = torch.arange(input_ids.shape[0], device=input_ids.device)  # the batch row each computed row belongs to
    finished = torch.zeros_like(rows, dtype=torch.bool)
    position = positions[:, -1]
    generated: list[list[int]] = [[] for _ in range(input_ids.shape[0])]
    for step in range(max_new_tokens):
        token = out.logits[:, -1].float().argmax(-1)  # (R,)
        for r, t in zip(rows[~finished].tolist(), token[~finished].tolist()):
            generated[r].append(t)
        finished |= torch.isin(token, eos)
        if step == max_new_tokens - 1 or bool(finished.all()):
            break
        if int(finished.sum()) * 8 >= len(rows):  # drop the finished rows
            keep = (~finished).nonzero().squeeze(-1)
            cache.reorder_cache(keep)
            rows, token, position, attention_mask = rows[keep], token[keep], position[keep], attention_mask[keep]
            finished = finished[keep]
        position = position + 1
        attention_mask = torch.cat([attention_mask, attention_mask.new_ones((len(rows), 1))], dim=1)
        out = model(
            input_ids=token.unsqueeze(-1),
            attention_mask=attention_mask,
            position_ids=position.unsqueeze(-1),
            use_cache=True,
            **{cache_name: cache},
        )
    return generated


def generate_answers(
    model,
    tokenizer,
    questions: Sequence[str],
    batch_size: int = 16,
    max_new_tokens: int = 200,
    desc: str = "Generating answers",
    decoder: str = "compact",
) -> list[str]:
    """Greedy answers to ``questions``, from the same prompt as :func:`score_answers` (see
    :func:`generate_continuations`, whose ``decoder`` this passes on).

    Returns:
        ``N`` strings, in input order.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if decoder not in DECODERS:
        raise ValueError(f"decoder must be one of {DECODERS}, got {decoder!r}")
    prompts = [encode_prompt(tokenizer, q) for q in questions]
    return generate_continuations(model, tokenizer, prompts, batch_size, max_new_tokens, desc, decoder=decoder)
