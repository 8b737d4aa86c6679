"""The data behind the figures and the DVC plots (per-class utility over seeds, per-class FAR and FRR
at the global threshold, training curves), and the figures of each pair."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from tcm import figures
from tcm.config import Config
from tcm.report.definitions import Pair, seed_list
from tcm.report.runs import evaluated_seeds
from tcm.runfiles import LOSS_PARTS, RunDir
from tcm.stats import headline


def utility_over_seeds(curves: list[pd.DataFrame]) -> pd.DataFrame:
    """Per-class utility vs threshold over seeds: each seed's curves.csv is sampled on its own
    calibration range, so the seeds are interpolated onto one grid (as many evenly spaced thresholds
    as a seed has, over the range every seed covers; the union where they share none) and summarised
    per class and threshold: mean ('utility'), min ('low'), max ('high') and the seeds with a value.

    >>> c = pd.DataFrame({"class": ["overall"] * 2, "threshold": [0.0, 1.0], "utility": [0.0, 1.0]})
    >>> utility_over_seeds([c, c.assign(utility=[0.5, 1.0])])["utility"].tolist()[:2]
    [0.25, 1.0]
    """
    lo = max(float(c["threshold"].min()) for c in curves)
    hi = min(float(c["threshold"].max()) for c in curves)
    if lo >= hi:
        lo, hi = min(float(c["threshold"].min()) for c in curves), max(float(c["threshold"].max()) for c in curves)
    points = max(int(c.groupby("class").size().max()) for c in curves)
    grid = np.linspace(lo, hi, points)
    frames = []
    for cls in sorted(set().union(*(set(c["class"]) for c in curves))):
        values = []
        for c in curves:
            g = c[c["class"] == cls].sort_values("threshold")
            if not g.empty:  # NaN outside a seed's own range: no extrapolation
                values.append(np.interp(grid, g["threshold"], g["utility"], left=np.nan, right=np.nan))
        v = np.vstack(values)
        with warnings.catch_warnings():  # a threshold no seed covers: all-NaN, dropped below
            warnings.simplefilter("ignore", RuntimeWarning)
            frames.append(pd.DataFrame({"class": cls, "threshold": grid, "utility": np.nanmean(v, axis=0),
                                        "low": np.nanmin(v, axis=0), "high": np.nanmax(v, axis=0),
                                        "seeds": (~np.isnan(v)).sum(axis=0)}))
    return pd.concat(frames, ignore_index=True).query("seeds > 0").reset_index(drop=True)


# Rows of the similarity matrix per block in :func:`class_rates_at`: bounded memory on large test sets.
_ROWS_PER_BLOCK = 1024


def class_rates_at(emb: np.ndarray, labels: np.ndarray, threshold: float) -> pd.DataFrame:
    """Per test class, FAR and FRR at one threshold on cosine similarity, as the threshold report
    defines them (src/tcm/metrics/threshold_report.py): FAR_i = negatives of class i (ordered pairs, first
    image in i) at or above the threshold / negatives of i; FRR_i = positives of i below it / positives
    of i (NaN without a positive pair). Exact similarities here; the evaluate stage counts them in
    histogram bins, so its min / median / max may differ from these by a bin width.

    >>> emb = np.array([[1.0, 0.0], [1.0, 0.1], [0.0, 1.0], [0.1, 1.0]])
    >>> class_rates_at(emb, np.array([0, 0, 1, 1]), 0.9)[["FAR", "FRR"]].to_numpy().tolist()
    [[0.0, 0.0], [0.0, 0.0]]
    """
    x = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    classes, y = np.unique(labels, return_inverse=True)
    k = len(classes)
    pos = np.zeros(k)
    pos_in = np.zeros(k)
    neg = np.zeros(k)
    neg_in = np.zeros(k)
    for start in range(0, len(y), _ROWS_PER_BLOCK):
        rows = slice(start, start + _ROWS_PER_BLOCK)
        accepted = x[rows] @ x.T >= threshold
        same = y[rows, None] == y[None, :]
        same[np.arange(same.shape[0]), np.arange(start, start + same.shape[0])] = False  # not a pair with itself
        other = y[rows, None] != y[None, :]
        for total, hits, mask in ((pos, pos_in, same), (neg, neg_in, other)):
            total += np.bincount(y[rows], weights=mask.sum(axis=1), minlength=k)
            hits += np.bincount(y[rows], weights=(mask & accepted).sum(axis=1), minlength=k)
    with np.errstate(invalid="ignore", divide="ignore"):
        return pd.DataFrame({"class": [str(c) for c in classes], "FAR": neg_in / neg,
                             "FRR": np.where(pos > 0, 1.0 - pos_in / pos, np.nan)})


def class_rates(cfg: Config, pairs: list[Pair]) -> pd.DataFrame:
    """Per pair, both runs' per-class FAR and FRR at their own global threshold (metrics.json's
    threshold_report: the threshold where the overall FAR meets evaluation.target_far), on the
    pair's first common seed with embeddings. curves.csv cannot give these: it samples only the
    calibration range (overall FAR in evaluation.opis.far_range), which lies below the global
    threshold of a small target FAR, so the rates come from the seed's embeddings.npz."""
    frames = []
    for p in pairs:
        names = (p.without, p.with_tcm)
        seed = first_common_seed(cfg, names, RunDir.seed_embeddings)
        if seed is None:
            continue
        for name in names:
            tr = json.loads(cfg.run_dir(name).seed_metrics(seed).read_text()).get("threshold_report")
            if not tr:
                continue
            emb, labels = load_embeddings(cfg.run_dir(name).seed_embeddings(seed))
            frames.append(class_rates_at(emb, labels, tr["threshold"]).assign(
                comparison=p.key, run=name, tcm=cfg.runs[name].tcm.enabled, seed=seed, threshold=tr["threshold"],
                **{"target FAR": tr["target_far"], "overall FRR": tr["overall_frr"]}))
    columns = ["comparison", "run", "tcm", "seed", "class", "threshold", "target FAR", "FAR", "FRR", "overall FRR"]
    return pd.concat(frames)[columns].reset_index(drop=True) if frames else pd.DataFrame(columns=columns)


def load_embeddings(path: Path) -> tuple[np.ndarray, np.ndarray]:
    with np.load(path) as z:
        return z["embeddings"], z["labels"]


def first_common_seed(cfg: Config, names: tuple[str, ...], file: Callable[[RunDir, int], Path]) -> int | None:
    """The first seed every run of ``names`` has evaluated and has ``file`` for (per-class figures show one seed)."""
    common = set.intersection(*(set(evaluated_seeds(cfg, n)) for n in names))
    return next((s for s in sorted(common) if all(file(cfg.run_dir(n), s).is_file() for n in names)), None)


def _with_recall(cfg: Config, name: str, seed: int, label: str) -> str:
    """``label`` with the seed's Recall@1 and OPIS, where its metrics.json has them."""
    path = cfg.run_dir(name).seed_metrics(seed)
    m = headline(json.loads(path.read_text())) if path.is_file() else {}
    return f"{label} (R@1 {m['R@1']:.3f}, OPIS {m['OPIS']:.4f})" if {"R@1", "OPIS"} <= set(m) else label


def pair_figures(cfg: Config, pair: Pair, out: Path) -> dict[str, Path]:
    stem = pair.key.replace("/", "_")
    names = (pair.without, pair.with_tcm)
    made: dict[str, Path] = {}
    seed = first_common_seed(cfg, names, RunDir.seed_curves)
    if seed is not None:
        a, b = (pd.read_csv(cfg.run_dir(n).seed_curves(seed), dtype={"class": str}) for n in names)
        made[f"Per-class utility vs threshold: {pair.key} (seed {seed})"] = figures.save(
            figures.utility_pair(a, b, f"{pair.key} (seed {seed})"), out / f"utility_{stem}.png")
    seed = first_common_seed(cfg, names, RunDir.seed_embeddings)
    if seed is not None:
        emb = {label: load_embeddings(cfg.run_dir(n).seed_embeddings(seed))
               for label, n in zip(("without TCM", "with TCM"), names)}
        tcm = cfg.runs[pair.with_tcm].tcm
        made[f"Pair similarity histograms: {pair.key} (seed {seed})"] = figures.save(
            figures.similarity_histograms(emb, (tcm.pos_margin, tcm.neg_margin), f"{pair.key} (seed {seed})"),
            out / f"similarities_{stem}.png")
        # 2-D (the toy): every seed both runs have embeddings of, one row each, as the picture is judged
        # across seeds; higher dimensions: the first seed's PCA (large test sets: each seed costs a load).
        seeds = [seed]
        if all(e.shape[1] == 2 for e, _ in emb.values()):
            seeds = [s for s in sorted(set.intersection(*(set(evaluated_seeds(cfg, n)) for n in names)))
                     if all(cfg.run_dir(n).seed_embeddings(s).is_file() for n in names)]
        rows = {f"seed {s}": {_with_recall(cfg, n, s, label): emb[label] if s == seed
                              else load_embeddings(cfg.run_dir(n).seed_embeddings(s))
                              for label, n in zip(("without TCM", "with TCM"), names)} for s in seeds}
        made[f"Test embeddings in 2-D: {pair.key} (seeds {seed_list(seeds)})"] = figures.save(
            figures.embeddings_grid(rows, pair.key), out / f"embeddings_{stem}.png")
    return made


def curves_long(histories: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """Every run's training curves, mean over seeds, one row per (run, part, epoch): the data of the
    `dvc plots show` overlay (dvc.yaml, .dvc/plots/runs_overlay.json colours by run, one panel per part).

    >>> h = pd.DataFrame({"seed": [0, 0, 1, 1], "epoch": [1, 2, 1, 2], "loss": [1.0, 0.5, 3.0, 1.5],
    ...                   "base_loss": [1.0, 0.5, 3.0, 1.5], "tcm_loss": [0.0] * 4})
    >>> curves_long({"r": h}).query("part == 'loss'")["value"].tolist()
    [2.0, 1.0]
    """
    frames = [h.groupby("epoch", as_index=False)[list(LOSS_PARTS)].mean()
              .melt(id_vars="epoch", var_name="part", value_name="value").assign(run=name)
              for name, h in histories.items()]
    columns = ["run", "part", "epoch", "value"]
    return pd.concat(frames)[columns].reset_index(drop=True) if frames else pd.DataFrame(columns=columns)
