"""Faults while `tcm train` (and its stage notebook) runs, each tried as a user would meet it: a broken
MLflow store, a held lock, settings the loss or the sampler reject, a full or read-only disk, Ctrl-C,
SIGTERM, a killed `dvc`. Each ends with exit 2 and one line on stderr naming what is at fault and what
was kept, no traceback, and nothing already finished lost."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import copy_project, fails_in_one_line, held_elsewhere, params_for, tiny_params, tree_digest, write_params

from tcm.cli import main
from tcm.config import load_config

ROOT = os.geteuid() == 0  # chmod does not stop root's writes: the read-only cases simulate the errno then


def _trained(tmp_path: Path, data: Path, **kw) -> tuple[Path, Path]:
    """A finished 1-epoch run `r` (MLflow on); returns (params file, run folder)."""
    kw = {"epochs": 1, "mlflow": True, **kw}
    path = write_params(tmp_path / "params.yaml", params_for(tmp_path, data, **kw))
    assert main(["train", "r", "--params", str(path)]) == 0
    return path, load_config(path).run_dir("r").root


def _results(run_root: Path) -> dict[str, str]:
    """The run folder's files, less the lock file (its content names whoever last held it)."""
    return {k: v for k, v in tree_digest(run_root).items() if k != ".lock"}


def _mlflow_runs(tmp_path: Path) -> list:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    return [r for r in client.search_runs([e.experiment_id for e in client.search_experiments()])
            if "tcm.seed" in r.data.tags]  # the seed runs (not their configurations' parent runs)


# ---------------------------------------------------------------- the MLflow store


def _garbage(db: Path, monkeypatch) -> None:
    for f in db.parent.glob("mlflow.db*"):
        f.unlink()
    db.write_bytes(b"not a database\n" * 100)


def _directory(db: Path, monkeypatch) -> None:
    for f in db.parent.glob("mlflow.db*"):
        f.unlink()
    db.mkdir()


def _read_only(db: Path, monkeypatch) -> None:
    if not ROOT:
        db.chmod(0o444)
        return
    import sqlite3

    import tcm.tracking

    real = sqlite3.connect  # as SQLite opens a file it may not write: reads work, the first write fails
    monkeypatch.setattr(tcm.tracking.sqlite3, "connect",
                        lambda path, **kw: real(f"file:{path}?mode=ro", uri=True, **kw))


def _deleted_experiment(db: Path, monkeypatch) -> None:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{db}")
    client.delete_experiment(client.get_experiment_by_name("tcm-default").experiment_id)


@pytest.mark.slow
@pytest.mark.parametrize("damage,words", [
    (_garbage, ("mlflow.db is not an SQLite database",)),
    (_directory, ("mlflow.db is a directory",)),
    (_read_only, ("mlflow.db is read-only",)),
    (_deleted_experiment, ("MLflow experiment 'tcm-default'", "is deleted", "mlflow experiments restore")),
])
def test_unusable_mlflow_store_is_one_line_and_keeps_the_checkpoints(tmp_path, capsys, monkeypatch, digits_dir,
                                                                     damage, words) -> None:
    path, run_root = _trained(tmp_path, digits_dir)
    before = _results(run_root)
    damage(tmp_path / "mlflow.db", monkeypatch)
    t0 = time.monotonic()
    fails_in_one_line(capsys, ["train", "r", "--params", str(path)], *words)
    assert time.monotonic() - t0 < 60  # a read-only store is not retried as if busy
    assert _results(run_root) == before  # the finished run's checkpoint, history and run.json


@pytest.mark.slow
def test_held_store_lock_times_out_naming_its_holder(tmp_path, capsys, monkeypatch, digits_dir) -> None:
    path, run_root = _trained(tmp_path, digits_dir)
    before = _results(run_root)
    monkeypatch.setenv("TCM_LOCK_TIMEOUT", "1")
    with held_elsewhere(tmp_path / "mlflow.db.lock", "MLflow store"):
        fails_in_one_line(capsys, ["train", "r", "--params", str(path)], "MLflow store", "still in use by pid",
                          str(os.getpid()), "after 1 s", "mlflow.db.lock")
    assert _results(run_root) == before


# ---------------------------------------------------------------- settings that fail only once training starts


def test_loss_parameter_the_loss_rejects_keeps_the_checkpoint(tmp_path, capsys, digits_dir) -> None:
    path, run_root = _trained(tmp_path, digits_dir, mlflow=False)
    before = _results(run_root)
    p = params_for(tmp_path, digits_dir, epochs=1)
    p["runs"]["r"]["loss"]["params"] = {"alpha": "two"}  # refused by params.yaml's checks (config.LOSS_PARAMS)
    write_params(path, p)
    fails_in_one_line(capsys, ["train", "r", "--params", str(path)], "runs.r.loss.params.alpha", "'two'")
    assert _results(run_root) == before


def test_loss_constructor_error_is_named_before_anything_is_moved(tmp_path, capsys, monkeypatch,
                                                                  digits_dir) -> None:
    """What the typed params let through but the loss refuses (here: any value) stops in the preflight."""
    from tcm.losses import registry

    path, run_root = _trained(tmp_path, digits_dir, mlflow=False)
    before = _results(run_root)

    def refuse(**kwargs):
        raise ValueError("alpha must be below beta")

    monkeypatch.setitem(registry.BASE_LOSSES, "multi_similarity", refuse)
    write_params(path, params_for(tmp_path, digits_dir, epochs=1))
    fails_in_one_line(capsys, ["train", "r", "--params", str(path)], "runs.r.loss.params",
                       "ValueError: alpha must be below beta")
    assert _results(run_root) == before


def test_huge_samples_per_epoch_is_refused_before_anything_is_moved(tmp_path, capsys, digits_dir) -> None:
    path, run_root = _trained(tmp_path, digits_dir, mlflow=False)
    before = _results(run_root)
    write_params(path, params_for(tmp_path, digits_dir, epochs=1, samples_per_epoch=10**15))
    fails_in_one_line(capsys, ["train", "r", "--params", str(path)], "run_defaults.train.samples_per_epoch",
                       "less than or equal to 100000000")
    assert _results(run_root) == before


# ---------------------------------------------------------------- the disk


def test_too_little_disk_for_a_checkpoint_is_refused_before_anything_is_moved(tmp_path, capsys, monkeypatch,
                                                                               digits_dir) -> None:
    from tcm.train import preflight

    path, run_root = _trained(tmp_path, digits_dir, mlflow=False)
    before = _results(run_root)
    monkeypatch.setattr(preflight, "free_bytes", lambda p: 1000)
    fails_in_one_line(capsys, ["train", "r", "--params", str(path)], "no space left on device",
                       str(run_root / "train"), "MiB free", "nothing was changed")
    assert _results(run_root) == before


def _full_disk_at_save(monkeypatch, from_epoch: int) -> None:
    """torch.save on a full disk, as torch reports it (no errno), from the checkpoint of ``from_epoch`` on."""
    import tcm.atomic
    import tcm.checkpoint

    real = torch.save

    def save(state, f, *a, **k):
        if state.get("epoch", 0) >= from_epoch:
            Path(f).write_bytes(b"PK\x03\x04 partial")
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 4096 vs 4090")
        return real(state, f, *a, **k)

    monkeypatch.setattr(tcm.checkpoint.torch, "save", save)
    monkeypatch.setattr(tcm.checkpoint, "free_bytes", lambda p: 0)
    monkeypatch.setattr(tcm.atomic, "free_bytes", lambda p: 0)


def test_full_disk_while_saving_says_so_and_keeps_the_last_epoch(tmp_path, capsys, monkeypatch,
                                                                 digits_dir) -> None:
    path = write_params(tmp_path / "params.yaml", params_for(tmp_path, digits_dir, epochs=3))
    _full_disk_at_save(monkeypatch, from_epoch=2)
    ckpt = load_config(path).run_dir("r").checkpoint(0)
    line = fails_in_one_line(capsys, ["train", "r", "--params", str(path)], f"cannot write {ckpt}",
                              "no space left on device", "the previous checkpoint is kept", "epoch 1")
    assert "inline_container" not in line
    assert torch.load(ckpt, weights_only=True)["epoch"] == 1
    assert not list(ckpt.parent.glob(".*.tmp"))


def test_full_disk_in_a_new_attempt_puts_the_finished_run_back(tmp_path, capsys, monkeypatch,
                                                               digits_dir) -> None:
    path, run_root = _trained(tmp_path, digits_dir, mlflow=False)
    before = _results(run_root)
    _full_disk_at_save(monkeypatch, from_epoch=0)  # the new attempt cannot save even its first checkpoint
    capsys.readouterr()
    assert main(["train", "r", "--params", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    # Before the error, the notice that the finished run is trained again (the preflight's disk check
    # would have refused this disk; the simulated error comes past it).
    notice, line = err.splitlines()
    assert notice.endswith("holds a finished run; training r from scratch"), err
    assert line.startswith("tcm: error: cannot write") and "no space left on device (0.0 MiB free)" in line, err
    assert f"the earlier {run_root / 'train'} is put back unchanged" in line, err
    assert _results(run_root) == before
    assert not list(run_root.glob("train.old-*"))


@pytest.mark.slow
def test_file_size_limit_is_refused_before_anything_is_moved(tmp_path, digits_dir) -> None:
    """`ulimit -f` below a checkpoint's size: refused by name before the finished run is touched (the
    partial checkpoint of a new attempt never lands beside the old metrics)."""
    import resource

    path, run_root = _trained(tmp_path, digits_dir, mlflow=False)
    before = _results(run_root)
    limit = 16 * 1024
    out = subprocess.run([sys.executable, "-m", "tcm.cli", "train", "r", "--params", str(path)],
                         env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                         preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit)))
    lines = [line for line in out.stderr.splitlines() if line.startswith("tcm")]
    assert out.returncode == 2 and len(lines) == 1 and "Traceback" not in out.stderr, out.stderr
    assert "file too large" in lines[0] and "ulimit -f" in lines[0] and "nothing was changed" in lines[0], lines
    assert _results(run_root) == before


def test_read_only_run_folder_is_one_line_naming_it(tmp_path, capsys, monkeypatch, digits_dir) -> None:
    path, run_root = _trained(tmp_path, digits_dir, mlflow=False)
    before = _results(run_root)
    if ROOT:
        real_open = os.open

        def read_only(file, flags, *a, **k):
            if str(file).startswith(str(run_root)) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
                raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(file))
            return real_open(file, flags, *a, **k)

        monkeypatch.setattr(os, "open", read_only)
    else:
        for p in [run_root, *run_root.rglob("*")]:
            p.chmod(0o555 if p.is_dir() else 0o444)
    try:
        line = fails_in_one_line(capsys, ["train", "r", "--params", str(path)], f"cannot write {run_root}",
                                  "nothing was changed")
    finally:
        monkeypatch.undo()
        for p in [run_root, *run_root.rglob("*")]:
            p.chmod(0o755 if p.is_dir() else 0o644)
    assert "read-only" in line, line
    assert _results(run_root) == before


def test_killed_while_aside_puts_the_earlier_run_back(tmp_path, capsys, digits_dir) -> None:
    """A process killed (kill -9) after moving train/ aside and before its first trained epoch: the next
    call puts the earlier folder back before deciding anything."""
    from tcm.atomic import write_json

    path, run_root = _trained(tmp_path, digits_dir, mlflow=False)
    before = _results(run_root)
    old = run_root / "train.old-99999"
    (run_root / "train").rename(old)
    write_json(run_root / "train/progress.json", {"run": "r", "complete": False, "aside": old.name})
    from tcm import train

    train._recover_aside(load_config(path).run_dir("r"), train.Dist())
    assert "putting back the earlier one (train.old-99999)" in capsys.readouterr().err
    assert _results(run_root) == before and not old.exists()


# ---------------------------------------------------------------- interrupts


@pytest.mark.slow
def test_ctrl_c_names_what_was_kept_and_ends_the_mlflow_run_killed(tmp_path, capsys, monkeypatch,
                                                                   digits_dir) -> None:
    from tcm.train import seed as train_seed

    path = write_params(tmp_path / "params.yaml", params_for(tmp_path, digits_dir, epochs=3, mlflow=True,
                                                             seeds=[0, 1]))
    real = train_seed.save_checkpoint

    def save(p, state):
        real(p, state)
        if state["seed"] == 1 and state["epoch"] == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(train_seed, "save_checkpoint", save)
    ckpt = load_config(path).run_dir("r").checkpoint(1)
    fails_in_one_line(capsys, ["train", "r", "--params", str(path)],
                       f"interrupted: run r seed 1 kept at epoch 2 of 3 in {ckpt}; seeds [0] finished; rerun to resume")
    assert {r.info.run_name: r.info.status for r in _mlflow_runs(tmp_path)} == {"r-s0": "FINISHED", "r-s1": "KILLED"}


def _train_process(params: Path) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    # A shell runs a background job (CI under nohup ... &) with SIGINT ignored, and Python then installs no
    # KeyboardInterrupt handler: the child gets SIGINT's default back, as a terminal's Ctrl-C would find it.
    return subprocess.Popen([sys.executable, "-m", "tcm.cli", "train", "r", "--params", str(params)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def _wait_for(path: Path, proc: subprocess.Popen, seconds: float = 300) -> None:
    deadline = time.monotonic() + seconds
    while not path.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, f"{path} did not appear in time"
        time.sleep(0.05)


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_during_train_is_one_line_and_the_rerun_resumes(tmp_path, digits_dir, sig) -> None:
    path = write_params(tmp_path / "params.yaml", params_for(tmp_path, digits_dir, epochs=40, mlflow=True,
                                                             samples_per_epoch=320))
    proc = _train_process(path)
    try:
        _wait_for(tmp_path / "runs/r/history.csv", proc)  # written once epoch 1 is saved and logged
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=300)
    finally:
        proc.kill()
    lines = [line for line in err.splitlines() if line.startswith("tcm")]
    assert proc.returncode == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert "interrupted: run r seed 0 kept at epoch" in lines[0] and "rerun to resume" in lines[0], err
    epoch = torch.load(tmp_path / "runs/r/train/seed-0/checkpoint.pt", weights_only=True)["epoch"]
    assert f"kept at epoch {epoch} of 40" in lines[0]
    assert [r.info.status for r in _mlflow_runs(tmp_path)] == ["KILLED"]


@pytest.mark.slow
def test_evaluate_interrupted_says_so_for_evaluation(tmp_path, capsys, monkeypatch, digits_dir) -> None:
    from tcm import evaluate

    path, run_root = _trained(tmp_path, digits_dir, mlflow=False)

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(evaluate, "embed", interrupted)
    line = fails_in_one_line(capsys, ["evaluate", "--run", "r", "--params", str(path)],
                              "interrupted: evaluation of run r", "rerun")
    assert "completed epochs" not in line  # the training message it gave before


# ---------------------------------------------------------------- the stage notebook


def _stage_process(params: Path, out: Path, **popen) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    nb = Path(__file__).resolve().parents[1] / "notebooks/02_train.ipynb"
    return subprocess.Popen([sys.executable, "-m", "tcm.cli", "notebook", str(nb), str(out), "-p", "run", "r",
                             "-p", "params_path", str(params)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **popen)


KERNEL_MODULES = ("tcm.stage_kernel", "ipykernel_launcher")  # what `tcm notebook` starts, or another kernel


def _kernels_of(pid: int) -> list[int]:
    from tcm.cli.run_notebook import _children, _command

    return [c for c in _children(pid) if any(a in KERNEL_MODULES for a in _command(c))]


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc").is_dir(), reason="finds the kernel process through /proc")
def test_ctrl_c_in_the_train_stage_notebook_stops_the_kernel_with_one_line(tmp_path, digits_dir) -> None:
    path = write_params(tmp_path / "params.yaml", params_for(tmp_path, digits_dir, epochs=40, mlflow=True,
                                                             samples_per_epoch=320))
    proc = _stage_process(path, tmp_path / "out.ipynb")
    try:
        _wait_for(tmp_path / "runs/r/history.csv", proc)
        kernels = _kernels_of(proc.pid)
        assert kernels
        proc.send_signal(signal.SIGINT)  # as the terminal's Ctrl-C: the kernel, in its own session, gets none
        _, err = proc.communicate(timeout=300)
    finally:
        proc.kill()
    # the stage's first line says what it does ("tcm: train r: ..."); then one line for the interrupt
    lines = [line for line in err.splitlines() if line.startswith("tcm") and not line.startswith("tcm: train r:")]
    assert proc.returncode == 2 and len(lines) == 1, err
    assert "Traceback" not in err and "ZMQError" not in err, err
    assert "interrupted: run r seed 0 kept at epoch" in lines[0], err
    assert [r.info.status for r in _mlflow_runs(tmp_path)] == ["KILLED"]
    assert not any(_alive(k) for k in kernels)


@pytest.mark.e2e
@pytest.mark.skipif(not Path("/proc").is_dir(), reason="finds the kernel process through /proc")
def test_killing_only_dvc_ends_the_stage_kernel(tmp_path) -> None:
    """`kill -9` of the `dvc repro` process alone: the train stage's kernel stops too (within a minute),
    keeping its checkpoint, so that the rerun resumes instead of finding the run still being trained."""
    params = tiny_params(("digits-ms",), epochs=200, seeds=(0,))
    params["run_defaults"]["train"]["samples_per_epoch"] = 320
    work = copy_project(tmp_path / "project", params)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "PYTHONPATH": str(work / "src"), "DVC_NO_ANALYTICS": "1", "OMP_NUM_THREADS": "1"}
    dvc = subprocess.Popen(["dvc", "repro", "train@digits-ms"], cwd=work, env=env, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, start_new_session=True)
    kernel = None
    try:
        deadline = time.monotonic() + 400
        while not (work / "runs/digits-ms/history.csv").exists():
            assert dvc.poll() is None, "dvc ended before training started"
            assert time.monotonic() < deadline, "the train stage did not save an epoch in time"
            time.sleep(0.2)
        kernel = _descendant_kernel(dvc.pid)  # the train stage's (earlier stages had their own)
        assert kernel is not None
        dvc.kill()  # dvc alone: its children stay
        dvc.wait()
        deadline = time.monotonic() + 60
        while _alive(kernel):
            assert time.monotonic() < deadline, "the kernel kept running after dvc was killed"
            time.sleep(0.5)
    finally:
        for pid in (dvc.pid, kernel):  # whatever is left: the test's dvc session, the kernel's own session
            if pid is not None:
                try:
                    os.killpg(pid, signal.SIGKILL)
                except OSError:
                    pass
    state = torch.load(work / "runs/digits-ms/train/seed-0/checkpoint.pt", weights_only=True)
    assert 1 <= state["epoch"] < 200
    # Stopped by an interrupt (not killed): the executed copy, written as the stage ends, says so.
    executed = work / "reports/notebooks/train-digits-ms.ipynb"
    deadline = time.monotonic() + 60
    while not (executed.exists() and "TrainingInterrupted" in executed.read_text()):
        assert time.monotonic() < deadline, "the stage did not end with the training's interrupt"
        time.sleep(0.5)
    from tcm.locks import exclusive

    with exclusive(work / "runs/digits-ms/.lock", "run digits-ms"):  # free: a rerun would resume
        pass


def _alive(pid: int) -> bool:
    from tcm.cli.run_notebook import _stat

    return _stat(pid) is not None


def _descendant_kernel(root: int) -> int | None:
    from tcm.cli.run_notebook import _children, _command

    todo = [root]
    while todo:
        pid = todo.pop()
        if pid != root and any(a in KERNEL_MODULES for a in _command(pid)):
            return pid
        todo.extend(_children(pid))
    return None
