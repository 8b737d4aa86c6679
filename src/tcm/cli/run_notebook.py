"""`tcm notebook IN OUT -p NAME VALUE ...`: run a stage notebook with papermill, as dvc.yaml does.

Things plain `papermill` does not do for a pipeline stage:
- a first line says what a stage notebook (notebooks/NN_<stage>.ipynb) does
  (``tcm: train glyphs-ms: 5 seeds (0, 1, 2, 3, 4) x 8 epochs, device auto``), before papermill, the
  kernel and torch are loaded;
- the kernel's stderr (one line per epoch, progress lines naming run and seed: tcm.progress) streams
  to the terminal while the cell runs (papermill writes each stream message as it arrives);
- the kernel talks to this process over IPC (Unix sockets in a private temporary folder), not TCP:
  no port to race for between parallel stages, and no "Kernel is running over TCP" warning;
- the executed copy keeps one stream output per cell (not one per progress update);
- an error the user can fix (a :class:`tcm.errors.TcmError` raised in the notebook: bad data, a
  diverged run, a locked run folder) ends the stage with that one line and exit 2, not with
  papermill's traceback and the notebook's. The executed notebook keeps the full traceback;
- Ctrl-C or SIGTERM is passed on to the kernel as an interrupt (the kernel runs in a session of its
  own, which the terminal's Ctrl-C does not reach): the cell stops the way `tcm train` would, keeping
  its checkpoints and ending its MLflow run KILLED, and the stage ends with that one line. A second
  Ctrl-C stops the kernel at once;
- when `dvc` (or whatever started this command) is killed, the kernel is interrupted the same way
  instead of training on for nobody (and holding the run's lock against the rerun).
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import os
import pkgutil
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Iterator

from tcm.errors import TcmError
from tcm.jupyter_imports import skip_iri_grammar

KERNEL = "python3"
POLL_SECONDS = 1.0  # how often the watchdog looks for the process that started this one
GRACE_SECONDS = 60.0  # how long an interrupted kernel may take to stop before it is killed


def user_error_names() -> set[str]:
    """Class names of every :class:`TcmError` in the package (papermill reports a notebook's
    exception by class name only). Imports the whole package: called only after a failure."""
    import tcm

    for mod in pkgutil.walk_packages(tcm.__path__, "tcm."):
        if not mod.name.endswith("__main__"):
            try:
                importlib.import_module(mod.name)
            except ImportError:  # optional dependencies (mlflow on GPU boxes)
                pass
    names, todo = set(), [TcmError]
    while todo:
        cls = todo.pop()
        names.add(cls.__name__)
        todo.extend(cls.__subclasses__())
    return names


# --------------------------------------------------------------------------- processes (Linux /proc)


def _stat(pid: int) -> tuple[int, int] | None:
    """(parent pid, start time) of process ``pid``, or None when it is gone (or /proc is missing)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2:].split()  # the command name may hold spaces and parentheses
    if fields[0] == "Z":  # a zombie has exited; only its parent has not collected it yet
        return None
    return int(fields[1]), int(fields[19])


def _command(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []


def _children(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir() if Path("/proc").is_dir() else ():
        if entry.name.isdigit():
            st = _stat(int(entry.name))
            if st is not None and st[0] == pid:
                out.append(int(entry.name))
    return out


def _is_dvc(pid: int) -> bool:
    return any(Path(arg).name in ("dvc", "dvc.exe") or arg.endswith("/dvc/__main__.py")
               for arg in _command(pid)[:3]) or _command(pid)[1:3] == ["-m", "dvc"]


def _watched() -> list[tuple[int, int, str]]:
    """(pid, start time, name) of the processes this one lives for: its ancestors up to the nearest
    `dvc`, or its parent alone when no `dvc` started it."""
    chain, pid = [], os.getppid()
    while pid > 1:
        st = _stat(pid)
        if st is None:
            break
        dvc = _is_dvc(pid)
        chain.append((pid, st[1], "dvc" if dvc else Path(_command(pid)[0] or "parent").name))
        if dvc:
            return chain
        pid = st[0]
    return chain[:1]


# --------------------------------------------------------------------------- stopping the kernel


class _Stopper:
    """Passes the first stop (Ctrl-C, SIGTERM, the watchdog) to the kernel as an interrupt; a second
    signal, or a kernel that does not stop within GRACE_SECONDS, kills it and ends this process."""

    def __init__(self, source: Path) -> None:
        self.source = source
        self.reason: str | None = None
        self._lock = threading.Lock()

    def _kernels(self) -> list[int]:
        return _children(os.getpid())

    def _signal_kernels(self, sig: int) -> None:
        for pid in self._kernels():
            # The kernel leads a session of its own (jupyter_client): its DataLoader workers are in it too.
            try:
                os.killpg(pid, sig)
            except OSError:
                with contextlib.suppress(OSError):
                    os.kill(pid, sig)

    def stop(self, reason: str) -> None:
        with self._lock:
            first = self.reason is None
            if first:
                self.reason = reason
        if not first:
            self.kill_now()
        self._signal_kernels(signal.SIGINT)
        threading.Thread(target=self._deadline, daemon=True).start()

    def _deadline(self) -> None:
        end = time.monotonic() + GRACE_SECONDS
        while time.monotonic() < end:
            if not self._kernels():
                return
            time.sleep(0.5)
        self.kill_now()

    def kill_now(self) -> None:
        self._signal_kernels(signal.SIGKILL)
        with contextlib.suppress(OSError):
            print(f"tcm: error: {self.reason or 'stopped'}: the notebook {self.source} was stopped at once; what "
                  "its stage finished before is kept (checkpoints of completed epochs); rerun the stage",
                  file=sys.stderr, flush=True)
        os._exit(2)

    def on_signal(self, signum: int, frame: object) -> None:
        self.stop("interrupted (Ctrl-C)" if signum == signal.SIGINT else f"interrupted ({signal.Signals(signum).name})")

    def watch(self, watched: list[tuple[int, int, str]]) -> None:
        """Daemon thread body: stop the kernel once a watched process is gone (``dvc`` killed)."""
        while self.reason is None:
            for pid, start, name in watched:
                st = _stat(pid)
                if st is None or st[1] != start:
                    self.stop(f"interrupted: {name} (pid {pid}) is gone")
                    return
            time.sleep(POLL_SECONDS)


@contextlib.contextmanager
def _stop_handling(source: Path) -> Iterator[_Stopper]:
    stopper = _Stopper(source)
    previous = {}
    if threading.current_thread() is threading.main_thread():
        previous = {s: signal.signal(s, stopper.on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    watched = _watched()
    if watched:
        threading.Thread(target=stopper.watch, args=(watched,), daemon=True, name="tcm-watchdog").start()
    try:
        yield stopper
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


# --------------------------------------------------------------------------- what the stage does


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


STAGES = ("data", "pretrain", "train", "evaluate", "report")  # notebooks/NN_<stage>.ipynb


def describe(source: Path, parameters: dict[str, str]) -> str | None:
    """One line on what the stage notebook ``source`` will do with ``parameters`` (read from the params
    file only: nothing heavy is imported), or None for a notebook that is no stage's (explore_run).
    Any trouble with the params is left to the notebook to report."""
    number, _, stem = source.stem.partition("_")
    if not (number.isdigit() and stem in STAGES):
        return None
    what = f"tcm: {stem}"
    try:
        from tcm.config import load_config

        cfg = load_config(parameters.get("params_path", "params.yaml"))
        if stem == "train":
            name = parameters.get("run", "")
            t = cfg.run(name).train
            seeds = ", ".join(map(str, t.seeds))
            return (f"{what} {name}: {_plural(len(t.seeds), 'seed')} ({seeds}) x {_plural(t.epochs, 'epoch')}, "
                    f"device {t.device} (run folder {cfg.run_dir(name).root})")
        if stem == "evaluate":
            name = parameters.get("run", "")
            run = cfg.run(name)
            return (f"{what} {name}: {_plural(len(run.train.seeds), 'seed')} on the test split of {run.dataset}, "
                    f"device {cfg.evaluation.device}")
        if stem == "pretrain":
            name = parameters.get("dataset", "")
            p = cfg.dataset(name).pretrain
            if p is None:
                return f"{what} {name}: nothing to pretrain (a note only)"
            return f"{what} {name}: backbone {p.backbone}, {_plural(p.epochs, 'epoch')}"
        if stem == "data":
            name = parameters.get("dataset", "")
            cfg.dataset(name)
            return f"{what} {name}: preparing {cfg.data_dir(name)}"
        if stem == "report":
            return f"{what}: tables and figures of {_plural(len(cfg.runs), 'run')}"
    except Exception:  # noqa: BLE001 - the notebook reports a bad params file in its own words
        pass
    return f"{what}: running {source}"


def _kernel_manager(folder: Path) -> dict:
    """papermill's keyword for the kernel manager of a stage: its kernel is :mod:`tcm.stage_kernel` (where
    the kernel spec is the usual ``python -m ipykernel_launcher``) and listens on Unix sockets in
    ``folder``, or on TCP (jupyter_client's default) where those cannot be: not POSIX, or a socket path
    past the length a Unix socket allows (a long TMPDIR)."""
    from jupyter_client.manager import AsyncKernelManager

    ipc = os.name == "posix" and len(str(folder / "kernel-00000")) <= 100

    class StageKernelManager(AsyncKernelManager):
        def __init__(self, **kw: object) -> None:
            if ipc:
                kw.setdefault("transport", "ipc")
                kw.setdefault("ip", str(folder / "kernel"))
            super().__init__(**kw)

        def format_kernel_cmd(self, extra_arguments: list[str] | None = None) -> list[str]:
            cmd = super().format_kernel_cmd(extra_arguments)
            if cmd[1:3] == ["-m", "ipykernel_launcher"]:
                cmd[2] = "tcm.stage_kernel"
            return cmd

    return {"kernel_manager_class": StageKernelManager}


def run_notebook(source: Path, output: Path, parameters: dict[str, str]) -> int:
    """Execute ``source`` into ``output`` with ``parameters``; 0, or 2 after a user error or an
    interrupt (one line on stderr)."""
    if importlib.util.find_spec("papermill") is not None:  # else the import below says what to install
        line = describe(source, parameters)
        if line is not None:
            print(line, file=sys.stderr, flush=True)
    skip_iri_grammar()
    import papermill
    from papermill.exceptions import PapermillExecutionError

    with _stop_handling(source) as stopper, tempfile.TemporaryDirectory(prefix="tcm-kernel-") as sockets:
        try:
            # Both streams of the kernel go to the terminal as they arrive (notebook.plain_progress shows
            # progress as stdout, so the notebook has no error boxes); coalesce_streams: one output per
            # stream and cell in the executed copy, progress bars reduced to their last state.
            papermill.execute_notebook(str(source), str(output), parameters=parameters, kernel_name=KERNEL,
                                       progress_bar=False, stdout_file=sys.stderr, stderr_file=sys.stderr, cwd=None,
                                       coalesce_streams=True,
                                       **_kernel_manager(Path(sockets)))
        except PapermillExecutionError as e:
            if e.ename in user_error_names():
                print(f"\ntcm: error: {e.evalue} (the executed notebook {output} has the details)", file=sys.stderr)
                return 2
            if e.ename == "KeyboardInterrupt" or stopper.reason is not None:
                print(f"\ntcm: error: {stopper.reason or 'interrupted'}: the notebook {source} stopped in a cell "
                      f"(the executed copy {output} shows where); rerun the stage", file=sys.stderr)
                return 2
            print(f"{e}\ntcm: notebook {source} failed; the executed copy is {output}", file=sys.stderr)
            return 1
        except Exception as e:
            if stopper.reason is None:
                raise
            # The kernel died of the interrupt (or in its cleanup): papermill says so in its own words.
            print(f"\ntcm: error: {stopper.reason}: the notebook {source} stopped ({type(e).__name__}); rerun "
                  "the stage", file=sys.stderr)
            return 2
    return 0
