# Two entry points for a fresh clone (README, Quick start):
#   make repro   create .venv, install the package with the pipeline extras, run `dvc repro`
#   make test    same environment, lint (ruff) and run the test suite with the doctests (what .ci/run calls)
VENV ?= .venv
PY := $(VENV)/bin/python
ACTIVATE := . $(VENV)/bin/activate

.PHONY: repro test install
install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[pipeline,dev]"
	touch $@

# check-params first: DVC parses params.yaml to build the stages before any stage runs, and its own
# message for a broken file ("Could not find 'datasets'") names no key.
repro: $(VENV)/.installed
	$(ACTIVATE) && tcm check-params && dvc repro

test: $(VENV)/.installed
	$(ACTIVATE) && ruff check . && python -m pytest
