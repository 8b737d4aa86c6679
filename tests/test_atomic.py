"""Atomic writes: a failed write leaves the previous file; a written file follows the umask."""

from __future__ import annotations

import os

import pytest

from tcm.atomic import atomic_path, write_text


def test_failed_write_keeps_the_previous_file(tmp_path) -> None:
    path = tmp_path / "result.txt"
    write_text(path, "old")
    with pytest.raises(RuntimeError):
        with atomic_path(path) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed mid-write")
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["result.txt"]


@pytest.mark.parametrize("umask,mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_written_files_follow_the_umask(tmp_path, umask, mode) -> None:
    old = os.umask(umask)
    try:
        write_text(tmp_path / "r.txt", "x")
    finally:
        os.umask(old)
    assert os.stat(tmp_path / "r.txt").st_mode & 0o777 == mode
