"""Atomic file writes: a reader never sees a half-written result, and an interrupted write
leaves the previous file in place.

A write the environment refuses (a full disk, a read-only folder, a file-size limit) is raised as
:class:`WriteError`: one line naming the path and the reason, which the command line prints without
a traceback. The previous file is still in place then, which the message of the caller says.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from tcm.errors import TcmError

# errno values that mean "the environment refuses this write", not a bug: each gets a plain reason.
_REASONS = {
    errno.ENOSPC: "no space left on device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied (a read-only folder?)",
    errno.EPERM: "operation not permitted (a read-only folder?)",
    errno.EFBIG: "file too large (ulimit -f?)",
}


class WriteError(TcmError, OSError):
    """The environment refused a write (full disk, read-only folder, size limit); names the path."""


def refused_write(e: BaseException) -> bool:
    """Whether ``e`` is an OSError the environment gives (full disk, read-only, ...), not a bug."""
    return isinstance(e, OSError) and not isinstance(e, TcmError) and e.errno in _REASONS


def free_bytes(path: Path | str) -> int | None:
    """Bytes free for this user on the file system of ``path`` (its nearest existing folder)."""
    path = Path(path).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    try:
        return shutil.disk_usage(path).free
    except OSError:
        return None


def write_error(path: Path | str, e: OSError, kept: str = "") -> WriteError:
    """A one-line :class:`WriteError` for ``e`` raised writing ``path``; ``kept`` says what is still there."""
    reason = _REASONS.get(e.errno or 0, e.strerror or str(e))
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        free = free_bytes(path)
        if free is not None:
            reason += f" ({free / 2**20:.1f} MiB free)"
    out = WriteError(f"cannot write {path}: {reason}{'; ' + kept if kept else ''}")
    out.errno = e.errno
    return out


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _kept(path: Path) -> str:
    return "the previous file is kept" if path.is_file() else ""


@contextmanager
def atomic_path(path: Path | str) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; it replaces ``path`` only if the block succeeds.
    An OSError of a full disk or a read-only folder becomes a :class:`WriteError` naming ``path``."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
    except OSError as e:
        if refused_write(e):
            raise write_error(path, e, _kept(path)) from None
        raise
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        # mkstemp creates files readable by the owner only; results are shared like any other file.
        os.chmod(tmp_path, 0o666 & ~_umask())
        os.replace(tmp_path, path)
    except OSError as e:
        if refused_write(e):
            raise write_error(path, e, _kept(path)) from None
        raise
    finally:
        tmp_path.unlink(missing_ok=True)


def write_text(path: Path | str, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: Path | str, data: Any) -> None:
    write_text(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


@contextmanager
def atomic_dir(path: Path | str) -> Iterator[Path]:
    """Yield an empty staging folder beside ``path``; it replaces the folder ``path`` as a whole only
    if the block succeeds, so readers see the old files or the new ones, never a mix.

    POSIX cannot swap two folders in one rename: the old one is moved aside first, so for an instant
    ``path`` is absent (read as "not there yet", never as mixed)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    aside = stage.with_suffix(".old")
    try:
        yield stage
        os.chmod(stage, 0o777 & ~_umask())
        if path.exists():
            os.replace(path, aside)
        os.replace(stage, path)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
        shutil.rmtree(aside, ignore_errors=True)
