"""``rklu_llm.data.classification``: IDX / CIFAR-10 / CSV / imagefolder / Austen loaders on small files made here, the
forget/retain split, the paired dataset and its collator, and every bad input refused with a clear message."""

from __future__ import annotations

import gzip
import pickle
import struct

import numpy as np
import pytest
import torch
from datasets import ClassLabel, Dataset

from rklu_llm.data import DataUnavailableError
from rklu_llm.data.classification import (
    AUSTEN_NOVELS,
    FASHION_MNIST_CLASSES,
    ClassificationCollator,
    ClassificationUnlearnDataset,
    forget_indices,
    group_labels,
    image_dataset,
    load_austen_passages,
    load_cifar10,
    load_classification_dataset,
    load_digits_dataset,
    load_fashion_mnist,
    parse_class_groups,
    read_idx,
    split_forget_retain,
    take_rows,
    to_arrays,
    tokenize_texts,
)


def _idx_bytes(array: np.ndarray) -> bytes:
    """IDX: 0, 0, type 0x08 (uint8), ndim, big-endian uint32 dims, values."""
    return bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()


def _write_fashion_mnist(folder, n_train=6, n_test=4, gz=True):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = (np.arange(n) % 10).astype(np.uint8)
        for stem, array in ((f"{prefix}-images-idx3-ubyte", images), (f"{prefix}-labels-idx1-ubyte", labels)):
            data = _idx_bytes(array)
            if gz:
                with gzip.open(folder / f"{stem}.gz", "wb") as handle:
                    handle.write(data)
            else:
                (folder / stem).write_bytes(data)
    return folder


def test_read_idx_gz_and_plain(tmp_path):
    """A (2, 3) uint8 array [[1, 2, 3], [4, 5, 255]] round-trips, compressed or not; a bad magic is refused."""
    array = np.array([[1, 2, 3], [4, 5, 255]], dtype=np.uint8)
    (tmp_path / "a").write_bytes(_idx_bytes(array))
    with gzip.open(tmp_path / "a.gz", "wb") as handle:
        handle.write(_idx_bytes(array))
    np.testing.assert_array_equal(read_idx(tmp_path / "a"), array)
    np.testing.assert_array_equal(read_idx(tmp_path / "a.gz"), array)
    (tmp_path / "bad").write_bytes(b"\x01\x00\x08\x01\x00\x00\x00\x01\x07")
    with pytest.raises(ValueError, match="magic"):
        read_idx(tmp_path / "bad")
    (tmp_path / "short").write_bytes(_idx_bytes(array)[:-1])
    with pytest.raises(ValueError, match="header says"):
        read_idx(tmp_path / "short")


@pytest.mark.parametrize("gz", [True, False], ids=["gz", "plain"])
def test_load_fashion_mnist_from_a_folder(tmp_path, gz, monkeypatch):
    folder = _write_fashion_mnist(tmp_path / "fm", gz=gz)
    train = load_fashion_mnist("train", folder)
    assert len(train) == 6 and train.features["labels"].names == list(FASHION_MNIST_CLASSES)
    arrays = to_arrays(train)
    assert arrays["input"].shape == (6, 1, 28, 28) and arrays["input"].dtype == torch.float32
    assert arrays["input"].min() >= 0.0 and arrays["input"].max() <= 1.0
    raw = read_idx(folder / ("train-images-idx3-ubyte" + (".gz" if gz else "")))
    np.testing.assert_allclose(arrays["input"][3, 0].numpy(), raw[3] / 255.0, rtol=1e-6)
    monkeypatch.setenv("RKLU_FASHION_MNIST_DIR", str(folder))  # the environment variable is the default folder
    assert to_arrays(load_fashion_mnist("test"))["labels"].tolist() == [0, 1, 2, 3]


def test_load_fashion_mnist_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataUnavailableError, match="RKLU_FASHION_MNIST_DIR"):
        load_fashion_mnist("train", tmp_path / "empty")
    with pytest.raises(DataUnavailableError, match="not a directory"):
        load_fashion_mnist("train", tmp_path / "missing")
    with pytest.raises(ValueError, match="split"):
        load_fashion_mnist("validation", tmp_path / "empty")


def test_load_digits_dataset():
    """sklearn's 1,797 digits, 25% of each class in test: 1,347 train / 450 test, 8x8 values in [0, 1]."""
    train, test = load_digits_dataset("train"), load_digits_dataset("test")
    assert len(train) + len(test) == 1797 and len(test) == 450
    arrays = to_arrays(train)
    assert arrays["input"].shape == (1347, 1, 8, 8) and float(arrays["input"].max()) == 1.0
    assert sorted(set(arrays["labels"].tolist())) == list(range(10))


def test_load_cifar10_from_pickle_batches(tmp_path, monkeypatch):
    """Two fake training batches of 3 and 2 images plus a test batch and the meta file."""
    rng = np.random.default_rng(0)
    images = {}
    for name, n in (("data_batch_1", 3), ("data_batch_2", 2), ("test_batch", 4)):
        data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
        images[name] = data
        with open(tmp_path / name, "wb") as handle:
            pickle.dump({b"data": data, b"labels": list(range(n))}, handle)
    with open(tmp_path / "batches.meta", "wb") as handle:
        pickle.dump({b"label_names": [f"c{i}".encode() for i in range(10)]}, handle)
    train = load_cifar10("train", tmp_path)
    arrays = to_arrays(train)
    assert arrays["input"].shape == (5, 3, 32, 32) and arrays["labels"].tolist() == [0, 1, 2, 0, 1]
    np.testing.assert_allclose(
        arrays["input"][4].numpy(), images["data_batch_2"][1].reshape(3, 32, 32) / 255.0, rtol=1e-6
    )
    assert train.features["labels"].names[3] == "c3"
    monkeypatch.setenv("RKLU_CIFAR10_DIR", str(tmp_path))
    assert len(load_cifar10("test")) == 4
    with pytest.raises(DataUnavailableError, match="cifar-10-batches-py"):
        load_cifar10("train", tmp_path / "nothing")


def test_load_text_classification_from_csv_and_json(tmp_path):
    (tmp_path / "t.csv").write_text('sentence,label\n"good movie",1\n"bad film",0\n')
    (tmp_path / "t.jsonl").write_text('{"text": "fine", "label": 2}\n')
    csv = load_classification_dataset(str(tmp_path / "t.csv"))
    assert csv.column_names == ["text", "labels"] and csv["text"][:] == ["good movie", "bad film"]
    assert load_classification_dataset(str(tmp_path / "t.jsonl"))["labels"][:] == [2]
    with pytest.raises(ValueError, match="no label column"):
        load_classification_dataset(str(tmp_path / "t.csv"), label_column="y")
    with pytest.raises(DataUnavailableError, match="HF_DATASETS_OFFLINE"):
        load_classification_dataset("no-such-org/no-such-set")


def test_load_image_classification_from_an_imagefolder(tmp_path):
    from PIL import Image

    for label in ("cat", "dog"):
        (tmp_path / "train" / label).mkdir(parents=True)
        for i in range(2):
            value = 255 if label == "dog" else 0
            image = Image.fromarray(np.full((4, 5), value, dtype=np.uint8), mode="L")
            image.save(tmp_path / "train" / label / f"{i}.png")
    data = load_classification_dataset(str(tmp_path), "train")
    arrays = to_arrays(data)
    assert arrays["input"].shape == (4, 1, 4, 5)
    assert data.features["labels"].names == ["cat", "dog"]
    dogs = arrays["labels"] == 1
    assert float(arrays["input"][dogs].min()) == 1.0 and float(arrays["input"][~dogs].max()) == 0.0


def _write_books(folder, words=200):
    folder.mkdir()
    for stem in AUSTEN_NOVELS:
        body = " ".join(f"{stem}{j}" for j in range(words))
        text = f"TITLE\n\nBy Jane Austen\nCHAPTER I\n{body}\nCHAPTER II\n"
        (folder / f"{stem}.txt").write_text(text, encoding="utf-8")
    return folder


def test_austen_passages(tmp_path, monkeypatch):
    """200 words per novel in passages of 16 -> 12 passages each (the 8-word tail dropped); 20% of 12 -> 2 (rounded
    from 2.4) go to test; 6 classes named after the novels; chapter headings and the title lines are not text."""
    books = _write_books(tmp_path / "books")
    train = load_austen_passages("train", books, words_per_passage=16)
    test = load_austen_passages("test", books, words_per_passage=16)
    assert len(train) == 6 * 10 and len(test) == 6 * 2
    assert train.features["labels"].names == list(AUSTEN_NOVELS.values())
    assert all(len(t.split()) == 16 and "CHAPTER" not in t and "Austen" not in t for t in train["text"][:])
    assert set(train["text"][:]).isdisjoint(test["text"][:])
    assert all(t.startswith(list(AUSTEN_NOVELS)[y]) for t, y in zip(test["text"][:], test["labels"][:]))
    monkeypatch.setenv("RKLU_BOOKS_DIR", str(books))
    assert len(load_austen_passages("test", words_per_passage=16)) == 12
    monkeypatch.delenv("RKLU_BOOKS_DIR")
    with pytest.raises(DataUnavailableError, match="RKLU_BOOKS_DIR"):
        load_austen_passages("train")


def test_tokenize_texts_and_text_batches():
    from conftest import build_tiny_tokenizer

    tokenizer = build_tiny_tokenizer()
    data = Dataset.from_dict({"text": ["a b c d e f g", "a"], "labels": [0, 1]}, features=None).cast_column(
        "labels", ClassLabel(num_classes=2)
    )
    tokens = tokenize_texts(data, tokenizer, max_length=4)
    lengths = [len(ids) for ids in tokens["input_ids"][:]]
    assert max(lengths) <= 4
    dataset = ClassificationUnlearnDataset(tokens.select([0]), tokens.select([1]))
    batch = ClassificationCollator(pad_token_id=7)([dataset[0], dataset[0]])
    assert batch["forget"]["input_ids"].shape == (2, lengths[0])
    retain = ClassificationCollator(pad_token_id=7)([dataset.over_retain()[0]])
    assert set(retain) == {"retain"} and retain["retain"]["attention_mask"].tolist() == [[1] * lengths[1]]


def test_collator_pads_text_with_an_attention_mask():
    from rklu_llm.data.classification import collate_rows

    out = collate_rows("input_ids", [torch.tensor([5, 6, 7]), torch.tensor([8])], pad_token_id=0)
    assert out["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert out["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]


def _toy(labels, names=("a", "b", "c")):
    labels = np.asarray(labels)
    return image_dataset(np.arange(len(labels) * 4, dtype=np.float32).reshape(-1, 1, 2, 2), labels, names)


def test_forget_indices_and_split():
    labels = np.array([0, 1, 2, 1, 0, 2])
    assert forget_indices(labels, [2]).tolist() == [2, 5]
    assert forget_indices(labels, [0, 2]).tolist() == [0, 2, 4, 5]
    sample = forget_indices(labels, num_forget_samples=3, seed=1)
    assert len(set(sample.tolist())) == 3 and sample.tolist() == sorted(sample.tolist())
    forget, retain, index = split_forget_retain(_toy(labels), [1])
    assert index.tolist() == [1, 3] and to_arrays(forget)["labels"].tolist() == [1, 1]
    assert to_arrays(retain)["labels"].tolist() == [0, 2, 0, 2]
    np.testing.assert_array_equal(to_arrays(forget)["input"][1].numpy().ravel(), [12, 13, 14, 15])


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(forget_classes=[1], num_forget_samples=2), "exactly one"),
        (dict(), "exactly one"),
        (dict(forget_classes=[7]), r"\[7\] have no samples"),
        (dict(forget_classes=[]), "empty"),
        (dict(num_forget_samples=99), "num_forget_samples"),
    ],
)
def test_forget_indices_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        forget_indices(np.array([0, 1, 2]), **kwargs)


def test_take_rows_of_a_select_view():
    data = _toy([0, 1, 2, 0])
    view = data.select([3, 1, 2])
    assert to_arrays(take_rows(view, [0, 2]))["labels"].tolist() == [0, 2]
    assert to_arrays(view)["labels"].tolist() == [0, 1, 2]


def test_paired_dataset_items_and_epochs():
    forget, retain = _toy([2, 2, 2]), _toy([0, 1, 0, 1, 0])
    dataset = ClassificationUnlearnDataset(forget, retain, forget_classes=[2], seed=3)
    assert len(dataset) == 3 and dataset.num_classes == 3 and dataset.kind == "pixel_values"
    item = dataset[1]
    assert item["forget"]["labels"] == 2 and item["forget"]["index"] == 1
    assert item["forget"]["random_labels"] in (0, 1)  # a random label, never the true one
    partners = {
        epoch: [dataset.set_epoch(epoch) or dataset[i]["retain"]["index"] for i in range(3)] for epoch in range(4)
    }
    assert all(len(set(p)) == 3 for p in partners.values())  # distinct partners within an epoch
    assert len({tuple(p) for p in partners.values()}) > 1  # re-drawn across epochs
    dataset.set_epoch(0)
    assert [dataset[i]["retain"]["index"] for i in range(3)] == partners[0]  # deterministic
    steps = dataset.over_retain()
    assert len(steps) == 5 and set(steps[4]) == {"retain"} and len(dataset) == 3
    batch = ClassificationCollator()([dataset[0], dataset[1]])
    assert batch["forget"]["pixel_values"].shape == (2, 1, 2, 2)
    assert batch["forget"]["labels"].tolist() == [2, 2] and batch["retain"]["labels"].dtype == torch.long


@pytest.mark.parametrize(
    "forget_labels,retain_labels,kwargs,match",
    [
        ([0, 3], None, {}, r"label\(s\) \[3\] out of range for K = 3"),
        ([0, 1], [0, -1], {}, r"retain set: label\(s\) \[-1\]"),
        ([0, 1], None, {"forget_classes": [1]}, r"mixes classes: .*\[0\]"),
        ([1, 1], None, {"forget_classes": [1, 2]}, r"\[2\] have no samples"),
        ([1, 1], [0, 1], {"forget_classes": [1]}, "retain set holds samples of forget class"),
        ([1, 1], None, {"forget_classes": [5]}, "out of range"),
        ([0, 0], None, {"num_classes": 1}, "at least 2 classes"),
        ([], None, {}, "forget set is empty"),
    ],
)
def test_paired_dataset_rejects_bad_input(forget_labels, retain_labels, kwargs, match):
    retain = None if retain_labels is None else _toy(retain_labels)
    with pytest.raises(ValueError, match=match):
        ClassificationUnlearnDataset(_toy(forget_labels) if forget_labels else _toy([0]).select([]), retain, **kwargs)


def test_paired_dataset_needs_the_number_of_classes():
    plain = image_dataset(np.zeros((2, 1, 2, 2)), [0, 1])  # no ClassLabel
    with pytest.raises(ValueError, match="num_classes"):
        ClassificationUnlearnDataset(plain)
    assert ClassificationUnlearnDataset(plain, num_classes=4).num_classes == 4
    with pytest.raises(ValueError, match="'pixel_values' or an 'input_ids' column"):
        ClassificationUnlearnDataset(Dataset.from_dict({"text": ["x"], "labels": [0]}), num_classes=2)


def test_class_groups_merge_labels():
    """Groups 0,2|1|3 of 4 classes: labels [0, 1, 2, 3, 2] -> [0, 1, 0, 2, 0]; names joined with '+'; pixels kept;
    a select() view is grouped by its own rows."""
    groups = parse_class_groups("0,2|1|3", 4)
    assert groups == [[0, 2], [1], [3]]
    pixels = np.arange(5, dtype=np.float32).reshape(5, 1, 1, 1)
    data = image_dataset(pixels, [0, 1, 2, 3, 2], ["a", "b", "c", "d"])
    grouped = group_labels(data, groups)
    assert grouped["labels"] == [0, 1, 0, 2, 0] and grouped.features["labels"].names == ["a+c", "b", "d"]
    np.testing.assert_array_equal(to_arrays(grouped)["input"].numpy().ravel(), np.arange(5))
    view = group_labels(data.select([3, 1]), groups)
    assert view["labels"] == [2, 1] and len(view) == 2


@pytest.mark.parametrize(
    "text,match",
    [
        ("0,1|2", "missing \\[3\\]"),
        ("0,1|1,2|3", "twice \\[1\\]"),
        ("0,1,2,3,7", "fewer than two groups.*out of range \\[7\\]"),
        ("0,1||2,3", "an empty group"),
        ("a|b", "class ids"),
    ],
)
def test_class_groups_must_partition_the_classes(text, match):
    with pytest.raises(ValueError, match=match):
        parse_class_groups(text, 4)
