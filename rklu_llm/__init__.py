"""rklu_llm: machine unlearning for Hugging Face models.

RKL-U (fine-tune an augmented copy on the forget set, build the teacher ``l_o - alpha * relu(l_aug - l_o)``, distil
with token-level reverse KL) and the GA / GD / NPO / DPO / IDK / FKL-U / task-arithmetic baselines, in one
`transformers.Trainer` subclass that also unlearns classifiers (classes or samples, retain-free); TOFU, copyright,
lm-eval and audit evaluations, model cards and ``push_to_hub``, and the ``rklu-llm`` command.

The public names below are imported on first use (PEP 562), so ``import rklu_llm`` and ``rklu-llm --version`` do not
pay for torch, transformers and peft until something needs them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .lazy import lazy_exports

__version__ = "0.1.0"

#: public name -> the submodule that defines it
_EXPORTS = {
    "DEFAULT_MODEL": ".models",
    "METHODS": ".config",
    "UnlearnConfig": ".config",
    "UnlearnTrainer": ".trainer",
    "build_classification_unlearning_dataset": ".data",
    "build_text_unlearning_dataset": ".data",
    "build_unlearning_dataset": ".data",
    "load_model": ".models",
    "load_refusals": ".data",
    "load_tofu": ".data",
    "load_tokenizer": ".models",
    "push_to_hub": ".hub",
}

__all__ = [  # the keys of _EXPORTS (a test checks), written out for static analysers
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

if TYPE_CHECKING:  # what static analysers and IDEs see
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


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
