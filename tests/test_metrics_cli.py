"""`tcm evaluate EMBEDDINGS LABELS --out ...`: outputs, and one-line errors without traceback."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from tcm.cli import main
from tcm.config import EvaluationConfig
from tcm.metrics import evaluate_embeddings


@pytest.fixture()
def files(tmp_path):
    rng = np.random.default_rng(0)
    y = rng.integers(0, 15, 200)
    e = (rng.normal(size=(15, 8))[y] + rng.normal(size=(200, 8))).astype(np.float32)
    np.save(tmp_path / "e.npy", e)
    np.save(tmp_path / "y.npy", y)
    return tmp_path, e, y


def test_writes_metrics_and_curves(files, capsys):
    d, e, y = files
    rc = main(["evaluate", str(d / "e.npy"), str(d / "y.npy"), "--out", str(d / "m.json"), "--k", "1", "3",
               "--curves", str(d / "c.csv"), "--device", "cpu", "--chunk-size", "64", "--target-far", "0.01"])
    assert rc == 0
    m = json.loads((d / "m.json").read_text())
    assert set(m) >= {"recall_at_k", "map_at_r", "r_precision", "opis", "eps_opis", "threshold_report", "settings"}
    assert list(m["recall_at_k"]) == ["1", "3"]
    want = evaluate_embeddings(e, y, EvaluationConfig(recall_k=[1, 3], device="cpu", chunk_size=64,
                                                      target_far=0.01)).metrics
    assert m["opis"] == pytest.approx(want["opis"]) and m["map_at_r"] == pytest.approx(want["map_at_r"])
    assert m["settings"]["target_far"] == 0.01 and m["settings"]["opis"]["n_thresholds"] == 101
    c = pd.read_csv(d / "c.csv", dtype={"class": str})
    assert set(c.columns) == {"class", "threshold", "tpr", "tnr", "utility"}
    assert (c["class"] == "overall").sum() == 101
    assert "R@1" in capsys.readouterr().out


def test_bootstrap_sd_by_default_and_off_on_request(files):
    d, _, _ = files
    args = ["evaluate", str(d / "e.npy"), str(d / "y.npy"), "--device", "cpu", "--k", "1"]
    assert main([*args, "--out", str(d / "a.json"), "--bootstrap", "50", "--bootstrap-seed", "3"]) == 0
    a = json.loads((d / "a.json").read_text())
    assert a["opis_boot_sd"] > 0 and a["settings"]["bootstrap"]["resamples"] == 50
    assert -1 < a["neg_cos_median"] < a["pos_cos_median"] < 1
    assert main([*args, "--out", str(d / "b.json"), "--bootstrap", "0"]) == 0
    b = json.loads((d / "b.json").read_text())
    assert "opis_boot_sd" not in b and "bootstrap" not in b["settings"] and b["opis"] == a["opis"]


def test_default_k(files):
    d, _, _ = files
    assert main(["evaluate", str(d / "e.npy"), str(d / "y.npy"), "--out", str(d / "m.json"), "--device", "cpu"]) == 0
    assert list(json.loads((d / "m.json").read_text())["recall_at_k"]) == ["1", "2", "4", "8"]


def _save(d, name, arr):
    np.save(d / name, arr)
    return str(d / name)


@pytest.mark.parametrize("make,words", [
    (lambda d, e, y: [_save(d, "bad.npy", np.where(np.arange(len(e))[:, None] == 3, np.inf, e)), str(d / "y.npy")],
     "NaN or inf"),
    (lambda d, e, y: [str(d / "e.npy"), _save(d, "short.npy", y[:-1])], "differ in length"),
    (lambda d, e, y: [str(d / "e.npy"), _save(d, "float.npy", y + 0.5)], "integer"),
    (lambda d, e, y: [str(d / "e.npy"), _save(d, "one.npy", np.zeros_like(y))], "two classes"),
    (lambda d, e, y: [_save(d, "flat.npy", e.ravel()), str(d / "y.npy")], "2-D"),
    (lambda d, e, y: [str(d / "e.npy"), _save(d, "y2.npy", y[:, None])], "1-D"),
    (lambda d, e, y: [_save(d, "zero.npy", np.zeros((0, 8), np.float32)), _save(d, "y0.npy", np.zeros(0, int))],
     "at least one row"),
    (lambda d, e, y: [str(d / "missing.npy"), str(d / "y.npy")], "not found"),
    (lambda d, e, y: [(d / "text.npy").write_text("hello") and str(d / "text.npy"), str(d / "y.npy")], "not a .npy"),
    (lambda d, e, y: [_save(d, "zrow.npy", np.where(np.arange(len(e))[:, None] == 0, 0, e)), str(d / "y.npy")],
     "all zero"),
])
def test_bad_input_one_line_no_traceback(files, capsys, make, words):
    d, e, y = files
    rc = main(["evaluate", *make(d, e, y), "--out", str(d / "m.json"), "--device", "cpu"])
    err = capsys.readouterr().err.strip()
    assert rc != 0
    assert words in err and len(err.splitlines()) == 1 and "Traceback" not in err
    assert not (d / "m.json").exists()


@pytest.mark.parametrize("extra,words", [
    (["--k", "0"], "--k"),
    (["--far-range", "0.2", "0.1"], "far_range"),
    (["--run", "x"], "not both"),
    (["--bootstrap", "1"], "--bootstrap: "),
    (["--bootstrap-seed", "-1"], "--bootstrap-seed: "),
])
def test_bad_options(files, capsys, extra, words):
    d, _, _ = files
    rc = main(["evaluate", str(d / "e.npy"), str(d / "y.npy"), "--out", str(d / "m.json"), *extra])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and words in err and len(err.splitlines()) == 1


@pytest.mark.slow
def test_subprocess_exit_code_and_stderr(files):
    d, _, _ = files
    np.save(d / "f.npy", np.ones(200) * 0.5)
    r = subprocess.run([sys.executable, "-m", "tcm.cli", "evaluate", str(d / "e.npy"), str(d / "f.npy"), "--out",
                        str(d / "m.json")], capture_output=True, text=True)
    assert r.returncode == 2
    assert r.stderr.strip() == "tcm evaluate: error: labels: expected an integer array, but got dtype float64"
