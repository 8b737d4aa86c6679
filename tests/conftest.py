"""Shared fixtures and helpers (tests import them from here, never from each other): small params files
built from the repository's profiles, project copies, training on digits, embeddings with known
structure, the one-line fault check, and hand-made run folders for the report."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import nbformat
import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from tcm import report
from tcm.cli import main
from tcm.config import Config, load_config, parse_config, resolved_run
from tcm.data import prepare
from tcm.locks import exclusive
from tcm.provenance import evaluation_record
from tcm.train import seed as train_seed

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


def run_command(cmd: list[str], cwd: Path, check: bool = True,
                extra_env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           # A project copy runs its own src/ (the venv's editable install points at the repository),
           # so that an edit to the copy's code is the code its stages run.
           **({"PYTHONPATH": str(cwd / "src")} if (cwd / "src/tcm").is_dir() else {}),
           "DVC_NO_ANALYTICS": "1", "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t", **(extra_env or {})}
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
    return commit_new_repository(dest, "baseline")


def commit_new_repository(dest: Path, message: str, dvc_init: bool = False) -> Path:
    """Everything in ``dest`` committed to a new git repository (with ``dvc init`` first when asked)."""
    run_command(["git", "init", "-q"], dest)
    if dvc_init:
        run_command(["dvc", "init", "-q"], dest)
    run_command(["git", "add", "-A"], dest)
    run_command(["git", "commit", "-qm", message], dest)
    return dest


def copy_finished(project: Path, dest: Path) -> Path:
    """A copy of a reproduced project (its git repository, DVC cache and results) for a test that changes
    it, so the tests after it see the project as `dvc repro` left it. The MLflow store is left out (see
    tree_digest): the copy's stages start a new one."""
    shutil.copytree(project, dest, symlinks=True, ignore=shutil.ignore_patterns("mlflow.db*"))
    return dest


FAKE_DVC_YAML = """\
stages:
  train:
    foreach: ${{runs}}
    do:
      cmd: python stage.py ${{key}}
      deps:
        - stage.py{extra_deps}
      params:
        - runs.${{key}}
      outs:
        - out/${{key}}.txt
"""


def fake_stage_project(dest: Path, params: dict, stage: str, files: dict[str, str],
                       extra_deps: tuple[str, ...] = ()) -> Path:
    """A DVC project of stand-in train stages (``stage.py <run>`` per run, depending on it and
    ``extra_deps``) and ``files``, committed to a new git repository: the stage engine of `tcm parallel`
    (local or SLURM) without training."""
    dest.mkdir()
    write_params(dest / "params.yaml", params)
    (dest / "dvc.yaml").write_text(FAKE_DVC_YAML.format(extra_deps="".join(f"\n        - {d}" for d in extra_deps)))
    (dest / "stage.py").write_text(stage)
    for rel, text in files.items():
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        (dest / rel).write_text(text)
    return commit_new_repository(dest, "fake", dvc_init=True)


def write_notebook(path: Path, code: str) -> Path:
    """A notebook on the python3 kernel: a papermill parameters cell (``x = 'default'``), then ``code``."""
    nb = nbformat.v4.new_notebook(metadata={"kernelspec": {"name": "python3", "display_name": "Python 3",
                                                           "language": "python"},
                                            "language_info": {"name": "python"}})
    nb.cells = [nbformat.v4.new_code_cell("x = 'default'", metadata={"tags": ["parameters"]}),
                nbformat.v4.new_code_cell(code)]
    nbformat.write(nb, path)
    return path


# Python code for: the files of the tcm modules this process has loaded, sorted (needs sys imported).
TCM_FILES = ('sorted(m.__file__ for n, m in list(sys.modules.items())\n'
             '       if (n == "tcm" or n.startswith("tcm.")) and getattr(m, "__file__", None))')

# An IPython startup file (in a profile folder of the tests' own: IPYTHONDIR) that makes each stage kernel
# write the tcm files it has loaded after every cell, to RECORD_DIR/<the executed notebook's name>.json. The
# kernel's parent is `tcm notebook IN OUT -p ...` (dvc.yaml's stage command), which names OUT.
KERNEL_RECORDER = f"""
import json, os, sys
from pathlib import Path

_args = Path(f"/proc/{{os.getppid()}}/cmdline").read_bytes().decode().split("\\0")
_out = _args[_args.index("notebook") + 2] if "notebook" in _args else None


def _record(*_):
    files = {TCM_FILES}
    Path(os.environ["RECORD_DIR"], Path(_out).stem + ".json").write_text(json.dumps(files))


if _out:
    get_ipython().events.register("post_run_cell", _record)
"""


@pytest.fixture(scope="session")
def kernel_records(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """(folder of the records, environment for `dvc repro`) of :data:`KERNEL_RECORDER`."""
    root = tmp_path_factory.mktemp("kernels")
    startup = root / "ipython/profile_default/startup"
    startup.mkdir(parents=True)
    (startup / "00-record-tcm-modules.py").write_text(KERNEL_RECORDER)
    (root / "records").mkdir()
    return root / "records", {"IPYTHONDIR": str(root / "ipython"), "RECORD_DIR": str(root / "records")}


@pytest.fixture(scope="session")
def project(tmp_path_factory, kernel_records) -> Path:
    """The test pipeline (E2E_RUNS, E2E_SEEDS) reproduced once in a fresh copy of the working tree. Its
    stage kernels record the tcm files they load (:func:`kernel_records`, read by test_dvc_deps)."""
    dest = copy_project(tmp_path_factory.mktemp("project"), tiny_params(E2E_RUNS, mlflow=True, seeds=E2E_SEEDS))
    first = run_command(["dvc", "repro"], dest, extra_env=kernel_records[1])
    (dest / "first_repro.log").write_text(first.stdout)
    return dest


# The modules with tests that use the reproduced `project` (checked as each test is collected).
PROJECT_MODULES = frozenset(f"tests/test_{m}.py" for m in (
    "dvc_deps", "mlflow_ui", "parallel", "pipeline_e2e", "project_root", "tool_conventions"))


def pytest_itemcollected(item: pytest.Item) -> None:
    module = item.nodeid.split("::")[0]
    if "project" in getattr(item, "fixturenames", ()) and module not in PROJECT_MODULES:
        raise pytest.UsageError(f"{item.nodeid} uses the `project` fixture: add its module to "
                                "PROJECT_MODULES in tests/conftest.py")


@pytest.hookimpl(optionalhook=True)  # a hook of pytest-xdist: unknown where it is not loaded
def pytest_xdist_make_scheduler(config: pytest.Config, log: object) -> object:
    """Units of work for `pytest -n N` (make test): the PROJECT_MODULES go to one worker, in file order
    (they share one `dvc repro` of the project, and a few change it for the tests after them); every
    other module stays whole, so its module-scoped fixtures (a small pipeline, a trained model) are made
    once. (xdist's own `loadgroup` marks do not reach its scheduler under pytest 9.)"""
    from xdist.scheduler import LoadScopeScheduling

    class ProjectScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            module = nodeid.split("::")[0]
            return "project" if module in PROJECT_MODULES else module

    return ProjectScheduling(config, log)


# ---------------------------------------------------------------- training on digits (test_train*.py, faults)


@pytest.fixture(scope="session")
def digits_dir(tmp_path_factory) -> Path:
    """sklearn digits written as PNG files (train: digits 0-4), shared by the training tests."""
    cfg = parse_config(tiny_params())
    out = tmp_path_factory.mktemp("data") / "digits"
    prepare(cfg.dataset("digits"), out)
    return out


def params_for(tmp: Path, data: Path, *, epochs: int = 2, mlflow: bool = False, **train_overrides) -> dict:
    """One run, `r`: the default digits run (small CNN, multi-similarity) made small."""
    p = tiny_params(runs=("digits-ms",), epochs=epochs, mlflow=mlflow)
    p["runs"] = {"r": p["runs"]["digits-ms"]}
    # paths must lie inside the project (tmp): a link there to the shared prepared data (not prepared again)
    if not (tmp / "data").exists():
        tmp.mkdir(parents=True, exist_ok=True)
        (tmp / "data").symlink_to(data.parent, target_is_directory=True)
    p["paths"] = {"data": str(tmp / "data"), "runs": str(tmp / "runs"), "reports": str(tmp / "reports")}
    p["mlflow"]["tracking_uri"] = f"sqlite:///{tmp / 'mlflow.db'}"
    p["mlflow"]["artifact_location"] = str(tmp / "mlartifacts")
    p["run_defaults"]["train"].update(train_overrides)
    return p


def config_for(tmp: Path, data: Path, **kw):
    return load_config(write_params(tmp / "params.yaml", params_for(tmp, data, **kw)))


class Interrupted(Exception):
    pass


def interrupt_after(monkeypatch, seed: int, epoch: int) -> None:
    """Make training stop (as a kill would) right after the checkpoint of ``seed`` at ``epoch``."""
    real = train_seed.save_checkpoint

    def save(path, state):
        real(path, state)
        if state["seed"] == seed and state["epoch"] == epoch:
            raise Interrupted

    monkeypatch.setattr(train_seed, "save_checkpoint", save)


def checkpoint_of(tmp: Path, seed: int = 0) -> dict:
    return torch.load(tmp / f"runs/r/train/seed-{seed}/checkpoint.pt", weights_only=True)


# ---------------------------------------------------------------- data
def dyadic(n: int, n_classes: int, seed: int, dim: int = 8, spread: int = 6, singletons: int = 3,
           duplicates: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """Clustered integer vectors / 64; a few singleton classes and duplicated rows (exact ties)."""
    rng = np.random.default_rng(seed)
    centres = rng.integers(-14, 15, size=(n_classes, dim))
    y = rng.integers(0, n_classes, size=n)
    k = np.clip(centres[y] + rng.integers(-spread, spread + 1, size=(n, dim)), -20, 20)
    k[np.abs(k).sum(1) == 0, 0] = 1
    k[rng.choice(n, duplicates, replace=False)] = k[rng.choice(n, duplicates, replace=False)]
    y[:singletons] = n_classes + np.arange(singletons)  # classes with one image
    return k / 64.0, y


def continuous(n: int, n_classes: int, seed: int, dim: int = 16) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, n_classes, size=n)
    return rng.normal(size=(n_classes, dim))[y] + 0.9 * rng.normal(size=(n, dim)), y


# ---------------------------------------------------------------- faults


def fails_in_one_line(capsys: pytest.CaptureFixture, argv: list[str], *words: str) -> str:
    """Run the command line; it must return 2 with exactly one line on stderr holding ``words``."""
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    lines = [line for line in err.splitlines() if line.startswith("tcm")]
    assert len(lines) == 1 and "Traceback" not in err, err
    for w in words:
        assert w in lines[0], (w, lines[0])
    return lines[0]


@contextmanager
def held_elsewhere(path: Path, what: str) -> Iterator[None]:
    """tcm.locks.exclusive(path) held by another thread for the block: flock conflicts between open
    files, also within one process, so this is how another process's hold looks."""
    ready, release = threading.Event(), threading.Event()

    def hold() -> None:
        with exclusive(path, what):
            ready.set()
            release.wait(600)

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert ready.wait(600)
        yield
    finally:
        release.set()
        holder.join()


# ---------------------------------------------------------------- hand-made run folders (report)


REPORT_RUNS = ("digits-ms", "digits-ms-tcm", "digits-pa", "digits-pa-tcm")


MS, PA = "digits/small_cnn/multi_similarity", "digits/small_cnn/proxy_anchor"
# Made-up per-seed results (seeds 0, 1, 2). digits-ms -> -tcm: OPIS down but not significantly,
# R@1 up significantly. digits-pa -> -tcm: OPIS down significantly, R@1 down but not significantly.
REPORT_OPIS = {"digits-ms": [0.010, 0.014, 0.012], "digits-ms-tcm": [0.008, 0.011, 0.012],
               "digits-pa": [0.020, 0.022, 0.021], "digits-pa-tcm": [0.010, 0.011, 0.012]}
REPORT_R1 = {"digits-ms": [0.80, 0.82, 0.81], "digits-ms-tcm": [0.83, 0.84, 0.84],
             "digits-pa": [0.90, 0.91, 0.92], "digits-pa-tcm": [0.90, 0.905, 0.915]}


def make_cfg(tmp_path: Path, seeds: list[int]) -> Config:
    p = tiny_params(REPORT_RUNS)
    p["run_defaults"]["train"].pop("seed", None)
    p["run_defaults"]["train"]["seeds"] = seeds
    return parse_config(p, base_dir=tmp_path)


def write_seed(cfg: Config, run: str, seed: int, r1: float, opis: float, **extra: float) -> None:
    """One seed's evaluate outputs: metrics.json (``extra``: more keys, e.g. neg_cos_median), a tiny
    curves.csv and 2-D embeddings."""
    d = cfg.run_dir(run)
    d.seed_metrics(seed).parent.mkdir(parents=True, exist_ok=True)
    rates = {"min": 0.0, "median": 0.001, "max": 0.01, "worst_share_mean": 0.008}
    # settings.json records the checkpoint and settings the results came from (as the evaluate stage does)
    record = evaluation_record(f"h{seed}", resolved_run(cfg, run))
    d.seed_settings(seed).write_text(json.dumps({"run": run, "seed": seed, "provenance": record}))
    d.seed_metrics(seed).write_text(json.dumps({
        "recall_at_k": {"1": r1, "2": r1 + 0.05, "4": 0.97, "8": 0.99}, "map_at_r": r1 / 2, "r_precision": r1 / 1.5,
        "opis": opis, "eps_opis": 5 * opis,
        "threshold_report": {"target_far": 0.001, "threshold": 0.6, "overall_far": 0.001, "overall_frr": 0.2,
                             "worst_share": 0.05, "class_far": rates, "class_frr": rates}, **extra}))
    t = np.linspace(0.2, 0.8, 5)
    curves = pd.concat([pd.DataFrame({"class": c, "threshold": t, "tpr": 1 - t / 2, "tnr": t,
                                      "utility": 0.5 + k * t / 10}) for k, c in enumerate(["0", "1", "overall"])])
    curves.to_csv(d.seed_curves(seed), index=False)
    rng = np.random.default_rng(seed)
    d.seed_embeddings(seed).parent.mkdir(parents=True, exist_ok=True)
    np.savez(d.seed_embeddings(seed), embeddings=rng.normal(size=(30, 2)), labels=np.repeat(np.arange(3), 10))


def write_train(cfg: Config, run: str, seeds: list[int]) -> None:
    """history.csv (one row per seed and epoch) and run.json with a config hash per seed."""
    d = cfg.run_dir(run)
    d.root.mkdir(parents=True, exist_ok=True)
    pd.DataFrame([{"seed": s, "epoch": e, "loss": 2.0 / e + s / 10, "base_loss": 1.5 / e, "tcm_loss": 0.1 * s,
                   "lr": 0.001, "images_per_s": 500.0, "seconds": 1.0} for s in seeds for e in (1, 2)]).to_csv(
        d.history, index=False)
    seed_info = {str(s): {"config_hash": f"h{s}"} for s in seeds}
    d.info.write_text(json.dumps({"run": run, "settings": resolved_run(cfg, run), "seeds": seed_info}))


def populate(cfg: Config, seeds: dict[str, list[int]]) -> None:
    for run, ss in seeds.items():
        write_train(cfg, run, ss)
        for s in ss:
            write_seed(cfg, run, s, REPORT_R1[run][s], REPORT_OPIS[run][s])


@pytest.fixture
def full(tmp_path: Path) -> Config:
    cfg = make_cfg(tmp_path, [0, 1, 2])
    populate(cfg, dict.fromkeys(REPORT_RUNS, [0, 1, 2]))
    return cfg


def tables(cfg: Config) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    per_seed = report.per_seed_table(cfg)
    summary = report.run_summary(cfg, per_seed)
    return per_seed, summary, report.comparison_table(summary, report.find_pairs(cfg), per_seed)
