"""Model cards and ``push_to_hub``, offline: a fake ``HfApi`` records what would be uploaded."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from conftest import build_tiny_model
from huggingface_hub import EvalResult, ModelCard

from rklu_llm import UnlearnConfig, UnlearnTrainer, build_unlearning_dataset, hub, load_model, load_tofu
from rklu_llm.hub import (
    RESULTS_END,
    RESULTS_START,
    NotPublishableError,
    model_card,
    publishable_files,
    push_to_hub,
    recorded_command,
    update_model_card,
    write_model_card,
)
from rklu_llm.teacher import AUGMENTED_MARKER

TOKEN = "hf_" + "Zq7" * 12  # shaped like a hub token, known to no hub


class FakeHfApi:
    """Records ``create_repo`` / ``create_commit`` calls and the bytes of every uploaded file."""

    def __init__(self, public: tuple[str, ...] = ()):
        self.private = {repo: False for repo in public}
        self.calls: list[tuple] = []
        self.uploaded: dict[str, bytes] = {}

    def create_repo(self, repo_id, token=None, private=None, exist_ok=False, **kwargs):
        self.calls.append(("create_repo", repo_id, private, token))
        self.private.setdefault(repo_id, bool(private))

    def model_info(self, repo_id, token=None, **kwargs):
        return SimpleNamespace(private=self.private[repo_id])

    def create_branch(self, repo_id, branch, token=None, exist_ok=False, **kwargs):
        self.calls.append(("create_branch", repo_id, branch))

    def create_commit(self, repo_id, operations, commit_message, token=None, revision=None, **kwargs):
        self.calls.append(("create_commit", repo_id, commit_message, revision))
        for operation in operations:
            content = operation.path_or_fileobj
            self.uploaded[operation.path_in_repo] = Path(content).read_bytes() if isinstance(content, str) else content
        return SimpleNamespace(commit_url=f"https://huggingface.co/{repo_id}/commit/0123")


def card_metadata(text: str) -> dict:
    return yaml.safe_load(text.split("---")[1])


def tofu_result(forget_quality: float, utility: float, items: int = 40) -> dict:
    """A hand-made ``tofu_eval.json`` dict with the fields the card reads."""
    aggregate = {"probability": 0.25, "rouge_l_recall": 0.5, "truth_ratio": 0.625, "num_items": items}
    return {
        "model": "runs/x",
        "settings": {"forget_splits": ["forget01"], "max_items": None, "max_new_tokens": 200},
        "sets": {
            name: {"aggregate": aggregate}
            for name in ("forget01_perturbed", "retain_perturbed", "real_authors_perturbed", "world_facts_perturbed")
        },
        "model_utility": utility,
        "model_utility_note": None,
        "forget": {
            "forget01": {
                "forget_quality": forget_quality,
                "forget_quality_note": None,
                "reference": "runs/retain99/tofu_eval.json",
            }
        },
    }


@pytest.fixture
def hub_token(monkeypatch):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    return TOKEN


@pytest.fixture(scope="module")
def unlearned_dir(tmp_path_factory, tiny_tokenizer, tofu_dir) -> Path:
    """A real unlearning run's output folder (full student, LoRA augmented model) with a checkpoint, plus the files
    a run may leave beside the model: evaluation results and cache, bookkeeping, a lock."""
    out = tmp_path_factory.mktemp("rklu")
    model_dir = tmp_path_factory.mktemp("tiny-base")
    build_tiny_model(tiny_tokenizer).save_pretrained(model_dir)
    tiny_tokenizer.save_pretrained(model_dir)
    model, tokenizer = load_model(str(model_dir))
    dataset = build_unlearning_dataset(tokenizer, load_tofu("forget01", tofu_dir).select(range(8)), max_length=256)
    config = UnlearnConfig(
        output_dir=str(out),
        method="rklu",
        augment_lora=True,
        augment_max_steps=1,
        keep_augmented=True,  # the push-refusal test needs the augmented model it built
        max_steps=1,
        per_device_train_batch_size=4,
        save_strategy="steps",
        save_steps=1,
        use_cpu=True,
        report_to="none",
        disable_tqdm=True,
    )
    trainer = UnlearnTrainer(
        model=model,
        args=config,
        train_dataset=dataset,
        processing_class=tokenizer,
        dataset_name="locuslab/TOFU:forget01",
    )
    trainer.train()
    trainer.save_model()
    (out / "tofu_eval.json").write_text(json.dumps(tofu_result(0.5, 0.4)))
    (out / "tofu_eval_cache").mkdir()
    (out / "tofu_eval_cache" / "x.json").write_text("{}")
    (out / "run.lock").write_text("1234")
    (out / "rklu_run.json").write_text(json.dumps({"base_model": "x"}))
    return out


# ---------------------------------------------------------------------------------------------------------------
# Model cards
# ---------------------------------------------------------------------------------------------------------------
def test_card_metadata_names_the_hub_base_model_and_a_valid_dataset_id(tmp_path):
    config = UnlearnConfig(output_dir=str(tmp_path), method="npo", use_cpu=True)
    card = model_card(
        config,
        "embedded:smollm2-135m-instruct",
        "locuslab/TOFU:forget10",
        forget_data={"forget_items": 400, "forget_sha256": "ab" * 32},
        command="rklu-llm unlearn",
    )
    meta = card_metadata(str(card))
    assert meta["base_model"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert meta["library_name"] == "transformers"
    assert meta["datasets"] == ["locuslab/TOFU"]
    assert {"unlearning", "rklu_llm", "npo"} <= set(meta["tags"])
    assert "model-index" not in meta  # no results yet
    text = card.text
    assert "`npo_beta` | 0.1" in text and "teacher_alpha" not in text  # the method's own hyper-parameters only
    assert "forget_items | 400" in text and "ab" * 32 in text and "config `forget10`" in text
    assert "rklu-llm unlearn" in text and f"rklu_llm {hub.package_version()}" in text


def test_card_of_a_local_base_model_shows_a_portable_path_and_no_base_model_metadata(tmp_path, tiny_model_dir):
    config = UnlearnConfig(output_dir=str(tmp_path), method="rklu", use_cpu=True)
    text = str(model_card(config, str(tiny_model_dir), "my forget set"))
    assert "base_model" not in card_metadata(text) and "datasets" not in card_metadata(text)
    assert str(tiny_model_dir) not in text and str(Path.home()) not in text
    assert "`my forget set`" in text and "teacher_alpha` | 8" in text


def test_recorded_command_is_portable_and_redacted(tmp_path):
    command = recorded_command(
        [
            str(tmp_path / "recipes" / "tofu_forget10.py"),
            "--hub_token",
            TOKEN,
            "--output_dir",
            str(tmp_path / "runs" / "a"),
            f"--push_token={TOKEN}",
            "--note",
            TOKEN,
            f"--model={tmp_path}/full",
        ]
    )
    assert TOKEN not in command and str(tmp_path) not in command
    assert command == (
        "python '<local>/recipes/tofu_forget10.py' --hub_token '<redacted>' --output_dir '<local>/runs/a' "
        f"'--push_token=<redacted>' --note '<redacted>' '--model=<local>/{tmp_path.name}/full'"
    )
    assert recorded_command(["/usr/bin/rklu-llm", "unlearn", "--method", "ga"]) == "rklu-llm unlearn --method ga"


def test_update_model_card_adds_results_and_replaces_earlier_tofu_entries(tmp_path):
    config = UnlearnConfig(output_dir=str(tmp_path), method="rklu", use_cpu=True)
    write_model_card(tmp_path, config, "embedded:smollm2-135m-instruct", "locuslab/TOFU:forget01", command="x")
    card = ModelCard.load(tmp_path / "README.md")
    other = EvalResult(
        task_type="text-generation",
        dataset_type="wikitext",
        dataset_name="WikiText",
        metric_type="perplexity",
        metric_value=12.5,
    )
    card.data.eval_results, card.data.model_name = [other], "m"
    card.save(tmp_path / "README.md")

    update_model_card(tmp_path, tofu_result(0.25, 0.5))
    update_model_card(tmp_path, tofu_result(0.75, 0.375, items=20))
    text = (tmp_path / "README.md").read_text()
    results = card_metadata(text)["model-index"][0]["results"]
    metrics = [(r["dataset"]["type"], m["type"], m["value"]) for r in results for m in r["metrics"]]
    assert ("wikitext", "perplexity", 12.5) in metrics  # other evaluators' entries are kept
    assert [m for m in metrics if m[1] == "forget_quality"] == [("locuslab/TOFU", "forget_quality", 0.75)]
    assert [m for m in metrics if m[1] == "model_utility"] == [("locuslab/TOFU", "model_utility", 0.375)]
    section = text.split(RESULTS_START)[1].split(RESULTS_END)[0]
    assert "forget quality (forget01): **0.75**" in section and "model utility: **0.375**" in section
    assert "| forget01 | 0.25 | 0.5 | 0.625 | 20 |" in section and "0.25**" not in section
    assert text.count(RESULTS_START) == 1


def test_update_model_card_leaves_other_cards_alone(tmp_path):
    assert update_model_card(tmp_path, tofu_result(0.5, 0.5)) is None  # no card: nothing written
    assert not (tmp_path / "README.md").exists()
    (tmp_path / "README.md").write_text("---\nlicense: mit\n---\n# Someone else's card\n")
    assert update_model_card(tmp_path, tofu_result(0.5, 0.5)) is None
    assert (tmp_path / "README.md").read_text() == "---\nlicense: mit\n---\n# Someone else's card\n"


def test_saved_card_carries_the_run(unlearned_dir):
    text = (unlearned_dir / "README.md").read_text()
    meta = card_metadata(text)
    assert meta["datasets"] == ["locuslab/TOFU"] and "rklu" in meta["tags"]
    assert "teacher_alpha` | 8" in text and RESULTS_START in text
    assert str(unlearned_dir) not in text and str(Path.home()) not in text


# ---------------------------------------------------------------------------------------------------------------
# push_to_hub
# ---------------------------------------------------------------------------------------------------------------
def test_push_uploads_the_allow_list_only_privately_and_no_token(unlearned_dir, hub_token, capsys):
    api = FakeHfApi()
    url = push_to_hub(unlearned_dir, "someone/tiny-rklu", api=api)
    assert url == "https://huggingface.co/someone/tiny-rklu/commit/0123"
    names = set(api.uploaded)
    assert {"model.safetensors", "config.json", "README.md", "tokenizer.json", "tofu_eval.json"} <= names
    assert names <= {
        "model.safetensors",
        "config.json",
        "generation_config.json",
        "README.md",
        "tokenizer.json",
        "tokenizer_config.json",
        "chat_template.jinja",
        "special_tokens_map.json",
        "tofu_eval.json",
    }
    assert not any("/" in name for name in names)  # nothing from augmented/, checkpoint-1/, tofu_eval_cache/
    assert api.calls[0] == ("create_repo", "someone/tiny-rklu", True, None)  # private by default
    assert api.calls[-1][2] == "Upload rklu unlearned model with rklu_llm"
    captured = capsys.readouterr()
    for content in [*api.uploaded.values(), captured.out.encode(), captured.err.encode()]:
        assert TOKEN.encode() not in content
        assert str(Path.home()).encode() not in content
    assert publishable_files(unlearned_dir) == sorted(unlearned_dir / name for name in names)


def test_push_refuses_an_existing_public_repo_unless_asked(unlearned_dir, hub_token):
    api = FakeHfApi(public=("someone/public",))
    with pytest.raises(NotPublishableError, match="exists and is public"):
        push_to_hub(unlearned_dir, "someone/public", api=api)
    assert api.uploaded == {}
    push_to_hub(unlearned_dir, "someone/public", private=False, revision="v1", api=api)
    assert ("create_branch", "someone/public", "v1") in api.calls and "model.safetensors" in api.uploaded


@pytest.mark.parametrize("damage", ["augmented", "staging", "no_weights", "no_config", "token", "local_path"])
def test_push_refuses_what_is_not_a_finished_shareable_model(damage, unlearned_dir, tmp_path, hub_token):
    folder = tmp_path / "model"
    shutil.copytree(unlearned_dir, folder, ignore=shutil.ignore_patterns("checkpoint-*", "augmented"))
    messages = {
        "augmented": "augmented model",
        "staging": "unfinished save",
        "no_weights": "no \\*.safetensors",
        "no_config": "neither config.json",
        "token": "access token",
        "local_path": "local path",
    }
    if damage == "augmented":  # wherever the run keeps it
        folder = next(unlearned_dir.parent.rglob(AUGMENTED_MARKER)).parent
    elif damage == "staging":
        (folder / ".rklu-staging").mkdir()
    elif damage == "no_weights":
        (folder / "model.safetensors").unlink()
    elif damage == "no_config":
        (folder / "config.json").unlink()
    elif damage == "token":
        (folder / "tofu_eval.json").write_text(json.dumps({"note": TOKEN}))
    else:
        (folder / "tofu_eval.json").write_text(json.dumps({"model": str(tmp_path / "model")}))
    api = FakeHfApi()
    with pytest.raises(NotPublishableError, match=messages[damage]):
        push_to_hub(folder, "someone/x", api=api)
    assert api.uploaded == {} and api.calls == []


def test_push_of_a_lora_adapter_names_its_base_by_hub_id(tmp_path, tiny_tokenizer, tofu_dir, monkeypatch, hub_token):
    """An adapter trained on the embedded model records its local cache folder as base model: the upload names the
    hub id instead, and the file on disk is left as it was."""
    monkeypatch.setenv("RKLU_LLM_CACHE", str(tmp_path / "cache"))
    base = tmp_path / "cache" / "smollm2-135m-instruct"
    build_tiny_model(tiny_tokenizer).save_pretrained(base)
    tiny_tokenizer.save_pretrained(base)
    model, tokenizer = load_model(str(base))
    dataset = build_unlearning_dataset(tokenizer, load_tofu("forget01", tofu_dir).select(range(4)), max_length=256)
    config = UnlearnConfig(
        output_dir=str(tmp_path / "out"),
        method="ga",
        use_lora=True,
        max_steps=1,
        save_strategy="no",
        use_cpu=True,
        report_to="none",
        disable_tqdm=True,
    )
    trainer = UnlearnTrainer(model=model, args=config, train_dataset=dataset, processing_class=tokenizer)
    trainer.train()
    trainer.save_model()
    on_disk = (tmp_path / "out" / "adapter_config.json").read_text()
    api = FakeHfApi()
    push_to_hub(tmp_path / "out", "someone/adapter", api=api)
    assert {"adapter_model.safetensors", "adapter_config.json", "README.md"} <= set(api.uploaded)
    assert json.loads(api.uploaded["adapter_config.json"])["base_model_name_or_path"] == (
        "HuggingFaceTB/SmolLM2-135M-Instruct"
    )
    assert (tmp_path / "out" / "adapter_config.json").read_text() == on_disk
    assert card_metadata(api.uploaded["README.md"].decode())["base_model"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
