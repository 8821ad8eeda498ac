"""Shared evaluation pieces: portable paths, per-token scoring values, beam continuations, the metric cache."""

from __future__ import annotations

import fcntl
import json
import math
import os
import time

import numpy as np
import pytest
import torch
from conftest import held_elsewhere

from rklu_llm.eval.scoring import generate_continuations, qa_examples, score_examples
from rklu_llm.io import MetricCache, waiting_lock, write_json_atomic
from rklu_llm.paths import portable_path


def test_portable_path_never_writes_an_absolute_local_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert portable_path(None) is None
    assert portable_path("org/model") == "org/model"  # hub id as given
    assert portable_path("embedded:smollm2-135m-instruct") == "embedded:smollm2-135m-instruct"
    assert portable_path("runs/full") == "runs/full"  # relative: as given
    assert portable_path(tmp_path / "runs" / "full") == "runs/full"  # under the working directory: relative
    assert portable_path(tmp_path) == "."
    outside = "/somewhere/else/runs/full"
    assert portable_path(outside) == "<local>/runs/full"
    assert portable_path(outside, keep=1) == "<local>/full"
    assert not portable_path(os.path.expanduser("~/x/y")).startswith("/")


def test_score_examples_token_values_match_a_direct_computation(tiny_tokenizer, tiny_model):
    examples = qa_examples(tiny_tokenizer, ["Who is Basil?", "Where?"], ["A writer.", "In Kuwait City, Kuwait."])
    out = score_examples(tiny_model, examples, tiny_tokenizer.pad_token_id, batch_size=1, token_values=True)
    for i, example in enumerate(examples):
        ids = torch.tensor([example["input_ids"]])
        with torch.no_grad():
            log_p = torch.log_softmax(tiny_model(ids).logits[0, :-1].double(), -1)
        labels = torch.tensor(example["labels"][1:])
        keep = labels != -100
        expected = log_p[keep].gather(-1, labels[keep].unsqueeze(-1)).squeeze(-1)
        np.testing.assert_allclose(out["token_logprob"][i], expected.numpy(), rtol=1e-5)
        mu = (log_p[keep].exp() * log_p[keep]).sum(-1)
        var = (log_p[keep].exp() * (log_p[keep] - mu.unsqueeze(-1)) ** 2).sum(-1)  # E[(log p - mu)^2]
        np.testing.assert_allclose(out["token_mu"][i], mu.numpy(), rtol=1e-5)
        np.testing.assert_allclose(out["token_sigma"][i], var.sqrt().numpy(), rtol=1e-4)
        assert out["num_tokens"][i] == int(keep.sum())
        assert math.isclose(out["nll_sum"][i], -float(expected.sum()), rel_tol=1e-6)
    batched = score_examples(tiny_model, examples, tiny_tokenizer.pad_token_id, batch_size=2)
    np.testing.assert_allclose(batched["nll_sum"], out["nll_sum"], rtol=1e-5)


def test_beam_continuations_return_k_candidates_in_input_order(tiny_tokenizer, tiny_model):
    prompts = [tiny_tokenizer("The author")["input_ids"], tiny_tokenizer("Kuwait City is")["input_ids"]]
    beams = generate_continuations(
        tiny_model, tiny_tokenizer, prompts, batch_size=2, max_new_tokens=4, num_beams=3, num_return_sequences=3
    )
    assert [len(b) for b in beams] == [3, 3]
    alone = generate_continuations(
        tiny_model, tiny_tokenizer, prompts[1:], max_new_tokens=4, num_beams=3, num_return_sequences=3
    )
    assert alone[0] == beams[1]
    with pytest.raises(ValueError, match="num_return_sequences"):
        generate_continuations(tiny_model, tiny_tokenizer, prompts, num_beams=2, num_return_sequences=3)


def test_metric_cache_recomputes_for_other_weights(tmp_path):
    calls = []
    cache = MetricCache(tmp_path, "x_cache", "m", "fp1")
    assert cache.get_or_compute("s", "m1", {"k": 1}, "d", lambda: calls.append(1) or {"v": np.arange(2)}) == {
        "v": [0, 1]
    }
    assert cache.get_or_compute("s", "m1", {"k": 1}, "d", lambda: calls.append(1) or {"v": [9]}) == {"v": [0, 1]}
    other = MetricCache(tmp_path, "x_cache", "m", "fp2")
    with pytest.warns(UserWarning, match="another model"):
        assert other.get_or_compute("s", "m1", {"k": 1}, "d", lambda: calls.append(1) or {"v": [9]}) == {"v": [9]}
    assert len(calls) == 2


def test_write_json_atomic_leaves_no_partial_file(tmp_path):
    target = tmp_path / "r.json"
    write_json_atomic(target, {"a": np.float64(1.5)})
    with pytest.raises(TypeError):
        write_json_atomic(target, {"a": object()})
    assert json.loads(target.read_text()) == {"a": 1.5}
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]


def _hold_waiting_lock(path, ready):
    with waiting_lock(path):
        ready.set()
        time.sleep(120)


def test_waiting_lock_excludes_other_processes_until_its_holder_dies(tmp_path):
    # drivers sharing a work dir serialise read-modify-write updates through it; a killed holder blocks nobody
    target = tmp_path / "shared" / "invocations.json"
    with (
        held_elsewhere(_hold_waiting_lock, target),
        open(f"{target}.lock", "a") as handle,
        pytest.raises(BlockingIOError),
    ):
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)  # held by the other process
    with waiting_lock(target):  # the kernel dropped the dead holder's lock
        write_json_atomic(target, {"n": 1})
    with open(f"{target}.lock", "a") as handle:  # and this block released its own
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    assert json.loads(target.read_text()) == {"n": 1}
