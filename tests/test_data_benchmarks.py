"""The four benchmark formats on tiny copies built at test time (real JPEGs, cars_annos.mat via scipy,
the official text index files): good path, every failure, and feeding the training pipeline."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch.utils.data import DataLoader

from tcm.cli import main as cli_main
from tcm.config import DatasetConfig
from tcm.data import BENCHMARK_NAMES, DataError, ManifestDataset, prepare, read_manifest, transforms
from tcm.data.problems import SHOWN_PROBLEMS
from tcm.data.specs import get_benchmark, prepare_benchmark
from tcm.data.synthetic import make_tiny

SMALL = (48, 36)  # pixels; the formats, not the image sizes, are under test here


@pytest.fixture(scope="module")
def tiny_sets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One pristine tiny copy of each benchmark; tests that damage a copy make their own."""
    base = tmp_path_factory.mktemp("tiny")
    return {name: make_tiny(name, base / name, size=SMALL) for name in BENCHMARK_NAMES}


def fresh(name: str, tmp_path: Path, **kwargs) -> Path:
    return make_tiny(name, tmp_path / name, size=SMALL, **kwargs)


def first_image(folder: Path, name: str) -> Path:
    table = get_benchmark(name).parse(folder)
    return folder / table.path.iloc[0]


# --- good path ------------------------------------------------------------------------------

@pytest.mark.parametrize("name", BENCHMARK_NAMES)
@pytest.mark.parametrize("as_parent", [False, True])
def test_prepare_each_format(name: str, as_parent: bool, tiny_sets: dict[str, Path], tmp_path: Path) -> None:
    folder = tiny_sets[name]
    root = folder.parent if as_parent else folder
    out = prepare_benchmark(name, root, tmp_path / "out", allow_nonstandard_counts=True)
    manifest = read_manifest(out.parent)
    table = manifest.table
    assert manifest.image_root == folder.resolve()
    info = json.loads((out.parent / "dataset.json").read_text())
    assert Path(info["image_root"]).is_absolute() and info["source"] == name
    assert info["counts"] == {"train": {"images": 6, "classes": 2}, "test": {"images": 6, "classes": 2}}
    assert set(table.split) == {"train", "test"}
    # Relative paths that resolve to the real files.
    assert all(not Path(p).is_absolute() for p in table.path)
    assert all((manifest.image_root / p).is_file() for p in table.path)
    # Open world: no class in both splits, and the lower half of the class ids train.
    train, test = set(table.label[table.split == "train"]), set(table.label[table.split == "test"])
    assert train and test and not train & test
    assert max(train) < min(test)


def test_cars196_reads_original_struct_layout(tiny_sets: dict[str, Path]) -> None:
    from scipy.io import loadmat

    ann = loadmat(tiny_sets["cars196"] / "cars_annos.mat")["annotations"]
    assert ann.dtype.names == ("relative_im_path", "bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2", "class", "test")
    # How RS@k reads it: entry[0][0] is the path, entry[5][0][0] the class.
    entry = ann[0][0]
    assert entry[0][0] == "car_ims/000001.jpg" and entry[5][0][0] == 1


def test_inat_split_lines_are_paths_from_the_root(tiny_sets: dict[str, Path]) -> None:
    folder = tiny_sets["inat2018"]
    line = (folder / "Inat_dataset_splits" / "Inaturalist_train_set1.txt").read_text().splitlines()[0]
    assert line.startswith("train_val2018/") and (folder / line).is_file()
    table = get_benchmark("inat2018").parse(folder)
    assert table.label.iloc[0] == int(line.split("/")[-2])


def test_inat_split_files_inside_train_val2018(tmp_path: Path) -> None:
    folder = fresh("inat2018", tmp_path)
    (folder / "Inat_dataset_splits").rename(folder / "train_val2018" / "Inat_dataset_splits")
    # --root may be the parent or train_val2018 itself; paths stay relative to the parent.
    for root in (folder, folder / "train_val2018"):
        out = prepare_benchmark("inat2018", root, tmp_path / "out", allow_nonstandard_counts=True)
        assert read_manifest(out.parent).image_root == folder.resolve()


def test_standard_counts_are_enforced_by_default(tiny_sets: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"2 problems: train split: expected 5,864 images / 100 classes, "
                                        r"found 6 images / 2 classes"):
        prepare_benchmark("cub", tiny_sets["cub"], tmp_path / "out")
    assert not (tmp_path / "out" / "manifest.csv").exists()


def test_standard_counts_table() -> None:
    assert get_benchmark("cub").counts == {"train": (5_864, 100), "test": (5_924, 100)}
    assert get_benchmark("cars196").counts == {"train": (8_054, 98), "test": (8_131, 98)}
    assert get_benchmark("sop").counts == {"train": (59_551, 11_318), "test": (60_502, 11_316)}
    assert get_benchmark("inat2018").counts == {"train": (325_846, 5_690), "test": (136_093, 2_452)}


# --- failures: DataError naming the file and the number of problems, and no manifest -----------

def assert_nothing_written(out: Path) -> None:
    assert not (out / "manifest.csv").exists() and not (out / "dataset.json").exists()


@pytest.mark.parametrize("name", BENCHMARK_NAMES)
def test_missing_file(name: str, tmp_path: Path) -> None:
    folder = fresh(name, tmp_path)
    victim = first_image(folder, name)
    victim.unlink()
    with pytest.raises(DataError, match="1 problem: ") as err:
        prepare_benchmark(name, folder, tmp_path / "out", allow_nonstandard_counts=True)
    assert f"{victim}: missing" in str(err.value)
    assert_nothing_written(tmp_path / "out")


def test_empty_file_and_problem_count(tmp_path: Path) -> None:
    folder = fresh("sop", tmp_path, n_classes=4, per_class=4)
    table = get_benchmark("sop").parse(folder)
    for rel in table.path[:SHOWN_PROBLEMS + 2]:
        (folder / rel).write_bytes(b"")
    with pytest.raises(DataError, match=rf"{SHOWN_PROBLEMS + 2} problems: .*empty file \(0 bytes\).*and 2 more"):
        prepare_benchmark("sop", folder, tmp_path / "out", allow_nonstandard_counts=True)


def test_failure_keeps_an_earlier_manifest(tmp_path: Path) -> None:
    folder = fresh("cub", tmp_path)
    out = prepare_benchmark("cub", folder, tmp_path / "out", allow_nonstandard_counts=True)
    before = out.read_bytes()
    first_image(folder, "cub").unlink()
    with pytest.raises(DataError):
        prepare_benchmark("cub", folder, tmp_path / "out", allow_nonstandard_counts=True)
    assert out.read_bytes() == before


@pytest.mark.parametrize("name", ["cub", "inat2018"])
def test_truncated_jpeg_caught_by_full_verify(name: str, tmp_path: Path) -> None:
    folder = fresh(name, tmp_path)
    victim = first_image(folder, name)
    data = victim.read_bytes()
    victim.write_bytes(data[: len(data) // 2])
    # 'exists' reads the header and the last bytes: the missing end marker gives the truncation away.
    with pytest.raises(DataError, match=r"1 problem: .*truncated JPEG file \(no end-of-image marker FFD9") as err:
        prepare_benchmark(name, folder, tmp_path / "ok", allow_nonstandard_counts=True, verify="exists")
    assert str(victim) in str(err.value)
    with pytest.raises(DataError, match=r"1 problem: .*cannot decode") as err:
        prepare_benchmark(name, folder, tmp_path / "out", allow_nonstandard_counts=True, verify="full", workers=2)
    assert str(victim) in str(err.value)
    assert_nothing_written(tmp_path / "out")


def test_full_verify_reports_missing_once(tmp_path: Path) -> None:
    folder = fresh("cub", tmp_path)
    first_image(folder, "cub").unlink()
    with pytest.raises(DataError, match="1 problem: .*missing"):
        prepare_benchmark("cub", folder, tmp_path / "out", allow_nonstandard_counts=True, verify="full", workers=1)


MALFORMED = {
    # (file relative to the data set folder, line to append, what the message says)
    "cub": ("images.txt", "not-a-number images/x.jpg", r"images.txt line 13: expected '<image_id> <image_name>'"),
    "sop": ("Ebay_test.txt", "13 4 4",
            r"Ebay_test.txt line 8: expected '<image_id> <class_id> <super_class_id> <path>'"),
    "inat2018": ("Inat_dataset_splits/Inaturalist_test_set1.txt", "train_val2018/Aves/notanid/x.jpg",
                 r"Inaturalist_test_set1.txt line 7: expected 'train_val2018/<supercategory>/<category_id>/"),
}


@pytest.mark.parametrize("name", sorted(MALFORMED))
def test_malformed_index_line(name: str, tmp_path: Path) -> None:
    folder = fresh(name, tmp_path)
    rel, line, message = MALFORMED[name]
    with open(folder / rel, "a") as f:
        f.write(line + "\n")
    with pytest.raises(DataError, match=r"1 problem: .*" + message):
        prepare_benchmark(name, folder, tmp_path / "out", allow_nonstandard_counts=True)
    assert_nothing_written(tmp_path / "out")


def test_cub_label_without_image_and_bad_class(tmp_path: Path) -> None:
    folder = fresh("cub", tmp_path)
    with open(folder / "image_class_labels.txt", "a") as f:
        f.write("999 1\n1 77\n")
    with pytest.raises(DataError, match=r"2 problems: .*image id 999 is not in images.txt.*class id 77"):
        prepare_benchmark("cub", folder, tmp_path / "out", allow_nonstandard_counts=True)


def test_sop_missing_header(tmp_path: Path) -> None:
    folder = fresh("sop", tmp_path)
    lines = (folder / "Ebay_train.txt").read_text().splitlines()
    (folder / "Ebay_train.txt").write_text("\n".join(lines[1:]) + "\n")
    with pytest.raises(DataError, match=r"Ebay_train.txt line 1: expected the header"):
        prepare_benchmark("sop", folder, tmp_path / "out", allow_nonstandard_counts=True)


def test_cars196_malformed_mat(tmp_path: Path) -> None:
    from scipy.io import loadmat, savemat

    folder = fresh("cars196", tmp_path)
    mat = loadmat(folder / "cars_annos.mat")
    mat["annotations"][0, 2]["class"] = np.array([[1, 2]], np.uint8)  # two classes for one image
    savemat(folder / "cars_annos.mat", {k: v for k, v in mat.items() if not k.startswith("__")})
    with pytest.raises(DataError, match=r"1 problem: .*cars_annos.mat annotation 3: malformed entry"):
        prepare_benchmark("cars196", folder, tmp_path / "out", allow_nonstandard_counts=True)
    (folder / "cars_annos.mat").write_bytes(b"not a MATLAB file")
    with pytest.raises(DataError, match=r"cars_annos.mat: cannot read MATLAB file"):
        prepare_benchmark("cars196", folder, tmp_path / "out", allow_nonstandard_counts=True)


def test_index_path_escaping_the_root(tmp_path: Path) -> None:
    folder = fresh("sop", tmp_path)
    with open(folder / "Ebay_test.txt", "a") as f:
        f.write("99 4 4 ../../etc/passwd\n")
    with pytest.raises(DataError, match=r"\.\./\.\./etc/passwd: path escapes the data set folder"):
        prepare_benchmark("sop", folder, tmp_path / "out", allow_nonstandard_counts=True)


def test_overlapping_classes_rejected(tmp_path: Path) -> None:
    folder = fresh("sop", tmp_path)
    train_line = (folder / "Ebay_train.txt").read_text().splitlines()[1].split()
    with open(folder / "Ebay_test.txt", "a") as f:
        f.write(f"99 {train_line[1]} 1 {train_line[3]}x\n")
    with pytest.raises(DataError, match="classes are in both train and test"):
        prepare_benchmark("sop", folder, tmp_path / "out", allow_nonstandard_counts=True)


@pytest.mark.parametrize("name", BENCHMARK_NAMES)
def test_not_found_says_what_to_fetch(name: str, tmp_path: Path) -> None:
    with pytest.raises(DataError) as err:
        prepare_benchmark(name, tmp_path / "empty", tmp_path / "out")
    msg = str(err.value)
    assert "\n" not in msg and "docs/data.md" in msg and "ROOT/" in msg
    assert {"cub": "data.caltech.edu", "cars196": "car_ims", "sop": "Ebay_train.txt",
            "inat2018": "Inaturalist_train_set1.txt"}[name] in msg


@pytest.mark.parametrize("name", ["cars196", "sop", "inat2018"])
def test_download_refused_without_stable_address(name: str, tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no stable public download address"):
        prepare_benchmark(name, tmp_path / "empty", tmp_path / "out", download=True)


# --- CLI --------------------------------------------------------------------------------------

def test_cli_good_and_bad(tiny_sets: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "out"
    args = ["data", "prepare", "cars196", "--root", str(tiny_sets["cars196"]), "--out", str(out)]
    assert cli_main(args + ["--allow-nonstandard-counts", "--verify", "full", "--workers", "1"]) == 0
    assert "train 6 images / 2 classes" in capsys.readouterr().out
    assert read_manifest(out).table.shape == (12, 3)

    assert cli_main(args[:-1] + [str(tmp_path / "out2")]) == 2  # counts are not the standard ones
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("tcm: error: cars196 at ") and "2 problems" in err and "Traceback" not in err
    assert "expected 8,054 images / 98 classes, found 6 images / 2 classes" in err
    assert not (tmp_path / "out2").exists()


def test_cli_params_mode_with_benchmark(tiny_sets: dict[str, Path], tmp_path: Path,
                                        tiny_params_file: Path, capsys: pytest.CaptureFixture) -> None:
    import yaml

    params = yaml.safe_load(tiny_params_file.read_text())
    params["datasets"]["tinycub"] = {"source": "cub", "root": str(tiny_sets["cub"].parent),
                                     "allow_nonstandard_counts": True, "verify": "full", "workers": 1}
    tiny_params_file.write_text(yaml.safe_dump(params))
    assert cli_main(["data", "prepare", "tinycub", "--params", str(tiny_params_file)]) == 0
    assert (tiny_params_file.parent / "data" / "tinycub" / "manifest.csv").is_file()
    assert cli_main(["data", "prepare", "nosuch", "--params", str(tiny_params_file)]) == 2
    assert "unknown dataset 'nosuch'" in capsys.readouterr().err


# --- feeding the pipeline -----------------------------------------------------------------------

@pytest.mark.parametrize("name", BENCHMARK_NAMES)
def test_prepared_benchmark_feeds_training_and_test_transforms(name: str, tiny_sets: dict[str, Path],
                                                               tmp_path: Path) -> None:
    cfg = DatasetConfig(source=name, root=tiny_sets[name], allow_nonstandard_counts=True, image_size=32, resize=36)
    manifest = read_manifest(prepare(cfg, tmp_path / "data").parent)
    train = ManifestDataset(manifest, "train", transforms.train_transform(cfg))
    test = ManifestDataset(manifest, "test", transforms.test_transform(cfg))
    assert len(train) == len(test) == 6
    x, y = next(iter(DataLoader(train, batch_size=4, shuffle=True)))
    assert x.shape == (4, 3, 32, 32) and x.dtype == torch.uint8 and y.dtype == torch.int64  # normalised on the device
    x, y = next(iter(DataLoader(test, batch_size=6)))
    assert x.shape == (6, 3, 32, 32)
    assert set(y.tolist()) == set(manifest.split("test").label)


def test_prepare_with_preprocessing(tiny_sets: dict[str, Path], tmp_path: Path) -> None:
    from PIL import Image

    cfg = DatasetConfig(source="cub", root=tiny_sets["cub"], allow_nonstandard_counts=True, image_size=16, resize=20,
                        preprocess_short_side=24, workers=1)
    manifest = read_manifest(prepare(cfg, tmp_path / "data").parent)
    assert manifest.image_root == tmp_path / "data" / "images"
    for rel in manifest.table.path:
        with Image.open(manifest.image_root / rel) as img:
            assert min(img.size) == 24
    x, _ = ManifestDataset(manifest, "train", transforms.train_transform(cfg))[0]
    assert x.shape == (3, 16, 16)


@pytest.mark.parametrize("decode,workers", [("workers", 0), ("device", 1)])
def test_pipeline_trains_and_evaluates_on_tiny_benchmark(tmp_path: Path, decode: str, workers: int) -> None:
    """The data stage's manifest feeds the real train and evaluate stages (tiny CUB, small CNN, CPU), with
    either input path (tcm.data.batches); the device path's byte batches also pass through a worker."""
    from conftest import tiny_params

    from tcm import evaluate, train
    from tcm.config import parse_config

    root = make_tiny("cub", tmp_path / "raw", n_classes=8, per_class=8, size=(40, 30))
    params = tiny_params(runs=("digits-ms",), epochs=1)
    params["datasets"] = {"tinycub": {"source": "cub", "root": str(root), "allow_nonstandard_counts": True,
                                      "image_size": 24, "resize": 28, "crop_scale": [0.5, 1.0]}}
    params["runs"] = {"tinycub-ms": {**params["runs"]["digits-ms"], "dataset": "tinycub"}}
    params["run_defaults"]["train"].update(batch_size=16, m_per_class=4, samples_per_epoch=32, num_workers=workers,
                                           device="cpu", decode=decode)
    params["evaluation"].update(decode=decode, num_workers=workers)
    cfg = parse_config(params, base_dir=tmp_path)
    prepare(cfg.dataset("tinycub"), cfg.data_dir("tinycub"))
    train.run(cfg, "tinycub-ms", progress=False)
    metrics = evaluate.run(cfg, "tinycub-ms", progress=False)[0]  # seed 0
    assert 0.0 <= metrics["recall_at_k"]["1"] <= 1.0
    assert pd.read_csv(cfg.data_dir("tinycub") / "manifest.csv").shape[0] == 64
