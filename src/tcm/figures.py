"""Figures from result files: each function draws one kind of plot and returns the figure or
writes it as PNG + PDF. Used by the report stage and by the notebooks."""

from __future__ import annotations

from pathlib import Path

# No matplotlib.use(): notebooks keep their inline backend; headless runs fall back to Agg by themselves.
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from tcm.io import atomic_path

# Matplotlib writes dates into PNG and PDF files; without them unchanged results give unchanged files.
_METADATA = {".png": {"Software": None}, ".pdf": {"CreationDate": None, "Producer": None}}


def save(fig: plt.Figure, png: Path) -> Path:
    """Write ``png`` and a PDF twin beside it; returns the PNG path."""
    for path in (png, png.with_suffix(".pdf")):
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format=path.suffix[1:], dpi=120, metadata=_METADATA[path.suffix])
    plt.close(fig)
    return png


def draw_utility(ax: plt.Axes, curves: pd.DataFrame, title: str) -> None:
    """One thin line per class from a curves.csv table, the pooled curve in bold black."""
    for _, g in curves[curves["class"] != "overall"].groupby("class"):
        ax.plot(g["threshold"], g["utility"], lw=1, alpha=0.6)
    o = curves[curves["class"] == "overall"]
    ax.plot(o["threshold"], o["utility"], color="black", lw=2.5, label="overall")
    ax.set(title=title, xlabel="cosine similarity threshold", ylabel="utility (F-score of TPR, TNR)")
    ax.legend(loc="lower left")


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


def landscape(summary: pd.DataFrame) -> plt.Figure:
    """Recall@1 vs OPIS of every evaluated run, without / with TCM, with the Pareto frontier."""
    fig, ax = plt.subplots(figsize=(6.5, 4.8), layout="constrained")
    for tcm, marker in ((False, "o"), (True, "^")):
        d = summary[summary["tcm"] == tcm]
        ax.scatter(d["R@1"], d["OPIS"], marker=marker, s=60, label="with TCM" if tcm else "without TCM")
        for _, r in d.iterrows():
            ax.annotate(r["run"], (r["R@1"], r["OPIS"]), fontsize=7, xytext=(4, 4), textcoords="offset points")
    front = pareto_front(summary["R@1"].to_numpy(float), summary["OPIS"].to_numpy(float))
    if len(front) > 1:
        ax.plot(summary["R@1"].to_numpy()[front], summary["OPIS"].to_numpy()[front], "k--", lw=1,
                label="Pareto frontier")
    ax.set(xlabel="Recall@1", ylabel="OPIS (lower = more threshold-consistent)",
           title="Accuracy vs threshold consistency")
    ax.legend(fontsize=8)
    return fig


def training_curves(histories: dict[str, pd.DataFrame]) -> plt.Figure:
    fig, axes = plt.subplots(1, 3, figsize=(15, 4), layout="constrained")
    for name, h in histories.items():
        for ax, col in zip(axes, ("loss", "base_loss", "tcm_loss")):
            ax.plot(h["epoch"], h[col], marker=".", label=name)
    for ax, title in zip(axes, ("total loss", "base loss", "TCM term")):
        ax.set(xlabel="epoch", ylabel=title, title=title)
    axes[0].legend(fontsize=7)
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
    fig, axes = plt.subplots(1, len(runs), figsize=(5.5 * len(runs), 3.8), sharey=True, squeeze=False, layout="constrained")
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


def sample_images(manifest, per_class: int = 8, max_classes: int = 10) -> plt.Figure:
    """A grid of the first images of the first classes of a manifest (rows = classes)."""
    from PIL import Image

    table = manifest.table
    classes = sorted(table["label"].unique())[:max_classes]
    fig, axes = plt.subplots(len(classes), per_class, figsize=(per_class * 0.9, len(classes) * 0.9), squeeze=False)
    for row, c in zip(axes, classes):
        files = table.loc[table["label"] == c, "path"].head(per_class).tolist()
        for ax in row:
            ax.axis("off")
        for ax, f in zip(row, files):
            with Image.open(manifest.image_root / f) as img:
                ax.imshow(img.convert("RGB"))
        split = table.loc[table["label"] == c, "split"].iloc[0]
        row[0].set_title(f"class {c} ({split})", fontsize=7, loc="left")
    return fig


def history(history: pd.DataFrame, title: str = "") -> plt.Figure:
    """Loss parts and throughput per epoch of one run."""
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.5), layout="constrained")
    for col in ("loss", "base_loss", "tcm_loss"):
        a.plot(history["epoch"], history[col], marker=".", label=col)
    a.set(xlabel="epoch", ylabel="loss", title=title)
    a.legend()
    b.plot(history["epoch"], history["images_per_s"], marker=".")
    b.set(xlabel="epoch", ylabel="images / s", title="training throughput")
    return fig


def run_utility(curves: pd.DataFrame, title: str) -> plt.Figure:
    """Per-class utility vs threshold of one run."""
    fig, ax = plt.subplots(figsize=(6, 4), layout="constrained")
    draw_utility(ax, curves, title)
    return fig
