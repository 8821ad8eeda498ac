"""The copyright evaluation: BLEU / ROUGE-L / perplexity on hand-computed cases, the continuation protocol and the
perplexity of a tiny model against a direct computation, the cache, portable results and early errors."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from conftest import SHARED_DATA

from rklu_llm.data import DataUnavailableError
from rklu_llm.eval import copyright as copyright_eval
from rklu_llm.eval.copyright import continuation_scores, evaluate_copyright, prepare_copyright_data, summary_row
from rklu_llm.eval.metrics import corpus_bleu, perplexity, rouge_l, sentence_bleu

BOOKS = SHARED_DATA / "books"
WIKITEXT = SHARED_DATA / "wikitext"
REF = "the cat sat on the mat"


# --------------------------------------------------------------------------------------------------------------------
# metrics, by hand
# --------------------------------------------------------------------------------------------------------------------


def test_sentence_bleu_by_hand():
    # identical: every n-gram precision is 1, BP 1 -> 100
    # "the cat sat on a mat": p1 5/6, p2 3/5 (the cat, cat sat, sat on), p3 2/4, p4 1/3, BP 1
    # "the cat ran" (3 tokens): p1 2/3, p2 1/2, p3 0/1 -> exp smoothing 1/(2*1); no 4-gram in the generation, so the
    #   effective order is 3; BP = exp(1 - 6/3)
    # "" -> 0; no unigram match -> 0
    got = sentence_bleu([REF, "the cat sat on a mat", "the cat ran", "", "dogs bark loudly"], [REF] * 5)
    want = [
        100.0,
        100 * (5 / 6 * 3 / 5 * 2 / 4 * 1 / 3) ** (1 / 4),
        100 * math.exp(1 - 6 / 3) * (2 / 3 * 1 / 2 * 1 / 2) ** (1 / 3),
        0.0,
        0.0,
    ]
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-9)


def test_corpus_bleu_sums_counts_before_the_precisions():
    # item 1 = REF itself (6 tokens), item 2 "the cat ran" against REF:
    # matches/totals p1 (6+2)/(6+3), p2 (5+1)/(5+2), p3 (4+0)/(4+1), p4 (3+0)/(3+0); lengths 9 vs 12 -> BP exp(1-12/9)
    want = 100 * math.exp(1 - 12 / 9) * (8 / 9 * 6 / 7 * 4 / 5 * 3 / 3) ** (1 / 4)
    assert corpus_bleu([REF, "the cat ran"], [REF, REF]) == pytest.approx(want, rel=1e-9)


def test_rouge_l_by_hand():
    # gold 6 words, generated "The cats on a mat!" -> tokens the cat on a mat (lower-cased, stemmed, punctuation gone)
    # LCS(the cat sat on the mat, the cat on a mat) = the cat on mat = 4: R 4/6, P 4/5, F 2PR/(P+R)
    got = rouge_l(["The cats on a mat!", "", REF], [REF, REF, REF])
    r, p = 4 / 6, 4 / 5
    np.testing.assert_allclose(got["recall"], [r, 0, 1])
    np.testing.assert_allclose(got["precision"], [p, 0, 1])
    np.testing.assert_allclose(got["fmeasure"], [2 * p * r / (p + r), 0, 1])


def test_perplexity_is_token_weighted():
    # segments with NLL sums 2 and 4 nats over 1 and 3 tokens: exp((2 + 4) / (1 + 3)), not the mean of e^2 and e^(4/3)
    assert perplexity([2.0, 4.0], [1, 3]) == pytest.approx(math.exp(1.5))
    with pytest.raises(ValueError, match="at least one predicted token"):
        perplexity([], [])


def test_continuation_scores_are_x100():
    scores = continuation_scores([REF, "the cat sat on a mat"], [REF, REF])
    aggregate = scores["aggregate"]
    assert aggregate["bleu"] == pytest.approx((100 + 100 * (1 / 12) ** 0.25) / 2)
    assert aggregate["rouge_l_recall"] == pytest.approx((100 + 100 * 5 / 6) / 2)
    assert aggregate["rouge_l_f1"] == pytest.approx((100 + 100 * 5 / 6) / 2)  # both 6 words: P = R
    assert aggregate["num_chunks"] == 2 and scores["items"]["bleu"][0] == pytest.approx(100)


# --------------------------------------------------------------------------------------------------------------------
# the evaluation on a tiny model
# --------------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def texts(tmp_path_factory):
    """Excerpts of two novels (small enough for the tiny tokenizer to give a handful of chunks)."""
    folder = tmp_path_factory.mktemp("books")
    for name in ("pride_and_prejudice", "sense_and_sensibility"):
        (folder / f"{name}.txt").write_text(
            (BOOKS / f"{name}.txt").read_text(encoding="utf-8")[:4000], encoding="utf-8"
        )
    return folder / "pride_and_prejudice.txt", folder / "sense_and_sensibility.txt"


@pytest.fixture(scope="module")
def data(tiny_tokenizer, texts):
    forget, control = texts
    return prepare_copyright_data(
        tiny_tokenizer,
        str(forget),
        str(control),
        wikitext_dir=str(WIKITEXT),
        chunk_tokens=40,
        num_chunks=5,
        prefix_tokens=24,
        segment_tokens=32,
        num_segments=6,
    )


def direct_perplexity(model, segments) -> float:
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for segment in segments:
            ids = torch.tensor([segment])
            log_p = torch.log_softmax(model(input_ids=ids).logits[0, :-1].double(), dim=-1)
            total -= log_p.gather(-1, ids[0, 1:].unsqueeze(-1)).sum().item()
            count += len(segment) - 1
    return math.exp(total / count)


def test_copyright_evaluation_of_a_tiny_model(tmp_path, tiny_tokenizer, tiny_model, data, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = evaluate_copyright(tiny_model, tiny_tokenizer, data, output_dir=tmp_path / "eval", batch_size=4)
    assert set(result["sets"]) == {"forget", "control"}
    for name in ("forget", "control"):
        entry = result["sets"][name]
        chunks = data.sets[name]
        assert entry["aggregate"]["num_chunks"] == len(chunks) == 5
        want = [tiny_tokenizer.decode(c[24:], skip_special_tokens=True).strip() for c in chunks]
        assert entry["items"]["reference"] == want  # the true continuation: the chunk after its prefix
        assert all(0 <= b <= 100 for b in entry["items"]["bleu"])
        assert entry["aggregate"]["bleu"] == pytest.approx(np.mean(entry["items"]["bleu"]))
    wikitext = result["perplexity"]["wikitext"]
    assert wikitext["num_segments"] == 6 and wikitext["num_tokens"] == 6 * 31
    assert wikitext["perplexity"] == pytest.approx(direct_perplexity(tiny_model, data.wikitext), rel=1e-5)
    assert result["settings"]["max_new_tokens"] == 16  # the rest of a 40-token chunk after 24

    written = (tmp_path / "eval" / copyright_eval.RESULT_FILE).read_text()
    assert json.loads(written) == result
    assert str(tmp_path) not in written and "/work/" not in written  # portable names only
    row = summary_row(result)
    assert row["forget_bleu"] == result["sets"]["forget"]["aggregate"]["bleu"]
    assert row["wikitext_perplexity"] == wikitext["perplexity"]

    # a second run takes every piece from the cache: no generation, no scoring
    def fail(*args, **kwargs):
        raise AssertionError("recomputed a cached piece")

    monkeypatch.setattr(copyright_eval, "generate_continuations", fail)
    monkeypatch.setattr(copyright_eval, "score_examples", fail)
    again = evaluate_copyright(tiny_model, tiny_tokenizer, data, output_dir=tmp_path / "eval", batch_size=4)
    assert again == result


def test_the_continuation_is_greedy_and_batch_independent(tiny_tokenizer, tiny_model, data):
    one = evaluate_copyright(tiny_model, tiny_tokenizer, data, generation_batch_size=1)
    many = evaluate_copyright(tiny_model, tiny_tokenizer, data, generation_batch_size=8)
    assert one["sets"]["forget"]["items"]["generated"] == many["sets"]["forget"]["items"]["generated"]


def test_a_model_that_reproduces_the_book_scores_100(tiny_tokenizer, tiny_model, data, monkeypatch):
    """A "model" whose greedy continuation is the true one scores 100 on every score."""
    chunks = data.sets["forget"] + data.sets["control"]
    truth = {tuple(c[:24]): tiny_tokenizer.decode(c[24:], skip_special_tokens=True).strip() for c in chunks}

    def oracle(model, tokenizer, prompts, *args, **kwargs):
        return [truth[tuple(p)] for p in prompts]

    monkeypatch.setattr(copyright_eval, "generate_continuations", oracle)
    result = evaluate_copyright(tiny_model, tiny_tokenizer, data)
    for name in ("forget", "control"):
        aggregate = result["sets"][name]["aggregate"]
        assert aggregate["bleu"] == pytest.approx(100) and aggregate["rouge_l_recall"] == pytest.approx(100)
        assert aggregate["rouge_l_f1"] == pytest.approx(100) and aggregate["corpus_bleu"] == pytest.approx(100)


# --------------------------------------------------------------------------------------------------------------------
# bad input: before any model work
# --------------------------------------------------------------------------------------------------------------------


def test_bad_inputs_fail_before_any_model_work(tmp_path, tiny_tokenizer, texts, tiny_model):
    forget, control = texts
    with pytest.raises(ValueError, match="prefix_tokens=40 must be at least 1 and shorter than a chunk"):
        prepare_copyright_data(tiny_tokenizer, str(forget), chunk_tokens=40, prefix_tokens=40, perplexity=False)
    with pytest.raises(ValueError, match="fewer than one chunk of 4096"):
        prepare_copyright_data(tiny_tokenizer, str(forget), chunk_tokens=4096, prefix_tokens=200, perplexity=False)
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes(b"Caf\xe9 society " * 100)
    with pytest.raises(ValueError, match="is not UTF-8 text"):
        prepare_copyright_data(tiny_tokenizer, str(latin1), chunk_tokens=8, prefix_tokens=4, perplexity=False)
    with pytest.raises(DataUnavailableError, match="wikitext-2-raw-test.txt"):
        prepare_copyright_data(
            tiny_tokenizer, str(forget), wikitext_dir=str(tmp_path), chunk_tokens=40, prefix_tokens=24
        )
    # the tiny model's context is 512 positions: a 600-token chunk is refused before any generation
    big = prepare_copyright_data(
        tiny_tokenizer,
        [(BOOKS / "emma.txt").read_text(encoding="utf-8")[:20000]],
        chunk_tokens=600,
        num_chunks=1,
        prefix_tokens=200,
        perplexity=False,
    )
    with pytest.raises(ValueError, match="longer than the model's context of 512"):
        evaluate_copyright(tiny_model, tiny_tokenizer, big)


def test_wikitext_from_the_environment(monkeypatch, tiny_tokenizer, texts, tmp_path):
    forget, _ = texts
    monkeypatch.setenv("RKLU_WIKITEXT_DIR", str(WIKITEXT))
    data = prepare_copyright_data(
        tiny_tokenizer, str(forget), chunk_tokens=40, prefix_tokens=24, segment_tokens=16, num_segments=3
    )
    assert len(data.wikitext) == 3 and data.sources["wikitext"].endswith("wikitext-2-raw-test.txt")
    monkeypatch.delenv("RKLU_WIKITEXT_DIR")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(DataUnavailableError, match="could not be loaded from the hub"):
        prepare_copyright_data(tiny_tokenizer, str(forget), chunk_tokens=40, prefix_tokens=24)


# --------------------------------------------------------------------------------------------------------------------
# the book recipe and its benchmark
# --------------------------------------------------------------------------------------------------------------------


def recipe_argv(model_dir, output_dir, *extra) -> list[str]:
    return [
        "--model",
        str(model_dir),
        "--output_dir",
        str(output_dir),
        "--books_dir",
        str(BOOKS),
        "--wikitext_dir",
        str(WIKITEXT),
        "--general_data_dir",
        str(SHARED_DATA / "general"),
        "--chunk_tokens",
        "48",
        "--num_chunks",
        "4",
        "--prefix_tokens",
        "24",
        "--use_cpu",
        "true",
        "--methods",
        "rklu,npo",
        *extra,
    ]  # argparse: a flag given again in extra wins


@pytest.mark.parametrize(
    "extra,match",
    [
        (["--chunk_tokens", "1024", "--prefix_tokens", "200"], "longer than the model's context of 512"),
        (["--prefix_tokens", "48"], "must be at least 1 and shorter than a chunk"),
        (["--forget_text", "ulysses.txt"], "'ulysses.txt' is neither a file"),
        (["--methods", "rklu,gd"], "gd .* needs a retain corpus"),
        (["--methods", "rklu,sgd"], r"unknown \['sgd'\]"),
        (["--general_tasks", "mmlu"], "Unknown lm-eval task 'mmlu'"),
        (["--general_limit", "0"], "general_limit must be >= 1"),
        (["--general_data_dir", "/nonexistent/general"], "does not exist"),
        (["--finetune_epochs", "-1"], "finetune_epochs must be >= 0"),
    ],
)
def test_the_book_recipe_refuses_bad_input_before_loading_a_model(tmp_path, tiny_model_dir, monkeypatch, extra, match):
    from rklu_llm import models
    from rklu_llm.scripts import copyright as recipe

    def no_model(*args, **kwargs):
        raise AssertionError("a model was loaded before the inputs were checked")

    monkeypatch.setattr(models, "load_model", no_model)
    monkeypatch.setattr(recipe, "load_model", no_model)  # the recipe imports it at its top
    with pytest.raises((ValueError, FileNotFoundError), match=match):
        recipe.main(recipe_argv(tiny_model_dir, tmp_path / "out", *extra))
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_copyright_benchmark_end_to_end_on_a_tiny_model(tmp_path, tiny_model_dir, monkeypatch):
    """benchmarks/copyright.py -> the book recipe: base, fine-tune, three methods (KL to the teacher, retain NLL,
    refusal pairs), the results files; a second invocation redoes nothing. In process: no interpreter start-up."""
    import runpy
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "copyright.py"
    work, results = tmp_path / "work", tmp_path / "results"
    argv = [
        str(script),
        "--data_root",
        str(SHARED_DATA),
        "--work_dir",
        str(work),
        "--results_dir",
        str(results),
        "--model",
        str(tiny_model_dir),
        "--methods",
        "rklu,gd,dpo",
        "--num_chunks",
        "4",
        "--chunk_tokens",
        "48",
        "--prefix_tokens",
        "24",
        "--num_segments",
        "4",
        "--general_tasks",
        "copa",
        "--general_limit",
        "2",
        "--finetune_epochs",
        "1",
        "--unlearn_epochs",
        "1",
        "--retain_text",
        "persuasion.txt",
    ]
    monkeypatch.setattr(sys, "argv", argv)
    monkeypatch.chdir(tmp_path)
    runpy.run_path(str(script), run_name="__main__")

    data = json.loads((results / "copyright_smollm2_reduced.json").read_text())
    rows = {row["name"]: row for row in data["rows"]}
    assert list(rows) == ["base", "finetuned", "rklu", "gd", "dpo"]
    for row in rows.values():
        assert 0 <= row["forget_bleu"] <= 100 and 0 <= row["control_bleu"] <= 100
        assert row["wikitext_perplexity"] > 1 and 0 <= row["general_average_acc"] <= 1
    assert rows["gd"]["retain_mode"] == "rt" and rows["rklu"]["seconds"] > 0
    assert (work / "runs" / "augmented.json").is_file()
    table = (results / "copyright_smollm2_reduced.md").read_text()
    assert "benchmarks/copyright.py --data_root" in table and table.count("\n| ") == 6  # header + 5 rows
    assert (results / "copyright_smollm2_reduced.png").stat().st_size > 10_000
    for name in rows:  # every evaluation written beside its stage, portable
        assert str(tmp_path) not in (work / "runs" / name / "copyright_eval.json").read_text()

    stamps = {p: p.stat().st_mtime_ns for p in (work / "runs").glob("*/run.json")}
    runpy.run_path(str(script), run_name="__main__")
    assert {p: p.stat().st_mtime_ns for p in (work / "runs").glob("*/run.json")} == stamps
    invocations = json.loads((results / "copyright_smollm2_reduced.json").read_text())["invocations"]
    assert len(invocations) == 2 and all(i["finished"] for i in invocations)
