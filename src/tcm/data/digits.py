"""The embedded default data set: scikit-learn's 8x8 digits written out as real PNG files, so
the default run takes the same manifest -> image-file path as the benchmarks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from tcm.config import DatasetConfig


def assign_splits(labels: np.ndarray, cfg: DatasetConfig, seed: int = 0) -> np.ndarray:
    """'train' / 'test' per image: by class (open world: ``train_classes`` train), or, closed set, a
    fixed draw of ``closed_set_test_share`` of each class's images held out for testing.

    >>> from tcm.config import DatasetConfig
    >>> y = np.repeat(np.arange(3), 4)
    >>> assign_splits(y, DatasetConfig(source="mnist", train_classes=[0])).tolist()[3:5]
    ['train', 'test']
    >>> s = assign_splits(y, DatasetConfig(source="mnist", closed_set_test_share=0.25))
    >>> [int((s[y == c] == "test").sum()) for c in range(3)]
    [1, 1, 1]
    """
    labels = np.asarray(labels)
    if cfg.closed_set_test_share is None:
        return np.where(np.isin(labels, list(cfg.train_classes or ())), "train", "test")
    split = np.full(len(labels), "train", dtype=object)
    rng = np.random.default_rng(seed)
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        n_test = max(1, round(cfg.closed_set_test_share * len(idx)))
        split[rng.choice(idx, n_test, replace=False)] = "test"
    return split.astype(str)


def prepare_digits(cfg: DatasetConfig, out_dir: Path) -> pd.DataFrame:
    from sklearn.datasets import load_digits

    digits = load_digits()
    # Pixel values are 0..16; stretch to 0..255 for an ordinary 8-bit grayscale PNG.
    images = np.clip(digits.images * (255.0 / 16.0), 0, 255).astype(np.uint8)
    rows = []
    for i, (img, label, split) in enumerate(zip(images, digits.target, assign_splits(digits.target, cfg))):
        rel = Path("images") / str(int(label)) / f"{i:05d}.png"
        (out_dir / rel.parent).mkdir(parents=True, exist_ok=True)
        Image.fromarray(img, mode="L").save(out_dir / rel)
        rows.append((rel.as_posix(), int(label), split))
    return pd.DataFrame(rows, columns=["path", "label", "split"])
