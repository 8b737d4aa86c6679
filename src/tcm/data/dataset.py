"""A torch Dataset over one split of a manifest: decodes image files with PIL."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from tcm.data.manifest import Manifest


class ManifestDataset(Dataset):
    """``cache``: keep each decoded image in memory after its first read. For the embedded data sets
    (tiny images, a few MB in all) decoding a PNG costs more than the crop; never for the benchmarks."""

    def __init__(self, manifest: Manifest, split: str, transform: Callable | None = None, cache: bool = False) -> None:
        table = manifest.split(split)
        self.paths = [manifest.image_root / p for p in table["path"]]
        self.labels = table["label"].to_numpy(dtype=np.int64)
        self.transform = transform
        self._cache: dict[int, Image.Image] | None = {} if cache else None

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        img = self._cache.get(i) if self._cache is not None else None
        if img is None:
            with Image.open(self.paths[i]) as f:
                img = f.convert("RGB")
            if self._cache is not None:
                self._cache[i] = img
        return (self.transform(img) if self.transform else img), int(self.labels[i])

    @property
    def files(self) -> list[Path]:
        return self.paths
