"""No stale publication: `tcm report` leaves out, and names in one line, every seed whose results
came from another training or other settings than params.yaml's (tcm.provenance), with real
training and evaluation of a tiny digits run. (The hand-made tables: tests/test_report.py.)"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from conftest import params_for, write_params

from tcm.cli import main


def _report(capsys: pytest.CaptureFixture, path: Path, reports: Path) -> tuple[pd.DataFrame, pd.DataFrame, list[str]]:
    capsys.readouterr()
    assert main(["report", "--params", str(path)]) == 0
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("tcm")]
    return (pd.read_csv(reports / "tables/runs.csv"), pd.read_csv(reports / "tables/runs_per_seed.csv"), err)


@pytest.mark.slow
def test_report_leaves_out_results_of_another_training_or_other_settings(tmp_path, capsys, digits_dir) -> None:
    path = write_params(tmp_path / "params.yaml", params_for(tmp_path, digits_dir, epochs=1))
    reports = tmp_path / "reports"
    assert main(["train", "r", "--params", str(path)]) == 0
    assert main(["evaluate", "--run", "r", "--params", str(path)]) == 0
    runs, per_seed, err = _report(capsys, path, reports)
    assert runs.loc[0, "status"] == "done" and per_seed.loc[0, "status"] == "done" and err == []
    record = json.loads((tmp_path / "runs/r/eval/seed-0/settings.json").read_text())["provenance"]
    assert record["checkpoint_hash"] == json.loads((tmp_path / "runs/r/run.json").read_text())["seeds"]["0"][
        "config_hash"]

    # Settings changed, nothing re-run: the old results are no longer "done".
    write_params(path, params_for(tmp_path, digits_dir, epochs=2))
    runs, per_seed, err = _report(capsys, path, reports)
    assert runs.loc[0, "status"] == "stale" and runs.loc[0, "n"] == 0
    assert "trained with other settings than params.yaml's" in per_seed.loc[0, "stale because"]
    assert len(err) == 1 and "stale seed(s) (r seed 0)" in err[0] and "dvc repro" in err[0], err
    assert json.loads((reports / "metrics.json").read_text()) == {}

    # Trained again with the new settings, not evaluated: the metrics name the old checkpoint.
    assert main(["train", "r", "--params", str(path)]) == 0
    runs, per_seed, err = _report(capsys, path, reports)
    assert runs.loc[0, "status"] == "stale" and "another checkpoint" in per_seed.loc[0, "stale because"]
    assert len(err) == 1, err

    # Evaluated again: current; then only an evaluation setting changes.
    assert main(["evaluate", "--run", "r", "--params", str(path)]) == 0
    runs, _, err = _report(capsys, path, reports)
    assert runs.loc[0, "status"] == "done" and err == []
    p = params_for(tmp_path, digits_dir, epochs=2)
    p["evaluation"]["opis"]["n_thresholds"] = 51
    write_params(path, p)
    runs, per_seed, err = _report(capsys, path, reports)
    assert runs.loc[0, "status"] == "stale" and "other evaluation settings" in per_seed.loc[0, "stale because"]
    assert not list((tmp_path / "runs/r/eval").glob(".seed-*"))  # no staging folder left behind
