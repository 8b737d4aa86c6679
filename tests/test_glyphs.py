"""The generated open world of the default: deterministic, three disjoint class splits, spreads that
differ between classes, real PNG files through the same manifest path as the benchmarks."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import tiny_glyphs_params
from PIL import Image

from tcm.config import ConfigError, GlyphsConfig, parse_config
from tcm.data import prepare, read_manifest
from tcm.data.glyphs import class_images, corruption_level


def test_same_settings_same_pixels_and_classes_differ():
    g = GlyphsConfig(pretrain_classes=0, train_classes=2, test_classes=2, per_class=3)
    a, b = class_images(g, 1), class_images(g, 1)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    other_seed = class_images(g.model_copy(update={"seed": 1}), 1)
    assert not np.array_equal(a[0], other_seed[0])
    assert not np.array_equal(a[0], class_images(g, 2)[0])
    assert a[0].shape == (32, 32) and a[0].dtype == np.uint8


def test_corruption_levels_spread_and_widen_a_class():
    """Each class has its own level, and a higher level scatters its images further from their mean."""
    g = GlyphsConfig(pretrain_classes=0, train_classes=20, test_classes=20, per_class=30)
    levels = np.array([corruption_level(g, c) for c in range(40)])
    assert levels.min() < 0.2 and levels.max() > 0.8
    spread = [np.std(np.stack(class_images(g, c)).astype(float), axis=0).mean() for c in range(40)]
    assert np.corrcoef(levels, spread)[0, 1] > 0.5


def test_prepare_writes_pngs_and_disjoint_splits(tmp_path):
    cfg = parse_config(tiny_glyphs_params())
    manifest = read_manifest(prepare(cfg.dataset("glyphs"), tmp_path / "glyphs").parent)
    t = manifest.table
    assert t.groupby("split")["label"].nunique().to_dict() == {"pretrain": 8, "train": 6, "test": 6}
    assert (t.groupby("label").size() == 8).all()
    by_split = {s: set(t.label[t.split == s]) for s in ("pretrain", "train", "test")}
    assert not (by_split["pretrain"] & by_split["train"]) and not (by_split["train"] & by_split["test"])
    with Image.open(manifest.image_root / t.path.iloc[0]) as img:
        assert img.format == "PNG" and img.mode == "L" and img.size == (32, 32)
    assert len(manifest.split("pretrain")) == 64


def test_glyphs_settings_belong_to_glyphs():
    raw = tiny_glyphs_params()
    raw["datasets"]["glyphs"]["source"] = "sklearn_digits"
    raw["datasets"]["glyphs"]["train_classes"] = [0, 1]
    with pytest.raises(ConfigError, match="glyphs: settings are required for source 'glyphs' and apply to it only"):
        parse_config(raw)
    raw = tiny_glyphs_params()
    raw["datasets"]["glyphs"]["glyphs"]["pretrain_classes"] = 0
    with pytest.raises(ConfigError, match="pretrain needs a data set with a pretrain split"):
        parse_config(raw)
