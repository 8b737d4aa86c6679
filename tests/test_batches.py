"""The two input paths (tcm.data.batches): PIL in the loader workers, or decoding on the device.

Run here on the CPU, where the device path decodes with torchvision's libjpeg-turbo; on CUDA it is
nvJPEG, whose IDCT may differ by a few levels more (the tolerance below is the CPU's).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from scipy import stats
from torch.utils.data import DataLoader
from torchvision import transforms as T

from tcm.config import DatasetConfig
from tcm.data.batches import input_pipeline
from tcm.data.manifest import read_manifest, write_manifest
from tcm.data.transforms import IMAGENET_MEAN, IMAGENET_STD, normalize

CPU = torch.device("cpu")
# torchvision 0.29 warns on every decoded image (its codecs move to TorchCodec); pytest resets the
# module's own filter per test.
pytestmark = pytest.mark.filterwarnings("ignore:The image decoding and encoding capabilities:DeprecationWarning")
SIZES = [(500, 375), (375, 500), (300, 300), (640, 427), (260, 300)]


def _gradient(size: tuple[int, int], seed: int, gray: bool = False) -> Image.Image:
    """Red rises left to right and green top to bottom, so a crop's colour tells where it was taken
    (and whether it was flipped); noise makes JPEG work as on photographs."""
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w]
    px = np.stack([xx * 255 / w, yy * 255 / h, np.full_like(xx, 128.0)], -1)
    px = (px + np.random.default_rng(seed).normal(0, 12, (h, w, 3))).clip(0, 255).astype(np.uint8)
    img = Image.fromarray(px)
    return img.convert("L") if gray else img


@pytest.fixture(scope="module")
def manifest(tmp_path_factory) -> Path:
    """Five JPEGs (one grayscale) and one PNG per split, in the manifest format every data set uses."""
    root = tmp_path_factory.mktemp("images")
    rows = []
    for split, offset in (("train", 0), ("test", 10)):
        for i, size in enumerate(SIZES):
            name = f"{split}/{i}.jpg"
            (root / split).mkdir(exist_ok=True)
            _gradient(size, offset + i, gray=i == 4).save(root / name, quality=90)
            rows.append((name, offset + i % 2, split))
        _gradient((280, 260), offset + 9).save(root / f"{split}/png.png")
        rows.append((f"{split}/png.png", offset + 1, split))
    write_manifest(root, pd.DataFrame(rows, columns=["path", "label", "split"]), image_root=".", source="test")
    return root


CFG = DatasetConfig(source="cub", root=Path("/nonexistent"), image_size=224, resize=256)
SMALL = CFG.model_copy(update={"image_size": 32, "resize": 36})  # crop statistics do not need 224 px


def _batch(pipeline, n: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    items = [pipeline.dataset[i] for i in range(n or len(pipeline.dataset))]
    if pipeline.collate_fn is None:
        return torch.stack([x for x, _ in items]), torch.tensor([y for _, y in items])
    return pipeline.collate_fn(items)


def test_test_time_tensors_agree_within_decoder_tolerance(manifest: Path) -> None:
    m = read_manifest(manifest)
    pil = input_pipeline(m, "test", CFG, "workers", CPU, train=False)
    dev = input_pipeline(m, "test", CFG, "device", CPU, train=False)
    x_pil, y_pil = _batch(pil)
    encoded, y_dev = _batch(dev)
    x_dev = dev.decoder(encoded)
    assert x_pil.dtype == x_dev.dtype == torch.uint8 and x_pil.shape == x_dev.shape == (6, 3, 224, 224)
    assert torch.equal(y_pil, y_dev)
    diff = (x_pil.int() - x_dev.int()).abs()
    # Same libjpeg-turbo decode; PIL's and torch's antialiased bilinear resize round differently by one level.
    assert diff.max() <= 2 and diff.float().mean() < 0.5, (diff.max(), diff.float().mean())
    a, b = pil.to_model(x_pil, CPU), dev.to_model(encoded, CPU)
    assert a.dtype == b.dtype == torch.float32 and (a - b).abs().max() <= 2 / 255 / min(IMAGENET_STD) + 1e-6


def test_same_random_state_draws_the_same_training_crops(manifest: Path) -> None:
    m = read_manifest(manifest)
    pil = input_pipeline(m, "train", CFG, "workers", CPU, train=True)
    dev = input_pipeline(m, "train", CFG, "device", CPU, train=True)
    for seed in range(5):
        torch.manual_seed(seed)
        x_pil, _ = _batch(pil)
        torch.manual_seed(seed)
        x_dev = dev.decoder(_batch(dev)[0])
        diff = (x_pil.int() - x_dev.int()).abs()
        assert diff.max() <= 2 and diff.float().mean() < 0.5, (seed, diff.max(), diff.float().mean())


def _crop_colours(pipeline, draws: int, num_workers: int) -> np.ndarray:
    """Mean red and green (where the crop lies) and red left-minus-right (flipped or not) per crop."""
    idx = np.arange(draws) % len(pipeline.dataset)
    loader = DataLoader(torch.utils.data.Subset(pipeline.dataset, idx), batch_size=25, num_workers=num_workers,
                        collate_fn=pipeline.collate_fn)
    out = []
    for x, _ in loader:
        x = pipeline.decoder(x) if pipeline.decoder is not None else x
        x = x.float()
        half = x.shape[-1] // 2
        out.append(torch.stack([x[:, 0].mean((1, 2)), x[:, 1].mean((1, 2)),
                                x[:, 0, :, :half].mean((1, 2)) - x[:, 0, :, half:].mean((1, 2))], 1))
    return torch.cat(out).numpy()


@pytest.mark.slow
def test_training_crops_are_statistically_equivalent_through_the_loaders(manifest: Path) -> None:
    """Through real loaders (PIL crops drawn in 2 worker processes, device crops in this process, each
    with its own random streams), the crops' position, scale and flip statistics match: two-sample
    Kolmogorov-Smirnov tests per statistic and image do not reject (seeded: the outcome is fixed)."""
    m = read_manifest(manifest)
    torch.manual_seed(0)
    a = _crop_colours(input_pipeline(m, "train", SMALL, "workers", CPU, train=True), 1200, num_workers=2)
    torch.manual_seed(1)
    b = _crop_colours(input_pipeline(m, "train", SMALL, "device", CPU, train=True), 1200, num_workers=0)
    n_images = len(SIZES) + 1
    pvalues = [stats.ks_2samp(a[i::n_images, k], b[i::n_images, k]).pvalue
               for i in range(n_images) for k in range(3) if i != 4 or k == 2]  # grayscale: only the flip
    assert min(pvalues) > 0.001 / len(pvalues), sorted(pvalues)[:3]
    # The statistics see the crops: flipped and unflipped crops differ (about half each).
    assert 0.4 < (b[:, 2] > 0).mean() < 0.6
    # ...and a shifted distribution would be rejected: crops drawn from the left half only.
    shifted = a.copy()
    shifted[:, 0] *= 0.8
    assert stats.ks_2samp(shifted[0::n_images, 0], b[0::n_images, 0]).pvalue < 1e-6


def test_uint8_pipeline_normalises_as_the_float_transforms_did(manifest: Path) -> None:
    """Workers' uint8 crops + normalize on the device == ToTensor + Normalize in the workers, bit for bit
    (so moving the arithmetic to the device changes no result)."""
    m = read_manifest(manifest)
    pil = input_pipeline(m, "test", CFG, "workers", CPU, train=False)
    old = T.Compose([T.Resize(CFG.resize), T.CenterCrop(CFG.image_size), T.ToTensor(),
                     T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    for i, path in enumerate(pil.dataset.files):
        with Image.open(path) as img:
            ref = old(img.convert("RGB"))
        assert torch.equal(normalize(pil.dataset[i][0][None])[0], ref)


def test_normalize_refuses_float_input() -> None:
    with pytest.raises(TypeError, match="uint8"):
        normalize(torch.zeros(1, 3, 2, 2))


def test_unknown_decode_is_refused(manifest: Path) -> None:
    with pytest.raises(ValueError, match="'gpu'"):
        input_pipeline(read_manifest(manifest), "test", CFG, "gpu", CPU, train=False)  # type: ignore[arg-type]
