"""MNIST: torchvision's MNIST, read from disk or downloaded. There is no fallback: when neither works
the data stage stops with a DataError, so a data set of ``source: mnist`` always holds MNIST. Offline,
use ``source: sklearn_digits`` (scikit-learn's 8x8 digits, as the ``toy`` profile does) and name the
data set and runs after it.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from tcm.config import DatasetConfig
from tcm.data.digits import assign_splits
from tcm.data.manifest import DataError

log = logging.getLogger(__name__)


def default_cache() -> Path:
    return Path.home() / ".cache" / "tcm" / "mnist"


def load_mnist(root: Path, download: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """All 70,000 MNIST images (train + test pooled: the open-world split is by class) and labels.

    Tries the files already under ``root`` first, then (``download``) torchvision's download.
    Raises whatever torchvision raises when neither works.
    """
    from torchvision.datasets import MNIST

    parts = []
    for train in (True, False):
        try:
            ds = MNIST(str(root), train=train, download=False)
        except RuntimeError:
            if not download:
                raise
            ds = MNIST(str(root), train=train, download=True)
        parts.append((ds.data.numpy(), ds.targets.numpy()))
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def prepare_mnist(cfg: DatasetConfig, out_dir: Path) -> tuple[pd.DataFrame, str]:
    """Write the images as PNGs under ``out_dir/images``; returns (table, source used: always "mnist").

    Raises :class:`DataError` when MNIST is neither under ``root`` nor downloadable (no silent
    substitute: a data set, its runs and its report are named after what they hold)."""
    root = Path(cfg.root) if cfg.root else default_cache()
    try:
        images, labels = load_mnist(root, download=True)
    except Exception as e:  # offline, proxy, mirror down: all mean "MNIST is not available here"
        raise DataError(f"mnist: torchvision's MNIST is not under {root} and could not be downloaded "
                        f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); copy its MNIST/raw/ "
                        "files there, or use source: sklearn_digits (scikit-learn's 8x8 digits, no download) "
                        "and name the data set and runs after the digits") from None
    log.info("mnist: using torchvision MNIST from %s (%d images)", root, len(images))
    rows = []
    for i, (img, label, split) in enumerate(zip(images, labels, assign_splits(labels, cfg))):
        rel = Path("images") / str(int(label)) / f"{i:05d}.png"
        (out_dir / rel.parent).mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.asarray(img, dtype=np.uint8), mode="L").save(out_dir / rel)
        rows.append((rel.as_posix(), int(label), split))
    return pd.DataFrame(rows, columns=["path", "label", "split"]), "mnist"
