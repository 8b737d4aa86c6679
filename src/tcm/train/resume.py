"""Resume rules: what a checkpoint must match to be resumed (:func:`config_hash`), which attempt a call
continues (:func:`_start_attempt`), and what an interrupted or failed attempt keeps (:class:`_Aside`,
:class:`_Status`, the signal handling)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from tcm.atomic import write_json
from tcm.runfiles import RunDir
from tcm.train.runtime import Dist, _notice


def config_hash(settings: dict) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def _file_digest(path: Path | None) -> str | None:
    """SHA-256 of a weights file, so that new pretrained weights never resume an attempt begun on old ones."""
    if path is None or not Path(path).is_file():
        return None
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _read_progress(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


# --------------------------------------------------------------------------- signals


@contextlib.contextmanager
def _sigterm_interrupts() -> Iterator[None]:
    """SIGTERM (``kill``, a job scheduler, torchrun stopping its workers) stops training as Ctrl-C does:
    the exception unwinds through the cleanup that ends the MLflow run as KILLED and keeps the
    checkpoints, where the default action would end the process on the spot (MLflow run left RUNNING)."""
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be set from the main thread
        return

    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt("SIGTERM")

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def _shielded() -> Iterator[None]:
    """Ignore Ctrl-C and SIGTERM for a short cleanup (ending the MLflow run, putting train/ back): a second
    signal there would leave the cleanup half done. Pressing Ctrl-C twice is common."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


# --------------------------------------------------------------------------- what a failure keeps


@dataclass
class _Status:
    """Where the attempt stands, for the one line an interrupt or a failure prints."""

    seed: int | None = None  # the seed being trained
    epoch: int = 0  # its last saved epoch (0: none trained)
    epochs: int = 0
    ckpt: Path | None = None
    ino: int | None = None  # the inode of ckpt at that epoch: a later atomic save gives it a new one
    finished: list[int] = field(default_factory=list)

    def saved(self, epoch: int) -> None:
        self.epoch, self.ino = epoch, self.ckpt.stat().st_ino

    def kept_epoch(self) -> int:
        """The epoch on disk: a signal may land after a save replaced the file and before saved() ran."""
        try:
            ino = self.ckpt.stat().st_ino if self.ckpt is not None else None
        except OSError:
            return self.epoch
        return self.epoch + 1 if (ino is not None and self.ino is not None and ino != self.ino) else self.epoch


ASIDE_PREFIX = "train.old-"  # runs/<run>/train.old-<pid>: ignored by git and DVC (.gitignore, .dvcignore)


@dataclass
class _Aside:
    """The previous ``train/`` folder, moved aside (not deleted) while a new attempt starts.

    It comes back when the new attempt fails or is interrupted before it has saved a trained epoch;
    it is deleted once the new attempt has saved its first trained epoch. From then on the new attempt
    is what a rerun resumes, and the old folder (a finished run, or other settings or code) is
    something no rerun would resume, so keeping it until the whole run finishes would only double the
    disk it takes."""

    train_dir: Path
    old: Path
    mark: tuple[Path, int] | None = None  # the untrained checkpoint of the first seed, and its inode
    dropped: bool = False

    def marked(self, ckpt: Path) -> None:
        """``ckpt`` now holds the new attempt's untrained (epoch 0) checkpoint."""
        if self.mark is None:
            self.mark = (ckpt, ckpt.stat().st_ino)

    def progressed(self) -> bool:
        """Whether the new attempt has saved a trained epoch (an atomic save gives the file a new inode)."""
        if self.mark is None:
            return False
        try:
            return self.mark[0].stat().st_ino != self.mark[1]
        except OSError:
            return False

    def drop(self) -> None:
        progress = _read_progress(self.train_dir / "progress.json")
        if progress is not None and progress.pop("aside", None) is not None:
            # First, so that a kill during the deletion never lets _recover_aside put back half a folder.
            write_json(self.train_dir / "progress.json", progress)
        shutil.rmtree(self.old, ignore_errors=True)
        self.dropped = True

    def put_back(self) -> None:
        shutil.rmtree(self.train_dir, ignore_errors=True)
        os.replace(self.old, self.train_dir)

    def settle(self) -> str:
        """After a failure: keep what is worth more; returns what was kept, for the message."""
        if self.dropped:
            return ""
        if self.progressed():
            self.drop()
            return ""
        self.put_back()
        return f"the earlier {self.train_dir} is put back unchanged"


def _recover_aside(run_dir: RunDir, d: Dist) -> None:
    """A folder moved aside by a process that was killed (kill -9, power loss): with the run's lock held,
    no one else uses it. It goes back when the attempt that replaced it had not saved a trained epoch
    (progress.json still names it), else it is deleted."""
    for old in sorted(run_dir.root.glob(ASIDE_PREFIX + "*")):
        progress = _read_progress(run_dir.progress) or {}
        if progress.get("aside") == old.name or not run_dir.train_dir.exists():
            _notice(d, f"{run_dir.train_dir} was replaced by an attempt that saved no trained epoch; putting back "
                       f"the earlier one ({old.name})")
            shutil.rmtree(run_dir.train_dir, ignore_errors=True)
            os.replace(old, run_dir.train_dir)
        else:
            shutil.rmtree(old, ignore_errors=True)


def _start_attempt(run_dir: RunDir, run_hash: str, code: str, d: Dist) -> tuple[bool, _Aside | None]:
    """Whether this call continues an interrupted attempt (same settings, same code, not finished);
    otherwise a new attempt starts in a new ``train/`` folder, the old one moved aside (:class:`_Aside`,
    returned; None when there was none).

    Only an unfinished attempt is resumed: re-running a finished run (``dvc repro --force``, or a
    stage re-run because its code changed) trains again, so a stage never passes off old results
    as new ones."""
    if d.main:
        _recover_aside(run_dir, d)
    progress = _read_progress(run_dir.progress)
    reason = None
    if progress is None:
        reason = "holds no readable progress.json" if run_dir.train_dir.exists() else None
    elif progress.get("complete"):
        reason = "holds a finished run"
    elif progress.get("run_hash") != run_hash:
        reason = "was written with other settings"
    elif progress.get("code") != code:
        reason = "was written by other code (tcm source files changed)"
    if progress is not None and reason is None:
        return True, None
    aside = None
    if d.main:
        if reason is not None:
            _notice(d, f"{run_dir.train_dir} {reason}; training {run_dir.name} from scratch")
        fresh = {"run": run_dir.name, "run_hash": run_hash, "code": code, "complete": False}
        if run_dir.train_dir.exists():
            aside = _Aside(run_dir.train_dir, run_dir.root / f"{ASIDE_PREFIX}{os.getpid()}")
            shutil.rmtree(aside.old, ignore_errors=True)
            os.replace(run_dir.train_dir, aside.old)
            fresh["aside"] = aside.old.name  # for _recover_aside, should this process be killed
        try:
            write_json(run_dir.progress, fresh)
        except BaseException:
            if aside is not None:
                aside.put_back()
            raise
    return False, aside


def _interrupted_message(name: str, status: _Status, kept: str) -> str:
    done = f"; seeds {status.finished} finished" if status.finished else ""
    if status.seed is None:
        what = kept or "nothing was changed"
        return f"interrupted: run {name} before training began; {what}; rerun to train it"
    epoch = status.kept_epoch()
    if epoch >= 1:
        return (f"interrupted: run {name} seed {status.seed} kept at epoch {epoch} of {status.epochs} in "
                f"{status.ckpt}{done}; rerun to resume")
    what = f"; {kept}" if kept else ""
    return f"interrupted: run {name} seed {status.seed} in its first epoch{done}{what}; rerun to resume"
