"""Shared fixtures: small params files built from the repository's own params.yaml."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]


def repo_params() -> dict:
    return yaml.safe_load((REPO / "params.yaml").read_text())


def tiny_params(runs: tuple[str, ...] = ("digits-ms", "digits-ms-tcm"), epochs: int = 2, mlflow: bool = False) -> dict:
    """The default params reduced to a few quick runs (2 epochs of 160 images)."""
    p = repo_params()
    p["runs"] = {k: v for k, v in p["runs"].items() if k in runs}
    p["run_defaults"]["train"].update(epochs=epochs, samples_per_epoch=160)
    p["mlflow"]["enabled"] = mlflow
    return p


def write_params(path: Path, params: dict) -> Path:
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


@pytest.fixture
def tiny_params_file(tmp_path: Path) -> Path:
    return write_params(tmp_path / "params.yaml", tiny_params())
