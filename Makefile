# Accounting Integration Client: developer commands. GNU make and bash; only Python 3.11+ needed.
#
#   make run               the whole system on this machine (Ctrl-C stops it)
#   make test              the test suite
#   make demo              start the stack, export the demo expenses end to end, stop
#   make test-reliability  tests/reliability and the posting model at 3000 programs
#   make bench             python -m bench (lists the benchmarks and how to run each)
#   make clean             remove var/ (databases, logs, Redis data, Prism) and caches; keeps .venv

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

# `make install PYTHON=/path/to/python3.12` picks the interpreter for a new .venv.
PYTHON ?=

.PHONY: help install run demo test test-reliability bench clean

help:
	@sed -n 's/^#   //p' $(MAKEFILE_LIST)

# pip runs again only when pyproject.toml is newer than the stamp.
$(STAMP): pyproject.toml
	@if [ ! -x "$(PY)" ]; then \
	  py="$(PYTHON)"; \
	  if [ -z "$$py" ]; then \
	    for candidate in python3 python3.13 python3.12 python3.11; do \
	      if command -v "$$candidate" >/dev/null 2>&1 && \
	         "$$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then \
	        py="$$candidate"; break; \
	      fi; \
	    done; \
	  fi; \
	  if [ -z "$$py" ]; then \
	    echo "Python 3.11 or newer is needed; none of python3, python3.13, python3.12, python3.11 is." >&2; \
	    exit 1; \
	  fi; \
	  echo "creating $(VENV) with $$("$$py" --version)"; \
	  "$$py" -m venv $(VENV) || { rm -rf $(VENV); exit 1; }; \
	fi
	$(PY) -m pip install --quiet -e '.[dev]'
	@touch $@

install: $(STAMP)

run: install
	$(PY) -m devstack.run

demo: install
	$(PY) -m devstack.demo

test: install
	$(VENV)/bin/pytest

test-reliability: install
	@if [ ! -d tests/reliability ]; then echo "no reliability tests yet: tests/reliability/ does not exist" >&2; exit 1; fi
	AIC_MODEL_EXAMPLES=$${AIC_MODEL_EXAMPLES:-3000} $(VENV)/bin/pytest tests/reliability tests/unit/test_posting_model.py

bench: install
	$(PY) -m bench

clean:
	rm -rf var .pytest_cache
	find . -path ./$(VENV) -prune -o -type d -name __pycache__ -prune -exec rm -rf {} +
