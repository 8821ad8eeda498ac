"""What a configuration field is for, as tags on its type (``Annotated[int, NOT_IN_FINGERPRINT]``), so that every list
of settings is read from the fields themselves (:func:`tagged_fields`) instead of being kept by hand.

`transformers.HfArgumentParser` ignores the tags (it reads the plain type) and passes a field's ``metadata`` on to
``argparse``, which is why the tags live on the type and not in the metadata. A field of
:class:`~rklu_llm.UnlearnConfig` carries its tags where it is declared (``config.py``); the `TrainingArguments` fields
it inherits and this toolkit reads are tagged in :class:`TaggedTrainingArguments` below, each redeclared with
TrainingArguments' own default and help. Tagging a field in one of these two places is all it takes to add it to a
list (the run fingerprint, the augmentation's settings, the model card).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, fields
from typing import Annotated, Any, get_type_hints

from transformers import TrainingArguments
from transformers.trainer_utils import SchedulerType
from transformers.training_args import OptimizerNames

NOT_IN_FINGERPRINT = "not in the run fingerprint"  # a setting of UnlearnConfig's own that does not change the result
LORA_SHAPE = "LoRA adapter shape"  # rank, alpha, dropout, target modules of the student and augmented adapters
#: a TrainingArguments setting that changes what a run produces (the run fingerprint's ``training`` part; the rest is
#: logging, saving, evaluation, output)
CHANGES_RESULT = "changes the result"
#: a TrainingArguments setting the augmentation (phase 1) inherits from the unlearning config (distribution,
#: precision, batch)
AUGMENTATION_INHERITS = "inherited by the augmentation"
#: shown on every model card, before the settings of the method (its entry's ``card_fields``)
ON_CARD = "on every model card"


def tagged_fields(args, tag: str) -> tuple[str, ...]:
    """The names of the dataclass fields of ``args`` (an instance or a class) whose type carries ``tag``, in
    declaration order. A field keeps the tags of every class that declares it (a subclass that only changes a field's
    default keeps its tags)."""
    cls = args if isinstance(args, type) else type(args)
    tags: dict[str, set] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass) or "__annotations__" not in vars(klass):
            continue
        hints = get_type_hints(klass, include_extras=True)
        for name in vars(klass)["__annotations__"]:
            tags.setdefault(name, set()).update(getattr(hints.get(name), "__metadata__", ()))
    return tuple(spec.name for spec in fields(cls) if tag in tags.get(spec.name, ()))


def inherited(name: str) -> Any:
    """`TrainingArguments`' field ``name`` as it is (default, help, argparse settings), to redeclare it with tags."""
    base = TrainingArguments.__dataclass_fields__[name]
    return dataclasses.field(
        default=base.default,
        default_factory=base.default_factory,
        init=base.init,
        repr=base.repr,
        compare=base.compare,
        metadata=base.metadata,
    )


@dataclass
class TaggedTrainingArguments(TrainingArguments):
    """`TrainingArguments` with tags on the inherited fields this toolkit reads (the base of
    :class:`~rklu_llm.UnlearnConfig`); defaults, types and help are TrainingArguments' own."""

    per_device_train_batch_size: Annotated[int, CHANGES_RESULT, AUGMENTATION_INHERITS, ON_CARD] = inherited(
        "per_device_train_batch_size"
    )
    gradient_accumulation_steps: Annotated[int, CHANGES_RESULT, AUGMENTATION_INHERITS, ON_CARD] = inherited(
        "gradient_accumulation_steps"
    )
    learning_rate: Annotated[float, CHANGES_RESULT, ON_CARD] = inherited("learning_rate")
    weight_decay: Annotated[float, CHANGES_RESULT, AUGMENTATION_INHERITS, ON_CARD] = inherited("weight_decay")
    adam_beta1: Annotated[float, CHANGES_RESULT, AUGMENTATION_INHERITS] = inherited("adam_beta1")
    adam_beta2: Annotated[float, CHANGES_RESULT, AUGMENTATION_INHERITS] = inherited("adam_beta2")
    adam_epsilon: Annotated[float, CHANGES_RESULT, AUGMENTATION_INHERITS] = inherited("adam_epsilon")
    max_grad_norm: Annotated[float, CHANGES_RESULT, AUGMENTATION_INHERITS] = inherited("max_grad_norm")
    num_train_epochs: Annotated[float, CHANGES_RESULT, ON_CARD] = inherited("num_train_epochs")
    max_steps: Annotated[int, CHANGES_RESULT, ON_CARD] = inherited("max_steps")
    lr_scheduler_type: Annotated[SchedulerType | str, CHANGES_RESULT, AUGMENTATION_INHERITS, ON_CARD] = inherited(
        "lr_scheduler_type"
    )
    lr_scheduler_kwargs: Annotated[dict | str | None, CHANGES_RESULT] = inherited("lr_scheduler_kwargs")
    warmup_steps: Annotated[float, CHANGES_RESULT] = inherited("warmup_steps")
    optim: Annotated[OptimizerNames | str, CHANGES_RESULT, AUGMENTATION_INHERITS] = inherited("optim")
    optim_args: Annotated[str | None, CHANGES_RESULT] = inherited("optim_args")
    label_smoothing_factor: Annotated[float, CHANGES_RESULT] = inherited("label_smoothing_factor")
    seed: Annotated[int, CHANGES_RESULT, AUGMENTATION_INHERITS, ON_CARD] = inherited("seed")
    data_seed: Annotated[int | None, CHANGES_RESULT, AUGMENTATION_INHERITS] = inherited("data_seed")
    bf16: Annotated[bool, CHANGES_RESULT, AUGMENTATION_INHERITS, ON_CARD] = inherited("bf16")
    fp16: Annotated[bool, CHANGES_RESULT, AUGMENTATION_INHERITS] = inherited("fp16")
    logging_steps: Annotated[float, AUGMENTATION_INHERITS] = inherited("logging_steps")
    disable_tqdm: Annotated[bool | None, AUGMENTATION_INHERITS] = inherited("disable_tqdm")
    use_cpu: Annotated[bool, AUGMENTATION_INHERITS] = inherited("use_cpu")
    deepspeed: Annotated[dict | str | None, AUGMENTATION_INHERITS] = inherited("deepspeed")
    fsdp: Annotated[str | None, AUGMENTATION_INHERITS] = inherited("fsdp")
    fsdp_config: Annotated[dict[str, Any] | str | None, AUGMENTATION_INHERITS] = inherited("fsdp_config")
    activation_checkpointing: Annotated[bool | None, AUGMENTATION_INHERITS] = inherited("activation_checkpointing")
    activation_checkpointing_kwargs: Annotated[dict[str, Any] | str | None, AUGMENTATION_INHERITS] = inherited(
        "activation_checkpointing_kwargs"
    )
    dataloader_num_workers: Annotated[int, AUGMENTATION_INHERITS] = inherited("dataloader_num_workers")
    ddp_find_unused_parameters: Annotated[bool | None, AUGMENTATION_INHERITS] = inherited("ddp_find_unused_parameters")


#: the TrainingArguments settings that change what a run produces (:func:`rklu_llm.run_state.training_settings`)
TRAINING_FIELDS = tagged_fields(TaggedTrainingArguments, CHANGES_RESULT)
#: the TrainingArguments settings the augmentation inherits from the unlearning config
AUGMENTATION_FIELDS = tagged_fields(TaggedTrainingArguments, AUGMENTATION_INHERITS)
