"""Model cards for unlearned checkpoints (written on every save, used by `push_to_hub`)."""

from __future__ import annotations

import json
from pathlib import Path

from huggingface_hub import ModelCard, ModelCardData

from .config import METHODS

_BODY = """
# {title}

This checkpoint was produced by machine unlearning with the `rklu_llm` toolkit.

- **Base model:** `{base_model}`
- **Method:** `{method}`: {loss}
- **Retain term:** `{retain_mode}`{retain_weight}
- **Forget data:** {dataset}
{method_details}
## Training configuration

```json
{config}
```
{metrics}
## Intended use and limits

Unlearning lowers the model's ability to reproduce the forget data; it is not a proof of erasure. Evaluate the
result (for instance with `rklu_llm.eval.tofu`) before relying on it.
"""

_CARD_FIELDS = (
    "method", "divergence", "teacher_alpha", "augment_epochs", "augment_learning_rate", "augment_lora",
    "retain_mode", "retain_weight", "forget_weight", "npo_beta", "dpo_beta", "ta_scale", "use_lora", "lora_r",
    "lora_alpha", "learning_rate", "weight_decay", "num_train_epochs", "per_device_train_batch_size",
    "gradient_accumulation_steps", "max_length", "seed", "bf16",
)


def model_card(config, base_model: str | None, dataset: str | None = None, metrics: dict | None = None) -> ModelCard:
    """A `huggingface_hub.ModelCard` describing an unlearning run."""
    spec = METHODS[config.method]
    details = ""
    if config.method in ("rklu", "fklu"):
        details = (
            f"- **Teacher:** `l_t = l_o - {config.teacher_alpha} * relu(l_aug - l_o)`; distillation with "
            f"{config.divergence} KL\n"
        )
    metrics_text = ""
    if metrics:
        metrics_text = "\n## Results\n\n" + "\n".join(f"- `{k}`: {v}" for k, v in sorted(metrics.items())) + "\n"
    data = ModelCardData(
        base_model=base_model if base_model and not Path(base_model).exists() else None,
        library_name="transformers",
        tags=["rklu_llm", "machine-unlearning", config.method],
        datasets=[dataset] if dataset and "/" in dataset else None,
    )
    body = _BODY.format(
        title=f"{config.method.upper()} unlearned model",
        base_model=base_model or "unknown",
        method=config.method,
        loss=spec.loss,
        retain_mode=config.retain_mode,
        retain_weight="" if config.retain_mode == "none" else f" (weight {config.retain_weight})",
        dataset=dataset or "not recorded",
        method_details=details,
        config=json.dumps({k: getattr(config, k) for k in _CARD_FIELDS}, indent=2),
        metrics=metrics_text,
    )
    return ModelCard(f"---\n{data.to_yaml()}\n---\n{body}")


def write_model_card(output_dir: str | Path, config, base_model: str | None, dataset: str | None = None,
                     metrics: dict | None = None) -> Path:
    """Write ``README.md`` (the model card) into ``output_dir``."""
    path = Path(output_dir) / "README.md"
    model_card(config, base_model, dataset, metrics).save(path)
    return path
