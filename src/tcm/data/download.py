"""Download with a progress bar and resumable transfers (HTTP Range), SHA-256 check, safe extraction.

Only CUB-200-2011 has a stable public address; the other benchmarks are user-provided (see
docs/data.md). ``file://`` URLs work too (no resume needed there), which is what the tests use.
"""

from __future__ import annotations

import hashlib
import lzma
import os
import shutil
import tarfile
import urllib.error
import urllib.request
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from tqdm import tqdm

from tcm.data.manifest import DataError
from tcm.data.problems import Problems


@dataclass(frozen=True)
class Download:
    """A stable public address with a checksum taken from a published source (see the module that uses it)."""

    url: str
    filename: str
    size: int  # bytes
    sha256: str

CHUNK = 1 << 20
USER_AGENT = "tcm-reproducibility/0.1"
# Archives are extracted into TARGET/STAGING/<archive name> and moved into TARGET only once complete. Two levels
# down, so that a copy left by a killed run is never taken for a data set folder (see specs.locate_root).
STAGING = ".tcm-extracting"
# What a truncated or damaged archive raises while it is read (OSError without errno too: BadGzipFile, bz2).
CORRUPT = (tarfile.TarError, zipfile.BadZipFile, EOFError, zlib.error, lzma.LZMAError)


def sha256_file(path: Path | str, chunk: int = CHUNK) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def check_sha256(path: Path | str, expected: str) -> None:
    found = sha256_file(path)
    if found != expected.lower():
        raise DataError(f"{path}: SHA-256 mismatch, expected {expected.lower()}, found {found} "
                        "(1 problem; delete the file and download it again)")


def download_file(url: str, dest: Path | str, sha256: str | None = None, size: int | None = None,
                  timeout: float = 60.0) -> Path:
    """Fetch ``url`` to ``dest``: resumes from ``dest.part`` with an HTTP Range request, then checks SHA-256.

    A finished ``dest`` whose checksum matches is not fetched again. The part file is renamed to
    ``dest`` only after the checksum matched, so ``dest`` is never a partial or corrupt download.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.is_file() and (sha256 is None or sha256_file(dest) == sha256.lower()):
        return dest
    part = dest.with_name(dest.name + ".part")
    have = part.stat().st_size if part.is_file() else 0
    if size is not None and have > size:  # a stale part file of something else: start over
        part.unlink()
        have = 0
    if size is None or have < size:
        request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
        if have:
            request.add_header("Range", f"bytes={have}-")
        try:
            response = urllib.request.urlopen(request, timeout=timeout)  # noqa: S310 - addresses come from code
        except urllib.error.HTTPError as e:
            if e.code == 416 and have:  # range not satisfiable: the part file is already complete
                response = None
            else:
                raise DataError(f"{url}: download failed (HTTP {e.code} {e.reason}); fetch {dest.name} by hand "
                                f"and put it at {dest}") from None
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", e)
            raise DataError(f"{url}: download failed ({reason}); fetch {dest.name} by hand and put it at "
                            f"{dest}") from None
        if response is not None:
            with response:
                # 206: the server honoured the range and we append; anything else restarts from byte 0.
                resumed = have and getattr(response, "status", None) == 206
                if not resumed:
                    have = 0
                length = response.headers.get("Content-Length")
                total = have + int(length) if length and length.isdigit() else size
                with open(part, "ab" if resumed else "wb") as f, tqdm(
                        total=total, initial=have, unit="B", unit_scale=True, unit_divisor=1024,
                        desc=f"download {dest.name}", dynamic_ncols=True) as bar:
                    for block in iter(lambda: response.read(CHUNK), b""):
                        f.write(block)
                        bar.update(len(block))
    if size is not None and part.stat().st_size != size:
        raise DataError(f"{part}: expected {size:,} bytes, found {part.stat().st_size:,} (1 problem; run again to "
                        "resume the download)")
    if sha256 is not None:
        try:
            check_sha256(part, sha256)
        except DataError:
            part.unlink()  # complete but wrong: resuming it could never succeed
            raise
    os.replace(part, dest)
    return dest


def _member_problems(names_and_kinds: list[tuple[str, str]], target: Path) -> list[str]:
    target = target.resolve()
    bad = []
    for name, kind in names_and_kinds:
        if kind == "link":
            bad.append(f"{name}: links are not extracted")
            continue
        if kind == "special":
            bad.append(f"{name}: device, FIFO or other special file")
            continue
        p = PurePosixPath(name.replace("\\", "/"))
        dest = (target / p).resolve()
        if p.is_absolute() or (dest != target and target not in dest.parents):
            bad.append(f"{name}: path escapes the target folder")
    return bad


def _move_into(src: Path, dst: Path) -> None:
    """Move the contents of ``src`` into ``dst``, merging folders that exist already (as extracting there would)."""
    for child in sorted(src.iterdir()):
        dest = dst / child.name
        if child.is_dir() and dest.is_dir():
            _move_into(child, dest)
        else:
            os.replace(child, dest)


def safe_extract(archive: Path | str, target: Path | str) -> Path:
    """Extract a tar or zip archive into ``target``; every member is checked before anything is written.

    Rejected: absolute paths, '..' that leaves ``target``, symbolic and hard links, device files. A
    truncated or corrupt archive is a DataError and leaves nothing in ``target``: the members go to a
    staging folder first and are moved into ``target`` only once all of them were extracted.
    """
    archive, target = Path(archive), Path(target)
    target.mkdir(parents=True, exist_ok=True)
    problems = Problems(f"{archive}: unsafe archive, nothing extracted")
    staging = target / STAGING / archive.name
    shutil.rmtree(target / STAGING, ignore_errors=True)  # left by a killed run
    try:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as zf:
                infos = zf.infolist()
                # A zip entry is a symlink when its Unix mode (high 16 bits of external_attr) says so.
                kinds = [(i.filename, "link" if (i.external_attr >> 16) & 0o170000 == 0o120000 else "file")
                         for i in infos]
                problems.extend(_member_problems(kinds, target))
                problems.raise_if_any()
                zf.extractall(staging)
        else:
            try:
                tf = tarfile.open(archive)
            except (tarfile.TarError, OSError) as e:
                raise DataError(f"{archive}: not a readable tar or zip archive, or an incomplete one ({e}); delete "
                                "it and download it again") from None
            with tf:
                members = tf.getmembers()  # reads the whole archive: a truncated one fails here already
                kinds = [(m.name, "link" if m.issym() or m.islnk() else "file" if m.isfile() or m.isdir()
                          else "special") for m in members]
                problems.extend(_member_problems(kinds, target))
                problems.raise_if_any()
                # The 'data' filter (Python >= 3.11.4) repeats these checks and drops unsafe permission bits.
                tf.extractall(staging, filter="data")
        if staging.is_dir():  # an archive without members creates nothing
            _move_into(staging, target)
    except DataError:
        raise
    except tarfile.FilterError as e:
        raise DataError(f"{archive}: unsafe archive, nothing extracted: 1 problem: {e}") from None
    except (*CORRUPT, OSError) as e:
        if isinstance(e, OSError) and e.errno is not None:  # the disk, not the archive: full, read-only ...
            raise DataError(f"{archive}: extracting into {target} failed ({e})") from None
        raise DataError(f"{archive}: incomplete or corrupt archive ({type(e).__name__}: {e}), nothing extracted; "
                        "delete it and download it again") from None
    finally:
        shutil.rmtree(target / STAGING, ignore_errors=True)
    return target


def download_and_extract(spec: Download, root: Path | str) -> Path:
    """Download ``spec`` into ``root`` (resumable, SHA-256 checked) and extract it there safely."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(root).free
    if free < 2 * spec.size:  # archive + extracted copy
        raise DataError(f"{root}: {free / 1e9:.1f} GB free, but downloading and extracting {spec.filename} needs "
                        f"about {2 * spec.size / 1e9:.1f} GB (1 problem)")
    archive = download_file(spec.url, root / spec.filename, sha256=spec.sha256, size=spec.size)
    return safe_extract(archive, root)
