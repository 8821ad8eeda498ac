"""Evaluate a model on the copyright task: can it still continue a book, and what is its WikiText perplexity?

    python -m rklu_llm.scripts.eval_copyright --model runs/rklu --output_dir runs/rklu \
        --forget_text pride_and_prejudice.txt --control_text sense_and_sensibility.txt --books_dir data/books \
        --wikitext_dir data/wikitext --chunk_tokens 512 --prefix_tokens 200

Writes ``copyright_eval.json`` into ``--output_dir`` (resumable: finished pieces are cached there) and prints the
summary row. Every input (texts, chunking, WikiText, the model's context length from its config) is checked before the
model is loaded. Flags: the fields of ``EvaluatedModelArguments``, ``CopyrightDataArguments`` and
``CopyrightEvalArguments`` below; see :mod:`rklu_llm.eval.copyright` for the metrics.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..cli import parse_arguments
from ..data.text import PAPER_CHUNK_TOKENS, PAPER_PREFIX_TOKENS, check_chunk_fits
from ..eval.copyright import PAPER_NUM_SEGMENTS, CopyrightData, evaluate_copyright, prepare_copyright_data, summary_row
from ..models import check_model_source, load_model, load_tokenizer

BOOKS_DIR_ENV = "RKLU_BOOKS_DIR"


@dataclass
class EvaluatedModelArguments:
    """The model an evaluation script loads, and where its results go."""

    model: str = field(metadata={"help": "Model to evaluate: hub id, local dir, LoRA adapter dir or embedded:<name>."})
    output_dir: str = field(metadata={"help": "Folder for the result JSON and its resumable cache."})


@dataclass
class CopyrightDataArguments:
    """The texts of the copyright task and how they are cut (shared by the evaluation and the book recipe)."""

    forget_text: str | None = field(
        default=None,
        metadata={
            "help": "The book to forget / evaluate: a .txt file, a folder of .txt files, or a file name inside "
            "--books_dir."
        },
    )
    control_text: str | None = field(
        default=None,
        metadata={"help": "A text of the same kind the model never trained on (its scores: the 'never seen' level)."},
    )
    books_dir: str | None = field(
        default=None, metadata={"help": f"Folder that relative text names are looked up in (default ${BOOKS_DIR_ENV})."}
    )
    wikitext_dir: str | None = field(
        default=None,
        metadata={"help": "Folder holding wikitext-2-raw-test.txt (default $RKLU_WIKITEXT_DIR, else the hub)."},
    )
    chunk_tokens: int = field(default=PAPER_CHUNK_TOKENS, metadata={"help": "Tokens per chunk (paper: 512)."})
    num_chunks: int | None = field(
        default=None, metadata={"help": "Chunks of the book, from its start (paper: 400; default: every full chunk)."}
    )
    prefix_tokens: int = field(
        default=PAPER_PREFIX_TOKENS, metadata={"help": "Prompt tokens of each continuation (paper: 200)."}
    )
    segment_tokens: int = field(default=PAPER_CHUNK_TOKENS, metadata={"help": "Tokens per WikiText segment."})
    num_segments: int = field(default=PAPER_NUM_SEGMENTS, metadata={"help": "WikiText segments (paper: 200)."})
    skip_perplexity: bool = field(default=False, metadata={"help": "Do not compute the WikiText perplexity."})
    text_column: str = field(default="text", metadata={"help": "Text column of dataset sources."})

    def resolve(self, name: str | None, what: str) -> str:
        """A text's path: as given when it exists, else inside ``books_dir`` / ``$RKLU_BOOKS_DIR``."""
        if name is None:
            raise ValueError(f"Pass --{what} (a .txt file, a folder of .txt files, or a name inside --books_dir).")
        if Path(name).expanduser().exists():
            return name
        books = self.books_dir or os.environ.get(BOOKS_DIR_ENV)
        if books and (Path(books).expanduser() / name).exists():
            return str(Path(books).expanduser() / name)
        raise FileNotFoundError(
            f"--{what} {name!r} is neither a file / folder nor inside "
            f"{'--books_dir ' + repr(books) if books else f'--books_dir (or ${BOOKS_DIR_ENV}), which is not set'}."
        )

    def prepare(self, tokenizer, model_or_path=None) -> CopyrightData:
        """Check and tokenize everything (and, given a model or its path, that the chunks fit its context)."""
        forget = self.resolve(self.forget_text, "forget_text")
        control = None if self.control_text is None else self.resolve(self.control_text, "control_text")
        if model_or_path is not None:
            check_chunk_fits(model_or_path, max(self.chunk_tokens, 0 if self.skip_perplexity else self.segment_tokens))
        return prepare_copyright_data(
            tokenizer,
            forget,
            control,
            wikitext_dir=self.wikitext_dir,
            chunk_tokens=self.chunk_tokens,
            num_chunks=self.num_chunks,
            prefix_tokens=self.prefix_tokens,
            segment_tokens=self.segment_tokens,
            num_segments=self.num_segments,
            perplexity=not self.skip_perplexity,
            text_column=self.text_column,
        )


@dataclass
class CopyrightEvalArguments:
    """How the continuations and likelihoods are computed."""

    eval_batch_size: int = field(default=16, metadata={"help": "Sequences per forward pass (perplexity)."})
    eval_generation_batch_size: int | None = field(
        default=None, metadata={"help": "Prompts per generate call (default: eval_batch_size)."}
    )
    max_new_tokens: int | None = field(
        default=None, metadata={"help": "Continuation length (default: the rest of a chunk after its prefix)."}
    )

    def __post_init__(self):
        for name in ("eval_batch_size", "eval_generation_batch_size", "max_new_tokens"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"--{name} must be >= 1, got {value}")

    def evaluate_kwargs(self) -> dict:
        """These settings as keyword arguments of :func:`~rklu_llm.eval.copyright.evaluate_copyright`."""
        return dict(
            batch_size=self.eval_batch_size,
            generation_batch_size=self.eval_generation_batch_size,
            max_new_tokens=self.max_new_tokens,
        )


ARGUMENTS = (EvaluatedModelArguments, CopyrightDataArguments, CopyrightEvalArguments)


def main(argv: list[str] | None = None) -> dict:
    target, texts, evaluation = parse_arguments(ARGUMENTS, argv)
    check_model_source(target.model)  # a missing local model is named before anything is read
    data = texts.prepare(load_tokenizer(target.model), target.model)  # every input checked; no weights loaded yet
    model, tokenizer = load_model(target.model)
    if torch.cuda.is_available():
        model.to("cuda")
    result = evaluate_copyright(model, tokenizer, data, output_dir=target.output_dir, **evaluation.evaluate_kwargs())
    print(json.dumps(summary_row(result), indent=2))
    return result


if __name__ == "__main__":
    main()
