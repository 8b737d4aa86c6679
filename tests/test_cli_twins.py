"""The command-line twins run every stage without Jupyter, DVC or MLflow."""

from __future__ import annotations

import json
import sys

import pandas as pd
import pytest
from conftest import tiny_params, write_params

from tcm.cli import main
from tcm.config import load_config
from tcm.tracking import Tracker


@pytest.fixture
def no_mlflow(monkeypatch):
    # An entry of None in sys.modules makes `import mlflow...` raise ImportError, as on a GPU box without it.
    for mod in ("mlflow", "mlflow.tracking", "mlflow.entities"):
        monkeypatch.setitem(sys.modules, mod, None)
    monkeypatch.setattr("tcm.tracking._NOTICE_SHOWN", False)


@pytest.mark.slow
def test_stages_run_from_the_cli_without_mlflow(tmp_path, no_mlflow, capsys) -> None:
    params = str(write_params(tmp_path / "params.yaml", tiny_params(mlflow=True)))
    assert main(["check-params", "--params", params]) == 0
    assert main(["data", "prepare", "digits", "--params", params]) == 0
    manifest = pd.read_csv(tmp_path / "data/digits/manifest.csv")
    # open world: digits 0-4 train, 5-9 test, as real PNG files
    assert set(manifest.loc[manifest.split == "train", "label"]) == {0, 1, 2, 3, 4}
    assert set(manifest.loc[manifest.split == "test", "label"]) == {5, 6, 7, 8, 9}
    assert (tmp_path / "data/digits" / manifest.path[0]).read_bytes()[:4] == b"\x89PNG"

    for run in ("digits-ms", "digits-ms-tcm"):
        assert main(["train", run, "--params", params]) == 0
        assert main(["evaluate", "--run", run, "--params", params]) == 0
    assert main(["report", "--params", params]) == 0
    err = capsys.readouterr().err
    assert err.count("mlflow is not installed; skipping experiment tracking") == 1  # one notice, not one per call

    history = pd.read_csv(tmp_path / "runs/digits-ms-tcm/history.csv")
    assert list(history.epoch) == [1, 2] and (history.tcm_loss >= 0).all()
    assert (pd.read_csv(tmp_path / "runs/digits-ms/history.csv").tcm_loss == 0).all()
    metrics = json.loads((tmp_path / "runs/digits-ms/eval/seed-0/metrics.json").read_text())
    assert set(metrics["recall_at_k"]) == {"1", "2", "4", "8"} and 0 <= metrics["opis"] <= 1
    summary = json.loads((tmp_path / "runs/digits-ms/metrics.json").read_text())
    assert summary["OPIS"] == metrics["opis"] and set(summary["sd"]) == {"R@1", "MAP@R", "OPIS", "eps-OPIS"}
    info = json.loads((tmp_path / "runs/digits-ms/run.json").read_text())
    assert "mlflow_run_id" not in json.dumps(info)  # machine-specific ids are not written to result files
    assert {"torch", "device", "cpu", "torch_threads"} <= set(info["environment"])
    comparison = pd.read_csv(tmp_path / "reports/tables/tcm_comparison.csv")
    assert len(comparison) == 1 and comparison.loc[0, "run (with TCM)"] == "digits-ms-tcm"
    assert not (tmp_path / "mlflow.db").exists()


def test_tracker_is_a_no_op_without_mlflow(tmp_path, no_mlflow) -> None:
    tracker = Tracker(load_config(write_params(tmp_path / "params.yaml", tiny_params(mlflow=True))))
    assert not tracker.enabled
    assert tracker.start_run("x", {"a": 1}, stage="train") is None
    tracker.log_metrics(None, {"loss": 1.0}, step=1)  # no error


def test_unknown_run_is_a_one_line_error(tiny_params_file, capsys) -> None:
    assert main(["train", "nope", "--params", str(tiny_params_file)]) == 2
    err = capsys.readouterr().err
    assert "unknown run 'nope'" in err and "digits-ms" in err and "Traceback" not in err


def test_missing_data_is_a_one_line_error(tiny_params_file, capsys) -> None:
    assert main(["train", "digits-ms", "--params", str(tiny_params_file)]) == 2
    err = capsys.readouterr().err
    assert "manifest.csv: not found" in err and "data prepare" in err
