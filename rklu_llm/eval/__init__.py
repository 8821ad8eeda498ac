"""Evaluation. One module per evaluator, on shared pieces:

* :mod:`~rklu_llm.eval.metrics`: pure metric functions (arrays in, numbers out);
* :mod:`~rklu_llm.eval.scoring`: batched likelihoods of token sequences and batched generation;
* :mod:`rklu_llm.io` (below this package): atomic JSON writes, the per-(set, metric) result cache, a weights digest,
  the setup every evaluator shares;
* :mod:`~rklu_llm.eval.tofu`: TOFU (probability, ROUGE-L recall, truth ratio, model utility, forget quality);
* :mod:`~rklu_llm.eval.audit`: membership inference, extraction, leak@k, relearning and quantization robustness;
* :mod:`~rklu_llm.eval.open_unlearning`: open-unlearning's TOFU_EVAL.json / TOFU_SUMMARY.json, read and written;
* :mod:`~rklu_llm.eval.copyright`: continuation BLEU / ROUGE-L of a book's chunks, WikiText perplexity;
* :mod:`~rklu_llm.eval.general`: lm-eval-harness on the shipped tasks (imported on demand: it loads lm-eval);
* :mod:`~rklu_llm.eval.classification`: classifier unlearning (Acc_ft / Acc_rt / H-Mean, membership attacks);
* :mod:`~rklu_llm.eval.callback`: evaluation during training.

The names below are imported on first use (PEP 562), as the package's own: importing one module of this package
(``rklu_llm.eval.metrics``, which lower layers use) does not import every evaluator.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..lazy import lazy_exports

#: public name -> the module of this package that defines it
_EXPORTS = {
    "AuditSettings": ".audit",
    "audit_summary_row": ".audit",
    "evaluate_audit": ".audit",
    "classification_metrics": ".classification",
    "evaluate_classifier": ".classification",
    "evaluate_copyright": ".copyright",
    "prepare_copyright_data": ".copyright",
    "UTILITY_METRICS": ".metrics",
    "answer_probability": ".metrics",
    "forget_quality": ".metrics",
    "forget_truth_ratio_score": ".metrics",
    "model_utility": ".metrics",
    "normalized_probability": ".metrics",
    "retain_truth_ratio_score": ".metrics",
    "rouge_l_recall": ".metrics",
    "truth_ratio": ".metrics",
    "to_open_unlearning": ".open_unlearning",
    "write_open_unlearning": ".open_unlearning",
    "generate_answers": ".scoring",
    "generate_continuations": ".scoring",
    "score_answers": ".scoring",
    "score_examples": ".scoring",
    "UTILITY_SETS": ".tofu",
    "TofuEvalSettings": ".tofu",
    "compare_to_reference": ".tofu",
    "evaluate_tofu": ".tofu",
    "load_tofu_eval": ".tofu",
    "reference_truth_ratios": ".tofu",
    "summary_row": ".tofu",
}

if TYPE_CHECKING:  # what static analysers and IDEs see
    from .audit import AuditSettings, audit_summary_row, evaluate_audit
    from .classification import classification_metrics, evaluate_classifier
    from .copyright import evaluate_copyright, prepare_copyright_data
    from .metrics import (
        UTILITY_METRICS,
        answer_probability,
        forget_quality,
        forget_truth_ratio_score,
        model_utility,
        normalized_probability,
        retain_truth_ratio_score,
        rouge_l_recall,
        truth_ratio,
    )
    from .open_unlearning import to_open_unlearning, write_open_unlearning
    from .scoring import (
        generate_answers,
        generate_continuations,
        score_answers,
        score_examples,
    )
    from .tofu import (
        UTILITY_SETS,
        TofuEvalSettings,
        compare_to_reference,
        evaluate_tofu,
        load_tofu_eval,
        reference_truth_ratios,
        summary_row,
    )

__all__ = [
    "AuditSettings",
    "TofuEvalSettings",
    "classification_metrics",
    "evaluate_classifier",
    "UTILITY_METRICS",
    "UTILITY_SETS",
    "answer_probability",
    "audit_summary_row",
    "compare_to_reference",
    "evaluate_audit",
    "evaluate_copyright",
    "evaluate_tofu",
    "forget_quality",
    "forget_truth_ratio_score",
    "generate_answers",
    "generate_continuations",
    "load_tofu_eval",
    "model_utility",
    "normalized_probability",
    "prepare_copyright_data",
    "reference_truth_ratios",
    "retain_truth_ratio_score",
    "rouge_l_recall",
    "score_answers",
    "score_examples",
    "summary_row",
    "to_open_unlearning",
    "truth_ratio",
    "write_open_unlearning",
]


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
