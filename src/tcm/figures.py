"""Figures from result files: each function draws one kind of plot and returns the figure or
writes it as PNG + PDF. Used by the report stage and by the notebooks."""

from __future__ import annotations

from pathlib import Path

# No matplotlib.use(): notebooks keep their inline backend; headless runs fall back to Agg by themselves.
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.ticker import MaxNLocator

from tcm.atomic import atomic_path
from tcm.notebook import draw_utility

# Matplotlib writes dates into PNG and PDF files; without them unchanged results give unchanged files.
_METADATA = {".png": {"Software": None}, ".pdf": {"CreationDate": None, "Producer": None}}


def save(fig: plt.Figure, png: Path) -> Path:
    """Write ``png`` and a PDF twin beside it; returns the PNG path."""
    for path in (png, png.with_suffix(".pdf")):
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format=path.suffix[1:], dpi=120, metadata=_METADATA[path.suffix])
    plt.close(fig)
    return png


def utility_pair(without: pd.DataFrame, with_tcm: pd.DataFrame, title: str) -> plt.Figure:
    """Per-class utility vs threshold without and with TCM (the paper's figure 2 style)."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True, layout="constrained")
    draw_utility(axes[0], without, f"{title} — without TCM")
    draw_utility(axes[1], with_tcm, f"{title} — with TCM")
    fig.suptitle("Per-class utility over the calibration range (one line per test class)")
    return fig


def pareto_front(recall: np.ndarray, opis: np.ndarray) -> np.ndarray:
    """Indices of the points no other point beats on both axes (higher Recall@1, lower OPIS),
    ordered by Recall@1.

    >>> pareto_front(np.array([0.5, 0.6, 0.7]), np.array([0.01, 0.03, 0.02])).tolist()
    [0, 2]
    """
    order = np.lexsort((opis, -recall))  # best recall first; ties: lower OPIS first
    front, best = [], np.inf
    for i in order:
        if opis[i] < best:
            front.append(i)
            best = opis[i]
    return np.array(sorted(front, key=lambda i: recall[i]), dtype=int)


def _errors(sd: pd.Series) -> np.ndarray:
    """Error bar lengths: no bar (0) where one seed gives no sd."""
    return sd.fillna(0.0).to_numpy(float)


def landscape(summary: pd.DataFrame) -> plt.Figure:
    """Recall@1 vs OPIS of every evaluated run (mean ± sd over seeds as error bars), without / with
    TCM, with the Pareto frontier of the means."""
    fig, ax = plt.subplots(figsize=(6.5, 4.8), layout="constrained")
    for tcm, marker in ((False, "o"), (True, "^")):
        d = summary[summary["tcm"] == tcm]
        ax.errorbar(d["R@1 mean"], d["OPIS mean"], xerr=_errors(d["R@1 sd"]), yerr=_errors(d["OPIS sd"]),
                    fmt=marker, ms=7, capsize=3, label="with TCM" if tcm else "without TCM")
        for _, r in d.iterrows():
            ax.annotate(r["run"], (r["R@1 mean"], r["OPIS mean"]), fontsize=7, xytext=(4, 4),
                        textcoords="offset points")
    recall, opis = summary["R@1 mean"].to_numpy(float), summary["OPIS mean"].to_numpy(float)
    front = pareto_front(recall, opis)
    if len(front) > 1:
        ax.plot(recall[front], opis[front], "k--", lw=1, label="Pareto frontier (means)")
    ax.set(xlabel="Recall@1", ylabel="OPIS (lower = more threshold-consistent)",
           title="Accuracy vs threshold consistency (mean ± sd over seeds)")
    ax.legend(fontsize=8)
    return fig


def training_curves(histories: dict[str, pd.DataFrame]) -> plt.Figure:
    """Loss parts per epoch of every run: the mean over seeds, with a band from the min to the max
    seed (one colour per run)."""
    fig, axes = plt.subplots(1, 3, figsize=(15, 4), layout="constrained")
    colours = plt.get_cmap("tab10" if len(histories) <= 10 else "tab20")
    for i, (name, h) in enumerate(histories.items()):
        colour = colours(i % colours.N)
        n = h["seed"].nunique() if "seed" in h else 1
        for ax, col in zip(axes, ("loss", "base_loss", "tcm_loss")):
            g = h.groupby("epoch")[col].agg(["mean", "min", "max"])
            ax.plot(g.index, g["mean"], marker=".", color=colour, label=f"{name} ({n} seed{'s' * (n != 1)})")
            ax.fill_between(g.index, g["min"], g["max"], color=colour, alpha=0.2, lw=0)
    for ax, title in zip(axes, ("total loss", "base loss", "TCM term")):
        ax.set(xlabel="epoch", ylabel=title, title=f"{title} (mean over seeds, band = min to max)")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes[0].legend(fontsize=7)
    return fig


def tcm_effect(comparison: pd.DataFrame, differences: pd.DataFrame) -> plt.Figure:
    """Per comparison, the mean paired change with TCM (with - without) of OPIS and of Recall@1
    (in points), with its 95% t interval as a bar and each seed's change as a dot.

    ``comparison``: the report's comparison table (columns ``comparison``, ``<m> change``,
    ``<m> change low``, ``<m> change high``); ``differences``: one row per comparison and seed
    (``comparison``, ``seed``, ``<m> change``)."""
    keys = list(comparison["comparison"])
    fig, axes = plt.subplots(1, 2, figsize=(11, 1.2 + 0.45 * len(keys)), sharey=True, layout="constrained",
                             squeeze=False)
    y = {k: i for i, k in enumerate(keys)}
    seeds = sorted(differences["seed"].unique())
    # Small fixed vertical offsets keep seeds apart without random jitter (figures stay deterministic).
    offset = {s: 0.25 * (j - (len(seeds) - 1) / 2) / max(len(seeds) - 1, 1) for j, s in enumerate(seeds)}
    for ax, (m, scale, label) in zip(axes[0], (("OPIS", 1.0, "OPIS change (lower = more consistent)"),
                                                ("R@1", 100.0, "Recall@1 change (points)"))):
        mean, low, high = (comparison[f"{m} change{part}"].to_numpy(float) * scale for part in ("", " low", " high"))
        ys, has = np.arange(len(keys)), ~np.isnan(low)
        ax.errorbar(mean[has], ys[has], xerr=[mean[has] - low[has], high[has] - mean[has]], fmt="o", color="black",
                    capsize=4, label="mean, 95% t interval")
        if (~has).any():
            ax.plot(mean[~has], ys[~has], "o", color="black", mfc="white", label="mean (1 seed: no interval)")
        for s in seeds:
            d = differences[(differences["seed"] == s) & differences["comparison"].isin(y)]
            ax.scatter(d[f"{m} change"] * scale, [y[k] + offset[s] for k in d["comparison"]], s=14, alpha=0.7,
                       label=f"seed {s}")
        ax.axvline(0, color="grey", lw=1, ls="--")
        ax.set(xlabel=label, title=f"{m}: with - without TCM, paired over seeds")
    axes[0][0].set_yticks(range(len(keys)), keys, fontsize=8)
    axes[0][0].invert_yaxis()
    axes[0][1].legend(fontsize=7, loc="best")
    return fig


def _sample(emb: np.ndarray, labels: np.ndarray, limit: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    if len(labels) <= limit:
        return emb, labels
    idx = np.sort(np.random.default_rng(seed).choice(len(labels), limit, replace=False))
    return emb[idx], labels[idx]


def pair_similarities(emb: np.ndarray, labels: np.ndarray, limit: int = 3000) -> tuple[np.ndarray, np.ndarray]:
    """Cosine similarities of positive and negative pairs (a fixed random sample of at most
    ``limit`` images keeps this bounded on large test sets)."""
    x, y = _sample(emb, labels, limit)
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    sims = x @ x.T
    upper = np.triu(np.ones_like(sims, dtype=bool), k=1)
    same = y[:, None] == y[None, :]
    return sims[upper & same], sims[upper & ~same]


def similarity_histograms(runs: dict[str, tuple[np.ndarray, np.ndarray]], margins: tuple[float, float],
                          title: str) -> plt.Figure:
    """Positive / negative pair similarity histograms per run, with TCM's margins m+ and m- marked."""
    fig, axes = plt.subplots(1, len(runs), figsize=(5.5 * len(runs), 3.8), sharey=True, squeeze=False,
                             layout="constrained")
    for ax, (label, (emb, y)) in zip(axes[0], runs.items()):
        pos, neg = pair_similarities(emb, y)
        bins = np.linspace(-1, 1, 81)
        ax.hist(neg, bins=bins, density=True, alpha=0.6, label="negative pairs")
        ax.hist(pos, bins=bins, density=True, alpha=0.6, label="positive pairs")
        ax.axvline(margins[0], color="green", ls="--", lw=1, label="m+")
        ax.axvline(margins[1], color="red", ls="--", lw=1, label="m-")
        ax.set(title=f"{title} — {label}", xlabel="cosine similarity", ylabel="density")
        ax.legend(fontsize=7)
    return fig


def embeddings_2d(runs: dict[str, tuple[np.ndarray, np.ndarray]], title: str) -> plt.Figure:
    """Test embeddings in 2-D: as they are when 2-D (the toy), else their first two principal
    components (fitted on each run's own embeddings)."""
    fig, axes = plt.subplots(1, len(runs), figsize=(5 * len(runs), 5), squeeze=False, layout="constrained")
    for ax, (label, (emb, y)) in zip(axes[0], runs.items()):
        x, y = _sample(emb, y, 5000)
        if x.shape[1] != 2:
            from sklearn.decomposition import PCA

            x = PCA(n_components=2, random_state=0).fit_transform(x)
            label += " (PCA)"
        classes = np.unique(y)
        cmap = plt.get_cmap("tab10" if len(classes) <= 10 else "tab20")
        for i, c in enumerate(classes[:20]):
            m = y == c
            ax.scatter(x[m, 0], x[m, 1], s=4, alpha=0.6, color=cmap(i % cmap.N), label=str(c), rasterized=True)
        ax.set(title=f"{title} — {label}", aspect="equal")
        if len(classes) <= 10:
            ax.legend(fontsize=7, markerscale=3, loc="upper right")
    return fig
