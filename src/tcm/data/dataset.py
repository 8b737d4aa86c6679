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
    def __init__(self, manifest: Manifest, split: str, transform: Callable | None = None) -> None:
        table = manifest.split(split)
        self.paths = [manifest.image_root / p for p in table["path"]]
        self.labels = table["label"].to_numpy(dtype=np.int64)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        with Image.open(self.paths[i]) as img:
            img = img.convert("RGB")
            x = self.transform(img) if self.transform else img
        return x, int(self.labels[i])

    @property
    def files(self) -> list[Path]:
        return self.paths
