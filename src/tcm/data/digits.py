"""The embedded default data set: scikit-learn's 8x8 digits written out as real PNG files, so
the default run takes the same manifest -> image-file path as the benchmarks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from tcm.config import DatasetConfig


def prepare_digits(cfg: DatasetConfig, out_dir: Path) -> pd.DataFrame:
    from sklearn.datasets import load_digits

    digits = load_digits()
    # Pixel values are 0..16; stretch to 0..255 for an ordinary 8-bit grayscale PNG.
    images = np.clip(digits.images * (255.0 / 16.0), 0, 255).astype(np.uint8)
    rows = []
    for i, (img, label) in enumerate(zip(images, digits.target)):
        rel = Path("images") / str(int(label)) / f"{i:05d}.png"
        (out_dir / rel.parent).mkdir(parents=True, exist_ok=True)
        Image.fromarray(img, mode="L").save(out_dir / rel)
        rows.append((rel.as_posix(), int(label), "train" if int(label) in cfg.train_classes else "test"))
    return pd.DataFrame(rows, columns=["path", "label", "split"])
