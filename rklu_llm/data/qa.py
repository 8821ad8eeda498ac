"""Question-answer tokenization, the forget/retain paired dataset and the collators.

A QA item becomes ``prompt_ids + answer_ids`` with labels ``-100`` on the prompt. The prompt is the model's chat
template with the question as the user turn (or ``"Question: ...\\nAnswer:"`` when the tokenizer has no template); the
answer ends with the EOS token, which counts as an answer token. Attention masks are built from lengths, never from
``input_ids != pad_token_id``, so a pad token equal to EOS (SmolLM2, Llama-3, ...) cannot hide the real EOS.
"""

from __future__ import annotations

import math
import os

import numpy as np
import torch
from datasets import Dataset
from torch.nn.utils.rnn import pad_sequence

from ..io import data_fingerprint
from ..losses import IGNORE_INDEX
from .refusals import REFUSALS

PLAIN_TEMPLATE = "Question: {question}\nAnswer:"


class AnswerTruncatedError(ValueError):
    """An example would keep no answer token after truncation to ``max_length``."""


def encode_prompt(tokenizer, question: str) -> list[int]:
    """Token ids of the prompt that asks ``question`` (chat template with a generation prompt, or the plain one)."""
    if getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": question}], add_generation_prompt=True, tokenize=False
        )
        return tokenizer(text, add_special_tokens=False)["input_ids"]
    return tokenizer(PLAIN_TEMPLATE.format(question=question), add_special_tokens=True)["input_ids"]


def encode_answer(tokenizer, answer: str) -> list[int]:
    """Token ids of ``answer`` followed by EOS (a leading space is added for the plain template)."""
    if tokenizer.eos_token_id is None:
        raise ValueError("The tokenizer has no EOS token; set tokenizer.eos_token before tokenizing answers.")
    text = answer if getattr(tokenizer, "chat_template", None) else " " + answer
    return tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]


def join_prompt_answer(prompt_ids: list[int], answer_ids: list[int], max_length: int, where: str = "") -> dict:
    """``input_ids`` and ``labels`` of one example, the answer cut to fit ``max_length``.

    Raises:
        AnswerTruncatedError: the prompt alone fills ``max_length``.
    """
    room = max_length - len(prompt_ids)
    if room <= 0 or not answer_ids:
        raise AnswerTruncatedError(
            f"{where}the prompt has {len(prompt_ids)} tokens, so with max_length={max_length} no answer token "
            f"would be left. Raise max_length (or shorten the question)."
        )
    answer_ids = answer_ids[:room]
    return {"input_ids": prompt_ids + answer_ids, "labels": [IGNORE_INDEX] * len(prompt_ids) + answer_ids}


def check_qa(
    dataset: Dataset, name: str = "QA dataset", question_key: str = "question", answer_key: str = "answer"
) -> None:
    """Fail with the row number on a row whose question or answer is missing, not a string, or empty.

    Cheap (two columns read, no tokenizer), so the recipes call it before loading a model.

    Raises:
        ValueError: the columns are missing, or a row is bad (``row i`` counts from 1, as the lines of a JSONL file).
    """
    missing = {question_key, answer_key} - set(dataset.column_names)
    if missing:
        raise ValueError(f"{name} lacks column(s) {sorted(missing)}; it has {dataset.column_names}.")
    for key in (question_key, answer_key):
        for index, value in enumerate(dataset[key]):
            if not isinstance(value, str) or not value.strip():
                problem = "is null" if value is None else f"is {value!r}, not a non-empty string"
                raise ValueError(f"{name}, row {index + 1}: the {key!r} field {problem}. Fix or remove that row.")


def tokenize_qa(
    dataset: Dataset,
    tokenizer,
    max_length: int = 512,
    question_key: str = "question",
    answer_key: str = "answer",
) -> Dataset:
    """Add ``prompt_ids``, ``input_ids`` and ``labels`` to every row of a QA dataset (other columns are dropped).

    Raises:
        ValueError: a column is missing, or a row's question/answer is null or empty (see :func:`check_qa`).
        AnswerTruncatedError: a row would keep no answer token (the message gives its index).
    """
    check_qa(dataset, "QA dataset", question_key, answer_key)

    def encode(row, index):
        prompt = encode_prompt(tokenizer, row[question_key])
        joined = join_prompt_answer(
            prompt, encode_answer(tokenizer, row[answer_key]), max_length, where=f"QA item {index}: "
        )
        return {"prompt_ids": prompt, **joined}

    return dataset.map(encode, with_indices=True, remove_columns=dataset.column_names, desc="Tokenizing QA")


def load_refusals(path: str | None = None) -> list[str]:
    """Refusal answers for dpo/idk: one per non-empty line of ``path``, or the built-in list."""
    if path is None:
        return list(REFUSALS)
    if not os.path.isfile(path):
        what = "is a folder" if os.path.isdir(path) else "does not exist"
        raise FileNotFoundError(
            f"Refusal file {path!r} {what}: pass a text file with one refusal answer per line "
            "(or leave refusal_file out for the built-in list)."
        )
    with open(path, encoding="utf-8") as handle:
        lines = [line.strip() for line in handle]
    refusals = [line for line in lines if line]
    if not refusals:
        raise ValueError(f"Refusal file {path!r} holds no refusal (one answer per non-empty line expected).")
    return refusals


class ForgetRetainDataset(torch.utils.data.Dataset):
    """Forget items, each paired with a retain item and a refusal answer, for one optimisation step.

    Item ``i`` is ``{"forget": ex, "retain": ex, "refusal": ex}`` (the last two only when available), each ``ex`` a
    dict of ``input_ids`` and ``labels`` lists. The retain partner of forget item ``i`` changes every epoch (a seeded
    permutation of the retain set, see :meth:`set_epoch`) so that a small forget set meets many retain items; the
    refusal is the forget question with a refusal answer. Deterministic given ``seed`` and the epoch, so a resumed run
    sees the same pairs.
    """

    def __init__(
        self,
        forget: Dataset,
        retain: Dataset | None = None,
        refusal_answer_ids: list[list[int]] | None = None,
        max_length: int = 512,
        seed: int = 0,
    ):
        if len(forget) == 0:
            raise ValueError("The forget set is empty: there is nothing to unlearn.")
        if retain is not None and len(retain) == 0:
            raise ValueError("The retain set is empty; pass retain=None for retain-free unlearning.")
        if refusal_answer_ids is not None and not refusal_answer_ids:
            raise ValueError("The refusal list is empty.")
        self.forget = forget.select_columns(["prompt_ids", "input_ids", "labels"]).to_dict()
        self.retain = None if retain is None else retain.select_columns(["input_ids", "labels"]).to_dict()
        self.refusal_answer_ids = refusal_answer_ids
        self.max_length = max_length
        self.seed = seed
        self._fingerprint = None
        self.set_epoch(0)

    def fingerprint(self) -> dict:
        """What identifies the training data: item counts and SHA-256 digests of the tokenized examples.

        ``{"forget_items", "forget_sha256", "retain_items", "retain_sha256", "refusals", "refusals_sha256",
        "pairing_seed"}`` (retain / refusal entries ``None`` when absent). The digests cover the token ids and labels
        (so the tokenizer, the prompt template and ``max_length`` are part of them), never the text itself: the
        model card and the run record show them without revealing the forget set.
        """
        if self._fingerprint is None:

            def digest(examples):
                return (
                    None
                    if examples is None
                    else data_fingerprint({"input_ids": examples["input_ids"], "labels": examples["labels"]})
                )

            self._fingerprint = {
                "forget_items": len(self),
                "forget_sha256": digest(self.forget),
                "retain_items": None if self.retain is None else len(self.retain["input_ids"]),
                "retain_sha256": digest(self.retain),
                "refusals": None if self.refusal_answer_ids is None else len(self.refusal_answer_ids),
                "refusals_sha256": None
                if self.refusal_answer_ids is None
                else data_fingerprint(self.refusal_answer_ids),
                "pairing_seed": self.seed,
            }
        return self._fingerprint

    def set_epoch(self, epoch: int) -> None:
        """Re-draw the retain and refusal partners for ``epoch``."""
        self.epoch = epoch
        rng = np.random.default_rng([self.seed, epoch])
        n = len(self)
        if self.retain is not None:
            m = len(self.retain["input_ids"])
            order = rng.permutation(m)
            self._retain_index = order[np.arange(n) % m]
        if self.refusal_answer_ids is not None:
            self._refusal_index = rng.integers(0, len(self.refusal_answer_ids), size=n)

    def __len__(self) -> int:
        return len(self.forget["input_ids"])

    def __getitem__(self, i: int) -> dict:
        item = {"forget": {"input_ids": self.forget["input_ids"][i], "labels": self.forget["labels"][i]}}
        if self.retain is not None:
            j = int(self._retain_index[i])
            item["retain"] = {"input_ids": self.retain["input_ids"][j], "labels": self.retain["labels"][j]}
        if self.refusal_answer_ids is not None:
            answer = self.refusal_answer_ids[int(self._refusal_index[i])]
            item["refusal"] = join_prompt_answer(self.forget["prompt_ids"][i], answer, self.max_length)
        return item


def build_unlearning_dataset(
    tokenizer,
    forget: Dataset,
    retain: Dataset | None = None,
    refusals: list[str] | None = None,
    max_length: int = 512,
    seed: int = 0,
) -> ForgetRetainDataset:
    """Tokenize raw QA datasets (``question``/``answer`` columns) into a :class:`ForgetRetainDataset`."""
    if len(forget) == 0:
        raise ValueError("The forget set is empty: there is nothing to unlearn.")
    forget_tok = tokenize_qa(forget, tokenizer, max_length)
    retain_tok = None if retain is None else tokenize_qa(retain, tokenizer, max_length)
    refusal_ids = None if refusals is None else [encode_answer(tokenizer, r) for r in refusals]
    return ForgetRetainDataset(forget_tok, retain_tok, refusal_ids, max_length=max_length, seed=seed)


def pad_examples(examples: list[dict], pad_token_id: int, padding_side: str = "right") -> dict[str, torch.Tensor]:
    """Pad ``input_ids``/``labels`` lists into ``(B, T)`` tensors with an ``attention_mask`` built from lengths."""
    ids = [torch.tensor(e["input_ids"], dtype=torch.long) for e in examples]
    batch = {
        "input_ids": pad_sequence(ids, batch_first=True, padding_value=pad_token_id, padding_side=padding_side),
        "attention_mask": pad_sequence(
            [torch.ones_like(t) for t in ids], batch_first=True, padding_value=0, padding_side=padding_side
        ),
    }
    if "labels" in examples[0]:
        labels = [torch.tensor(e["labels"], dtype=torch.long) for e in examples]
        batch["labels"] = pad_sequence(labels, batch_first=True, padding_value=IGNORE_INDEX, padding_side=padding_side)
    return batch


class QACollator:
    """Pads tokenized QA rows (``input_ids``, ``labels``) for ordinary fine-tuning."""

    def __init__(self, pad_token_id: int, padding_side: str = "right"):
        self.pad_token_id = pad_token_id
        self.padding_side = padding_side

    def __call__(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        return pad_examples(examples, self.pad_token_id, self.padding_side)


class UnlearnCollator:
    """Pads each group of :class:`ForgetRetainDataset` items separately: ``{"forget": batch, "retain": batch, ...}``."""

    def __init__(self, pad_token_id: int):
        self.pad_token_id = pad_token_id

    def __call__(self, items: list[dict]) -> dict[str, dict[str, torch.Tensor]]:
        return {group: pad_examples([it[group] for it in items], self.pad_token_id) for group in items[0]}


def epoch_of(state_epoch: float | None) -> int:
    """The integer epoch a `TrainerState.epoch` (a float, fractional inside an epoch) belongs to."""
    return int(math.floor((state_epoch or 0.0) + 1e-9))
