"""Copyright evaluation (the RKL-U paper's Harry Potter protocol, on any book): can the model still continue the text?

Per chunk of the book (``chunk_tokens`` tokens, see :mod:`rklu_llm.data.text`), the model greedily continues the
chunk's first ``prefix_tokens`` tokens (paper: 200 of 512) for ``max_new_tokens`` tokens (default: the rest of the
chunk, stopping early at EOS), and the continuation is compared with the chunk's true continuation (its remaining
tokens, decoded without special tokens, stripped):

* BLEU x100: the mean over chunks of ``sacrebleu.sentence_bleu(generated, [reference]).score`` (13a tokenization,
  case-sensitive, 4-grams, ``exp`` smoothing, effective order; sacrebleu's sentence-BLEU defaults), plus corpus BLEU
  (``sacrebleu.corpus_bleu``) over all chunks;
* ROUGE-L x100: the means over chunks of ``rouge_score``'s ``RougeScorer(["rougeL"], use_stemmer=True)`` recall
  ``LCS / len(reference)`` and F1 ``2PR / (P + R)``, on lower-cased, stemmed word tokens.

The same is done for a *control* text that the model never trained on (another book by the same author): its scores
are the "never seen" level an unlearned model should come down to. Utility: perplexity on ``num_segments``
(paper: 200) consecutive non-overlapping WikiText-2 test segments of ``segment_tokens`` tokens, token-weighted:
``exp(sum of NLL over every predicted token / number of predicted tokens)`` (a segment of ``T`` tokens predicts
``T - 1``). General abilities (lm-eval-harness) are :mod:`rklu_llm.eval.general`.

Two steps, so that every input is checked before a model is loaded::

    data = prepare_copyright_data(tokenizer, "pride_and_prejudice.txt", "sense_and_sensibility.txt",
                                  wikitext_dir="data/wikitext", chunk_tokens=512, num_chunks=300)
    model = ...
    result = evaluate_copyright(model, tokenizer, data, output_dir="runs/x")

Results JSON (``copyright_eval.json``, also the returned dict; scores x100)::

    {
      "model": str,
      "settings": {"chunk_tokens", "num_chunks", "prefix_tokens", "max_new_tokens", "segment_tokens", "num_segments",
                   "batch_size", "generation_batch_size", "sources": {"forget": str, "control": str|None,
                   "wikitext": str|None}, "bleu": str, "rouge": str},
      "sets": {
        "forget" | "control": {
          "aggregate": {"bleu": float, "corpus_bleu": float, "rouge_l_recall": float, "rouge_l_f1": float,
                        "num_chunks": int},
          "items": {"reference": [str], "generated": [str], "bleu": [float], "rouge_l_recall": [float],
                    "rouge_l_f1": [float]}
        }
      },
      "perplexity": {"wikitext": {"perplexity": float, "nll_sum": float, "num_tokens": int, "num_segments": int,
                                  "segment_tokens": int}} | {}
    }

Resuming: with ``output_dir``, the generations of each set and the WikiText likelihoods are cached under
``output_dir/copyright_eval_cache/`` (keyed by model name, a weights digest, the chunks' fingerprint and the settings);
a re-run skips what is done. Sources are named by portable paths, never absolute ones.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from ..data.text import (
    PAPER_CHUNK_TOKENS,
    PAPER_PREFIX_TOKENS,
    check_chunk_fits,
    check_prefix,
    chunk_text,
    describe_source,
    load_wikitext,
)
from ..io import (
    Evaluation,
    data_fingerprint,
)
from .metrics import corpus_bleu, perplexity, rouge_l, sentence_bleu
from .scoring import generate_continuations, pad_token_id, score_examples

RESULT_FILE = "copyright_eval.json"
CACHE_DIR = "copyright_eval_cache"
#: The paper's utility check: 200 WikiText segments.
PAPER_NUM_SEGMENTS = 200
BLEU_VARIANT = "mean of sacrebleu.sentence_bleu (13a, exp smoothing, effective order) x100; corpus_bleu also given"
ROUGE_VARIANT = "rouge_score RougeScorer(['rougeL'], use_stemmer=True): recall and F1, mean x100"


@dataclass
class CopyrightData:
    """Everything :func:`evaluate_copyright` scores, tokenized and checked (see :func:`prepare_copyright_data`)."""

    sets: dict[str, list[list[int]]]
    sources: dict[str, str | None]
    chunk_tokens: int
    num_chunks: int | None
    prefix_tokens: int
    wikitext: list[list[int]] | None = None
    segment_tokens: int | None = None
    num_segments: int | None = None
    fingerprints: dict[str, str] = field(default_factory=dict)

    @property
    def longest(self) -> int:
        """The longest sequence the model will see (a chunk or a WikiText segment)."""
        return max(self.chunk_tokens, self.segment_tokens or 0)


def prepare_copyright_data(
    tokenizer,
    forget_text,
    control_text=None,
    wikitext_dir: str | os.PathLike | None = None,
    chunk_tokens: int = PAPER_CHUNK_TOKENS,
    num_chunks: int | None = None,
    prefix_tokens: int = PAPER_PREFIX_TOKENS,
    segment_tokens: int = PAPER_CHUNK_TOKENS,
    num_segments: int = PAPER_NUM_SEGMENTS,
    perplexity: bool = True,
    text_column: str = "text",
) -> CopyrightData:
    """Read, tokenize and chunk the evaluation texts, checking every input (no model needed).

    Args:
        tokenizer: the evaluated model's tokenizer.
        forget_text: the unlearned book (path to a file / folder of ``.txt``, ``datasets.Dataset``, list of strings).
        control_text: a text of the same kind the model never trained on (optional; same chunking).
        wikitext_dir: folder holding ``wikitext-2-raw-test.txt`` (or the file); default ``$RKLU_WIKITEXT_DIR``, else
            the hub's ``Salesforce/wikitext``.
        chunk_tokens: tokens per chunk (paper: 512).
        num_chunks: chunks per text, from its start (paper: 400; default: every complete chunk; a control text
            shorter than that gives all of its own).
        prefix_tokens: the prompt of each continuation (paper: 200); must be shorter than a chunk.
        segment_tokens: tokens per WikiText segment.
        num_segments: WikiText segments (paper: 200).
        perplexity: ``False`` skips WikiText.
        text_column: the text column of ``datasets.Dataset`` sources.

    Raises:
        ValueError: a prefix as long as a chunk, a text shorter than one chunk (or than ``num_chunks`` chunks), a
            non-UTF-8 file, bad numbers.
        FileNotFoundError, DataUnavailableError: a missing text or WikiText.
    """
    check_prefix(prefix_tokens, chunk_tokens)
    if perplexity and (segment_tokens < 2 or num_segments < 1):
        raise ValueError(f"need segment_tokens >= 2 and num_segments >= 1, got {segment_tokens} and {num_segments}")
    sets = {"forget": chunk_text(tokenizer, forget_text, chunk_tokens, num_chunks, text_column)}
    sources = {"forget": describe_source(forget_text), "control": None, "wikitext": None}
    if control_text is not None:
        control = chunk_text(tokenizer, control_text, chunk_tokens, None, text_column)
        sets["control"] = control[: len(sets["forget"])]
        sources["control"] = describe_source(control_text)
    wikitext = None
    if perplexity:
        documents, sources["wikitext"] = load_wikitext(wikitext_dir)
        wikitext = chunk_text(tokenizer, documents, segment_tokens, num_segments)
    data = CopyrightData(
        sets=sets,
        sources=sources,
        chunk_tokens=chunk_tokens,
        num_chunks=num_chunks,
        prefix_tokens=prefix_tokens,
        wikitext=wikitext,
        segment_tokens=segment_tokens if perplexity else None,
        num_segments=num_segments if perplexity else None,
    )
    data.fingerprints = {name: data_fingerprint(chunks) for name, chunks in sets.items()}
    if wikitext is not None:
        data.fingerprints["wikitext"] = data_fingerprint(wikitext)
    return data


def continuation_scores(generated: list[str], references: list[str]) -> dict:
    """Per-item and aggregate BLEU / ROUGE-L (x100) of continuations against the true ones."""
    bleu = sentence_bleu(generated, references)
    rouge = rouge_l(generated, references)
    items = {
        "reference": references,
        "generated": generated,
        "bleu": bleu,
        "rouge_l_recall": 100.0 * rouge["recall"],
        "rouge_l_f1": 100.0 * rouge["fmeasure"],
    }
    aggregate = {
        "bleu": float(np.mean(bleu)),
        "corpus_bleu": corpus_bleu(generated, references),
        "rouge_l_recall": float(np.mean(items["rouge_l_recall"])),
        "rouge_l_f1": float(np.mean(items["rouge_l_f1"])),
        "num_chunks": len(references),
    }
    return {"aggregate": aggregate, "items": items}


def evaluate_copyright(
    model,
    tokenizer,
    data: CopyrightData,
    output_dir: str | os.PathLike | None = None,
    batch_size: int = 16,
    generation_batch_size: int | None = None,
    max_new_tokens: int | None = None,
) -> dict:
    """Continuation BLEU / ROUGE-L on the forget (and control) chunks, and WikiText perplexity.

    Args:
        model: causal LM (eval mode for the call; its previous mode is restored).
        tokenizer: its tokenizer (the one ``data`` was made with).
        data: from :func:`prepare_copyright_data`.
        output_dir: where ``copyright_eval.json`` goes (atomically), with the resumable cache; ``None``: nothing
            written.
        batch_size: sequences per forward pass (perplexity).
        generation_batch_size: prompts per ``generate`` call (default ``batch_size``).
        max_new_tokens: continuation length (default: the rest of a chunk, ``chunk_tokens - prefix_tokens``).

    Returns:
        The result dict of the module docstring.
    """
    if batch_size < 1 or (generation_batch_size is not None and generation_batch_size < 1):
        raise ValueError(f"batch sizes must be >= 1, got {batch_size} and {generation_batch_size}")
    if max_new_tokens is None:
        max_new_tokens = data.chunk_tokens - data.prefix_tokens
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    check_chunk_fits(model, max(data.longest, data.prefix_tokens + max_new_tokens))

    run = Evaluation(
        model,
        output_dir,
        CACHE_DIR,
        RESULT_FILE,
        {
            "chunk_tokens": data.chunk_tokens,
            "num_chunks": data.num_chunks,
            "prefix_tokens": data.prefix_tokens,
            "max_new_tokens": max_new_tokens,
            "segment_tokens": data.segment_tokens,
            "num_segments": data.num_segments,
            "batch_size": batch_size,
            "generation_batch_size": generation_batch_size,
            "sources": dict(data.sources),
            "bleu": BLEU_VARIANT,
            "rouge": ROUGE_VARIANT,
        },
    )
    cache, result = run.cache, run.result
    result.update(sets={}, perplexity={})
    settings = {
        "chunk_tokens": data.chunk_tokens,
        "num_chunks": data.num_chunks,
        "prefix_tokens": data.prefix_tokens,
        "max_new_tokens": max_new_tokens,
    }
    for set_name, chunks in data.sets.items():

        def generate(chunks=chunks, set_name=set_name):
            prompts = [chunk[: data.prefix_tokens] for chunk in chunks]
            return {
                "generated": generate_continuations(
                    model,
                    tokenizer,
                    prompts,
                    generation_batch_size or batch_size,
                    max_new_tokens,
                    desc=f"{set_name}: continuations",
                )
            }

        generated = cache.get_or_compute(set_name, "generation", settings, data.fingerprints[set_name], generate)
        references = [tokenizer.decode(c[data.prefix_tokens :], skip_special_tokens=True).strip() for c in chunks]
        result["sets"][set_name] = continuation_scores(generated["generated"], references)

    if data.wikitext is not None:

        def likelihood():
            examples = [{"input_ids": s, "labels": s} for s in data.wikitext]
            return score_examples(model, examples, pad_token_id(tokenizer), batch_size, desc="WikiText perplexity")

        scored = cache.get_or_compute(
            "wikitext",
            "likelihood",
            {"segment_tokens": data.segment_tokens, "num_segments": data.num_segments},
            data.fingerprints["wikitext"],
            likelihood,
        )
        result["perplexity"]["wikitext"] = {
            "perplexity": perplexity(scored["nll_sum"], scored["num_tokens"]),
            "nll_sum": float(np.sum(scored["nll_sum"])),
            "num_tokens": int(np.sum(scored["num_tokens"])),
            "num_segments": len(data.wikitext),
            "segment_tokens": data.segment_tokens,
        }

    return run.finish()


def summary_row(result: Mapping) -> dict:
    """One flat row of a copyright result: per set BLEU / ROUGE-L recall / ROUGE-L F1 (x100), WikiText perplexity."""
    row = {"model": result.get("model")}
    for set_name, entry in result.get("sets", {}).items():
        aggregate = entry["aggregate"]
        for key in ("bleu", "rouge_l_recall", "rouge_l_f1"):
            row[f"{set_name}_{key}"] = aggregate[key]
    wikitext = result.get("perplexity", {}).get("wikitext")
    row["wikitext_perplexity"] = None if wikitext is None else wikitext["perplexity"]
    return row
