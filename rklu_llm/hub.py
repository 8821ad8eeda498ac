"""Model cards for unlearned models, and publishing a finished model folder to the Hugging Face hub.

The card (``README.md``, written on every save of :class:`~rklu_llm.UnlearnTrainer`) carries YAML metadata (base model,
``library_name: transformers``, tags ``unlearning`` / ``rklu_llm`` / the method, the dataset id, and the evaluation
results as ``model-index``), then the method and its hyper-parameters, the forget set by name, size and hash (never
its content), the evaluation results as a table, the command that made the model and the package versions. After the
saved model is evaluated, :func:`update_model_card` adds the results to the card.

:func:`push_to_hub` uploads an allow-list of a finished model folder (:data:`PUBLISHED_FILES`): weights
(``*.safetensors``), the LoRA adapter, configs, tokenizer files, the card and the evaluation results. It never uploads
the augmented model (phase 1 of RKL-U: the forget set's knowledge, amplified), checkpoints, training arguments, run
bookkeeping or caches: nothing in a sub-folder is published. The repository is private unless asked otherwise.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shlex
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
import transformers
from huggingface_hub import CommitOperationAdd, EvalResult, HfApi, ModelCard, ModelCardData, get_token

from . import __version__
from .config import METHODS, UnlearnConfig
from .field_tags import LORA_SHAPE, ON_CARD, tagged_fields
from .models import cache_root
from .paths import portable_path
from .run_state import STAGING_DIR
from .teacher import AUGMENTED_MARKER
from .teacher_check import summary_line

CARD_FILE = "README.md"
#: Hub id of each embedded model (``embedded:<name>``), for the card's ``base_model``.
EMBEDDED_HUB_IDS = {"smollm2-135m-instruct": "HuggingFaceTB/SmolLM2-135M-Instruct"}
#: The files :func:`push_to_hub` publishes: top-level files of the model folder matching one of these patterns.
#: Evaluation results follow the ``<evaluator>_eval.json`` naming (``tofu_eval.json``, ``tofu_eval_epochs.json``).
PUBLISHED_FILES = (
    "*.safetensors",
    "model.safetensors.index.json",
    "config.json",
    "generation_config.json",
    "adapter_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "tokenizer.model",
    "chat_template.jinja",
    "chat_template.json",
    CARD_FILE,
    "*_eval.json",
    "*_eval_epochs.json",
)
TOFU_DATASET = "locuslab/TOFU"
RESULTS_START = "<!-- rklu_llm:results:start -->"
RESULTS_END = "<!-- rklu_llm:results:end -->"
NO_RESULTS = (
    "No evaluation recorded yet. `rklu-llm eval tofu --model <this folder>` (or the recipes, which evaluate what "
    "they save) adds the results here and to the metadata."
)
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
_SECRET = re.compile(r"hf_[A-Za-z0-9]{20,}")
_SECRET_FLAG = re.compile(r"--?[\w-]*(token|secret|password)[\w-]*", re.IGNORECASE)
#: Fields shown for every method, then the ones each method (its entry's ``card_fields``) or setting uses.
_COMMON_FIELDS = tagged_fields(UnlearnConfig, ON_CARD)
#: TOFU sets shown in the results table, with their display names.
_TOFU_SETS = {
    "forget01_perturbed": "forget01",
    "forget05_perturbed": "forget05",
    "forget10_perturbed": "forget10",
    "retain_perturbed": "retain",
    "real_authors_perturbed": "real authors",
    "world_facts_perturbed": "world facts",
}
_TOFU_METRICS = {"probability": "probability", "rouge_l_recall": "ROUGE-L recall", "truth_ratio": "truth ratio"}


class NotPublishableError(ValueError):
    """The folder is not a finished model that may be published; the message says why and what to do."""


# ------------------------------------------------------------------------------------------------------------------
# Names and the recorded command
# ------------------------------------------------------------------------------------------------------------------
def package_version() -> str:
    return __version__


def split_dataset_name(dataset: str | None) -> tuple[str | None, str | None]:
    """``"locuslab/TOFU:forget10"`` -> ``("locuslab/TOFU", "forget10")``; the id is ``None`` unless it is a valid hub
    dataset id (``owner/name``)."""
    if not dataset:
        return None, None
    dataset_id, _, config = str(dataset).partition(":")
    return (dataset_id if _HUB_ID.fullmatch(dataset_id) else None), (config or None)


def hub_base_model(name_or_path: str | os.PathLike | None) -> str | None:
    """The hub id a card's ``base_model`` can name: a hub id as given, an embedded model's (``embedded:<name>`` or its
    cache folder) hub id, or the ``base_model`` of the card in a local model folder; ``None`` otherwise."""
    if not name_or_path:
        return None
    text = os.fspath(name_or_path)
    if text.startswith("embedded:"):
        return EMBEDDED_HUB_IDS.get(text.removeprefix("embedded:"))
    path = Path(text).expanduser()
    if not path.exists():
        return text if _HUB_ID.fullmatch(text) else None
    try:
        relative = path.resolve().relative_to(cache_root().resolve())
        return EMBEDDED_HUB_IDS.get(relative.parts[0]) if relative.parts else None
    except ValueError:
        pass
    card = path / CARD_FILE
    if card.is_file():
        base = ModelCard.load(card).data.base_model
        return base if isinstance(base, str) and _HUB_ID.fullmatch(base) else None
    return None


def recorded_command(argv: Sequence[str] | None = None) -> str:
    """The command line of this process as a card may show it: absolute paths made portable
    (:func:`rklu_llm.paths.portable_path`) and the value of any ``--*token*`` / ``--*secret*`` flag, or anything that
    looks like a hub token, replaced by ``<redacted>``."""
    argv = list(sys.argv if argv is None else argv)
    if not argv:
        return ""
    program = argv[0]
    words = ["python", portable_path(program)] if program.endswith(".py") else [Path(program).name]
    hide_next = False
    for arg in argv[1:]:
        if hide_next:
            words.append("<redacted>")
            hide_next = False
            continue
        flag, equals, value = arg.partition("=")
        if _SECRET_FLAG.fullmatch(flag):
            if equals:
                words.append(f"{flag}=<redacted>")
            else:
                words.append(arg)
                hide_next = True
            continue
        if _SECRET.search(arg):
            words.append("<redacted>")
        elif flag.startswith("-") and equals:
            words.append(f"{flag}={portable_path(value)}")
        else:
            words.append(portable_path(arg))
    return shlex.join(words)


def _versions() -> str:
    return f"rklu_llm {package_version()}, transformers {transformers.__version__}, torch {torch.__version__}"


# ------------------------------------------------------------------------------------------------------------------
# Card sections
# ------------------------------------------------------------------------------------------------------------------
def _format(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "–" if value is None else str(value)


def _hyper_parameters(config) -> dict:
    entry = METHODS.get(config.method)
    names = [*_COMMON_FIELDS, *(entry.card_fields if entry else ())]
    if getattr(config, "retain_mode", "none") != "none":
        names.append("retain_weight")
    if getattr(config, "use_lora", False):
        names += ["use_lora", *tagged_fields(config, LORA_SHAPE)]
    values = {}
    for name in names:
        if not hasattr(config, name) or name in values:
            continue
        value = getattr(config, name)
        values[name] = portable_path(value) if name.endswith("_file") else getattr(value, "value", value)
    return values


def _table(header: Sequence[str], rows: Sequence[Sequence]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_format(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def tofu_results_markdown(result: Mapping) -> str:
    """The TOFU results of ``result`` (a ``tofu_eval.json`` dict) as Markdown: forget quality and model utility, then
    one row per evaluated set."""
    settings = result.get("settings", {})
    lines = []
    if result.get("model"):  # what was evaluated: the folder (and, for a LoRA adapter, its base)
        base = f" (LoRA adapter on `{result['base_model']}`)" if result.get("base_model") else ""
        lines.append(f"- evaluated: `{result['model']}`{base}")
    for split, entry in result.get("forget", {}).items():
        note = f" ({entry['forget_quality_note']})" if entry.get("forget_quality_note") else ""
        reference = f", reference `{entry['reference']}`" if entry.get("reference") else ""
        lines.append(f"- forget quality ({split}): **{_format(entry.get('forget_quality'))}**{reference}{note}")
    utility_note = f" ({result['model_utility_note']})" if result.get("model_utility_note") else ""
    lines.append(f"- model utility: **{_format(result.get('model_utility'))}**{utility_note}")
    rows = []
    for name, label in _TOFU_SETS.items():
        aggregate = result.get("sets", {}).get(name, {}).get("aggregate")
        if aggregate is not None:
            rows.append([label, *(aggregate.get(metric) for metric in _TOFU_METRICS), aggregate.get("num_items")])
    protocol = [f"{key} {settings[key]}" for key in ("protocol", "max_items", "max_new_tokens") if key in settings]
    text = "\n".join(lines) + "\n\n" + _table(["TOFU set", *_TOFU_METRICS.values(), "items"], rows)
    if protocol:
        text += f"\n\nEvaluation settings: {', '.join(protocol)} (`max_items` None = every item)."
    return text


def tofu_eval_results(result: Mapping) -> list[EvalResult]:
    """The TOFU results of ``result`` as ``huggingface_hub.EvalResult`` entries (the card's ``model-index``)."""
    entries = []

    def add(config: str, metric: str, name: str, value) -> None:
        if value is None:
            return
        entries.append(
            EvalResult(
                task_type="question-answering",
                task_name="TOFU unlearning",
                dataset_type=TOFU_DATASET,
                dataset_name=f"TOFU {config}",
                dataset_config=config,
                dataset_split="train",
                metric_type=metric,
                metric_name=name,
                metric_value=float(value),
            )
        )

    for split, entry in result.get("forget", {}).items():
        add(f"{split}_perturbed", "forget_quality", f"forget quality ({split})", entry.get("forget_quality"))
    add("retain_perturbed", "model_utility", "model utility", result.get("model_utility"))
    for name, label in _TOFU_SETS.items():
        aggregate = result.get("sets", {}).get(name, {}).get("aggregate") or {}
        for metric, metric_label in _TOFU_METRICS.items():
            add(name, metric, f"{metric_label} ({label})", aggregate.get(metric))
    return entries


_BODY = """
# {title}

`{base}` after machine unlearning with `rklu_llm` {version}: method `{method}`, {loss}.
It was trained to stop reproducing the forget set below.

## Method

{method_text}

| hyper-parameter | value |
|---|---|
{hyper_parameters}

## Forget set

{forget_text}

## Evaluation

{results_start}
{results}
{results_end}

## How it was made

```bash
{command}
```

{versions}.

## Intended use and limits

Unlearning lowers the model's ability to reproduce the forget set; it is not a proof of erasure. Check the forget
quality above (a Kolmogorov-Smirnov p-value against a model never trained on the forget set: above 0.05 means the two
cannot be told apart) and evaluate the model on your own data before relying on it. The augmented model that RKL-U,
FKL-U and task arithmetic build first (the original fine-tuned on the forget set) is not part of this repository: it
holds the forget set's knowledge, amplified.
"""


def _method_text(config, teacher_check: Mapping | None = None) -> str:
    entry = METHODS[config.method]
    lines = [f"- **Method:** `{config.method}`: {entry.loss}", *entry.card_lines(config)]
    if teacher_check:
        lines.append(f"- **Teacher check** (before distillation): {summary_line(teacher_check)}")
        if teacher_check.get("advice"):
            lines.append(f"  - **Warning:** {teacher_check['advice']}")
        if teacher_check.get("saturation_note"):
            lines.append(f"  - **Note:** {teacher_check['saturation_note']}")
    if config.retain_mode == "none":
        lines.append("- **Retain term:** none (no retain data used)")
    else:
        kind = "NLL on the retain set" if config.retain_mode == "rt" else "KL(p_original || p_student) on retain data"
        lines.append(f"- **Retain term:** `{config.retain_mode}` ({kind}), weight {config.retain_weight}")
    if getattr(config, "use_lora", False):
        lines.append(
            f"- **LoRA:** rank {config.lora_r}, alpha {config.lora_alpha}; this folder holds the adapter "
            "unless it was merged"
        )
    return "\n".join(lines)


def _forget_text(dataset: str | None, forget_data: Mapping | None) -> str:
    dataset_id, config = split_dataset_name(dataset)
    name = f"`{dataset_id}`" + (f", config `{config}`" if config else "") if dataset_id else f"`{dataset}`"
    text = f"Forget set: {name if dataset else 'not recorded'}."
    if forget_data:
        text += "\n\n" + _table(["", "value"], [[key, value] for key, value in forget_data.items()])
    return text


def model_card(
    config,
    base_model: str | None,
    dataset: str | None = None,
    results: Mapping | None = None,
    forget_data: Mapping | None = None,
    command: str | None = None,
    teacher_check: Mapping | None = None,
) -> ModelCard:
    """A ``huggingface_hub.ModelCard`` describing an unlearning run.

    Args:
        config: the run's :class:`~rklu_llm.UnlearnConfig`.
        base_model: the model that was unlearned (hub id, local path or ``embedded:<name>``).
        dataset: the forget data, ``"<hub dataset id>[:<config>]"`` (e.g. ``"locuslab/TOFU:forget10"``) or a name.
        results: a TOFU evaluation (``tofu_eval.json`` dict), when already known.
        forget_data: sizes and hashes of the forget (and retain) data, e.g. ``{"forget_items": 400,
            "forget_sha256": ...}``: shown as given; never pass the data itself.
        command: the command that produced the model (default: this process's, made portable and redacted).
        teacher_check: the result of :func:`rklu_llm.teacher_check.check_teacher` (rklu / fklu), when run.
    """
    dataset_id, _ = split_dataset_name(dataset)
    base_id = hub_base_model(base_model)
    data = ModelCardData(
        base_model=base_id,
        library_name="transformers",
        tags=["unlearning", "rklu_llm", config.method],
        datasets=[dataset_id] if dataset_id else None,
        model_name=f"{config.method}-unlearned" if results else None,
        eval_results=(tofu_eval_results(results) or None) if results else None,
    )
    shown_base = portable_path(base_model) if base_model else "unknown"
    if base_id and base_id != shown_base:
        shown_base = f"{base_id}` (loaded from `{shown_base}"
    body = _BODY.format(
        title=f"{config.method.upper()} unlearned model",
        base=shown_base,
        version=package_version(),
        method=config.method,
        loss=METHODS[config.method].loss,
        method_text=_method_text(config, teacher_check),
        hyper_parameters="\n".join(f"| `{k}` | {_format(v)} |" for k, v in _hyper_parameters(config).items()),
        forget_text=_forget_text(dataset, forget_data),
        results_start=RESULTS_START,
        results=tofu_results_markdown(results) if results else NO_RESULTS,
        results_end=RESULTS_END,
        command=command if command is not None else recorded_command(),
        versions=_versions(),
    )
    return ModelCard(f"---\n{data.to_yaml()}\n---\n{body}")


def _write_atomic(path: Path, text: str) -> None:
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            stream.write(text)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def write_model_card(
    output_dir: str | os.PathLike,
    config,
    base_model: str | None,
    dataset: str | None = None,
    results: Mapping | None = None,
    forget_data: Mapping | None = None,
    command: str | None = None,
    teacher_check: Mapping | None = None,
) -> Path:
    """Write ``README.md`` (the model card, see :func:`model_card`) into ``output_dir``, atomically."""
    path = Path(output_dir) / CARD_FILE
    card = model_card(config, base_model, dataset, results, forget_data, command, teacher_check)
    _write_atomic(path, str(card))
    return path


def update_model_card(model_dir: str | os.PathLike, tofu_result: Mapping) -> Path | None:
    """Put a TOFU evaluation (a ``tofu_eval.json`` dict) into the card of ``model_dir``: the results section and the
    ``model-index`` metadata (earlier TOFU entries replaced, other evaluators' entries kept).

    Returns:
        The card's path, or ``None`` when ``model_dir`` has no card written by rklu_llm (nothing is changed then).
    """
    path = Path(model_dir) / CARD_FILE
    if not path.is_file():
        return None
    card = ModelCard.load(path)
    if RESULTS_START not in card.text or RESULTS_END not in card.text:
        return None
    before, rest = card.text.split(RESULTS_START, 1)
    _, after = rest.split(RESULTS_END, 1)
    card.text = f"{before}{RESULTS_START}\n{tofu_results_markdown(tofu_result)}\n{RESULTS_END}{after}"
    kept = [entry for entry in card.data.eval_results or [] if entry.dataset_type != TOFU_DATASET]
    card.data.eval_results = kept + tofu_eval_results(tofu_result) or None
    if card.data.eval_results and not card.data.model_name:
        card.data.model_name = Path(model_dir).resolve().name
    _write_atomic(path, str(card))
    return path


# ------------------------------------------------------------------------------------------------------------------
# Publishing
# ------------------------------------------------------------------------------------------------------------------
def publishable_files(model_dir: str | os.PathLike) -> list[Path]:
    """The files of ``model_dir`` that :func:`push_to_hub` uploads (top level, matching :data:`PUBLISHED_FILES`).

    Raises:
        FileNotFoundError: ``model_dir`` is not a folder.
        NotPublishableError: not a finished model: a staging folder or one with an unfinished save in it, the
            augmented model, no ``config.json`` / ``adapter_config.json``, no ``*.safetensors`` weights.
    """
    folder = Path(model_dir)
    if not folder.is_dir():
        raise FileNotFoundError(f"{str(model_dir)!r} is not a folder; pass the output_dir of a finished run.")
    if folder.name == STAGING_DIR or (folder / STAGING_DIR).exists():
        raise NotPublishableError(
            f"{str(model_dir)!r} is or holds an unfinished save ({STAGING_DIR}): save the model again (or delete the "
            "staging folder if no run is writing) before publishing."
        )
    if (folder / AUGMENTED_MARKER).is_file():
        raise NotPublishableError(
            f"{str(model_dir)!r} is an augmented model (phase 1 of RKL-U): the original fine-tuned on the forget set, "
            "i.e. the knowledge to remove, amplified. It must never be published; push the unlearned model instead."
        )
    if not (folder / "config.json").is_file() and not (folder / "adapter_config.json").is_file():
        raise NotPublishableError(
            f"{str(model_dir)!r} holds neither config.json nor adapter_config.json: not a saved model or adapter."
        )
    files = sorted(
        path
        for path in folder.iterdir()
        if path.is_file() and any(fnmatch.fnmatch(path.name, pattern) for pattern in PUBLISHED_FILES)
    )
    if not any(path.suffix == ".safetensors" for path in files):
        raise NotPublishableError(
            f"{str(model_dir)!r} has no *.safetensors weights (only safetensors are published, never pickles): save "
            "the model with save_pretrained(..., safe_serialization=True)."
        )
    return files


def _upload_content(path: Path) -> Path | bytes:
    """What is uploaded for ``path``: the file itself (weights are never read into memory), except that a LoRA
    ``adapter_config.json`` naming its base model by a local path is uploaded naming it by hub id
    (:func:`hub_base_model`); the file on disk is not changed."""
    if path.name != "adapter_config.json":
        return path
    config = json.loads(path.read_text(encoding="utf-8"))
    base = config.get("base_model_name_or_path")
    if not base or not Path(base).expanduser().is_absolute():
        return path
    hub_id = hub_base_model(base)
    if hub_id is None:
        raise NotPublishableError(
            f"adapter_config.json names its base model by the local path {portable_path(base)}, which has no known "
            "hub id: set base_model_name_or_path to the base model's hub id before publishing."
        )
    config["base_model_name_or_path"] = hub_id
    return (json.dumps(config, indent=2, sort_keys=True) + "\n").encode()


def _check_no_secrets(name: str, content: Path | bytes, token: str | None, local_paths: Sequence[str]) -> None:
    """Refuse to publish a text file that holds ``token``, anything shaped like a hub token, or a local absolute
    path (weights are not searched)."""
    if name.endswith(".safetensors"):
        return
    text = (content.read_bytes() if isinstance(content, Path) else content).decode("utf-8", errors="replace")
    if (token and token in text) or _SECRET.search(text):
        raise NotPublishableError(f"{name} contains an access token: remove it before publishing.")
    for local in local_paths:
        if local in text:
            raise NotPublishableError(
                f"{name} contains the local path {portable_path(local)}: remove it (rklu_llm.paths.portable_path) "
                "before publishing."
            )


def push_to_hub(
    model_dir: str | os.PathLike,
    repo_id: str,
    private: bool = True,
    token: str | None = None,
    revision: str | None = None,
    commit_message: str | None = None,
    api: HfApi | None = None,
) -> str:
    """Upload a finished model folder to the hub repository ``repo_id`` (created private when it does not exist).

    Only :func:`publishable_files` are uploaded: ``*.safetensors`` weights, LoRA adapter files, ``config.json``,
    ``generation_config.json``, tokenizer files, the card and ``*_eval.json`` results, from the folder's top level.
    Never the augmented model, checkpoints, ``training_args.bin``, run bookkeeping or caches.

    Args:
        model_dir: the folder (a run's ``output_dir``).
        repo_id: ``owner/name``.
        private: create the repository private; with ``True`` an existing public repository is refused.
        token: hub token (default: ``$HF_TOKEN`` or the saved login, ``hf auth login``). Never printed or written.
        revision: branch to commit to (created when missing; default the main branch).
        commit_message: default ``"Upload <method> unlearned model with rklu_llm"``.
        api: an ``HfApi`` (tests pass a fake one).

    Returns:
        The commit URL.
    """
    files = publishable_files(model_dir)
    if not _HUB_ID.fullmatch(repo_id):
        raise ValueError(f"repo_id must look like 'owner/name', got {repo_id!r}.")
    local_paths = sorted(
        {str(Path.home()), str(Path.cwd()), str(Path(model_dir).resolve())} - {"/"}, key=len, reverse=True
    )
    contents = {path.name: _upload_content(path) for path in files}
    secret = token or get_token()
    for name, content in contents.items():
        _check_no_secrets(name, content, secret, local_paths)
    api = api if api is not None else HfApi()
    api.create_repo(repo_id, token=token, private=private, exist_ok=True)
    if private and not api.model_info(repo_id, token=token).private:
        raise NotPublishableError(
            f"{repo_id} exists and is public; nothing was uploaded. Pass private=False (rklu-llm push --public) to "
            "publish there, or choose another repo_id."
        )
    if revision is not None:
        api.create_branch(repo_id, branch=revision, token=token, exist_ok=True)
    operations = [
        CommitOperationAdd(path_in_repo=name, path_or_fileobj=str(content) if isinstance(content, Path) else content)
        for name, content in contents.items()
    ]
    commit = api.create_commit(
        repo_id,
        operations,
        commit_message=commit_message or f"Upload {_card_method(files)}model with rklu_llm",
        token=token,
        revision=revision,
    )
    url = str(getattr(commit, "commit_url", commit))
    print(
        f"Uploaded {len(files)} files to {repo_id} ({'private' if private else 'public'}): "
        f"{', '.join(path.name for path in files)}\n{url}"
    )
    return url


def _card_method(files: Sequence[Path]) -> str:
    card = next((path for path in files if path.name == CARD_FILE), None)
    if card is None:
        return ""
    tags = ModelCard.load(card).data.tags or []
    method = next((tag for tag in tags if tag in METHODS), None)
    return f"{method} unlearned " if method else ""
