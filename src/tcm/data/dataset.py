"""A torch Dataset over one split of a manifest: decodes image files with PIL."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from tcm.data.manifest import DataError, Manifest


class ImageDecodeError(DataError):
    """An image file of a manifest cannot be read or decoded; the message names it and the fix.

    Raised in a DataLoader worker, it reaches the main process re-built by torch from the worker's
    formatted traceback (``type(exc)(text)``, text ending in ``module.Class: message``); only that last
    line's message is kept, so that the command line still prints one line."""

    def __init__(self, message: str) -> None:
        if "\n" in message:
            last = message.rstrip().splitlines()[-1]
            message = last.split(": ", 1)[1] if last.startswith(f"{__name__}.") and ": " in last else last
        super().__init__(message)


def decode_failure(path: Path | str, error: Exception) -> ImageDecodeError:
    """The one-line error for an image ``path`` that failed with ``error``."""
    reason = " ".join(str(error).split()) or type(error).__name__
    return ImageDecodeError(f"{path}: cannot decode image ({type(error).__name__}: {reason}); replace the file "
                            "(download or extract the data set again) and run `tcm data prepare` again "
                            "(`--verify full` decodes every image)")


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
            try:
                with Image.open(self.paths[i]) as f:
                    img = f.convert("RGB")
            except (OSError, SyntaxError, ValueError) as e:  # PIL's errors for unreadable and truncated files
                raise decode_failure(self.paths[i], e) from None
            if self._cache is not None:
                self._cache[i] = img
        return (self.transform(img) if self.transform else img), int(self.labels[i])

    @property
    def files(self) -> list[Path]:
        return self.paths
