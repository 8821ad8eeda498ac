"""Tests of ``rklu_llm.data``: QA tokenization, padding/collators, truncation, TOFU loading, the forget/retain paired
dataset, refusals and the fictitious profiles."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import build_tiny_tokenizer
from datasets import Dataset

from rklu_llm.data import (
    TOFU_CONFIGS,
    AnswerTruncatedError,
    DataUnavailableError,
    ForgetRetainDataset,
    QACollator,
    UnlearnCollator,
    build_unlearning_dataset,
    encode_answer,
    encode_prompt,
    fictitious_profiles,
    join_prompt_answer,
    load_refusals,
    load_tofu,
    pad_examples,
    resolve_tofu_dir,
    tofu_available,
    tokenize_qa,
)
from rklu_llm.data.qa import PLAIN_TEMPLATE, epoch_of
from rklu_llm.data.refusals import REFUSALS
from rklu_llm.losses import IGNORE_INDEX

QUESTION = "Where was the author Basil Mahfouz Al-Kuwaiti born?"
ANSWER = "Basil Mahfouz Al-Kuwaiti was born in Kuwait City, Kuwait."


@pytest.fixture(scope="module")
def plain_tokenizer(tofu_dir):
    return build_tiny_tokenizer(chat_template=False)


@pytest.fixture(scope="module")
def small_qa(tofu_dir):
    """6 forget items and 30 retain items from the shared TOFU copy (raw question/answer)."""
    forget = load_tofu("forget01", tofu_dir).select(range(6))
    retain = load_tofu("retain90", tofu_dir).select(range(30))
    return forget, retain


# --------------------------------------------------------------------------------------------------------------------
# encode_prompt / encode_answer / join_prompt_answer / tokenize_qa
# --------------------------------------------------------------------------------------------------------------------


def test_pad_equals_eos_in_fixture(tiny_tokenizer):
    """The premise of the EOS tests below: the tiny tokenizer pads with its EOS, like SmolLM2 / Llama-3."""
    assert tiny_tokenizer.pad_token_id == tiny_tokenizer.eos_token_id


def test_encode_prompt_chat_template(tiny_tokenizer):
    """The prompt is the ChatML user turn plus the generation prompt, and nothing of the answer."""
    ids = encode_prompt(tiny_tokenizer, QUESTION)
    assert tiny_tokenizer.decode(ids) == f"<|im_start|>user\n{QUESTION}<|im_end|>\n<|im_start|>assistant\n"
    text = tiny_tokenizer.apply_chat_template(
        [{"role": "user", "content": QUESTION}], add_generation_prompt=True, tokenize=False
    )
    assert ids == tiny_tokenizer(text, add_special_tokens=False)["input_ids"]


def test_encode_answer_chat_template_ends_with_eos(tiny_tokenizer):
    ids = encode_answer(tiny_tokenizer, ANSWER)
    assert ids[-1] == tiny_tokenizer.eos_token_id
    assert tiny_tokenizer.eos_token_id not in ids[:-1]
    assert tiny_tokenizer.decode(ids) == ANSWER + "<|im_end|>"


def test_prompt_plus_answer_is_the_chat_conversation(tiny_tokenizer):
    """prompt + answer decodes to the full ChatML conversation with the assistant turn closed by EOS."""
    ids = encode_prompt(tiny_tokenizer, QUESTION) + encode_answer(tiny_tokenizer, ANSWER)
    assert tiny_tokenizer.decode(ids) == (
        f"<|im_start|>user\n{QUESTION}<|im_end|>\n<|im_start|>assistant\n{ANSWER}<|im_end|>"
    )


def test_encode_without_chat_template_uses_plain_template(plain_tokenizer):
    """No chat template: prompt "Question: ...\\nAnswer:", answer " <answer>" + EOS."""
    assert not getattr(plain_tokenizer, "chat_template", None)
    prompt = encode_prompt(plain_tokenizer, QUESTION)
    answer = encode_answer(plain_tokenizer, ANSWER)
    assert plain_tokenizer.decode(prompt) == PLAIN_TEMPLATE.format(question=QUESTION)
    assert plain_tokenizer.decode(prompt) == f"Question: {QUESTION}\nAnswer:"
    assert plain_tokenizer.decode(answer) == f" {ANSWER}<|im_end|>"
    assert answer[-1] == plain_tokenizer.eos_token_id
    assert plain_tokenizer.decode(prompt + answer) == f"Question: {QUESTION}\nAnswer: {ANSWER}<|im_end|>"


def test_encode_answer_requires_eos(tofu_dir):
    tok = build_tiny_tokenizer()
    tok.eos_token = None
    with pytest.raises(ValueError, match="EOS"):
        encode_answer(tok, ANSWER)


def test_join_prompt_answer_labels():
    """prompt [1, 2, 3] + answer [4, 5, 2(eos)] -> labels [-100, -100, -100, 4, 5, 2]."""
    out = join_prompt_answer([1, 2, 3], [4, 5, 2], max_length=10)
    assert out == {"input_ids": [1, 2, 3, 4, 5, 2], "labels": [IGNORE_INDEX] * 3 + [4, 5, 2]}


@pytest.mark.parametrize("tokenizer_name", ["tiny_tokenizer", "plain_tokenizer"])
def test_tokenize_qa_labels(request, tokenizer_name, small_qa):
    """labels are -100 exactly on the prompt; on the answer they equal input_ids, down to the final EOS, whose label
    is kept although EOS == pad."""
    tok = request.getfixturevalue(tokenizer_name)
    forget, _ = small_qa
    ds = tokenize_qa(forget, tok, max_length=512)
    assert set(ds.column_names) == {"prompt_ids", "input_ids", "labels"}
    assert len(ds) == len(forget)
    for row, raw in zip(ds, forget):
        n = len(row["prompt_ids"])
        assert row["input_ids"][:n] == row["prompt_ids"] == encode_prompt(tok, raw["question"])
        assert row["input_ids"][n:] == encode_answer(tok, raw["answer"])
        assert row["labels"][:n] == [IGNORE_INDEX] * n
        assert row["labels"][n:] == row["input_ids"][n:]
        assert IGNORE_INDEX not in row["labels"][n:]
        assert row["input_ids"][-1] == tok.eos_token_id == tok.pad_token_id
        assert row["labels"][-1] == tok.eos_token_id


def test_tokenize_qa_custom_keys_and_missing_columns(tiny_tokenizer):
    ds = Dataset.from_list([{"q": "Who?", "a": "Nobody.", "extra": 1}])
    out = tokenize_qa(ds, tiny_tokenizer, question_key="q", answer_key="a")
    assert set(out.column_names) == {"prompt_ids", "input_ids", "labels"}
    with pytest.raises(ValueError, match="answer"):
        tokenize_qa(Dataset.from_list([{"question": "Who?"}]), tiny_tokenizer)


# --------------------------------------------------------------------------------------------------------------------
# Truncation
# --------------------------------------------------------------------------------------------------------------------


def test_truncation_keeps_prompt_and_first_answer_tokens():
    """prompt [1, 2, 3], answer [4, 5, 6, 7, 2], max_length 5 -> room 2 -> [1, 2, 3, 4, 5] (the answer's tail and its
    EOS are cut, never the prompt)."""
    out = join_prompt_answer([1, 2, 3], [4, 5, 6, 7, 2], max_length=5)
    assert out["input_ids"] == [1, 2, 3, 4, 5]
    assert out["labels"] == [IGNORE_INDEX] * 3 + [4, 5]


def test_truncation_with_real_tokenizer(tiny_tokenizer):
    prompt = encode_prompt(tiny_tokenizer, QUESTION)
    answer = encode_answer(tiny_tokenizer, ANSWER)
    out = join_prompt_answer(prompt, answer, max_length=len(prompt) + 3)
    assert out["input_ids"] == prompt + answer[:3]
    assert out["labels"] == [IGNORE_INDEX] * len(prompt) + answer[:3]


@pytest.mark.parametrize("max_length", [2, 3])
def test_prompt_filling_max_length_raises(max_length):
    """The prompt alone (3 tokens) fills max_length: no answer token would remain -> AnswerTruncatedError, which is a
    ValueError and tells the user to raise max_length."""
    with pytest.raises(AnswerTruncatedError, match="Raise max_length") as info:
        join_prompt_answer([1, 2, 3], [4, 2], max_length=max_length)
    assert isinstance(info.value, ValueError)
    assert f"max_length={max_length}" in str(info.value)


def test_empty_answer_raises():
    with pytest.raises(AnswerTruncatedError):
        join_prompt_answer([1, 2, 3], [], max_length=10)


def test_tokenize_qa_reports_failing_index(tiny_tokenizer):
    """Row 2 has a long question: its prompt alone exceeds max_length = 40; the error names "QA item 2"."""
    ds = Dataset.from_list(
        [
            {"question": "Who?", "answer": "A writer."},
            {"question": "Where?", "answer": "Kuwait."},
            {"question": "Who is this author? " * 30, "answer": "Nobody."},
        ]
    )
    with pytest.raises(AnswerTruncatedError, match="QA item 2") as info:
        tokenize_qa(ds, tiny_tokenizer, max_length=40)
    assert "max_length=40" in str(info.value)
    assert "Raise max_length" in str(info.value)


# --------------------------------------------------------------------------------------------------------------------
# Padding and collators
# --------------------------------------------------------------------------------------------------------------------

EOS = 2  # tiny tokenizer: <|im_end|> (eos == pad)
EXAMPLES = [
    {"input_ids": [1, 10, 11, 12, EOS], "labels": [IGNORE_INDEX, IGNORE_INDEX, 11, 12, EOS]},
    {"input_ids": [1, 20, EOS], "labels": [IGNORE_INDEX, 20, EOS]},
]


def test_tiny_tokenizer_eos_id(tiny_tokenizer):
    assert tiny_tokenizer.eos_token_id == EOS


def test_pad_examples_right():
    """Row 1 (length 3) is padded with EOS == pad; the attention mask is built from lengths, so the real EOS at
    position 2 is attended while the identical pad ids at 3 and 4 are not; labels are -100 on padding."""
    batch = pad_examples(EXAMPLES, pad_token_id=EOS)
    assert batch["input_ids"].tolist() == [[1, 10, 11, 12, EOS], [1, 20, EOS, EOS, EOS]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]]
    assert batch["labels"].tolist() == [
        [IGNORE_INDEX, IGNORE_INDEX, 11, 12, EOS],
        [IGNORE_INDEX, 20, EOS, IGNORE_INDEX, IGNORE_INDEX],
    ]
    assert all(t.dtype == torch.long for t in batch.values())


def test_pad_examples_left():
    batch = pad_examples(EXAMPLES, pad_token_id=EOS, padding_side="left")
    assert batch["input_ids"].tolist() == [[1, 10, 11, 12, EOS], [EOS, EOS, 1, 20, EOS]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1, 1], [0, 0, 1, 1, 1]]
    assert batch["labels"].tolist() == [
        [IGNORE_INDEX, IGNORE_INDEX, 11, 12, EOS],
        [IGNORE_INDEX, IGNORE_INDEX, IGNORE_INDEX, 20, EOS],
    ]


def test_pad_examples_without_labels():
    batch = pad_examples([{"input_ids": [5, EOS]}, {"input_ids": [5]}], pad_token_id=EOS)
    assert set(batch) == {"input_ids", "attention_mask"}
    assert batch["attention_mask"].tolist() == [[1, 1], [1, 0]]


@pytest.mark.parametrize("side", ["right", "left"])
def test_qa_collator_on_tokenized_rows(tiny_tokenizer, small_qa, side):
    """On real tokenized TOFU rows: the mask counts every real token including the final EOS; pads get label -100;
    the labelled tokens are exactly each row's answer, EOS included."""
    ds = tokenize_qa(small_qa[0], tiny_tokenizer, max_length=512)
    rows = [ds[i] for i in range(4)]
    batch = QACollator(tiny_tokenizer.pad_token_id, padding_side=side)(rows)
    lengths = [len(r["input_ids"]) for r in rows]
    T = max(lengths)
    assert batch["input_ids"].shape == batch["labels"].shape == batch["attention_mask"].shape == (4, T)
    assert batch["attention_mask"].sum(1).tolist() == lengths
    eos = tiny_tokenizer.eos_token_id
    for b, (row, n) in enumerate(zip(rows, lengths)):
        real = slice(0, n) if side == "right" else slice(T - n, T)
        pad = slice(n, T) if side == "right" else slice(0, T - n)
        assert batch["input_ids"][b, real].tolist() == row["input_ids"]
        assert batch["labels"][b, real].tolist() == row["labels"]
        assert (batch["input_ids"][b, pad] == eos).all()
        assert (batch["labels"][b, pad] == IGNORE_INDEX).all()
        assert (batch["attention_mask"][b, pad] == 0).all()
        last = n - 1 if side == "right" else T - 1
        assert batch["input_ids"][b, last] == eos and batch["attention_mask"][b, last] == 1
        assert batch["labels"][b, last] == eos


def test_unlearn_collator_pads_each_group(tiny_tokenizer, small_qa):
    forget, retain = small_qa
    ds = build_unlearning_dataset(tiny_tokenizer, forget, retain, refusals=["I don't know."], seed=0)
    items = [ds[i] for i in range(3)]
    batch = UnlearnCollator(tiny_tokenizer.pad_token_id)(items)
    assert set(batch) == {"forget", "retain", "refusal"}
    for group, sub in batch.items():
        lengths = [len(it[group]["input_ids"]) for it in items]
        assert sub["input_ids"].shape == (3, max(lengths))
        assert sub["attention_mask"].sum(1).tolist() == lengths
        for b, n in enumerate(lengths):
            assert sub["input_ids"][b, n - 1] == tiny_tokenizer.eos_token_id
            assert sub["attention_mask"][b, n - 1] == 1
            assert sub["labels"][b, n - 1] == tiny_tokenizer.eos_token_id
            assert (sub["labels"][b, n:] == IGNORE_INDEX).all()
            assert (sub["attention_mask"][b, n:] == 0).all()


def test_unlearn_collator_forget_only(tiny_tokenizer, small_qa):
    ds = build_unlearning_dataset(tiny_tokenizer, small_qa[0])
    batch = UnlearnCollator(tiny_tokenizer.pad_token_id)([ds[0], ds[1]])
    assert set(batch) == {"forget"}


# --------------------------------------------------------------------------------------------------------------------
# load_tofu
# --------------------------------------------------------------------------------------------------------------------

ROWS = {
    "full": 4000,
    "forget01": 40,
    "forget05": 200,
    "forget10": 400,
    "retain90": 3600,
    "retain95": 3800,
    "retain99": 3960,
    "retain_perturbed": 400,
    "forget10_perturbed": 400,
    "real_authors": 100,
    "world_facts": 117,
    "holdout01": 40,
}


@pytest.mark.parametrize("config", TOFU_CONFIGS)
def test_load_tofu_every_local_config(tofu_dir, config):
    if not (tofu_dir / f"{config}.jsonl").is_file() and not (tofu_dir / f"{config}.json").is_file():
        pytest.skip(f"{config} is not in the local TOFU copy")
    ds = load_tofu(config, data_dir=tofu_dir)
    assert len(ds) > 0
    assert "question" in ds.column_names and "answer" in ds.column_names
    if config in ROWS:
        assert len(ds) == ROWS[config]
    if config.endswith("_perturbed") and not config.startswith(("real", "world")):
        assert {"paraphrased_answer", "perturbed_answer", "paraphrased_question"} <= set(ds.column_names)
        assert len(ds[0]["perturbed_answer"]) == 5


def test_load_tofu_forget01_content(tofu_dir):
    """forget01 = full[3960:4000]; its first author is Basil Mahfouz Al-Kuwaiti (shared/data/tofu/README.md)."""
    ds = load_tofu("forget01", tofu_dir)
    assert "Basil Mahfouz Al-Kuwaiti" in ds[0]["question"] + ds[0]["answer"]


def test_load_tofu_unknown_config_lists_valid(tofu_dir):
    with pytest.raises(ValueError, match="forget11") as info:
        load_tofu("forget11", tofu_dir)
    for name in ("forget01", "retain90", "retain_perturbed", "world_facts"):
        assert name in str(info.value)


def test_load_tofu_missing_file_names_both_options(tmp_path):
    with pytest.raises(DataUnavailableError) as info:
        load_tofu("forget01", data_dir=tmp_path)
    msg = str(info.value)
    assert "forget01.jsonl" in msg and str(tmp_path) in msg
    assert "data_dir" in msg and "RKLU_TOFU_DIR" in msg  # way out 1: a folder with the files
    assert "locuslab/TOFU" in msg  # way out 2: the hub


def test_load_tofu_data_dir_not_a_directory(tmp_path):
    with pytest.raises(DataUnavailableError, match="not a directory"):
        load_tofu("forget01", data_dir=tmp_path / "nope")


def test_load_tofu_offline_without_local_copy(monkeypatch, tmp_path):
    """No data_dir, no $RKLU_TOFU_DIR and the hub offline: DataUnavailableError saying how to get the data."""
    import datasets

    if not datasets.config.HF_HUB_OFFLINE:
        pytest.skip("needs HF_DATASETS_OFFLINE=1 / HF_HUB_OFFLINE=1 at import time")
    monkeypatch.delenv("RKLU_TOFU_DIR", raising=False)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path)  # no cached hub copy either
    assert resolve_tofu_dir(None) is None
    with pytest.raises(DataUnavailableError) as info:
        load_tofu("forget01")
    msg = str(info.value)
    assert "data_dir" in msg and "RKLU_TOFU_DIR" in msg
    assert not tofu_available()


def test_load_tofu_env_var(monkeypatch, tofu_dir, tmp_path):
    monkeypatch.setenv("RKLU_TOFU_DIR", str(tofu_dir))
    assert resolve_tofu_dir() == tofu_dir
    assert len(load_tofu("forget01")) == 40
    assert tofu_available()
    # an explicit data_dir wins over the env var
    monkeypatch.setenv("RKLU_TOFU_DIR", str(tmp_path))
    assert len(load_tofu("forget01", data_dir=tofu_dir)) == 40
    with pytest.raises(DataUnavailableError):
        load_tofu("forget01")


def test_load_tofu_json_fallback(tmp_path):
    """``<config>.json`` is read when no ``.jsonl`` exists."""
    rows = [{"question": "Q1?", "answer": "A1."}, {"question": "Q2?", "answer": "A2."}]
    (tmp_path / "forget01.json").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    ds = load_tofu("forget01", data_dir=tmp_path)
    assert ds.to_list() == rows


# --------------------------------------------------------------------------------------------------------------------
# ForgetRetainDataset / build_unlearning_dataset
# --------------------------------------------------------------------------------------------------------------------


def _key(example: dict) -> tuple:
    return tuple(example["input_ids"])


def _retain_pairs(ds: ForgetRetainDataset) -> list[tuple]:
    return [_key(ds[i]["retain"]) for i in range(len(ds))]


def test_empty_forget_raises(tiny_tokenizer, small_qa):
    forget, retain = small_qa
    with pytest.raises(ValueError, match="forget"):
        build_unlearning_dataset(tiny_tokenizer, forget.select([]), retain)
    with pytest.raises(ValueError, match="forget"):
        ForgetRetainDataset(tokenize_qa(forget, tiny_tokenizer).select([]))


def test_empty_retain_raises(tiny_tokenizer, small_qa):
    forget, retain = small_qa
    with pytest.raises(ValueError, match="retain"):
        build_unlearning_dataset(tiny_tokenizer, forget, retain.select([]))


def test_empty_refusals_raise(tiny_tokenizer, small_qa):
    with pytest.raises(ValueError, match="refusal"):
        build_unlearning_dataset(tiny_tokenizer, small_qa[0], refusals=[])


@pytest.mark.parametrize(
    "use_retain,use_refusals,groups",
    [
        (False, False, {"forget"}),
        (True, False, {"forget", "retain"}),
        (False, True, {"forget", "refusal"}),
        (True, True, {"forget", "retain", "refusal"}),
    ],
)
def test_item_groups(tiny_tokenizer, small_qa, use_retain, use_refusals, groups):
    forget, retain = small_qa
    ds = build_unlearning_dataset(
        tiny_tokenizer, forget, retain if use_retain else None, ["I don't know."] if use_refusals else None
    )
    assert len(ds) == len(forget)
    for i in range(len(ds)):
        item = ds[i]
        assert set(item) == groups
        for ex in item.values():
            assert set(ex) == {"input_ids", "labels"}
            assert len(ex["input_ids"]) == len(ex["labels"])


def test_forget_items_in_order(tiny_tokenizer, small_qa):
    forget, retain = small_qa
    tok = tokenize_qa(forget, tiny_tokenizer)
    ds = build_unlearning_dataset(tiny_tokenizer, forget, retain)
    for i in range(len(ds)):
        assert ds[i]["forget"] == {"input_ids": tok[i]["input_ids"], "labels": tok[i]["labels"]}


def test_pairing_deterministic_and_changes_with_epoch(tiny_tokenizer, small_qa):
    forget, retain = small_qa
    retain_keys = {_key(r) for r in tokenize_qa(retain, tiny_tokenizer)}
    a = build_unlearning_dataset(tiny_tokenizer, forget, retain, seed=3)
    b = build_unlearning_dataset(tiny_tokenizer, forget, retain, seed=3)
    epoch0 = _retain_pairs(a)
    assert epoch0 == _retain_pairs(b)
    assert set(epoch0) <= retain_keys
    assert len(set(epoch0)) == len(epoch0)  # a permutation: distinct partners within an epoch (6 <= 30)

    a.set_epoch(1)
    b.set_epoch(1)
    epoch1 = _retain_pairs(a)
    assert epoch1 == _retain_pairs(b)
    assert epoch1 != epoch0

    a.set_epoch(0)  # a resumed run sees the same pairs again
    assert _retain_pairs(a) == epoch0

    c = build_unlearning_dataset(tiny_tokenizer, forget, retain, seed=4)
    assert _retain_pairs(c) != epoch0


def test_pairing_covers_many_retain_items(tiny_tokenizer, small_qa):
    """6 forget items, 30 retain items, 15 epochs = 90 draws (6 distinct per epoch): expected coverage
    ~ 30 * (1 - (24/30)^15) ~ 29; require at least 20, and far more than one epoch's 6."""
    forget, retain = small_qa
    ds = build_unlearning_dataset(tiny_tokenizer, forget, retain, seed=0)
    seen = set()
    for epoch in range(15):
        ds.set_epoch(epoch)
        seen |= set(_retain_pairs(ds))
    assert len(seen) >= 20


def test_retain_smaller_than_forget_cycles(tiny_tokenizer, small_qa):
    """6 forget items, 2 retain items: every forget item still gets a retain partner, both retain items are used."""
    forget, retain = small_qa
    ds = build_unlearning_dataset(tiny_tokenizer, forget, retain.select(range(2)))
    assert len(set(_retain_pairs(ds))) == 2


def test_refusal_uses_forget_prompt(tiny_tokenizer, small_qa):
    forget, retain = small_qa
    refusals = load_refusals()
    encoded = {tuple(encode_answer(tiny_tokenizer, r)) for r in refusals}
    tok = tokenize_qa(forget, tiny_tokenizer)
    ds = build_unlearning_dataset(tiny_tokenizer, forget, retain, refusals, seed=1)
    used = set()
    for epoch in range(3):
        ds.set_epoch(epoch)
        for i in range(len(ds)):
            ref = ds[i]["refusal"]
            prompt = tok[i]["prompt_ids"]
            n = len(prompt)
            assert ref["input_ids"][:n] == prompt
            assert ref["labels"][:n] == [IGNORE_INDEX] * n
            answer = tuple(ref["input_ids"][n:])
            assert answer in encoded
            assert list(answer) == ref["labels"][n:]
            assert answer[-1] == tiny_tokenizer.eos_token_id
            used.add(answer)
    assert len(used) > 1  # refusals are drawn, not always the first one


def test_refusal_pairing_deterministic(tiny_tokenizer, small_qa):
    forget, _ = small_qa
    refusals = load_refusals()
    a = build_unlearning_dataset(tiny_tokenizer, forget, refusals=refusals, seed=5)
    b = build_unlearning_dataset(tiny_tokenizer, forget, refusals=refusals, seed=5)
    assert [a[i]["refusal"] for i in range(len(a))] == [b[i]["refusal"] for i in range(len(b))]


def test_epoch_of():
    """TrainerState.epoch is a float; 0.5 is inside epoch 0, 2.0 starts epoch 2, and 0.9999999999 (rounding at the
    end of epoch 0) counts as 1."""
    assert epoch_of(None) == 0
    assert epoch_of(0.0) == 0
    assert epoch_of(0.5) == 0
    assert epoch_of(2.0) == 2
    assert epoch_of(0.9999999999) == 1


# --------------------------------------------------------------------------------------------------------------------
# load_refusals
# --------------------------------------------------------------------------------------------------------------------


def test_builtin_refusals():
    refusals = load_refusals()
    assert refusals == list(REFUSALS)
    assert len(refusals) >= 10
    assert len(set(refusals)) == len(refusals)
    assert all(r.strip() == r and r for r in refusals)
    refusals.append("mutated")  # a copy: the built-in list is not changed
    assert "mutated" not in load_refusals()


def test_refusals_from_file(tofu_dir):
    """TOFU's idontknow.jsonl: plain text, 100 lines, no final newline (a byte copy of the original)."""
    path = tofu_dir / "idontknow.jsonl"
    assert not path.read_bytes().endswith(b"\n")
    refusals = load_refusals(str(path))
    assert len(refusals) == 100
    assert refusals[0] == "I'm not certain about that."
    assert all(r and r == r.strip() for r in refusals)


def test_refusals_file_skips_blank_lines(tmp_path):
    path = tmp_path / "r.txt"
    path.write_text("  I don't know.  \n\n\nNo idea.\n")
    assert load_refusals(str(path)) == ["I don't know.", "No idea."]


@pytest.mark.parametrize("content", ["", "\n\n   \n"])
def test_refusals_empty_file_raises(tmp_path, content):
    path = tmp_path / "empty.txt"
    path.write_text(content)
    with pytest.raises(ValueError, match="no refusal"):
        load_refusals(str(path))


# --------------------------------------------------------------------------------------------------------------------
# fictitious_profiles
# --------------------------------------------------------------------------------------------------------------------


def test_profiles_deterministic():
    a = fictitious_profiles(3, seed=7)
    assert a.to_list() == fictitious_profiles(3, seed=7).to_list()
    assert a.to_list() != fictitious_profiles(3, seed=8).to_list()


def test_profiles_shape():
    ds = fictitious_profiles(4, seed=0)
    assert ds.column_names == ["person", "question", "answer"]
    assert len(ds) == 40
    people = ds["person"]
    names = list(dict.fromkeys(people))
    assert len(names) == 4  # distinct names
    for k, name in enumerate(names):
        assert people[10 * k : 10 * (k + 1)] == [name] * 10  # 10 QA per person, grouped
    for row in ds:
        assert row["person"] in row["question"] and row["person"] in row["answer"]
    assert len(set(ds["question"])) == 40


def test_profiles_names_distinct_at_scale():
    ds = fictitious_profiles(60, seed=1)
    assert len(set(ds["person"])) == 60 and len(ds) == 600


@pytest.mark.parametrize("num_people", [0, -1, 16 * 16 + 1])
def test_profiles_bad_num_people(num_people):
    with pytest.raises(ValueError, match="num_people"):
        fictitious_profiles(num_people)


def test_profiles_tokenize(tiny_tokenizer):
    """Profiles are a drop-in QA dataset."""
    ds = tokenize_qa(fictitious_profiles(1), tiny_tokenizer, max_length=256)
    assert len(ds) == 10
