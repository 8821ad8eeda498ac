"""rklu_llm: machine unlearning for Hugging Face models.

RKL-U (fine-tune an augmented copy on the forget set, build the teacher ``l_o - alpha * relu(l_aug - l_o)``, distil
with token-level reverse KL) and the GA / GD / NPO / DPO / IDK / FKL-U / task-arithmetic baselines, in one
`transformers.Trainer` subclass that also unlearns classifiers (classes or samples, retain-free); TOFU, copyright,
lm-eval and audit evaluations, model cards and ``push_to_hub``, and the ``rklu-llm`` command.
"""

from .config import METHODS, UnlearnConfig
from .data import (
    build_classification_unlearning_dataset,
    build_text_unlearning_dataset,
    build_unlearning_dataset,
    load_refusals,
    load_tofu,
)
from .hub import push_to_hub
from .models import DEFAULT_MODEL, load_model, load_tokenizer
from .trainer import UnlearnTrainer

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_MODEL",
    "METHODS",
    "UnlearnConfig",
    "UnlearnTrainer",
    "build_classification_unlearning_dataset",
    "build_text_unlearning_dataset",
    "build_unlearning_dataset",
    "load_model",
    "load_refusals",
    "load_tofu",
    "load_tokenizer",
    "push_to_hub",
]
