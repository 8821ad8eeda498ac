"""Copyright unlearning on a book (the RKL-U paper's Harry Potter protocol, on a public-domain novel).

Run by ``recipes/copyright_book.py``. Read top to bottom: arguments -> every input checked (texts, chunking, context
length, WikiText, lm-eval data, refusals) -> 1. the untouched model evaluated -> 2. fine-tuned on the book's chunks
(NLL on every token) until it reproduces them, evaluated -> 3. RKL-U's augmented model (the fine-tuned model trained
further on the chunks), shared by rklu / fklu / ta -> 4. each method unlearns the fine-tuned model, evaluated ->
5. one table.

    # Austen: forget Pride and Prejudice, Sense and Sensibility is the never-seen control, Emma the retain text of gd
    python recipes/copyright_book.py --books_dir data/books --wikitext_dir data/wikitext \
        --general_data_dir data/general --retain_text emma.txt --output_dir runs/book
    # the paper's size on a GPU (400 chunks of 512 do not fit one Austen novel: P&P has 327)
    python recipes/copyright_book.py ... --chunk_tokens 512 --num_chunks 300 --prefix_tokens 200 --bf16
    # a few methods, LoRA students, a YAML config
    python recipes/copyright_book.py --methods rklu,npo --use_lora ...
    python recipes/copyright_book.py --config book.yaml

Evaluation of every model (see :mod:`rklu_llm.eval.copyright` and :mod:`rklu_llm.eval.general`): greedy continuation
of each chunk's first ``prefix_tokens`` tokens scored against the true continuation (sentence BLEU via sacrebleu, mean
x100; ROUGE-L recall and F1 via rouge_score, x100), the same on the control book, WikiText perplexity, and the mean
lm-eval accuracy over the paper's seven tasks. The control book's scores are the level of a text never trained on;
the fine-tuned model should be far above it on the forget book and an unlearned model back near it.

Layout of ``--output_dir`` (resumable: a finished stage is never redone)::

    base/            the untouched model's evaluation (copyright_eval.json, general_eval.json)
    finetuned/       the model that memorised the book (full weights) and its evaluation
    augmented/       RKL-U's augmented model (rklu, fklu, ta), and augmented.json (its seconds)
    <method>/        the unlearned model (unless --save_models false), its evaluation, run.json
    copyright_results.json   one row per model: BLEU / ROUGE-L on the book and the control, perplexity, lm-eval

Flags: ``BookRecipeArguments`` below, ``CopyrightDataArguments`` / ``CopyrightEvalArguments``
(:mod:`rklu_llm.scripts.eval_copyright`), ``GeneralEvalArguments`` (:mod:`rklu_llm.scripts.eval_general`) and
``BookUnlearnConfig`` (every :class:`~rklu_llm.UnlearnConfig` and ``TrainingArguments`` field; ``output_dir`` is the
folder above; ``--method`` is not used: ``--methods`` lists the runs). Pairing for the refusal methods (dpo, idk): see
:mod:`rklu_llm.data.text`; here dpo's dispreferred answer is the chunk's continuation after its prefix
(``mask_prefix=True``), every other method counts every token of a chunk.
"""

from __future__ import annotations

import dataclasses
import functools
import gc
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import TrainingArguments

from ..cli import parse_arguments
from ..config import METHODS, UnlearnConfig
from ..data import load_refusals
from ..data.qa import QACollator
from ..data.text import build_text_unlearning_dataset, chunk_examples
from ..eval.copyright import evaluate_copyright, summary_row
from ..eval.general import evaluate_general
from ..io import write_json_atomic
from ..models import add_lora, check_output_dir, load_model, load_tokenizer, lora_config, staged_save
from ..run_state import GuardedTrainer
from ..teacher import build_augmented_model
from ..trainer import UnlearnTrainer
from .eval_copyright import CopyrightDataArguments, CopyrightEvalArguments
from .eval_general import GeneralEvalArguments

DEFAULT_FORGET = "pride_and_prejudice.txt"
DEFAULT_CONTROL = "sense_and_sensibility.txt"
DEFAULT_METHODS = ("rklu", "ga", "gd", "npo", "dpo", "idk", "ta", "fklu")
RESULTS_FILE = "copyright_results.json"


@dataclass
class BookRecipeArguments:
    model: str = field(
        default="embedded:smollm2-135m-instruct",
        metadata={"help": "The model that memorises, then unlearns, the book: hub id, local dir or embedded:<name>."},
    )
    methods: str = field(
        default=",".join(DEFAULT_METHODS),
        metadata={"help": "Comma-separated methods to run; 'none': stop once the fine-tuned model is evaluated."},
    )
    retain_text: str | None = field(
        default=None,
        metadata={
            "help": "Retain corpus (another novel; not the control, not WikiText) for gd and --retain_mode "
            "rt/kl: a file, a folder, or a name inside --books_dir."
        },
    )
    retain_chunks: int | None = field(default=None, metadata={"help": "Retain chunks (default: every full chunk)."})
    finetune_epochs: float = field(
        default=10.0,
        metadata={
            "help": "Epochs of NLL fine-tuning on the book's chunks; 0: the model already knows the book and is "
            "unlearned as given."
        },
    )
    finetune_learning_rate: float = field(default=1e-4, metadata={"help": "Learning rate of that fine-tune."})
    finetune_lora: bool = field(
        default=False, metadata={"help": "Fine-tune a LoRA adapter (merged into the weights on save)."}
    )
    evaluate_base: bool = field(default=True, metadata={"help": "Evaluate the untouched model too (base/)."})
    save_models: bool = field(
        default=True, metadata={"help": "Save every unlearned model (false: only its evaluation; saves disk)."}
    )


@dataclass
class BookUnlearnConfig(UnlearnConfig):
    """:class:`~rklu_llm.UnlearnConfig` with the paper's Harry Potter settings as defaults: teacher alpha 4 and one
    augmentation epoch."""

    teacher_alpha: float = field(
        default=4.0, metadata={"help": "RKL-U teacher strength, l_t = l_o - alpha * relu(l_aug - l_o) (books: 4)."}
    )
    augment_epochs: float = field(
        default=1.0, metadata={"help": "Epochs of NLL fine-tuning on the book making the augmented model (paper: 1)."}
    )


ARGUMENTS = (
    BookRecipeArguments,
    CopyrightDataArguments,
    CopyrightEvalArguments,
    GeneralEvalArguments,
    BookUnlearnConfig,
)


def retain_mode(method: str, config: UnlearnConfig) -> str:
    """The retain term of ``method`` in this recipe: its own when it is part of the method (gd's NLL), else the
    recipe's ``--retain_mode``."""
    spec = METHODS[method]
    return spec.default_retain_mode if spec.retain_mode_fixed else config.retain_mode


def method_config(config: UnlearnConfig, method: str, output_dir: Path, augmented: Path | None) -> UnlearnConfig:
    """The recipe's config for one method: its own output folder, gd with its retain NLL, no LoRA for ta (a weight
    edit), the divergence of rklu / fklu, the shared augmented model."""
    return dataclasses.replace(
        config,
        method=method,
        output_dir=str(output_dir),
        divergence=None,
        retain_mode=retain_mode(method, config),
        use_lora=config.use_lora and METHODS[method].trains,
        augmented_model_path=None if augmented is None else str(augmented),
    )


def finetune(model_name: str, recipe: BookRecipeArguments, config: UnlearnConfig, forget, out: Path) -> dict:
    """NLL fine-tuning on every token of the book's chunks; the model (full weights) is saved into ``out``."""
    metrics_file = out / "train_metrics.json"
    if metrics_file.is_file():
        return json.loads(metrics_file.read_text())
    model, tokenizer = load_model(model_name)
    if recipe.finetune_lora:
        model = add_lora(
            model, lora_config(config.lora_r, config.lora_alpha, 0.0, config.lora_target_modules), config.seed
        )
    args = TrainingArguments(
        output_dir=str(out / ".trainer"),
        num_train_epochs=recipe.finetune_epochs,
        learning_rate=recipe.finetune_learning_rate,
        per_device_train_batch_size=config.per_device_train_batch_size,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        weight_decay=config.weight_decay,
        warmup_steps=0.1,
        lr_scheduler_type="linear",
        save_strategy="no",
        report_to="none",
        seed=config.seed,
        logging_steps=config.logging_steps,
        disable_tqdm=config.disable_tqdm,
        use_cpu=config.use_cpu,
        bf16=config.bf16,
        fp16=config.fp16,
    )
    trainer = GuardedTrainer(  # stops at the first non-finite loss or gradient norm
        model=model,
        args=args,
        train_dataset=forget.select_columns(["input_ids", "labels"]),
        processing_class=tokenizer,
        data_collator=QACollator(tokenizer.pad_token_id),
    )
    start = time.perf_counter()
    result = trainer.train()
    seconds = time.perf_counter() - start
    if not math.isfinite(result.training_loss):
        raise RuntimeError(
            f"The fine-tune on the book diverged (loss {result.training_loss}); lower --finetune_learning_rate."
        )
    if recipe.finetune_lora:
        trainer.model = trainer.accelerator.unwrap_model(trainer.model).merge_and_unload()
    metrics = {
        "train_seconds": seconds,
        "train_loss": result.training_loss,
        "chunks": len(forget),
        "epochs": recipe.finetune_epochs,
        "learning_rate": recipe.finetune_learning_rate,
        "lora": recipe.finetune_lora,
    }
    staged_save(
        trainer, out, lambda staging: (staging / "train_metrics.json").write_text(json.dumps(metrics, indent=2))
    )
    return metrics


def evaluate(
    model, tokenizer, data, evaluation: CopyrightEvalArguments, general: GeneralEvalArguments, out: Path
) -> dict:
    """Copyright scores and lm-eval accuracy of one model, written into ``out``; returns the flat row."""
    start = time.perf_counter()
    if torch.cuda.is_available():
        model.to("cuda")
    row = summary_row(evaluate_copyright(model, tokenizer, data, output_dir=out, **evaluation.evaluate_kwargs()))
    row["general_average_acc"] = None
    if not general.skip_general:
        result = evaluate_general(model, tokenizer, output_dir=out, **general.evaluate_kwargs())
        row["general_average_acc"] = result["average_acc"]
        row.update({f"{task}_acc": values["acc"] for task, values in result["tasks"].items()})
    row["eval_seconds"] = time.perf_counter() - start
    return row


class BookRun:
    """One run of the recipe: its arguments and every input, checked before any model is loaded (``__init__``), and
    its stages, each finished one kept in ``<output_dir>/<stage>/run.json`` and added to the results table."""

    def __init__(self, recipe, texts, evaluation, general, config, on_stage=None):
        self.recipe, self.texts, self.evaluation, self.general, self.config = recipe, texts, evaluation, general, config
        self.on_stage = on_stage
        self.only_original = recipe.methods.strip() == "none"  # base and fine-tuned models only (a protocol's original)
        self.methods = [] if self.only_original else [m.strip() for m in recipe.methods.split(",") if m.strip()]
        if recipe.finetune_epochs < 0:
            raise ValueError(f"--finetune_epochs must be >= 0, got {recipe.finetune_epochs}")
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown or not (self.methods or self.only_original):
            raise ValueError(f"--methods: unknown {unknown or 'empty list'}; choose among {', '.join(METHODS)}.")
        self.root = Path(config.output_dir)
        check_output_dir(self.root, model_path=recipe.model)
        texts.forget_text = texts.forget_text or DEFAULT_FORGET
        texts.control_text = texts.control_text or DEFAULT_CONTROL
        self.forget_path = texts.resolve(texts.forget_text, "forget_text")
        self.retain_path = None
        with_retain = [m for m in self.methods if retain_mode(m, config) != "none"]
        if with_retain:
            if recipe.retain_text is None:
                raise ValueError(
                    "gd (and --retain_mode rt/kl) needs a retain corpus: pass --retain_text (another novel, "
                    "e.g. emma.txt), or leave gd out of --methods."
                )
            self.retain_path = texts.resolve(recipe.retain_text, "retain_text")
        general.check_data()
        needs_refusals = any(METHODS[m].needs_refusals for m in self.methods)
        self.refusals = load_refusals(config.refusal_file) if needs_refusals else None
        self.tokenizer = load_tokenizer(recipe.model)
        self.data = texts.prepare(self.tokenizer, recipe.model)  # chunks, control, WikiText; the config's context
        if self.retain_path is not None:
            self.dataset(with_retain[0])  # a retain text too short for one chunk fails now
        self.chunks = chunk_examples(self.data.sets["forget"], texts.prefix_tokens)
        # --finetune_epochs 0: the model already knows the book; it is unlearned as given, evaluated under finetuned/
        self.finetuned = self.root / "finetuned" if recipe.finetune_epochs > 0 else Path(recipe.model)
        self.augmented, self.augment_seconds = None, 0.0
        self.rows = {}

    def dataset(self, method: str):
        """The forget set of ``method``: the book's chunks, with retain chunks / refusals when it uses them."""
        needs_retain = retain_mode(method, self.config) != "none"
        return build_text_unlearning_dataset(
            self.tokenizer,
            self.forget_path,
            self.retain_path if needs_retain else None,
            self.refusals if METHODS[method].needs_refusals else None,
            chunk_tokens=self.texts.chunk_tokens,
            num_chunks=self.texts.num_chunks,
            retain_chunks=self.recipe.retain_chunks,
            prefix_tokens=self.texts.prefix_tokens,
            mask_prefix=METHODS[method].masks_text_prefix,
            text_column=self.texts.text_column,
            seed=self.config.seed,
        )

    def record(self, name: str, row: dict) -> None:
        """Add ``row`` to the results table (rewritten whole), print it and report the finished stage."""
        self.rows[name] = row
        data, general = self.data, self.general
        write_json_atomic(
            self.root / RESULTS_FILE,
            {
                "forget": data.sources["forget"],
                "control": data.sources["control"],
                "wikitext": data.sources["wikitext"],
                "chunk_tokens": data.chunk_tokens,
                "num_chunks": len(data.sets["forget"]),
                "prefix_tokens": data.prefix_tokens,
                "general_tasks": None if general.skip_general else general.task_names,
                "general_limit": general.general_limit,
                "methods": self.methods,
                "rows": list(self.rows.values()),
            },
        )
        shown = {
            k: (round(v, 3) if isinstance(v, float) else v)
            for k, v in row.items()
            if not k.endswith("_acc") or k == "general_average_acc"
        }
        print(f"[copyright] {name}: {json.dumps(shown)}", flush=True)
        if self.on_stage is not None:
            self.on_stage(name)

    def stage(self, name: str, compute) -> dict:
        """A finished stage's row from its run.json, else ``compute()``'s, stored."""
        path = self.root / name / "run.json"
        if path.is_file():
            row = json.loads(path.read_text())
        else:
            row = {"name": name, **compute()}
            write_json_atomic(path, row)
        self.record(name, row)
        return row

    def evaluate(self, model, name: str) -> dict:
        return evaluate(model, self.tokenizer, self.data, self.evaluation, self.general, self.root / name)

    def base(self) -> dict:
        """1. The untouched model."""
        model, _ = load_model(self.recipe.model)
        return {"method": "base (never saw the book)", "seconds": None, **self.evaluate(model, "base")}

    def memorise(self) -> dict:
        """2. Fine-tuned until the model reproduces the book (or the given model, with --finetune_epochs 0)."""
        recipe, seconds = self.recipe, 0.0
        if recipe.finetune_epochs > 0:
            seconds = finetune(recipe.model, recipe, self.config, self.chunks, self.finetuned)["train_seconds"]
        model, _ = load_model(str(self.finetuned))
        return {
            "method": "fine-tuned on the book" if recipe.finetune_epochs > 0 else "given model (no fine-tune)",
            "seconds": seconds,
            **self.evaluate(model, "finetuned"),
        }

    def build_augmented(self) -> None:
        """3. The augmented model (rklu, fklu, ta), built once; its seconds are kept in augmented.json."""
        if not any(METHODS[m].needs_augmented for m in self.methods):
            return
        self.augmented = self.root / "augmented"
        timing = self.root / "augmented.json"
        if not timing.is_file():
            model, _ = load_model(str(self.finetuned))
            start = time.perf_counter()
            config = method_config(self.config, "rklu", self.root / ".augment", None)
            build_augmented_model(model, self.tokenizer, self.chunks, config, self.augmented)
            write_json_atomic(timing, {"seconds": time.perf_counter() - start})
            del model
        self.augment_seconds = json.loads(timing.read_text())["seconds"]

    def unlearn(self, method: str) -> dict:
        """4. ``method`` unlearns the fine-tuned model, evaluated."""
        out = self.root / method
        model, _ = load_model(str(self.finetuned))
        if torch.cuda.is_available():
            model.to("cuda")
        cfg = method_config(self.config, method, out, self.augmented)
        trainer = UnlearnTrainer(
            model=model,
            args=cfg,
            train_dataset=self.dataset(method),
            processing_class=self.tokenizer,
            dataset_name=f"text:{self.data.sources['forget']}",
        )
        start = time.perf_counter()
        trainer.train(resume_from_checkpoint=True)  # a killed method continues from its newest checkpoint
        seconds = time.perf_counter() - start + (self.augment_seconds if METHODS[method].needs_augmented else 0.0)
        if self.recipe.save_models:
            trainer.save_model()
        unlearned = trainer.accelerator.unwrap_model(trainer.model)
        del trainer
        row = {"method": method, "retain_mode": cfg.retain_mode, "seconds": seconds, **self.evaluate(unlearned, method)}
        del unlearned, model
        gc.collect()
        return row


def main(argv: list[str] | None = None, on_stage=None) -> dict:
    """Run the recipe (see the module docstring); ``on_stage(name)`` is called after every finished stage."""
    run = BookRun(*parse_arguments(ARGUMENTS, argv), on_stage=on_stage)
    if run.recipe.evaluate_base:
        run.stage("base", run.base)
    run.stage("finetuned", run.memorise)
    run.build_augmented()
    for method in run.methods:
        run.stage(method, functools.partial(run.unlearn, method))
    return {"rows": list(run.rows.values())}
