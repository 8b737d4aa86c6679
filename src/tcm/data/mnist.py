"""MNIST for the paper's toy experiment: torchvision's MNIST when it is on disk or can be downloaded,
else scikit-learn's 8x8 digits as the offline fallback. Which one was used is logged and recorded
as the ``source`` in dataset.json, so a report can never mistake one for the other.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from tcm.config import DatasetConfig
from tcm.data.digits import assign_splits

log = logging.getLogger(__name__)

FALLBACK = "sklearn_digits (offline fallback for mnist)"


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
    """Write the images as PNGs under ``out_dir/images``; returns (table, source actually used)."""
    root = Path(cfg.root) if cfg.root else default_cache()
    try:
        images, labels = load_mnist(root, download=True)
        used = "mnist"
        log.info("mnist: using torchvision MNIST from %s (%d images)", root, len(images))
    except Exception as e:  # noqa: BLE001 - offline, proxy, mirror down: all mean "use the fallback"
        from sklearn.datasets import load_digits

        digits = load_digits()
        images = np.clip(digits.images * (255.0 / 16.0), 0, 255).astype(np.uint8)
        labels = digits.target
        used = FALLBACK
        log.warning("mnist: torchvision MNIST unavailable under %s (%s: %s); using the scikit-learn digits "
                    "(1,797 8x8 images) as the offline fallback", root, type(e).__name__, e)
    rows = []
    for i, (img, label, split) in enumerate(zip(images, labels, assign_splits(labels, cfg))):
        rel = Path("images") / str(int(label)) / f"{i:05d}.png"
        (out_dir / rel.parent).mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.asarray(img, dtype=np.uint8), mode="L").save(out_dir / rel)
        rows.append((rel.as_posix(), int(label), split))
    return pd.DataFrame(rows, columns=["path", "label", "split"]), used
