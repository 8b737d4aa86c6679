"""Download (file:// and a loopback HTTP server with Range support), SHA-256, and safe extraction.
Nothing here reaches the network: the server listens on 127.0.0.1 inside the test."""

from __future__ import annotations

import dataclasses
import hashlib
import http.server
import io
import tarfile
import threading
import zipfile
from pathlib import Path
from typing import Iterator

import pytest

from tcm.data import DataError
from tcm.data.download import Download, check_sha256, download_and_extract, download_file, safe_extract, sha256_file
from tcm.data.specs import get_benchmark, prepare_benchmark, resolve_root
from tcm.data.synthetic import make_tiny_cub

PAYLOAD = bytes(range(256)) * 4096  # 1 MiB


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_cub_download_spec_is_pinned() -> None:
    spec = get_benchmark("cub").download
    assert spec is not None and spec.url.startswith("https://data.caltech.edu/records/65de6-vp158/")
    assert spec.size == 1_150_585_339 and len(spec.sha256) == 64


def test_sha256(tmp_path: Path) -> None:
    f = tmp_path / "a.bin"
    f.write_bytes(PAYLOAD)
    assert sha256_file(f) == sha(PAYLOAD)
    check_sha256(f, sha(PAYLOAD).upper())
    with pytest.raises(DataError, match=rf"a.bin: SHA-256 mismatch, expected {'0' * 64}, found {sha(PAYLOAD)}"):
        check_sha256(f, "0" * 64)


def test_download_file_url(tmp_path: Path) -> None:
    src = tmp_path / "src.bin"
    src.write_bytes(PAYLOAD)
    dest = download_file(src.as_uri(), tmp_path / "dl" / "x.bin", sha256=sha(PAYLOAD), size=len(PAYLOAD))
    assert dest.read_bytes() == PAYLOAD
    assert not (tmp_path / "dl" / "x.bin.part").exists()


def test_download_wrong_checksum(tmp_path: Path) -> None:
    src = tmp_path / "src.bin"
    src.write_bytes(PAYLOAD)
    with pytest.raises(DataError, match="SHA-256 mismatch"):
        download_file(src.as_uri(), tmp_path / "x.bin", sha256="f" * 64)
    # Neither a corrupt file nor a part file that could never be completed is left behind.
    assert not (tmp_path / "x.bin").exists() and not (tmp_path / "x.bin.part").exists()


def test_download_wrong_size(tmp_path: Path) -> None:
    src = tmp_path / "src.bin"
    src.write_bytes(PAYLOAD[:1000])
    with pytest.raises(DataError, match="expected 2,000 bytes, found 1,000"):
        download_file(src.as_uri(), tmp_path / "x.bin", size=2000)


def test_download_unreachable(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="download failed"):
        download_file((tmp_path / "nothing.bin").as_uri(), tmp_path / "x.bin")


class RangeHandler(http.server.BaseHTTPRequestHandler):
    """Serves PAYLOAD and honours 'Range: bytes=N-' (as data.caltech.edu's storage does)."""

    ranges_seen: list[str] = []

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        rng = self.headers.get("Range")
        RangeHandler.ranges_seen.append(rng or "")
        start = int(rng.removeprefix("bytes=").rstrip("-")) if rng else 0
        body = PAYLOAD[start:]
        self.send_response(206 if rng else 200)
        self.send_header("Content-Length", str(len(body)))
        if rng:
            self.send_header("Content-Range", f"bytes {start}-{len(PAYLOAD) - 1}/{len(PAYLOAD)}")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[str]:
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), RangeHandler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    RangeHandler.ranges_seen = []
    yield f"http://127.0.0.1:{httpd.server_address[1]}/file.bin"
    httpd.shutdown()
    httpd.server_close()


def test_download_resumes_with_range(tmp_path: Path, server: str) -> None:
    dest = tmp_path / "file.bin"
    # An interrupted earlier transfer left the first 300 kB.
    (tmp_path / "file.bin.part").write_bytes(PAYLOAD[:300_000])
    download_file(server, dest, sha256=sha(PAYLOAD), size=len(PAYLOAD))
    assert dest.read_bytes() == PAYLOAD
    assert RangeHandler.ranges_seen == ["bytes=300000-"]
    # A complete file with the right checksum is not fetched again.
    download_file(server, dest, sha256=sha(PAYLOAD), size=len(PAYLOAD))
    assert len(RangeHandler.ranges_seen) == 1


def make_tar(path: Path, members: list[tuple[str, bytes | None, str]]) -> Path:
    """members: (name, data, kind) with kind 'file', 'symlink' (data = link target) or 'hardlink'."""
    with tarfile.open(path, "w:gz") as tf:
        for name, data, kind in members:
            info = tarfile.TarInfo(name)
            if kind == "file":
                info.size = len(data or b"")
                tf.addfile(info, io.BytesIO(data or b""))
            else:
                info.type = tarfile.SYMTYPE if kind == "symlink" else tarfile.LNKTYPE
                info.linkname = (data or b"").decode()
                tf.addfile(info)
    return path


def test_safe_extract_good_tar(tmp_path: Path) -> None:
    archive = make_tar(tmp_path / "ok.tgz", [("top/a.txt", b"a", "file"), ("top/sub/b.txt", b"b", "file")])
    safe_extract(archive, tmp_path / "out")
    assert (tmp_path / "out" / "top" / "sub" / "b.txt").read_bytes() == b"b"


@pytest.mark.parametrize("members, message", [
    ([("ok.txt", b"x", "file"), ("../evil.txt", b"x", "file")], r"\.\./evil.txt: path escapes the target folder"),
    ([("/tmp/abs_evil.txt", b"x", "file")], r"abs_evil.txt: path escapes the target folder"),
    ([("a/../../evil.txt", b"x", "file")], r"evil.txt: path escapes the target folder"),
    ([("link", b"/etc/passwd", "symlink")], r"link: links are not extracted"),
    ([("hard", b"../outside", "hardlink")], r"hard: links are not extracted"),
])
def test_safe_extract_rejects_escaping_members(tmp_path: Path, members: list, message: str) -> None:
    archive = make_tar(tmp_path / "bad.tgz", members)
    n_bad = len(members) - (members[0][0] == "ok.txt")
    with pytest.raises(DataError, match=rf"unsafe archive, nothing extracted: {n_bad} problem.*{message}"):
        safe_extract(archive, tmp_path / "out")
    # Checked before writing: not even the harmless member is extracted.
    assert not any((tmp_path / "out").iterdir())
    assert not (tmp_path / "evil.txt").exists()


def test_safe_extract_rejects_escaping_zip_member(tmp_path: Path) -> None:
    archive = tmp_path / "bad.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("fine.txt", "x")
        zf.writestr("../../evil.txt", "x")
    with pytest.raises(DataError, match=r"1 problem: \.\./\.\./evil.txt: path escapes the target folder"):
        safe_extract(archive, tmp_path / "out")
    assert not (tmp_path / "out" / "fine.txt").exists()


def test_safe_extract_not_an_archive(tmp_path: Path) -> None:
    (tmp_path / "x.tgz").write_bytes(b"garbage")
    with pytest.raises(DataError, match="not a readable tar or zip archive"):
        safe_extract(tmp_path / "x.tgz", tmp_path / "out")


def cub_archive(tmp_path: Path) -> Path:
    folder = make_tiny_cub(tmp_path / "src", size=(32, 24))
    archive = tmp_path / "CUB_200_2011.tgz"
    with tarfile.open(archive, "w:gz") as tf:
        tf.add(folder, arcname="CUB_200_2011")
    return archive


def test_download_extract_and_prepare_cub(tmp_path: Path) -> None:
    """--download end to end, with the CaltechDATA address swapped for a local file:// copy."""
    archive = cub_archive(tmp_path)
    data = archive.read_bytes()
    spec = Download(url=archive.as_uri(), filename="CUB_200_2011.tgz", size=len(data), sha256=sha(data))
    bench = dataclasses.replace(get_benchmark("cub"), download=spec)
    root = tmp_path / "datasets"
    folder = resolve_root(bench, root, download=True)
    assert folder == (root / "CUB_200_2011").resolve() and (root / "CUB_200_2011.tgz").is_file()
    out = prepare_benchmark("cub", root, tmp_path / "out", allow_nonstandard_counts=True)
    assert out.is_file()


def test_download_with_wrong_checksum_extracts_nothing(tmp_path: Path) -> None:
    archive = cub_archive(tmp_path)
    spec = Download(url=archive.as_uri(), filename="CUB_200_2011.tgz", size=archive.stat().st_size, sha256="0" * 64)
    root = tmp_path / "datasets"
    with pytest.raises(DataError, match="SHA-256 mismatch"):
        download_and_extract(spec, root)
    assert sorted(p.name for p in root.iterdir()) == []
