"""Classification data for classifier unlearning: loaders, the forget/retain split and the paired dataset.

Every loader returns a `datasets.Dataset` with one input column and an integer ``labels`` column (a ``ClassLabel``
with the class names when they are known):

* images: ``pixel_values``, float32 ``(C, H, W)`` with values in ``[0, 1]`` (no mean/std normalisation, so the
  ``eps`` of an FGSM step or the noise of JiT is in pixel units);
* text: ``text`` (raw) until :func:`tokenize_texts` adds ``input_ids`` (the collator pads and adds the attention
  mask).

Sources: Fashion-MNIST from its IDX files (:func:`load_fashion_mnist`), scikit-learn's bundled 8x8 digits
(:func:`load_digits_dataset`, for fast tests), CIFAR-10 from its python-pickle batches (:func:`load_cifar10`), any
`datasets` image or text classification set, from the hub or from a local folder / CSV / JSON file
(:func:`load_classification_dataset`), and passages of the six Jane Austen novels labelled with their novel
(:func:`load_austen_passages`).

Images are built as Arrow tables directly (``datasets``' row-by-row conversion of 60,000 ``(1, 28, 28)`` arrays
takes tens of seconds); :func:`take_rows` copies a subset the same way, so reading a split back as arrays stays fast.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import pickle
import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch
from datasets import ClassLabel, Dataset, Features, Value, load_dataset
from datasets.features.features import Array3D, Array3DExtensionType
from datasets.table import InMemoryTable

from ..offline import hub_advice, hub_problem, offline_variables
from .tofu import DataUnavailableError

FASHION_MNIST_ENV = "RKLU_FASHION_MNIST_DIR"
#: where Debian's ``dataset-fashion-mnist`` package installs the IDX files
FASHION_MNIST_SYSTEM_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_HUB_ID = "zalando-datasets/fashion_mnist"
FASHION_MNIST_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
CIFAR10_ENV = "RKLU_CIFAR10_DIR"
BOOKS_ENV = "RKLU_BOOKS_DIR"
#: file stem -> novel, in label order
AUSTEN_NOVELS = {
    "emma": "Emma",
    "mansfield_park": "Mansfield Park",
    "northanger_abbey": "Northanger Abbey",
    "persuasion": "Persuasion",
    "pride_and_prejudice": "Pride and Prejudice",
    "sense_and_sensibility": "Sense and Sensibility",
}
INPUT_COLUMNS = ("pixel_values", "input_ids")


# --------------------------------------------------------------------------------------------------------------------
# Building and slicing datasets
# --------------------------------------------------------------------------------------------------------------------


def image_dataset(pixels: np.ndarray, labels, class_names=None, num_classes: int | None = None) -> Dataset:
    """A `datasets.Dataset` of ``pixel_values`` (float32 ``(C, H, W)``) and ``labels``, built as one Arrow table.

    Args:
        pixels: ``(N, C, H, W)`` array (any real dtype; stored as float32).
        labels: ``(N,)`` integer class ids.
        class_names: the ``ClassLabel`` names (their count is the number of classes), or ``None``.
        num_classes: the number of classes when there are no names (``None``: a plain integer column).
    """
    pixels = np.ascontiguousarray(pixels, dtype=np.float32)
    if pixels.ndim != 4:
        raise ValueError(f"pixels must be (N, C, H, W), got shape {pixels.shape}")
    labels = np.asarray(labels, dtype=np.int64)
    if labels.shape != (len(pixels),):
        raise ValueError(f"labels must be ({len(pixels)},), got shape {labels.shape}")
    shape = tuple(int(s) for s in pixels.shape[1:])
    storage = pa.array(pixels.reshape(-1))
    for size in reversed(shape):  # nest the flat values into lists of W, then H, then C
        storage = pa.ListArray.from_arrays(pa.array(np.arange(0, len(storage) + 1, size, dtype=np.int32)), storage)
    column = pa.ExtensionArray.from_storage(Array3DExtensionType(shape, "float32"), storage)
    if class_names is not None:
        label_feature = ClassLabel(names=list(class_names))
    elif num_classes is not None:
        label_feature = ClassLabel(num_classes=num_classes)
    else:
        label_feature = Value("int64")
    features = Features({"pixel_values": Array3D(shape, "float32"), "labels": label_feature})
    table = pa.table({"pixel_values": column, "labels": pa.array(labels)})
    return Dataset(InMemoryTable(table.cast(features.arrow_schema)))


def take_rows(dataset: Dataset, indices) -> Dataset:
    """Rows ``indices`` of ``dataset`` as a new dataset whose table holds just those rows (Arrow ``take``).

    Unlike ``dataset.select(indices)``, which keeps an index mapping that makes every later read go row by row,
    reading the result back as arrays is as fast as for a freshly built dataset.
    """
    indices = np.asarray(indices, dtype=np.int64)
    mapping = getattr(dataset, "_indices", None)  # a dataset that is itself a select() view
    if mapping is not None:
        indices = mapping.column(0).to_numpy()[indices]
    table = dataset.data.table.take(pa.array(indices))
    return Dataset(InMemoryTable(table), info=dataset.info.copy())


def parse_class_groups(text: str, num_classes: int) -> list[list[int]]:
    """``"0,6|2,4|1,3|5,7,9|8"`` -> ``[[0, 6], [2, 4], [1, 3], [5, 7, 9], [8]]``: a partition of the classes ``0..K-1``
    into groups separated by ``|``, each group's classes by commas.

    Raises:
        ValueError: a class outside ``0..num_classes-1``, a class in two groups or in none, an empty group, or fewer
            than two groups.
    """
    try:
        groups = [[int(c) for c in part.split(",") if c.strip()] for part in text.split("|")]
    except ValueError:
        raise ValueError(
            f"Class groups {text!r}: write them as 0,6|2,4|... (class ids, ',' within, '|' between)."
        ) from None
    flat = [c for g in groups for c in g]
    problems = []
    if any(not g for g in groups):
        problems.append("an empty group")
    if len(groups) < 2:
        problems.append("fewer than two groups")
    if sorted(flat) != list(range(num_classes)):
        bad = sorted({c for c in flat if not 0 <= c < num_classes})
        twice = sorted({c for c in flat if flat.count(c) > 1})
        missing = sorted(set(range(num_classes)) - set(flat))
        problems += [
            f"{what} {cs}" for what, cs in (("out of range", bad), ("twice", twice), ("missing", missing)) if cs
        ]
    if problems:
        raise ValueError(f"Class groups {text!r} must partition classes 0..{num_classes - 1}: {'; '.join(problems)}.")
    return groups


def group_labels(dataset: Dataset, groups: list[list[int]]) -> Dataset:
    """``dataset`` with each label replaced by the index of its group (``groups`` from :func:`parse_class_groups`);
    the new ``ClassLabel`` names join the old names with ``+`` (``"T-shirt/top+Shirt"``)."""
    if getattr(dataset, "_indices", None) is not None:  # a select() view: materialise its rows first
        dataset = dataset.flatten_indices()
    names = class_names_of(dataset) or [str(c) for c in range(sum(len(g) for g in groups))]
    mapping = np.empty(len(names), dtype=np.int64)
    for new, group in enumerate(groups):
        mapping[group] = new
    labels = mapping[dataset.data.table.column("labels").to_numpy()]
    new_names = ["+".join(names[c] for c in group) for group in groups]
    features = dataset.features.copy()
    features["labels"] = ClassLabel(names=new_names)
    table = dataset.data.table.set_column(
        dataset.data.table.column_names.index("labels"), "labels", pa.array(labels)
    ).cast(features.arrow_schema)
    return Dataset(InMemoryTable(table))


def input_column(dataset: Dataset) -> str:
    """The model input column of a classification dataset: ``pixel_values`` or ``input_ids``."""
    for name in INPUT_COLUMNS:
        if name in dataset.column_names:
            return name
    hint = " Tokenize it first (tokenize_texts)." if "text" in dataset.column_names else ""
    raise ValueError(
        f"A classification dataset needs a 'pixel_values' or an 'input_ids' column; this one has "
        f"{dataset.column_names}.{hint}"
    )


def num_classes_of(dataset: Dataset) -> int | None:
    """The number of classes recorded in the ``labels`` feature (a ``ClassLabel``), else ``None``."""
    feature = dataset.features.get("labels")
    return feature.num_classes if isinstance(feature, ClassLabel) else None


def class_names_of(dataset: Dataset) -> list[str] | None:
    feature = dataset.features.get("labels")
    return list(feature.names) if isinstance(feature, ClassLabel) else None


def to_arrays(dataset: Dataset) -> dict:
    """The input column and the labels in memory: ``{"input": ..., "labels": (N,) int64 array, "kind": ...}``.

    ``input`` is a float32 ``(N, C, H, W)`` tensor for images, or a list of ``N`` int64 tensors (unpadded token ids)
    for text; ``kind`` is the input column's name.
    """
    if "labels" not in dataset.column_names:
        raise ValueError(f"A classification dataset needs a 'labels' column; this one has {dataset.column_names}.")
    kind = input_column(dataset)
    if getattr(dataset, "_indices", None) is not None:
        dataset = take_rows(dataset, np.arange(len(dataset)))
    columns = dataset.with_format("numpy", columns=[kind, "labels"])[:]
    labels = np.asarray(columns["labels"], dtype=np.int64)
    if kind == "pixel_values":
        values = torch.from_numpy(np.ascontiguousarray(columns[kind], dtype=np.float32))
    else:
        values = [torch.as_tensor(np.asarray(ids), dtype=torch.long) for ids in columns[kind]]
    return {"input": values, "labels": labels, "kind": kind}


def collate_rows(kind: str, inputs: list[torch.Tensor], pad_token_id: int = 0) -> dict[str, torch.Tensor]:
    """Model inputs of a batch: stacked ``pixel_values``, or right-padded ``input_ids`` with an ``attention_mask``."""
    if kind == "pixel_values":
        return {"pixel_values": torch.stack(inputs)}
    lengths = torch.tensor([len(ids) for ids in inputs])
    ids = torch.full((len(inputs), int(lengths.max())), pad_token_id, dtype=torch.long)
    for row, seq in enumerate(inputs):
        ids[row, : len(seq)] = seq
    mask = (torch.arange(ids.shape[1])[None, :] < lengths[:, None]).long()
    return {"input_ids": ids, "attention_mask": mask}


def batches(arrays: dict, batch_size: int, pad_token_id: int = 0):
    """Consecutive batches ``{inputs..., "labels"}`` of :func:`to_arrays` output (for evaluation)."""
    n = len(arrays["labels"])
    for start in range(0, n, batch_size):
        stop = min(start + batch_size, n)
        if arrays["kind"] == "pixel_values":
            batch = {"pixel_values": arrays["input"][start:stop]}
        else:
            batch = collate_rows("input_ids", arrays["input"][start:stop], pad_token_id)
        batch["labels"] = torch.from_numpy(arrays["labels"][start:stop])
        yield batch


# --------------------------------------------------------------------------------------------------------------------
# Loaders
# --------------------------------------------------------------------------------------------------------------------


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """An IDX file (the MNIST format, gzip-compressed or not) as a numpy array.

    Layout: two zero bytes, a type byte (0x08 = uint8, 0x09 int8, 0x0B int16, 0x0C int32, 0x0D float32,
    0x0E float64), the number of dimensions, one big-endian uint32 per dimension, then the values (big-endian).
    """
    path = Path(path)
    with gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb") as handle:
        data = handle.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise ValueError(f"{path} is not an IDX file (bad magic number).")
    dtypes = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
    if data[2] not in dtypes:
        raise ValueError(f"{path}: unknown IDX element type 0x{data[2]:02x}.")
    ndim = data[3]
    shape = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    values = np.frombuffer(data, dtype=dtypes[data[2]], offset=4 + 4 * ndim)
    if values.size != int(np.prod(shape)):
        raise ValueError(f"{path}: header says {shape} ({int(np.prod(shape))} values), file holds {values.size}.")
    return values.reshape(shape).astype(values.dtype.newbyteorder("="))


def _idx_file(folder: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz"):
        if (folder / name).is_file():
            return folder / name
    return None


def resolve_fashion_mnist_dir(data_dir: str | os.PathLike | None = None) -> Path | None:
    """The local Fashion-MNIST folder: ``data_dir``, else ``$RKLU_FASHION_MNIST_DIR``, else the Debian package's
    ``/usr/share/datasets/fashion-mnist`` when it exists, else ``None`` (use the hub)."""
    chosen = data_dir if data_dir is not None else os.environ.get(FASHION_MNIST_ENV)
    if chosen:
        path = Path(chosen).expanduser()
        if not path.is_dir():
            raise DataUnavailableError(f"Fashion-MNIST data_dir {str(path)!r} is not a directory.")
        return path
    system = Path(FASHION_MNIST_SYSTEM_DIR)
    return system if system.is_dir() else None


def load_fashion_mnist(split: str = "train", data_dir: str | os.PathLike | None = None) -> Dataset:
    """Fashion-MNIST (60,000 train / 10,000 test 28x28 grey images, 10 classes) as ``pixel_values`` ``(1, 28, 28)``.

    Args:
        split: ``"train"`` or ``"test"``.
        data_dir: folder with the four IDX files, ``.gz`` or not (``train-images-idx3-ubyte``,
            ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte``); default
            ``$RKLU_FASHION_MNIST_DIR``, then ``/usr/share/datasets/fashion-mnist`` (Debian's
            ``dataset-fashion-mnist``), then the hub dataset ``zalando-datasets/fashion_mnist``.
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    folder = resolve_fashion_mnist_dir(data_dir)
    if folder is None:
        return load_classification_dataset(FASHION_MNIST_HUB_ID, split, image_column="image", label_column="label")
    prefix = "train" if split == "train" else "t10k"
    images = _idx_file(folder, f"{prefix}-images-idx3-ubyte")
    labels = _idx_file(folder, f"{prefix}-labels-idx1-ubyte")
    if images is None or labels is None:
        raise DataUnavailableError(
            f"Fashion-MNIST {split}: {prefix}-images-idx3-ubyte[.gz] and {prefix}-labels-idx1-ubyte[.gz] are not both "
            f"in {str(folder)!r}. Point data_dir / ${FASHION_MNIST_ENV} at the folder holding the IDX files."
        )
    pixels = read_idx(images)
    targets = read_idx(labels)
    if pixels.ndim != 3 or len(pixels) != len(targets):
        raise ValueError(f"Fashion-MNIST {split}: {pixels.shape[0]} images but {len(targets)} labels.")
    return image_dataset(pixels[:, None].astype(np.float32) / 255.0, targets, FASHION_MNIST_CLASSES)


def load_digits_dataset(split: str = "train", test_fraction: float = 0.25, seed: int = 0) -> Dataset:
    """scikit-learn's bundled digits (1,797 8x8 images, 10 classes; no download) as ``pixel_values`` ``(1, 8, 8)``.

    The train/test split is a seeded stratified ``train_test_split`` (``test_fraction`` of each class in test).
    """
    from sklearn.datasets import load_digits  # scikit-learn is slow to import: only the digits data set needs it
    from sklearn.model_selection import train_test_split

    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    digits = load_digits()
    index = np.arange(len(digits.target))
    train, test = train_test_split(index, test_size=test_fraction, random_state=seed, stratify=digits.target)
    rows = np.sort(train if split == "train" else test)
    pixels = digits.images[rows][:, None].astype(np.float32) / 16.0
    return image_dataset(pixels, digits.target[rows], [str(d) for d in range(10)])


def load_cifar10(split: str = "train", data_dir: str | os.PathLike | None = None) -> Dataset:
    """CIFAR-10 from its python-pickle batches (``cifar-10-batches-py``) as ``pixel_values`` ``(3, 32, 32)``.

    Args:
        split: ``"train"`` (``data_batch_1`` ... ``data_batch_5``, those present) or ``"test"`` (``test_batch``).
        data_dir: the ``cifar-10-batches-py`` folder (default ``$RKLU_CIFAR10_DIR``); without one, the hub dataset
            ``uoft-cs/cifar10``. Class names come from ``batches.meta`` when it is there.
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    chosen = data_dir if data_dir is not None else os.environ.get(CIFAR10_ENV)
    if not chosen:
        return load_classification_dataset("uoft-cs/cifar10", split, image_column="img", label_column="label")
    folder = Path(chosen).expanduser()
    names = ["test_batch"] if split == "test" else [f"data_batch_{i}" for i in range(1, 6)]
    files = [folder / n for n in names if (folder / n).is_file()]
    if not files:
        raise DataUnavailableError(
            f"CIFAR-10 {split}: none of {names} is in {str(folder)!r}. Point data_dir / ${CIFAR10_ENV} at the "
            "extracted cifar-10-batches-py folder."
        )
    pixels, labels = [], []
    for path in files:
        with open(path, "rb") as handle:
            batch = pickle.load(handle, encoding="bytes")
        data = np.asarray(batch[b"data"], dtype=np.uint8)
        pixels.append(data.reshape(len(data), 3, 32, 32))
        labels.extend(batch[b"labels"])
    class_names = None
    if (folder / "batches.meta").is_file():
        with open(folder / "batches.meta", "rb") as handle:
            meta = pickle.load(handle, encoding="bytes")
        class_names = [n.decode() if isinstance(n, bytes) else n for n in meta[b"label_names"]]
    return image_dataset(
        np.concatenate(pixels).astype(np.float32) / 255.0, labels, class_names, num_classes=None if class_names else 10
    )


def image_classification_dataset(
    dataset: Dataset, image_column: str = "image", label_column: str = "label", mode: str | None = None
) -> Dataset:
    """Turn a `datasets` image classification set (PIL images, or arrays) into ``pixel_values`` + ``labels``.

    Args:
        dataset: rows with an image column and an integer label column.
        image_column, label_column: their names.
        mode: PIL mode to convert to (``"L"`` grey, ``"RGB"``); default: the first image's mode. All images must
            have the same size.
    """
    missing = {image_column, label_column} - set(dataset.column_names)
    if missing:
        raise ValueError(f"Dataset lacks column(s) {sorted(missing)}; it has {dataset.column_names}.")
    arrays = []
    for image in dataset[image_column]:
        if hasattr(image, "convert"):  # a PIL image
            mode = mode or image.mode
            array = np.asarray(image.convert(mode), dtype=np.float32) / 255.0
        else:
            array = np.asarray(image, dtype=np.float32)
        arrays.append(array[None] if array.ndim == 2 else np.moveaxis(array, -1, 0))
    shapes = {a.shape for a in arrays}
    if len(shapes) != 1:
        raise ValueError(f"Images of different sizes {sorted(shapes)[:3]}...: resize them to one size first.")
    feature = dataset.features.get(label_column)
    names = list(feature.names) if isinstance(feature, ClassLabel) else None
    return image_dataset(np.stack(arrays), dataset[label_column], names)


def load_classification_dataset(
    name_or_path: str,
    split: str = "train",
    image_column: str | None = None,
    text_column: str | None = None,
    label_column: str = "label",
    **load_kwargs,
) -> Dataset:
    """Any image or text classification set that `datasets.load_dataset` reads: a hub id, a local folder (e.g. an
    ``imagefolder``), or a local ``.csv`` / ``.json`` / ``.jsonl`` / ``.parquet`` file.

    Images become ``pixel_values`` (:func:`image_classification_dataset`); text keeps a ``text`` column (tokenize it
    with :func:`tokenize_texts`). The label column is renamed ``labels``.

    Args:
        name_or_path: hub id, folder or data file.
        split: the split to load.
        image_column / text_column: the input column (give one; default: ``image``/``img`` or ``text``/``sentence``
            when present).
        label_column: the integer label column.
        **load_kwargs: passed to `datasets.load_dataset` (``name=``, ``data_dir=``, ...).
    """
    path = Path(name_or_path).expanduser()
    suffix = path.suffix.lstrip(".")
    problem = None if path.exists() else hub_problem()
    if problem is not None and not offline_variables():
        raise DataUnavailableError(
            f"The classification set {name_or_path!r} is not a local file or folder and the Hugging Face hub cannot "
            f"be used ({problem}). Pass --data_dir <local folder or .csv/.json file>, {hub_advice(problem)}."
        )
    try:
        if path.is_file():
            builder = {"jsonl": "json"}.get(suffix, suffix)
            dataset = load_dataset(builder, data_files=str(path), split="train", **load_kwargs)
        else:
            dataset = load_dataset(str(path) if path.is_dir() else name_or_path, split=split, **load_kwargs)
    except Exception as exc:  # offline, missing repo, unknown format: the user gets one message with the ways out
        raise DataUnavailableError(
            f"Could not load the classification set {name_or_path!r} (split {split!r}): {type(exc).__name__}: "
            f"{str(exc)[:200]}. Pass a local folder or a .csv/.json file, {hub_advice(problem or '')}."
        ) from exc
    columns = dataset.column_names
    if label_column not in columns:
        raise ValueError(f"{name_or_path}: no label column {label_column!r}; columns are {columns}.")
    if image_column is None and text_column is None:
        image_column = next((c for c in ("image", "img") if c in columns), None)
        text_column = None if image_column else next((c for c in ("text", "sentence") if c in columns), None)
    if image_column is not None:
        return image_classification_dataset(dataset, image_column, label_column)
    if text_column is None or text_column not in columns:
        raise ValueError(f"{name_or_path}: name the input with image_column= or text_column=; columns are {columns}.")
    dataset = dataset.select_columns([text_column, label_column])
    if text_column != "text":
        dataset = dataset.rename_column(text_column, "text")
    return dataset.rename_column(label_column, "labels") if label_column != "labels" else dataset


def tokenize_texts(dataset: Dataset, tokenizer, max_length: int = 128) -> Dataset:
    """Add ``input_ids`` (truncated to ``max_length``, special tokens included) from the ``text`` column."""
    if "text" not in dataset.column_names:
        raise ValueError(f"tokenize_texts needs a 'text' column; this dataset has {dataset.column_names}.")

    def encode(rows):
        return {"input_ids": tokenizer(rows["text"], truncation=True, max_length=max_length)["input_ids"]}

    return dataset.map(encode, batched=True, desc="Tokenizing texts")


def resolve_books_dir(books_dir: str | os.PathLike | None = None) -> Path:
    chosen = books_dir if books_dir is not None else os.environ.get(BOOKS_ENV)
    if not chosen:
        raise DataUnavailableError(
            f"No folder of Austen novels: pass books_dir=<folder with emma.txt, persuasion.txt, ...> or set "
            f"${BOOKS_ENV}."
        )
    path = Path(chosen).expanduser()
    missing = [f"{stem}.txt" for stem in AUSTEN_NOVELS if not (path / f"{stem}.txt").is_file()]
    if missing:
        raise DataUnavailableError(f"The books folder {str(path)!r} lacks {missing}.")
    return path


def load_austen_passages(
    split: str = "train",
    books_dir: str | os.PathLike | None = None,
    words_per_passage: int = 64,
    test_fraction: float = 0.2,
    seed: int = 0,
) -> Dataset:
    """Passages of the six Jane Austen novels, labelled with the novel they come from (six classes).

    Each novel's text (chapter headings and the title lines dropped, whitespace collapsed) is cut into consecutive
    passages of ``words_per_passage`` words (a shorter tail is dropped); a seeded permutation per novel sends
    ``test_fraction`` of its passages to ``"test"``.

    Args:
        split: ``"train"`` or ``"test"``.
        books_dir: folder with ``emma.txt``, ``mansfield_park.txt``, ``northanger_abbey.txt``, ``persuasion.txt``,
            ``pride_and_prejudice.txt``, ``sense_and_sensibility.txt`` (default ``$RKLU_BOOKS_DIR``).
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    if words_per_passage < 1:
        raise ValueError(f"words_per_passage must be >= 1, got {words_per_passage}")
    folder = resolve_books_dir(books_dir)
    heading = re.compile(r"^\s*(CHAPTER|VOLUME|Chapter)\b.*$|^\s*[IVXLC]+\.?\s*$")
    texts, labels = [], []
    for label, stem in enumerate(AUSTEN_NOVELS):
        lines = (folder / f"{stem}.txt").read_text(encoding="utf-8").splitlines()
        words = " ".join(line for line in lines[3:] if not heading.match(line)).split()
        passages = [
            " ".join(words[i : i + words_per_passage])
            for i in range(0, len(words) - words_per_passage + 1, words_per_passage)
        ]
        order = np.random.default_rng([seed, label]).permutation(len(passages))
        n_test = int(round(test_fraction * len(passages)))
        chosen = np.sort(order[:n_test] if split == "test" else order[n_test:])
        texts += [passages[i] for i in chosen]
        labels += [label] * len(chosen)
    features = Features({"text": Value("string"), "labels": ClassLabel(names=list(AUSTEN_NOVELS.values()))})
    return Dataset.from_dict({"text": texts, "labels": labels}, features=features)


# --------------------------------------------------------------------------------------------------------------------
# Forget / retain
# --------------------------------------------------------------------------------------------------------------------


def forget_indices(labels, forget_classes=None, num_forget_samples: int | None = None, seed: int = 0) -> np.ndarray:
    """Indices of the forget set: every sample of ``forget_classes``, or ``num_forget_samples`` random samples.

    Raises:
        ValueError: both or neither given; a class without samples; more samples asked than there are.
    """
    labels = np.asarray(labels)
    if (forget_classes is None) == (num_forget_samples is None):
        raise ValueError("Give exactly one of forget_classes (class unlearning) and num_forget_samples (samples).")
    if forget_classes is not None:
        classes = sorted({int(c) for c in forget_classes})
        if not classes:
            raise ValueError("forget_classes is empty.")
        empty = [c for c in classes if not (labels == c).any()]
        if empty:
            present = sorted(set(labels.tolist()))
            raise ValueError(f"Forget class(es) {empty} have no samples (labels present: {present}).")
        return np.flatnonzero(np.isin(labels, classes))
    if not 0 < num_forget_samples <= len(labels):
        raise ValueError(f"num_forget_samples must be in [1, {len(labels)}], got {num_forget_samples}.")
    return np.sort(np.random.default_rng(seed).choice(len(labels), size=num_forget_samples, replace=False))


def split_forget_retain(dataset: Dataset, forget_classes=None, num_forget_samples: int | None = None, seed: int = 0):
    """``(forget, retain, forget_index)``: the two parts of a training set and the forget rows' indices in it."""
    labels = dataset.select_columns(["labels"]).with_format("numpy")[:]["labels"]
    index = forget_indices(labels, forget_classes, num_forget_samples, seed)
    keep = np.setdiff1d(np.arange(len(dataset)), index)
    return take_rows(dataset, index), take_rows(dataset, keep), index


class ClassificationUnlearnDataset(torch.utils.data.Dataset):
    """Forget samples, each paired with a retain sample, for classifier unlearning with `UnlearnTrainer`.

    Item ``i`` is ``{"forget": ex, "retain": ex}`` (``retain`` only with a retain set), each ``ex`` holding the input
    (``pixel_values`` or ``input_ids``), ``labels``, ``index`` (its row) and, for forget samples, ``random_labels``:
    a fixed random label different from the true one (seeded; the ``random_label`` method trains towards it). The
    retain partner of forget item ``i`` changes every epoch (:meth:`set_epoch`, a seeded permutation). Methods that
    train on the retain set itself (``finetune``, ``retrain``) step over :meth:`over_retain` instead.

    Args:
        forget: the forget set (a classification `datasets.Dataset`, see the module docstring).
        retain: the retain set, or ``None`` (retain-free unlearning).
        num_classes: ``K``; default: from the ``labels`` ``ClassLabel``.
        forget_classes: the classes being forgotten (class unlearning), or ``None`` (a set of samples). With
            classes, every forget sample must belong to one of them, each must have samples, and the retain set
            must hold none of them.
        seed: seeds the random labels and the retain pairing.

    Raises:
        ValueError: fewer than 2 classes, labels outside ``[0, K)``, an empty forget set, inputs of different kinds,
            or a forget set that mixes classes when classes are being forgotten.
    """

    def __init__(
        self,
        forget: Dataset,
        retain: Dataset | None = None,
        num_classes: int | None = None,
        forget_classes=None,
        seed: int = 0,
    ):
        if len(forget) == 0:
            raise ValueError("The forget set is empty: there is nothing to unlearn.")
        if retain is not None and len(retain) == 0:
            raise ValueError("The retain set is empty; pass retain=None for retain-free unlearning.")
        num_classes = num_classes if num_classes is not None else num_classes_of(forget)
        if num_classes is None:
            raise ValueError("Pass num_classes=K (the labels column is not a ClassLabel that records it).")
        if num_classes < 2:
            raise ValueError(f"Unlearning a class needs at least 2 classes (K = {num_classes}).")
        self.num_classes = int(num_classes)
        self.forget = to_arrays(forget)
        self.retain = None if retain is None else to_arrays(retain)
        if self.retain is not None and self.retain["kind"] != self.forget["kind"]:
            raise ValueError(f"forget holds {self.forget['kind']} but retain holds {self.retain['kind']}.")
        for name, part in (("forget", self.forget), ("retain", self.retain)):
            if part is not None:
                check_labels(part["labels"], self.num_classes, f"{name} set")
        self.forget_classes = None if forget_classes is None else sorted({int(c) for c in forget_classes})
        if self.forget_classes is not None:
            check_forget_classes(
                self.forget["labels"],
                self.forget_classes,
                self.num_classes,
                None if self.retain is None else self.retain["labels"],
            )
        offsets = np.random.default_rng([seed, 1]).integers(1, self.num_classes, size=len(self.forget["labels"]))
        self.random_labels = (self.forget["labels"] + offsets) % self.num_classes
        self.seed = seed
        self.steps = "forget"
        self.set_epoch(0)

    @property
    def kind(self) -> str:
        return self.forget["kind"]

    def fingerprint(self) -> dict:
        """What identifies the training data (for the run record and model cards): sample counts, classes and SHA-256
        digests of the inputs and labels (never the data itself), and the pairing seed."""

        def digest(part):
            if part is None:
                return None
            h = hashlib.sha256(part["kind"].encode())
            for x in part["input"] if isinstance(part["input"], list) else [part["input"]]:
                h.update(x.numpy().tobytes())
            h.update(np.asarray(part["labels"], dtype=np.int64).tobytes())
            return h.hexdigest()

        return {
            "forget_items": len(self.forget["labels"]),
            "forget_sha256": digest(self.forget),
            "retain_items": None if self.retain is None else len(self.retain["labels"]),
            "retain_sha256": digest(self.retain),
            "num_classes": self.num_classes,
            "forget_classes": self.forget_classes,
            "pairing_seed": self.seed,
            "steps_over": self.steps,
        }

    def over_retain(self) -> ClassificationUnlearnDataset:
        """A view of this dataset whose items step over the retain set (``{"retain": ex}``), for the references that
        train on it (``finetune``, ``retrain``)."""
        if self.retain is None:
            raise ValueError("This dataset has no retain set.")
        view = object.__new__(type(self))
        view.__dict__.update(self.__dict__)
        view.steps = "retain"
        return view

    def set_epoch(self, epoch: int) -> None:
        """Re-draw the retain partners for ``epoch``."""
        self.epoch = epoch
        if self.retain is not None:
            m = len(self.retain["labels"])
            order = np.random.default_rng([self.seed, epoch]).permutation(m)
            self._retain_index = order[np.arange(len(self.forget["labels"])) % m]

    def __len__(self) -> int:
        return len((self.retain if self.steps == "retain" else self.forget)["labels"])

    @staticmethod
    def _example(part: dict, i: int) -> dict:
        return {part["kind"]: part["input"][i], "labels": int(part["labels"][i]), "index": i}

    def __getitem__(self, i: int) -> dict:
        if self.steps == "retain":
            return {"retain": self._example(self.retain, i)}
        item = {"forget": {**self._example(self.forget, i), "random_labels": int(self.random_labels[i])}}
        if self.retain is not None:
            item["retain"] = self._example(self.retain, int(self._retain_index[i]))
        return item


def check_labels(labels, num_classes: int, where: str = "labels") -> None:
    """Raise unless every label is an integer class id in ``[0, num_classes)``."""
    labels = np.asarray(labels)
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        bad = sorted({int(v) for v in labels[(labels < 0) | (labels >= num_classes)]})[:5]
        raise ValueError(
            f"{where}: label(s) {bad} out of range for K = {num_classes} classes (valid: 0..{num_classes - 1})."
        )


def check_forget_classes(forget_labels, forget_classes, num_classes: int, retain_labels=None) -> None:
    """Raise unless the forget set holds exactly the forget classes (each with samples) and the retain set none."""
    forget_labels = np.asarray(forget_labels)
    out_of_range = [c for c in forget_classes if not 0 <= c < num_classes]
    if out_of_range:
        raise ValueError(f"Forget class(es) {out_of_range} out of range for K = {num_classes} classes.")
    empty = [c for c in forget_classes if not (forget_labels == c).any()]
    if empty:
        raise ValueError(f"Forget class(es) {empty} have no samples in the forget set.")
    others = sorted({int(v) for v in forget_labels} - set(forget_classes))
    if others:
        raise ValueError(
            f"The forget set mixes classes: it holds samples of class(es) {others}, which are not forget classes "
            f"{forget_classes}. Forget whole classes with a forget set of those classes only, or pass "
            "forget_classes=None to forget a set of samples."
        )
    if retain_labels is not None:
        leaked = sorted(set(np.asarray(retain_labels).tolist()) & set(forget_classes))
        if leaked:
            raise ValueError(f"The retain set holds samples of forget class(es) {leaked}; remove them from it.")


class ClassificationRows(torch.utils.data.Dataset):
    """The rows of a classification dataset as ``{input: tensor, "labels": int}`` items (read into memory once), for
    ordinary training with `transformers.Trainer` and :class:`ClassificationCollator`."""

    def __init__(self, dataset: Dataset):
        self.arrays = to_arrays(dataset)

    def __len__(self) -> int:
        return len(self.arrays["labels"])

    def __getitem__(self, i: int) -> dict:
        return {self.arrays["kind"]: self.arrays["input"][i], "labels": int(self.arrays["labels"][i])}


class ClassificationCollator:
    """Batches :class:`ClassificationUnlearnDataset` items group by group: ``{"forget": batch, "retain": batch}``,
    each ``batch`` holding the model inputs (:func:`collate_rows`), ``labels``, ``index`` and (forget)
    ``random_labels`` as tensors. Flat items (:class:`ClassificationRows`) give one such batch."""

    def __init__(self, pad_token_id: int = 0):
        self.pad_token_id = pad_token_id

    def _collate(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        kind = next(k for k in INPUT_COLUMNS if k in examples[0])
        batch = collate_rows(kind, [e[kind] for e in examples], self.pad_token_id)
        for key in examples[0]:
            if key != kind:
                batch[key] = torch.tensor([e[key] for e in examples], dtype=torch.long)
        return batch

    def __call__(self, items: list[dict]) -> dict:
        if "labels" in items[0]:
            return self._collate(items)
        return {group: self._collate([item[group] for item in items]) for group in items[0]}


def build_classification_unlearning_dataset(
    forget: Dataset,
    retain: Dataset | None = None,
    num_classes: int | None = None,
    forget_classes=None,
    seed: int = 0,
) -> ClassificationUnlearnDataset:
    """The `UnlearnTrainer` dataset of a classifier unlearning run (see :class:`ClassificationUnlearnDataset`)."""
    return ClassificationUnlearnDataset(forget, retain, num_classes, forget_classes, seed)
