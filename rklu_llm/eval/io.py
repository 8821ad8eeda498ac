"""Moved to :mod:`rklu_llm.io` (general I/O, used below the evaluators too); this name keeps old imports working."""

from ..io import *  # noqa: F403
from ..io import __all__  # noqa: F401
