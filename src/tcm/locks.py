"""Advisory file locks between processes: one writer per run folder, one creator of the MLflow store.

The operating system drops the lock when its process dies, however it dies (``kill -9`` included),
so a lock file left on disk never blocks anyone. The holder writes its pid and host into the file so
that the one refused can say who holds it. (filelock, the usual library, gives no holder identity.)
POSIX ``flock`` only: where ``fcntl`` is missing (Windows) locking is skipped, with no guarantee.
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

from tcm.errors import TcmError


class LockedError(TcmError, RuntimeError):
    """Another live process holds the lock; the message names it."""


def _holder(fd: int) -> str:
    os.lseek(fd, 0, os.SEEK_SET)
    text = os.read(fd, 200).decode(errors="replace").strip()
    return text or "another process"


@contextlib.contextmanager
def exclusive(path: Path | str, what: str, wait: bool = False) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (created if missing) for the ``with`` body.

    ``wait=False`` raises :class:`LockedError` at once, naming ``what`` and the holder, when another
    process holds it; ``wait=True`` blocks until it is free.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    held = False
    try:
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
            except BlockingIOError:
                raise LockedError(f"{what} is in use by {_holder(fd)} (lock file {path}); wait for it to finish "
                                  "or stop that process, then run again") from None
        held = True
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%H:%M:%S')}".encode(), 0)
        yield
    finally:
        if held:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
        os.close(fd)  # closing releases the lock
