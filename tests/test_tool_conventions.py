"""The pipeline as the tools around it show it (DVC metrics and plots, MLflow, the explore notebook),
checked on the test pipeline that tests/conftest.py reproduces in a temporary copy."""

from __future__ import annotations

import json
import re
import shutil
import sys
from pathlib import Path

import pytest
from conftest import E2E_RUNS as RUNS
from conftest import E2E_SEEDS as SEEDS
from conftest import REPO
from conftest import run_command as _sh

pytestmark = pytest.mark.e2e


def _documented(command: str) -> list[str]:
    """The README's command line that starts with ``command`` (so the test runs what users are told)."""
    found = re.findall(rf"^({re.escape(command)}[^\n`]*)$", (REPO / "README.md").read_text(), flags=re.M)
    assert found, f"the README gives no `{command}` command"
    return found[0].split("#")[0].split()


def test_dvc_metrics_show_fits_a_terminal_and_holds_only_metrics(project: Path) -> None:
    out = _sh(_documented("dvc metrics show"), project).stdout
    lines = [line.rstrip() for line in out.splitlines() if line.strip()]
    assert len(lines) == 1 + len(RUNS), out  # a header and one row per run
    assert max(map(len, lines)) <= 120, out
    for run in RUNS:
        metrics = json.loads((project / f"runs/{run}/metrics.json").read_text())
        flat = [v for v in (*metrics.values(), *metrics["sd"].values()) if not isinstance(v, dict)]
        assert all(v is None or isinstance(v, float) for v in flat), metrics  # numbers only
        settings = json.loads((project / f"runs/{run}/eval/seed-0/settings.json").read_text())
        assert settings["run"] == run and "recall_k" in settings
        assert "settings" not in json.loads((project / f"runs/{run}/eval/seed-0/metrics.json").read_text())


def test_dvc_plots_render_without_errors(project: Path) -> None:
    out = _sh(["dvc", "plots", "show", "--json"], project).stdout
    shown = json.loads(out[out.index("{"):])
    assert not shown.get("errors"), shown.get("errors")
    data = shown["data"]
    curves = data["training curves (mean over seeds)"][0]["content"]["data"]["values"]
    assert {(v["run"], v["part"]) for v in curves} == {(r, p) for r in RUNS for p in ("loss", "base_loss", "tcm_loss")}
    # A data plot of no rows is an empty list (class rates once earlier tests left the runs no pair).
    images = [k for k, v in data.items() if v and v[0]["type"] == "image"]
    assert images and all(k.endswith(".png") for k in images), list(data)


def test_mlflow_runs_are_tagged_finished_and_carry_their_own_files(project: Path) -> None:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{project / 'mlflow.db'}")
    exp = client.get_experiment_by_name("tcm-default")
    runs = client.search_runs([exp.experiment_id])
    head = _sh(["git", "rev-parse", "HEAD"], project).stdout.strip()
    # Other tests of the session may have retrained (dvc repro, dvc exp run): every run counts.
    for r in runs:
        tags = r.data.tags
        assert r.info.status == "FINISHED" and tags["dvc.baseline_rev"] == head and tags["dvc.exp_name"], tags
        assert "test.threshold_report.target_far" not in r.data.metrics
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"  # the UI opens on the runs table
    reported = [r for r in runs if r.data.tags["stage"] == "report" and "tcm.seed" in r.data.tags]
    assert {(r.data.tags["tcm.run"], r.data.tags["tcm.seed"]) for r in reported} == {
        (n, str(s)) for n in RUNS for s in (0, 1)}
    assert any(r.data.tags["dvc.exp_name"] == "workspace" for r in reported)  # plain `dvc repro`
    for r in reported:
        name, seed = r.data.tags["tcm.run"], r.data.tags["tcm.seed"]
        assert "test.opis" in r.data.metrics
        files = {a.path for folder in ("results", "notebooks", None)
                 for a in client.list_artifacts(r.info.run_id, folder)}
        assert {f"results/seed-{seed}.npz", "results/curves.csv",
                f"notebooks/train-{name}.html", f"notebooks/evaluate-{name}.html"} <= files, files
        assert "model" not in {a.path for a in client.list_artifacts(r.info.run_id)}  # no raw model.pt
        figures = {f for f in files if f.endswith(".png")}
        # its own figures only, under names equal across runs at the root (the UI's Compare shows them side by side)
        assert "utility.png" in figures
        assert not figures & {"training_curves.png", "opis_vs_recall.png"}, figures
        assert not any(n in f for n in RUNS for f in figures), figures
    # the MLflow model of a seed (pt2 export): opens with mlflow.pytorch and mlflow.pyfunc and embeds a batch
    _sh([sys.executable, "-c", MODEL_CHECK, f"sqlite:///{project / 'mlflow.db'}", reported[0].info.run_id], project)


MODEL_CHECK = """
import sys, mlflow, mlflow.pytorch, numpy as np, torch
mlflow.set_tracking_uri(sys.argv[1])
uri = f"runs:/{sys.argv[2]}/model"
shape = mlflow.models.get_model_info(uri).signature.inputs.inputs[0].shape
x = np.random.default_rng(0).random((3, *shape[1:]), dtype=np.float32)
out = mlflow.pytorch.load_model(uri)(torch.from_numpy(x))
assert out.shape[0] == 3 and torch.allclose(out.norm(dim=1), torch.ones(3), atol=1e-4), out.shape
assert mlflow.pyfunc.load_model(uri).predict(x).shape == tuple(out.shape)
"""


def test_explore_opens_an_mlflow_run_id_without_the_workspace_runs(project: Path, tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    work = tmp_path / "project"
    # The store is copied by SQLite's backup API in another process (see conftest.tree_digest: this
    # process must not open and close the store's files behind its own MLflow connection).
    shutil.copytree(project, work, symlinks=True, ignore=shutil.ignore_patterns("mlflow.db*"))
    _sh([sys.executable, "-c", "import sqlite3, sys; sqlite3.connect(sys.argv[1]).backup(sqlite3.connect(sys.argv[2]))",
         str(project / "mlflow.db"), str(work / "mlflow.db")], tmp_path)
    shutil.rmtree(work / "runs")
    client = MlflowClient(tracking_uri=f"sqlite:///{work / 'mlflow.db'}")
    exp = client.get_experiment_by_name("tcm-default")
    run_id = next(r.info.run_id for r in client.search_runs([exp.experiment_id]) if r.info.run_name == "digits-ms-s1")
    out = work / "explore.ipynb"
    _sh(["tcm", "notebook", "notebooks/explore_run.ipynb", str(out), "-p", "run", run_id], work)
    outputs = json.dumps([o for c in json.loads(out.read_text())["cells"] if c["cell_type"] == "code"
                          for o in c.get("outputs", [])])
    assert outputs.count("image/png") >= 2 and "share_of_opis" in outputs and "'seed': 1," in outputs
    assert not (work / "runs").exists()


def test_mlflow_import_rebuilds_the_store_of_a_fresh_clone(project: Path, tmp_path: Path) -> None:
    """mlflow.db and mlartifacts/ are in neither git nor DVC: the README's `tcm mlflow-import` rebuilds them
    from the results (what a fresh clone has after `dvc pull`), and a second call adds nothing."""
    import pandas as pd
    from mlflow.tracking import MlflowClient

    work = tmp_path / "clone"
    shutil.copytree(project, work, symlinks=True, ignore=shutil.ignore_patterns("mlflow.db*", "mlartifacts"))
    command = _documented("tcm mlflow-import")
    assert f"{len(RUNS) * len(SEEDS)} seed run(s) imported" in _sh(command, work).stdout
    assert "0 seed run(s) imported" in _sh(command, work).stdout  # idempotent
    client = MlflowClient(tracking_uri=f"sqlite:///{work / 'mlflow.db'}")
    exp = client.get_experiment_by_name("tcm-default")
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"
    runs = client.search_runs([exp.experiment_id])
    parents = {r.info.run_name: r for r in runs if r.data.tags.get("tcm.role") == "configuration"}
    seeds = [r for r in runs if "tcm.seed" in r.data.tags]
    assert sorted(parents) == sorted(RUNS) and len(runs) == len(parents) + len(seeds)
    assert sorted(r.info.run_name for r in seeds) == sorted(f"{n}-s{s}" for n in RUNS for s in SEEDS)
    for name, p in parents.items():
        summary = json.loads((work / f"runs/{name}/metrics.json").read_text())
        assert p.info.status == "FINISHED" and p.data.metrics["test.opis.mean"] == pytest.approx(summary["OPIS"])
    for r in seeds:
        name, seed = r.data.tags["tcm.run"], int(r.data.tags["tcm.seed"])
        assert r.info.status == "FINISHED" and r.data.tags["mlflow.parentRunId"] == parents[name].info.run_id
        assert 0 <= r.data.metrics["test.opis"] and r.data.params["loss.name"] == "multi_similarity"
        history = pd.read_csv(work / f"runs/{name}/history.csv")
        assert [m.step for m in client.get_metric_history(r.info.run_id, "train.loss")] == list(
            history[history["seed"] == seed]["epoch"])
        files = {a.path for folder in ("results", "notebooks", None, "config")
                 for a in client.list_artifacts(r.info.run_id, folder)}
        assert {f"notebooks/train-{name}.html", "utility.png", "config/run.json",
                "results/curves.csv"} <= files, files
        assert {(i.dataset.name, t.value) for i in r.inputs.dataset_inputs for t in i.tags} == {
            ("digits", "training"), ("digits", "testing")}
        assert r.info.artifact_uri.startswith((work / "mlartifacts").as_uri())  # the clone's own folder
    _sh([sys.executable, "-c", MODEL_CHECK, f"sqlite:///{work / 'mlflow.db'}", seeds[0].info.run_id], work)


def test_executed_notebooks_stay_readable(project: Path) -> None:
    for run in RUNS:
        nb = json.loads((project / f"reports/notebooks/train-{run}.ipynb").read_text())
        for cell in nb["cells"]:
            streams = [o for o in cell.get("outputs", []) if o["output_type"] == "stream"]
            assert len(streams) <= 2, [o["text"][:80] for o in streams]  # stdout and stderr at most
        text = "".join("".join(o.get("text", "")) for c in nb["cells"] for o in c.get("outputs", []))
        # the epoch lines (other tests may have retrained with more epochs), not the bars' updates
        assert re.search(r"epoch \d+/\d+: loss", text) and "\r" not in text


def test_fresh_clone_opens_the_committed_default_without_retraining(tmp_path: Path) -> None:
    """The in-repo DVC remote holds every cached output of the committed default: after `dvc pull`
    a clone is up to date (nothing to re-run) and `dvc plots show` renders."""
    clone = tmp_path / "clone"
    _sh(["git", "clone", "-q", str(REPO), str(clone)], tmp_path)
    _sh(["dvc", "pull"], clone)
    assert "Data and pipelines are up to date" in _sh(["dvc", "status"], clone).stdout
    for run in json.loads((clone / "reports/metrics.json").read_text()):
        assert list((clone / f"runs/{run}/train").glob("seed-*/checkpoint.pt"))
        assert list((clone / f"runs/{run}/embeddings").glob("seed-*.npz"))
