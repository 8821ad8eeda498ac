"""Shared fixtures: offline environment, the shared TOFU copy, a tiny tokenizer and tiny random causal LMs."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import multiprocessing
import os
import signal
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

#: Tests that start processes of their own (recipes, launches, benchmark drivers, upstream lm_eval). `make test` runs
#: the suite on every core (pytest-xdist, ``--dist loadgroup``): each group below runs on one worker, one test at a
#: time, so two multi-process tests never compete for the same cores, and a module-scoped fixture of a grouped module
#: (the recipes' retain oracle) is built once. Keys: a test file, or ``file::test`` for one test of it.
PROCESS_GROUPS = {
    "test_recipes.py": "recipes",
    "test_benchmarks.py": "benchmarks",
    "test_eval_speed.py": "processes",
    "test_distributed.py::test_fsdp2_on_two_cpu_processes_matches_one_process": "processes",
    "test_eval_callback.py::test_two_processes_evaluate_every_epoch_and_keep_the_best": "processes",
    "test_eval_general.py::test_upstream_lm_eval_on_saved_checkpoints": "processes",
}


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist reads the groups
def pytest_collection_modifyitems(config, items):
    for item in items:
        name = Path(str(item.fspath)).name
        group = PROCESS_GROUPS.get(f"{name}::{item.originalname}") or PROCESS_GROUPS.get(name)
        if group is not None:
            item.add_marker(pytest.mark.xdist_group(group))


def pytest_configure(config):
    """Under pytest-xdist, each worker's torch gets its share of the cores (not all of them: workers would fight)."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:
        import torch

        torch.set_num_threads(max(1, (os.cpu_count() or 1) // workers))


REPO = Path(__file__).resolve().parents[1]


def load_benchmark(name: str):
    """``benchmarks/<name>.py`` (a script, not a package) as a module."""
    spec = importlib.util.spec_from_file_location(f"benchmark_{name}", REPO / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


SHARED_DATA = Path(os.environ.get("RKLU_SHARED_DATA", REPO.parent / "shared" / "data"))
TOFU_DIR = SHARED_DATA / "tofu"

CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


#: a tiny, quick unlearning run on the CPU; each test module overrides what it is about
TINY_RUN = dict(
    per_device_train_batch_size=4,
    max_steps=2,
    augment_epochs=1,
    augment_max_steps=1,
    augment_learning_rate=1e-3,
    learning_rate=1e-3,
    save_strategy="no",
    logging_steps=1,
    use_cpu=True,
    report_to="none",
    seed=0,
    disable_tqdm=True,
)


@contextlib.contextmanager
def held_elsewhere(hold, *args):
    """Run ``hold(*args, ready)`` in a forked process (it sets the event ``ready`` once it holds what it holds, then
    sleeps); yields the process once ready and kills it with SIGKILL when the block ends."""
    context = multiprocessing.get_context("fork")
    ready = context.Event()
    holder = context.Process(target=hold, args=(*args, ready), daemon=True)
    holder.start()
    try:
        assert ready.wait(60)
        yield holder
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        holder.join()


def tiny_config(output_dir, method: str, **overrides):
    """An ``UnlearnConfig`` of :data:`TINY_RUN` writing to ``output_dir``, with ``overrides`` on top."""
    from rklu_llm import UnlearnConfig

    return UnlearnConfig(**{**TINY_RUN, "output_dir": str(output_dir), "method": method, **overrides})


def build_tiny_tokenizer(chat_template: bool = True, vocab_size: int = 1000):
    """A byte-level BPE tokenizer (~1k tokens) trained on TOFU text; pad == eos, like SmolLM2."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    texts = []
    with open(TOFU_DIR / "full.jsonl") as handle:
        for line in handle:
            row = json.loads(line)
            texts += [row["question"], row["answer"]]
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(texts, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|im_end|>",
        unk_token="<|endoftext|>",
    )
    if chat_template:
        fast.chat_template = CHATML
    return fast


def build_tiny_model(tokenizer, seed: int = 0, layers: int = 2, hidden: int = 64):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    return LlamaForCausalLM(config)


@pytest.fixture
def unreachable_hub(monkeypatch):
    """Online mode (no offline variable) with a hub endpoint that refuses connections at once; yields the list of
    ``(endpoint, timeout)`` of every probe request made (no wall-clock bound in the tests: "fast" is checked as one
    probe, capped at PROBE_TIMEOUT by construction, and no retry)."""
    import rklu_llm.offline as offline

    for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "RKLU_TOFU_DIR", "RKLU_WIKITEXT_DIR"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # the discard port: nothing listens there
    offline._probe.cache_clear()
    requests, real = [], offline._request

    def counted(endpoint, timeout, answer):
        requests.append((endpoint, timeout))
        real(endpoint, timeout, answer)

    monkeypatch.setattr(offline, "_request", counted)
    yield requests
    offline._probe.cache_clear()


@pytest.fixture(scope="session")
def tofu_dir() -> Path:
    if not (TOFU_DIR / "forget01.jsonl").is_file():
        pytest.fail(f"The shared TOFU copy is missing at {TOFU_DIR} (set RKLU_SHARED_DATA to ../shared/data).")
    return TOFU_DIR


@pytest.fixture(scope="session")
def tiny_tokenizer(tofu_dir):
    return build_tiny_tokenizer()


@pytest.fixture
def tiny_model(tiny_tokenizer):
    return build_tiny_model(tiny_tokenizer)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tiny_tokenizer) -> Path:
    """A tiny random Llama with its tokenizer, saved as a local model directory."""
    path = tmp_path_factory.mktemp("tiny-llama")
    build_tiny_model(tiny_tokenizer).save_pretrained(path)
    tiny_tokenizer.save_pretrained(path)
    return path
