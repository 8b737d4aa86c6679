"""The four open-world benchmarks (CUB-200-2011, Cars196, SOP, iNaturalist-2018): locate the official
files, parse them into one manifest table, verify the files on disk, and only then write the manifest.

Each data set has its own module (``tcm.data.cub`` ...) exposing ``BENCHMARK``; this module holds
what they share. Every check collects all its problems before failing, so one run tells the user
everything that is wrong (the message gives the count and the first few), and nothing is written
unless every check passed.
"""

from __future__ import annotations

import importlib
import os
import re
import stat
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable

import pandas as pd
from tqdm import tqdm

# safe_relpath: index paths must stay inside the data set folder (the same rule as every manifest's).
from tcm.data.download import Download
from tcm.data.manifest import DataError, safe_relpath, write_manifest
from tcm.data.problems import Problems

BENCHMARK_NAMES = ("cub", "cars196", "sop", "inat2018")
VERIFY_MODES = ("exists", "full")
# Labels are stored as int64 (manifest.csv, torch tensors): a class id outside 0 .. 2**63 - 1 cannot be one.
MAX_LABEL = 2**63 - 1
# An id field of an index file: ASCII digits only (str.isdigit() also passes '²', which int() refuses); a
# leading '-' is read so that a negative id is reported as such rather than as a malformed line.
INTEGER = re.compile(r"-?[0-9]+")


@dataclass(frozen=True)
class Benchmark:
    name: str
    title: str
    # Files, relative to the data set folder, whose presence identifies that folder (any one of them).
    markers: tuple[str, ...]
    # Usual folder names when --root is the parent of the data set folder.
    subdirs: tuple[str, ...]
    # Standard open-world split sizes: split -> (images, classes).
    counts: dict[str, tuple[int, int]]
    # data set folder -> table (path relative to the folder, label, split); raises DataError.
    parse: Callable[[Path], pd.DataFrame]
    # What to fetch, where to put it and the layout; ends every "not found" error.
    fetch_help: str
    download: Download | None = None
    # Maps the folder holding a marker to the folder the index paths are relative to, where they differ.
    refine_root: Callable[[Path], Path] | None = None

    def has_marker(self, folder: Path) -> bool:
        return any((folder / m).is_file() for m in self.markers)


def get_benchmark(name: str) -> Benchmark:
    if name not in BENCHMARK_NAMES:
        raise DataError(f"unknown benchmark {name!r}; expected one of {list(BENCHMARK_NAMES)}")
    return importlib.import_module(f"tcm.data.{name}").BENCHMARK


def locate_root(bench: Benchmark, root: Path) -> Path | None:
    """The data set folder: ``root`` itself, one of the usual subfolders, or the single child holding the marker."""
    root = Path(root)
    found = None
    if bench.has_marker(root):
        found = root
    else:
        found = next((root / sub for sub in bench.subdirs if bench.has_marker(root / sub)), None)
    if found is None and root.is_dir():
        hits = sorted(child for child in root.iterdir() if child.is_dir() and bench.has_marker(child))
        if len(hits) > 1:
            raise DataError(f"{bench.name}: several folders under {root} hold {bench.markers[0]} "
                            f"({', '.join(str(h) for h in hits)}); pass the one to use as --root")
        found = hits[0] if hits else None
    if found is not None and bench.refine_root is not None:
        found = bench.refine_root(found)
    return found


def not_found(bench: Benchmark, root: Path) -> DataError:
    return DataError(f"{bench.name}: {bench.markers[0]} not found in {root} or its subfolders. {bench.fetch_help}")


def read_lines(path: Path) -> list[tuple[int, str]]:
    """Non-blank lines with their 1-based line numbers; a missing or unreadable index file is a DataError."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataError(f"{path}: index file not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: cannot read index file ({e})") from None
    return [(i, line.strip()) for i, line in enumerate(text.splitlines(), start=1) if line.strip()]


def label_problem(value: int, what: str = "class id") -> str | None:
    """Why the id ``value`` cannot be used (negative, or too large for an int64 label), or None when it can."""
    if 0 <= value <= MAX_LABEL:
        return None
    return f"{what} {value} is out of range (ids must be 0 to {MAX_LABEL:,}; labels are int64)"


# --- verification -----------------------------------------------------------------------------

# What a complete file of these formats (PIL's names) ends with: JPEG's end-of-image marker, PNG's IEND
# chunk (type and CRC). A file cut short (an interrupted copy or extraction) lacks it; PIL's header parse
# alone cannot tell, and the full decode of `verify: full` costs a decode of every image.
END_MARKERS = {"JPEG": b"\xff\xd9", "MPO": b"\xff\xd9", "PNG": b"IEND\xaeB`\x82"}
# Bytes read from a file's end: enough to skip the zero padding some copies append.
TAIL_BYTES = 1024
# Ends a message about missing or damaged image files; the note where a file was found cut short.
FILES_FIX = ("replace the missing or damaged files (download or extract the data set again), then run "
             "`tcm data prepare` again")
TRUNCATED_NOTE = "a JPEG with data after its end marker passes `--verify full`, which decodes it instead"


def image_problem(path: str, size: int) -> str | None:
    """Why the image file ``path`` (``size`` bytes) is damaged, from its header and its last bytes only
    (no decode), or None when it looks complete."""
    from PIL import Image, UnidentifiedImageError

    try:
        with open(path, "rb") as f:
            with Image.open(f) as img:  # reads the header only
                fmt = img.format
            f.seek(max(0, size - TAIL_BYTES))
            tail = f.read().rstrip(b"\0")
    except UnidentifiedImageError:
        return "not an image (unknown format or damaged header)"
    except Exception as e:  # noqa: BLE001 - whatever PIL raises on a broken header is a problem with this file
        return f"cannot read the image header ({type(e).__name__}: {e})"
    end = END_MARKERS.get(fmt or "")
    if end is not None and not tail.endswith(end):
        marker = "end-of-image marker FFD9" if end.startswith(b"\xff") else "IEND chunk"
        return f"truncated {fmt} file (no {marker} at its end)"
    return None


def _stat_chunk(paths: list[str], images: bool = False) -> list[tuple[str, str]]:
    """``images``: also :func:`image_problem` for each regular, non-empty file."""
    bad = []
    for p in paths:
        try:
            st = os.stat(p)
        except FileNotFoundError:
            bad.append((p, "missing"))
            continue
        except OSError as e:
            bad.append((p, f"cannot stat ({e.strerror})"))
            continue
        # A folder has a non-zero size too; only a regular file (or a link to one) is an image.
        if stat.S_ISDIR(st.st_mode):
            bad.append((p, "a directory, not an image file"))
        elif not stat.S_ISREG(st.st_mode):
            bad.append((p, "not a regular file"))
        elif st.st_size == 0:
            bad.append((p, "empty file (0 bytes)"))
        elif images and (why := image_problem(p, st.st_size)) is not None:
            bad.append((p, why))
    return bad


def _decode_chunk(paths: list[str]) -> list[tuple[str, str]]:
    from PIL import Image, ImageFile

    # A truncated JPEG must fail here, whatever another import may have set.
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    bad = []
    for p in paths:
        try:
            with Image.open(p) as img:
                img.load()  # full decode: Image.verify() misses truncated scan data
        except Exception as e:  # noqa: BLE001 - any decoder failure is a problem with this file
            bad.append((p, f"cannot decode ({type(e).__name__}: {e})"))
    return bad


def _chunks(items: list[str], size: int) -> list[list[str]]:
    return [items[i:i + size] for i in range(0, len(items), size)]


def _run_chunks(fn: Callable[[list[str]], list[tuple[str, str]]], paths: list[str], desc: str, processes: bool,
                workers: int | None, chunk: int) -> list[tuple[str, str]]:
    if not paths:
        return []
    workers = max(1, min(workers or os.cpu_count() or 1, -(-len(paths) // chunk)))
    problems: list[tuple[str, str]] = []
    pool_cls = ProcessPoolExecutor if processes else ThreadPoolExecutor
    with tqdm(total=len(paths), desc=desc, unit="img", dynamic_ncols=True) as bar, pool_cls(workers) as pool:
        futures = {pool.submit(fn, c): len(c) for c in _chunks(paths, chunk)}
        for fut in as_completed(futures):
            problems.extend(fut.result())
            bar.update(futures[fut])
    # Completion order is arbitrary; the message should be the same on every run.
    return sorted(problems)


def check_files(paths: list[str], desc: str = "check files", workers: int | None = None,
                images: bool = False) -> list[tuple[str, str]]:
    """Every file exists, is a regular file (a folder is not an image) and is non-empty; with ``images``, its
    image header reads and a JPEG or PNG is not cut short (:func:`image_problem`). Threads: stat is I/O bound
    (and slow on network file systems)."""
    fn = partial(_stat_chunk, images=images)
    return _run_chunks(fn, paths, desc, processes=False, workers=workers or 16, chunk=2048)


def decode_files(paths: list[str], desc: str = "decode images", workers: int | None = None) -> list[tuple[str, str]]:
    """Every image decodes completely. Processes: JPEG decoding is CPU bound."""
    return _run_chunks(_decode_chunk, paths, desc, processes=True, workers=workers, chunk=128)


def split_counts(table: pd.DataFrame) -> dict[str, tuple[int, int]]:
    return {s: (int((table.split == s).sum()), int(table.label[table.split == s].nunique())) for s in ("train", "test")}


def check_counts(table: pd.DataFrame, expected: dict[str, tuple[int, int]]) -> list[str]:
    found = split_counts(table)
    return [f"{split} split: expected {expected[split][0]:,} images / {expected[split][1]:,} classes, "
            f"found {found[split][0]:,} images / {found[split][1]:,} classes "
            "(pass --allow-nonstandard-counts for a subset)"
            for split in ("train", "test") if found[split] != tuple(expected[split])]


def check_table_paths(table: pd.DataFrame, problems: Problems) -> None:
    bad = [p for p in table.path if not safe_relpath(p)]
    problems.extend(f"{p}: path escapes the data set folder" for p in bad)
    dup = table.path[table.path.duplicated()].unique()
    problems.extend(f"{p}: listed more than once" for p in dup)
    overlap = set(table.label[table.split == "train"]) & set(table.label[table.split == "test"])
    if overlap:
        problems.add(f"{len(overlap)} classes are in both train and test (e.g. {sorted(overlap)[:5]}); "
                     "open-world splits need disjoint classes")


# --- the data stage for one benchmark -------------------------------------------------------------

def resolve_root(bench: Benchmark, root: Path | str | None, download: bool = False) -> Path:
    """The data set folder under ``root``; with ``download``, fetch it first where a stable address exists."""
    if root is None:
        raise DataError(f"{bench.name}: no root folder given (params: datasets.<name>.root, CLI: --root DIR). "
                        f"{bench.fetch_help}")
    root = Path(root).expanduser()
    found = locate_root(bench, root)
    if found is None and download:
        if bench.download is None:
            raise DataError(f"{bench.name}: no stable public download address exists, so --download cannot fetch it. "
                            f"{bench.fetch_help}")
        from tcm.data.download import download_and_extract

        download_and_extract(bench.download, root)
        found = locate_root(bench, root)
    if found is None:
        raise not_found(bench, root)
    return found.resolve()


def build_table(bench: Benchmark, root: Path | str | None, *, allow_nonstandard_counts: bool = False,
                verify: str = "exists", download: bool = False,
                workers: int | None = None) -> tuple[Path, pd.DataFrame]:
    """Parse and verify one benchmark; returns (data set folder, table). Raises DataError listing every problem."""
    if verify not in VERIFY_MODES:
        raise DataError(f"verify must be one of {list(VERIFY_MODES)}, but got {verify!r}")
    folder = resolve_root(bench, root, download=download)
    table = bench.parse(folder)
    problems = Problems(f"{bench.name} at {folder}")
    check_table_paths(table, problems)
    problems.raise_if_any()  # bad paths are not safe to stat
    paths = [str(folder / p) for p in table.path]
    # verify: full decodes every image anyway (and so accepts data after a JPEG's end marker).
    bad_files = check_files(paths, desc=f"check {bench.name} files", workers=workers, images=verify == "exists")
    problems.extend(f"{p}: {why}" for p, why in bad_files)
    if not allow_nonstandard_counts:
        problems.extend(check_counts(table, bench.counts))
    if verify == "full":
        # Files already reported missing or empty are not decoded again (one problem per file).
        skip = {p for p, _ in bad_files}
        bad_images = decode_files([p for p in paths if p not in skip], desc=f"decode {bench.name} images",
                                  workers=workers)
        problems.extend(f"{p}: {why}" for p, why in bad_images)
    else:
        bad_images = []
    if bad_files or bad_images:
        truncated = any(why.startswith("truncated") for _, why in bad_files)
        problems.fix = f"{FILES_FIX}; {TRUNCATED_NOTE}" if truncated else FILES_FIX
    problems.raise_if_any()
    return folder, table


def prepare_benchmark(name: str, root: Path | str | None, out_dir: Path | str, *,
                      allow_nonstandard_counts: bool = False, verify: str = "exists", download: bool = False,
                      workers: int | None = None) -> Path:
    """Verify one benchmark and write ``out_dir/manifest.csv`` (paths relative to the data set folder)."""
    bench = get_benchmark(name)
    folder, table = build_table(bench, root, allow_nonstandard_counts=allow_nonstandard_counts, verify=verify,
                                download=download, workers=workers)
    # Written only now, after every check passed; write_manifest replaces files atomically.
    return write_manifest(out_dir, table, image_root=folder, source=name)
