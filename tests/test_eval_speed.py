"""The fast evaluation paths give the old paths' results: shared-prefix scoring vs whole examples, the compact greedy
loop vs ``model.generate`` (dynamic and static cache), batched vs one by one; and benchmarks/eval_speed.py runs."""

from __future__ import annotations

import functools
import inspect
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TOFU_DIR, build_tiny_model, load_benchmark
from transformers import DynamicCache

from rklu_llm.data.qa import encode_prompt
from rklu_llm.eval import scoring as scoring_module
from rklu_llm.eval.scoring import generate_answers, generate_continuations, qa_examples, score_answers, score_examples

REPO = Path(__file__).resolve().parents[1]


def _rows(n: int) -> list[dict]:
    with open(TOFU_DIR / "forget10_perturbed.jsonl") as handle:
        return [json.loads(line) for _, line in zip(range(n), handle)]


@pytest.fixture(scope="module")
def sharp_model(tiny_tokenizer):
    """A tiny model with large weights, so that its outputs depend on the input (greedy texts differ per prompt)."""
    model = build_tiny_model(tiny_tokenizer)
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0, 0.3)
    return model.eval()


def test_shared_prefix_scoring_equals_whole_examples(sharp_model, tiny_tokenizer):
    rows = _rows(5)
    questions = [r["question"] for r in rows for _ in range(7)]
    answers = [a for r in rows for a in (r["answer"], r["paraphrased_answer"], *r["perturbed_answer"])]
    examples = qa_examples(tiny_tokenizer, questions, answers)
    examples += examples[:3]  # repeated examples: scored once, reported for every copy
    nothing = dict(examples[0], labels=[-100] * len(examples[0]["labels"]))  # no counted token
    gap = dict(examples[4], labels=examples[4]["labels"][:-3] + [-100] + examples[4]["labels"][-2:])  # a hole
    examples += [nothing, gap]
    pad = tiny_tokenizer.pad_token_id
    plain = score_examples(sharp_model, examples, pad, batch_size=4, token_values=True, scoring="plain")
    for batch_size in (1, 6, 100):
        fast = score_examples(sharp_model, examples, pad, batch_size=batch_size, token_values=True)
        np.testing.assert_array_equal(fast["num_tokens"], plain["num_tokens"])
        np.testing.assert_allclose(fast["nll_sum"], plain["nll_sum"], rtol=1e-5, atol=1e-5)
        for key in ("token_logprob", "token_mu", "token_sigma"):
            for a, b in zip(fast[key], plain[key]):
                np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
        assert all((a == b).all() for a, b in zip(fast["token_is_argmax"], plain["token_is_argmax"]))
    assert plain["num_tokens"][-2] == 0 and plain["nll_sum"][-2] == 0.0
    assert plain["num_tokens"][-1] == plain["num_tokens"][4] - 1
    np.testing.assert_allclose(plain["nll_sum"][-5:-2], plain["nll_sum"][:3])

    nll_fast, n_fast = score_answers(sharp_model, tiny_tokenizer, questions, answers, batch_size=8)
    nll_plain, n_plain = score_answers(sharp_model, tiny_tokenizer, questions, answers, batch_size=8, scoring="plain")
    np.testing.assert_allclose(nll_fast, nll_plain, rtol=1e-5)
    np.testing.assert_array_equal(n_fast, n_plain)


@pytest.mark.parametrize("scoring", ["shared_prefix", "plain"])
def test_scores_taken_a_few_positions_at_a_time_equal_all_at_once(sharp_model, tiny_tokenizer, scoring, monkeypatch):
    """POSITION_CHUNK bounds the memory of a batch's log-softmax; the numbers must not move by a single bit."""
    rows = _rows(3)
    questions = [r["question"] for r in rows for _ in range(7)]
    answers = [a for r in rows for a in (r["answer"], r["paraphrased_answer"], *r["perturbed_answer"])]
    examples = qa_examples(tiny_tokenizer, questions, answers)
    pad = tiny_tokenizer.pad_token_id
    whole = score_examples(sharp_model, examples, pad, batch_size=8, token_values=True, scoring=scoring)
    monkeypatch.setattr(scoring_module, "POSITION_CHUNK", 3)  # chunks cross rows and the prompt / answer boundary
    chunked = score_examples(sharp_model, examples, pad, batch_size=8, token_values=True, scoring=scoring)
    np.testing.assert_array_equal(chunked["nll_sum"], whole["nll_sum"])
    np.testing.assert_array_equal(chunked["num_tokens"], whole["num_tokens"])
    for key in ("token_logprob", "token_mu", "token_sigma", "token_is_argmax"):
        for a, b in zip(chunked[key], whole[key]):
            np.testing.assert_array_equal(a, b)


def test_shared_prefix_runs_each_prompt_once_per_batch(sharp_model, tiny_tokenizer, monkeypatch):
    """7 answers of one question in one batch: one prompt row and 7 answer rows go through the model."""
    rows = _rows(2)
    questions = [r["question"] for r in rows for _ in range(7)]
    answers = [a for r in rows for a in (r["answer"], r["paraphrased_answer"], *r["perturbed_answer"])]
    shapes = []
    forward = type(sharp_model).forward

    @functools.wraps(forward)  # the model's signature, so that the scoring sees which keywords it takes
    def spy(self, input_ids=None, **kwargs):
        shapes.append(tuple(input_ids.shape))
        return forward(self, input_ids=input_ids, **kwargs)

    monkeypatch.setattr(type(sharp_model), "forward", spy)
    score_answers(sharp_model, tiny_tokenizer, questions, answers, batch_size=7)
    prompt_lengths = [len(encode_prompt(tiny_tokenizer, r["question"])) for r in rows]
    assert [s[0] for s in shapes] == [1, 7, 1, 7]
    assert sorted(s[1] for s in shapes[::2]) == sorted(prompt_lengths)


def test_the_cache_goes_by_the_forwards_own_keyword(sharp_model, tiny_tokenizer, monkeypatch):
    """Newer transformers renamed ``past_key_values`` to ``cache``; once the old name is removed it would pass through
    ``**kwargs`` unused and every continuation would be scored without its prompt."""
    accepted = inspect.signature(type(sharp_model).forward).parameters
    given = []
    forward = type(sharp_model).forward

    @functools.wraps(forward)
    def spy(self, *args, **kwargs):
        given.extend(k for k in kwargs if k in ("cache", "past_key_values"))
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(type(sharp_model), "forward", spy)
    rows = _rows(2)
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        score_answers(sharp_model, tiny_tokenizer, [r["question"] for r in rows], [r["answer"] for r in rows])
        generate_answers(sharp_model, tiny_tokenizer, [r["question"] for r in rows], max_new_tokens=4)
    assert given and all(name in accepted for name in given)

    class Older(torch.nn.Module):  # a forward from before the rename
        def forward(self, input_ids=None, past_key_values=None, use_cache=None, **kwargs):
            return None

    assert scoring_module.cache_argument(Older()) == "past_key_values"
    assert scoring_module.returned_cache({"logits": 1, "past_key_values": "kv"}) == "kv"
    with pytest.raises(ValueError, match="no key/value cache"):
        scoring_module.returned_cache({"logits": 1})


def test_every_greedy_decoder_gives_the_same_tokens(sharp_model, tiny_tokenizer, monkeypatch):
    rows = _rows(10)
    prompts = [encode_prompt(tiny_tokenizer, r["question"]) for r in rows]
    prompts.append(prompts[2])  # a repeated prompt
    # several stop tokens, so that the rows end at different steps and the compact loop drops some
    sharp_model.generation_config.eos_token_id = [tiny_tokenizer.eos_token_id, *range(100, 160)]
    drops = []
    reorder = DynamicCache.reorder_cache
    monkeypatch.setattr(DynamicCache, "reorder_cache", lambda self, idx: drops.append(len(idx)) or reorder(self, idx))
    try:
        reference = generate_continuations(
            sharp_model, tiny_tokenizer, prompts, batch_size=1, max_new_tokens=24, decoder="generate"
        )
        lengths = {len(tiny_tokenizer(text)["input_ids"]) for text in reference}
        assert len(lengths) > 3 and min(lengths) < 20  # rows really end at different steps
        for decoder, batch_size in (("compact", 1), ("compact", 4), ("compact", 16), ("generate", 16), ("static", 16)):
            drops.clear()
            out = generate_continuations(
                sharp_model, tiny_tokenizer, prompts, batch_size=batch_size, max_new_tokens=24, decoder=decoder
            )
            assert out == reference, (decoder, batch_size)
            if decoder == "compact" and batch_size == 16:
                assert drops and all(d < len(prompts) - 1 for d in drops)  # finished rows were dropped
    finally:
        sharp_model.generation_config.eos_token_id = tiny_tokenizer.eos_token_id
    assert reference[-1] == reference[2]
    questions = [r["question"] for r in rows]
    assert generate_answers(sharp_model, tiny_tokenizer, questions, batch_size=5, max_new_tokens=6) == (
        generate_answers(sharp_model, tiny_tokenizer, questions, batch_size=5, max_new_tokens=6, decoder="generate")
    )


def test_repeated_prompts_are_generated_once(sharp_model, tiny_tokenizer, monkeypatch):
    prompt = encode_prompt(tiny_tokenizer, _rows(1)[0]["question"])
    rows_seen = []
    forward = type(sharp_model).forward

    @functools.wraps(forward)
    def spy(self, input_ids=None, **kwargs):
        rows_seen.append(input_ids.shape[0])
        return forward(self, input_ids=input_ids, **kwargs)

    monkeypatch.setattr(type(sharp_model), "forward", spy)
    out = generate_continuations(sharp_model, tiny_tokenizer, [prompt] * 5, batch_size=8, max_new_tokens=3)
    assert len(set(out)) == 1 and len(out) == 5 and set(rows_seen) == {1}


def test_bad_switches_fail_before_model_work(tiny_tokenizer):
    model = object()
    with pytest.raises(ValueError, match="decoder must be one of"):
        generate_continuations(model, tiny_tokenizer, [[1, 2]], decoder="fast")
    with pytest.raises(ValueError, match="scoring must be one of"):
        score_examples(model, [{"input_ids": [1, 2], "labels": [-100, 2]}], 0, scoring="quick")
    with pytest.raises(ValueError, match="scoring must be one of"):
        score_answers(model, tiny_tokenizer, ["q"], ["a"], scoring="quick")
    with pytest.raises(ValueError, match="empty prompt"):
        generate_continuations(model, tiny_tokenizer, [[]])


@pytest.mark.slow
def test_eval_speed_benchmark_on_a_tiny_model(tmp_path, tiny_model_dir, tofu_dir):
    command = [
        sys.executable,
        str(REPO / "benchmarks" / "eval_speed.py"),
        "--model",
        str(tiny_model_dir),
        "--data_dir",
        str(tofu_dir),
        "--results_dir",
        str(tmp_path),
        "--name",
        "eval_speed_test",
        "--prompts",
        "6",
        "--max_new_tokens",
        "5",
        "--score_items",
        "3",
        "--repeats",
        "2",
        "--variants",
        "static",
    ]
    done = subprocess.run(
        command,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"},
    )
    assert done.returncode == 0, done.stderr[-4000:]
    data = json.loads((tmp_path / "eval_speed_test.json").read_text())
    gen, score = data["generation"], data["likelihood"]
    assert gen["identical_outputs"] == gen["prompts"] == 6 and gen["variants"]["static"]["identical_outputs"] == 6
    assert len(gen["old"]["wall_seconds"]) == 2 and gen["ratio_wall"] > 0 and gen["ratio_cpu"] > 0
    assert score["pairs"] == 3 * 7 and score["max_abs_nll_difference"] < 1e-3 and score["same_token_counts"]
    md = (tmp_path / "eval_speed_test.md").read_text()
    assert "benchmarks/eval_speed.py --model" in md and "×" in md and "--device cuda" in md  # the GPU command

    module = load_benchmark("eval_speed")
    (tmp_path / "eval_speed_test.md").unlink()
    module.main(["--data_dir", str(tofu_dir), "--results_dir", str(tmp_path), "--name", "eval_speed_test", "--render"])
    assert (tmp_path / "eval_speed_test.md").read_text() == md  # the table rebuilt from the JSON alone
