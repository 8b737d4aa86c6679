"""`tcm parallel`'s workers on this machine: one process per ``--gpus`` entry or ``--jobs N``.

:class:`Pool` is the engine's loop for any backend: it prepares a stage as DVC would run it, has it run
(:meth:`Pool._execute`: here a shell process per command; :class:`tcm.cli.parallel.slurm.SlurmPool`
submits a SLURM job instead), and commits each success from this process alone.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from queue import Queue

from tcm.cli.parallel.engine import Dvc, Job, _duration, _last_line, changed, locked, snapshot


def shell_argv(cmd: str) -> list[str]:
    """How DVC runs a stage's command: ``$SHELL -c CMD`` without the user's rc files."""
    shell = os.environ.get("SHELL") or "/bin/sh"
    flags = {"bash": ["--noprofile", "--norc"], "zsh": ["--no-rcs"]}.get(Path(shell).name, [])
    return [shell, *flags, "-c", cmd]


class Pool:
    """Runs train stages on the workers, commits each success, and keeps the score."""

    def __init__(self, dvc: Dvc, slots: list[str | None], total: int) -> None:
        self.dvc = dvc
        self.free: Queue[str | None] = Queue()
        for slot in slots:
            self.free.put(slot)
        self.workers = len(slots)
        self.total = total
        self.started = 0
        self.failed: list[str] = []
        self.refused: list[str] = []
        self.committed: list[str] = []
        self.stopping = threading.Event()
        self.procs: set[subprocess.Popen] = set()
        self._lock = threading.Lock()

    def say(self, line: str, err: bool = False) -> None:
        with self._lock:
            print(line, file=sys.stderr if err else sys.stdout, flush=True)

    def _prepare(self, name: str) -> Job:
        """The stage as DVC would run it now: its dependencies recorded, its outputs removed."""
        with self.dvc.repo() as repo:
            stage = self.dvc.stage(repo, name)
            commands = stage.cmd if isinstance(stage.cmd, list) else stage.cmd.splitlines()
            run = name.partition("@")[2]
            log = self.dvc.root / "runs" / run / "train.log"
            job = Job(name, commands, Path(stage.wdir), log, snapshot(stage))
            stage.remove_outs(ignore_remove=False, force=False)  # what `dvc repro` does first
        return job

    def _failure(self, job: Job, n: int, code: int, took: str) -> str:
        """The line that reports a failed stage."""
        log = os.path.relpath(job.log, Path.cwd())
        return f"[{n}/{self.total}] FAILED   {job.name} (exit {code}) after {took}; log: {log}{_last_line(job.log)}"

    def _execute(self, job: Job, slot: str | None, n: int = 0) -> int:
        """The stage's commands, one after the other, as DVC runs them; the exit status."""
        where = f"GPU {slot}" if slot is not None else "CPU" if self.workers == 1 else "a worker"
        self.say(f"[{n}/{self.total}] started  {job.name} on {where}; log: {os.path.relpath(job.log, Path.cwd())}")
        env = {**os.environ, "DVC_ROOT": str(self.dvc.root), "DVC_STAGE": job.name}
        if slot is not None:
            env["CUDA_VISIBLE_DEVICES"] = slot
        job.log.parent.mkdir(parents=True, exist_ok=True)
        with open(job.log, "w") as log:
            for cmd in job.commands:
                log.write(f"> {cmd}\n")
                log.flush()
                with self._lock:
                    if self.stopping.is_set():
                        return 130
                    proc = subprocess.Popen(shell_argv(cmd), cwd=job.wdir, env=env, stdout=log,
                                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
                    self.procs.add(proc)
                try:
                    code = proc.wait()
                finally:
                    with self._lock:
                        self.procs.discard(proc)
                if code != 0:
                    return code
        return 0

    def _commit(self, job: Job) -> str | None:
        """``dvc commit -f`` the stage when its dependencies are those it started with; else the
        reason it is not committed (dvc.lock then stays or is put back as it was)."""
        lockfile = self.dvc.root / "dvc.lock"
        with self.dvc.repo() as repo:
            now = changed(job.before, snapshot(self.dvc.stage(repo, job.name)))
        if now:
            return f"its dependency {now[0]} changed while it ran" + (f" (and {len(now) - 1} more)" if now[1:] else "")
        previous = lockfile.read_bytes() if lockfile.exists() else None

        def put_back() -> None:  # this process is dvc.lock's only writer while it runs
            if previous is None:
                lockfile.unlink(missing_ok=True)
            else:
                lockfile.write_bytes(previous)

        out = self.dvc.cli("commit", "-f", job.name)
        if out.returncode != 0:
            put_back()
            last = (out.stderr.strip() or out.stdout.strip() or "no message").splitlines()[-1]
            return f"`dvc commit -f {job.name}` failed ({last}); dvc.lock is as it was"
        with self.dvc.repo() as repo:
            recorded = changed(job.before, locked(self.dvc.stage(repo, job.name)))
            if recorded:  # a dependency changed between the check above and `dvc commit`
                put_back()
                return f"its dependency {recorded[0]} changed before it was committed; dvc.lock is as it was"
        return None

    def run(self, name: str) -> None:
        slot = self.free.get()
        try:
            if self.stopping.is_set():
                return
            job = self._prepare(name)
            with self._lock:
                self.started += 1
                n = self.started
            t0 = time.monotonic()
            code = self._execute(job, slot, n)
            took = _duration(time.monotonic() - t0)
            if self.stopping.is_set():
                return
            if code != 0:
                with self._lock:
                    self.failed.append(name)
                self.say(self._failure(job, n, code, took), err=True)
                return
            reason = self._commit(job)
            if reason:
                with self._lock:
                    self.refused.append(name)
                self.say(f"tcm: error: {name} is not committed: {reason}; it stays out of date", err=True)
                return
            with self._lock:
                self.committed.append(name)
            self.say(f"[{n}/{self.total}] finished {name} in {took}; committed to dvc.lock")
        except Exception as e:  # one stage's trouble must not stop the others
            with self._lock:
                self.failed.append(name)
            self.say(f"tcm: error: {name}: {type(e).__name__}: {e}", err=True)
        finally:
            self.free.put(slot)

    def stop(self) -> list[str]:
        """Ctrl-C: no new stage starts, nothing more is committed, running stages are ended."""
        with self._lock:
            self.stopping.set()
            procs = list(self.procs)
        for proc in procs:
            with contextlib.suppress(OSError):
                proc.terminate()
        return []


