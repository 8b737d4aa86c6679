"""Preprocessing to short side 256 (function and CLI) and the MNIST source (no offline substitute)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tcm.cli import main as cli_main
from tcm.config import DatasetConfig
from tcm.data import DataError, ManifestDataset, prepare, read_manifest
from tcm.data.preprocess import output_relpath, preprocess_manifest, resize_image
from tcm.data.specs import prepare_benchmark
from tcm.data.synthetic import make_tiny


def test_resize_image_short_side(tmp_path: Path) -> None:
    src = tmp_path / "a.png"
    Image.fromarray(np.zeros((375, 500, 3), np.uint8)).save(src)
    assert resize_image(src, tmp_path / "out" / "a.jpg", 256) == (341, 256)
    with Image.open(tmp_path / "out" / "a.jpg") as img:
        assert img.format == "JPEG" and img.size == (341, 256)
    # Never upsampled; grayscale stays grayscale.
    small = tmp_path / "s.jpg"
    Image.fromarray(np.zeros((100, 80), np.uint8), mode="L").save(small)
    assert resize_image(small, tmp_path / "out" / "s.jpg", 256) == (80, 100)
    assert output_relpath("x/a.png") == "x/a.png.jpg" and output_relpath("x/a.JPG") == "x/a.JPG"


@pytest.fixture
def prepared_sop(tmp_path: Path) -> Path:
    folder = make_tiny("sop", tmp_path / "raw", size=(500, 375))
    return prepare_benchmark("sop", folder, tmp_path / "sop", allow_nonstandard_counts=True).parent


def test_preprocess_manifest(prepared_sop: Path, tmp_path: Path) -> None:
    out = preprocess_manifest(prepared_sop, tmp_path / "sop-s256", short_side=256, workers=2)
    original, small = read_manifest(prepared_sop), read_manifest(out.parent)
    assert small.image_root == tmp_path / "sop-s256" / "images"
    assert list(small.table.label) == list(original.table.label)
    assert list(small.table.split) == list(original.table.split)
    for rel in small.table.path:
        with Image.open(small.image_root / rel) as img:
            assert min(img.size) == 256
    info = json.loads((out.parent / "dataset.json").read_text())
    assert info["source"].startswith("sop, preprocessed to short side 256")
    assert len(ManifestDataset(small, "train")) == 6


def test_preprocess_reports_bad_images(prepared_sop: Path, tmp_path: Path) -> None:
    manifest = read_manifest(prepared_sop)
    victim = manifest.image_root / manifest.table.path.iloc[0]
    victim.write_bytes(victim.read_bytes()[:200])
    with pytest.raises(DataError, match=rf"1 problem: {victim}"):
        preprocess_manifest(prepared_sop, tmp_path / "small", workers=1)
    assert not (tmp_path / "small" / "manifest.csv").exists()


def test_cli_preprocess(prepared_sop: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert cli_main(["data", "preprocess", "--in", str(prepared_sop), "--short-side", "128", "--workers", "1"]) == 0
    assert "preprocessed to short side 128" in capsys.readouterr().out
    assert (tmp_path / "sop-s128" / "manifest.csv").is_file()
    assert cli_main(["data", "preprocess", "--in", str(tmp_path / "nothing")]) == 2
    assert "manifest.csv: not found" in capsys.readouterr().err


def test_mnist_uses_torchvision_when_available(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import tcm.data.mnist as mnist

    images = np.random.default_rng(0).integers(0, 255, size=(20, 28, 28), dtype=np.uint8)
    monkeypatch.setattr(mnist, "load_mnist", lambda root, download=True: (images, np.arange(20) % 10))
    cfg = DatasetConfig(source="mnist", train_classes=[0, 1, 2, 3, 4], root=tmp_path / "cache")
    manifest = read_manifest(prepare(cfg, tmp_path / "mnist").parent)
    assert json.loads((tmp_path / "mnist" / "dataset.json").read_text())["source"] == "mnist"
    assert len(manifest.table) == 20 and set(manifest.split("train").label) == {0, 1, 2, 3, 4}
    x, _ = ManifestDataset(manifest, "test")[0]
    assert x.size == (28, 28)


def test_mnist_offline_stops_instead_of_using_other_data(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No silent substitute: a data set of source mnist holds MNIST or is not written at all."""
    import tcm.data.mnist as mnist

    def offline(root: Path, download: bool = True) -> None:
        raise RuntimeError("Error downloading train-images-idx3-ubyte.gz")  # what torchvision raises offline

    monkeypatch.setattr(mnist, "load_mnist", offline)
    cfg = DatasetConfig(source="mnist", train_classes=[0, 1, 2, 3, 4], root=tmp_path / "cache")
    with pytest.raises(DataError, match=r"could not be downloaded \(RuntimeError: Error downloading.*"
                                        r"source: sklearn_digits"):
        prepare(cfg, tmp_path / "mnist")
    assert not (tmp_path / "mnist").exists()


def write_idx(folder: Path, prefix: str, images: np.ndarray, labels: np.ndarray) -> None:
    """MNIST's own IDX files, as torchvision keeps them under MNIST/raw/ after a download."""
    import struct

    folder.mkdir(parents=True, exist_ok=True)
    n, rows, cols = images.shape
    (folder / f"{prefix}-images-idx3-ubyte").write_bytes(struct.pack(">IIII", 0x803, n, rows, cols) + images.tobytes())
    labels_bytes = labels.astype(np.uint8).tobytes()
    (folder / f"{prefix}-labels-idx1-ubyte").write_bytes(struct.pack(">II", 0x801, n) + labels_bytes)


def test_mnist_reads_files_already_on_disk_without_download(tmp_path: Path) -> None:
    from tcm.data.mnist import load_mnist

    rng = np.random.default_rng(0)
    raw = tmp_path / "cache" / "MNIST" / "raw"
    write_idx(raw, "train", rng.integers(0, 255, (12, 28, 28), dtype=np.uint8), np.arange(12) % 10)
    write_idx(raw, "t10k", rng.integers(0, 255, (8, 28, 28), dtype=np.uint8), np.arange(8) % 10)
    images, labels = load_mnist(tmp_path / "cache", download=False)
    assert images.shape == (20, 28, 28) and list(labels[:12]) == list(np.arange(12) % 10)


def test_new_dataset_settings_are_validated(tmp_path: Path) -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="verify"):
        DatasetConfig(source="cub", verify="partial")
    with pytest.raises(ValidationError, match="preprocess_short_side .* must be >= image_size"):
        DatasetConfig(source="cub", preprocess_short_side=128)
    with pytest.raises(ValidationError, match="applies to the benchmarks"):
        DatasetConfig(source="sklearn_digits", train_classes=[0, 1], image_size=8, resize=8, preprocess_short_side=16)
