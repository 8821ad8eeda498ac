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
:func:`rklu_llm.run_inputs.prepare_classifier` and its losses are the entries' ``classifier_loss``.

The parts below the trainer: :mod:`rklu_llm.run_inputs` (the inputs checked before any training),
:mod:`rklu_llm.run_fingerprint` (what defines the run, where it resumes), :mod:`rklu_llm.objective` (the loss of one
micro-batch, both kinds of batch) and :mod:`rklu_llm.item_counts` (what each loss term is divided by, logged metrics).
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import torch
from datasets import Dataset
from transformers import Trainer, TrainerCallback
from transformers.trainer_utils import TrainOutput

from .config import UnlearnConfig
from .data.qa import ForgetRetainDataset, epoch_of
from .distributed import check_sharding_engaged
from .frozen import FrozenModels, disable_dropout, is_peft
from .hub import write_model_card
from .item_counts import Counts, LoggedMetrics, count_items
from .methods import Step
from .models import add_lora, lora_config, staged_save
from .objective import classifier_objective, lm_objective
from .run_fingerprint import begin_unlearning_run, run_fingerprint
from .run_inputs import checked_inputs
from .run_state import (
    DivergenceGuard,
    TrainingDiverged,
    check_run_record,
    finish_run,
    model_identity,
    update_run_record,
)
from .teacher import augmented_fingerprint, build_augmented_model, check_augmented_model
from .teacher_check import WEAK, check_forget_set, summary_line

logger = logging.getLogger(__name__)


class _PairingEpoch(TrainerCallback):
    """Re-draws the forget/retain pairs of a :class:`ForgetRetainDataset` at the start of every epoch."""

    def __init__(self, dataset: ForgetRetainDataset):
        self.dataset = dataset

    def on_epoch_begin(self, args, state, control, **kwargs):
        self.dataset.set_epoch(epoch_of(state.epoch))


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
        self.task, train_dataset, data_collator = checked_inputs(
            model, args, train_dataset, processing_class, data_collator
        )
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
        self.frozen = FrozenModels(
            model, args.needs_reference, is_peft(model) or args.use_lora, dtype, args.cache_frozen_answers
        )
        if args.use_lora and not is_peft(model):
            model = add_lora(
                model, lora_config(args.lora_r, args.lora_alpha, args.lora_dropout, args.lora_target_modules), args.seed
            )
        if args.disable_dropout:
            disable_dropout(model)
        #: the teacher check's result (rklu / fklu with teacher_check), once the frozen models are set up
        self.teacher_check: dict | None = None
        self._metrics = LoggedMetrics()
        super().__init__(
            model=model,
            args=args,
            train_dataset=train_dataset,
            processing_class=processing_class,
            data_collator=data_collator,
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
        """Everything that defines this run's result (:func:`rklu_llm.run_fingerprint.run_fingerprint`)."""
        return run_fingerprint(self.args, self.base_identity, self.train_dataset.fingerprint())

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
        if result["saturated"]:
            logger.warning(result["saturation_note"])
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

    def count_items(self, batch_samples: list[dict]) -> Counts | None:
        """:func:`rklu_llm.item_counts.count_items` over this step's micro-batches (and, with
        ``average_tokens_across_devices``, over all processes)."""
        if self.args.average_tokens_across_devices and self.args.world_size > 1:
            return count_items(batch_samples, self.accelerator.gather, self.accelerator.num_processes)
        return count_items(batch_samples)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """``L = forget_weight * L_forget + retain_weight * L_retain`` on one micro-batch (:mod:`rklu_llm.objective`);
        ``L_forget`` is the method entry's ``lm_loss`` (or, on a classifier batch, ``classifier_loss``).

        Each term is a sum over its items divided by the number of those items in the whole accumulated batch
        (``num_items_in_batch``, from :meth:`get_batch_samples`), so ``per_device_train_batch_size 8`` and
        ``4 x gradient_accumulation_steps 2`` give the same gradient. Called directly (``num_items_in_batch=None``)
        every term is a mean over this micro-batch. A non-finite loss stops the run here, before backward
        (:class:`rklu_llm.run_state.TrainingDiverged`).
        """
        step = Step(self.args, None, self.state.global_step, self.accelerator.unwrap_model)
        objective = classifier_objective if self.task == "classifier" else lm_objective
        loss = objective(self.frozen, model, inputs, num_items_in_batch, self._metrics, step)
        return (loss, None) if return_outputs else loss

    def original_class_logits(self, batch: dict) -> torch.Tensor:
        """``(B, K)`` logits of the frozen original classifier on ``batch``."""
        return self.frozen.class_logits(batch)

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if self._metrics and "loss" in logs:
            logs.update(self._metrics.averages(self.accelerator.gather))
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
        resume_from_checkpoint = begin_unlearning_run(self.args, self.run_fingerprint(), resume_from_checkpoint)
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
        with FrozenModels.out_of_saves(self):
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
