# Entry points for a fresh clone (README, Quick start):
#   make repro   create .venv, install the package with the pipeline extras, run `dvc repro`
#   make repro-parallel GPUS="0 1 2 3"   the same with the train stages side by side, one per GPU
#                (JOBS=N instead of GPUS: N at a time, no GPU pinning; docs/gpus.md)
#   make test    same environment, lint (ruff) and run the test suite with the doctests (what .ci/run calls)
#   make test-fast   lint and the unit tier only (no `e2e` or `slow` marker): about 2 minutes
#   make slurm-local   a one-node CPU-only SLURM on this machine (root; tests/slurm/start.sh), for
#                `tcm parallel --slurm` and tests/test_slurm.py (docs/gpus.md)
# and for the notebooks (README, Notebooks):
#   make lab     same environment, JupyterLab on notebooks/ with the project's kernel "Python (tcm)"
VENV ?= .venv
PY := $(VENV)/bin/python
ACTIVATE := . $(VENV)/bin/activate

.PHONY: repro repro-parallel test test-fast install lab slurm-local
install: $(VENV)/.installed

# The last step registers the notebooks' kernel "tcm" inside the venv (--sys-prefix): it starts this
# venv's python, so a JupyterLab installed elsewhere still runs the notebooks with the tcm package.
$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[pipeline,dev]"
	$(PY) -m ipykernel install --sys-prefix --name tcm --display-name "Python (tcm)"
	touch $@

# check-params first: DVC parses params.yaml to build the stages before any stage runs, and its own
# message for a broken file ("Could not find 'datasets'") names no key.
repro: $(VENV)/.installed
	$(ACTIVATE) && tcm check-params && dvc repro

# `tcm parallel` checks params.yaml itself, brings data up to date, trains the out-of-date runs on the
# workers (committing each to dvc.lock from one process), then runs `dvc repro` for the rest.
GPUS ?=
JOBS ?= 1
repro-parallel: $(VENV)/.installed
	$(ACTIVATE) && tcm parallel $(if $(strip $(GPUS)),--gpus $(GPUS),--jobs $(JOBS))

# --durations: the CI log names the slowest tests (candidates for the `slow` marker or a shared fixture).
# -n: test processes side by side (pytest-xdist; WORKERS=0 runs in this process); tests/conftest.py keeps
# the tests that share a pipeline, and each module's tests, on one worker.
WORKERS ?= 2
XDIST = -n $(WORKERS)
test: $(VENV)/.installed
	$(ACTIVATE) && ruff check . && python -m pytest $(XDIST) --durations=25

test-fast: $(VENV)/.installed
	$(ACTIVATE) && ruff check . && python -m pytest $(XDIST) -m "not e2e and not slow"

# Installs slurm-wlm and munge when missing; returns at once when the cluster runs already.
slurm-local:
	tests/slurm/start.sh

# JupyterLab refuses to run as root (containers, CI) unless told to.
LAB_ARGS ?= $(if $(filter 0,$(shell id -u)),--allow-root,)
lab: $(VENV)/.installed
	$(ACTIVATE) && jupyter lab notebooks/ $(LAB_ARGS)
