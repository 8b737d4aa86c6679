"""Exploring one trained run (notebooks/explore_run.ipynb): find it by MLflow run id or name,
load its checkpoint and test embeddings, and look at neighbours, per-class consistency and a
threshold for a target FAR."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

# No matplotlib.use(): notebooks keep their inline backend; headless runs fall back to Agg by themselves.
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from tcm.config import Config, ConfigError
from tcm.data import read_manifest
from tcm.files import CURVES, EMBEDDINGS, METRICS
from tcm.train import load_trained


@dataclass(frozen=True)
class RunView:
    name: str
    embeddings: np.ndarray  # (N, d), test split, manifest order
    labels: np.ndarray
    images: list[Path]
    metrics: dict
    curves: pd.DataFrame
    checkpoint: dict  # epoch, settings, ... (no tensors)


def resolve_run(cfg: Config, ref: str) -> str:
    """A run name of params.yaml, given the name itself or the id of its MLflow run."""
    if ref in cfg.runs:
        return ref
    for name in cfg.runs:
        info = cfg.run_dir(name) / "run.json"
        if info.is_file() and json.loads(info.read_text()).get("mlflow_run_id") == ref:
            return name
    raise ConfigError(f"run {ref!r} is neither a run of params.yaml ({sorted(cfg.runs)}) nor the MLflow run id of one")


def load_run(cfg: Config, ref: str) -> RunView:
    name = resolve_run(cfg, ref)
    d = cfg.run_dir(name)
    for f in (EMBEDDINGS, METRICS, CURVES):
        if not (d / f).is_file():
            raise FileNotFoundError(f"{d / f}: not found; train and evaluate run {name!r} first (dvc repro)")
    model, state = load_trained(d)
    with np.load(d / EMBEDDINGS) as z:
        emb, labels = z["embeddings"], z["labels"]
    manifest = read_manifest(cfg.data_dir(cfg.runs[name].dataset))
    test = manifest.split("test")
    meta = {k: v for k, v in state.items() if k in ("epoch", "settings", "config_hash")}
    meta["parameters"] = sum(p.numel() for p in model.parameters())
    return RunView(name, emb, labels, [manifest.image_root / p for p in test["path"]],
                   json.loads((d / METRICS).read_text()), pd.read_csv(d / CURVES, dtype={"class": str}), meta)


def nearest_neighbours(emb: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k most similar other images of each query (cosine, ties by index)."""
    x = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    sims = x[queries] @ x.T
    sims[np.arange(len(queries)), queries] = -np.inf
    return np.argsort(-sims, axis=1, kind="stable")[:, :k]


def neighbour_grid(view: RunView, n_queries: int = 6, k: int = 5, seed: int = 0) -> plt.Figure:
    """Sample queries (rows) and their k nearest test images; green frame = same class, red = other."""
    from PIL import Image

    queries = np.sort(np.random.default_rng(seed).choice(len(view.labels), n_queries, replace=False))
    nn = nearest_neighbours(view.embeddings, queries, k)
    fig, axes = plt.subplots(n_queries, k + 1, figsize=(1.6 * (k + 1), 1.7 * n_queries), squeeze=False)
    for row, q, neigh in zip(axes, queries, nn):
        for ax, idx in zip(row, [q, *neigh]):
            with Image.open(view.images[idx]) as img:
                ax.imshow(img.convert("RGB"))
            ax.set_xticks([]), ax.set_yticks([])
            if idx == q:
                ax.set_title(f"query: {view.labels[q]}", fontsize=8)
                continue
            colour = "green" if view.labels[idx] == view.labels[q] else "red"
            for spine in ax.spines.values():
                spine.set_edgecolor(colour)
                spine.set_linewidth(3)
            ax.set_title(str(view.labels[idx]), fontsize=8, color=colour)
    fig.suptitle(f"{view.name}: nearest test neighbours (green = right class, red = wrong)")
    fig.tight_layout()
    return fig


def least_consistent_classes(curves: pd.DataFrame, n: int = 10) -> pd.DataFrame:
    """Classes whose utility curve departs most from the overall one: their share of OPIS."""
    # Rows of each class follow the same threshold grid, so the i-th row of a class pairs with the
    # i-th row of the pooled curve (thresholds may repeat on a coarse grid, so no join on them).
    step = curves.groupby("class").cumcount()
    overall = curves.loc[curves["class"] == "overall", "utility"].to_numpy()
    per = curves[curves["class"] != "overall"]
    gap = per.assign(sq=(per["utility"].to_numpy() - overall[step[per.index].to_numpy()]) ** 2)
    table = gap.groupby("class").agg(mean_sq_gap=("sq", "mean"), mean_utility=("utility", "mean"))
    table["share_of_opis"] = table["mean_sq_gap"] / table["mean_sq_gap"].sum()
    return table.sort_values("mean_sq_gap", ascending=False).head(n)


def threshold_summary(metrics: dict) -> pd.DataFrame:
    """The global threshold at the target FAR and the spread of per-class FAR and FRR at it."""
    rep = metrics.get("threshold_report")
    if rep is None:
        raise KeyError("metrics.json has no threshold_report; re-run the evaluate stage")
    rows = {f"class {kind} {stat}": value for kind in ("far", "frr") for stat, value in rep[f"class_{kind}"].items()}
    head = {"target FAR": rep["target_far"], "threshold": rep["threshold"], "overall FAR": rep["overall_far"],
            "overall FRR": rep["overall_frr"]}
    return pd.DataFrame({"value": {**head, **rows}})
