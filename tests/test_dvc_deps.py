"""dvc.yaml lists, for each stage, exactly the tcm source files the stage runs.

A missing dependency lets `dvc repro` keep results of old code; an extra one re-runs stages
(hours under the `paper` profile) for nothing. The files a stage runs are found two ways: by
reading the ``sys.modules`` of each stage kernel of the test pipeline's `dvc repro` (recorded by
conftest's KERNEL_RECORDER), and by following the notebook's imports through the source
(:mod:`tcm.fingerprint`, which also catches code imported lazily on paths the test run skips).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
import yaml
from conftest import REPO, TCM_FILES, run_command

from tcm.fingerprint import PACKAGE_DIR, imported_names, source_files

SRC = PACKAGE_DIR.parent  # .../src
NOTEBOOK_STAGES = {"data": "01_data.ipynb", "pretrain": "00_pretrain.ipynb", "train": "02_train.ipynb",
                   "evaluate": "03_evaluate.ipynb", "report": "04_report.ipynb"}
RECORD = "import json as _json\n_json.dump(" + TCM_FILES + ", open({path!r}, 'w'))"


def _stage_deps(stage: str) -> list[str]:
    """The src/ dependencies of a stage of the repository's dvc.yaml (foreach stages: their template)."""
    spec = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"][stage]
    deps = spec.get("do", spec)["deps"]
    return [d for d in deps if d.startswith("src/")]


def _uncovered(files: set[str], deps: list[str]) -> set[str]:
    return {f for f in files if not any(f == d or f.startswith(d.rstrip("/") + "/") for d in deps)}


def _relative(paths) -> set[str]:
    """Paths from the folder holding src/ (the repository, or the project copy whose src/ ran)."""
    out = set()
    for p in paths:
        parts = Path(p).resolve().parts
        i = len(parts) - 1 - parts[::-1].index("src")
        out.add("/".join(parts[i:]))
    return out


def _notebook_imports(nb_path: Path) -> set[str]:
    """The tcm modules a notebook's code cells import (read as the fingerprint reads a module)."""
    names = set()
    for cell in nbformat.read(nb_path, as_version=4).cells:
        if cell.cell_type == "code":
            names.update(n for n in imported_names(cell.source) if n == "tcm" or n.startswith("tcm."))
    return names


@pytest.fixture(scope="module")
def executed_modules(project: Path, kernel_records, tmp_path_factory) -> dict[str, set[str]]:
    """Per stage: the tcm files its kernels had loaded when the test project's `dvc repro` ran them
    (recorded after every cell by conftest's KERNEL_RECORDER; a foreach stage: all its instances)."""
    found: dict[str, set[str]] = {}
    for record in sorted(kernel_records[0].glob("*.json")):
        stage = record.stem.split("-")[0]  # the executed copy's name: train-digits-ms.ipynb -> train
        found.setdefault(stage, set()).update(_relative(json.loads(record.read_text())))
    # The validate stage is a command, not a notebook: record what `tcm check-params` loads.
    record = tmp_path_factory.mktemp("validate") / "modules.json"
    code = "import sys; from tcm.cli import main; main(['check-params']);" + RECORD.format(path=str(record))
    run_command([sys.executable, "-c", code], project)
    found["validate"] = _relative(json.loads(record.read_text()))
    return found


@pytest.mark.e2e
@pytest.mark.parametrize("stage", [*NOTEBOOK_STAGES, "validate"])
def test_every_module_a_stage_runs_is_a_declared_dependency(stage: str, executed_modules) -> None:
    deps = _stage_deps(stage)
    assert executed_modules[stage], "nothing recorded"
    missing = _uncovered(executed_modules[stage], deps)
    assert not missing, f"stage {stage} runs {sorted(missing)}, which dvc.yaml does not list in its deps"


@pytest.mark.parametrize("stage", NOTEBOOK_STAGES)
def test_stage_deps_are_the_import_closure_of_its_notebook(stage: str) -> None:
    notebook = REPO / "notebooks" / NOTEBOOK_STAGES[stage]
    closure = _relative(p for m in _notebook_imports(notebook) for p in source_files(m))
    deps = _stage_deps(stage)
    missing = _uncovered(closure, deps)
    assert not missing, f"stage {stage}: its notebook may run {sorted(missing)}, not in dvc.yaml's deps"
    unused = [d for d in deps if not any(f == d or f.startswith(d + "/") for f in closure)]
    assert not unused, f"stage {stage}: dvc.yaml lists {unused}, which its notebook never runs"


@pytest.mark.e2e
def test_fresh_clone_shows_no_changed_source_dependency(project: Path, tmp_path) -> None:
    """Bytecode (left by any Python run) is ignored: a clone's sources match the lock."""
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(project), str(clone)], check=True)
    shutil.copy2(project / "dvc.lock", clone / "dvc.lock")
    for pkg in ("src/tcm", "src/tcm/data", "src/tcm/losses", "src/tcm/metrics"):
        (clone / pkg / "__pycache__").mkdir(exist_ok=True)
        (clone / pkg / "__pycache__" / "stale.cpython-311.pyc").write_bytes(b"bytecode")
    status = json.loads(run_command(["dvc", "status", "--json"], clone).stdout or "{}")
    changed = {path for stage in status.values() for entry in stage if isinstance(entry, dict)
               for path in entry.get("changed deps", {}) if path.startswith(("src/", "notebooks/"))}
    assert not changed, status
