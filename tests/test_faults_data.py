"""Data-layer faults: each is one line naming the file (and line, key or value) at fault, a TcmError that the
command line prints as `tcm: error: ...` with exit status 2, raised before anything is written, so that an
earlier good manifest survives. Tiny real-format copies are built under tmp_path; nothing reaches the network."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
from tqdm import tqdm

from tcm.cli import main as cli_main
from tcm.data import DataError, read_manifest
from tcm.data.download import safe_extract
from tcm.data.specs import MAX_LABEL, get_benchmark, prepare_benchmark
from tcm.data.synthetic import make_tiny
from tcm.errors import TcmError

SMALL = (48, 36)  # pixels; the formats, not the image sizes, are under test here


@pytest.fixture(autouse=True)
def quiet_progress(monkeypatch: pytest.MonkeyPatch) -> None:
    # Progress bars also go to stderr; without them stderr must be exactly the one error line.
    import tcm.data.download
    import tcm.data.specs

    for module in (tcm.data.specs, tcm.data.download):
        monkeypatch.setattr(module, "tqdm", functools.partial(tqdm, disable=True))


def fresh(name: str, tmp_path: Path) -> Path:
    return make_tiny(name, tmp_path / name, size=SMALL)


def earlier_manifest(name: str, folder: Path, out: Path) -> bytes:
    """A good manifest from the intact copy, as an earlier run left it; returns its bytes."""
    return prepare_benchmark(name, folder, out, allow_nonstandard_counts=True).read_bytes()


def cli_error(capsys: pytest.CaptureFixture, args: list[str | Path]) -> str:
    """Runs the command line, which must fail with status 2 and exactly one line on stderr; returns that line."""
    assert cli_main([str(a) for a in args]) == 2
    err = capsys.readouterr().err
    assert err.endswith("\n") and err.count("\n") == 1, err
    assert err.startswith("tcm: error: ") and "Traceback" not in err
    return err.rstrip("\n")


def prepare_args(name: str, root: Path, out: Path, *extra: str) -> list[str | Path]:
    return ["data", "prepare", name, "--root", root, "--out", out, *extra]


# --- 1. Cars196: a class id beyond class_names ---------------------------------------------------

@pytest.mark.parametrize("allow", [True, False])
def test_cars196_class_id_beyond_class_names(allow: bool, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from scipy.io import loadmat, savemat

    folder, out = fresh("cars196", tmp_path), tmp_path / "out"
    before = earlier_manifest("cars196", folder, out)
    mat_path = folder / "cars_annos.mat"
    mat = loadmat(mat_path)
    assert mat["class_names"].size == 4
    mat["annotations"][0, 2]["class"] = np.array([[9]], np.uint8)
    savemat(mat_path, {k: v for k, v in mat.items() if not k.startswith("__")})
    # Refused whatever allow_nonstandard_counts says: before, with it, class 9 became a third test class.
    err = cli_error(capsys, prepare_args("cars196", folder, out, *(["--allow-nonstandard-counts"] if allow else [])))
    assert (f"{mat_path} annotation 3 (car_ims/000003.jpg): class id 9 is beyond the 4 entries of class_names"
            in err)
    assert (out / "manifest.csv").read_bytes() == before


# --- 2. An empty or damaged manifest.csv ---------------------------------------------------------

@pytest.mark.parametrize("content, message", [
    (b"", "empty file (no header, no rows)"),
    (b"path,label,split\n", "no rows (header only)"),
    (b"path,label\nimages/a.jpg,1\n", "missing columns ['split']"),
    (b"path,label,split\nimages/a.jpg,1,train\nimages/b.jpg,2,test,x,y\n", "not a readable CSV file (Error tokenizing"),
])
def test_damaged_manifest(content: bytes, message: str, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    data = tmp_path / "data" / "tinycub"
    earlier_manifest("cub", fresh("cub", tmp_path), data)
    (data / "manifest.csv").write_bytes(content)
    with pytest.raises(DataError) as err:
        read_manifest(data)
    msg = str(err.value)
    assert msg.startswith(f"{data / 'manifest.csv'}: {message}") and "\n" not in msg
    assert msg.endswith("re-run `tcm data prepare tinycub` (or `dvc repro`)")
    # Through the command line (preprocess reads a prepared manifest): one line, and nothing written.
    line = cli_error(capsys, ["data", "preprocess", "--in", data, "--out", tmp_path / "pre"])
    assert line == f"tcm: error: {msg}"
    assert not (tmp_path / "pre").exists()


@pytest.mark.parametrize("content", [b"", b"[]", b'{"source": "cub"}'])
def test_damaged_dataset_json(content: bytes, tmp_path: Path) -> None:
    data = tmp_path / "data" / "tinycub"
    earlier_manifest("cub", fresh("cub", tmp_path), data)
    (data / "dataset.json").write_bytes(content)
    with pytest.raises(DataError, match=r"dataset.json: not a valid data set description .*tcm data prepare tinycub"):
        read_manifest(data)


# --- 3. A truncated or corrupt archive -------------------------------------------------------------

def cub_tgz(tmp_path: Path) -> Path:
    folder = make_tiny("cub", tmp_path / "src", size=(32, 24))
    archive = tmp_path / "CUB_200_2011.tgz"
    with tarfile.open(archive, "w:gz") as tf:
        tf.add(folder, arcname="CUB_200_2011")
    return archive


@pytest.mark.parametrize("keep", [0.05, 0.5, 0.9])
def test_truncated_tgz(keep: float, tmp_path: Path) -> None:
    archive = cub_tgz(tmp_path)
    data = archive.read_bytes()
    archive.write_bytes(data[:int(len(data) * keep)])
    target = tmp_path / "root"
    with pytest.raises(TcmError) as err:
        safe_extract(archive, target)
    msg = str(err.value)
    assert msg.startswith(f"{archive}: ") and "\n" not in msg
    assert "incomplete" in msg and "delete it and download it again" in msg
    assert list(target.iterdir()) == []  # not even a staging folder


def test_truncated_tgz_through_download(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                        capsys: pytest.CaptureFixture) -> None:
    """`data prepare cub --download` with the CaltechDATA address swapped for a local, truncated archive."""
    import tcm.data.cub
    from tcm.data.download import Download

    out = tmp_path / "out"
    before = earlier_manifest("cub", fresh("cub", tmp_path), out)
    archive = cub_tgz(tmp_path)
    data = archive.read_bytes()[:archive.stat().st_size // 2]
    archive.write_bytes(data)
    spec = Download(url=archive.as_uri(), filename=archive.name, size=len(data),
                    sha256=hashlib.sha256(data).hexdigest())
    monkeypatch.setattr(tcm.data.cub, "BENCHMARK", dataclasses.replace(get_benchmark("cub"), download=spec))
    root = tmp_path / "datasets"
    err = cli_error(capsys, prepare_args("cub", root, out, "--download", "--allow-nonstandard-counts"))
    assert err.startswith(f"tcm: error: {root / archive.name}: incomplete or corrupt archive")
    assert err.endswith("delete it and download it again")
    assert sorted(p.name for p in root.iterdir()) == [archive.name]  # no CUB_200_2011/ that looks extracted
    assert (out / "manifest.csv").read_bytes() == before


def test_corrupt_member_leaves_no_partial_folder(tmp_path: Path) -> None:
    """A damaged member is found only while extracting (a zip's CRC): the members before it are not left behind,
    not even in a folder that existed before."""
    archive = tmp_path / "a.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("top/a.txt", b"A" * 1000)
        zf.writestr("top/b.txt", b"B" * 1000)
    raw = bytearray(archive.read_bytes())
    raw[raw.index(b"B" * 1000) + 500] ^= 0xFF
    archive.write_bytes(bytes(raw))
    target = tmp_path / "root"
    (target / "top").mkdir(parents=True)
    (target / "top" / "old.txt").write_text("kept")
    with pytest.raises(DataError, match=r"a.zip: incomplete or corrupt archive \(BadZipFile: .*b.txt.*delete it"):
        safe_extract(archive, target)
    assert sorted(p.relative_to(target).as_posix() for p in target.rglob("*")) == ["top", "top/old.txt"]


def test_extract_merges_into_existing_folder(tmp_path: Path) -> None:
    archive = tmp_path / "a.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("top/a.txt", "new")
        zf.writestr("top/sub/b.txt", "b")
    target = tmp_path / "root"
    (target / "top").mkdir(parents=True)
    (target / "top" / "a.txt").write_text("old")
    (target / "top" / "old.txt").write_text("kept")
    safe_extract(archive, target)
    assert (target / "top" / "a.txt").read_text() == "new" and (target / "top" / "old.txt").read_text() == "kept"
    assert (target / "top" / "sub" / "b.txt").read_text() == "b"
    assert sorted(p.name for p in target.iterdir()) == ["top"]


# --- 4. Empty index files; class ids that cannot be int64 labels ---------------------------------

def test_cub_empty_index_files(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    folder, out = fresh("cub", tmp_path), tmp_path / "out"
    before = earlier_manifest("cub", folder, out)
    for name in ("images.txt", "image_class_labels.txt", "train_test_split.txt"):
        (folder / name).write_text("")
    err = cli_error(capsys, prepare_args("cub", folder, out, "--allow-nonstandard-counts"))
    assert f"{folder / 'images.txt'}: lists nothing (empty file" in err
    assert f"{folder / 'image_class_labels.txt'}: lists nothing (empty file" in err
    assert "manifest.csv" not in err and "dtype" not in err  # before: about the output manifest's label dtype
    assert (out / "manifest.csv").read_bytes() == before


@pytest.mark.parametrize("name, rel", [("sop", "Ebay_train.txt"), ("inat2018",
                                                                   "Inat_dataset_splits/Inaturalist_test_set1.txt")])
def test_index_file_without_images(name: str, rel: str, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    folder, out = fresh(name, tmp_path), tmp_path / "out"
    before = earlier_manifest(name, folder, out)
    path = folder / rel
    path.write_text(path.read_text().splitlines()[0] + "\n" if name == "sop" else "")
    err = cli_error(capsys, prepare_args(name, folder, out, "--allow-nonstandard-counts"))
    assert f"{path}: no images listed" in err
    assert (out / "manifest.csv").read_bytes() == before


def _set_class_id(name: str, folder: Path, value: int) -> tuple[Path, int, str]:
    """Puts ``value`` as the class id of one index line; returns (file, line number, what the message calls it)."""
    if name == "sop":
        path, n = folder / "Ebay_train.txt", 2
        lines = path.read_text().splitlines()
        parts = lines[n - 1].split()
        parts[1] = str(value)
        what = "class id"
    elif name == "inat2018":
        path, n = folder / "Inat_dataset_splits" / "Inaturalist_test_set1.txt", 1
        lines = path.read_text().splitlines()
        parts = lines[n - 1].split("/")
        parts[-2] = str(value)
        what = "category id"
    else:  # cub: the labels are the ids of classes.txt
        path, n = folder / "classes.txt", 1
        lines = path.read_text().splitlines()
        parts = lines[n - 1].split(maxsplit=1)
        parts[0] = str(value)
        what = "class id"
    lines[n - 1] = ("/" if name == "inat2018" else " ").join(parts)
    path.write_text("\n".join(lines) + "\n")
    return path, n, what


@pytest.mark.parametrize("value", [10**23, MAX_LABEL + 1, -3])
@pytest.mark.parametrize("name", ["sop", "inat2018", "cub"])
def test_class_id_not_an_int64_label(name: str, value: int, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    folder, out = fresh(name, tmp_path), tmp_path / "out"
    before = earlier_manifest(name, folder, out)
    path, n, what = _set_class_id(name, folder, value)
    err = cli_error(capsys, prepare_args(name, folder, out, "--allow-nonstandard-counts"))
    assert f"{path} line {n}: {what} {value} is out of range" in err
    assert "manifest.csv" not in err and "dtype" not in err
    assert (out / "manifest.csv").read_bytes() == before


def test_largest_int64_class_id_is_accepted(tmp_path: Path) -> None:
    folder = fresh("sop", tmp_path)
    _set_class_id("sop", folder, MAX_LABEL)
    out = prepare_benchmark("sop", folder, tmp_path / "out", allow_nonstandard_counts=True)
    table = read_manifest(out.parent).table
    assert table.label.max() == MAX_LABEL and str(table.label.dtype) == "int64"


# --- 5. A directory where an image file is listed ------------------------------------------------

@pytest.mark.parametrize("verify", ["exists", "full"])
def test_directory_in_place_of_image(verify: str, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    folder, out = fresh("cub", tmp_path), tmp_path / "out"
    before = earlier_manifest("cub", folder, out)
    victim = folder / get_benchmark("cub").parse(folder).path.iloc[0]
    victim.unlink()
    victim.mkdir()
    err = cli_error(capsys, prepare_args("cub", folder, out, "--allow-nonstandard-counts", "--verify", verify,
                                         "--workers", "1"))
    # One problem (full does not decode what exists already refused); before, exists passed and wrote a manifest.
    assert f": 1 problem: {victim}: a directory, not an image file. Fix: replace the missing or damaged files" in err
    assert (out / "manifest.csv").read_bytes() == before
