"""Shared fixtures: small params files built from the repository's own params.yaml."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
E2E_RUNS = ("digits-ms", "digits-ms-tcm")
E2E_SEEDS = (0, 1)


def repo_params(profile: str = "digits") -> dict:
    """A profile of the repository as params (the `digits` profile is the quick fixture of most tests)."""
    return yaml.safe_load((REPO / "profiles" / f"{profile}.yaml").read_text())


def tiny_params(runs: tuple[str, ...] = ("digits-ms", "digits-ms-tcm"), epochs: int = 2, mlflow: bool = False,
                seeds: tuple[int, ...] = (0,)) -> dict:
    """The digits profile reduced to a few quick runs (2 epochs of 160 images, one seed)."""
    p = repo_params()
    p["runs"] = {k: v for k, v in p["runs"].items() if k in runs}
    p["run_defaults"]["train"].update(epochs=epochs, samples_per_epoch=160, seeds=list(seeds))
    p["mlflow"]["enabled"] = mlflow
    return p


def tiny_glyphs_params(runs: tuple[str, ...] = ("glyphs-ms", "glyphs-ms-tcm"), epochs: int = 1,
                       mlflow: bool = False, seeds: tuple[int, ...] = (0,)) -> dict:
    """The default profile (glyphs, pretrain stage, margin rule) shrunk to seconds: 8 pretrain, 6 train
    and 6 test classes of 8 images, 1 pretrain epoch, a few runs."""
    p = repo_params("default")
    p["datasets"]["glyphs"]["glyphs"].update(pretrain_classes=8, train_classes=6, test_classes=6, per_class=8)
    p["datasets"]["glyphs"]["pretrain"].update(epochs=1, batch_size=16)
    p["runs"] = {k: v for k, v in p["runs"].items() if k in runs}
    p["run_defaults"]["train"].update(epochs=epochs, batch_size=16, seeds=list(seeds))
    p["mlflow"]["enabled"] = mlflow
    return p


def write_params(path: Path, params: dict) -> Path:
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


@pytest.fixture
def tiny_params_file(tmp_path: Path) -> Path:
    return write_params(tmp_path / "params.yaml", tiny_params())


def run_command(cmd: list[str], cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           # A project copy runs its own src/ (the venv's editable install points at the repository),
           # so that an edit to the copy's code is the code its stages run.
           **({"PYTHONPATH": str(cwd / "src")} if (cwd / "src/tcm").is_dir() else {}),
           "DVC_NO_ANALYTICS": "1", "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t"}
    out = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if check and out.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({out.returncode}):\n{out.stdout[-4000:]}\n{out.stderr[-4000:]}")
    return out


def tree_digest(root: Path) -> dict[str, str]:
    """SHA-256 of every file under ``root``, except an SQLite store's files: opening and closing them
    here would drop this process's POSIX locks on them, which an open MLflow connection of this
    process relies on (SQLite then sees no reader and may reset the write-ahead log under it:
    "database disk image is malformed"). Compare stores through MLflow instead."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and not p.name.startswith("mlflow.db")}


def copy_project(dest: Path, params: dict) -> Path:
    """A fresh copy of the working tree (tracked and new files) in ``dest``, without generated results,
    with ``params`` as params.yaml, committed to a new git repository."""
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"], cwd=REPO,
                           capture_output=True, text=True, check=True).stdout.split("\0")
    for rel in filter(None, files):
        src = REPO / rel
        skip = ("runs/", "reports/", "benchmarks/", "tests/", "dvc-store/")  # results, and the remote of results
        if not src.is_file() or rel == "dvc.lock" or rel.startswith(skip):
            continue
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dest / rel)
    (dest / "reports/notebooks").mkdir(parents=True)
    (dest / "reports/notebooks/.gitkeep").touch()
    write_params(dest / "params.yaml", params)
    run_command(["git", "init", "-q"], dest)
    run_command(["git", "add", "-A"], dest)
    run_command(["git", "commit", "-qm", "baseline"], dest)
    return dest


@pytest.fixture(scope="session")
def project(tmp_path_factory) -> Path:
    """The test pipeline (E2E_RUNS, E2E_SEEDS) reproduced once in a fresh copy of the working tree."""
    dest = copy_project(tmp_path_factory.mktemp("project"), tiny_params(E2E_RUNS, mlflow=True, seeds=E2E_SEEDS))
    first = run_command(["dvc", "repro"], dest)
    (dest / "first_repro.log").write_text(first.stdout)
    return dest
