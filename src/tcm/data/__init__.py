"""Data sets -> one manifest format (see :mod:`tcm.data.manifest`)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from tcm.config import EMBEDDED_SOURCES, DatasetConfig
from tcm.data.manifest import DataError, Manifest, read_manifest, write_manifest
from tcm.data.specs import BENCHMARK_NAMES


def __getattr__(name: str):
    # ManifestDataset needs torch; importing it lazily keeps `tcm data`, params validation and the
    # report free of torch's start-up cost.
    if name == "ManifestDataset":
        from tcm.data.dataset import ManifestDataset

        return ManifestDataset
    raise AttributeError(f"module 'tcm.data' has no attribute {name!r}")


__all__ = ["BENCHMARK_NAMES", "DataError", "Manifest", "ManifestDataset", "prepare", "read_manifest"]


def _prepare_embedded(cfg: DatasetConfig, out_dir: Path) -> Path:
    """Glyphs, digits and MNIST: images are written into ``out_dir`` (regenerated from scratch each time)."""
    # A staging folder, renamed at the end, so a stale or half-written image never survives a re-run.
    staging = out_dir.with_name(out_dir.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    if cfg.source == "glyphs":
        from tcm.data.glyphs import prepare_glyphs

        table, used = prepare_glyphs(cfg.glyphs, staging), cfg.source
    elif cfg.source == "sklearn_digits":
        from tcm.data.digits import prepare_digits

        table, used = prepare_digits(cfg, staging), cfg.source
    else:
        from tcm.data.mnist import prepare_mnist

        table, used = prepare_mnist(cfg, staging)
    write_manifest(staging, table, image_root=".", source=used, closed_set=cfg.closed_set_test_share is not None)
    shutil.rmtree(out_dir, ignore_errors=True)
    staging.rename(out_dir)
    return out_dir / "manifest.csv"


def prepare(cfg: DatasetConfig, out_dir: Path | str) -> Path:
    """Build ``out_dir/manifest.csv`` for one data set; returns the manifest path.

    Embedded sets (digits, MNIST) are written as image files into ``out_dir``; benchmarks are
    verified where they are (``cfg.root``) and the manifest points into them, or, with
    ``preprocess_short_side``, into re-encoded copies under ``out_dir/images``. Nothing is written
    unless every check passed.
    """
    out_dir = Path(out_dir)
    if cfg.source in EMBEDDED_SOURCES:
        return _prepare_embedded(cfg, out_dir)
    if cfg.source in BENCHMARK_NAMES:
        from tcm.data.specs import build_table, get_benchmark

        bench = get_benchmark(cfg.source)
        root, image_root = cfg.root, None
        if cfg.synthetic is not None:
            from tcm.data.synthetic import make_tiny

            shutil.rmtree(out_dir / "source", ignore_errors=True)
            root = make_tiny(cfg.source, out_dir / "source", **cfg.synthetic.model_dump()).parent
        folder, table = build_table(bench, root, allow_nonstandard_counts=cfg.allow_nonstandard_counts
                                    or cfg.synthetic is not None, verify=cfg.verify, download=cfg.download,
                                    workers=cfg.workers)
        if cfg.synthetic is not None:
            # Relative, so the generated copy stays valid when the repository moves.
            image_root = Path(os.path.relpath(Path(folder).resolve(), out_dir.resolve()))
        if cfg.preprocess_short_side is None:
            return write_manifest(out_dir, table, image_root=image_root or folder, source=cfg.source)
        from tcm.data.preprocess import preprocess_table

        return preprocess_table(table, folder, out_dir, short_side=cfg.preprocess_short_side,
                                quality=cfg.preprocess_quality, workers=cfg.workers, source=cfg.source)
    raise DataError(f"data source {cfg.source!r} is not supported")
