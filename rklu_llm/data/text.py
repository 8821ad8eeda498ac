"""Text-corpus forget sets: a book (or any text) cut into non-overlapping chunks of ``N`` tokens.

The copyright task (the RKL-U paper's Harry Potter protocol: 400 chunks of 512 tokens) unlearns raw text rather than
question-answer pairs. A text source is

* a path to a UTF-8 ``.txt`` file,
* a path to a folder: every ``*.txt`` file in it (not recursive), in name order,
* a ``datasets.Dataset`` and the name of its text column (``text_column``, default ``"text"``), or
* a list of strings (documents), e.g. ``[open(path).read()]``. A plain ``str`` is always read as a path.

Documents (files, rows, list items) are joined with ``separator`` (default ``"\\n\\n"``) and the whole text is
tokenized once with the model's tokenizer, without special tokens. The token stream is then cut into consecutive
chunks of ``chunk_tokens`` tokens: chunk ``k`` is ``ids[k * N : (k + 1) * N]``. No token is repeated; the tokens
after the last complete chunk (fewer than ``N``) are left out, as are the chunks after the first ``num_chunks``.

As a forget set (:func:`build_text_unlearning_dataset`) each chunk is one example whose every token counts in the
unlearning loss (``labels == input_ids``: no prompt masking; position ``t`` predicts token ``t + 1``, so a chunk of
``N`` tokens gives ``N - 1`` predicted tokens). Its first ``prefix_tokens`` tokens are its *prompt*
(``prompt_ids``), which the refusal methods use:

* ``idk``: NLL of a refusal after the chunk's prefix (``prefix_ids + " " + refusal + EOS``, the refusal counted);
* ``dpo``: the preferred answer ``y_w`` is that refusal after the prefix; the dispreferred ``y_l`` is the chunk. With
  ``mask_prefix=True`` the chunk's prefix tokens get label ``-100``, so ``y_l`` is the chunk's *continuation* after
  the same prompt as ``y_w``: the usual DPO pairing (prompt, chosen, rejected). With the default ``mask_prefix=False``
  ``y_l`` is the whole chunk (every token counted, as in every other method), so the prefix's log-ratio only adds
  to the dispreferred side. ``recipes/copyright_book.py`` uses ``mask_prefix=True`` for dpo and ``False`` otherwise.

The same prefix length is what the copyright evaluation (:mod:`rklu_llm.eval.copyright`) gives the model before
scoring its continuation. A retain set can be another corpus (another novel, WikiText), chunked the same way.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from datasets import Dataset, load_dataset
from transformers import AutoConfig

from ..losses import IGNORE_INDEX
from ..models import adapter_base, resolve_model_path
from ..offline import hub_advice, hub_problem, offline_variables
from ..paths import portable_path
from .qa import ForgetRetainDataset
from .tofu import DataUnavailableError

#: The paper's forget set: 400 chunks of 512 tokens, the first 200 of each the prompt of the continuation test.
PAPER_CHUNK_TOKENS = 512
PAPER_NUM_CHUNKS = 400
PAPER_PREFIX_TOKENS = 200


def describe_source(source) -> str:
    """A short, portable name of a text source for results and messages (never an absolute path)."""
    if isinstance(source, (str, os.PathLike)):
        return portable_path(source)
    if isinstance(source, Dataset):
        name = getattr(source.info, "dataset_name", None) or getattr(source.info, "builder_name", None)
        return f"<datasets.Dataset{f' {name}' if name else ''}: {len(source)} rows>"
    return f"<{len(source)} text documents>"


def _read_file(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(
            f"{describe_source(path)} is not UTF-8 text (byte {exc.start}: {exc.object[exc.start : exc.start + 4]!r}). "
            "Convert it first, e.g. `iconv -f latin1 -t utf-8 in.txt > out.txt`."
        ) from exc


def read_documents(source, text_column: str = "text") -> list[str]:
    """The documents of a text source (see the module docstring), each as one string.

    Raises:
        FileNotFoundError: a path that does not exist, or a folder without ``*.txt`` files.
        ValueError: a file that is not UTF-8 (with the byte offset and a fix), a dataset without ``text_column`` or
            with a non-string row, an unsupported source type.
    """
    if isinstance(source, (str, os.PathLike)):
        path = Path(source).expanduser()
        if path.is_dir():
            files = sorted(p for p in path.glob("*.txt") if p.is_file())
            if not files:
                raise FileNotFoundError(f"Text folder {describe_source(path)} holds no .txt file.")
            return [_read_file(p) for p in files]
        if not path.is_file():
            raise FileNotFoundError(f"Text source {describe_source(path)} does not exist (a .txt file or a folder).")
        return [_read_file(path)]
    if isinstance(source, Dataset):
        if text_column not in source.column_names:
            raise ValueError(
                f"The dataset has no column {text_column!r} (it has {source.column_names}); pass text_column=..."
            )
        documents = source[text_column]
    elif isinstance(source, Sequence) and not isinstance(source, (str, bytes)):
        documents = list(source)
    else:
        raise ValueError(
            f"Unsupported text source of type {type(source).__name__}: pass a path (file or folder of .txt), a "
            "datasets.Dataset with a text column, or a list of strings."
        )
    bad = next((i for i, d in enumerate(documents) if not isinstance(d, str)), None)
    if bad is not None:
        raise ValueError(f"Document {bad} of {describe_source(source)} is {type(documents[bad]).__name__}, not text.")
    return documents


def chunk_token_ids(
    ids: Sequence[int], chunk_tokens: int, num_chunks: int | None = None, label: str = "the text"
) -> list[list[int]]:
    """Consecutive non-overlapping chunks ``ids[k * N : (k + 1) * N]``, ``k = 0 .. num_chunks - 1``.

    Args:
        ids: the token stream.
        chunk_tokens: ``N``, tokens per chunk (>= 2).
        num_chunks: chunks to return (default: every complete chunk, ``len(ids) // N``).
        label: names the text in error messages.

    Returns:
        ``num_chunks`` lists of ``N`` token ids; their concatenation is ``ids[: num_chunks * N]``.

    Raises:
        ValueError: ``chunk_tokens < 2``, ``num_chunks < 1``, a text shorter than one chunk, or fewer complete chunks
            than ``num_chunks``.
    """
    if chunk_tokens < 2:
        raise ValueError(f"chunk_tokens must be >= 2, got {chunk_tokens}")
    if num_chunks is not None and num_chunks < 1:
        raise ValueError(f"num_chunks must be >= 1 or None (all), got {num_chunks}")
    available = len(ids) // chunk_tokens
    if available == 0:
        raise ValueError(
            f"{label} has {len(ids)} tokens, fewer than one chunk of {chunk_tokens}: use a longer text or a smaller "
            "chunk_tokens."
        )
    if num_chunks is not None and num_chunks > available:
        raise ValueError(
            f"{label} has {len(ids)} tokens: only {available} complete chunks of {chunk_tokens}, not {num_chunks}. "
            f"Ask for at most {available} chunks, shorter chunks, or a longer text."
        )
    count = available if num_chunks is None else num_chunks
    return [list(ids[k * chunk_tokens : (k + 1) * chunk_tokens]) for k in range(count)]


def chunk_text(
    tokenizer,
    source,
    chunk_tokens: int = PAPER_CHUNK_TOKENS,
    num_chunks: int | None = None,
    text_column: str = "text",
    separator: str = "\n\n",
) -> list[list[int]]:
    """Read a text source, tokenize it (no special tokens) and cut it into chunks (:func:`chunk_token_ids`).

    Args:
        tokenizer: the model's tokenizer.
        source: a path (file or folder of ``.txt``), a ``datasets.Dataset`` or a list of strings.
        chunk_tokens: tokens per chunk.
        num_chunks: chunks to keep, from the start (default: all complete chunks).
        text_column: the dataset column holding the text.
        separator: joins the documents before tokenization.
    """
    if chunk_tokens < 2:  # before reading anything
        raise ValueError(f"chunk_tokens must be >= 2, got {chunk_tokens}")
    text = separator.join(read_documents(source, text_column))
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return chunk_token_ids(ids, chunk_tokens, num_chunks, label=describe_source(source))


def chunk_examples(
    chunks: Sequence[Sequence[int]], prefix_tokens: int = PAPER_PREFIX_TOKENS, mask_prefix: bool = False
) -> Dataset:
    """Chunks as training examples: ``prompt_ids`` (the first ``prefix_tokens``), ``input_ids`` and ``labels``.

    ``labels`` equal ``input_ids`` (every token counts), or ``-100`` on the prefix when ``mask_prefix``.

    Raises:
        ValueError: ``prefix_tokens`` is not in ``[1, chunk length - 1]``.
    """
    shortest = min(len(c) for c in chunks)
    check_prefix(prefix_tokens, shortest)
    rows = {"prompt_ids": [], "input_ids": [], "labels": []}
    for chunk in chunks:
        chunk = list(chunk)
        rows["prompt_ids"].append(chunk[:prefix_tokens])
        rows["input_ids"].append(chunk)
        rows["labels"].append([IGNORE_INDEX] * prefix_tokens + chunk[prefix_tokens:] if mask_prefix else chunk)
    return Dataset.from_dict(rows)


def check_prefix(prefix_tokens: int, chunk_tokens: int) -> None:
    """Raise unless ``1 <= prefix_tokens < chunk_tokens`` (a prefix must leave a continuation to compare)."""
    if not 1 <= prefix_tokens < chunk_tokens:
        raise ValueError(
            f"prefix_tokens={prefix_tokens} must be at least 1 and shorter than a chunk ({chunk_tokens} tokens), so "
            "that a continuation is left; lower prefix_tokens or raise chunk_tokens."
        )


def model_context_length(model_or_path) -> int | None:
    """The longest sequence a model accepts, from its config (``max_position_embeddings`` / ``n_positions`` /
    ``max_sequence_length`` / ``seq_length``); ``None`` when the config says nothing.

    ``model_or_path`` is a loaded model, a config, or a hub id / local directory / ``embedded:<name>``, whose
    ``config.json`` alone is read (no weights are loaded).
    """
    config = getattr(model_or_path, "config", None)
    if config is None and hasattr(model_or_path, "to_dict"):
        config = model_or_path
    if config is None:
        path = resolve_model_path(str(model_or_path))
        config = AutoConfig.from_pretrained(adapter_base(path) or path)
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def check_chunk_fits(model_or_path, chunk_tokens: int) -> None:
    """Raise when a chunk is longer than the model's context (read from its config, no weights loaded)."""
    context = model_context_length(model_or_path)
    if context is not None and chunk_tokens > context:
        raise ValueError(
            f"chunk_tokens={chunk_tokens} is longer than the model's context of {context} tokens "
            f"(max_position_embeddings); use chunks of at most {context} tokens."
        )


def build_text_unlearning_dataset(
    tokenizer,
    forget_text,
    retain_text=None,
    refusals: list[str] | None = None,
    chunk_tokens: int = PAPER_CHUNK_TOKENS,
    num_chunks: int | None = None,
    retain_chunks: int | None = None,
    prefix_tokens: int = PAPER_PREFIX_TOKENS,
    mask_prefix: bool = False,
    text_column: str = "text",
    seed: int = 0,
) -> ForgetRetainDataset:
    """A :class:`~rklu_llm.data.ForgetRetainDataset` of text chunks, for every unlearning method.

    Args:
        tokenizer: the model's tokenizer.
        forget_text: the text to unlearn (path to a file / folder of ``.txt``, ``datasets.Dataset``, list of strings).
        retain_text: optional retain corpus (another novel, WikiText, ...), chunked the same way.
        refusals: refusal answers for dpo / idk (see :func:`~rklu_llm.data.load_refusals`), each said after a chunk's
            prefix.
        chunk_tokens: tokens per chunk (paper: 512).
        num_chunks: forget chunks, from the start of the text (paper: 400; default: every complete chunk).
        retain_chunks: retain chunks (default: every complete chunk).
        prefix_tokens: a chunk's prompt length for the refusal pairs (paper's continuation prompt: 200).
        mask_prefix: ``-100`` on the prefix of the forget labels (DPO's usual pairing, see the module docstring);
            by default every token counts.
        text_column: the text column of dataset sources.
        seed: seed of the forget/retain and refusal pairing.
    """
    check_prefix(prefix_tokens, chunk_tokens)
    forget = chunk_examples(
        chunk_text(tokenizer, forget_text, chunk_tokens, num_chunks, text_column), prefix_tokens, mask_prefix
    )
    retain = None
    if retain_text is not None:
        retain = chunk_examples(
            chunk_text(tokenizer, retain_text, chunk_tokens, retain_chunks, text_column), prefix_tokens
        )
    refusal_ids = None if refusals is None else [encode_refusal(tokenizer, r) for r in refusals]
    longest = max((len(r) for r in refusal_ids), default=1) if refusal_ids else 1
    return ForgetRetainDataset(forget, retain, refusal_ids, max_length=prefix_tokens + longest, seed=seed)


def encode_refusal(tokenizer, refusal: str) -> list[int]:
    """Token ids of a refusal said after a chunk's prefix: ``" " + refusal`` (prose goes on after a space), then EOS."""
    if tokenizer.eos_token_id is None:
        raise ValueError("The tokenizer has no EOS token; set tokenizer.eos_token before tokenizing refusals.")
    return tokenizer(" " + refusal.strip(), add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]


# --------------------------------------------------------------------------------------------------------------------
# WikiText (perplexity of the copyright task's utility check; also a possible retain corpus)
# --------------------------------------------------------------------------------------------------------------------

WIKITEXT_DIR_ENV = "RKLU_WIKITEXT_DIR"
WIKITEXT_FILE = "wikitext-2-raw-test.txt"
WIKITEXT_HUB = ("Salesforce/wikitext", "wikitext-2-raw-v1", "test")


def resolve_wikitext_file(data_dir: str | os.PathLike | None = None) -> Path | None:
    """The local WikiText-2 raw test file: ``data_dir`` (the file itself, or a folder holding
    ``wikitext-2-raw-test.txt``), else ``$RKLU_WIKITEXT_DIR``; ``None`` when neither is set (use the hub).

    Raises:
        DataUnavailableError: the given path does not exist or the folder lacks the file (the message says both ways
            out).
    """
    chosen = data_dir if data_dir is not None else os.environ.get(WIKITEXT_DIR_ENV)
    if not chosen:
        return None
    path = Path(chosen).expanduser()
    if path.is_dir():
        path = path / WIKITEXT_FILE
    if not path.is_file():
        raise DataUnavailableError(
            f"WikiText: {describe_source(path)} does not exist. Point data_dir / ${WIKITEXT_DIR_ENV} at a folder "
            f"holding {WIKITEXT_FILE} (the raw WikiText-2 test split, one text file), or unset it to use the hub "
            f"dataset {WIKITEXT_HUB[0]} ({WIKITEXT_HUB[1]})."
        )
    return path


def load_wikitext(data_dir: str | os.PathLike | None = None) -> tuple[list[str], str]:
    """WikiText-2 raw test text as ``(documents, label)`` for :func:`chunk_text`.

    Local: the file from :func:`resolve_wikitext_file`, one document. Hub: the rows of ``Salesforce/wikitext``
    ``wikitext-2-raw-v1`` test joined as they are (each row carries its own newline), one document.

    Raises:
        DataUnavailableError: no local copy and the hub cannot be reached.
    """
    local = resolve_wikitext_file(data_dir)
    if local is not None:
        return read_documents(local), describe_source(local)
    path, config, split = WIKITEXT_HUB
    problem = hub_problem()
    if problem is not None and not offline_variables():
        raise DataUnavailableError(
            f"WikiText: no local copy and the Hugging Face hub cannot be used ({problem}). Pass --wikitext_dir "
            f"<folder with {WIKITEXT_FILE}> (data_dir=... in Python) or set ${WIKITEXT_DIR_ENV}, {hub_advice(problem)}."
        )
    try:
        rows = load_dataset(path, config, split=split)["text"]
    except Exception as exc:  # offline, unreachable, missing: one way out for the user
        raise DataUnavailableError(
            f"WikiText could not be loaded from the hub ({path} {config}): {type(exc).__name__}: {str(exc)[:200]}. "
            f"Pass --wikitext_dir <folder with {WIKITEXT_FILE}> (data_dir=... in Python) or set ${WIKITEXT_DIR_ENV}, "
            f"{hub_advice(problem or '')}."
        ) from exc
    return ["".join(rows)], f"{path}:{config}:{split}"
