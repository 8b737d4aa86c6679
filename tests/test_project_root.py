"""Notebooks find params.yaml from any starting folder (JupyterLab starts kernels in notebooks/)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from conftest import E2E_RUNS
from conftest import run_command as _sh

from tcm.project import project_root, resolve_params


def test_root_is_the_first_folder_up_with_dvc_yaml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DVC_ROOT", raising=False)
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    (tmp_path / "params.yaml").write_text("x: 1\n")
    (tmp_path / "notebooks").mkdir()
    monkeypatch.chdir(tmp_path / "notebooks")
    assert project_root() == tmp_path.resolve()
    assert resolve_params("params.yaml") == tmp_path.resolve() / "params.yaml"
    assert resolve_params(tmp_path / "other.yaml") == tmp_path / "other.yaml"  # absolute: as given
    monkeypatch.setenv("DVC_ROOT", str(tmp_path / "elsewhere"))  # DVC's own word wins
    assert project_root() == tmp_path / "elsewhere"


@pytest.mark.e2e
def test_explore_notebook_runs_from_the_notebooks_folder(project: Path, tmp_path: Path) -> None:
    out = tmp_path / "explore.ipynb"
    code = ("import sys, papermill; papermill.execute_notebook('explore_run.ipynb', sys.argv[1], "
            f"parameters={{'run': {E2E_RUNS[-1]!r}}}, cwd='.', progress_bar=False)")
    _sh([sys.executable, "-c", code, str(out)], project / "notebooks")
    assert out.is_file()
