"""The real pipeline end to end: DVC runs papermill notebooks, which log to a SQLite MLflow store.

Runs on a reduced default (2 runs x 2 epochs) in a temporary copy of the repository.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd
import pytest
from conftest import E2E_RUNS as RUNS
from conftest import E2E_SEEDS as SEEDS
from conftest import copy_finished, write_params
from conftest import run_command as _sh
from conftest import tree_digest as _tree_digest

from tcm.stats import HEADLINE

pytestmark = pytest.mark.e2e


def _mlflow_runs(project: Path) -> list:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{project / 'mlflow.db'}")
    exp = client.get_experiment_by_name("tcm-default")
    return client, client.search_runs([exp.experiment_id]) if exp else []


def _store_state(project: Path) -> list[tuple]:
    """What a stage would change in the MLflow store: its runs, their status, tags, params and metrics."""
    _, runs = _mlflow_runs(project)
    return sorted((r.info.run_id, r.info.status, r.info.end_time, sorted(r.data.tags.items()),
                   sorted(r.data.params.items()), sorted(r.data.metrics.items())) for r in runs)


def test_cold_repro_writes_every_result(project: Path) -> None:
    log = (project / "first_repro.log").read_text()
    for stage in ("validate", "data@digits", *(f"{s}@{r}" for s in ("train", "evaluate") for r in RUNS), "report"):
        assert f"Running stage '{stage}'" in log
    for run in RUNS:
        d = project / "runs" / run
        history = pd.read_csv(d / "history.csv")
        assert list(zip(history.seed, history.epoch)) == [(s, e) for s in SEEDS for e in (1, 2)]
        summary = json.loads((d / "metrics.json").read_text())
        assert set(summary) - {"sd"} == set(summary["sd"]) >= {"R@1", "OPIS"}
        for seed in SEEDS:
            m = json.loads((d / f"eval/seed-{seed}/metrics.json").read_text())
            assert {"recall_at_k", "map_at_r", "opis", "eps_opis"} <= set(m)
            assert json.loads((d / f"eval/seed-{seed}/settings.json").read_text())["seed"] == seed
            assert (d / f"train/seed-{seed}/checkpoint.pt").is_file() and (d / f"embeddings/seed-{seed}.npz").is_file()
        assert (project / f"reports/notebooks/train-{run}.ipynb").is_file()
    table = pd.read_csv(project / "reports/tables/tcm_comparison.csv")
    assert list(table["run (with TCM)"]) == ["digits-ms-tcm"] and "OPIS change %" in table
    assert (project / "reports/tables/tcm_comparison.md").read_text().startswith("|")
    figures = {p.name for p in (project / "reports/figures").glob("*.png")}
    assert {"opis_vs_recall.png", "training_curves.png", "utility_digits_small_cnn_multi_similarity.png"} <= figures
    readme = (project / "reports/README.md").read_text()
    assert "far_range" not in readme and "[0.01, 0.1]" in readme  # settings are stated in words
    for f in figures:
        assert f"figures/{f}" in readme
    executed = json.loads((project / "reports/notebooks/report.ipynb").read_text())
    assert executed["metadata"]["papermill"]["exception"] is None
    train_nb = json.loads((project / "reports/notebooks/train-digits-ms.ipynb").read_text())
    assert train_nb["cells"][1]["source"][0].startswith("params_path")  # the parameters cell ...
    assert any("injected-parameters" in c["metadata"].get("tags", []) for c in train_nb["cells"])  # ... overridden
    assert any("image/png" in o.get("data", {}) for c in train_nb["cells"] for o in c.get("outputs", []))


def test_mlflow_has_one_run_per_configuration_and_seed_with_everything(project: Path) -> None:
    client, runs = _mlflow_runs(project)
    parents = {r.info.run_name: r for r in runs if r.data.tags.get("tcm.role") == "configuration"}
    runs = [r for r in runs if r.info.run_name not in parents]
    assert sorted(r.info.run_name for r in runs) == sorted(f"{run}-s{s}" for run in RUNS for s in SEEDS)
    # One parent run per configuration, with the mean and sd over its seeds; the seeds nested beneath it.
    assert sorted(parents) == sorted(RUNS)
    for name, p in parents.items():
        summary = json.loads((project / f"runs/{name}/metrics.json").read_text())
        assert p.info.status == "FINISHED"
        assert p.data.metrics["test.opis.mean"] == pytest.approx(summary["OPIS"])
        assert p.data.metrics["test.opis.sd"] == pytest.approx(summary["sd"]["OPIS"])
        assert "utility.png" in {a.path for a in client.list_artifacts(p.info.run_id)}
    for r in runs:
        assert r.data.tags["mlflow.parentRunId"] == parents[r.data.tags["tcm.run"]].info.run_id
        contexts = {(i.dataset.name, t.value) for i in r.inputs.dataset_inputs for t in i.tags}
        assert contexts == {("digits", "training"), ("digits", "testing")}
        run = r.data.tags["tcm.run"]
        assert r.info.status == "FINISHED" and r.info.run_name == f"{run}-s{r.data.tags['tcm.seed']}"
        assert r.data.params["loss.name"] == "multi_similarity"
        assert r.data.params["tcm.enabled"] == str(run.endswith("-tcm"))
        assert [m.step for m in client.get_metric_history(r.info.run_id, "train.loss")] == [1, 2]
        assert 0 <= r.data.metrics["test.opis"] and 0 <= r.data.metrics["test.recall_at_k.1"] <= 1
        assert r.data.tags["git_commit"] != "unknown" and r.data.tags["stage"] == "report"
        assert r.data.tags["env.device"] == "cpu" and r.data.tags["env.torch"]  # the machine is recorded
        artifacts = {a.path for d in ("notebooks", "figures", "config")
                     for a in client.list_artifacts(r.info.run_id, d)}
        assert f"notebooks/train-{run}.html" in artifacts and "config/run.json" in artifacts
    assert not (project / "mlruns").exists()


def test_second_repro_runs_nothing(project: Path) -> None:
    out = _sh(["dvc", "repro"], project).stdout
    assert "Running stage" not in out, out


def test_plots_render_offline_and_notebooks_read_well(project: Path, tmp_path: Path) -> None:
    """`dvc plots show` uses the vendored template (no script from a CDN) and finds the report's data
    plots; the executed report notebook has headed sections; training progress is plain output. (Before
    test_changing_one_run_reruns_only_that_run, whose new epochs leave the two runs no longer a pair.)"""
    for name in ("utility.csv", "class_rates.csv", "training_curves.csv"):
        assert len(pd.read_csv(project / "reports/plots" / name)) > 0, name
    _sh(["dvc", "plots", "show", "-o", str(tmp_path / "plots")], project)
    html = (tmp_path / "plots/index.html").read_text()
    assert "vegaEmbed" in html and not re.search(r"<script[^>]+src=.https?://", html)
    report_nb = json.loads((project / "reports/notebooks/report.ipynb").read_text())
    headings = ["".join(c["source"]) for c in report_nb["cells"] if c["cell_type"] == "markdown"]
    headings += ["".join(o["data"]["text/markdown"]) for c in report_nb["cells"] for o in c.get("outputs", [])
                 if "text/markdown" in o.get("data", {})]
    assert any(h.startswith("## One global threshold") for h in headings)
    train_nb = json.loads((project / f"reports/notebooks/train-{RUNS[0]}.ipynb").read_text())
    assert not [o for c in train_nb["cells"] for o in c.get("outputs", []) if o.get("name") == "stderr"]


def test_changing_one_run_reruns_only_that_run(project: Path) -> None:
    out = _sh(["dvc", "exp", "run", "-S", "+runs.digits-ms-tcm.train.epochs=3"], project).stdout
    ran = {line.split("'")[1] for line in out.splitlines() if line.startswith("Running stage")}
    assert ran == {"validate", "train@digits-ms-tcm", "evaluate@digits-ms-tcm", "report"}, out
    assert len(pd.read_csv(project / "runs/digits-ms-tcm/history.csv")) == 3 * len(SEEDS)
    metrics = _sh(["dvc", "metrics", "show", "--json"], project).stdout
    assert "digits-ms-tcm" in metrics
    # `dvc metrics diff` lists metrics only: each run's means and sds, no settings.
    diff = json.loads(_sh(["dvc", "metrics", "diff", "--json"], project).stdout)
    assert "runs/digits-ms-tcm/metrics.json" in diff and set(diff) <= {f"runs/{r}/metrics.json" for r in RUNS}, diff
    assert all(set(d) <= {*HEADLINE, *(f"sd.{m}" for m in HEADLINE)} for d in diff.values()), diff


@pytest.mark.parametrize(
    ("edit", "key"),
    [
        ("runs:\n  digits-ms:\n    dataset: digits\n    loss: {name: multi_similarity}\n    trian: {epochs: 1}\n",
         "runs.digits-ms.trian"),
        ("evaluation:\n  opis:\n    eps: -0.1\n", "evaluation.opis.eps"),
    ],
)
def test_bad_params_fail_fast_and_change_nothing(project: Path, edit: str, key: str) -> None:
    import yaml

    good = (project / "params.yaml").read_text()
    bad = yaml.safe_load(good)
    for section, value in yaml.safe_load(edit).items():
        bad[section] = {**bad[section], **value} if section == "runs" else {**bad[section], "opis": value["opis"]}
    before_reports, store_before = _tree_digest(project / "reports"), _store_state(project)
    try:
        write_params(project / "params.yaml", bad)
        out = _sh(["dvc", "repro"], project, check=False)
        assert out.returncode != 0
        assert key in out.stdout + out.stderr
        assert "Running stage 'validate'" in out.stdout and "Running stage 'data" not in out.stdout
    finally:
        (project / "params.yaml").write_text(good)
    assert _tree_digest(project / "reports") == before_reports
    assert _store_state(project) == store_before


def test_explore_notebook_runs_on_a_run_given_by_its_mlflow_id(project: Path) -> None:
    client, runs = _mlflow_runs(project)
    run_id = next(r.info.run_id for r in runs if r.info.run_name == "digits-ms-s1")
    out = project / "explore.ipynb"
    _sh(["papermill", "notebooks/explore_run.ipynb", str(out), "-k", "python3", "-p", "run", run_id], project)
    nb = json.loads(out.read_text())
    outputs = [o for c in nb["cells"] if c["cell_type"] == "code" for o in c.get("outputs", [])]
    assert sum("image/png" in o.get("data", {}) for o in outputs) >= 2  # neighbour grid + utility curves
    text = json.dumps(outputs)
    assert "share_of_opis" in text and "target FAR" in text
    assert "'run': 'digits-ms'" in text and "'seed': 1," in text  # the seed that MLflow run trained


def test_code_change_retrains_and_reevaluates(project: Path, tmp_path: Path) -> None:
    """The promise of `dvc repro`: after a bug fix in the TCM loss, the runs are trained again (not
    resumed from their finished checkpoints) and the TCM runs' metrics move; then --force retrains.
    In a copy, so that no third `dvc repro` has to put the code and results back for later tests."""
    work = copy_finished(project, tmp_path / "project")
    loss = work / "src/tcm/losses/tcm.py"
    original = loss.read_text()
    before = {r: (work / f"runs/{r}/metrics.json").read_text() for r in RUNS}
    loss.write_text(original.replace("(self.pos_weight * pos_term", "(10 * self.pos_weight * pos_term"))
    assert loss.read_text() != original
    out = _sh(["dvc", "repro"], work).stdout
    ran = {line.split("'")[1] for line in out.splitlines() if line.startswith("Running stage")}
    # Every train stage depends on src/tcm/losses (DVC tracks files, not the classes a run uses).
    assert {"train@digits-ms", "train@digits-ms-tcm", "evaluate@digits-ms", "evaluate@digits-ms-tcm",
            "report"} <= ran <= {"validate", "train@digits-ms", "train@digits-ms-tcm", "evaluate@digits-ms",
                                 "evaluate@digits-ms-tcm", "report"}, out
    # Retrained, bit-identical on this machine where the code did not change what it computes ...
    assert (work / "runs/digits-ms/metrics.json").read_text() == before["digits-ms"]
    # ... and changed where it did: the TCM run was not resumed from its finished checkpoint.
    assert (work / "runs/digits-ms-tcm/metrics.json").read_text() != before["digits-ms-tcm"]
    executed = (work / "reports/notebooks/train-digits-ms-tcm.ipynb").read_text()
    assert "holds a finished run; training digits-ms-tcm from scratch" in executed
    out = _sh(["dvc", "repro", "--force", "--single-item", "train@digits-ms"], work).stdout
    assert "Running stage 'train@digits-ms'" in out
    assert "holds a finished run" in (work / "reports/notebooks/train-digits-ms.ipynb").read_text()
