"""`UnlearnConfig`: every knob of an unlearning run, as a `transformers.TrainingArguments` subclass.

Parsed by `transformers.HfArgumentParser` (command line or YAML), validated in `__post_init__` so that a wrong
value fails before any model is loaded.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

from .field_tags import LORA_SHAPE, NOT_IN_FINGERPRINT, ON_CARD, TaggedTrainingArguments
from .methods import METHODS, Method
from .models import check_output_dir, path_overlap
from .run_state import check_training_arguments, without_secrets

RETAIN_MODES = ("none", "rt", "kl")
DIVERGENCES = ("reverse", "forward")


@dataclass
class UnlearnConfig(TaggedTrainingArguments):
    """Configuration of an unlearning run (the math of each method: its entry in :mod:`rklu_llm.methods`).

    Defaults follow the RKL-U paper (AdamW, lr 1e-5, weight decay 0.01, linear warm-up over the first epoch then
    linear decay, 5 epochs, teacher alpha 8, 10 augmentation epochs).

    What a field is for, besides its ``help``, is a tag on its type (``Annotated[int, NOT_IN_FINGERPRINT]``, which
    HfArgumentParser ignores), read by :func:`rklu_llm.field_tags.tagged_fields` instead of lists kept by hand:
    ``NOT_IN_FINGERPRINT`` for a setting that does not change the result (left out of the run fingerprint),
    ``LORA_SHAPE`` for the LoRA adapters' shape (the model card, the augmented model's fingerprint), ``ON_CARD`` for
    the settings every model card shows. The inherited TrainingArguments fields carry theirs in
    :class:`~rklu_llm.field_tags.TaggedTrainingArguments`.
    """

    # --- method -----------------------------------------------------------------------------------------------
    method: str = field(default="rklu", metadata={"help": f"Unlearning method, one of {sorted(METHODS)}."})
    divergence: str | None = field(
        default=None,
        metadata={
            "help": "KL direction of the distillation: 'reverse' = KL(student || teacher), 'forward' = "
            "KL(teacher || student). Default: reverse for rklu, forward for fklu, token_redistribute and token_mask. "
            "Used by those; classifier targets (redistribute, mask) are always forward."
        },
    )
    teacher_alpha: float = field(
        default=8.0, metadata={"help": "RKL-U teacher strength: l_t = l_o - alpha * relu(l_aug - l_o). Must be >= 0."}
    )
    kl_chunk_size: Annotated[int, NOT_IN_FINGERPRINT] = field(
        default=1024, metadata={"help": "Answer positions per chunk of the full-vocabulary KL (memory bound)."}
    )
    cache_frozen_answers: Annotated[bool, NOT_IN_FINGERPRINT] = field(
        default=False,
        metadata={
            "help": "Keep the frozen models' answer logits of every item in CPU memory the first time they are "
            "computed, so that later epochs skip the original's and the augmented model's forward passes (rklu, fklu, "
            "token_mask, token_redistribute, the retain KL term). Costs answer tokens x vocabulary x 4 bytes per "
            "frozen model (TOFU forget01 on SmolLM2: about 0.3 GB each); the logits equal the uncached ones up to "
            "float rounding. One process only."
        },
    )
    teacher_check: Annotated[bool, NOT_IN_FINGERPRINT] = field(
        default=True,
        metadata={
            "help": "rklu / fklu: before distilling, check on the forget set whether the teacher would still "
            "reproduce it (rklu_llm.teacher_check); logged, stored in the run record and the model card, with a "
            "warning and what to change when it would."
        },
    )
    teacher_check_max_top1: Annotated[float, NOT_IN_FINGERPRINT] = field(
        default=0.5,
        metadata={
            "help": "The teacher check calls the teacher weak when its top-1 is still the true token at more than "
            "this fraction of the forget-set positions where the original's top-1 is. In (0, 1]."
        },
    )
    teacher_check_samples: Annotated[int, NOT_IN_FINGERPRINT] = field(
        default=4,
        metadata={
            "help": "Forget items whose greedy continuation the teacher check decodes from the teacher and from the "
            "original, scored against the truth (BLEU, ROUGE-L); 0: logits only."
        },
    )
    teacher_check_max_new_tokens: Annotated[int, NOT_IN_FINGERPRINT] = field(
        default=32, metadata={"help": "The longest greedy continuation of the teacher check, in tokens."}
    )
    forget_weight: Annotated[float, ON_CARD] = field(default=1.0, metadata={"help": "Weight of the forget loss."})
    # --- retain term ------------------------------------------------------------------------------------------
    retain_mode: Annotated[str | None, ON_CARD] = field(
        default=None,
        metadata={
            "help": "Retain term: 'none'; 'rt' = NLL on the retain set; 'kl' = forward KL(p_original || p_student) "
            "on the retain set. Default: 'rt' for gd, 'none' otherwise."
        },
    )
    retain_weight: float = field(default=1.0, metadata={"help": "lambda in L = L_forget + lambda * L_retain."})
    # --- augmented model (phase 1 of RKL-U and task arithmetic) ----------------------------------------------------
    augment_epochs: float = field(
        default=10.0, metadata={"help": "Epochs of NLL fine-tuning on the forget set that make the augmented model."}
    )
    augment_max_steps: int = field(
        default=-1, metadata={"help": "Stop the augmentation fine-tune after this many steps (-1: run all epochs)."}
    )
    augment_learning_rate: float = field(
        default=1e-5, metadata={"help": "Learning rate of the augmentation fine-tune."}
    )
    augment_lora: bool = field(
        default=False,
        metadata={
            "help": "Make the augmented model a LoRA adapter on the frozen original (one copy of the base weights "
            "serves both: adapter disabled = original, enabled = augmented)."
        },
    )
    augmented_model_path: Annotated[str | None, NOT_IN_FINGERPRINT] = field(
        default=None,
        metadata={
            "help": "A ready augmented model (full model dir or LoRA adapter dir); skips the augmentation phase. "
            "Default: build one in augmented_dir."
        },
    )
    augmented_dir: Annotated[str | None, NOT_IN_FINGERPRINT] = field(
        default=None,
        metadata={
            "help": "Where the augmentation phase saves the augmented model (default: <output_dir>.augmented, beside "
            "the output folder, never inside it: it holds the forget set's knowledge, amplified, and must not travel "
            "with the unlearned model). Reused by a resumed run (or by ta with augmented_model_path=...) when its "
            "recorded fingerprint (base model, forget data, augment_* and LoRA settings) matches."
        },
    )
    keep_augmented: Annotated[bool, NOT_IN_FINGERPRINT] = field(
        default=False,
        metadata={
            "help": "Keep the augmented model that this run built after the final save. Default False: it holds the "
            "forget set's knowledge, amplified, so it is deleted once the unlearned model is saved (an interrupted run "
            "keeps it, to resume). True keeps it, e.g. to reuse it with augmented_model_path=... (ta, other alphas)."
        },
    )
    ta_scale: float = field(
        default=2.5, metadata={"help": "Task arithmetic: theta_o - ta_scale * (theta_a - theta_o)."}
    )
    # --- baselines --------------------------------------------------------------------------------------------
    npo_beta: float = field(default=0.1, metadata={"help": "NPO inverse temperature (> 0)."})
    dpo_beta: float = field(default=0.1, metadata={"help": "DPO inverse temperature (> 0)."})
    refusal_file: Annotated[str | None, NOT_IN_FINGERPRINT] = field(
        default=None,
        metadata={"help": "Text file with one refusal answer per line (dpo, idk). Default: the built-in list."},
    )
    # --- classifier baselines -------------------------------------------------------------------------------------
    boundary_shrink_eps: float = field(
        default=0.1,
        metadata={
            "help": "Boundary Shrink: FGSM step size on the inputs (pixels in [0, 1], or token "
            "embeddings) that finds the nearest wrong label."
        },
    )
    jit_noise_std: float = field(
        default=0.1, metadata={"help": "JiT: standard deviation of the Gaussian input perturbations."}
    )
    jit_samples: int = field(default=10, metadata={"help": "JiT: perturbed copies of each forget sample per step."})
    # --- LoRA -------------------------------------------------------------------------------------------------
    use_lora: bool = field(default=False, metadata={"help": "Unlearn through a LoRA adapter instead of all weights."})
    lora_r: Annotated[int, LORA_SHAPE] = field(
        default=16, metadata={"help": "LoRA rank (student and augmented adapters)."}
    )
    lora_alpha: Annotated[int, LORA_SHAPE] = field(default=32, metadata={"help": "LoRA alpha."})
    lora_dropout: Annotated[float, LORA_SHAPE] = field(default=0.0, metadata={"help": "LoRA dropout."})
    lora_target_modules: Annotated[str, LORA_SHAPE] = field(
        default="all-linear", metadata={"help": "Comma-separated module names, or 'all-linear'."}
    )
    disable_dropout: bool = field(
        default=True, metadata={"help": "Set dropout to 0 in the student (frozen models never use dropout)."}
    )
    # --- data -------------------------------------------------------------------------------------------------
    max_length: Annotated[int, ON_CARD] = field(default=512, metadata={"help": "Maximum tokens of prompt + answer."})
    warmup_epochs: Annotated[float | None, ON_CARD] = field(
        default=1.0,
        metadata={
            "help": "Linear warm-up length in epochs (turned into a warm-up ratio of num_train_epochs) unless "
            "warmup_steps is set. None: no epoch-based warm-up."
        },
    )
    # --- TrainingArguments defaults changed for unlearning ----------------------------------------------------------
    learning_rate: float = field(default=1e-5, metadata={"help": "Peak learning rate (AdamW)."})
    weight_decay: float = field(default=0.01, metadata={"help": "AdamW weight decay."})
    num_train_epochs: float = field(default=5.0, metadata={"help": "Unlearning epochs."})
    logging_steps: float = field(default=5, metadata={"help": "Log every N steps."})
    save_strategy: str = field(
        default="epoch",
        metadata={"help": "Checkpoint after every epoch, so that a killed run resumes ('no', 'steps')."},
    )
    save_total_limit: int | None = field(
        default=1,
        metadata={
            "help": "Checkpoints kept (the newest). A full-weight checkpoint holds the weights, the AdamW moments "
            "(2x the weights) and small state files: about 3x the model's size (a LoRA checkpoint: the adapter only)."
        },
    )
    overwrite_output_dir: Annotated[bool, NOT_IN_FINGERPRINT] = field(
        default=False,
        metadata={
            "help": "Start over in an output_dir that holds another run (its files are deleted first). Without it, "
            "such a run is refused, and a run with the same fingerprint resumes from its newest complete checkpoint."
        },
    )
    remove_unused_columns: bool = field(
        default=False, metadata={"help": "Must stay False: batches are nested forget/retain dicts."}
    )

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"Unknown method {self.method!r}; choose one of {sorted(METHODS)}.")
        spec = METHODS[self.method]
        if self.retain_mode is None:
            self.retain_mode = spec.default_retain_mode
        if self.retain_mode not in RETAIN_MODES:
            raise ValueError(f"Unknown retain_mode {self.retain_mode!r}; choose one of {RETAIN_MODES}.")
        spec.check(self)  # the method's own rules (gd keeps its retain term, ta edits full weights)
        if self.divergence is None:
            self.divergence = "forward" if spec.batch == "classifier" else spec.default_divergence
        if self.divergence not in DIVERGENCES:
            raise ValueError(f"Unknown divergence {self.divergence!r}; choose one of {DIVERGENCES}.")
        check_training_arguments(self)
        self._check_classifier_fields(spec)
        checks = [
            (
                self.teacher_alpha >= 0,
                f"teacher_alpha must be >= 0 (got {self.teacher_alpha}); 0 means the teacher is the original model.",
            ),
            (self.npo_beta > 0, f"npo_beta must be > 0 (got {self.npo_beta})."),
            (self.dpo_beta > 0, f"dpo_beta must be > 0 (got {self.dpo_beta})."),
            (self.ta_scale > 0, f"ta_scale must be > 0 (got {self.ta_scale})."),
            (self.retain_weight >= 0, f"retain_weight must be >= 0 (got {self.retain_weight})."),
            (self.forget_weight >= 0, f"forget_weight must be >= 0 (got {self.forget_weight})."),
            (self.augment_epochs >= 0, f"augment_epochs must be >= 0 (got {self.augment_epochs})."),
            (self.kl_chunk_size >= 1, f"kl_chunk_size must be >= 1 (got {self.kl_chunk_size})."),
            (
                0 < self.teacher_check_max_top1 <= 1,
                f"teacher_check_max_top1 must be in (0, 1] (got {self.teacher_check_max_top1}).",
            ),
            (
                self.teacher_check_samples >= 0,
                f"teacher_check_samples must be >= 0 (got {self.teacher_check_samples}).",
            ),
            (
                self.teacher_check_max_new_tokens >= 1,
                f"teacher_check_max_new_tokens must be >= 1 (got {self.teacher_check_max_new_tokens}).",
            ),
            (self.max_length >= 2, f"max_length must be >= 2 (got {self.max_length})."),
            (self.augment_learning_rate > 0, f"augment_learning_rate must be > 0 (got {self.augment_learning_rate})."),
            (self.lora_r >= 1, f"lora_r must be >= 1 (got {self.lora_r})."),
            (0 <= self.lora_dropout < 1, f"lora_dropout must be in [0, 1) (got {self.lora_dropout})."),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)
        if spec.needs_augmented and self.augmented_model_path is None and self.augment_epochs == 0:
            raise ValueError(
                f"{self.method} needs an augmented model: pass augmented_model_path=... or set augment_epochs > 0 "
                "to build one."
            )
        if self.remove_unused_columns:
            raise ValueError("remove_unused_columns must be False for unlearning (batches are nested dicts).")
        if self.warmup_epochs is not None:
            if self.warmup_epochs < 0:
                raise ValueError(f"warmup_epochs must be >= 0 (got {self.warmup_epochs}).")
            if self.num_train_epochs > 0 and self.warmup_steps == 0:
                self.warmup_steps = min(self.warmup_epochs / self.num_train_epochs, 0.999)
        super().__post_init__()
        if self.cache_frozen_answers and self.world_size > 1:
            raise ValueError(
                f"cache_frozen_answers works in one process; this run has {self.world_size}, whose frozen forward "
                "passes are taken together (sharded or data-parallel). Drop it, or launch one process."
            )
        self._check_augmented_location()

    def __getstate__(self):
        """Pickled (``training_args.bin`` in the output and every checkpoint) without ``hub_token`` or any token."""
        return without_secrets(self.__dict__)

    def _check_augmented_location(self) -> None:
        if self.augmented_model_path is not None:
            check_output_dir(self.output_dir, augmented_path=self.augmented_model_path)
        if self.augmented_dir is not None:
            out = Path(self.output_dir).expanduser().resolve()
            if path_overlap(Path(self.augmented_dir).expanduser().resolve(), out) is not None:
                raise ValueError(
                    f"augmented_dir {self.augmented_dir!r} overlaps output_dir {self.output_dir!r}: the augmented "
                    "model holds the forget set's knowledge and must stay apart from the unlearned model's folder."
                )

    @property
    def augmented_output_dir(self) -> Path:
        """Where the augmented model is read from (``augmented_model_path``) or built (``augmented_dir``, default
        ``<output_dir>.augmented``, a sibling of the output folder)."""
        if self.augmented_model_path is not None:
            return Path(self.augmented_model_path)
        if self.augmented_dir is not None:
            return Path(self.augmented_dir)
        out = Path(self.output_dir).expanduser().resolve()
        return out.with_name(out.name + ".augmented")

    def _check_classifier_fields(self, spec: Method) -> None:
        """Classifier methods: forward KL only, full weights, no extra retain term on the retain-set references."""
        if spec.batch == "classifier" and self.divergence != "forward":
            raise ValueError(
                f"{self.method} distils towards a target with an exact zero on the forget class, so only the forward "
                "KL(target || student) is finite: leave divergence unset (token_* methods take 'reverse')."
            )
        if spec.batch == "classifier" and self.use_lora:
            raise ValueError(f"{self.method} unlearns a classifier with all its weights; use_lora is for causal LMs.")
        if spec.uses_retain_data and self.retain_mode != "none":
            raise ValueError(f"{self.method} already trains on the retain set; leave retain_mode 'none'.")
        checks = [
            (self.boundary_shrink_eps > 0, f"boundary_shrink_eps must be > 0 (got {self.boundary_shrink_eps})."),
            (self.jit_noise_std > 0, f"jit_noise_std must be > 0 (got {self.jit_noise_std})."),
            (self.jit_samples >= 1, f"jit_samples must be >= 1 (got {self.jit_samples})."),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)

    @property
    def spec(self) -> Method:
        """This run's entry of :data:`rklu_llm.methods.METHODS`."""
        return METHODS[self.method]

    @property
    def needs_reference(self) -> bool:
        """A frozen original is needed by the method itself or by the retain KL term."""
        return self.spec.needs_reference or self.retain_mode == "kl"
