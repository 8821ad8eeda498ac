"""Classifiers for class and sample unlearning: how the toolkit calls one, small models to train, re-initialisation.

Any of these is a classifier for :class:`~rklu_llm.UnlearnTrainer` and :mod:`rklu_llm.eval.classification`:

* a `transformers` ``AutoModelForImageClassification`` / ``AutoModelForSequenceClassification`` model, called with
  keyword inputs (``pixel_values=...`` or ``input_ids=..., attention_mask=...``);
* any ``torch.nn.Module`` whose forward takes the input tensor (``pixel_values`` or ``input_ids``) as its one
  positional argument, or the inputs as keywords when there are several.

The output is ``(B, K)`` logits, or an object with a ``.logits`` attribute, or a tuple whose first element is the
logits (:func:`classifier_logits`).
"""

from __future__ import annotations

import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from torch import nn
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    PreTrainedModel,
    PreTrainedTokenizerFast,
    ResNetConfig,
    ResNetForImageClassification,
)

#: batch keys that are not model inputs
TARGET_KEYS = ("labels", "index", "random_labels")


def _inner(model: nn.Module) -> nn.Module:
    """The model under DDP / accelerate wrappers (``.module``)."""
    while hasattr(model, "module") and isinstance(model.module, nn.Module):
        model = model.module
    return model


def takes_keywords(model: nn.Module) -> bool:
    """True for `transformers` / PEFT models (keyword inputs), False for plain modules."""
    inner = _inner(model)
    return isinstance(inner, PreTrainedModel) or hasattr(inner, "peft_config")


def model_inputs(batch: dict) -> dict:
    """The model inputs of a classification batch (everything except labels and bookkeeping)."""
    return {k: v for k, v in batch.items() if k not in TARGET_KEYS}


def classifier_logits(model: nn.Module, batch: dict) -> torch.Tensor:
    """``(B, K)`` logits of ``model`` on a classification batch (see the module docstring for the calling rules)."""
    inputs = model_inputs(batch)
    if takes_keywords(model) or len(inputs) > 1:
        out = model(**inputs)
    else:
        out = model(next(iter(inputs.values())))
    if hasattr(out, "logits"):
        out = out.logits
    elif isinstance(out, (tuple, list)):
        out = out[0]
    return out


def check_logits_shape(logits: torch.Tensor, batch_size: int, num_classes: int | None = None) -> None:
    """Raise unless ``logits`` is ``(batch_size, K)`` with ``K >= 2`` (and ``K == num_classes`` when given)."""
    if not isinstance(logits, torch.Tensor) or logits.dim() != 2 or logits.shape[0] != batch_size:
        shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise ValueError(
            f"A classifier must return logits of shape (B, K) = ({batch_size}, K); got {shape}. Pass a classification "
            "model (AutoModelForImageClassification / AutoModelForSequenceClassification, or a module returning "
            "(B, K) logits), not a language model."
        )
    if logits.shape[1] < 2:
        raise ValueError(f"The classifier has K = {logits.shape[1]} output; unlearning a class needs K >= 2.")
    if num_classes is not None and logits.shape[1] != num_classes:
        raise ValueError(
            f"The classifier has K = {logits.shape[1]} outputs but the data has {num_classes} classes; pass the "
            "matching num_classes or model."
        )


class SmallCNN(nn.Module):
    """A small CNN for 28x28 (or any size) images: two conv-ReLU-maxpool blocks, a hidden layer, ``K`` logits.

    ``conv(C -> w, 3x3) - ReLU - maxpool 2 - conv(w -> 2w, 3x3) - ReLU - maxpool 2 - linear(hidden) - ReLU -
    linear(K)``; ``forward(pixel_values)`` takes ``(B, C, H, W)`` and returns ``(B, K)``.
    """

    def __init__(
        self, num_classes: int = 10, in_channels: int = 1, image_size: int = 28, width: int = 8, hidden: int = 128
    ):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        side = image_size // 4
        self.head = nn.Sequential(
            nn.Flatten(), nn.Linear(2 * width * side * side, hidden), nn.ReLU(), nn.Linear(hidden, num_classes)
        )

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(pixel_values))


def small_resnet(num_classes: int, num_channels: int = 1, class_names=None):
    """A small `transformers` ``ResNetForImageClassification`` (basic blocks, widths 16/32/64, one block per stage;
    about 0.2M parameters) from a ``ResNetConfig``: the `transformers` image-classification path."""
    names = list(class_names) if class_names is not None else [str(i) for i in range(num_classes)]
    config = ResNetConfig(
        num_channels=num_channels,
        embedding_size=16,
        hidden_sizes=[16, 32, 64],
        depths=[1, 1, 1],
        layer_type="basic",
        downsample_in_first_stage=False,
        num_labels=num_classes,
        id2label=dict(enumerate(names)),
        label2id={n: i for i, n in enumerate(names)},
    )
    return ResNetForImageClassification(config)


def small_text_classifier(
    tokenizer,
    num_classes: int,
    class_names=None,
    hidden: int = 64,
    layers: int = 2,
    max_length: int = 128,
    dropout: float = 0.1,
):
    """A small `transformers` ``BertForSequenceClassification`` (``layers`` x ``hidden``) for ``tokenizer``'s
    vocabulary.

    ``dropout`` applies to the hidden states (``nn.Dropout`` modules, which `UnlearnTrainer` switches off); attention
    dropout is 0 so that an unlearning run is deterministic.

    SmolLM2-135M as a sequence classifier would also work (``AutoModelForSequenceClassification`` on its weights),
    but training it and its retrain oracle on thousands of passages is hours on a CPU; this one trains in minutes.
    """
    names = list(class_names) if class_names is not None else [str(i) for i in range(num_classes)]
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=max(1, hidden // 32),
        intermediate_size=2 * hidden,
        max_position_embeddings=max_length,
        pad_token_id=tokenizer.pad_token_id,
        hidden_dropout_prob=dropout,
        attention_probs_dropout_prob=0.0,
        num_labels=num_classes,
        id2label=dict(enumerate(names)),
        label2id={n: i for i, n in enumerate(names)},
    )
    return BertForSequenceClassification(config)


def train_text_tokenizer(texts, vocab_size: int = 8000):
    """A lower-cased WordPiece tokenizer trained on ``texts`` (offline, seconds), as a `PreTrainedTokenizerFast`
    that adds ``[CLS] ... [SEP]`` and pads with ``[PAD]``."""
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]"]
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    tok.train_from_iterator(texts, trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=specials))
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", cls), ("[SEP]", sep)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]"
    )


@torch.no_grad()
def reinitialize(model: nn.Module, seed: int = 0) -> nn.Module:
    """Re-draw every weight of ``model`` in place (seeded; the global RNG is left as it was), for retraining.

    A `transformers` model gets the weights of a freshly built model of the same config; a plain module has
    ``reset_parameters()`` called on every sub-module that defines it.

    Raises:
        ValueError: a plain module holds parameters that no ``reset_parameters()`` covers.
    """
    inner = _inner(model)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if isinstance(inner, PreTrainedModel):
            fresh = type(inner)(inner.config)
            inner.load_state_dict(fresh.state_dict())
            return model
        covered = set()
        for module in inner.modules():
            if callable(getattr(module, "reset_parameters", None)):
                module.reset_parameters()
                covered.update(id(p) for p in module.parameters(recurse=False))
    left = [name for name, p in inner.named_parameters() if id(p) not in covered]
    if left:
        raise ValueError(
            f"Cannot re-initialise parameter(s) {left[:5]}: no reset_parameters() covers them. Pass a freshly "
            "initialised model and method='finetune' instead of 'retrain'."
        )
    return model
