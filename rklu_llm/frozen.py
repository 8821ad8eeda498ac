"""`FrozenModels`: the original ``o`` and the augmented model ``a`` that a method reads, as one object.

* The original is a frozen copy of the student's initial weights, loaded from the path the model came from (TRL's
  way, right when the weights are sharded) or deep-copied for in-memory models (:func:`rklu_llm.models.copy_model`);
  when the student trains through LoRA it is the student itself with its adapters disabled (no second copy).
* The augmented model (RKL-U, FKL-U) is loaded after phase 1 (:mod:`rklu_llm.teacher`). As a LoRA adapter it rides on
  the frozen original (or, with a LoRA student, on the student's own base), so ``o`` and ``a`` share one copy of the
  base weights; :meth:`FrozenModels.hidden_from_saves` keeps it out of every save and checkpoint.

Frozen models are prepared once for DeepSpeed (ZeRO-3 sharded) / FSDP, in eval mode with dropout off; they exist
only when the method (or the retain KL term) needs them.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch
from accelerate.utils import extract_model_from_parallel
from peft import PeftModel
from transformers import AutoModelForCausalLM

from .classifiers import classifier_logits
from .models import copy_model
from .teacher import is_adapter_dir

AUGMENTED_ADAPTER = "augmented"


def disable_dropout(model: torch.nn.Module) -> None:
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0


def freeze(model: torch.nn.Module, dtype: torch.dtype | None) -> torch.nn.Module:
    """``model`` in ``dtype`` (None: as it is), without gradients, in eval mode, dropout off."""
    if dtype is not None:
        model.to(dtype)
    model.requires_grad_(False)
    model.eval()
    disable_dropout(model)
    return model


def is_peft(model) -> bool:
    return isinstance(model, PeftModel)


@contextlib.contextmanager
def _active_adapter(peft_model, name: str):
    """Temporarily make adapter ``name`` the active one (frozen), then restore the previous adapter."""
    previous = peft_model.active_adapter
    peft_model.set_adapter(name, inference_mode=True)
    try:
        yield
    finally:
        peft_model.set_adapter(previous)


def item_key(batch: dict, mask: torch.Tensor, row: int) -> bytes:
    """What identifies one item's answer logits: its tokens (padding left out) and its answer positions counted from
    its first token, so the same item keys alike whatever it was batched and padded with."""
    valid = batch["attention_mask"][row].bool()
    start = int(valid.nonzero()[0, 0]) if valid.any() else 0
    positions = mask[row].nonzero().flatten() - start
    return batch["input_ids"][row][valid].cpu().numpy().tobytes() + b"|" + positions.cpu().numpy().tobytes()


class FrozenModels:
    """The frozen original and augmented models of one run.

    Args:
        student: the model being unlearned, before any LoRA wrapping by the trainer.
        needs_original: whether the method (or the retain KL term) reads the original.
        student_is_lora: the student trains through LoRA (then the original is its base, adapters disabled).
        dtype: the frozen models' dtype (bf16 / fp16 runs), or None to keep the student's.
        cache_answers: keep every item's answer logits (:meth:`answer_logits`) in CPU memory once computed, keyed by
            the item's tokens and answer positions, so that later epochs skip the frozen forward passes.
    """

    def __init__(
        self,
        student,
        needs_original: bool,
        student_is_lora: bool,
        dtype: torch.dtype | None,
        cache_answers: bool = False,
    ):
        self.dtype = dtype
        #: ``{"original" | "augmented": {item key: (n, V) answer logits}}`` under ``cache_answers``, else None
        self.answer_cache: dict[str, dict[bytes, torch.Tensor]] | None = {} if cache_answers else None
        #: the frozen original copy (None: not needed, or the LoRA student's base serves)
        self.original = None
        #: how the original was made: "path" (loaded from the model's path), "deepcopy", "adapter-disabled"
        self.source = None
        if needs_original and not student_is_lora:
            reference, self.source = copy_model(student)
            self.original = freeze(reference, dtype)
        elif needs_original:
            self.source = "adapter-disabled"
        #: a separate augmented model (a full-weight folder); None when it is an adapter
        self.augmented = None
        #: where the augmented model lives: "separate" | "reference" | "student", once loaded
        self.augmented_on = None
        self.ready = False

    def load_augmented(self, path: str | Path, student) -> None:
        """Load the augmented model from ``path`` (a full model or a LoRA adapter) beside ``student`` (unwrapped)."""
        if not is_adapter_dir(path):
            loaded = AutoModelForCausalLM.from_pretrained(path, dtype=next(student.parameters()).dtype)
            self.augmented = freeze(loaded, self.dtype)
            self.augmented_on = "separate"
        elif self.original is not None:
            # Full student: the adapter rides on the frozen original copy (one copy of base weights for o and a).
            self.original = freeze(PeftModel.from_pretrained(self.original, path, adapter_name=AUGMENTED_ADAPTER), None)
            self.augmented_on = "reference"
        else:
            # LoRA student: a second, frozen adapter on the student's own base.
            active = student.active_adapter
            student.load_adapter(str(path), adapter_name=AUGMENTED_ADAPTER, is_trainable=False)
            student.set_adapter(active)
            self.augmented_on = "student"

    def prepare(self, trainer) -> None:
        """Place the frozen models for ``trainer``'s accelerator: DeepSpeed (ZeRO-3 sharded), FSDP, or one device."""
        for name in ("original", "augmented"):
            model = getattr(self, name)
            if model is None:
                continue
            if trainer.is_deepspeed_enabled:  # trl is slow to import and serves DeepSpeed / FSDP runs only
                from trl.models.utils import prepare_deepspeed

                model = prepare_deepspeed(model, trainer.accelerator)
            elif trainer.is_fsdp_enabled:
                from trl.models.utils import prepare_fsdp

                model = prepare_fsdp(model, trainer.accelerator)
            else:
                model = trainer.accelerator.prepare_model(model, evaluation_mode=True)
            setattr(self, name, model)
        self.ready = True

    @torch.no_grad()
    def logits(self, which: str, student, batch: dict) -> torch.Tensor:
        """``(B, T, V)`` logits of the frozen ``"original"`` or ``"augmented"`` model on ``batch``; ``student`` (the
        model being trained, possibly wrapped) serves when the frozen model is its base or an adapter on it."""
        inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
        if which == "original":
            if self.original is None:  # LoRA student: its base with every adapter disabled
                with extract_model_from_parallel(student).disable_adapter():
                    return student(**inputs).logits
            if self.augmented_on == "reference":
                with extract_model_from_parallel(self.original).disable_adapter():
                    return self.original(**inputs).logits
            return self.original(**inputs).logits
        if which != "augmented":
            raise ValueError(f"which must be 'original' or 'augmented', got {which!r}")
        if self.augmented_on == "separate":
            return self.augmented(**inputs).logits
        if self.augmented_on == "reference":
            return self.original(**inputs).logits
        if self.augmented_on == "student":
            with _active_adapter(extract_model_from_parallel(student), AUGMENTED_ADAPTER):
                return student(**inputs).logits
        raise RuntimeError("The augmented model is not loaded; call setup_frozen_models() first.")

    def answer_logits(self, which: str, student, batch: dict, mask: torch.Tensor) -> torch.Tensor:
        """``(N, V)``: :meth:`logits` at the ``N`` answer positions ``mask`` (``(B, T-1)``, from
        :func:`rklu_llm.losses.answer_positions`) selects, each predicting the next token. With ``cache_answers`` a
        batch whose every item was seen before is answered from the cache, without a forward pass."""
        if self.answer_cache is None:
            return self.logits(which, student, batch)[:, :-1][mask]
        cache = self.answer_cache.setdefault(which, {})
        keys = [item_key(batch, mask, row) for row in range(mask.shape[0])]
        if not all(key in cache for key in keys):
            logits = self.logits(which, student, batch)[:, :-1]
            for row, key in enumerate(keys):
                cache[key] = logits[row][mask[row]].cpu()  # boolean indexing copies: the batch's logits are freed
        return torch.cat([cache[key] for key in keys]).to(mask.device)

    @torch.no_grad()
    def class_logits(self, batch: dict) -> torch.Tensor:
        """``(B, K)`` logits of the frozen original classifier on ``batch``."""
        return classifier_logits(self.original, batch)

    @contextlib.contextmanager
    def hidden_from_saves(self, student):
        """Hide the augmented adapter riding on a LoRA ``student`` (unwrapped) from PEFT's ``save_pretrained`` (which
        would write it into an ``augmented/`` sub-folder of the saved model and of every checkpoint)."""
        if self.augmented_on != "student":
            yield
            return
        hidden = student.peft_config.pop(AUGMENTED_ADAPTER)
        try:
            yield
        finally:
            student.peft_config[AUGMENTED_ADAPTER] = hidden

    @classmethod
    @contextlib.contextmanager
    def out_of_saves(cls, trainer):
        """Every save of ``trainer``'s model within leaves out the frozen models riding on it
        (:meth:`hidden_from_saves` of the trainer's ``frozen``); a trainer without frozen models saves as it is. The
        trainer's own saves and the evaluation callback's best checkpoints go through here."""
        frozen = getattr(trainer, "frozen", None)
        if not isinstance(frozen, cls):
            yield
            return
        with frozen.hidden_from_saves(trainer.accelerator.unwrap_model(trainer.model)):
            yield

    def restore_student_adapter(self, student, checkpoint: str) -> None:
        """After a resume: with a second adapter on the student, some transformers 5.x releases restore only the
        adapters saved in sub-folders; load the trained adapter from the checkpoint's top level explicitly."""
        if self.augmented_on != "student":
            return
        active = student.active_adapter
        student.load_adapter(checkpoint, adapter_name=active, is_trainable=True)
        student.set_adapter(active)
