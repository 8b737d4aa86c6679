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

repro: $(VENV)/.installed
	$(ACTIVATE) && dvc repro

test: $(VENV)/.installed
	$(ACTIVATE) && ruff check . && python -m pytest
