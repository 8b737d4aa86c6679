"""Kill `tcm train` after its first epoch, rerun it, and get bit-identical results and one MLflow run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
from conftest import params_for, write_params

EPOCHS = 4
CKPT = "runs/r/train/seed-0/checkpoint.pt"


def _train(params: Path, **popen) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "tcm.cli", "train", "r", "--params", str(params)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **popen)


def _finish(proc: subprocess.Popen) -> str:
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out
    return out


@pytest.mark.slow
def test_killed_run_resumes_bit_identically_and_continues_its_mlflow_run(tmp_path, digits_dir) -> None:
    # 4 batches of 80 per epoch: long enough to kill the run in its second epoch.
    overrides = dict(epochs=EPOCHS, mlflow=True, samples_per_epoch=320)
    whole_dir, killed_dir = tmp_path / "whole", tmp_path / "killed"
    for d in (whole_dir, killed_dir):
        d.mkdir()
        write_params(d / "params.yaml", params_for(d, digits_dir, **overrides))

    whole = _train(whole_dir / "params.yaml")
    victim = _train(killed_dir / "params.yaml")
    history = killed_dir / "runs/r/history.csv"  # written after the epoch's checkpoint and metrics
    deadline = time.monotonic() + 240
    while not history.exists():
        assert victim.poll() is None, victim.communicate()[0]
        assert time.monotonic() < deadline, "no epoch finished in time"
        time.sleep(0.01)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    done = torch.load(killed_dir / CKPT, weights_only=True)["epoch"]
    assert 1 <= done < EPOCHS, f"the run was not interrupted (checkpoint after epoch {done})"

    out = _finish(_train(killed_dir / "params.yaml"))
    assert f"resuming run r seed 0 after epoch {done} of {EPOCHS}" in out
    _finish(whole)

    a = torch.load(whole_dir / CKPT, weights_only=True)
    b = torch.load(killed_dir / CKPT, weights_only=True)
    assert a["epoch"] == b["epoch"] == EPOCHS
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    ha, hb = (pd.read_csv(d / "runs/r/history.csv") for d in (whole_dir, killed_dir))
    cols = ["epoch", "loss", "base_loss", "tcm_loss", "lr"]
    pd.testing.assert_frame_equal(ha[cols], hb[cols], check_exact=True)

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{killed_dir / 'mlflow.db'}")
    exp = client.get_experiment_by_name("tcm-default")
    runs = [r for r in client.search_runs([exp.experiment_id]) if "tcm.seed" in r.data.tags]  # not the parent
    assert len(runs) == 1, [r.info.run_id for r in runs]
    assert runs[0].data.tags["tcm.config_hash"] == b["config_hash"] and runs[0].data.tags["tcm.seed"] == "0"
    steps = [m.step for m in client.get_metric_history(runs[0].info.run_id, "train.loss")]
    assert sorted(steps) == list(range(1, EPOCHS + 1))
