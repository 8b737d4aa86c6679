"""Data sets -> one manifest format (see :mod:`tcm.data.manifest`)."""

from __future__ import annotations

import shutil
from pathlib import Path

from tcm.config import DatasetConfig
from tcm.data.dataset import ManifestDataset
from tcm.data.manifest import DataError, Manifest, read_manifest, write_manifest

__all__ = ["DataError", "Manifest", "ManifestDataset", "prepare", "read_manifest"]


def prepare(cfg: DatasetConfig, out_dir: Path | str) -> Path:
    """Build ``out_dir/manifest.csv`` for one data set; returns the manifest path.

    Embedded sets (digits) are written as image files into ``out_dir``; benchmarks stay where
    they are (``cfg.root``) and the manifest points into them.
    """
    out_dir = Path(out_dir)
    if cfg.source == "sklearn_digits":
        from tcm.data.digits import prepare_digits

        # Images are regenerated from scratch so a stale file never survives a re-run.
        staging = out_dir.with_name(out_dir.name + ".partial")
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        table = prepare_digits(cfg, staging)
        write_manifest(staging, table, image_root=".", source=cfg.source)
        shutil.rmtree(out_dir, ignore_errors=True)
        staging.rename(out_dir)
        return out_dir / "manifest.csv"
    raise DataError(f"data source {cfg.source!r} is not supported yet")
