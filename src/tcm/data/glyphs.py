"""The embedded default data set: an open world of random glyphs, generated and written as PNG files.

Why not scikit-learn's digits: 5 test classes make OPIS noise (a class-stratified bootstrap put its
sd at 16-41 % of its value). OPIS needs many test classes whose similarity spreads differ, and the
paper's regime needs a backbone pretrained on classes disjoint from both splits. So each class here
is a glyph of a few random strokes, and each class has its own *corruption level* (how far its
images stray: rotation, shift, scale, stroke width, noise, occlusion), so some classes are tight and
some loose, as real classes are. Classes split three ways, disjoint: ``pretrain`` (the upstream
pretraining stage, like ImageNet for the paper), ``train`` and ``test`` (the open-world splits).

Everything is drawn from ``numpy.random.default_rng([seed, class])``: the same settings give the
same pixels on every machine (PIL's drawing and resampling are integer-exact).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw

from tcm.config import GlyphsConfig

SUPERSAMPLE = 4  # glyphs are drawn at 4x and downsampled, so strokes are anti-aliased


def class_splits(g: GlyphsConfig) -> list[str]:
    """The split of each class id 0..n-1: pretrain classes first, then train, then test.

    >>> class_splits(GlyphsConfig(pretrain_classes=1, train_classes=2, test_classes=2))
    ['pretrain', 'train', 'train', 'test', 'test']
    """
    return ["pretrain"] * g.pretrain_classes + ["train"] * g.train_classes + ["test"] * g.test_classes


def corruption_level(g: GlyphsConfig, label: int) -> float:
    """A class's corruption level in [0, 1): uniform over classes, so spreads differ from class to class."""
    return float(np.random.default_rng([g.seed, label, 1]).uniform(0.0, 1.0))


def _strokes(rng: np.random.Generator) -> list[np.ndarray]:
    """2-4 polylines of 2-4 points each, in the unit square's central 70 %."""
    return [rng.uniform(0.15, 0.85, size=(rng.integers(2, 5), 2)) for _ in range(rng.integers(2, 5))]


def render(strokes: list[np.ndarray], size: int, level: float, rng: np.random.Generator) -> np.ndarray:
    """One image of a glyph: strokes under a random similarity transform whose range grows with the
    class's corruption ``level``, then noise and, with probability ``level / 2``, an occluding square.
    Returns a (size, size) uint8 array (white strokes on black)."""
    big = size * SUPERSAMPLE
    angle = np.deg2rad(rng.normal(0.0, 4.0 + 20.0 * level))
    scale = 1.0 + rng.normal(0.0, 0.04 + 0.12 * level)
    shift = rng.normal(0.0, 0.02 + 0.08 * level, size=2)
    rot = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    width = max(1, int(round(big * rng.uniform(0.05, 0.05 + 0.05 * level))))
    canvas = Image.new("L", (big, big), 0)
    draw = ImageDraw.Draw(canvas)
    for line in strokes:
        pts = ((line - 0.5) @ rot.T + 0.5 + shift) * big
        draw.line([tuple(p) for p in pts], fill=255, width=width, joint="curve")
    img = np.asarray(canvas.resize((size, size), Image.Resampling.BOX), dtype=np.float64)
    img = img + rng.normal(0.0, 8.0 + 50.0 * level, size=img.shape)
    if rng.uniform() < level / 2:
        side = int(rng.integers(size // 4, size // 2))
        y, x = rng.integers(0, size - side, size=2)
        img[y:y + side, x:x + side] = 0.0
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def class_images(g: GlyphsConfig, label: int) -> list[np.ndarray]:
    """The ``per_class`` images of class ``label`` (deterministic in ``g.seed`` and ``label``)."""
    strokes = _strokes(np.random.default_rng([g.seed, label, 0]))
    level = corruption_level(g, label)
    rng = np.random.default_rng([g.seed, label, 2])
    return [render(strokes, g.size, level, rng) for _ in range(g.per_class)]


def prepare_glyphs(g: GlyphsConfig, out_dir: Path) -> pd.DataFrame:
    """Write every class's images as ``images/<label>/<i>.png`` under ``out_dir``; returns the manifest table."""
    rows = []
    for label, split in enumerate(class_splits(g)):
        folder = out_dir / "images" / f"{label:04d}"
        folder.mkdir(parents=True, exist_ok=True)
        for i, img in enumerate(class_images(g, label)):
            rel = f"images/{label:04d}/{i:03d}.png"
            Image.fromarray(img, mode="L").save(out_dir / rel)
            rows.append((rel, label, split))
    return pd.DataFrame(rows, columns=["path", "label", "split"])
