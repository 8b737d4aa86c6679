"""`tcm parallel --slurm`: each out-of-date train stage as a SLURM job, submitted with submitit (docs/gpus.md).

The job runs the stage's commands exactly as the local worker does (:func:`tcm.cli.parallel.local.shell_argv`,
in the stage's folder, with ``DVC_ROOT`` and ``DVC_STAGE``); its stdout and stderr go to
``runs/<run>/slurm/<jobid>_0_log.{out,err}`` (submitit's files, ignored by git and DVC). The submitting
process waits for every job and commits each that COMPLETED with the engine's checks
(:class:`tcm.cli.parallel.local.Pool`); nothing else writes dvc.lock.

- Time limit or pre-emption: SLURM signals the job (``--signal USR2@90``, submitit's default), submitit
  requeues it (:class:`StageJob` is checkpointable) and the training, stopped by SLURM's SIGTERM after its
  last saved epoch, resumes from ``runs/<run>/train`` (``persist: true``) when the job starts again.
- A job that fails or is cancelled (``scancel``) is not committed; the stage stays out of date and the
  next ``tcm parallel --slurm`` submits it again, which resumes the training from its last checkpoint.
- Ctrl-C cancels (``scancel``) every job this process submitted that has not ended.

Job states come from ``sacct`` where the cluster keeps accounting, else from ``scontrol show job`` (a
cluster without slurmdbd keeps a finished job there for ``MinJobAge`` seconds), else from ``sacct -c``
(the job-completion log).
"""

from __future__ import annotations

import os
import shlex
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

from tcm.cli.parallel.engine import Job, ParallelError
from tcm.cli.parallel.local import Pool, shell_argv

POLL_S = 5.0  # how often the submitting process asks SLURM for the state of its jobs
ENDED = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE",
         "PREEMPTED", "REVOKED", "SPECIAL_EXIT"}  # PREEMPTED/TIMEOUT are requeued (REQUEUED, PENDING) first
PORT = 29500  # torchrun's rendezvous port on the job's first node


def ddp_prefix(nodes: int, gpus: int, job_id: str = "$SLURM_JOB_ID", first: str = "$MASTER_ADDR",
               node_rank: str = "$SLURM_NODEID") -> list[str] | None:
    """What replaces ``tcm`` in a stage's command for one run across ``nodes`` x ``gpus`` processes:
    ``torchrun`` with torch's c10d rendezvous on the job's first node (one torchrun per node, started
    by srun through submitit's one task per node); None for a job of one process."""
    if nodes == 1 and gpus <= 1:
        return None
    return ["torchrun", f"--nnodes={nodes}", f"--nproc-per-node={max(gpus, 1)}", f"--node-rank={node_rank}",
            f"--rdzv-id={job_id}", "--rdzv-backend=c10d", f"--rdzv-endpoint={first}:{PORT}", "-m", "tcm.cli"]


def job_command(cmd: str, prefix: list[str] | None) -> str:
    """The stage's command as the job runs it: itself, or under torchrun (``tcm ARGS`` ->
    ``torchrun ... -m tcm.cli ARGS``: every process runs the stage, rank 0 alone writes its outputs)."""
    if prefix is None:
        return cmd
    words = shlex.split(cmd)
    if not words or words[0] != "tcm":
        raise ParallelError(f"parallel: a job of several processes runs `tcm ...` commands under torchrun; "
                            f"this stage's command is {cmd!r}")
    return shlex.join([*prefix, *words[1:]])


class StageJob:
    """What a SLURM job calls: the stage's commands, one after the other; an exception (the job then
    ends FAILED) names the command that failed. Checkpointable: requeued at the time limit or when
    pre-empted, it runs the stage again, which resumes the training."""

    def __init__(self, commands: list[str], wdir: str, env: dict[str, str], nodes: int, gpus: int) -> None:
        self.commands, self.wdir, self.env, self.nodes, self.gpus = commands, wdir, env, nodes, gpus

    def __call__(self) -> int:
        env = {**os.environ, **self.env}
        prefix = ddp_prefix(self.nodes, self.gpus)
        if prefix is not None:  # the rendezvous is on the job's first node
            import submitit

            env["MASTER_ADDR"] = submitit.JobEnvironment().hostnames[0]
        for cmd in self.commands:
            line = job_command(cmd, prefix)
            print(f"> {line}", flush=True)
            code = subprocess.call(shell_argv(line), cwd=self.wdir, env=env, stdin=subprocess.DEVNULL)
            if code != 0:
                raise RuntimeError(f"exit {code}: {line}")
        return 0

    def checkpoint(self) -> Any:
        import submitit

        return submitit.helpers.DelayedSubmission(self)


def job_state(job_id: str) -> str:
    """SLURM's state of a job (COMPLETED, RUNNING, ...; UNKNOWN when no source knows it)."""
    def ask(argv: list[str]) -> str:
        try:
            out = subprocess.run(argv, capture_output=True, text=True, timeout=60)
        except (OSError, subprocess.TimeoutExpired):
            return ""
        return out.stdout if out.returncode == 0 else ""

    lines = ask(["sacct", "-X", "-n", "-P", "-o", "State", "-j", job_id]).split()
    if lines:
        return lines[-1].split()[0]
    fields = dict(w.split("=", 1) for w in ask(["scontrol", "show", "job", "-o", job_id]).split() if "=" in w)
    if "JobState" in fields:
        return fields["JobState"]
    found = ask(["sacct", "-c", "-n", "-P", "-o", "State", "-j", job_id]).split()
    return found[-1] if found else "UNKNOWN"


class SlurmPool(Pool):
    """The engine's pool with one SLURM job per stage instead of a local process."""

    def __init__(self, dvc: Any, cluster: Any, total: int) -> None:
        super().__init__(dvc, [None] * max(total, 1), total)
        self.cluster = cluster
        self.jobs: dict[str, str] = {}  # stage -> SLURM job id (this process's submissions)
        self.states: dict[str, str] = {}  # stage -> the state its job ended in
        self.submitting = threading.Lock()

    def executor(self, folder: Path, name: str) -> Any:
        import submitit

        c = self.cluster
        ex = submitit.AutoExecutor(folder=folder, cluster="slurm", slurm_max_num_timeout=100)  # requeues
        ex.update_parameters(name=name, nodes=c.nodes, tasks_per_node=1, cpus_per_task=c.cpus_per_job,
                             timeout_min=c.time_min,
                             **({"gpus_per_node": c.gpus_per_job} if c.gpus_per_job else {}),
                             **({"mem_gb": c.mem_gb} if c.mem_gb else {}),
                             **({"slurm_partition": c.partition} if c.partition else {}),
                             **({"slurm_account": c.account} if c.account else {}))
        return ex

    def _execute(self, job: Job, slot: str | None, n: int = 0) -> int:
        run = job.name.partition("@")[2]
        folder = self.dvc.root / "runs" / run / "slurm"
        env = {"DVC_ROOT": str(self.dvc.root), "DVC_STAGE": job.name}
        work = StageJob(job.commands, str(job.wdir), env, self.cluster.nodes, self.cluster.gpus_per_job)
        with self.submitting:  # Ctrl-C cancels what was submitted: no submission after it
            if self.stopping.is_set():
                return 130
            try:
                submitted = self.executor(folder, job.name).submit(work)
            except Exception as e:  # sbatch refused (a partition or account that does not exist, ...)
                raise ParallelError(f"sbatch refused {job.name}: {str(e).strip().splitlines()[-1]}") from None
            job_id = str(submitted.job_id)
            self.jobs[job.name] = job_id
        job.log = submitted.paths.stderr
        out = os.path.relpath(submitted.paths.stdout, Path.cwd())
        self.say(f"[{n}/{self.total}] submitted {job.name} as SLURM job {job_id}; log: {out}")
        state = "UNKNOWN"
        while not self.stopping.is_set():
            state = job_state(job_id)
            if state.split()[0] in ENDED:
                break
            time.sleep(POLL_S)
        self.states[job.name] = state
        if self.stopping.is_set():
            return 130
        if state == "COMPLETED" and submitted.paths.result_pickle.exists():
            return 0
        return 1

    def _failure(self, job: Job, n: int, code: int, took: str) -> str:
        run = job.name.partition("@")[2]
        job_id, state = self.jobs.get(job.name, "?"), self.states.get(job.name, "UNKNOWN")
        log = os.path.relpath(job.log, Path.cwd())
        again = " (run `tcm parallel --slurm` again: it resumes from the last checkpoint)" \
            if state in {"CANCELLED", "TIMEOUT", "PREEMPTED", "NODE_FAIL"} else ""
        return f"tcm: error: run {run}: SLURM job {job_id} {state} after {took}; log: {log}{again}"

    def stop(self) -> list[str]:
        """Ctrl-C: no new submission, nothing more committed, and ``scancel`` of every job not ended."""
        with self.submitting:
            self.stopping.set()
        live = [j for name, j in self.jobs.items() if name not in self.states]
        if live:
            subprocess.run(["scancel", *live], capture_output=True, timeout=60)
        return live
