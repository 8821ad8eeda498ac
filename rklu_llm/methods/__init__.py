"""The methods: one :class:`~rklu_llm.methods.entry.Method` entry each, in the one :data:`METHODS` table.

Each file holds one method or one family (its loss functions calling :mod:`rklu_llm.losses`, its card lines, its
checks); the table below names them. To add a method, write its file and add its line here (``docs/extending.md``).
"""

from __future__ import annotations

from .class_baselines import BOUNDARY_SHRINK, JIT, RANDOM_LABEL
from .class_targets import MASK, REDISTRIBUTE
from .distillation import FKLU, RKLU
from .entry import Method, Step
from .gradient_ascent import GA, GD
from .idk import IDK
from .preference import DPO, NPO
from .references import FINETUNE, RETRAIN
from .task_arithmetic import TA
from .token_targets import TOKEN_MASK, TOKEN_REDISTRIBUTE

#: every method by name: the one table the config, the trainer, the cards and the recipes read
METHODS: dict[str, Method] = {
    "rklu": RKLU,
    "fklu": FKLU,
    "ga": GA,
    "gd": GD,
    "npo": NPO,
    "dpo": DPO,
    "idk": IDK,
    "ta": TA,
    # --- token-level redistributive / masked targets for LLMs (KL direction: `divergence`, default forward) ---
    "token_redistribute": TOKEN_REDISTRIBUTE,
    "token_mask": TOKEN_MASK,
    # --- classifiers (papers: redistributive KL; DELETE) ---
    "redistribute": REDISTRIBUTE,
    "mask": MASK,
    "random_label": RANDOM_LABEL,
    "boundary_shrink": BOUNDARY_SHRINK,
    "jit": JIT,
    "finetune": FINETUNE,
    "retrain": RETRAIN,
}

__all__ = ["METHODS", "Method", "Step"]
