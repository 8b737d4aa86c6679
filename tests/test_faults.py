"""Faults and bad inputs, each tried as a user would meet it: one line on stderr naming the file, key
or value, exit 2, no traceback, nothing lost. (Data-set files: tests/test_faults_data.py; checkpoints:
tests/test_checkpoint.py; the file-based evaluator: tests/test_metrics_cli.py.)"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import (
    copy_project,
    fails_in_one_line,
    held_elsewhere,
    params_for,
    run_command,
    tiny_params,
    tree_digest,
    write_notebook,
    write_params,
)

from tcm.cli import main
from tcm.config import load_config


def _params_text(tmp_path: Path, text: str) -> str:
    path = tmp_path / "params.yaml"
    path.write_text(text)
    return str(path)


# ---------------------------------------------------------------- params.yaml


def test_duplicate_run_is_refused_with_both_lines(tmp_path, capsys) -> None:
    p = tiny_params(runs=("digits-ms",))
    text = yaml.safe_dump({k: v for k, v in p.items() if k != "runs"}, sort_keys=False)
    text += yaml.safe_dump({"runs": p["runs"]}, sort_keys=False)
    first = text.splitlines().index("  digits-ms:") + 1
    text += "  digits-ms:\n    dataset: digits\n"  # a second run of the same name: YAML would keep this one
    path = _params_text(tmp_path, text)
    for argv in (["check-params", "--params", path], ["train", "digits-ms", "--params", path]):
        fails_in_one_line(capsys, argv, path, f"line {text.count(chr(10)) - 1}: duplicate key 'digits-ms'",
                           f"first given at line {first}")


def test_duplicate_setting_is_refused(tmp_path, capsys) -> None:
    path = _params_text(tmp_path, "datasets:\n  d: {source: sklearn_digits, train_classes: [0, 1]}\n"
                        "runs:\n  r:\n    dataset: d\n    model: {backbone: small_cnn}\n    loss: {name: contrastive}\n"
                        "    train:\n      epochs: 8\n      epochs: 1\n")
    fails_in_one_line(capsys, ["check-params", "--params", path], "line 10", "'epochs'", "first given at line 9")


@pytest.mark.parametrize("name", ["../../evil", "a b", "x:y", "", "-rf", "a/b", "ü"])
def test_unsafe_run_names_are_refused_before_anything_is_written(tmp_path, capsys, name) -> None:
    p = tiny_params(runs=("digits-ms",))
    p["runs"] = {name: p["runs"]["digits-ms"]}
    p["paths"] = {"runs": str(tmp_path / "project/runs")}
    path = str(write_params(tmp_path / "params.yaml", p))
    fails_in_one_line(capsys, ["check-params", "--params", path], f"runs.{name}", "not allowed")
    fails_in_one_line(capsys, ["train", "--params", path, "--", name], "not allowed")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml"]


def test_unsafe_dataset_name_is_refused(tmp_path, capsys) -> None:
    p = tiny_params(runs=("digits-ms",))
    p["datasets"] = {"my data": p["datasets"]["digits"]}
    p["runs"]["digits-ms"]["dataset"] = "my data"
    path = str(write_params(tmp_path / "params.yaml", p))
    fails_in_one_line(capsys, ["check-params", "--params", path], "datasets.my data", "not allowed")


@pytest.mark.parametrize("key,value,words", [
    ("lr", float("inf"), "finite"),
    ("lr", float("nan"), "finite"),
    ("epochs", 1e20, "valid integer"),
    ("epochs", 10**20, "less than or equal to 100000"),
    ("epochs", True, "valid integer"),
    ("batch_size", 64.0, "valid integer"),
])
def test_impossible_numbers_are_refused(tmp_path, capsys, key, value, words) -> None:
    p = tiny_params(runs=("digits-ms", "digits-ms-tcm", "digits-pa"))
    p["run_defaults"]["train"][key] = value
    path = str(write_params(tmp_path / "params.yaml", p))
    # Three runs inherit the value: it is reported once, where it was written.
    fails_in_one_line(capsys, ["check-params", "--params", path], f"run_defaults.train.{key}", words)


def test_non_finite_loss_parameter_is_one_message(tmp_path, capsys) -> None:
    p = tiny_params(runs=("digits-ms",))
    p["runs"]["digits-ms"]["loss"]["params"] = {"alpha": float("nan")}
    path = str(write_params(tmp_path / "params.yaml", p))
    fails_in_one_line(capsys, ["check-params", "--params", path], "runs.digits-ms.loss.params", "alpha", "finite")


def test_batch_with_more_classes_than_the_train_split_fails_at_validate(tmp_path, capsys) -> None:
    p = tiny_params(runs=("digits-ms",))
    p["run_defaults"]["train"].update(batch_size=160, m_per_class=16)  # 10 classes; digits train on 5
    path = str(write_params(tmp_path / "params.yaml", p))
    fails_in_one_line(capsys, ["check-params", "--params", path], "runs.digits-ms.train.batch_size",
                       "10 distinct train classes", "trains on 5")


def test_cross_reference_errors_have_no_placeholder_prefix(tmp_path, capsys) -> None:
    p = tiny_params(runs=("digits-ms",))
    p["runs"]["digits-ms"]["dataset"] = "nope"
    path = str(write_params(tmp_path / "params.yaml", p))
    line = fails_in_one_line(capsys, ["check-params", "--params", path], "runs.digits-ms.dataset", "'nope'")
    assert "<top level>" not in line


def test_non_utf8_params_file(tmp_path, capsys) -> None:
    path = tmp_path / "params.yaml"
    path.write_bytes(b"datasets:\n  d: {source: sklearn_digits}\n# caf\xe9\n")
    fails_in_one_line(capsys, ["check-params", "--params", str(path)], str(path), "line 3", "UTF-8")


def test_empty_params_file(tmp_path, capsys) -> None:
    path = _params_text(tmp_path, "")
    fails_in_one_line(capsys, ["check-params", "--params", path], path, "empty", "tcm profile")


def test_profile_with_duplicate_key_is_refused_and_params_kept(tmp_path, capsys) -> None:
    profiles = tmp_path / "profiles"
    profiles.mkdir()
    (profiles / "dup.yaml").write_text("datasets: {}\ndatasets: {}\n")
    target = tmp_path / "params.yaml"
    target.write_text("keep me\n")
    capsys.readouterr()
    from tcm.profiles import activate

    with pytest.raises(Exception, match="line 2: duplicate key 'datasets'"):
        activate("dup", profiles, target)
    assert target.read_text() == "keep me\n"


# ---------------------------------------------------------------- training


def test_second_trainer_on_the_same_run_is_refused(tmp_path, capsys, digits_dir) -> None:

    path = write_params(tmp_path / "params.yaml", params_for(tmp_path, digits_dir, epochs=1))
    run_dir = load_config(path).run_dir("r")
    run_dir.root.mkdir(parents=True)
    (run_dir.root / "keep.txt").write_text("earlier results")
    before = tree_digest(run_dir.root)
    with held_elsewhere(run_dir.lock, "run r"):  # another process trains the run
        line = fails_in_one_line(capsys, ["train", "r", "--params", str(path)], "run r is in use by pid",
                                 str(os.getpid()), str(run_dir.lock))
    assert tree_digest(run_dir.root) == {**before, ".lock": tree_digest(run_dir.root)[".lock"]}, line
    assert main(["train", "r", "--params", str(path)]) == 0  # free again once the holder is gone


def test_lock_is_released_when_the_holder_is_killed(tmp_path) -> None:
    lock = tmp_path / "run/.lock"
    code = ("import sys, time; from tcm.locks import exclusive\n"
            f"with exclusive({str(lock)!r}, 'run x'):\n    print('held', flush=True); time.sleep(600)\n")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "held"
        from tcm.locks import LockedError, exclusive

        with pytest.raises(LockedError, match=f"pid {proc.pid}"):
            with exclusive(lock, "run x"):
                pass
    finally:
        proc.kill()
        proc.wait()
    with exclusive(lock, "run x"):  # kill -9 freed it
        pass


def test_huge_lr_stops_with_run_epoch_and_steps(tmp_path, capsys, digits_dir) -> None:
    path = write_params(tmp_path / "params.yaml", params_for(tmp_path, digits_dir, epochs=3, lr=1e12))
    line = fails_in_one_line(capsys, ["train", "r", "--params", str(path)], "run r seed 0", "the loss stayed at",
                              "steps of epoch", "train.lr 1e+12", "checkpoint")
    ckpt = load_config(path).run_dir("r").checkpoint(0)
    assert ckpt.is_file(), line


def test_nan_loss_is_one_line_on_the_command_line(tmp_path, capsys, digits_dir, monkeypatch) -> None:
    from tcm.train import build as train_build
    from tcm.train import preflight as train_preflight

    real = train_build.build_criterion

    def poisoned(*a, **k):
        crit = real(*a, **k)
        base = crit.base

        class Poison(torch.nn.Module):
            def forward(self, emb, labels, *rest):
                return base(emb, labels, *rest) * float("nan")

        crit.base = Poison()
        return crit

    for module in (train_build, train_preflight):  # the seed's criterion, and the one the checks run
        monkeypatch.setattr(module, "build_criterion", poisoned)
    path = write_params(tmp_path / "params.yaml", params_for(tmp_path, digits_dir, epochs=1))
    fails_in_one_line(capsys, ["train", "r", "--params", str(path)], "run r seed 0: loss is nan at epoch 1, step 1",
                       "last good checkpoint")


@pytest.mark.slow
def test_training_ends_its_mlflow_runs(tmp_path, digits_dir) -> None:
    from mlflow.tracking import MlflowClient

    path = write_params(tmp_path / "params.yaml", params_for(tmp_path, digits_dir, epochs=1, mlflow=True, seeds=[0, 1]))
    assert main(["train", "r", "--params", str(path)]) == 0
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    # the seeds nested under their configuration's parent run, every one ended
    assert sorted(r.info.run_name for r in runs) == ["r", "r-s0", "r-s1"]
    assert {r.info.status for r in runs} == {"FINISHED"} and all(r.info.end_time for r in runs)
    parent = next(r.info.run_id for r in runs if r.info.run_name == "r")
    assert {r.data.tags.get("mlflow.parentRunId") for r in runs if r.info.run_name != "r"} == {parent}


# ---------------------------------------------------------------- evaluation


def test_k_beyond_the_gallery_is_refused(tmp_path, capsys) -> None:
    rng = np.random.default_rng(0)
    np.save(tmp_path / "e.npy", rng.normal(size=(200, 8)).astype(np.float32))
    np.save(tmp_path / "l.npy", np.repeat(np.arange(20), 10))
    capsys.readouterr()
    assert main(["evaluate", str(tmp_path / "e.npy"), str(tmp_path / "l.npy"), "--out", str(tmp_path / "m.json"),
                 "--k", "1", "1000"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "--k: k = 1000" in err and "199 other points" in err, err
    assert not (tmp_path / "m.json").exists()


# ---------------------------------------------------------------- MLflow store


def test_store_is_resolved_against_the_dvc_project(tmp_path, monkeypatch) -> None:
    from tcm.tracking import store_paths, store_uris

    params_dir = tmp_path / "workspace/.dvc/tmp/exps/tmpabc"
    params_dir.mkdir(parents=True)
    cfg = load_config(write_params(params_dir / "params.yaml", tiny_params(mlflow=True)))
    monkeypatch.delenv("DVC_ROOT", raising=False)
    assert store_paths(cfg)[0] == params_dir / "mlflow.db"
    monkeypatch.setenv("DVC_ROOT", str(tmp_path / "workspace"))
    assert store_paths(cfg) == (tmp_path / "workspace/mlflow.db", tmp_path / "workspace/mlartifacts")
    assert store_uris(cfg)[0] == f"sqlite:///{tmp_path / 'workspace/mlflow.db'}"


WRITER = """
import sys
from tcm.config import load_config
from tcm.tracking import Tracker
cfg = load_config(sys.argv[1])
t = Tracker(cfg)
run = t.start_run(f"w{sys.argv[2]}", {"x": 1}, stage="train", seed=0)
for step in range(40):
    t.log_metrics(run, {"loss": step}, step=step)
t.end_run(run)
"""


@pytest.mark.slow
def test_concurrent_writers_share_one_new_store(tmp_path) -> None:
    """Several processes creating the store and logging at once: every run lands, one experiment."""
    path = write_params(tmp_path / "params.yaml", tiny_params(mlflow=True))
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src")}
    env.pop("DVC_ROOT", None)
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(path), str(i)], env=env, stderr=subprocess.PIPE,
                              text=True) for i in range(4)]
    errors = [p.communicate()[1] for p in procs]
    assert all(p.returncode == 0 for p in procs), errors
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiments = [e for e in client.search_experiments() if e.name == "tcm-default"]
    assert len(experiments) == 1
    runs = client.search_runs([experiments[0].experiment_id])
    assert sorted(r.info.run_name for r in runs) == [f"w{i}-s0" for i in range(4)]
    assert all(r.info.status == "FINISHED" and len(client.get_metric_history(r.info.run_id, "loss")) == 40
               for r in runs)


@pytest.mark.e2e
def test_queued_experiments_log_to_the_project_store(tmp_path) -> None:
    """`dvc exp run --queue` twice, then both at once (-j 2): each run lands once, FINISHED and tagged
    with its experiment, in the project's store (not in the deleted temporary copies)."""
    work = copy_project(tmp_path / "project", tiny_params(("digits-ms",), epochs=1, mlflow=True, seeds=(0,)))
    for epochs, name in ((1, "e1"), (2, "e2")):
        run_command(["dvc", "exp", "run", "--queue", "-S", f"run_defaults.train.epochs={epochs}", "-n", name], work)
    run_command(["dvc", "exp", "run", "--run-all", "-j", "2"], work)
    status = run_command(["dvc", "queue", "status"], work).stdout
    assert status.count("Success") == 2, status
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{work / 'mlflow.db'}")
    runs = [r for r in client.search_runs([e.experiment_id for e in client.search_experiments()])
            if "tcm.seed" in r.data.tags]  # the seed runs (not their configurations' parent runs)
    assert sorted((r.data.tags.get("dvc.exp_name"), r.info.run_name, r.info.status) for r in runs) == [
        ("e1", "digits-ms-s0", "FINISHED"), ("e2", "digits-ms-s0", "FINISHED")]
    epochs = {r.data.tags["dvc.exp_name"]: json.loads(client.get_run(r.info.run_id).data.params["train.epochs"])
              for r in runs}
    assert epochs == {"e1": 1, "e2": 2}
    assert not list((work / ".dvc/tmp/exps").rglob("mlflow.db"))


# ---------------------------------------------------------------- stage notebooks under DVC


@pytest.mark.slow
def test_stage_notebook_user_error_is_one_line(tmp_path, capsys) -> None:
    nb = write_notebook(tmp_path / "in.ipynb", "from tcm.config import ConfigError\n"
                   "raise ConfigError(f'params.yaml: runs.{x}: something the user can fix')")
    capsys.readouterr()
    out = tmp_path / "out.ipynb"
    assert main(["notebook", str(nb), str(out), "-p", "x", "0123"]) == 2
    err = capsys.readouterr().err
    tcm_lines = [line for line in err.splitlines() if line.startswith("tcm")]
    assert tcm_lines == [f"tcm: error: params.yaml: runs.0123: something the user can fix (the executed notebook "
                         f"{out} has the details)"], err  # "0123" stays a string, as run names are
    assert "Traceback" not in err and out.is_file()


@pytest.mark.slow
def test_stage_notebook_bug_keeps_its_traceback(tmp_path, capsys) -> None:
    nb = write_notebook(tmp_path / "in.ipynb", "print('to stderr', file=__import__('sys').stderr)\n1 / 0")
    capsys.readouterr()
    assert main(["notebook", str(nb), str(tmp_path / "out.ipynb")]) == 1
    err = capsys.readouterr().err
    assert "to stderr" in err and "ZeroDivisionError" in err  # the kernel's stderr streams through
