"""Optional preprocessing: re-encode every image of a manifest to a short side of 256 pixels (JPEG), in
parallel, into a new image folder with its own manifest.

Why: full-size JPEGs (CUB ~500x375, iNaturalist up to 800 px) cost most of the data-loading time in
decoding; at short side 256 decoding is several times cheaper. It is not the same as training on
the originals: RandomResizedCrop then crops from an already downsampled image (small crops are
upsampled from fewer pixels) and JPEG re-encoding adds a second compression (see docs/data.md).
The test transform Resize(256) + CenterCrop(224) sees almost the same pixels either way.
"""

from __future__ import annotations

import json
import os
import shutil
from concurrent.futures import ProcessPoolExecutor, as_completed
from functools import partial
from pathlib import Path

import pandas as pd
from tqdm import tqdm

from tcm.data.manifest import INFO, DataError, read_manifest, write_manifest
from tcm.data.problems import Problems

IMAGES = "images"
SETTINGS = ".preprocess.json"


def output_relpath(rel: str) -> str:
    """Same relative path, always a .jpg file (appending keeps a.png and a.jpg apart)."""
    return rel if Path(rel).suffix.lower() in (".jpg", ".jpeg") else rel + ".jpg"


def resize_image(src: Path | str, dst: Path | str, short_side: int = 256, quality: int = 90) -> tuple[int, int]:
    """Re-encode ``src`` to ``dst`` (JPEG) with its short side at most ``short_side``; returns the new size.

    Never upsamples. The file appears under ``dst`` only once complete (temporary name + rename).
    """
    from PIL import Image

    dst = Path(dst)
    with Image.open(src) as img:
        w, h = img.size
        scale = short_side / min(w, h)
        if scale < 1:
            target = (max(1, round(w * scale)), max(1, round(h * scale)))
            # JPEG only: decode at the smallest 1/2^k scale that is still >= target (libjpeg DCT scaling).
            img.draft(None, target)
            out = img.convert("L" if img.mode == "L" else "RGB").resize(target, Image.Resampling.BICUBIC)
        else:
            out = img.convert("L" if img.mode == "L" else "RGB")
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.tmp")
    out.save(tmp, format="JPEG", quality=quality)
    os.replace(tmp, dst)
    return out.size


def _resize_chunk(pairs: list[tuple[str, str]], short_side: int, quality: int) -> list[tuple[str, str]]:
    bad = []
    for src, dst in pairs:
        try:
            resize_image(src, dst, short_side, quality)
        except Exception as e:  # noqa: BLE001 - report every file that fails, not just the first
            bad.append((src, f"{type(e).__name__}: {e}"))
    return bad


def preprocess_table(table: pd.DataFrame, image_root: Path, out_dir: Path | str, short_side: int = 256,
                     quality: int = 90, workers: int | None = None, source: str = "") -> Path:
    """Re-encode the images of ``table`` (paths relative to ``image_root``) into ``out_dir/images``;
    writes ``out_dir/manifest.csv`` last. Files already done by an interrupted run with the same
    settings are kept."""
    out_dir = Path(out_dir)
    images = out_dir / IMAGES
    settings = {"short_side": short_side, "quality": quality, "image_root": str(Path(image_root).resolve())}
    settings_path = images / SETTINGS
    if images.exists() and (not settings_path.is_file() or json.loads(settings_path.read_text()) != settings):
        shutil.rmtree(images)  # made with other settings or from other originals: nothing is reusable
    images.mkdir(parents=True, exist_ok=True)
    settings_path.write_text(json.dumps(settings, sort_keys=True) + "\n")

    out_table = table.loc[:, ["path", "label", "split"]].copy()
    out_table["path"] = [output_relpath(p) for p in table.path]
    todo = [(str(Path(image_root) / src), str(images / dst)) for src, dst in zip(table.path, out_table.path)
            if not (images / dst).is_file()]
    problems = Problems(f"preprocess into {images}")
    if todo:
        chunk = 64
        n_workers = max(1, min(workers or os.cpu_count() or 1, -(-len(todo) // chunk)))
        fn = partial(_resize_chunk, short_side=short_side, quality=quality)
        desc = f"re-encode to short side {short_side}"
        with tqdm(total=len(todo), desc=desc, unit="img", dynamic_ncols=True) as bar, \
                ProcessPoolExecutor(n_workers) as pool:
            futures = {pool.submit(fn, todo[i:i + chunk]): len(todo[i:i + chunk]) for i in range(0, len(todo), chunk)}
            for fut in as_completed(futures):
                problems.extend(f"{src}: {why}" for src, why in fut.result())
                bar.update(futures[fut])
    problems.items.sort()
    problems.raise_if_any()
    label = f"{source}, " if source else ""
    return write_manifest(out_dir, out_table, image_root=IMAGES,
                          source=f"{label}preprocessed to short side {short_side} (JPEG quality {quality})")


def preprocess_manifest(src_dir: Path | str, out_dir: Path | str, short_side: int = 256, quality: int = 90,
                        workers: int | None = None) -> Path:
    """``src_dir/manifest.csv`` (a prepared data set) -> ``out_dir`` with re-encoded images and its own manifest."""
    src_dir, out_dir = Path(src_dir), Path(out_dir)
    if src_dir.resolve() == out_dir.resolve():
        raise DataError(f"{out_dir}: the output folder must differ from the input folder")
    manifest = read_manifest(src_dir)
    source = json.loads((src_dir / INFO).read_text()).get("source", "")
    return preprocess_table(manifest.table, manifest.image_root, out_dir, short_side, quality, workers, source=source)
