"""Display helpers for the stage notebooks: thin views over result files, so the notebooks stay
one library call plus displays, and the stages that show them do not import the report."""

from __future__ import annotations

from typing import Mapping

import pandas as pd

from tcm import figures
from tcm.config import Config
from tcm.stats import headline, spread


def split_counts(manifest) -> pd.DataFrame:
    """Images and classes per split of a manifest."""
    return manifest.table.groupby("split").agg(images=("path", "size"), classes=("label", "nunique"))


def metrics_frame(per_seed: Mapping[int, Mapping]) -> pd.DataFrame:
    """Headline metrics of each seed (columns) with their mean and sd over seeds."""
    table = pd.DataFrame({f"seed {s}": headline(m) for s, m in sorted(per_seed.items())})
    spreads = [spread(row.to_numpy()) for _, row in table.iterrows()]
    return table.assign(mean=[s.mean for s in spreads], sd=[s.sd for s in spreads])


def plot_run_utility(cfg: Config, name: str, seed: int | None = None):
    """Per-class utility vs threshold of one evaluated run (its first evaluated seed by default)."""
    run_dir = cfg.run_dir(name)
    seed = run_dir.evaluated_seeds()[0] if seed is None else seed
    curves = pd.read_csv(run_dir.seed_curves(seed), dtype={"class": str})
    return figures.run_utility(curves, f"{name} (seed {seed}): per-class utility")


def sample_images(manifest):
    return figures.sample_images(manifest)


def plot_history(history: pd.DataFrame, title: str = ""):
    return figures.history(history, title)
