"""lm-eval-harness on the shipped tasks: every task offline on a tiny model (in memory), the cache, early errors, the
local-data loader, and the upstream ``lm_eval`` command on saved tiny checkpoints (full weights and a LoRA adapter)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import SHARED_DATA

from rklu_llm.data import DataUnavailableError
from rklu_llm.eval import general as general_eval
from rklu_llm.eval.general import ALL_TASKS, evaluate_general, resolve_data, resolve_tasks
from rklu_llm.tasks import PAPER_TASKS, TASKS_DIR, rklu_tasks

GENERAL = SHARED_DATA / "general"


def test_every_shipped_task_runs_offline_on_a_tiny_model(tmp_path, tiny_tokenizer, tiny_model, monkeypatch):
    """The paper's seven and the three extra tasks with limit=20, offline (how long it takes is a benchmark's
    question, not this test's: no time bound here)."""
    monkeypatch.chdir(tmp_path)
    result = evaluate_general(
        tiny_model,
        tiny_tokenizer,
        tasks="rklu_general_all",
        data_dir=GENERAL,
        limit=20,
        batch_size=16,
        output_dir=tmp_path / "eval",
    )
    assert list(result["tasks"]) == list(ALL_TASKS)
    for task, values in result["tasks"].items():
        assert values["num_samples"] == 20 and values["num_docs"] > 20, task
        assert 0 <= values["acc"] <= 1 and (values["acc"] * 20).is_integer(), task  # a fraction of 20 items
    # the paper's summary: the unweighted mean of the tasks' accuracy
    assert result["average_acc"] == pytest.approx(sum(v["acc"] for v in result["tasks"].values()) / 10)
    written = (tmp_path / "eval" / general_eval.RESULT_FILE).read_text()
    assert json.loads(written) == result and str(SHARED_DATA) not in written and str(tmp_path) not in written

    def fail(*args, **kwargs):
        raise AssertionError("a cached task was evaluated again")

    monkeypatch.setattr("lm_eval.simple_evaluate", fail)
    assert (
        evaluate_general(
            tiny_model,
            tiny_tokenizer,
            tasks="rklu_general_all",
            data_dir=GENERAL,
            limit=20,
            batch_size=16,
            output_dir=tmp_path / "eval",
        )
        == result
    )


def test_task_names():
    assert resolve_tasks("rklu_general") == list(PAPER_TASKS)
    assert resolve_tasks(["rklu_piqa", "copa", "piqa"]) == ["piqa", "copa"]
    assert resolve_tasks("boolq, openbookqa") == ["boolq", "openbookqa"]
    with pytest.raises(ValueError, match="Unknown lm-eval task 'mmlu'; shipped tasks: piqa, hellaswag"):
        resolve_tasks("piqa,mmlu")
    with pytest.raises(ValueError, match="No lm-eval task"):
        resolve_tasks("")


def test_bad_inputs_fail_before_the_model_is_used(tmp_path, tiny_tokenizer, monkeypatch):
    untouchable = object()  # any use of the "model" would fail; every error below comes first
    with pytest.raises(ValueError, match="Unknown lm-eval task"):
        evaluate_general(untouchable, tiny_tokenizer, tasks="triviaqa", data_dir=GENERAL)
    for limit in (0, -3):
        with pytest.raises(ValueError, match="limit must be a positive number"):
            evaluate_general(untouchable, tiny_tokenizer, tasks="copa", data_dir=GENERAL, limit=limit)
    (tmp_path / "copa").mkdir()
    (tmp_path / "copa" / "train.jsonl").write_text("{}\n")
    with pytest.raises(FileNotFoundError, match=r"lacks the expected files \(copa: .*copa/validation\.jsonl"):
        evaluate_general(untouchable, tiny_tokenizer, tasks="copa", data_dir=tmp_path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        evaluate_general(untouchable, tiny_tokenizer, tasks="copa", data_dir=tmp_path / "missing")
    monkeypatch.delenv("RKLU_GENERAL_DIR", raising=False)
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    offline = r"no data folder and the Hugging Face hub cannot be used \(.*OFFLINE"
    with pytest.raises(DataUnavailableError, match=offline):
        evaluate_general(untouchable, tiny_tokenizer, tasks="copa")


def test_data_folder_from_the_environment(monkeypatch):
    monkeypatch.setenv("RKLU_GENERAL_DIR", str(GENERAL))
    files = resolve_data(["piqa", "wsc273"])
    assert files == {"piqa": GENERAL / "piqa" / "validation.jsonl", "wsc273": GENERAL / "wsc273" / "test.jsonl"}


def test_local_boolq_gets_the_super_glue_label():
    split = rklu_tasks.load("boolq", data_dir=str(GENERAL))["validation"]
    assert all(row["label"] == int(row["answer"]) for row in split.select(range(50)))
    assert set(rklu_tasks.load("copa", data_dir=str(GENERAL), pretrained="ignored")) == {"validation"}


# --------------------------------------------------------------------------------------------------------------------
# the upstream command on saved checkpoints
# --------------------------------------------------------------------------------------------------------------------


def upstream_lm_eval(model_args: str, output: Path, tasks: str, limit: int) -> subprocess.Popen:
    """``lm_eval --model hf --model_args ... --include_path <shipped tasks> --tasks ...``, offline, as users run it."""
    script = Path(sys.executable).with_name("lm_eval")
    command = [str(script)] if script.is_file() else [sys.executable, "-m", "lm_eval"]
    command += [
        "--model",
        "hf",
        "--model_args",
        model_args,
        "--include_path",
        str(TASKS_DIR),
        "--tasks",
        tasks,
        "--limit",
        str(limit),
        "--batch_size",
        "16",
        "--device",
        "cpu",
        "--output_path",
        str(output),
        "--metadata",
        json.dumps({"data_dir": str(GENERAL)}),
    ]
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "OMP_NUM_THREADS": "1",
    }
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finished(process: subprocess.Popen, output: Path) -> dict:
    log, _ = process.communicate(timeout=600)
    assert process.returncode == 0, log[-6000:]
    files = sorted(output.rglob("results_*.json"))
    assert files, f"no results file under {output}:\n{log[-3000:]}"
    return json.loads(files[-1].read_text())


@pytest.mark.slow
def test_upstream_lm_eval_on_saved_checkpoints(tmp_path, tiny_tokenizer, tiny_model):
    from peft import get_peft_model

    from rklu_llm.models import lora_config

    full = tmp_path / "full"
    tiny_model.save_pretrained(full)
    tiny_tokenizer.save_pretrained(full)
    adapter = tmp_path / "adapter"
    lora = get_peft_model(tiny_model, lora_config(r=4, alpha=8))
    for name, parameter in lora.named_parameters():  # a non-trivial adapter (lora_B starts at zero)
        if "lora_B" in name:
            parameter.data.normal_(0, 0.5)
    lora.save_pretrained(adapter)

    tasks, limit = "rklu_copa,rklu_wsc273,rklu_arc_easy", 8
    runs = {
        "full": upstream_lm_eval(f"pretrained={full}", tmp_path / "out_full", tasks, limit),
        "lora": upstream_lm_eval(f"pretrained={full},peft={adapter}", tmp_path / "out_lora", tasks, limit),
    }
    results = {name: finished(process, tmp_path / f"out_{name}") for name, process in runs.items()}

    # the same numbers as the in-memory evaluation of the same weights (the adapter off = the saved full model)
    with lora.disable_adapter():
        base = evaluate_general(lora, tiny_tokenizer, tasks=tasks, data_dir=GENERAL, limit=limit)
    adapted = evaluate_general(lora, tiny_tokenizer, tasks=tasks, data_dir=GENERAL, limit=limit)
    for name, ours in (("full", base), ("lora", adapted)):
        for task, values in ours["tasks"].items():
            upstream = results[name]["results"][f"rklu_{task}"]
            assert upstream["acc,none"] == pytest.approx(values["acc"]), (name, task)
            assert results[name]["n-samples"][f"rklu_{task}"]["effective"] == limit
