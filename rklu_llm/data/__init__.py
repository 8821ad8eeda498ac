"""Data: TOFU loading, QA tokenization, text-corpus (book) chunks, classification datasets, the forget/retain paired
datasets and collators."""

from .classification import (
    ClassificationCollator,
    ClassificationUnlearnDataset,
    build_classification_unlearning_dataset,
    load_classification_dataset,
    split_forget_retain,
)
from .profiles import fictitious_profiles
from .qa import (
    AnswerTruncatedError,
    ForgetRetainDataset,
    QACollator,
    UnlearnCollator,
    build_unlearning_dataset,
    check_qa,
    encode_answer,
    encode_prompt,
    join_prompt_answer,
    load_refusals,
    pad_examples,
    tokenize_qa,
)
from .text import (
    build_text_unlearning_dataset,
    check_chunk_fits,
    chunk_examples,
    chunk_text,
    chunk_token_ids,
    read_documents,
)
from .tofu import (
    FORGET_OF_RETAIN,
    HOLDOUT_OF_FORGET,
    RETAIN_OF_FORGET,
    TOFU_CONFIGS,
    DataUnavailableError,
    load_tofu,
    resolve_tofu_dir,
    tofu_available,
)

__all__ = [
    "ClassificationCollator",
    "ClassificationUnlearnDataset",
    "build_classification_unlearning_dataset",
    "load_classification_dataset",
    "split_forget_retain",
    "AnswerTruncatedError",
    "DataUnavailableError",
    "FORGET_OF_RETAIN",
    "HOLDOUT_OF_FORGET",
    "ForgetRetainDataset",
    "QACollator",
    "RETAIN_OF_FORGET",
    "TOFU_CONFIGS",
    "UnlearnCollator",
    "build_text_unlearning_dataset",
    "build_unlearning_dataset",
    "check_qa",
    "check_chunk_fits",
    "chunk_examples",
    "chunk_text",
    "chunk_token_ids",
    "encode_answer",
    "encode_prompt",
    "fictitious_profiles",
    "join_prompt_answer",
    "load_refusals",
    "load_tofu",
    "pad_examples",
    "read_documents",
    "resolve_tofu_dir",
    "tofu_available",
    "tokenize_qa",
]
