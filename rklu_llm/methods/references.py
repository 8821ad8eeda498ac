"""The references that USE RETAIN DATA (classifiers): fine-tune on the retain set from the original, and retrain
from re-initialised weights (the oracle). Both train with CE on the retain set only (the trainer's retain-data path);
they have no forget loss."""

from __future__ import annotations

from .entry import Method

FINETUNE = Method(
    loss="REFERENCE, USES RETAIN DATA: CE on the retain set, from the original",
    batch="classifier",
    uses_retain_data=True,
)

RETRAIN = Method(
    loss="REFERENCE, USES RETAIN DATA: re-initialised weights, CE on the retain set (the oracle)",
    batch="classifier",
    uses_retain_data=True,
    reinitialize=True,
)
