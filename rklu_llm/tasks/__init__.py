"""lm-eval-harness task YAMLs shipped with the toolkit: the RKL-U paper's general-capability suite, reading a local
data folder or the Hugging Face hub.

``TASKS_DIR`` is the folder to give lm-eval (``TaskManager(include_path=TASKS_DIR)``, or ``lm_eval --include_path``).
Each task ``rklu_<name>`` has the prompt, choices and metrics of lm-eval's own ``<name>`` task; only the data source
differs (see :mod:`rklu_llm.tasks.rklu_tasks`). Groups: ``rklu_general`` (the paper's seven tasks, mean accuracy) and
``rklu_general_all`` (with Winogrande, BoolQ and OpenBookQA).
"""

from pathlib import Path

from .rklu_tasks import DATA_DIR_ENV, PAPER_TASKS, TASKS, data_file

TASKS_DIR = Path(__file__).resolve().parent

__all__ = ["DATA_DIR_ENV", "PAPER_TASKS", "TASKS", "TASKS_DIR", "data_file"]
