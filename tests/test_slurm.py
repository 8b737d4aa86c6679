"""`tcm parallel --slurm`: each out-of-date train stage as a SLURM job, on a real one-node SLURM.

tests/slurm/start.sh starts the cluster (installing slurm-wlm and munge when missing); the tests that
need it skip, naming the reason, only where it cannot start. Without slurmdbd there is no `sacct`; job
states are read from `sacct -c` (the job-completion log) and `scontrol show job`.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import (
    REPO,
    copy_finished,
    copy_project,
    fake_stage_project,
    run_command,
    tiny_glyphs_params,
    write_params,
)

from tcm.cli import main
from tcm.cli.parallel.slurm import ddp_prefix, job_command, job_state

DEFAULT_RUNS = tuple(yaml.safe_load((REPO / "profiles/default.yaml").read_text())["runs"])


@pytest.fixture(scope="module")
def slurm() -> None:
    out = subprocess.run([str(REPO / "tests/slurm/start.sh")], capture_output=True, text=True, timeout=600)
    if out.returncode != 0:
        pytest.skip(f"no SLURM here: tests/slurm/start.sh: {(out.stderr or out.stdout).strip()[-300:]}")


def _status(project: Path) -> dict:
    return json.loads(run_command(["dvc", "status", "--json"], project).stdout or "{}")


def _lock(project: Path) -> dict:
    return yaml.safe_load((project / "dvc.lock").read_text())["stages"]


def _job_ids(text: str) -> dict[str, str]:
    """run -> SLURM job id, from the lines `submitted train@RUN as SLURM job ID`."""
    return {line.split("submitted train@")[1].split()[0]: line.split("SLURM job ")[1].split(";")[0]
            for line in text.splitlines() if "submitted train@" in line}


def _completion_states(ids: list[str]) -> dict[str, str]:
    """The job-completion log's final state of each job (`sacct -c`, no slurmdbd needed)."""
    out = subprocess.run(["sacct", "-c", "-n", "-P", "-o", "JobID,State", "-j", ",".join(ids)], capture_output=True,
                         text=True).stdout
    return dict(line.split("|")[:2] for line in out.splitlines() if "|" in line)


def _ran(stdout: str) -> list[str]:
    """The stages DVC ran, in order, from its lines `Running stage 'NAME':`."""
    return [line.split("'")[1] for line in stdout.splitlines() if line.startswith("Running stage '")]


def _notebook_text(path: Path) -> str:
    """What an executed notebook's cells printed (its stream outputs)."""
    cells = json.loads(path.read_text())["cells"]
    return "".join("".join(o.get("text", "")) for c in cells for o in c.get("outputs", ()))


def _cluster(params: dict, **keys) -> dict:
    params["cluster"] = {"cpus_per_job": 1, "time_min": 60, **keys}
    return params


# ---------------------------------------------------------------- no cluster needed


def test_one_process_jobs_run_the_stage_command_as_it_is() -> None:
    cmd = "tcm notebook notebooks/02_train.ipynb reports/notebooks/train-a.ipynb -p run a"
    assert ddp_prefix(1, 0) is None and ddp_prefix(1, 1) is None
    assert job_command(cmd, None) == cmd


def test_several_gpus_or_nodes_launch_the_stage_under_torchrun() -> None:
    cmd = "tcm notebook notebooks/02_train.ipynb reports/notebooks/train-a.ipynb -p run a"
    assert job_command(cmd, ddp_prefix(1, 4)) == (
        "torchrun --nnodes=1 --nproc-per-node=4 '--node-rank=$SLURM_NODEID' '--rdzv-id=$SLURM_JOB_ID' "
        "--rdzv-backend=c10d '--rdzv-endpoint=$MASTER_ADDR:29500' -m tcm.cli notebook notebooks/02_train.ipynb "
        "reports/notebooks/train-a.ipynb -p run a")
    two_nodes = job_command(cmd, ddp_prefix(2, 8, job_id="17", first="node1", node_rank="1"))
    assert two_nodes.startswith("torchrun --nnodes=2 --nproc-per-node=8 --node-rank=1 --rdzv-id=17 "
                                "--rdzv-backend=c10d --rdzv-endpoint=node1:29500 -m tcm.cli notebook ")
    assert job_command(cmd, ddp_prefix(2, 0)).startswith("torchrun --nnodes=2 --nproc-per-node=1 ")


@pytest.mark.parametrize(("argv", "words"), [
    (["--slurm", "--gpus-per-job", "-1"], "--gpus-per-job: Input should be greater than or equal to 0"),
    (["--slurm", "--partition", "a b"], "--partition: Value error, 'a b' is not a SLURM name"),
    (["--slurm", "--jobs", "2"], "--slurm submits one job per stage"),
])
def test_bad_cluster_settings_are_one_line(argv, words, tmp_path, monkeypatch, capsys) -> None:
    project = copy_project(tmp_path, tiny_glyphs_params())
    monkeypatch.chdir(project)
    monkeypatch.setenv("DVC_NO_ANALYTICS", "1")
    assert main(["parallel", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("tcm: error: parallel:") and words in err and len(err.strip().splitlines()) == 1, err


def test_a_bad_cluster_section_names_its_key(tmp_path, capsys) -> None:
    params = write_params(tmp_path / "params.yaml", _cluster(tiny_glyphs_params(), mem_gb=0))
    assert main(["check-params", "--params", str(params)]) == 2
    assert "cluster.mem_gb" in capsys.readouterr().err


# ---------------------------------------------------------------- fake stages on a real SLURM

# glyphs-ms fails; glyphs-ms-tcm sleeps (long enough to be interrupted); the others write their output.
FAKE_STAGE = """\
import os, sys, time
from pathlib import Path

key = sys.argv[1]
print(f"stage {key} in job {os.environ.get('SLURM_JOB_ID')} with DVC_STAGE={os.environ['DVC_STAGE']}", flush=True)
if key == "glyphs-ms":
    print("something went wrong in glyphs-ms", file=sys.stderr)
    sys.exit(3)
if key == "glyphs-ms-tcm" and os.environ.get("FAKE_SLEEP"):
    time.sleep(600)
Path("out").mkdir(exist_ok=True)
Path(f"out/{key}.txt").write_text(key + "\\n")
"""
FAKE_RUNS = ("glyphs-ms", "glyphs-ms-tcm")


def _fake_project(dest: Path) -> Path:
    return fake_stage_project(dest, _cluster(tiny_glyphs_params(FAKE_RUNS)), FAKE_STAGE,
                              dict.fromkeys((".gitignore", ".dvcignore"), "/runs/*/slurm/\n"))


@pytest.mark.slow
def test_a_failed_job_is_one_line_with_run_job_and_log_and_is_not_committed(slurm, tmp_path) -> None:
    project = _fake_project(tmp_path / "fake")
    out = run_command(["tcm", "parallel", "--slurm", "--train-only"], project, check=False)
    text = out.stdout + out.stderr
    assert out.returncode == 2, text
    ids = _job_ids(out.stdout)
    assert set(ids) == set(FAKE_RUNS), text
    bad = ids["glyphs-ms"]
    line = f"tcm: error: run glyphs-ms: SLURM job {bad} FAILED after "
    errors = [x for x in out.stderr.splitlines() if x.startswith("tcm: error:")]
    assert len(errors) == 1 and errors[0].startswith(line), text
    assert errors[0].endswith(f"; log: runs/glyphs-ms/slurm/{bad}_0_log.err"), text
    assert "something went wrong in glyphs-ms" in (project / f"runs/glyphs-ms/slurm/{bad}_0_log.err").read_text()
    ok = ids["glyphs-ms-tcm"]
    assert "DVC_STAGE=train@glyphs-ms-tcm" in (project / f"runs/glyphs-ms-tcm/slurm/{ok}_0_log.out").read_text()
    assert set(_lock(project)) == {"train@glyphs-ms-tcm"} and set(_status(project)) == {"train@glyphs-ms"}
    assert "runs" not in run_command(["git", "status", "--porcelain"], project).stdout  # logs ignored by git
    assert _completion_states([bad, ok]) == {bad: "FAILED", ok: "COMPLETED"}


@pytest.mark.slow
def test_ctrl_c_cancels_the_submitted_jobs_and_says_so(slurm, tmp_path) -> None:
    project = _fake_project(tmp_path / "fake")
    env = {**os.environ, "FAKE_SLEEP": "1", "DVC_NO_ANALYTICS": "1",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    proc = subprocess.Popen(["tcm", "parallel", "--slurm"], cwd=project, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    log, deadline = "", time.monotonic() + 120
    while time.monotonic() < deadline:
        folder = project / "runs/glyphs-ms-tcm/slurm"
        outs = list(folder.glob("*_0_log.out")) if folder.is_dir() else []
        if outs and "in job" in outs[0].read_text():
            log = outs[0].name
            break
        time.sleep(0.5)
    assert log, "the sleeping stage never started"
    job = log.split("_")[0]
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stdout + stderr
    line = stderr.split("tcm: interrupted; scancel ")[1].split(":")[0]
    assert job in line.split() and "jobs this command submitted are cancelled" in stderr, stderr
    for _ in range(60):
        if job_state(job) == "CANCELLED":
            break
        time.sleep(1)
    assert job_state(job) == "CANCELLED"
    assert "train@glyphs-ms-tcm" in _status(project)


# ---------------------------------------------------------------- the default profile on a real SLURM


def _default_params(epochs: int = 1) -> dict:
    """The default profile (its 4 runs) reduced to 1 seed and ``epochs``, tiny data (seconds per stage)."""
    return _cluster(tiny_glyphs_params(DEFAULT_RUNS, epochs=epochs, mlflow=True, seeds=(0,)))


@pytest.fixture(scope="module")
def on_slurm(slurm, tmp_path_factory) -> tuple[Path, str]:
    dest = copy_project(tmp_path_factory.mktemp("slurm"), _default_params())
    out = run_command(["tcm", "parallel", "--slurm"], dest, check=False)
    text = out.stdout + out.stderr
    assert out.returncode == 0, text
    return dest, text


@pytest.mark.e2e
@pytest.mark.slow
def test_default_profile_on_slurm_equals_a_sequential_repro(on_slurm, tmp_path) -> None:
    project, text = on_slurm
    ids = _job_ids(text)
    assert set(ids) == set(DEFAULT_RUNS), text
    assert _completion_states(list(ids.values())) == {i: "COMPLETED" for i in ids.values()}, text
    assert _status(project) == {}
    assert all(f"train@{run}" in _lock(project) for run in DEFAULT_RUNS)
    for run, job in ids.items():
        env = json.loads((project / f"runs/{run}/run.json").read_text())["environment"]
        assert env["slurm_job_id"] == job and env["slurm_node"], env
        run_command(["git", "check-ignore", "-q", f"runs/{run}/slurm/{job}_0_log.out"], project)
        run_command(["dvc", "check-ignore", "-q", f"runs/{run}/slurm/{job}_0_log.out"], project)
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{project / 'mlflow.db'}")
    seeds = [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])
             if "tcm.seed" in r.data.tags]
    assert sorted((r.data.tags["tcm.run"], r.data.tags["env.slurm_job_id"]) for r in seeds) == sorted(ids.items())
    assert all(r.info.status == "FINISHED" for r in seeds)
    # The sequential oracle: a copy of this project where `dvc repro` trains and evaluates again, one
    # stage after the other on this machine, a run without TCM and one with it (from the same data and
    # pretrained backbone, which `tcm parallel` made here too, not on SLURM).
    compared = ("glyphs-ms", "glyphs-pa-tcm")
    sequential = copy_finished(project, tmp_path / "sequential")
    for run in compared:
        (sequential / f"runs/{run}/metrics.json").unlink()  # the one compared is written by this repro
    stages = [f"{stage}@{run}" for run in compared for stage in ("train", "evaluate")]
    out = run_command(["dvc", "repro", "--force", "--single-item", *stages], sequential)
    assert _ran(out.stdout) == stages, out.stdout
    for run in compared:
        trained = _notebook_text(sequential / f"reports/notebooks/train-{run}.ipynb")
        assert f"holds a finished run; training {run} from scratch" in trained, trained
        assert f"{run} seed 0 epoch 1/1: loss" in trained, trained
        metrics = f"runs/{run}/metrics.json"
        assert (project / metrics).read_bytes() == (sequential / metrics).read_bytes(), run


@pytest.mark.e2e
@pytest.mark.slow
def test_a_job_cancelled_mid_training_is_resumed_by_the_next_call(on_slurm, tmp_path) -> None:
    """scancel after the first of 3 epochs: nothing committed; the next call resumes after that epoch
    and ends with the history of an uninterrupted run."""
    run = DEFAULT_RUNS[0]
    params = _default_params(epochs=3)
    params["runs"] = {run: params["runs"][run]}
    params["run_defaults"]["train"]["samples_per_epoch"] = 4096  # seconds per epoch

    def changed_copy(dest: Path) -> Path:
        """The finished default project with ``params`` and without the run's folder, as in a project
        that never trained it: a finished train/ would be moved aside and put back when the job is
        cancelled before its first trained epoch (tcm.train.resume._Aside), and then trained again
        from scratch, not resumed. Data and pretrained backbone (their params unchanged) stay."""
        copy_finished(on_slurm[0], dest)
        write_params(dest / "params.yaml", params)
        shutil.rmtree(dest / f"runs/{run}")
        return dest

    project = changed_copy(tmp_path / "cancelled")
    assert set(_status(project)) == {"validate", f"train@{run}", f"evaluate@{run}", "report"}
    finished = _lock(project)[f"train@{run}"]  # the 1-epoch run's entry
    env = {**os.environ, "DVC_NO_ANALYTICS": "1", "PYTHONPATH": str(project / "src"),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    proc = subprocess.Popen(["tcm", "parallel", "--slurm", "--train-only"], cwd=project, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    folder, job, deadline = project / f"runs/{run}/slurm", "", time.monotonic() + 400
    while time.monotonic() < deadline and proc.poll() is None:
        for log in folder.glob("*_0_log.*") if folder.is_dir() else []:
            if "epoch 1/3" in log.read_text(errors="replace"):
                job = log.name.split("_")[0]
        if job:
            break
        time.sleep(0.2)
    assert job, "the job's log never showed epoch 1/3"
    subprocess.run(["scancel", job], check=True)
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 2, stdout + stderr
    assert _ran(stdout) == ["validate"], stdout  # data and pretrain were up to date
    assert f"tcm: error: run {run}: SLURM job {job} CANCELLED" in stderr, stderr
    assert f"train@{run}" in _status(project) and _lock(project)[f"train@{run}"] == finished  # not committed
    again = run_command(["tcm", "parallel", "--slurm", "--train-only"], project, check=False)
    assert again.returncode == 0, again.stdout + again.stderr
    assert _ran(again.stdout) == [], again.stdout
    second = _job_ids(again.stdout)[run]
    log = (project / f"runs/{run}/slurm/{second}_0_log.out").read_text(errors="replace") + \
        (project / f"runs/{run}/slurm/{second}_0_log.err").read_text(errors="replace")
    assert f"resuming run {run} seed 0 after epoch" in log, log[-3000:]
    assert f"train@{run}" not in _status(project)
    uninterrupted = changed_copy(tmp_path / "uninterrupted")
    out = run_command(["dvc", "repro", f"train@{run}"], uninterrupted)
    assert _ran(out.stdout) == ["validate", f"train@{run}"], out.stdout
    import pandas as pd

    columns = ["seed", "epoch", "loss", "base_loss", "tcm_loss", "lr"]  # not the timings
    ours, theirs = (pd.read_csv(p / f"runs/{run}/history.csv")[columns] for p in (project, uninterrupted))
    assert len(ours) == 3 and ours.equals(theirs), (ours, theirs)
