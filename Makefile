# fa3-jax: `make test` (set up + whole test suite) and `make train` (demo pretraining run).
# Both build the virtual environment from nothing when it is missing.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=

# Python 3.12: on PATH (and working: pyenv shims may exist without the version), else under pyenv.
PYTHON312 := $(shell for p in python3.12 $(HOME)/.pyenv/versions/3.12*/bin/python3.12; do \
                 "$$p" -c 'import sys; assert sys.version_info[:2] == (3, 12)' >/dev/null 2>&1 && { command -v "$$p"; break; }; \
               done)

.PHONY: all test test-gpu train lint clean venv

all: test

$(VENV)/.installed: pyproject.toml
	@if [ -z "$(PYTHON312)" ]; then \
	  echo "error: Python 3.12 not found. Install it (e.g. 'pyenv install 3.12' or your OS package python3.12) and re-run make." >&2; \
	  exit 1; fi
	@test -x $(PY) || $(PYTHON312) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip setuptools wheel
	$(PY) -m pip install --quiet -e ".[dev]"
	@touch $@

venv: $(VENV)/.installed

test: $(VENV)/.installed
	$(PY) -m pytest -q -n 2 $(PYTEST_ARGS)

test-gpu: $(VENV)/.installed
	$(PY) -m pytest -q -m gpu $(PYTEST_ARGS)

train: $(VENV)/.installed
	$(PY) -m pretrain.demo

lint: $(VENV)/.installed
	$(PY) -m ruff check .

clean:
	rm -rf $(VENV) runs .pytest_cache
