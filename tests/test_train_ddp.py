"""`tcm train` under torchrun: two CPU processes (gloo), DistributedDataParallel, rank 0 writes."""

from __future__ import annotations

import os
import subprocess
import sys

import pandas as pd
import pytest
import torch
from conftest import params_for, write_params


@pytest.mark.slow
@pytest.mark.parametrize("loss,chunk_size", [("proxy_anchor", None), ("rs_at_k", 8)])
def test_tcm_train_under_torchrun_with_two_processes(tmp_path, digits_dir, loss, chunk_size) -> None:
    # proxy_anchor: the proxies live outside DDP, their gradients are averaged by hand;
    # chunk_size 8 < 20 images per process: the recomputation syncs gradients on the last chunk only.
    params = params_for(tmp_path, digits_dir, epochs=2, batch_size=40, m_per_class=4, samples_per_epoch=160,
                        chunk_size=chunk_size)
    params["runs"]["r"]["loss"] = {"name": loss}
    params["runs"]["r"]["tcm"] = {"enabled": True}
    path = write_params(tmp_path / "params.yaml", params)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone"]  # = torchrun, free port
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([*torchrun, "--nproc_per_node", "2", "-m", "tcm.cli", "train", "r",
                           "--params", str(path)], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout + proc.stderr
    assert out.count("trained r: seeds [0], 2 epochs each") == 2  # both ranks finish
    assert out.count("r seed 0 epoch 1/2: loss") == 1  # only rank 0 reports
    state = torch.load(tmp_path / "runs/r/train/seed-0/checkpoint.pt", weights_only=True)
    assert state["world_size"] == 2 and state["epoch"] == 2
    history = pd.read_csv(tmp_path / "runs/r/history.csv")
    assert list(history.epoch) == [1, 2] and history.loss.notna().all()
    # 160 images per epoch in all: 4 steps x 2 processes x 20 images
    assert (history.images_per_s * history.seconds).round().tolist() == [160, 160]
