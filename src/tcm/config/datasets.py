"""``datasets.<name>``: where a data set comes from and how it is split, generated, checked and
prepared (and how training crops its images), and :func:`data_settings`, the part of it that the
data stage prepares from."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, NonNegativeFloat, PositiveFloat, Strict, model_validator

from tcm.config.base import MAX_BATCH, MAX_PIXELS, MAX_WORKERS, Seed, StrictModel, count
from tcm.config.registry import BACKBONES

DATASET_SOURCES = ("glyphs", "sklearn_digits", "mnist", "cub", "cars196", "sop", "inat2018")
# Sources whose images the package writes itself (no download): the data stage regenerates them.
EMBEDDED_SOURCES = ("glyphs", "sklearn_digits", "mnist")


class SyntheticConfig(StrictModel):
    """A tiny generated copy of a benchmark in its real format (the `smoke` profile)."""

    n_classes: count(10_000) = 8  # even: the lower half trains
    per_class: count(1_000) = 6
    size: tuple[count(MAX_PIXELS), count(MAX_PIXELS)] = (64, 48)  # width, height of each JPEG
    seed: Seed = 0


class GlyphsConfig(StrictModel):
    """The generated open world of the default (tcm.data.glyphs): three disjoint sets of classes."""

    pretrain_classes: count(100_000, lower=0) = 200  # for the upstream pretraining stage (the default's "ImageNet")
    train_classes: count(100_000, lower=2) = 100
    test_classes: count(100_000, lower=2) = 100
    per_class: Annotated[int, Strict(), Field(ge=2, le=10_000)] = 20
    size: Annotated[int, Strict(), Field(ge=8, le=512)] = 32  # pixels (square, grayscale PNG)
    seed: Seed = 0


class PretrainConfig(StrictModel):
    """Upstream pretraining of a backbone on the data set's ``pretrain`` classes (disjoint from train and
    test), as the paper's backbones come pretrained on ImageNet: softmax classification, once, shared
    by every run and seed that sets ``model.weights_path`` to its output (``pretrained/<dataset>/backbone.pt``)."""

    backbone: Literal[BACKBONES] = "small_cnn"  # type: ignore[valid-type]
    epochs: Annotated[int, Strict(), Field(gt=0, le=10_000)] = 10
    batch_size: count(MAX_BATCH) = 128
    lr: PositiveFloat = 1e-3  # Adam, cosine decay to 0
    weight_decay: NonNegativeFloat = 1e-4
    seed: Seed = 0


class DatasetConfig(StrictModel):
    source: Literal[DATASET_SOURCES]  # type: ignore[valid-type]
    # source glyphs: what to generate (required there, refused elsewhere).
    glyphs: GlyphsConfig | None = None
    # Pretrain a backbone on the `pretrain` split (sources with one: glyphs) in the pretrain stage.
    pretrain: PretrainConfig | None = None
    # Benchmarks only: generate a tiny copy under data/<name>/source and parse it with the real parser
    # (counts are then non-standard by design).
    synthetic: SyntheticConfig | None = None
    # Folder holding the official files as extracted (benchmarks only; digits ship with sklearn).
    root: Path | None = None
    # Open-world split for digits/MNIST: these classes train, the rest test.
    train_classes: list[Annotated[int, Strict()]] | None = None
    # Closed-set split for digits/MNIST instead (the toy): every class trains, and this share of each
    # class's images (a fixed draw) is held out as the test split.
    closed_set_test_share: float | None = Field(None, gt=0.0, lt=1.0)
    # Train: RandomResizedCrop(image_size, scale=crop_scale) (+ flip); test: Resize(resize) + CenterCrop.
    image_size: count(MAX_PIXELS) = 224
    resize: count(MAX_PIXELS) = 256
    crop_scale: tuple[PositiveFloat, PositiveFloat] = (0.08, 1.0)
    hflip: bool = True
    # Waive the standard per-split image/class counts (subsets, tiny test copies).
    allow_nonstandard_counts: bool = False
    # Benchmarks: 'exists' = every listed file is there, a regular file, non-empty; 'full' also decodes every image.
    verify: Literal["exists", "full"] = "exists"
    # Fetch the data set into `root` when it is not there (only where a stable public address exists: CUB).
    download: bool = False
    # Re-encode the images to this short side (JPEG) in the data stage; null = train on the originals.
    preprocess_short_side: count(MAX_PIXELS) | None = None
    preprocess_quality: Annotated[int, Strict()] = Field(90, ge=50, le=100)
    # Worker processes for full verification and preprocessing; null = all CPU cores.
    workers: count(MAX_WORKERS) | None = None

    @model_validator(mode="after")
    def _check(self) -> DatasetConfig:
        if self.preprocess_short_side is not None and self.preprocess_short_side < self.image_size:
            raise ValueError(f"preprocess_short_side ({self.preprocess_short_side}) must be >= image_size "
                             f"({self.image_size}), or the crops would be upsampled")
        if (self.glyphs is not None) != (self.source == "glyphs"):
            raise ValueError(f"glyphs: settings are required for source 'glyphs' and apply to it only "
                             f"(source '{self.source}')")
        if self.pretrain is not None and (self.glyphs is None or self.glyphs.pretrain_classes < 2):
            raise ValueError("pretrain needs a data set with a pretrain split of at least 2 classes "
                             "(source glyphs with glyphs.pretrain_classes >= 2)")
        if self.preprocess_short_side is not None and self.source in EMBEDDED_SOURCES:
            raise ValueError(f"preprocess_short_side applies to the benchmarks (cub, cars196, sop, inat2018), "
                             f"not to source '{self.source}'")
        lo, hi = self.crop_scale
        if not lo <= hi <= 1.0:
            raise ValueError(f"crop_scale must satisfy 0 < low <= high <= 1, but got {list(self.crop_scale)}")
        if self.resize < self.image_size:
            raise ValueError(f"resize ({self.resize}) must be >= image_size ({self.image_size})")
        if self.closed_set_test_share is not None:
            if self.source not in ("sklearn_digits", "mnist") or self.train_classes is not None:
                raise ValueError("closed_set_test_share applies to sources sklearn_digits and mnist, in place of "
                                 f"train_classes (got source '{self.source}', train_classes {self.train_classes})")
        elif self.source in ("sklearn_digits", "mnist"):
            if not self.train_classes:
                raise ValueError(f"train_classes (open world) or closed_set_test_share (closed set) is required "
                                 f"for source '{self.source}' (e.g. train_classes: [0, 1, 2, 3, 4])")
            bad = [c for c in self.train_classes if not 0 <= c <= 9]
            if bad or len(set(self.train_classes)) >= 10:
                raise ValueError(f"train_classes must be a proper subset of 0..9, but got {self.train_classes}")
        return self


def known_train_classes(ds: DatasetConfig) -> int | None:
    """How many classes the train split of ``ds`` will have, where params alone tell (digits, MNIST,
    synthetic copies); None for real benchmark files, whose count the train stage checks before
    writing anything."""
    if ds.glyphs is not None:
        return ds.glyphs.train_classes
    if ds.train_classes is not None:
        return len(set(ds.train_classes))
    if ds.closed_set_test_share is not None:
        return 10
    if ds.synthetic is not None:
        return ds.synthetic.n_classes // 2
    return None


# Settings of a data set that say how training and pretraining use its images, which the data stage
# never reads: an edit to them re-runs training, not `tcm data prepare` (the data stage depends on
# data_settings() only, written by the validate stage; tests/test_data_settings.py holds that the
# prepared files do not change with them).
TRAINING_ONLY_KEYS = ("image_size", "resize", "crop_scale", "hflip", "pretrain")


def data_settings(dataset: DatasetConfig) -> dict[str, Any]:
    """What the data stage prepares a data set from: its settings less :data:`TRAINING_ONLY_KEYS`."""
    return dataset.model_dump(mode="json", exclude=set(TRAINING_ONLY_KEYS))
