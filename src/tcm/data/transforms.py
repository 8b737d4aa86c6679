"""Train and test image transforms from a dataset's settings (paper: RandomResizedCrop(224) +
flip for training, Resize(256) + CenterCrop(224) for testing)."""

from __future__ import annotations

from torchvision import transforms as T

from tcm.config import DatasetConfig

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def train_transform(cfg: DatasetConfig) -> T.Compose:
    steps = [T.RandomResizedCrop(cfg.image_size, scale=tuple(cfg.crop_scale))]
    if cfg.hflip:
        steps.append(T.RandomHorizontalFlip())
    return T.Compose([*steps, T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])


def test_transform(cfg: DatasetConfig) -> T.Compose:
    return T.Compose([T.Resize(cfg.resize), T.CenterCrop(cfg.image_size), T.ToTensor(),
                      T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
