# Two entry points for a fresh machine: `make demo` (set up, run the CPU demo) and `make test`
# (set up, lint, run the test suite). Both create the virtual environment .venv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: setup demo test test-slow bench clean

setup: $(VENV)/.installed

# torch==2.13.0 first: on this machine pip takes its CPU build from local disk in seconds; a bare
# `torch` requirement could pull a multi-GB CUDA build. On a GPU machine pip takes the CUDA build.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

demo: setup
	$(BIN)/iclab demo

test: setup
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/pytest

test-slow: setup
	$(BIN)/pytest -m slow

# Performance benchmarks (tables on stdout, rows in bench_results.json); not part of `make test`.
bench: setup
	$(BIN)/python -m benchmarks

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache demo_out runs
