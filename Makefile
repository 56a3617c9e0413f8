# Two commands on a fresh machine: `make demo` runs the whole system on an
# embedded broker and Redis; `make test` runs the whole test suite. Each
# creates the virtual environment it needs.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Extra requirement installed before the package, e.g. TORCH_SPEC=torch==2.13.0
# to pick a CPU build that is already on disk instead of resolving the newest.
TORCH_SPEC ?=

.PHONY: demo test lint bench clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(if $(TORCH_SPEC),$(BIN)/python -m pip install --quiet "$(TORCH_SPEC)")
	$(BIN)/python -m pip install --quiet -e '.[test,encoder]'
	touch $@

demo: $(BIN)/.installed
	$(BIN)/profiler demo

test: $(BIN)/.installed
	$(BIN)/python -m pytest -q

lint: $(BIN)/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

bench: $(BIN)/.installed
	$(BIN)/python bench/throughput.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
