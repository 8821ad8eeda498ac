"""Classifier unlearning end to end: train the original and the retrain oracle, unlearn with every method, evaluate.

Run by ``recipes/classifier_forget_class.py``. Read top to bottom: arguments -> data (fails early) -> the original
(trained once, reused) -> the oracle (``retrain``: re-initialised, trained on the retain set only; a reference that
USES RETAIN DATA) -> each method from a copy of the original -> evaluation -> ``classifier_results.json``.

    # Fashion-MNIST, forget class 0 (T-shirt/top), small CNN, the retain-free methods and the references
    python recipes/classifier_forget_class.py --dataset fashion_mnist --data_dir data/fashion-mnist \\
        --model cnn --forget_classes 0 --output_dir runs/fmnist_class0
    # two classes, a transformers ResNet; 500 random samples; the Austen novels with a small BERT
    python recipes/classifier_forget_class.py --model resnet --forget_classes 0,6 --output_dir runs/fm_resnet ...
    python recipes/classifier_forget_class.py --forget_samples 500 --output_dir runs/fm_500 ...
    python recipes/classifier_forget_class.py --dataset austen --data_dir data/books --model bert \\
        --forget_classes 0 --output_dir runs/austen_emma

Output folder: ``original/`` (reused when complete; or ``--original <dir>``), ``retrain/``, one folder per method
(the unlearned model and its ``classifier_eval.json``), and ``classifier_results.json`` with every row side by side
and each method's wall time as a fraction of the oracle's training time. A finished method is not run again.
Flags: ClassifierArguments below and every field of ClassifierUnlearnConfig (so of rklu_llm.UnlearnConfig and
transformers.TrainingArguments); ``--config run.yaml`` works too.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import shutil
import time
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from transformers import (
    AutoConfig,
    AutoModelForImageClassification,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    TrainingArguments,
)

from rklu_llm import METHODS, UnlearnConfig, UnlearnTrainer
from rklu_llm.classifiers import SmallCNN, small_resnet, small_text_classifier, train_text_tokenizer
from rklu_llm.cli import parse_arguments
from rklu_llm.data.classification import (
    ClassificationCollator,
    ClassificationRows,
    build_classification_unlearning_dataset,
    class_names_of,
    forget_indices,
    group_labels,
    input_column,
    load_austen_passages,
    load_cifar10,
    load_classification_dataset,
    load_digits_dataset,
    load_fashion_mnist,
    num_classes_of,
    parse_class_groups,
    take_rows,
    to_arrays,
    tokenize_texts,
)
from rklu_llm.eval.classification import evaluate_classifier
from rklu_llm.io import write_json_atomic
from rklu_llm.models import publish_dir
from rklu_llm.run_state import GuardedTrainer

#: the oracle: the method that re-initialises the weights and trains on the retain set (retrain from scratch)
ORACLE = next(m for m, spec in METHODS.items() if spec.reinitialize)
CLASSIFIER_METHODS = tuple(m for m, spec in METHODS.items() if spec.batch != "lm" and m != ORACLE)
DEFAULT_METHODS = "mask,redistribute,ga,random_label,boundary_shrink,jit"

#: The protocol (docs/classifiers.md): each method's unlearning settings, applied unless --unlearn_settings flags.
#: mask: DELETE's published recipe (SGD, momentum 0.9, lr 1e-4, 20 epochs, batch 128); redistribute: the RKLU paper
#: (Adam, lr 1e-3, batch 64, 5 epochs). The baselines get redistribute's budget (Adam, batch 64, 5 epochs) and the
#: learning rate that one rule picked from {1e-5, 1e-4, 1e-3} on a tuning scenario (Fashion-MNIST class 0, seed 0:
#: the highest H-Mean; benchmarks/results/classifier_runs/tune_*.json). ``finetune`` (retain data) as a baseline.
ADAM = {"optim": "adamw_torch", "optim_args": None, "per_device_train_batch_size": 64}
PROTOCOL = {
    "mask": {
        "optim": "sgd",
        "optim_args": "momentum=0.9",
        "per_device_train_batch_size": 128,
        "learning_rate": 1e-4,
        "num_train_epochs": 20.0,
    },
    "redistribute": {**ADAM, "learning_rate": 1e-3, "num_train_epochs": 5.0},
    "ga": {**ADAM, "learning_rate": 1e-5, "num_train_epochs": 5.0},
    "gd": {**ADAM, "learning_rate": 1e-5, "num_train_epochs": 5.0},
    "random_label": {**ADAM, "learning_rate": 1e-4, "num_train_epochs": 5.0},
    "boundary_shrink": {**ADAM, "learning_rate": 1e-5, "num_train_epochs": 5.0},
    "jit": {**ADAM, "learning_rate": 1e-5, "num_train_epochs": 5.0},
    "finetune": {**ADAM, "learning_rate": 1e-3, "num_train_epochs": 1.0},
}
#: the original and the oracle (the papers: Adam, lr 1e-3, batch 64, about 10 epochs)
TRAIN_PROTOCOL = {"train_epochs": 10.0, "train_learning_rate": 1e-3, "train_batch_size": 64}
NAMED_SETS = ("fashion_mnist", "digits", "cifar10", "austen")
MODELS = ("cnn", "resnet", "bert")
RESULTS_FILE = "classifier_results.json"
EVAL_FILE = "classifier_eval.json"
INFO_FILE = "classifier_model.json"


@dataclass
class ClassifierArguments:
    dataset: str = field(
        default="fashion_mnist",
        metadata={"help": f"One of {NAMED_SETS}, or a `datasets` hub id, local folder, or .csv/.json file."},
    )
    data_dir: str | None = field(
        default=None,
        metadata={
            "help": "Local folder of the named set (Fashion-MNIST IDX files, cifar-10-batches-py, the Austen "
            "books); default: its environment variable, then the hub."
        },
    )
    test_split: str = field(default="test", metadata={"help": "Held-out split of a `datasets` set."})
    image_column: str | None = field(default=None, metadata={"help": "Image column of a `datasets` set."})
    text_column: str | None = field(default=None, metadata={"help": "Text column of a `datasets` set."})
    label_column: str = field(default="label", metadata={"help": "Label column of a `datasets` set."})
    model: str = field(
        default="cnn",
        metadata={
            "help": "cnn (small CNN), resnet (a small transformers ResNet), bert (a small BERT for text), or "
            "a local transformers classifier folder used as the original."
        },
    )
    forget_classes: str | None = field(
        default=None, metadata={"help": "Comma-separated class ids to forget (class unlearning), e.g. 0 or 0,6."}
    )
    forget_samples: int | None = field(
        default=None, metadata={"help": "Forget this many random training samples instead (sample unlearning)."}
    )
    class_groups: str | None = field(
        default=None,
        metadata={
            "help": "Merge classes into groups before anything trains: '0,6|2,4|1,3|5,7,9|8' gives 5 classes "
            "(--forget_classes then names groups). For the redistribute-vs-mask regime study."
        },
    )
    unlearn_settings: str = field(
        default="protocol",
        metadata={
            "help": "protocol: each method's own optimiser, learning rate, epochs and batch size from the protocol "
            "table (PROTOCOL; docs/classifiers.md); flags: every method uses --learning_rate, --num_train_epochs, "
            "--per_device_train_batch_size and --optim as given. Either way method@lr (or method@lr@epochs) "
            "overrides one method (method@lr@epochs also its epochs)."
        },
    )
    methods: str = field(
        default=DEFAULT_METHODS,
        metadata={
            "help": f"Comma-separated methods; 'all' = {', '.join(CLASSIFIER_METHODS)}; method@1e-4 runs a "
            "method at its own learning rate, method@1e-4@2 also for its own number of epochs."
        },
    )
    original: str | None = field(
        default=None,
        metadata={
            "help": "Folder of a trained original (a previous run's original/); default: <output_dir>/original, "
            "trained when missing."
        },
    )
    oracle: bool = field(default=True, metadata={"help": "Train the retrain oracle (retain data) for comparison."})
    train_epochs: float = field(
        default=TRAIN_PROTOCOL["train_epochs"], metadata={"help": "Epochs of the original and of the oracle."}
    )
    train_learning_rate: float = field(
        default=TRAIN_PROTOCOL["train_learning_rate"],
        metadata={"help": "Adam learning rate (linear decay) of original and oracle."},
    )
    train_batch_size: int = field(
        default=TRAIN_PROTOCOL["train_batch_size"], metadata={"help": "Batch size of original and oracle."}
    )
    max_train_samples: int | None = field(default=None, metadata={"help": "Use a seeded random subset of train."})
    max_test_samples: int | None = field(default=None, metadata={"help": "Use a seeded random subset of test."})
    words_per_passage: int = field(default=48, metadata={"help": "Austen: words per passage."})
    text_max_length: int = field(default=64, metadata={"help": "Text: tokens per passage (truncation)."})
    vocab_size: int = field(default=8000, metadata={"help": "Text: WordPiece vocabulary trained on the train texts."})
    text_hidden_size: int = field(default=32, metadata={"help": "Text: hidden size of the small BERT."})
    text_layers: int = field(default=1, metadata={"help": "Text: layers of the small BERT."})
    eval_batch_size: int = field(default=512, metadata={"help": "Evaluation batch size."})
    mia_max_samples: int | None = field(
        default=2000, metadata={"help": "Cap on each side of the membership attacks' training sets (SVC cost)."}
    )
    eval_retain_samples: int | None = field(
        default=None,
        metadata={
            "help": "Score Acc_r (and the attacks' retain-train side) on this many random retain "
            "samples instead of all (every forget sample is scored)."
        },
    )
    num_threads: int | None = field(default=None, metadata={"help": "torch.set_num_threads (CPU)."})


@dataclass
class ClassifierUnlearnConfig(UnlearnConfig):
    """`UnlearnConfig` with the classifier papers' settings as defaults: Adam (no weight decay) at a constant
    learning rate 1e-3, batch 64, 5 epochs (the RKLU paper), no warm-up, no checkpoints (a finished method is skipped
    instead). Under ``--unlearn_settings protocol`` (the default) each method's optimiser, learning rate, epochs and
    batch size come from ``PROTOCOL`` instead; these fields then must keep their defaults."""

    method: str = field(default="redistribute", metadata={"help": "Set per run from --methods."})
    learning_rate: float = field(
        default=1e-3, metadata={"help": "Unlearning learning rate (--unlearn_settings flags)."}
    )
    weight_decay: float = field(default=0.0, metadata={"help": "Weight decay (0: Adam)."})
    seed: int = field(
        default=0, metadata={"help": "Seed of the original's and oracle's initialisation and of every data order."}
    )
    num_train_epochs: float = field(default=5.0, metadata={"help": "Unlearning epochs (--unlearn_settings flags)."})
    per_device_train_batch_size: int = field(
        default=64, metadata={"help": "Unlearning batch size (--unlearn_settings flags)."}
    )
    warmup_epochs: float | None = field(default=None, metadata={"help": "No warm-up."})
    lr_scheduler_type: str = field(default="constant", metadata={"help": "Constant learning rate."})
    save_strategy: str = field(default="no", metadata={"help": "No checkpoints."})
    logging_steps: float = field(default=50, metadata={"help": "Log every N steps."})


# --------------------------------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------------------------------


@lru_cache(maxsize=4)
def _raw_split(dataset: str, data_dir: str | None, split: str, words: int, image_column, text_column, label_column):
    if dataset == "fashion_mnist":
        return load_fashion_mnist(split, data_dir)
    if dataset == "digits":
        return load_digits_dataset(split)
    if dataset == "cifar10":
        return load_cifar10(split, data_dir)
    if dataset == "austen":
        return load_austen_passages(split, data_dir, words_per_passage=words)
    return load_classification_dataset(dataset, split, image_column, text_column, label_column)


def _subset(data, limit: int | None, seed: int):
    if limit is None or limit >= len(data):
        return data
    order = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))[:limit]
    return take_rows(data, sorted(order.tolist()))


def load_data(script: ClassifierArguments, seed: int):
    """``(train, test)`` datasets of the run (raw: text not yet tokenized)."""
    key = (
        script.dataset,
        script.data_dir,
        script.words_per_passage,
        script.image_column,
        script.text_column,
        script.label_column,
    )
    train = _raw_split(script.dataset, script.data_dir, "train", *key[2:])
    test = _raw_split(
        script.dataset, script.data_dir, script.test_split if script.dataset not in NAMED_SETS else "test", *key[2:]
    )
    if script.class_groups:
        groups = parse_class_groups(script.class_groups, num_classes_of(train) or 0)
        train, test = group_labels(train, groups), group_labels(test, groups)
    return _subset(train, script.max_train_samples, seed), _subset(test, script.max_test_samples, seed + 1)


# --------------------------------------------------------------------------------------------------------------------
# Models: build, save, load
# --------------------------------------------------------------------------------------------------------------------


def build_model(script, kind: str, num_classes: int, class_names, sample_shape, tokenizer=None):
    if kind == "cnn":
        return SmallCNN(num_classes, sample_shape[0], sample_shape[-1])
    if kind == "resnet":
        return small_resnet(num_classes, sample_shape[0], class_names)
    return small_text_classifier(
        tokenizer,
        num_classes,
        class_names,
        hidden=script.text_hidden_size,
        layers=script.text_layers,
        max_length=script.text_max_length,
    )


def save_classifier(model, tokenizer, folder: Path, info: dict) -> None:
    """Save a classifier into ``folder`` through a staging folder (transformers: ``save_pretrained``; the small CNN:
    ``model.safetensors`` + its constructor arguments in ``classifier_model.json``)."""
    staging = folder.parent / f".{folder.name}.staging"
    staging.mkdir(parents=True, exist_ok=True)
    if hasattr(model, "save_pretrained"):
        model.save_pretrained(staging)
    else:
        save_file(model.state_dict(), staging / "model.safetensors")
    if tokenizer is not None:
        tokenizer.save_pretrained(staging)
    write_json_atomic(staging / INFO_FILE, info)
    publish_dir(staging, folder)


def load_classifier(folder: Path):
    """``(model, tokenizer or None, info)`` saved by :func:`save_classifier`, or a transformers classifier folder."""
    info = json.loads((folder / INFO_FILE).read_text()) if (folder / INFO_FILE).is_file() else {}
    tokenizer = None
    if (folder / "tokenizer.json").is_file():
        tokenizer = AutoTokenizer.from_pretrained(folder)
    if info.get("kind") == "cnn":
        model = SmallCNN(*info["cnn_args"])
        model.load_state_dict(load_file(folder / "model.safetensors"))
        return model, tokenizer, info
    config = AutoConfig.from_pretrained(folder)
    auto = AutoModelForImageClassification
    if config.architectures and any("SequenceClassification" in a for a in config.architectures):
        auto = AutoModelForSequenceClassification
    return auto.from_pretrained(folder), tokenizer, info


def _is_complete(folder: Path) -> bool:
    return (folder / INFO_FILE).is_file()


def _cross_entropy(outputs, labels, num_items_in_batch=None):
    return F.cross_entropy(getattr(outputs, "logits", outputs).float(), labels)


def train_original(script, config, train, kind, num_classes, names, tokenizer, folder: Path) -> dict:
    """Train the original on the whole training set with `transformers.Trainer` (Adam, cross-entropy) and save it."""
    first = to_arrays(take_rows(train, [0]))
    sample_shape = tuple(first["input"].shape[1:]) if first["kind"] == "pixel_values" else None
    torch.manual_seed(config.seed)
    model = build_model(script, kind, num_classes, names, sample_shape, tokenizer)
    args = TrainingArguments(
        output_dir=str(folder.parent / f".{folder.name}.run"),
        learning_rate=script.train_learning_rate,
        num_train_epochs=script.train_epochs,
        per_device_train_batch_size=script.train_batch_size,
        weight_decay=0.0,
        save_strategy="no",
        report_to="none",
        logging_steps=100,
        seed=config.seed,
        use_cpu=config.use_cpu,
        disable_tqdm=config.disable_tqdm,
        remove_unused_columns=False,
    )
    trainer = GuardedTrainer(  # stops at the first non-finite loss or gradient norm
        model=model,
        args=args,
        train_dataset=ClassificationRows(train),
        data_collator=ClassificationCollator(_pad_id(tokenizer)),
        compute_loss_func=_cross_entropy,
    )
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    info = {
        "kind": kind,
        "train_seconds": seconds,
        "epochs": script.train_epochs,
        "learning_rate": script.train_learning_rate,
        "train_samples": len(train),
    }
    if kind == "cnn":
        info["cnn_args"] = [num_classes, sample_shape[0], sample_shape[-1]]
    save_classifier(trainer.model, tokenizer, folder, info)
    shutil.rmtree(args.output_dir, ignore_errors=True)  # the Trainer's scratch folder (no checkpoints were asked)
    return info


def _pad_id(tokenizer) -> int:
    return 0 if tokenizer is None else int(tokenizer.pad_token_id)


# --------------------------------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------------------------------


def parse_methods(text: str) -> list[str]:
    """Method names, each optionally with its own learning rate (``redistribute@1e-4``) and epochs
    (``redistribute@1e-4@2``)."""
    methods = []
    for name in (m.strip() for m in text.split(",") if m.strip()):
        methods += list(CLASSIFIER_METHODS) if name == "all" else [name]
    unknown = [m for m in methods if m.partition("@")[0] not in CLASSIFIER_METHODS]
    if unknown:
        raise ValueError(
            f"Unknown classifier method(s) {unknown}; choose from {list(CLASSIFIER_METHODS)} "
            "(the retrain oracle runs with --oracle)."
        )
    for method in methods:
        if "@" in method:
            try:
                method_overrides(method)
            except ValueError:
                raise ValueError(
                    f"{method!r}: write a method's own learning rate as method@1e-4, and its epochs as method@1e-4@2."
                ) from None
    return methods


def method_overrides(method: str) -> dict:
    """``"mask@1e-3@2"`` -> ``{"learning_rate": 1e-3, "num_train_epochs": 2.0}``; ``"mask"`` -> ``{}``."""
    _, at, rest = method.partition("@")
    if not at:
        return {}
    lr, slash, epochs = rest.partition("@")
    out = {"learning_rate": float(lr)}
    if slash:
        out["num_train_epochs"] = float(epochs)
    if out["learning_rate"] <= 0 or out.get("num_train_epochs", 1.0) <= 0:
        raise ValueError(f"{method!r}: learning rate and epochs must be > 0.")
    return out


#: the unlearning fields that ``--unlearn_settings protocol`` sets per method (and that must then keep their defaults)
PROTOCOL_FIELDS = tuple(dict.fromkeys(name for settings in PROTOCOL.values() for name in settings))


def check_unlearn_settings(script, config) -> None:
    """Under ``--unlearn_settings protocol`` the protocol sets each method's optimiser, lr, epochs and batch size, so
    a value given for one of those fields would be silently ignored: refuse it with the two ways to get it."""
    if script.unlearn_settings not in ("protocol", "flags"):
        raise ValueError(f"--unlearn_settings must be 'protocol' or 'flags', got {script.unlearn_settings!r}.")
    if script.unlearn_settings == "flags":
        return
    defaults = type(config)(output_dir=config.output_dir)
    changed = [f for f in PROTOCOL_FIELDS if getattr(config, f) != getattr(defaults, f)]
    if changed:
        raise ValueError(
            f"--{', --'.join(changed)} would be ignored: under --unlearn_settings protocol (the default) each "
            "method's optimiser, learning rate, epochs and batch size come from the protocol. Pass "
            "--unlearn_settings flags to use your values for every method, or method@lr (method@lr@epochs) for one."
        )


ARGUMENTS = (ClassifierArguments, ClassifierUnlearnConfig)


def main(argv: list[str] | None = None) -> dict:
    script, config = parse_arguments(ARGUMENTS, argv)
    if script.num_threads:
        torch.set_num_threads(script.num_threads)
    methods, classes, known_model = _check_script(script, config)
    out = Path(config.output_dir)

    # Data first: a missing dataset, an empty forget class or a bad label fails here, before any training.
    train, test = load_data(script, config.seed)
    num_classes, names, is_text = _check_data(train, script, known_model)
    labels = train.select_columns(["labels"]).with_format("numpy")[:]["labels"]
    forget_index = forget_indices(labels, classes, script.forget_samples, config.seed)

    original_dir = Path(script.original) if script.original else out / "original"
    tokenizer = None
    if _is_complete(original_dir) or not known_model:
        original, tokenizer, original_info = load_classifier(original_dir if known_model else Path(script.model))
    else:
        if is_text:
            tokenizer = train_text_tokenizer(train["text"][:], script.vocab_size)
        original_info = train_original(
            script,
            config,
            _tokenized(train, tokenizer, script),
            script.model,
            num_classes,
            names,
            tokenizer,
            original_dir,
        )
        original, tokenizer, _ = load_classifier(original_dir)
    train, test = _tokenized(train, tokenizer, script), _tokenized(test, tokenizer, script)
    input_column(train)
    keep = sorted(set(range(len(train))) - set(forget_index.tolist()))
    forget, retain = take_rows(train, forget_index), take_rows(train, keep)
    # builds (and checks) the paired data before any model trains
    build_classification_unlearning_dataset(forget, retain, num_classes, classes, config.seed)

    scenario = {
        "dataset": script.dataset,
        "model": script.model,
        "forget_classes": classes,
        "forget_samples": script.forget_samples,
        "class_groups": script.class_groups,
        "train_samples": len(train),
        "test_samples": len(test),
        "forget_size": len(forget),
        "num_classes": num_classes,
        "class_names": names,
    }
    key = {"scenario": scenario, "settings": _settings(script, config)}

    def evaluate(model, acc_ft=None):
        return evaluate_classifier(
            model,
            train,
            test,
            classes,
            None if classes else forget_index,
            acc_ft,
            script.eval_batch_size,
            _pad_id(tokenizer),
            config.seed,
            script.mia_max_samples,
            script.eval_retain_samples,
        )

    original_eval = _reuse(out / f"original_{EVAL_FILE}", key)
    if original_eval is None:
        original_eval = {"seconds": original_info.get("train_seconds"), "metrics": evaluate(original)}
        write_json_atomic(out / f"original_{EVAL_FILE}", {"key": key, **original_eval})
    rows = [
        {
            "method": "original",
            "uses_retain_data": False,
            "seconds": original_eval["seconds"],
            **original_eval["metrics"],
        }
    ]
    original_acc_ft = rows[0]["acc_ft"]
    for method in ([ORACLE] if script.oracle else []) + methods:
        folder = out / method
        data = (original, tokenizer, forget, retain, num_classes, classes)
        rows.append(run_method(method, config, script, *data, folder, key, lambda m: evaluate(m, original_acc_ft)))
    oracle_seconds = next((row["seconds"] for row in rows if row["method"] == ORACLE), None)
    for row in rows:
        row["fraction_of_oracle_time"] = (
            row["seconds"] / oracle_seconds if oracle_seconds and row["seconds"] is not None else None
        )
    result = {**key, "rows": rows}
    write_json_atomic(out / RESULTS_FILE, result)
    return result


def _check_script(script, config) -> tuple[list[str], list[int] | None, bool]:
    """The methods, the forget classes (``None``: forget samples) and whether the model is a named architecture;
    every setting checked before any data is read."""
    methods = parse_methods(script.methods)
    check_unlearn_settings(script, config)
    if (script.forget_classes is None) == (script.forget_samples is None):
        raise ValueError("Say what to forget: --forget_classes 0 (or 0,6) for classes, or --forget_samples N.")
    classes = None if script.forget_classes is None else [int(c) for c in script.forget_classes.split(",")]
    known_model = script.model in MODELS
    if not known_model and not Path(script.model).is_dir():
        raise ValueError(f"--model must be one of {MODELS} or a local classifier folder, got {script.model!r}.")
    return methods, classes, known_model


def _check_data(train, script, known_model: bool) -> tuple[int, list[str] | None, bool]:
    """The number of classes, their names and whether the data is text; the data checked against the model."""
    num_classes = num_classes_of(train)
    if num_classes is None:
        raise ValueError("The labels column is not a ClassLabel: the number of classes is unknown.")
    is_text = "text" in train.column_names
    if is_text != (script.model == "bert") and known_model:
        raise ValueError(
            f"--model {script.model} does not fit {'text' if is_text else 'image'} data "
            f"({'bert' if is_text else 'cnn or resnet'})."
        )
    return num_classes, class_names_of(train), is_text


def _tokenized(data, tokenizer, script):
    if tokenizer is None or "input_ids" in data.column_names:
        return data
    return tokenize_texts(data, tokenizer, script.text_max_length)


def _reuse(path: Path, key: dict) -> dict | None:
    """A finished run's stored record, ``None`` when absent; an error when it belongs to another run."""
    if not path.is_file():
        return None
    stored = json.loads(path.read_text())
    if stored.get("key") != json.loads(json.dumps(key)):
        raise ValueError(
            f"{path} was written by a run with other data or settings; this output_dir belongs to that run. Choose "
            "another --output_dir (or delete the old one)."
        )
    return stored


#: script fields that do not change a number (how much to run, how fast, where things are)
_NEUTRAL = ("methods", "oracle", "original", "num_threads", "eval_batch_size", "data_dir")


def _settings(script, config) -> dict:
    method_fields = dict.fromkeys(name for m in CLASSIFIER_METHODS for name in METHODS[m].card_fields)
    keep = (
        "learning_rate",
        "num_train_epochs",
        "per_device_train_batch_size",
        "lr_scheduler_type",
        "weight_decay",
        "seed",
        *method_fields,  # the methods' own settings (their entries' card_fields)
        "forget_weight",
    )
    settings = {k: getattr(config, k) for k in keep}
    script_values = {k: v for k, v in dataclasses.asdict(script).items() if k not in _NEUTRAL}
    return {"unlearning": settings, "script": script_values}


def method_values(method: str, config, script, output_dir: str) -> dict:
    """The unlearning config fields of one ``--methods`` entry: ``config``'s, then (``--unlearn_settings protocol``)
    the method's ``PROTOCOL`` settings, then its own ``@lr@epochs``; the oracle (``retrain``) trains like the
    original."""
    values = {f.name: getattr(config, f.name) for f in dataclasses.fields(config) if f.init}
    base = method.partition("@")[0]
    values.update(method=base, output_dir=output_dir, divergence=None, retain_mode=None)
    if method == ORACLE:  # the oracle trains like the original
        values.update(
            ADAM,
            learning_rate=script.train_learning_rate,
            num_train_epochs=script.train_epochs,
            per_device_train_batch_size=script.train_batch_size,
            lr_scheduler_type="linear",
        )
    else:
        if script.unlearn_settings == "protocol":
            values.update(PROTOCOL.get(base, {}))
        values.update(method_overrides(method))
    return values


def run_method(
    method, config, script, original, tokenizer, forget, retain, num_classes, classes, folder: Path, key: dict, evaluate
) -> dict:
    """Unlearn (or retrain) one copy of the original, save it, evaluate it; reuse a finished run in ``folder``."""
    path = folder / EVAL_FILE
    values = method_values(method, config, script, str(folder))
    run_config = type(config)(**values)
    uses_retain = run_config.spec.uses_retain_data or run_config.retain_mode != "none"
    settings = {f: values[f] for f in (*PROTOCOL_FIELDS, "lr_scheduler_type")}
    key = {**key, "method_settings": settings}
    stored = _reuse(path, key)
    head = {"method": method, "uses_retain_data": uses_retain, "settings": settings, "reused": stored is not None}
    if stored is not None:
        return {**head, "seconds": stored["seconds"], **stored["metrics"]}
    dataset = build_classification_unlearning_dataset(
        forget, retain if uses_retain else None, num_classes, classes, config.seed
    )
    start = time.perf_counter()
    trainer = UnlearnTrainer(
        model=copy.deepcopy(original), args=run_config, train_dataset=dataset, processing_class=tokenizer
    )
    trainer.train()
    seconds = time.perf_counter() - start
    trainer.save_model()
    metrics = evaluate(trainer.model)
    write_json_atomic(path, {"key": key, "method": method, "seconds": seconds, "metrics": metrics})
    return {**head, "seconds": seconds, **metrics}
