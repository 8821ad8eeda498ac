"""A new user's first hour (issue 22): bf16 configs on a machine without a bf16 GPU, the augmented model deleted by
default, an unreachable hub named in seconds with the local-path option, results that name the folder evaluated."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from peft import get_peft_model
from transformers import AutoModelForCausalLM

from rklu_llm import UnlearnConfig, cli, load_model
from rklu_llm.data import DataUnavailableError, load_tofu
from rklu_llm.data.text import load_wikitext
from rklu_llm.eval.tofu import evaluate_tofu
from rklu_llm.hub import tofu_results_markdown
from rklu_llm.models import ModelLoadError, lora_config
from rklu_llm.offline import hub_problem

REPO = Path(__file__).resolve().parents[1]
NO_BF16_GPU = "bf16 was requested but this machine has no bf16-capable GPU: running in float32 instead"


# ---- precision --------------------------------------------------------------------------------------------------
def test_bf16_config_falls_back_to_float32_with_one_line(tmp_path, caplog):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: bf16 may be supported")
    with caplog.at_level(logging.WARNING, logger="rklu_llm"):
        config = UnlearnConfig(output_dir=str(tmp_path / "o"), bf16=True, report_to="none")
    assert config.bf16 is False and config.bf16_full_eval is False
    assert [r.getMessage() for r in caplog.records if "bf16" in r.getMessage()] == [
        NO_BF16_GPU + " (pass --bf16 false to silence this line)."
    ]
    kept = UnlearnConfig(output_dir=str(tmp_path / "o"), bf16=True, use_cpu=True, report_to="none")
    assert kept.bf16 is True  # asked for bf16 autocast on the CPU explicitly: kept


def test_unlearn_config_reports_the_missing_model_not_the_precision(tmp_path, monkeypatch, caplog):
    """The documented GPU config on this CPU: the first error is the missing input, not bf16."""
    monkeypatch.chdir(tmp_path)
    missing = r"Model 'runs/full' is not a local folder, not in the Hugging Face cache"
    with pytest.raises(ModelLoadError, match=missing):
        cli.main(["unlearn", "--config", str(REPO / "recipes/configs/tofu_forget10_rklu.yaml")])
    with pytest.raises(ModelLoadError, match=missing):
        cli.main(["eval", "tofu", "--model", "runs/full"])
    assert not (tmp_path / "runs").exists()


# ---- the augmented model ------------------------------------------------------------------------------------------
def test_augmented_model_is_deleted_after_the_save_by_default(tmp_path):
    config = UnlearnConfig(output_dir=str(tmp_path / "o"), report_to="none")
    assert config.keep_augmented is False
    readme = (REPO / "README.md").read_text()
    assert "deleted after the final save unless `keep_augmented=True`" in readme


# ---- an unreachable hub -------------------------------------------------------------------------------------------
def test_unreachable_hub_fails_fast_naming_the_local_option(unreachable_hub):
    cases = (
        (lambda: load_tofu("forget01"), DataUnavailableError, "--data_dir <folder with forget01.jsonl>"),
        (lambda: load_wikitext(), DataUnavailableError, "--wikitext_dir <folder with wikitext-2-raw-test.txt>"),
        (lambda: load_model("someone/not-cached-model"), ModelLoadError, "Pass a local model folder"),
    )
    from rklu_llm.offline import PROBE_TIMEOUT

    for call, error, option in cases:
        with pytest.raises(error) as caught:
            call()
        assert unreachable_hub == [("http://127.0.0.1:9", PROBE_TIMEOUT)]  # one capped probe, remembered, no retries
        message = str(caught.value)
        assert option in message and "127.0.0.1:9" in message
        assert "HF_DATASETS_OFFLINE" not in message.split("HF_HUB_OFFLINE=1")[0]  # no advice about an unset variable


def test_offline_variable_is_named_as_set(monkeypatch):
    monkeypatch.delenv("RKLU_TOFU_DIR", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    assert hub_problem() == "HF_DATASETS_OFFLINE is set"
    with pytest.raises(DataUnavailableError, match="or unset HF_DATASETS_OFFLINE on a machine that reaches the hub"):
        load_tofu("forget01")


# ---- what was evaluated -------------------------------------------------------------------------------------------
def test_results_of_a_lora_folder_name_the_folder_and_its_base(tmp_path, tiny_model_dir, tiny_tokenizer, tofu_dir):
    adapter = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir), lora_config(r=2, alpha=4))
    adapter.save_pretrained(tmp_path / "adapter")
    tiny_tokenizer.save_pretrained(tmp_path / "adapter")
    model, tokenizer = load_model(str(tmp_path / "adapter"))
    result = evaluate_tofu(
        model,
        tokenizer,
        forget_splits=("forget01",),
        data_dir=tofu_dir,
        output_dir=tmp_path / "adapter",
        max_items=2,
        max_new_tokens=2,
        sets=("forget01_perturbed",),
    )
    stored = json.loads((tmp_path / "adapter" / "tofu_eval.json").read_text())
    assert stored["model"] == result["model"] and stored["model"].endswith("adapter")
    assert stored["base_model"].endswith(tiny_model_dir.name)
    assert f"- evaluated: `{stored['model']}` (LoRA adapter on `{stored['base_model']}`)" in tofu_results_markdown(
        stored
    )
    plain, _ = load_model(str(tiny_model_dir))
    assert "base_model" not in evaluate_tofu(
        plain,
        tokenizer,
        forget_splits=("forget01",),
        data_dir=tofu_dir,
        max_items=2,
        max_new_tokens=2,
        sets=("forget01_perturbed",),
    )


def test_a_folder_without_a_model_is_named(tmp_path):
    (tmp_path / "demo_results.json").write_text("{}")
    with pytest.raises(ModelLoadError, match="is a folder without a model: no config.json"):
        load_model(str(tmp_path))
