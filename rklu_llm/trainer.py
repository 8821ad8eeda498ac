"""`UnlearnTrainer`: one `transformers.Trainer` for every unlearning method; `compute_loss` dispatches on the method.

Each method is one entry of :data:`rklu_llm.methods.METHODS`: its requirements, the batches it accepts, how its
forget term is counted, and its loss, a function of (frozen models, student, batch) that calls
:mod:`rklu_llm.losses`; ``compute_loss`` calls the entry and adds the optional retain term shared by all of them. The
frozen original and augmented models are one :class:`rklu_llm.frozen.FrozenModels` (``self.frozen``), created only
when the method needs them; the augmented model is built by phase 1 (:mod:`rklu_llm.teacher`) when training starts,
in ``config.augmented_output_dir`` (outside the output folder), and is never part of a saved model or checkpoint.

A run is tied to its output folder (:mod:`rklu_llm.run_state`): ``train()`` takes the folder's lock, checks and writes
the run record (the fingerprint: base model, data hashes, every setting that changes the result), and resumes only
the same run, from its newest complete checkpoint. A non-finite loss or gradient norm stops it before the optimizer
step.

A classifier (a `ClassificationUnlearnDataset` of inputs and class labels) is one more kind of batch: it is checked in
``_prepare_classifier`` and its losses are the entries' ``classifier_loss``.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections import defaultdict
from dataclasses import fields
from pathlib import Path

import torch
import torch.nn.functional as F
from datasets import Dataset
from transformers import Trainer, TrainerCallback, TrainingArguments
from transformers.trainer_utils import TrainOutput

from .classifiers import check_logits_shape, classifier_logits, reinitialize, takes_keywords
from .config import METHODS, UnlearnConfig
from .data.classification import ClassificationCollator, ClassificationUnlearnDataset
from .data.qa import ForgetRetainDataset, UnlearnCollator, epoch_of
from .distributed import check_sharding_engaged
from .frozen import AUGMENTED_ADAPTER, FrozenModels, disable_dropout, is_peft
from .hub import write_model_card
from .losses import IGNORE_INDEX, answer_positions, distillation_kl, target_kl, token_nll
from .methods import Step
from .models import check_causal_lm, check_output_dir, lora_config, staged_save
from .paths import portable_path
from .run_state import (
    NOT_IN_FINGERPRINT,
    DivergenceGuard,
    TrainingDiverged,
    begin_run,
    check_run_record,
    checkpoint_problem,
    divergence_hint,
    finish_run,
    model_identity,
    stop_if_non_finite,
    tagged_fields,
    training_settings,
    update_run_record,
)
from .teacher import augmented_fingerprint, build_augmented_model, check_augmented_model, read_marker
from .teacher_check import WEAK, check_forget_set, summary_line

#: the augmented adapter's name, kept importable from here for rklu_llm.eval.callback (which clears it from the best
#: checkpoints it stages; that module is not part of this change)
__all__ = ["AUGMENTED_ADAPTER", "UnlearnTrainer"]

logger = logging.getLogger(__name__)


class _PairingEpoch(TrainerCallback):
    """Re-draws the forget/retain pairs of a :class:`ForgetRetainDataset` at the start of every epoch."""

    def __init__(self, dataset: ForgetRetainDataset):
        self.dataset = dataset

    def on_epoch_begin(self, args, state, control, **kwargs):
        self.dataset.set_epoch(epoch_of(state.epoch))


def _prepare_classifier(model, args: UnlearnConfig, dataset: ClassificationUnlearnDataset):
    """Check a classifier run before any training and return the dataset it steps over.

    Raises on: a method for causal LMs; a retain-using reference without retain data; logits that are not
    ``(B, K)`` with ``K`` the data's number of classes (one forward pass on two forget samples). ``retrain``
    (``Method.reinitialize``) re-initialises the weights here (seeded); ``finetune`` / ``retrain`` step over the
    retain set.
    """
    spec = args.spec
    if spec.batch == "lm":
        raise ValueError(
            f"{args.method} unlearns causal LMs; for a classifier use one of "
            f"{sorted(m for m, s in METHODS.items() if s.batch != 'lm')}."
        )
    if args.use_lora:
        raise ValueError("use_lora trains a causal-LM adapter; a classifier unlearns with all its weights.")
    if spec.uses_retain_data and dataset.retain is None:
        raise ValueError(
            f"{args.method} is a reference that USES RETAIN DATA (it trains on the retain set): build the dataset "
            "with retain=... , or choose a retain-free method."
        )
    if dataset.kind == "input_ids" and spec.perturbs_inputs and not takes_keywords(model):
        raise ValueError(f"{args.method} perturbs token embeddings (inputs_embeds): it needs a transformers model.")
    probe = ClassificationCollator()([dataset[i] for i in range(min(2, len(dataset)))])["forget"]
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    with torch.no_grad():
        logits = classifier_logits(model, {k: v.to(device) for k, v in probe.items()})
    model.train(was_training)
    check_logits_shape(logits, len(probe["labels"]), dataset.num_classes)
    if spec.reinitialize:
        reinitialize(model, args.seed)
    return dataset.over_retain() if spec.uses_retain_data else dataset


class UnlearnTrainer(Trainer):
    """Unlearning with `transformers.Trainer` semantics (logging, checkpoints and resume, accelerate/DeepSpeed/FSDP).

    Args:
        model: the model to unlearn: a causal LM (a PEFT model trains its adapter), or a classifier (a `transformers`
            image / sequence classification model, or any module returning ``(B, K)`` logits; see
            :mod:`rklu_llm.classifiers`) with a classifier method.
        args: an :class:`~rklu_llm.UnlearnConfig`.
        train_dataset: a :class:`~rklu_llm.data.ForgetRetainDataset` (see ``build_unlearning_dataset``), or for a
            classifier a :class:`~rklu_llm.data.classification.ClassificationUnlearnDataset`.
        processing_class: the tokenizer (optional for a classifier; a text classifier's pads ``input_ids``).
        data_collator: defaults to :class:`~rklu_llm.data.UnlearnCollator` (classifiers:
            :class:`~rklu_llm.data.classification.ClassificationCollator`).
        dataset_name: recorded in the model card.
        **kwargs: passed to `transformers.Trainer` (callbacks, optimizers, ...).
    """

    def __init__(
        self,
        model,
        args: UnlearnConfig,
        train_dataset: ForgetRetainDataset,
        processing_class=None,
        data_collator=None,
        dataset_name: str | None = None,
        callbacks=None,
        **kwargs,
    ):
        if not isinstance(args, UnlearnConfig):
            raise TypeError(f"args must be an UnlearnConfig, got {type(args).__name__}.")
        self.task = "classifier" if isinstance(train_dataset, ClassificationUnlearnDataset) else "lm"
        if self.task == "classifier":  # a classifier is one more kind of batch: checked and prepared here
            train_dataset = _prepare_classifier(model, args, train_dataset)
            data_collator = data_collator or ClassificationCollator(getattr(processing_class, "pad_token_id", 0) or 0)
        elif args.spec.batch == "classifier":
            raise ValueError(
                f"{args.method} unlearns classifiers: pass a classifier and a ClassificationUnlearnDataset "
                "(rklu_llm.data.classification.build_classification_unlearning_dataset)."
            )
        if processing_class is None and self.task == "lm":
            raise ValueError("Pass the tokenizer as processing_class (needed for padding and the augmented model).")
        if not isinstance(train_dataset, (ForgetRetainDataset, ClassificationUnlearnDataset)):
            raise TypeError(
                "train_dataset must be a ForgetRetainDataset (build one with rklu_llm.data.build_unlearning_dataset) "
                "or, for a classifier, a ClassificationUnlearnDataset."
            )
        if self.task == "lm":
            check_causal_lm(model.get_base_model() if is_peft(model) else model)
        check_output_dir(args.output_dir, model)
        launched = int(os.environ.get("WORLD_SIZE", "1"))
        if launched > 1 and args.world_size == 1:
            raise RuntimeError(
                f"Launched as {launched} processes, but each would train alone on the same output_dir (a GPU "
                "accelerate config on a machine without GPUs?). On CPUs launch with accelerate_configs/cpu.yaml and "
                "pass --use_cpu; otherwise run on the GPUs the config names."
            )
        spec = args.spec
        if args.retain_mode != "none" and train_dataset.retain is None:
            raise ValueError(
                f"retain_mode={args.retain_mode!r} needs a retain set: build the dataset with retain=... "
                "(or use retain_mode='none')."
            )
        if spec.needs_refusals and getattr(train_dataset, "refusal_answer_ids", None) is None:
            raise ValueError(f"{args.method} needs refusal answers: build the dataset with refusals=load_refusals().")

        self.base_model_name = getattr(getattr(model, "config", None), "_name_or_path", None) or None
        self.dataset_name = dataset_name
        #: identity of the model being unlearned (before any LoRA wrapping): part of the run and augmented fingerprints
        self.base_identity = model_identity(model)
        if args.augmented_model_path is not None:
            check_augmented_model(
                args.augmented_model_path,
                model.config,
                augmented_fingerprint(args, self.base_identity, train_dataset.fingerprint()),
            )
        dtype = torch.bfloat16 if args.bf16 else (torch.float16 if args.fp16 else None)
        #: the frozen original / augmented models (never created for methods that do not use them)
        self.frozen = FrozenModels(model, args.needs_reference, is_peft(model) or args.use_lora, dtype)
        if args.use_lora and not is_peft(model):
            from peft import get_peft_model

            model = get_peft_model(
                model, lora_config(args.lora_r, args.lora_alpha, args.lora_dropout, args.lora_target_modules)
            )
        if args.disable_dropout:
            disable_dropout(model)
        #: the teacher check's result (rklu / fklu with teacher_check), once the frozen models are set up
        self.teacher_check: dict | None = None
        self._metrics: dict[str, list[torch.Tensor]] = defaultdict(list)
        super().__init__(
            model=model,
            args=args,
            train_dataset=train_dataset,
            processing_class=processing_class,
            data_collator=data_collator or UnlearnCollator(processing_class.pad_token_id),
            callbacks=[*(callbacks or []), _PairingEpoch(train_dataset), DivergenceGuard()],
            **kwargs,
        )
        check_sharding_engaged(self)  # an FSDP / DeepSpeed config that accelerate did not honour: stop here
        # Every loss term is divided by its item count over the whole accumulated batch (see compute_loss), so the
        # Trainer must neither divide by the accumulation steps nor hand the counts to the model.
        self.model_accepts_loss_kwargs = False
        self.loss_is_scaled_for_ga = True
        if not args.overwrite_output_dir:
            check_run_record(args.output_dir, self.run_fingerprint())  # refuse another run's folder before any work

    # ------------------------------------------------------------------------------------------------------------
    # The run's identity
    # ------------------------------------------------------------------------------------------------------------
    def augmented_fingerprint(self) -> dict:
        """What defines the augmented model this run builds (see :func:`rklu_llm.teacher.augmented_fingerprint`)."""
        return augmented_fingerprint(self.args, self.base_identity, self.train_dataset.fingerprint())

    def run_fingerprint(self) -> dict:
        """Everything that defines this run's result, as recorded in ``<output_dir>/_rklu_run.json``.

        ``base_model`` (:func:`rklu_llm.run_state.model_identity`), ``data`` (:meth:`ForgetRetainDataset.fingerprint`),
        ``method`` (every UnlearnConfig field of its own that changes the result), ``training`` (the TrainingArguments
        that do, :func:`rklu_llm.run_state.training_settings`) and, for methods that use it, ``augmented`` (the
        fingerprint of the augmented model it builds, or the given one's path and recorded fingerprint).
        """
        args = self.args
        inherited = {spec.name for spec in fields(TrainingArguments)}
        neutral = tagged_fields(args, NOT_IN_FINGERPRINT)  # settings that do not change the result
        method = {
            spec.name: getattr(args, spec.name)
            for spec in fields(args)
            if spec.init and spec.name not in inherited and spec.name not in neutral
        }
        fingerprint = {
            "base_model": self.base_identity,
            "data": self.train_dataset.fingerprint(),
            "method": method,
            "training": training_settings(args),
        }
        if args.spec.needs_augmented:
            if args.augmented_model_path is None:
                fingerprint["augmented"] = self.augmented_fingerprint()
            else:
                fingerprint["augmented"] = {
                    "path": portable_path(args.augmented_model_path),
                    "fingerprint": (read_marker(args.augmented_model_path) or {}).get("fingerprint"),
                }
        return fingerprint

    # ------------------------------------------------------------------------------------------------------------
    # Frozen models
    # ------------------------------------------------------------------------------------------------------------
    @property
    def ref_model(self):
        """The frozen original copy (``None``: not needed, or a LoRA student's base serves); see ``self.frozen``."""
        return self.frozen.original

    @property
    def aug_model(self):
        """The separate augmented model (``None`` when it is an adapter or not needed)."""
        return self.frozen.augmented

    @property
    def augmented_on(self) -> str | None:
        """Where the augmented model lives: "separate" | "reference" | "student", once loaded."""
        return self.frozen.augmented_on

    @property
    def reference_source(self) -> str | None:
        """How the frozen original was made: "path", "deepcopy", "adapter-disabled" (``None``: not needed)."""
        return self.frozen.source

    @property
    def frozen_dtype(self) -> torch.dtype | None:
        return self.frozen.dtype

    def forget_qa_dataset(self) -> Dataset:
        """The tokenized forget set as a QA dataset (phase 1 trains on it)."""
        forget = self.train_dataset.forget
        return Dataset.from_dict({"input_ids": forget["input_ids"], "labels": forget["labels"]})

    def augmented_model_dir(self) -> Path:
        """The augmented model's directory, building it (phase 1) when it does not exist yet (a finished one with
        this run's fingerprint is reused)."""
        if self.args.augmented_model_path is not None:
            return Path(self.args.augmented_model_path)
        original = self.accelerator.unwrap_model(self.model)
        return build_augmented_model(
            original,
            self.processing_class,
            self.forget_qa_dataset(),
            self.args,
            self.args.augmented_output_dir,
            self.augmented_fingerprint(),
        )

    def setup_frozen_models(self) -> None:
        """Build/load the augmented model if the method needs it and prepare frozen models for the accelerator."""
        if self.frozen.ready:
            return
        spec = self.args.spec
        if spec.needs_augmented and spec.trains:
            self.frozen.load_augmented(self.augmented_model_dir(), self.accelerator.unwrap_model(self.model))
        self.frozen.prepare(self)
        if self.args.teacher_check and spec.uses_teacher and self.args.teacher_alpha > 0:
            self.teacher_check = self.run_teacher_check()

    def run_teacher_check(self) -> dict:
        """:func:`rklu_llm.teacher_check.check_teacher` on the forget set with this run's frozen models: logged (a
        warning with what to change when the teacher is weak) and kept in ``self.teacher_check``, the run record and
        the model card."""
        device = self.args.device

        def logits_of(which: str, batch: dict) -> torch.Tensor:
            inputs = {k: v.to(device) for k, v in batch.items() if k in ("input_ids", "attention_mask")}
            return self.frozen.logits(which, self.model, inputs)

        training = self.model.training
        self.model.eval()
        try:
            result = check_forget_set(logits_of, self.train_dataset.forget, self.processing_class, self.args)
        finally:
            self.model.train(training)
        line = summary_line(result)
        if result["verdict"] == WEAK:
            logger.warning("%s\n%s", line, result["advice"])
        else:
            logger.info(line)
        if self.is_world_process_zero():
            update_run_record(self.args.output_dir, teacher_check=result)
        return result

    def frozen_logits(self, which: str, model, batch: dict) -> torch.Tensor:
        """``(B, T, V)`` logits of the frozen ``"original"`` or ``"augmented"`` model on ``batch``
        (:meth:`rklu_llm.frozen.FrozenModels.logits`)."""
        return self.frozen.logits(which, model, batch)

    # ------------------------------------------------------------------------------------------------------------
    # Loss
    # ------------------------------------------------------------------------------------------------------------
    def get_batch_samples(self, epoch_iterator, num_batches: int, device: torch.device):
        """The micro-batches of one optimizer step, and as ``num_items_in_batch`` their item counts per group.

        The Trainer counts ``labels`` of a flat batch; ours are nested (``forget`` / ``retain`` / ``refusal``) with a
        different number of answer tokens each, so every group is counted here, over all micro-batches of the step
        and (``average_tokens_across_devices``) all processes. See :meth:`count_items`.
        """
        batch_samples, _ = super().get_batch_samples(epoch_iterator, num_batches, device)
        return batch_samples, self.count_items(batch_samples)

    def count_items(self, batch_samples: list[dict]) -> dict[str, dict[str, torch.Tensor]] | None:
        """``{group: {"tokens": n, "sequences": m}}``: answer tokens (targets after the shift) and sequences of each
        group over ``batch_samples``, summed over processes and divided by their number.

        Dividing a loss summed over this process's items by that share, then letting DDP average the gradients over
        the processes, gives the gradient of the mean over the whole global batch.
        """
        if not batch_samples:
            return None
        groups = list(batch_samples[0])
        counts = torch.stack(
            [
                torch.stack(
                    [
                        sum(self._count(b[g], "tokens") for b in batch_samples),
                        sum(self._count(b[g], "sequences") for b in batch_samples),
                    ]
                )
                for g in groups
            ]
        ).float()
        processes = 1
        if self.args.average_tokens_across_devices and self.args.world_size > 1:
            counts = self.accelerator.gather(counts.unsqueeze(0)).sum(0)
            processes = self.accelerator.num_processes
        share = counts / processes
        return {g: {"tokens": share[i, 0], "sequences": share[i, 1]} for i, g in enumerate(groups)}

    @staticmethod
    def _count(batch: dict, kind: str) -> torch.Tensor:
        """Answer tokens (``kind="tokens"``) or sequences of one micro-batch group."""
        labels = batch["labels"]
        if kind == "tokens" and labels.dim() > 1:
            return (labels[:, 1:] != IGNORE_INDEX).sum()
        return torch.tensor(labels.shape[0], device=labels.device)  # sequences; a classifier sample is one item

    def _normaliser(self, counts, group: str, kind: str, batch: dict):
        """The divisor of a summed loss term: the accumulated count from :meth:`count_items`, or this micro-batch's
        own count when none is given (a direct ``compute_loss`` call: plain means)."""
        if isinstance(counts, dict) and group in counts:
            return counts[group][kind]
        return self._count(batch, kind)

    def _step(self, num_items) -> Step:
        """What a method's loss function reads besides the frozen models, the student and the batch."""
        return Step(self.args, num_items, self.state.global_step, self.accelerator.unwrap_model)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """``L = forget_weight * L_forget + retain_weight * L_retain`` on one micro-batch; ``L_forget`` is the method
        entry's ``lm_loss`` (or ``classifier_loss``, :meth:`_classifier_loss`).

        Each term is a sum over its items divided by the number of those items in the whole accumulated batch
        (``num_items_in_batch``, from :meth:`get_batch_samples`), so ``per_device_train_batch_size 8`` and
        ``4 x gradient_accumulation_steps 2`` give the same gradient. The forget term's items are the entry's
        ``counts`` (forget answer tokens; refusal answer tokens for idk; forget sequences for the sequence-level npo
        and dpo); the retain term's (rt, kl) are the retain answer tokens.

        Called directly (``num_items_in_batch=None``) every term is a mean over this micro-batch. A non-finite loss
        stops the run here, before backward (:class:`rklu_llm.run_state.TrainingDiverged`).
        """
        args, spec, counts = self.args, self.args.spec, num_items_in_batch
        if self.task == "classifier":
            return self._classifier_loss(model, inputs, return_outputs, counts)
        if spec.lm_loss is None:
            raise ValueError(f"{args.method} has no training step (it is a weight edit: call train()).")
        group, kind = spec.counts
        num_items = self._normaliser(counts, group, kind, inputs[group])
        forget_loss, logits = spec.lm_loss(self.frozen, model, inputs, self._step(num_items))
        loss = args.forget_weight * forget_loss
        parts = {"forget term": forget_loss}
        self._record("forget/loss", forget_loss * num_items, self._count(inputs[group], kind))
        if logits is not None:  # summed NLL (num_items=1) over this micro-batch's answer tokens
            forget = inputs["forget"]
            self._record("forget/nll", token_nll(logits.detach(), forget["labels"], 1.0), self._count(forget, "tokens"))
        if args.retain_mode != "none":
            retain_loss = self._retain_term(model, inputs["retain"], counts)
            loss = loss + args.retain_weight * retain_loss
            parts["retain term"] = retain_loss
        stop_if_non_finite(loss, self.state.global_step + 1, divergence_hint(args), parts)
        return (loss, None) if return_outputs else loss

    def _retain_term(self, model, retain: dict, counts) -> torch.Tensor:
        """The retain term on the retain answer tokens: ``rt`` = NLL, ``kl`` = forward ``KL(p_original || p_student)``;
        a sum over the tokens divided by their number in the accumulated batch."""
        args = self.args
        retain_tokens = self._normaliser(counts, "retain", "tokens", retain)
        retain_logits = model(input_ids=retain["input_ids"], attention_mask=retain["attention_mask"]).logits
        if args.retain_mode == "rt":
            retain_loss = token_nll(retain_logits, retain["labels"], retain_tokens)
        else:  # "kl": forward KL(p_original || p_student) on the retain answers
            student, mask = answer_positions(retain_logits, retain["labels"])
            original = self.frozen.answer_logits("original", model, retain, mask)
            retain_loss = distillation_kl(
                student, original, direction="forward", chunk_size=args.kl_chunk_size, num_items=retain_tokens
            )
            self._record(
                "retain/nll", token_nll(retain_logits.detach(), retain["labels"], 1.0), self._count(retain, "tokens")
            )
        self._record("retain/loss", retain_loss * retain_tokens, self._count(retain, "tokens"))
        return retain_loss

    def _record(self, name: str, total: torch.Tensor, count: torch.Tensor) -> None:
        """Accumulate a logged metric as (sum over this micro-batch's items, their number); logged as sum / number
        over the logging window and all processes."""
        self._metrics[name].append(torch.stack([total.detach().float().reshape(()), count.float().to(total.device)]))

    # ------------------------------------------------------------------------------------------------------------
    # Classifier unlearning: batches of inputs and class labels, logits (B, K)
    # ------------------------------------------------------------------------------------------------------------
    def original_class_logits(self, batch: dict) -> torch.Tensor:
        """``(B, K)`` logits of the frozen original classifier on ``batch``."""
        return self.frozen.class_logits(batch)

    def _classifier_loss(self, model, inputs: dict, return_outputs: bool, counts=None):
        """``L = forget_weight * L_forget + retain_weight * L_retain`` for a classifier, ``L_forget`` the method
        entry's ``classifier_loss``. The references that use retain data (``Method.uses_retain_data``: finetune,
        retrain) train with CE on the retain set only.

        Every term is a mean over the samples of the whole accumulated batch (this micro-batch's mean times its share
        of the samples, ``counts`` from :meth:`get_batch_samples`), as for the LM methods.
        """
        args, spec = self.args, self.args.spec

        def share(group: str, batch: dict) -> torch.Tensor:  # this micro-batch's samples / the accumulated samples
            return self._count(batch, "sequences") / self._normaliser(counts, group, "sequences", batch)

        if spec.uses_retain_data:
            retain = inputs["retain"]
            loss = F.cross_entropy(classifier_logits(model, retain).float(), retain["labels"])
            self._record("retain/loss", loss * self._count(retain, "sequences"), self._count(retain, "sequences"))
            stop_if_non_finite(loss, self.state.global_step + 1, divergence_hint(args), {"retain term": loss})
            loss = loss * share("retain", retain)
            return (loss, None) if return_outputs else loss
        if spec.classifier_loss is None:
            raise ValueError(f"{args.method} does not unlearn classifiers.")
        forget = inputs["forget"]
        n_forget = self._count(forget, "sequences")
        logits, forget_loss = spec.classifier_loss(self.frozen, model, forget, self._step(n_forget))
        self._record("forget/loss", forget_loss * n_forget, n_forget)
        self._record("forget/accuracy", (logits.detach().argmax(-1) == forget["labels"]).float().sum(), n_forget)
        parts = {"forget term": forget_loss}
        loss = args.forget_weight * forget_loss * share("forget", forget)
        if args.retain_mode != "none":
            retain = inputs["retain"]
            retain_logits = classifier_logits(model, retain)
            if args.retain_mode == "rt":
                retain_loss = F.cross_entropy(retain_logits.float(), retain["labels"])
            else:  # "kl": forward KL(p_original || p_student) on the retain samples
                retain_loss = target_kl(retain_logits, torch.softmax(self.original_class_logits(retain).float(), -1))
            loss = loss + args.retain_weight * retain_loss * share("retain", retain)
            parts["retain term"] = retain_loss
            n_retain = self._count(retain, "sequences")
            self._record("retain/loss", retain_loss * n_retain, n_retain)
        stop_if_non_finite(loss, self.state.global_step + 1, divergence_hint(args), parts)
        return (loss, None) if return_outputs else loss

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if self._metrics and "loss" in logs:
            for name, values in self._metrics.items():
                total, count = self.accelerator.gather(torch.stack(values).sum(0).unsqueeze(0)).sum(0).tolist()
                logs[name] = total / count if count else 0.0
            self._metrics.clear()
        super().log(logs, start_time)

    # ------------------------------------------------------------------------------------------------------------
    # Training entry point, task arithmetic, saving
    # ------------------------------------------------------------------------------------------------------------
    def train(self, resume_from_checkpoint=None, trial=None, ignore_keys_for_eval=None, **kwargs):
        """Phase 1 (when needed), then the unlearning loop; for ``ta``, the weight edit instead of a loop.

        First the run is tied to ``output_dir`` (:func:`rklu_llm.run_state.begin_run`): its lock is taken, the run
        record checked against :meth:`run_fingerprint` (another run's folder is refused; ``overwrite_output_dir``
        clears it first) and written.

        Args:
            resume_from_checkpoint: ``True``: continue from the newest *complete* checkpoint of ``output_dir`` (a
                fresh start when there is none; newer incomplete ones are skipped and deleted, with a message);
                a path: that checkpoint (refused when incomplete); ``None``: from the start.
        """
        checkpoint = begin_run(self.args, "unlearn", self.run_fingerprint(), resume=resume_from_checkpoint is True)
        if resume_from_checkpoint is True:
            resume_from_checkpoint = checkpoint
        elif resume_from_checkpoint:
            problem = checkpoint_problem(resume_from_checkpoint)
            if problem is not None:
                raise ValueError(
                    f"Cannot resume from {portable_path(resume_from_checkpoint)!r}: {problem}. Pass "
                    "resume_from_checkpoint=True to use the newest complete checkpoint."
                )
        try:
            if not self.args.spec.trains:
                return self._edit()
            self.setup_frozen_models()
            return super().train(resume_from_checkpoint, trial, ignore_keys_for_eval, **kwargs)
        except TrainingDiverged:
            finish_run(self.args, self.state.global_step, status="diverged")
            raise

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        super()._load_from_checkpoint(resume_from_checkpoint, model)
        student = self.accelerator.unwrap_model(model if model is not None else self.model)
        self.frozen.restore_student_adapter(student, resume_from_checkpoint)

    def _edit(self) -> TrainOutput:
        """A method without a training loop (``Method.edit``, task arithmetic): the weight edit, logged."""
        student = self.accelerator.unwrap_model(self.model)
        metrics = self.args.spec.edit(student, self.augmented_model_dir(), self.args)
        self.log(metrics)
        return TrainOutput(global_step=0, training_loss=0.0, metrics=metrics)

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """Save weights, tokenizer and a model card (never the augmented model).

        A user-level save refuses non-finite weights, is staged and then moved into place (an interrupted save never
        leaves a half-written model in ``output_dir``), marks the run record ``finished`` and releases the folder's
        lock; with ``keep_augmented=False`` it then deletes the augmented model this run built.
        """
        output_dir = output_dir or self.args.output_dir
        with self.frozen.hidden_from_saves(self.accelerator.unwrap_model(self.model)):
            if _internal_call:  # checkpoints: the Trainer's own layout
                super().save_model(output_dir, _internal_call=True)
                if self.is_world_process_zero():
                    self._write_card(output_dir)
                return
            staged_save(self, output_dir, self._write_card)  # refuses non-finite weights
        if Path(output_dir).resolve() == Path(self.args.output_dir).resolve():
            finish_run(self.args, self.state.global_step)
            built = self.args.augmented_model_path is None and self.args.spec.needs_augmented
            if built and not self.args.keep_augmented and self.is_world_process_zero():
                shutil.rmtree(self.args.augmented_output_dir, ignore_errors=True)
        if self.args.push_to_hub:
            self.push_to_hub(commit_message="Unlearned model", revision=self.args.hub_revision)

    def _write_card(self, output_dir, metrics: dict | None = None) -> None:
        fingerprint = getattr(self.train_dataset, "fingerprint", None)  # counts and hashes, never the data
        forget_data = {k: v for k, v in fingerprint().items() if v is not None} if fingerprint else None
        write_model_card(
            output_dir,
            self.args,
            self.base_model_name,
            self.dataset_name,
            metrics,
            forget_data,
            teacher_check=getattr(self, "teacher_check", None),
        )

    def create_model_card(self, *args, **kwargs) -> None:
        """Used by `push_to_hub`: the rklu_llm card instead of the generic Trainer draft."""
        if self.is_world_process_zero():
            self._write_card(self.args.output_dir)
