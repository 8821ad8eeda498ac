"""The lists of settings (run fingerprint, augmentation, model card, LoRA shape) are read from tags on the fields'
types, never kept by hand: each list is exactly the fields that carry its tag, and the inherited TrainingArguments
fields are redeclared with their own type, default and help."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Annotated, get_type_hints

import pytest
from transformers import TrainingArguments

from rklu_llm.config import UnlearnConfig
from rklu_llm.field_tags import (
    AUGMENTATION_FIELDS,
    AUGMENTATION_INHERITS,
    CHANGES_RESULT,
    LORA_SHAPE,
    NOT_IN_FINGERPRINT,
    ON_CARD,
    TRAINING_FIELDS,
    TaggedTrainingArguments,
    tagged_fields,
)
from rklu_llm.hub import _COMMON_FIELDS
from rklu_llm.run_state import training_settings
from rklu_llm.teacher import augmentation_arguments


def tags_of(cls) -> dict[str, set]:
    """Every field's tags, read straight from each declaring class's annotations."""
    tags: dict[str, set] = {}
    for klass in cls.__mro__:
        if "__annotations__" in vars(klass) and dataclasses.is_dataclass(klass):
            hints = get_type_hints(klass, include_extras=True)
            for name in vars(klass)["__annotations__"]:
                tags.setdefault(name, set()).update(getattr(hints[name], "__metadata__", ()))
    return tags


def carrying(cls, tag: str) -> tuple[str, ...]:
    tags = tags_of(cls)
    return tuple(spec.name for spec in dataclasses.fields(cls) if tag in tags.get(spec.name, ()))


@pytest.mark.parametrize(
    "derived,cls,tag",
    [
        (TRAINING_FIELDS, TaggedTrainingArguments, CHANGES_RESULT),
        (AUGMENTATION_FIELDS, TaggedTrainingArguments, AUGMENTATION_INHERITS),
        (_COMMON_FIELDS, UnlearnConfig, ON_CARD),
    ],
    ids=["run fingerprint", "augmentation", "model card"],
)
def test_each_list_is_the_fields_that_carry_its_tag(derived, cls, tag):
    assert derived and derived == carrying(cls, tag)
    assert derived == tagged_fields(UnlearnConfig, tag)  # UnlearnConfig reads the same tags


def test_the_lists_are_used_where_they_matter(tmp_path):
    config = UnlearnConfig(output_dir=str(tmp_path / "out"), report_to="none", use_cpu=True, seed=7)
    assert set(training_settings(config)) == {*carrying(UnlearnConfig, CHANGES_RESULT), "world_size"}
    phase1 = augmentation_arguments(config, tmp_path / "phase1")
    for name in carrying(UnlearnConfig, AUGMENTATION_INHERITS):
        assert getattr(phase1, name) == getattr(config, name), name
    assert tagged_fields(config, LORA_SHAPE) == ("lora_r", "lora_alpha", "lora_dropout", "lora_target_modules")
    assert "kl_chunk_size" in tagged_fields(config, NOT_IN_FINGERPRINT)


def test_a_field_keeps_its_tags_when_a_subclass_changes_its_default():
    assert UnlearnConfig.__dataclass_fields__["learning_rate"].default == 1e-5  # redeclared in config.py, untagged
    assert "learning_rate" in TRAINING_FIELDS and "learning_rate" in tagged_fields(UnlearnConfig, ON_CARD)


def test_tagging_a_new_field_adds_it_to_its_list():
    @dataclass
    class Extended(UnlearnConfig):
        shown: Annotated[int, ON_CARD] = field(default=1, metadata={"help": "A setting every card shows."})

    assert tagged_fields(Extended, ON_CARD) == (*_COMMON_FIELDS, "shown")


def test_redeclared_training_arguments_fields_are_their_own():
    """What HfArgumentParser sees is unchanged: same type (tags stripped), default, help and order."""
    base, tagged = get_type_hints(TrainingArguments), get_type_hints(TaggedTrainingArguments)
    assert tagged == base
    assert [f.name for f in dataclasses.fields(TaggedTrainingArguments)] == list(TrainingArguments.__dataclass_fields__)
    for spec in dataclasses.fields(TaggedTrainingArguments):
        own = TrainingArguments.__dataclass_fields__[spec.name]
        assert (spec.default, spec.default_factory, dict(spec.metadata)) == (
            own.default,
            own.default_factory,
            dict(own.metadata),
        ), spec.name
