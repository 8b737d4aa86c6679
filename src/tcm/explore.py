"""Exploring one trained run (notebooks/explore_run.ipynb): find it by MLflow run id or name,
load its checkpoint and test embeddings, and look at neighbours, per-class consistency and a
threshold for a target FAR."""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

# No matplotlib.use(): notebooks keep their inline backend; headless runs fall back to Agg by themselves.
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from tcm.checkpoint import load_trained
from tcm.config import Config, ConfigError
from tcm.data import read_manifest
from tcm.metrics.opis import class_gaps, curves_from_table
from tcm.tracking import Tracker


@dataclass(frozen=True)
class RunView:
    name: str
    seed: int
    embeddings: np.ndarray  # (N, d), test split, manifest order
    labels: np.ndarray
    images: list[Path]
    metrics: dict
    curves: pd.DataFrame
    checkpoint: dict  # epoch, settings, ... (no tensors)


def resolve_run(cfg: Config, ref: str) -> tuple[str, int | None, str | None]:
    """(run name of params.yaml, seed or None, MLflow run id or None) of a run name, or of an MLflow
    run id (looked up in the store: the id is machine-specific, so result files do not hold it)."""
    if ref in cfg.runs:
        return ref, None, None
    tracker = Tracker(cfg)
    tags = {}
    if tracker.enabled:
        try:
            tags = tracker.client.get_run(ref).data.tags
        except Exception:  # not an id of this store
            tags = {}
    if tags.get("tcm.run") in cfg.runs:
        seed = tags.get("tcm.seed")
        return tags["tcm.run"], int(seed) if seed is not None else None, ref
    raise ConfigError(f"run {ref!r} is neither a run of params.yaml ({sorted(cfg.runs)}) nor the id of an MLflow run "
                      f"of one in {cfg.mlflow.tracking_uri}")


@dataclass(frozen=True)
class _Files:
    checkpoint: Path | None  # None: the model is the MLflow run's logged model (model_uri)
    embeddings: Path
    metrics: Path
    curves: Path
    model_uri: str | None = None
    info: Path | None = None  # run.json (the settings), with model_uri


def _store_files(cfg: Config, run_id: str, seed: int) -> _Files:
    """The files an evaluated MLflow run logged (results/), downloaded from the store, and its logged
    model: the exact model of that id, whatever the workspace's runs/ holds now (or if it holds nothing)."""
    tracker = Tracker(cfg)
    dst = Path(tempfile.mkdtemp(prefix=f"tcm-{run_id[:8]}-"))
    try:
        tracker.client.download_artifacts(run_id, "results", str(dst))
    except Exception as e:
        raise FileNotFoundError(f"MLflow run {run_id}: its results are not in the store ({e}); evaluate the "
                                "run again") from None
    return _Files(None, dst / f"results/seed-{seed}.npz", dst / "results/metrics.json", dst / "results/curves.csv",
                  model_uri=f"runs:/{run_id}/model", info=dst / "results/run.json")


def _logged_model(cfg: Config, uri: str) -> tuple[object, dict]:
    """An MLflow run's logged network (mlflow.pytorch) and the checkpoint facts it was logged with."""
    import mlflow
    import mlflow.pytorch

    from tcm.tracking import store_uris

    mlflow.set_tracking_uri(store_uris(cfg)[0])
    try:
        info = mlflow.models.get_model_info(uri)
        model = mlflow.pytorch.load_model(uri)
    except Exception as e:
        raise FileNotFoundError(f"{uri}: no logged model in the store ({str(e).splitlines()[0][:200]}); evaluate "
                                "the run again with mlflow.log_model: true") from None
    return model, dict((info.metadata or {}).get("tcm", {}))


def load_run(cfg: Config, ref: str, seed: int | None = None) -> RunView:
    """One seed of a trained and evaluated run: by MLflow run id (its logged model and results, from the
    store), or by run name from the workspace's runs/ (the given seed, else the first evaluated)."""
    name, ref_seed, run_id = resolve_run(cfg, ref)
    if run_id is not None and ref_seed is not None and seed in (None, ref_seed):
        seed, files = ref_seed, _store_files(cfg, run_id, ref_seed)
    else:
        run_dir = cfg.run_dir(name)
        seeds = run_dir.evaluated_seeds()
        seed = seed if seed is not None else ref_seed if ref_seed is not None else (seeds[0] if seeds else None)
        if seed is None or seed not in seeds:
            raise FileNotFoundError(f"{run_dir.eval_dir}: no evaluated seed {'' if seed is None else seed} of run "
                                    f"{name!r} (evaluated: {seeds}); train and evaluate it first (dvc repro)")
        files = _Files(run_dir.checkpoint(seed), run_dir.seed_embeddings(seed), run_dir.seed_metrics(seed),
                       run_dir.seed_curves(seed))
    if files.checkpoint is None:
        model, state = _logged_model(cfg, files.model_uri)
        state = {**state, "settings": json.loads(files.info.read_text()).get("settings")}
    else:
        model, state = load_trained(files.checkpoint)
    with np.load(files.embeddings) as z:
        emb, labels = z["embeddings"], z["labels"]
    manifest = read_manifest(cfg.data_dir(cfg.runs[name].dataset))
    test = manifest.split("test")
    meta = {k: v for k, v in state.items() if k in ("epoch", "seed", "settings", "config_hash", "code")}
    meta["parameters"] = sum(p.numel() for p in model.parameters())
    return RunView(name, seed, emb, labels, [manifest.image_root / p for p in test["path"]],
                   json.loads(files.metrics.read_text()), pd.read_csv(files.curves, dtype={"class": str}), meta)


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
    fig.suptitle(f"{view.name} (seed {view.seed}): nearest test neighbours (green = right class, red = wrong)")
    fig.tight_layout()
    return fig


def least_consistent_classes(curves: pd.DataFrame, n: int = 10) -> pd.DataFrame:
    """Classes whose utility curve departs most from the overall one: their share of OPIS (uniform
    class weights)."""
    c = curves_from_table(curves)
    gaps = class_gaps(c)
    table = pd.DataFrame({"mean_sq_gap": gaps, "mean_utility": c.class_utility.mean(axis=1),
                          "share_of_opis": gaps / gaps.sum()}, index=pd.Index(c.classes, name="class"))
    return table.sort_values("mean_sq_gap", ascending=False).head(n)


def threshold_summary(metrics: dict) -> pd.DataFrame:
    """The global threshold at the target FAR and the per-class FAR and FRR at it, summarised over the classes."""
    rep = metrics.get("threshold_report")
    if rep is None:
        raise KeyError("metrics.json has no threshold_report; re-run the evaluate stage")
    rows = {f"class {kind} {stat}": value for kind in ("far", "frr") for stat, value in rep[f"class_{kind}"].items()}
    head = {"target FAR": rep["target_far"], "threshold": rep["threshold"], "overall FAR": rep["overall_far"],
            "overall FRR": rep["overall_frr"]}
    return pd.DataFrame({"value": {**head, **rows}})
