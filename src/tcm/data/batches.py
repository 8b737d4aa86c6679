"""How one split reaches the model: what the loader's workers return, and what the main process does
with each batch on the compute device (``train.decode`` / ``evaluation.decode``).

- ``workers`` (default): each worker decodes with PIL and crops (:mod:`tcm.data.transforms`), and
  returns a uint8 crop; the batch is copied to the device and normalised there.
- ``device``: each worker only reads the file's bytes; the main process decodes the batch with
  ``torchvision.io.decode_jpeg(..., device=...)`` (nvJPEG on CUDA, libjpeg-turbo on CPU), applies the
  same torchvision crop and flip transforms to the decoded tensors, then normalises. Many-core
  decoding is what binds ResNet-50 training on a fast GPU, so this frees the CPU. Files that are not
  JPEG (the embedded sets' PNGs) are decoded on the CPU and moved.

Both paths draw crop parameters with torchvision's ``RandomResizedCrop.get_params`` from the torch
generator of whoever crops (a worker, or the main process), so they draw crops from the same
distribution; pixels differ only by decoder and resampling (PIL's vs torch's antialiased bilinear),
see tests/test_batches.py.
"""

from __future__ import annotations

import sys
import warnings
from dataclasses import dataclass
from typing import Callable, Literal

import numpy as np
import torch
from torchvision.io import ImageReadMode, decode_image, decode_jpeg

from tcm.config import EMBEDDED_SOURCES, DatasetConfig
from tcm.data.dataset import ManifestDataset, decode_failure
from tcm.data.manifest import Manifest
from tcm.data.transforms import normalize, test_geometry, test_transform, train_geometry, train_transform

# torchvision 0.29 deprecates its image codecs in favour of TorchCodec (>= 0.16, same API, JPEG on CUDA
# too). The torchvision pinned here still ships them, and a switch is one import: until then, no
# warning per decoded image.
warnings.filterwarnings("ignore", message="The image decoding and encoding capabilities of TorchVision",
                        category=DeprecationWarning)

Decode = Literal["workers", "device"]
JPEG_MAGIC = b"\xff\xd8\xff"


class EncodedFile(bytes):
    """A file's bytes that remember its path (``.path``), so that a file that fails to decode is named."""

    path: str = ""


class EncodedDataset(ManifestDataset):
    """A split whose items are the files' raw bytes and labels."""

    def __getitem__(self, i: int) -> tuple[bytes, int]:
        try:
            data = EncodedFile(self.paths[i].read_bytes())
        except OSError as e:
            raise decode_failure(self.paths[i], e) from None
        data.path = str(self.paths[i])
        return data, int(self.labels[i])


def collate_encoded(items: list[tuple[bytes, int]]) -> tuple[tuple[torch.Tensor, torch.Tensor, tuple[str, ...]],
                                                             torch.Tensor]:
    """A batch of files -> ((all bytes in one uint8 tensor, each file's length, each file's path), labels).

    One tensor rather than one per file: a worker hands each tensor over in its own shared-memory
    segment, and the tensors torchvision's ``read_file`` returns cannot be shared at all (their
    storage is a mapped file: the worker's queue fails with "Bad file descriptor")."""
    data = np.frombuffer(b"".join(b for b, _ in items), dtype=np.uint8)
    buf = torch.empty(len(data), dtype=torch.uint8)
    buf.numpy()[:] = data
    lengths = torch.tensor([len(b) for b, _ in items], dtype=torch.int64)
    paths = tuple(getattr(b, "path", "") for b, _ in items)
    return (buf, lengths, paths), torch.tensor([y for _, y in items], dtype=torch.int64)


def _is_jpeg(data: torch.Tensor) -> bool:
    return bytes(data[:3].tolist()) == JPEG_MAGIC


class BatchDecoder:
    """A batch of encoded files -> uint8 (B, 3, S, S) crops on ``device``.

    ``geometry`` is applied to each decoded image in turn: images differ in size, and torchvision's
    transforms take one image (a batched crop would need padding or ``roi_align``, which does not
    antialias as PIL and torchvision's resize do)."""

    def __init__(self, geometry: Callable[[torch.Tensor], torch.Tensor], device: torch.device) -> None:
        self.geometry = geometry
        self.device = device
        self._warned = False

    def _on_cpu(self, decode: Callable, data: torch.Tensor, path: str) -> torch.Tensor:
        """One file decoded on the CPU, then moved; a file that fails is named (when the batch has paths)."""
        try:
            return decode(data, mode=ImageReadMode.RGB).to(self.device)
        except RuntimeError as e:
            raise decode_failure(path or "a file of this batch (no path known)", e) from None

    def _decode(self, encoded: list[torch.Tensor], paths: tuple[str, ...]) -> list[torch.Tensor]:
        jpeg = [i for i, b in enumerate(encoded) if _is_jpeg(b)]
        out: list[torch.Tensor | None] = [None] * len(encoded)
        if jpeg:
            try:
                images = decode_jpeg([encoded[i] for i in jpeg], mode=ImageReadMode.RGB, device=self.device)
            except RuntimeError as e:
                # nvJPEG refuses a few encodings (e.g. some CMYK or lossless files): those batches
                # are decoded on the CPU instead (a damaged file fails there too, named).
                images = [self._on_cpu(decode_jpeg, encoded[i], paths[i]) for i in jpeg]
                if not self._warned:  # only once the batch decoded: a damaged file's error is the one line
                    print(f"tcm: decoding on {self.device} failed ({str(e).splitlines()[0]}); "
                          "decoding such batches on the CPU", file=sys.stderr)
                    self._warned = True
            for i, img in zip(jpeg, images):
                out[i] = img
        for i, b in enumerate(encoded):
            if out[i] is None:
                out[i] = self._on_cpu(decode_image, b, paths[i])
        return out  # type: ignore[return-value]

    def __call__(self, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
        """``batch``: (bytes, lengths[, paths]) as :func:`collate_encoded` makes it."""
        buf, lengths, *rest = batch
        files = list(torch.split(buf, lengths.tolist()))
        paths = tuple(rest[0]) if rest else ("",) * len(files)
        return torch.stack([self.geometry(img) for img in self._decode(files, paths)])


@dataclass(frozen=True)
class InputPipeline:
    """A split's dataset and collate function for the DataLoader, and :meth:`to_model` for its batches."""

    dataset: ManifestDataset
    collate_fn: Callable | None
    decoder: BatchDecoder | None

    def to_model(self, x: torch.Tensor | tuple[torch.Tensor, torch.Tensor], device: torch.device,
                 channels_last: bool = False) -> torch.Tensor:
        """A loader batch -> normalised float32 (B, 3, S, S) on ``device``."""
        if self.decoder is not None:
            x = self.decoder(x)
        else:
            x = x.to(device, non_blocking=True)
        return normalize(x, channels_last)


def input_pipeline(manifest: Manifest, split: str, cfg: DatasetConfig, decode: Decode,
                   device: torch.device, train: bool) -> InputPipeline:
    """The training (``train``: random crop and flip) or test (resize and centre crop) input of one split."""
    if decode == "workers":
        return InputPipeline(ManifestDataset(manifest, split, train_transform(cfg) if train else test_transform(cfg),
                                             cache=cfg.source in EMBEDDED_SOURCES), None, None)
    if decode != "device":
        raise ValueError(f"decode: expected 'workers' or 'device', but got {decode!r}")
    geometry = train_geometry(cfg) if train else test_geometry(cfg)
    return InputPipeline(EncodedDataset(manifest, split), collate_encoded, BatchDecoder(geometry, device))
