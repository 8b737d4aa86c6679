"""Atomic writes: a failed write leaves the previous file (or folder); a written file follows the umask."""

from __future__ import annotations

import os

import pytest

from tcm.atomic import atomic_dir, atomic_path, write_text


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


def _folder(path) -> dict[str, str]:
    return {p.name: p.read_text() for p in sorted(path.iterdir())}


def test_folder_is_replaced_as_a_whole_or_not_at_all(tmp_path) -> None:
    seed = tmp_path / "seed-0"
    with atomic_dir(seed) as stage:
        (stage / "metrics.json").write_text("old metrics")
        (stage / "settings.json").write_text("old settings")
    assert _folder(seed) == {"metrics.json": "old metrics", "settings.json": "old settings"}
    with pytest.raises(OSError):  # e.g. a full disk after the first of two files
        with atomic_dir(seed) as stage:
            (stage / "settings.json").write_text("new settings")
            raise OSError(28, "No space left on device")
    assert _folder(seed) == {"metrics.json": "old metrics", "settings.json": "old settings"}
    with atomic_dir(seed) as stage:
        (stage / "metrics.json").write_text("new metrics")
    assert _folder(seed) == {"metrics.json": "new metrics"}  # nothing of the old folder is mixed in
    assert [p.name for p in tmp_path.iterdir()] == ["seed-0"]
    assert os.stat(seed).st_mode & 0o777 == 0o777 & ~_current_umask()


def _current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask
