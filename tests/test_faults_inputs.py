"""Input faults: outputs that would clobber each other, an input or a folder; absurd option values; damaged
image files; empty splits; manifest paths leaving the data root; optional packages not installed. Each is
one line on stderr starting `tcm` that names the file, key or value and the fix, exit 2, no traceback,
and nothing already finished lost."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import REPO, tiny_params, write_params

from tcm.cli import main
from tcm.data import DataError, read_manifest
from tcm.data.manifest import write_manifest
from tcm.errors import OPTIONAL_PACKAGES, TcmError


def fails_in_one_line(capsys: pytest.CaptureFixture, argv: list[str], *words: str) -> str:
    """Run the command line; it must return 2 with exactly one line on stderr, starting `tcm` and holding
    ``words``."""
    capsys.readouterr()
    assert main([str(a) for a in argv]) == 2
    err = capsys.readouterr().err
    # A progress bar may precede it (its updates end in carriage returns).
    lines = [line.strip() for line in re.split(r"[\r\n]+", err) if line.strip().startswith("tcm")]
    assert len(lines) == 1 and err.endswith("\n") and "Traceback" not in err, err
    for w in words:
        assert w in lines[0], (w, lines[0])
    return lines[0]


@pytest.fixture()
def arrays(tmp_path: Path) -> tuple[Path, Path]:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 10, 120)
    np.save(tmp_path / "e.npy", (rng.normal(size=(10, 8))[y] + rng.normal(size=(120, 8))).astype(np.float32))
    np.save(tmp_path / "y.npy", y)
    return tmp_path / "e.npy", tmp_path / "y.npy"


# --- 1. tcm evaluate: --out and --curves ----------------------------------------------------------------

def _spellings(tmp_path: Path) -> list[tuple[str, str]]:
    (tmp_path / "link.json").symlink_to(tmp_path / "m.json")
    rel = os.path.relpath(tmp_path / "m.json")
    return [(str(tmp_path / "m.json"), str(tmp_path / "m.json")), (rel, str(tmp_path / "m.json")),
            (str(tmp_path / "m.json"), str(tmp_path / "sub" / ".." / "m.json")),
            (str(tmp_path / "m.json"), str(tmp_path / "link.json"))]


@pytest.mark.parametrize("spelling", range(4))
def test_out_and_curves_naming_one_file_are_refused(spelling: int, arrays, tmp_path, capsys) -> None:
    (tmp_path / "sub").mkdir()
    out, curves = _spellings(tmp_path)[spelling]
    (tmp_path / "m.json").write_text("earlier\n")  # an earlier result: must survive
    fails_in_one_line(capsys, ["evaluate", *arrays, "--out", out, "--curves", curves, "--device", "cpu"],
                       "tcm evaluate: error: --out", "--curves", "same file")
    assert (tmp_path / "m.json").read_text() == "earlier\n"


def test_dot_slash_spelling_is_the_same_file(arrays, tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    fails_in_one_line(capsys, ["evaluate", *arrays, "--out", "m.json", "--curves", "./m.json"], "same file")
    assert not (tmp_path / "m.json").exists()


@pytest.mark.parametrize("flag", ["--out", "--curves"])
def test_output_that_is_a_folder_or_an_input_is_refused(flag: str, arrays, tmp_path, capsys) -> None:
    other = {"--out": ["--curves", str(tmp_path / "c.csv")], "--curves": ["--out", str(tmp_path / "m.json")]}[flag]
    (tmp_path / "folder").mkdir()
    fails_in_one_line(capsys, ["evaluate", *arrays, flag, tmp_path / "folder", *other], flag, "is a folder")
    before = arrays[1].read_bytes()
    fails_in_one_line(capsys, ["evaluate", *arrays, flag, arrays[1], *other], flag, "is the LABELS file")
    assert arrays[1].read_bytes() == before


def test_distinct_out_and_curves_still_work(arrays, tmp_path) -> None:
    assert main(["evaluate", *map(str, arrays), "--out", str(tmp_path / "m.json"), "--curves",
                 str(tmp_path / "c.csv"), "--device", "cpu", "--k", "1"]) == 0
    assert "opis" in json.loads((tmp_path / "m.json").read_text())
    assert pd.read_csv(tmp_path / "c.csv").columns[0] == "class"


# --- 6. absurd --n-thresholds; other commands' output files that are folders ---------------------------

def test_absurd_n_thresholds_is_refused_before_any_work(arrays, tmp_path, capsys) -> None:
    fails_in_one_line(capsys, ["evaluate", *arrays, "--out", tmp_path / "m.json", "--n-thresholds", "1000000000"],
                       "--n-thresholds", "less than or equal to 1000000", "1000000000")
    assert not (tmp_path / "m.json").exists()


@pytest.mark.parametrize("argv,flag", [
    (["check-params", "--params", "{params}", "--stamp", "{folder}"], "--stamp"),
    (["profile", "digits", "--profiles", str(REPO / "profiles"), "--out", "{folder}"], "--out"),
    (["notebook", str(REPO / "notebooks" / "03_evaluate.ipynb"), "{folder}"], "OUTPUT"),
])
def test_output_file_that_is_a_folder_is_refused(argv: list[str], flag: str, tmp_path, capsys) -> None:
    params = write_params(tmp_path / "params.yaml", tiny_params())
    folder = tmp_path / "folder"
    folder.mkdir()
    argv = [a.format(params=params, folder=folder) for a in argv]
    fails_in_one_line(capsys, argv, f"{flag} {folder}: is a folder", "name a file")
    assert folder.is_dir() and not any(folder.iterdir())


# --- 3. empty splits; 4. manifest paths leaving the data root ------------------------------------------

def _manifest(folder: Path, rows: list[tuple[str, int, str]]) -> Path:
    """A prepared data set folder written by hand (as a foreign or edited manifest would be)."""
    folder.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows, columns=["path", "label", "split"]).to_csv(folder / "manifest.csv", index=False)
    (folder / "dataset.json").write_text(json.dumps({"source": "test", "image_root": "."}))
    return folder / "manifest.csv"


@pytest.mark.parametrize("split", ["train", "test"])
def test_empty_split_names_the_split_data_set_and_manifest(split: str, tmp_path, capsys) -> None:
    params = write_params(tmp_path / "params.yaml", tiny_params(runs=("digits-ms",)))
    keep = "test" if split == "train" else "train"
    manifest = _manifest(tmp_path / "data/digits", [(f"{keep}/{i}.png", i + (5 if keep == "test" else 0), keep)
                                                    for i in range(5)])
    with pytest.raises(DataError, match=f"the {split} split of data set 'digits' is empty"):
        read_manifest(manifest.parent)
    # Training reads the manifest first thing: either empty split stops it there, named as such.
    line = fails_in_one_line(capsys, ["train", "digits-ms", "--params", params], str(manifest), f"the {split} split",
                              "data set 'digits'", "tcm data prepare digits")
    assert "batch_size" not in line and "recall_k" not in line


def test_data_prepare_refuses_to_write_an_empty_split(tmp_path) -> None:
    with pytest.raises(DataError, match="the test split is empty"):
        write_manifest(tmp_path, pd.DataFrame([("a.png", 0, "train")], columns=["path", "label", "split"]),
                       image_root=".", source="test")
    assert not (tmp_path / "manifest.csv").exists()


@pytest.mark.parametrize("bad", ["../../etc/passwd", "/etc/passwd", "train/../../x.png", ""])
def test_manifest_path_leaving_the_data_root_is_refused_where_read(bad: str, tmp_path, capsys) -> None:
    rows = [("train/0.png", 0, "train"), ("test/0.png", 1, "test"), (bad, 0, "train")]
    manifest = _manifest(tmp_path / "data/digits", rows)
    with pytest.raises(DataError) as e:
        read_manifest(manifest.parent)
    assert f"{manifest}: 1 path escapes the data set folder" in str(e.value)
    assert f"row 3 (line 4): {bad!r}" in str(e.value) or (not bad and "row 3 (line 4)" in str(e.value))
    assert "tcm data prepare digits" in str(e.value)
    # And so from every command that reads a manifest, e.g. re-encoding it (which would write outside too).
    fails_in_one_line(capsys, ["data", "preprocess", "--in", manifest.parent, "--out", tmp_path / "small"],
                       str(manifest), "row 3 (line 4)", "escapes the data set folder")
    assert not (tmp_path / "small").exists()


# --- 5. optional packages -----------------------------------------------------------------------------

def _extras() -> dict[str, str]:
    """Each package of pyproject.toml's extras (but dev, tooling no command imports) -> its extra."""
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    return {re.split(r"[<>=!~\[ ;]", req, maxsplit=1)[0].lower(): extra
            for extra, reqs in extras.items() if extra != "dev" for req in reqs}


def test_optional_package_table_matches_pyproject() -> None:
    # Every import name of the table is its distribution name (true of all of them today).
    assert OPTIONAL_PACKAGES == _extras()


def _import_in_report(module: str, tmp_path: Path):
    import tcm.figures
    import tcm.report

    if module == "seaborn":  # the per-seed figure: its first statement imports seaborn
        return lambda cfg, tracker=None: tcm.figures.per_seed(None, None, ())
    notebook = tmp_path / "n.ipynb"
    notebook.write_text(json.dumps({"cells": [], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}))
    return lambda cfg, tracker=None: tcm.report.notebook_html(notebook, tmp_path)


@pytest.mark.parametrize("module", ["seaborn", "nbconvert"])
def test_report_without_the_pipeline_extra_is_one_line(module: str, tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, module, None)  # `import module` now raises ModuleNotFoundError
    monkeypatch.setattr("tcm.report.run", _import_in_report(module, tmp_path))
    params = write_params(tmp_path / "params.yaml", tiny_params())
    fails_in_one_line(capsys, ["report", "--params", params], f"optional package {module} is not installed",
                       "pip install -e '.[pipeline]'")


@pytest.mark.parametrize("module,argv", [
    ("papermill", ["notebook", "in.ipynb", "out.ipynb"]),
    ("dvc", ["parallel", "--jobs", "1"]),
])
def test_pipeline_commands_without_the_extra_are_one_line(module: str, argv: list[str], tmp_path, capsys,
                                                          monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, module, None)
    monkeypatch.chdir(tmp_path)
    fails_in_one_line(capsys, argv, f"optional package {module} is not installed", "pip install -e '.[pipeline]'")


def test_a_missing_non_optional_module_keeps_its_traceback(monkeypatch) -> None:
    # Not a user's fix: a broken install or a bug, so it is not hidden behind a line.
    def broken(args):
        import tcm_no_such_module  # noqa: F401

    monkeypatch.setattr("tcm.cli.cmd_report", broken)
    with pytest.raises(ModuleNotFoundError):
        main(["report"])


@pytest.mark.slow
def test_file_evaluator_and_params_check_need_no_extra(arrays, tmp_path) -> None:
    """README: the command-line twins run without the pipeline extra; here with every optional package blocked."""
    params = write_params(tmp_path / "params.yaml", tiny_params())
    blocked = sorted(OPTIONAL_PACKAGES)
    code = ("import sys\n"
            f"for m in {blocked!r}: sys.modules[m] = None\n"
            "from tcm.cli import main\n"
            f"assert main(['check-params', '--params', {str(params)!r}]) == 0\n"
            f"sys.exit(main(['evaluate', {str(arrays[0])!r}, {str(arrays[1])!r}, '--out', "
            f"{str(tmp_path / 'm.json')!r}, '--device', 'cpu', '--k', '1']))\n")
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr
    assert "opis" in json.loads((tmp_path / "m.json").read_text())


def test_errors_are_tcm_errors() -> None:
    assert issubclass(DataError, TcmError)


# --- 2. damaged image files: named by `data prepare` (verify: exists) and by the loader -------------------

def _image(path: Path, fmt: str) -> Path:
    from PIL import Image

    rng = np.random.default_rng(0)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 255, (36, 48, 3), dtype=np.uint8)).save(path, format=fmt)
    return path


def _truncate(path: Path, keep: float = 0.6) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


@pytest.fixture()
def cub(tmp_path: Path) -> Path:
    from tcm.data.synthetic import make_tiny

    return make_tiny("cub", tmp_path / "cub", size=(48, 36))


def _cub_image(folder: Path, i: int = 0) -> Path:
    from tcm.data.specs import get_benchmark

    return folder / get_benchmark("cub").parse(folder).path.iloc[i]


@pytest.mark.parametrize("fmt,what", [("JPEG", "truncated JPEG file (no end-of-image marker FFD9 at its end)"),
                                      ("PNG", "truncated PNG file (no IEND chunk at its end)")])
def test_truncated_image_is_named_by_data_prepare(fmt: str, what: str, cub: Path, tmp_path, capsys,
                                                  monkeypatch) -> None:
    import functools

    import tqdm

    import tcm.data.specs

    monkeypatch.setattr(tcm.data.specs, "tqdm", functools.partial(tqdm.tqdm, disable=True))
    out = tmp_path / "out"
    args = ["data", "prepare", "cub", "--root", cub, "--out", out, "--allow-nonstandard-counts"]
    assert main([str(a) for a in args]) == 0  # intact: passes, and this manifest must survive
    before = (out / "manifest.csv").read_bytes()
    victim = _cub_image(cub, 2)
    if fmt == "PNG":  # a PNG under the index's .jpg name: the format is PIL's, not the name's
        _image(victim, "PNG")
    _truncate(victim)
    fails_in_one_line(capsys, args, f"{victim}: {what}", "1 problem", "download or extract the data set again",
                       "tcm data prepare")
    assert (out / "manifest.csv").read_bytes() == before


def test_garbage_in_place_of_an_image_is_named(cub: Path, tmp_path) -> None:
    from tcm.data.specs import prepare_benchmark

    victim = _cub_image(cub)
    victim.write_bytes(b"<html>404 Not Found</html>\n")
    with pytest.raises(DataError, match=re.escape(f"{victim}: not an image (unknown format or damaged header)")):
        prepare_benchmark("cub", cub, tmp_path / "out", allow_nonstandard_counts=True)


def test_zero_padding_after_the_end_marker_passes(cub: Path, tmp_path) -> None:
    from tcm.data.specs import prepare_benchmark

    victim = _cub_image(cub)
    victim.write_bytes(victim.read_bytes() + b"\0" * 100)
    assert prepare_benchmark("cub", cub, tmp_path / "out", allow_nonstandard_counts=True).is_file()


def _loader_manifest(tmp_path: Path, fmt: str) -> tuple[Path, Path]:
    """A manifest of three real images per split, the second train image truncated after writing."""
    suffix = {"JPEG": "jpg", "PNG": "png"}[fmt]
    rows = [(f"{split}/{i}.{suffix}", i + (3 if split == "test" else 0), split) for split in ("train", "test")
            for i in range(3)]
    for rel, _, _ in rows:
        _image(tmp_path / "data" / rel, fmt)
    victim = tmp_path / "data" / rows[1][0]
    _truncate(victim)
    _manifest(tmp_path / "data", rows)
    return tmp_path / "data", victim


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
@pytest.mark.parametrize("decode", ["workers", "device"])
@pytest.mark.parametrize("workers", [0, 1])
def test_loader_names_the_file_that_fails_to_decode(fmt: str, decode: str, workers: int, tmp_path) -> None:
    import torch
    from torch.utils.data import DataLoader

    from tcm.config import DatasetConfig
    from tcm.data.batches import input_pipeline

    folder, victim = _loader_manifest(tmp_path, fmt)
    cfg = DatasetConfig(source="cub", root=Path("/nonexistent"), image_size=32, resize=36)
    pipeline = input_pipeline(read_manifest(folder), "train", cfg, decode, torch.device("cpu"), train=False)
    loader = DataLoader(pipeline.dataset, batch_size=3, num_workers=workers, collate_fn=pipeline.collate_fn)
    with pytest.raises(DataError) as e:
        for x, _ in loader:  # a worker's error reaches here re-built from its traceback text
            pipeline.to_model(x, torch.device("cpu"))
    message = str(e.value)
    assert "\n" not in message and "Traceback" not in message, message
    assert message.startswith(f"{victim}: cannot decode image") and "tcm data prepare" in message


@pytest.mark.slow
def test_training_on_a_truncated_image_is_one_line(tmp_path, capsys) -> None:
    params = write_params(tmp_path / "params.yaml", tiny_params(runs=("digits-ms",)))
    assert main(["data", "prepare", "digits", "--params", str(params)]) == 0
    table = pd.read_csv(tmp_path / "data/digits/manifest.csv")
    train = [tmp_path / "data/digits" / p for p in table.path[table.split == "train"]]
    for path in train:  # all of them, as a copy cut short would: the sampler draws only some images
        _truncate(path)
    line = fails_in_one_line(capsys, ["train", "digits-ms", "--params", params], "cannot decode image",
                              "tcm data prepare")
    assert any(line.startswith(f"tcm: error: {p}: ") for p in train), line
