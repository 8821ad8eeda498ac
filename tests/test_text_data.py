"""Text-corpus forget sets (``rklu_llm.data.text``): chunking loses and repeats no token, every source kind reads the
same text, bad inputs fail before any model is loaded, and every unlearning method trains on book chunks."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import SHARED_DATA, build_tiny_model, tiny_config
from datasets import Dataset

from rklu_llm import METHODS, UnlearnConfig, UnlearnTrainer, load_refusals
from rklu_llm.data import UnlearnCollator
from rklu_llm.data.text import (
    build_text_unlearning_dataset,
    check_chunk_fits,
    chunk_examples,
    chunk_text,
    chunk_token_ids,
    encode_refusal,
    model_context_length,
    read_documents,
)
from rklu_llm.losses import IGNORE_INDEX

BOOKS = SHARED_DATA / "books"


@pytest.fixture(scope="module")
def book_excerpt(tmp_path_factory) -> str:
    """The first ~6000 characters of Pride and Prejudice (enough for a few chunks of the tiny tokenizer)."""
    return (BOOKS / "pride_and_prejudice.txt").read_text(encoding="utf-8")[:6000]


@pytest.fixture(scope="module")
def control_excerpt() -> str:
    return (BOOKS / "sense_and_sensibility.txt").read_text(encoding="utf-8")[:6000]


# --------------------------------------------------------------------------------------------------------------------
# chunking
# --------------------------------------------------------------------------------------------------------------------


def test_chunk_token_ids_by_hand():
    ids = list(range(10))
    # 10 tokens, chunks of 3: [0 1 2] [3 4 5] [6 7 8]; token 9 is the incomplete tail, left out.
    assert chunk_token_ids(ids, 3) == [[0, 1, 2], [3, 4, 5], [6, 7, 8]]
    assert chunk_token_ids(ids, 3, num_chunks=2) == [[0, 1, 2], [3, 4, 5]]
    assert chunk_token_ids(ids, 5) == [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]]
    assert chunk_token_ids(ids, 10) == [ids]


@pytest.mark.parametrize("chunk_tokens", [2, 7, 64, 333])
def test_chunks_lose_and_repeat_no_token(tiny_tokenizer, book_excerpt, chunk_tokens):
    ids = tiny_tokenizer(book_excerpt, add_special_tokens=False)["input_ids"]
    chunks = chunk_text(tiny_tokenizer, [book_excerpt], chunk_tokens)
    assert all(len(c) == chunk_tokens for c in chunks)
    assert len(chunks) == len(ids) // chunk_tokens
    flat = [t for c in chunks for t in c]
    assert flat == ids[: len(flat)]  # in order, nothing skipped or repeated
    assert len(ids) - len(flat) < chunk_tokens  # only the incomplete tail is left out


def test_chunking_errors():
    with pytest.raises(ValueError, match="fewer than one chunk of 8"):
        chunk_token_ids(list(range(7)), 8, label="my book")
    with pytest.raises(ValueError, match="only 3 complete chunks of 3, not 4"):
        chunk_token_ids(list(range(10)), 3, num_chunks=4)
    with pytest.raises(ValueError, match="chunk_tokens must be >= 2"):
        chunk_token_ids(list(range(10)), 1)
    with pytest.raises(ValueError, match="num_chunks must be >= 1"):
        chunk_token_ids(list(range(10)), 2, num_chunks=0)


def test_book_shorter_than_one_chunk_names_the_file(tiny_tokenizer, tmp_path):
    path = tmp_path / "short.txt"
    path.write_text("It is a truth universally acknowledged.", encoding="utf-8")
    with pytest.raises(ValueError, match=r"short\.txt has \d+ tokens, fewer than one chunk of 512"):
        chunk_text(tiny_tokenizer, str(path), 512)


# --------------------------------------------------------------------------------------------------------------------
# sources
# --------------------------------------------------------------------------------------------------------------------


def test_every_source_kind_reads_the_same_documents(tmp_path, book_excerpt, control_excerpt):
    folder = tmp_path / "books"
    folder.mkdir()
    (folder / "b.txt").write_text(control_excerpt, encoding="utf-8")
    (folder / "a.txt").write_text(book_excerpt, encoding="utf-8")
    (folder / "notes.md").write_text("not a book", encoding="utf-8")
    assert read_documents(str(folder)) == [book_excerpt, control_excerpt]  # *.txt only, in name order
    assert read_documents(folder / "a.txt") == [book_excerpt]
    rows = Dataset.from_dict({"content": [book_excerpt, control_excerpt]})
    assert read_documents(rows, text_column="content") == [book_excerpt, control_excerpt]
    assert read_documents([book_excerpt]) == [book_excerpt]


def test_folder_chunks_are_the_joined_text(tiny_tokenizer, tmp_path, book_excerpt, control_excerpt):
    folder = tmp_path / "books"
    folder.mkdir()
    (folder / "1.txt").write_text(book_excerpt, encoding="utf-8")
    (folder / "2.txt").write_text(control_excerpt, encoding="utf-8")
    joined = tiny_tokenizer(book_excerpt + "\n\n" + control_excerpt, add_special_tokens=False)["input_ids"]
    assert chunk_text(tiny_tokenizer, folder, 100) == chunk_token_ids(joined, 100)


def test_bad_sources(tmp_path):
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes("It cost Mr. Bennet ten pounds (£10).".encode("latin-1"))
    with pytest.raises(ValueError, match=r"latin1\.txt is not UTF-8 text \(byte 31.*iconv"):
        read_documents(latin1)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_documents(tmp_path / "missing.txt")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="holds no .txt file"):
        read_documents(tmp_path / "empty")
    with pytest.raises(ValueError, match="no column 'text'"):
        read_documents(Dataset.from_dict({"body": ["x"]}))
    with pytest.raises(ValueError, match="Document 1 .* is NoneType"):
        read_documents(["x", None])
    with pytest.raises(ValueError, match="Unsupported text source"):
        read_documents(42)


def test_paths_in_messages_are_portable(tiny_tokenizer, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "short.txt").write_text("Too short.", encoding="utf-8")
    with pytest.raises(ValueError) as error:
        chunk_text(tiny_tokenizer, str(tmp_path / "short.txt"), 64)
    assert str(tmp_path) not in str(error.value) and "short.txt" in str(error.value)


# --------------------------------------------------------------------------------------------------------------------
# examples, context, the unlearning dataset
# --------------------------------------------------------------------------------------------------------------------


def test_chunk_examples_count_every_token_or_mask_the_prefix():
    chunks = [[5, 6, 7, 8], [9, 10, 11, 12]]
    rows = chunk_examples(chunks, prefix_tokens=3)
    assert rows["input_ids"] == chunks and rows["labels"] == chunks and rows["prompt_ids"] == [[5, 6, 7], [9, 10, 11]]
    masked = chunk_examples(chunks, prefix_tokens=3, mask_prefix=True)
    assert masked["labels"] == [[IGNORE_INDEX] * 3 + [8], [IGNORE_INDEX] * 3 + [12]]
    for prefix in (0, 4, 5):
        with pytest.raises(ValueError, match="shorter than a chunk"):
            chunk_examples(chunks, prefix_tokens=prefix)


def test_chunk_longer_than_the_context_fails_from_the_config_alone(tmp_path, tiny_model_dir):
    config_only = tmp_path / "config-only"
    config_only.mkdir()
    (config_only / "config.json").write_text((tiny_model_dir / "config.json").read_text())  # no weights at all
    assert model_context_length(str(config_only)) == 512
    check_chunk_fits(str(config_only), 512)
    with pytest.raises(ValueError, match="chunk_tokens=513 is longer than the model's context of 512"):
        check_chunk_fits(str(config_only), 513)


def test_text_unlearning_dataset_items(tiny_tokenizer, book_excerpt, control_excerpt):
    refusals = ["I don't know.", "No idea."]
    dataset = build_text_unlearning_dataset(
        tiny_tokenizer,
        [book_excerpt],
        [control_excerpt],
        refusals,
        chunk_tokens=64,
        num_chunks=5,
        prefix_tokens=16,
    )
    chunks = chunk_text(tiny_tokenizer, [book_excerpt], 64, 5)
    assert len(dataset) == 5
    refusal_ids = [encode_refusal(tiny_tokenizer, r) for r in refusals]
    for i in range(5):
        item = dataset[i]
        assert item["forget"]["input_ids"] == chunks[i] and item["forget"]["labels"] == chunks[i]
        refusal = item["refusal"]
        assert refusal["input_ids"][:16] == chunks[i][:16]  # the refusal follows the chunk's own prefix
        assert refusal["labels"][:16] == [IGNORE_INDEX] * 16 and refusal["input_ids"][16:] in refusal_ids
        assert refusal["labels"][16:] == refusal["input_ids"][16:]
        assert len(item["retain"]["input_ids"]) == 64 and item["retain"]["labels"] == item["retain"]["input_ids"]
    assert tiny_tokenizer.decode(refusal_ids[0]) == " I don't know.<|im_end|>"


def test_refusals_are_never_cut_by_a_short_prefix(tiny_tokenizer, book_excerpt):
    long = "I am very sorry, but that is a passage I cannot continue for you, now or at any later time."
    dataset = build_text_unlearning_dataset(
        tiny_tokenizer, [book_excerpt], refusals=[long], chunk_tokens=8, num_chunks=2, prefix_tokens=4
    )
    item = dataset[0]["refusal"]
    assert item["input_ids"][4:] == encode_refusal(tiny_tokenizer, long)


def make_config(tmp_path, method, **overrides) -> UnlearnConfig:
    return tiny_config(tmp_path / method, method, **overrides)


@pytest.mark.parametrize("method", sorted(m for m, spec in METHODS.items() if spec.batch != "classifier"))
def test_every_method_unlearns_book_chunks(tmp_path, tiny_tokenizer, book_excerpt, control_excerpt, method):
    config = make_config(tmp_path, method, retain_mode="rt" if method == "gd" else None)
    dataset = build_text_unlearning_dataset(
        tiny_tokenizer,
        [book_excerpt],
        [control_excerpt] if config.retain_mode != "none" else None,
        load_refusals() if config.spec.needs_refusals else None,
        chunk_tokens=48,
        num_chunks=8,
        prefix_tokens=16,
        mask_prefix=method == "dpo",
    )
    model = build_tiny_model(tiny_tokenizer)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainer = UnlearnTrainer(model=model, args=config, train_dataset=dataset, processing_class=tiny_tokenizer)
    result = trainer.train()
    assert math.isfinite(result.training_loss)
    after = trainer.accelerator.unwrap_model(trainer.model)
    assert any(not torch.equal(before[n], p) for n, p in after.named_parameters()), "the model did not change"
    if METHODS[method].trains:
        losses = [entry["forget/loss"] for entry in trainer.state.log_history if "forget/loss" in entry]
        assert losses and all(math.isfinite(v) for v in losses)


def test_the_collator_pads_chunk_batches(tiny_tokenizer, book_excerpt):
    dataset = build_text_unlearning_dataset(
        tiny_tokenizer, [book_excerpt], refusals=["No idea."], chunk_tokens=32, num_chunks=3, prefix_tokens=8
    )
    batch = UnlearnCollator(tiny_tokenizer.pad_token_id)([dataset[i] for i in range(3)])
    assert batch["forget"]["input_ids"].shape == (3, 32) and bool(batch["forget"]["attention_mask"].all())
    assert (batch["forget"]["labels"] != IGNORE_INDEX).sum().item() == 3 * 32
