"""`tcm parallel`: train stages side by side, committed one at a time, the rest by `dvc repro`.

The real pipeline (2 runs x 2 seeds, as the end-to-end tests) with 2 CPU workers must leave what a
sequential `dvc repro` leaves: the same metrics and embeddings, a valid dvc.lock, one MLflow run per
run and seed. Small projects of fake stages check that a stage is not committed when a dependency
changed while it ran, and that a failed stage does not stop the others.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
import yaml
from conftest import E2E_RUNS as RUNS
from conftest import E2E_SEEDS as SEEDS
from conftest import copy_project, fake_stage_project, run_command, tiny_params, write_params

from tcm.cli import main
from tcm.cli.parallel import check_dvc_internals

STAGES = {"validate", "data@digits", "pretrain@digits", *(f"{s}@{r}" for s in ("train", "evaluate") for r in RUNS),
          "report"}


def _params() -> dict:
    return tiny_params(RUNS, mlflow=True, seeds=SEEDS)


def _status(project: Path) -> dict:
    return json.loads(run_command(["dvc", "status", "--json"], project).stdout or "{}")


def _lock(project: Path) -> dict:
    return yaml.safe_load((project / "dvc.lock").read_text())["stages"]


@pytest.fixture(scope="module")
def parallel(tmp_path_factory) -> tuple[Path, str]:
    """A fresh copy of the test pipeline made with `tcm parallel --jobs 2` (and its output)."""
    dest = copy_project(tmp_path_factory.mktemp("parallel"), _params())
    out = run_command(["tcm", "parallel", "--jobs", "2"], dest)
    return dest, out.stdout + out.stderr


@pytest.fixture(scope="module")
def sequential(project: Path, tmp_path_factory) -> Path:
    """The same pipeline made by a sequential `dvc repro`: the end-to-end tests' project while its
    params, code and notebooks are those it was made with and DVC finds it up to date (as in a whole run
    of the suite, where this module comes before the tests that edit it), else a new copy. Only those
    paths are compared: `dvc repro` itself edits tracked files elsewhere (pretrained/.gitignore, and
    .tcm/datasets/, which validate rewrites), so a whole-tree check never found it untouched."""
    untouched = (yaml.safe_load((project / "params.yaml").read_text()) == _params()
                 and not run_command(["git", "status", "--porcelain", "--untracked-files=no", "--", "src",
                                      "notebooks", "dvc.yaml"], project).stdout.strip()
                 and not _status(project))
    if untouched:
        return project
    dest = copy_project(tmp_path_factory.mktemp("sequential"), _params())
    run_command(["dvc", "repro"], dest)
    return dest



def test_the_dvc_internals_it_uses_are_there_and_a_missing_one_is_named(monkeypatch, capsys) -> None:
    """tcm parallel uses DVC internals (parallel.DVC_INTERNALS): a DVC release that drops or changes one
    fails here, and `tcm parallel` itself stops in one line naming it before any work."""
    check_dvc_internals()  # the installed DVC has every one
    from dvc.stage import Stage

    def remove_outs(self, ignore_remove=False):  # a DVC whose remove_outs lost its `force` keyword
        return None

    monkeypatch.setattr(Stage, "remove_outs", remove_outs)
    monkeypatch.delattr("dvc.repo.lock_repo")
    assert main(["parallel", "--jobs", "1"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "tested with DVC 3.67.1" in err
    assert "dvc.stage.Stage.remove_outs(force=)" in err and "dvc.repo.lock_repo" in err

@pytest.mark.e2e
def test_parallel_trains_each_stage_once_and_repro_finds_them_up_to_date(parallel) -> None:
    project, log = parallel
    for run in RUNS:
        assert f"started  train@{run} on a worker; log: runs/{run}/train.log" in log, log
        assert f"finished train@{run} in " in log and "committed to dvc.lock" in log
        assert f"Stage 'train@{run}' didn't change, skipping" in log  # the final `dvc repro`
        assert f"Running stage 'train@{run}'" not in log
        assert f"Running stage 'evaluate@{run}'" in log
        train_log = (project / f"runs/{run}/train.log").read_text()
        assert f"{run} seed {SEEDS[-1]} epoch 2/2: loss" in train_log
    assert "Running stage 'data@digits'" in log and "Running stage 'report'" in log
    assert _status(project) == {}
    assert set(_lock(project)) == STAGES
    # The logs are neither in git nor in the report stage's `runs` dependency.
    run_command(["git", "check-ignore", "-q", f"runs/{RUNS[0]}/train.log"], project)
    run_command(["dvc", "check-ignore", "-q", f"runs/{RUNS[0]}/train.log"], project)


@pytest.mark.e2e
def test_parallel_runs_log_one_finished_mlflow_run_per_run_and_seed(parallel) -> None:
    from mlflow.tracking import MlflowClient

    project, _ = parallel
    client = MlflowClient(tracking_uri=f"sqlite:///{project / 'mlflow.db'}")
    found = [(e.name, r) for e in client.search_experiments() for r in client.search_runs([e.experiment_id])]
    assert {name for name, _ in found} == {"tcm-default"}
    runs = [r for _, r in found if "tcm.seed" in r.data.tags]  # the seed runs, not their parent runs
    assert sorted((r.data.tags["tcm.run"], r.data.tags["tcm.seed"]) for r in runs) == \
        sorted((run, str(seed)) for run in RUNS for seed in SEEDS)
    assert all(r.info.status == "FINISHED" and r.data.tags["dvc.exp_name"] == "workspace" for r in runs)
    assert all(len(client.get_metric_history(r.info.run_id, "train.loss")) == 2 for r in runs)
    assert not (project / "mlruns").exists()


@pytest.mark.e2e
def test_parallel_results_equal_those_of_a_sequential_repro(parallel, sequential: Path) -> None:
    """Training is bit-identical on one machine: the same metrics and even the same embeddings."""
    project, _ = parallel
    for run in RUNS:
        metrics = f"runs/{run}/metrics.json"
        assert (project / metrics).read_text() == (sequential / metrics).read_text()
    ours, theirs = _lock(project), _lock(sequential)
    for run in RUNS:
        stage = f"evaluate@{run}"
        outs = {o["path"]: o["md5"] for o in ours[stage]["outs"] if "notebooks" not in o["path"]}
        assert outs == {o["path"]: o["md5"] for o in theirs[stage]["outs"] if "notebooks" not in o["path"]}
        # Committed from the same dependencies and params as `dvc repro` records them.
        assert ours[f"train@{run}"]["deps"] == theirs[f"train@{run}"]["deps"]
        assert ours[f"train@{run}"]["params"] == theirs[f"train@{run}"]["params"]


# ---------------------------------------------------------------- fake stages: refusal and failure

# Per run: digits-ms edits its own params while it runs, digits-ms-tcm its dependency file,
# digits-pa fails, digits-pa-tcm behaves.
FAKE_STAGE = """\
import os, sys
from pathlib import Path
import yaml

key = sys.argv[1]
if key == "digits-ms":
    params = yaml.safe_load(Path("params.yaml").read_text())
    params["runs"][key]["train"] = {"epochs": 3}
    Path("params.tmp").write_text(yaml.safe_dump(params, sort_keys=False))
    os.replace("params.tmp", "params.yaml")  # whole, so that no reader sees half a file
elif key == "digits-ms-tcm":
    with open(f"deps/{key}.txt", "a") as f:
        f.write("changed while the stage ran\\n")
elif key == "digits-pa":
    print("something went wrong in digits-pa", file=sys.stderr)
    sys.exit(3)
Path("out").mkdir(exist_ok=True)
Path(f"out/{key}.txt").write_text(key + " " + os.environ.get("CUDA_VISIBLE_DEVICES", "-") + "\\n")
"""
FAKE_RUNS = ("digits-ms", "digits-ms-tcm", "digits-pa", "digits-pa-tcm")


def _fake_project(dest: Path) -> Path:
    files = {f"deps/{run}.txt": f"{run}\n" for run in FAKE_RUNS}
    files.update(dict.fromkeys((".gitignore", ".dvcignore"), "/runs/*/train.log\n"))
    return fake_stage_project(dest, tiny_params(FAKE_RUNS), FAKE_STAGE, files, extra_deps=("deps/${key}.txt",))


@pytest.mark.slow
def test_changed_dependency_or_failure_leaves_the_stage_out_of_date_and_others_committed(tmp_path) -> None:
    project = _fake_project(tmp_path / "fake")
    out = run_command(["tcm", "parallel", "--gpus", "7", "9"], project, check=False)
    text = out.stdout + out.stderr
    assert out.returncode == 1, text
    assert ("tcm: error: train@digits-ms is not committed: its dependency params.yaml:runs.digits-ms changed "
            "while it ran; it stays out of date") in out.stderr, text
    assert ("tcm: error: train@digits-ms-tcm is not committed: its dependency deps/digits-ms-tcm.txt changed "
            "while it ran") in out.stderr, text
    assert "FAILED   train@digits-pa (exit 3)" in out.stderr and "log: runs/digits-pa/train.log" in out.stderr
    assert "something went wrong in digits-pa" in out.stderr  # the log's last line
    assert "something went wrong in digits-pa" in (project / "runs/digits-pa/train.log").read_text()
    assert "finished train@digits-pa-tcm" in out.stdout
    assert "3 of 4 train stages not committed" in out.stderr and "dvc repro (the rest" not in out.stdout
    # Only the stage whose dependencies held still is in dvc.lock; the others stay out of date.
    assert set(_lock(project)) == {"train@digits-pa-tcm"}
    assert set(_status(project)) == {"train@digits-ms", "train@digits-ms-tcm", "train@digits-pa"}
    # One worker per GPU, pinned (the two workers took the four stages in turn).
    assert (project / "out/digits-pa-tcm.txt").read_text().split()[1] in {"7", "9"}
    # Again: only what is out of date runs. digits-ms now rewrites the params it already has (same
    # values: committed); digits-ms-tcm changes its file again, and digits-pa fails again.
    again = run_command(["tcm", "parallel", "--jobs", "2"], project, check=False)
    assert again.returncode == 1 and "3 of 4 train stages to run" in again.stdout, again.stdout + again.stderr
    assert set(_status(project)) == {"train@digits-ms-tcm", "train@digits-pa"}


@pytest.mark.slow
def test_dependency_changed_before_the_commit_puts_dvc_lock_back(tmp_path, monkeypatch) -> None:
    """The window between the last check and `dvc commit`: the dvc.lock entry written is checked too."""
    from tcm.cli.parallel import Dvc, Pool

    project = _fake_project(tmp_path / "fake")
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    run_command(["dvc", "repro", "train@digits-pa-tcm"], project)
    before = (project / "dvc.lock").read_bytes()
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["runs"]["digits-pa-tcm"]["train"] = {"epochs": 5}
    write_params(project / "params.yaml", params)
    dvc = Dvc(project)
    pool = Pool(dvc, [None], 1)
    job = pool._prepare("train@digits-pa-tcm")
    assert pool._execute(job, None) == 0
    real = dvc.cli

    def edit_then(*args, **kwargs):
        if args[0] == "commit":
            params["runs"]["digits-pa-tcm"]["train"] = {"epochs": 6}
            write_params(project / "params.yaml", params)
        return real(*args, **kwargs)

    monkeypatch.setattr(dvc, "cli", edit_then)
    reason = pool._commit(job)
    assert reason == ("its dependency params.yaml:runs.digits-pa-tcm changed before it was committed; "
                      "dvc.lock is as it was")
    assert (project / "dvc.lock").read_bytes() == before
    assert "train@digits-pa-tcm" in _status(project)  # out of date, as before the commit


@pytest.mark.parametrize(("argv", "words"), [
    (["--gpus", "0", "--jobs", "2"], "either --gpus"),
    (["--gpus", "0", "0,1"], "lists a GPU twice"),
])
def test_bad_worker_lists_are_one_line(argv, words, capsys) -> None:
    assert main(["parallel", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("tcm: error: parallel:") and words in err and len(err.strip().splitlines()) == 1


def test_outside_a_dvc_project_is_one_line(tmp_path, capsys, monkeypatch) -> None:
    write_params(tmp_path / "params.yaml", tiny_params())
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DVC_NO_ANALYTICS", "1")
    assert main(["parallel", "--jobs", "1"]) == 2
    err = capsys.readouterr().err
    assert "is not in a DVC project" in err and len(err.strip().splitlines()) == 1
