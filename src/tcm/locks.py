"""Advisory file locks between processes: one writer per run folder, one creator of the MLflow store.

The operating system drops the lock when its process dies, however it dies (``kill -9`` included),
so a lock file left on disk never blocks anyone. The holder writes its pid and host into the file so
that the one refused can say who holds it. (filelock, the usual library, gives no holder identity.)
POSIX ``flock`` only: where ``fcntl`` is missing (Windows) locking is skipped, with no guarantee.

A waiting lock gives up after :data:`WAIT_SECONDS` (``TCM_LOCK_TIMEOUT`` in the environment overrides
it): a process that hangs while holding the MLflow store must not hang every stage behind it.
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
from pathlib import Path
from typing import Iterator

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

from tcm.atomic import refused_write, write_error
from tcm.errors import TcmError

WAIT_SECONDS = 60.0


class LockedError(TcmError, RuntimeError):
    """Another live process holds the lock; the message names it."""


def _holder(fd: int) -> str:
    os.lseek(fd, 0, os.SEEK_SET)
    text = os.read(fd, 200).decode(errors="replace").strip()
    return text or "another process"


def wait_seconds() -> float:
    """How long a waiting :func:`exclusive` waits: ``TCM_LOCK_TIMEOUT`` seconds, else :data:`WAIT_SECONDS`."""
    try:
        return max(0.0, float(os.environ["TCM_LOCK_TIMEOUT"]))
    except (KeyError, ValueError):
        return WAIT_SECONDS


def _acquire(fd: int, path: Path, what: str, wait: bool, timeout: float | None) -> None:
    deadline = time.monotonic() + (wait_seconds() if timeout is None else timeout)
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if not wait:
                raise LockedError(f"{what} is in use by {_holder(fd)} (lock file {path}); wait for it to finish "
                                  "or stop that process, then run again") from None
            if time.monotonic() >= deadline:
                raise LockedError(f"{what} is still in use by {_holder(fd)} after {timeout or wait_seconds():g} s "
                                  f"(lock file {path}); stop that process if it hangs, then run again") from None
        time.sleep(0.1)


@contextlib.contextmanager
def exclusive(path: Path | str, what: str, wait: bool = False, timeout: float | None = None) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (created if missing) for the ``with`` body.

    ``wait=False`` raises :class:`LockedError` at once, naming ``what`` and the holder, when another
    process holds it; ``wait=True`` waits for it up to ``timeout`` seconds (default :func:`wait_seconds`),
    then raises :class:`LockedError` naming the holder. A lock file that cannot be created (read-only
    folder, full disk) is a :class:`tcm.atomic.WriteError` naming it.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as e:
        if refused_write(e):
            raise write_error(path, e, f"nothing was changed (the lock file of {what})") from None
        raise
    held = False
    try:
        if fcntl is not None:
            _acquire(fd, path, what, wait, timeout)
        held = True
        with contextlib.suppress(OSError):  # the holder's name is a courtesy: a full disk must not stop the lock
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%H:%M:%S')}".encode(),
                      0)
        yield
    finally:
        if held:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
        os.close(fd)  # closing releases the lock
