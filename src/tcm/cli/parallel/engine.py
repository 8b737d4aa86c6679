"""`tcm parallel`'s engine: DVC one call at a time, what a stage depends on, what it may commit (docs/gpus.md).

The workers that run the stages are in :mod:`tcm.cli.parallel.local` (processes of this machine) and
:mod:`tcm.cli.parallel.slurm` (SLURM jobs); the command is :mod:`tcm.cli.parallel`.

``dvc repro`` runs one stage at a time, so eight GPUs would train the paper profile's 32 runs one after
another. This command, run in the project:

1. validates params.yaml (what ``tcm check-params`` does);
2. brings every stage that a train stage depends on (validate, data, pretrain) up to date with one ``dvc repro``;
3. asks ``dvc status`` which train stages are out of date;
4. runs each of them with DVC's own resolved ``cmd`` (shell, working directory, ``DVC_ROOT`` and
   ``DVC_STAGE`` as ``dvc repro`` sets them, non-persistent outputs removed first) in a pool of
   workers: one per ``--gpus`` entry, with ``CUDA_VISIBLE_DEVICES`` set to it, or ``--jobs N`` without
   pinning. A stage's output goes to ``runs/<run>/train.log`` (ignored by git and DVC); the terminal
   gets one line when a stage starts and one when it ends;
5. records each stage that succeeded with ``dvc commit -f <stage>``, from this process only, one DVC
   call at a time, so that dvc.lock has a single writer;
6. runs ``dvc repro`` for the rest (evaluation, report), which finds the train stages up to date.

A stage is committed only with outputs that belong to its current dependencies: its dependencies
(files and folders as DVC hashes them, the values of its params, its command) are recorded before it
starts; if any differs when it ends, or in the dvc.lock entry that ``dvc commit`` wrote, the stage is
not committed (dvc.lock is put back), stays out of date, and one line names the dependency. A stage
that fails is reported with its log; the others go on; the exit status is then 1 and the rest of the
pipeline is not run. (A dependency changed and changed back while a stage ran is not seen.)

What DVC documents, and why it is done this way:

- "It's also possible to execute stage commands by hand (without `dvc repro`) ... Use `dvc commit` to
  register the changes with DVC once you're done" (https://dvc.org/doc/command-reference/commit,
  "Some scenarios" and "Example: Executing stage commands without DVC"). ``-f`` skips the question DVC
  asks when the dependencies differ from dvc.lock, which they do for every stage that had to run; the
  same page warns that DVC "can't guarantee reproducibility" then, hence the dependency check here.
- Two DVC processes in one workspace: the repository lock (``.dvc/tmp/lock``) refuses the second
  after about 3 s of retries: "Unable to acquire lock. Most likely another DVC process is running or
  was terminated abruptly" (dvc/lock.py; treeverse/dvc#10465, #9805). ``dvc repro`` lets go of it
  only while a stage's command runs (treeverse/dvc#2584), so the "Parallel stage execution" of
  https://dvc.org/doc/command-reference/repro (several ``dvc repro TARGET`` at once) fails at random:
  "You may get `Unable to acquire lock` errors ... So you may have to wait, or retry" (a maintainer,
  treeverse/dvc#10630); ``dvc --wait-for-lock`` came in 2025 (treeverse/dvc#10784: in the DVC 3.67
  tested here, not in the older 3.x this project allows). Here only this process calls DVC, one call
  at a time, and it waits for the lock while another DVC command (a ``dvc status`` in another
  terminal) holds it.
- Outputs are removed before the command except ``persist: true`` ones, as ``dvc repro`` does
  ("Stage outputs are deleted from the workspace before executing the stage commands that produce
  them (unless persist: true is used in dvc.yaml)", the repro page's notes): DVC's own
  ``Stage.remove_outs`` is called.

One run across several GPUs stays ``torchrun --nproc_per_node N -m tcm.cli train RUN``.

DVC's internals this module uses (:data:`DVC_INTERNALS`; DVC has no public API for a stage's resolved
command, its dependencies' hashes, or its output removal). Tested with DVC 3.67.1; pyproject allows
``dvc>=3.50,<4``. :func:`check_dvc_internals` runs before any work and names what a DVC release
changed, and tests/test_parallel.py runs it in the fast tier:

- ``dvc.repo.Repo`` (``find_root``, ``stage.collect``, ``index.graph``) and ``dvc.repo.lock_repo`` with
  ``dvc.lock.LockError``: the project, its stages and their order, under DVC's own lock;
- ``dvc.stage.Stage.remove_outs(ignore_remove=, force=)``: what ``dvc repro`` removes before a command;
- ``dvc.dependency.param.ParamsDependency`` (``read_params``, ``params``) and each dependency's
  ``def_path``, ``get_hash()`` and ``hash_info``: what a stage's outputs must belong to (snapshot, locked).
Everything else goes through the ``dvc`` command line (``status``, ``repro``, ``commit``).
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from tcm.errors import TcmError

TRAIN = "train"  # the foreach group of dvc.yaml whose stages run side by side
# (module, attribute path, keyword arguments it must accept): DVC internals used here (module docstring).
# Instance attributes (Repo.stage, a StageLoad; Output.def_path, .hash_info) cannot be looked up on the
# class: the e2e tests of tests/test_parallel.py exercise them.
DVC_INTERNALS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("dvc.repo", "Repo.find_root", ()),
    ("dvc.repo", "Repo.index", ()),
    ("dvc.repo", "lock_repo", ()),
    ("dvc.lock", "LockError", ()),
    ("dvc.exceptions", "NotDvcRepoError", ()),
    ("dvc.stage", "Stage.remove_outs", ("ignore_remove", "force")),
    ("dvc.repo.stage", "StageLoad.collect", ()),
    ("dvc.dependency.param", "ParamsDependency.read_params", ()),
    ("dvc.output", "Output.get_hash", ()),
)
LOCK_WAIT_S = 600  # how long to wait while another DVC process holds the repository lock
MISSING = "<missing>"


class ParallelError(TcmError, RuntimeError):
    """Not a DVC project, or workers that cannot work."""


@dataclass
class Job:
    """One train stage: DVC's resolved command, and its dependencies when it starts."""

    name: str
    commands: list[str]
    wdir: Path
    log: Path
    before: dict[str, Any] = field(default_factory=dict)


# ------------------------------------------------------------------ DVC, one call at a time


class Dvc:
    """Every DVC call of this command, one at a time: the ``dvc`` command line (repro, status, commit)
    and DVC's Python API (stages, hashes; under DVC's repository lock, as DVC's own commands)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._mutex = threading.Lock()
        self._told = False

    def _waiting(self) -> None:
        if not self._told:
            print("tcm parallel: another DVC process holds the repository lock (.dvc/tmp/lock); waiting for it",
                  file=sys.stderr, flush=True)
            self._told = True

    def cli(self, *args: str, capture: bool = True) -> subprocess.CompletedProcess:
        """``dvc ARGS`` in the project; captured calls are retried while another DVC process holds
        the lock (``dvc repro``, streamed to the terminal, is not)."""
        deadline = time.monotonic() + LOCK_WAIT_S
        with self._mutex:
            while True:
                # This Python's DVC (the one whose API this module uses), wherever PATH points.
                out = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=self.root, capture_output=capture,
                                     text=True)
                busy = capture and "Unable to acquire lock" in out.stdout + out.stderr
                if out.returncode == 0 or not busy or time.monotonic() > deadline:
                    return out
                self._waiting()
                time.sleep(1)

    @contextlib.contextmanager
    def repo(self) -> Iterator[Any]:
        """A fresh ``dvc.repo.Repo`` of the project with DVC's repository lock held."""
        from dvc.lock import LockError
        from dvc.repo import Repo, lock_repo

        deadline = time.monotonic() + LOCK_WAIT_S
        with self._mutex, contextlib.closing(Repo(str(self.root))) as repo, contextlib.ExitStack() as held:
            while True:
                try:
                    held.enter_context(lock_repo(repo))
                    break
                except LockError:
                    if time.monotonic() > deadline:
                        raise
                    self._waiting()
                    time.sleep(1)
            yield repo

    @property
    def dvc_yaml(self) -> Path:
        return self.root / "dvc.yaml"

    def stage(self, repo: Any, name: str) -> Any:
        """The stage ``name`` of the project's dvc.yaml (DVC takes a bare name relative to the working
        directory, which need not be the project's)."""
        (stage,) = repo.stage.collect(f"{self.dvc_yaml}:{name}")
        return stage


def snapshot(stage: Any) -> dict[str, Any]:
    """What the stage's outputs must belong to, as found now: its command, each file or folder
    dependency's hash (DVC's, .dvcignore applied) and each of its params' value."""
    from dvc.dependency.param import ParamsDependency

    found: dict[str, Any] = {"cmd": stage.cmd}
    for dep in stage.deps:
        if isinstance(dep, ParamsDependency):
            try:
                values = dep.read_params()
            except Exception:  # a params file being rewritten, or broken: a change in any case
                values = {}
            for key in dep.params:
                found[f"{dep.def_path}:{key}"] = values.get(key, MISSING)
        else:
            try:
                found[dep.def_path] = dep.get_hash().value
            except FileNotFoundError:
                found[dep.def_path] = MISSING
    return found


def locked(stage: Any) -> dict[str, Any]:
    """The same as :func:`snapshot`, as dvc.lock records it for the stage."""
    from dvc.dependency.param import ParamsDependency

    found: dict[str, Any] = {"cmd": stage.cmd if not getattr(stage, "cmd_changed", False) else "<other cmd>"}
    for dep in stage.deps:
        value = dep.hash_info.value if dep.hash_info else None
        if isinstance(dep, ParamsDependency):
            for key in dep.params:
                found[f"{dep.def_path}:{key}"] = (value or {}).get(key, MISSING)
        else:
            found[dep.def_path] = value if value is not None else MISSING
    return found


def changed(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    return [key for key in sorted(before.keys() | after.keys()) if before.get(key, MISSING) != after.get(key, MISSING)]


def check_dvc_internals() -> None:
    """Raise :class:`ParallelError` naming each of :data:`DVC_INTERNALS` that the installed DVC lacks."""
    import importlib
    import inspect

    from dvc.version import __version__

    missing = []
    for module, path, keywords in DVC_INTERNALS:
        try:
            obj: Any = importlib.import_module(module)
            for part in path.split("."):
                obj = inspect.getattr_static(obj, part)
            if keywords:
                accepted = inspect.signature(obj).parameters
                missing += [f"{module}.{path}({k}=)" for k in keywords if k not in accepted]
        except (ImportError, AttributeError):
            missing.append(f"{module}.{path}")
    if missing:
        raise ParallelError(f"parallel: DVC {__version__} lacks {', '.join(missing)}, which `tcm parallel` uses "
                            "(tested with DVC 3.67.1); install that version, or run `dvc repro` instead")


def _project_root() -> Path:
    from dvc.exceptions import NotDvcRepoError
    from dvc.repo import Repo

    try:
        return Path(Repo.find_root()).resolve()
    except NotDvcRepoError:
        raise ParallelError(f"parallel: {Path.cwd()} is not in a DVC project (no .dvc folder above it)") from None


def _status(dvc: Dvc) -> dict[str, Any]:
    import json

    out = dvc.cli("status", "--json")
    if out.returncode != 0:
        raise ParallelError(f"parallel: `dvc status` failed: {out.stderr.strip()}")
    return json.loads(out.stdout or "{}")


def plan(dvc: Dvc) -> tuple[list[str], list[str]]:
    """(the train stages of dvc.yaml, the other stages they depend on), in DVC's order."""
    import networkx as nx

    with dvc.repo() as repo:
        graph = repo.index.graph
        order = list(nx.topological_sort(graph.reverse()))  # a stage after those it depends on
        ours = {s for s in order if Path(s.path).resolve() == dvc.dvc_yaml.resolve()}
        train = [s for s in order if s in ours and s.name.startswith(TRAIN + "@")]
        upstream = {u for s in train for u in nx.descendants(graph, s)} - set(train)
        if not upstream <= ours:
            raise ParallelError(f"parallel: the {TRAIN} stages depend on stages outside {dvc.dvc_yaml}: "
                                f"{sorted(s.addressing for s in upstream - ours)}")
        return [s.name for s in train], [s.name for s in order if s in upstream]


def _duration(seconds: float) -> str:
    m, s = divmod(int(round(seconds)), 60)
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s" if m else f"{s}s"


def _last_line(log: Path) -> str:
    try:
        lines = [line.strip() for line in log.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return ""
    return f"\n    {lines[-1][:300]}" if lines else ""


