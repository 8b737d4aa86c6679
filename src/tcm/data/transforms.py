"""Train and test image transforms from a dataset's settings (paper: RandomResizedCrop(224) +
flip for training, Resize(256) + CenterCrop(224) for testing).

Loader workers return uint8 (3, H, W) crops; :func:`normalize` turns a batch into the model's
float input on the training device. uint8 crops are a quarter of float32's bytes to pass between
processes and to copy to the GPU, and the arithmetic moves off the workers (the issue measured the
float ``ToTensor`` + ``Normalize`` at 1.8x the cost of uint8 per worker). The geometric steps are
torchvision's own transform objects, which work on PIL images (in the workers) and on tensors
(after decoding on the device, :mod:`tcm.data.batches`): both paths draw the same crops.
"""

from __future__ import annotations

import torch
from torchvision import transforms as T

from tcm.config import DatasetConfig

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def train_geometry(cfg: DatasetConfig) -> T.Compose:
    """RandomResizedCrop(image_size, scale=crop_scale) and, with ``hflip``, a random horizontal flip."""
    steps = [T.RandomResizedCrop(cfg.image_size, scale=tuple(cfg.crop_scale))]
    if cfg.hflip:
        steps.append(T.RandomHorizontalFlip())
    return T.Compose(steps)


def test_geometry(cfg: DatasetConfig) -> T.Compose:
    """Resize(resize) (shorter side) and CenterCrop(image_size)."""
    return T.Compose([T.Resize(cfg.resize), T.CenterCrop(cfg.image_size)])


def train_transform(cfg: DatasetConfig) -> T.Compose:
    """PIL image -> uint8 (3, image_size, image_size) training crop."""
    return T.Compose([*train_geometry(cfg).transforms, T.PILToTensor()])


def test_transform(cfg: DatasetConfig) -> T.Compose:
    """PIL image -> uint8 (3, image_size, image_size) test crop."""
    return T.Compose([*test_geometry(cfg).transforms, T.PILToTensor()])


def normalize(x: torch.Tensor, channels_last: bool = False) -> torch.Tensor:
    """uint8 (N, 3, H, W) images -> float32 ImageNet-normalised model input, on x's device.

    The same arithmetic as torchvision's ``ToTensor`` + ``Normalize`` (x / 255, minus the mean,
    divided by the std, in float32), so the result is bit-identical to the float pipeline's.

    >>> x = torch.randint(0, 256, (2, 3, 4, 4), dtype=torch.uint8)
    >>> ref = T.Normalize(IMAGENET_MEAN, IMAGENET_STD)(x.float().div(255))
    >>> last = normalize(x, channels_last=True)
    >>> torch.equal(normalize(x), ref), last.is_contiguous(memory_format=torch.channels_last)
    (True, True)
    """
    if x.dtype != torch.uint8:
        raise TypeError(f"normalize expects uint8 images, but got {x.dtype}")
    mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float32, device=x.device).view(1, -1, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=torch.float32, device=x.device).view(1, -1, 1, 1)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x.float().div_(255).sub_(mean).div_(std)
