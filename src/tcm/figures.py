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
from tcm.runfiles import LOSS_PART_TITLES, LOSS_PARTS

# Matplotlib writes dates into PNG and PDF files; without them unchanged results give unchanged files.
_METADATA = {".png": {"Software": None}, ".pdf": {"CreationDate": None, "Producer": None}}


def pdf_twin(png: Path) -> Path:
    """Where the PDF twin of a report PNG goes: ``<folder>-pdf/`` beside the PNG's folder, so that the
    PNG folder holds images DVC can render (`dvc plots show` fails on PDFs)."""
    return png.parent.with_name(png.parent.name + "-pdf") / png.with_suffix(".pdf").name


def save(fig: plt.Figure, png: Path) -> Path:
    """Write ``png`` and its PDF twin (:func:`pdf_twin`); returns the PNG path."""
    pdf = pdf_twin(png)
    pdf.parent.mkdir(parents=True, exist_ok=True)
    for path in (png, pdf):
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format=path.suffix[1:], dpi=120, metadata=_METADATA[path.suffix])
        # The PDF keeps the layout the PNG's draw computed (figure fractions): constrained layout would
        # run its solver again, a third of the report stage's drawing time.
        fig.set_layout_engine("none")
    plt.close(fig)
    return png


def utility_pair(without: pd.DataFrame, with_tcm: pd.DataFrame, title: str) -> plt.Figure:
    """Per-class utility vs threshold without and with TCM (the paper's figure 2 style)."""
    # Shared x and y limits: the two panels are compared by eye.
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.2), sharex=True, sharey=True, layout="constrained")
    draw_utility(axes[0], without, "without TCM")
    draw_utility(axes[1], with_tcm, "with TCM")
    fig.suptitle(f"{title}: per-class utility over the calibration range (one line per test class, shared axes)")
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
    TCM, with the Pareto frontier of the means. Runs are numbered beside their marker and named in a
    key to the right: names written at the points overlap where runs lie close (most pairs do)."""
    fig, ax = plt.subplots(figsize=(8.5, 4.8), layout="constrained")
    number = {name: i + 1 for i, name in enumerate(summary["run"])}
    for tcm, marker in ((False, "o"), (True, "^")):
        d = summary[summary["tcm"] == tcm]
        ax.errorbar(d["R@1 mean"], d["OPIS mean"], xerr=_errors(d["R@1 sd"]), yerr=_errors(d["OPIS sd"]),
                    fmt=marker, ms=7, capsize=3, label="with TCM" if tcm else "without TCM")
        # Runs without TCM numbered left of their point, with TCM right: a pair's numbers stay apart.
        for _, r in d.iterrows():
            ax.annotate(str(number[r["run"]]), (r["R@1 mean"], r["OPIS mean"]), fontsize=8, fontweight="bold",
                        xytext=(6, 4) if tcm else (-6, 4), ha="left" if tcm else "right",
                        textcoords="offset points")
    recall, opis = summary["R@1 mean"].to_numpy(float), summary["OPIS mean"].to_numpy(float)
    front = pareto_front(recall, opis)
    if len(front) > 1:
        ax.plot(recall[front], opis[front], "k--", lw=1, label="Pareto frontier (means)")
    ax.set(xlabel="Recall@1", ylabel="OPIS (lower = more threshold-consistent)",
           title="Accuracy vs threshold consistency (mean ± sd over seeds)")
    ax.legend(fontsize=8)
    key = "\n".join(f"{i}  {name}" for name, i in number.items())
    ax.text(1.02, 1.0, key, transform=ax.transAxes, va="top", ha="left", fontsize=7, family="monospace")
    return fig


def utility_over_seeds(mean: pd.DataFrame, title: str) -> plt.Figure:
    """Per-class utility vs threshold, mean over seeds (:func:`tcm.report.utility_over_seeds`: columns
    class, threshold, utility, low, high, seeds), drawn as :func:`tcm.notebook.draw_utility` draws one
    seed, with a band from the lowest to the highest seed around the overall curve and every named class."""
    fig, ax = plt.subplots(figsize=(7, 4), layout="constrained")
    draw_utility(ax, mean, title)
    for line in list(ax.get_lines()):
        label = str(line.get_label())
        c = "overall" if label == "overall" else label[len("class "):] if label.startswith("class ") else None
        if c is None:
            continue
        g = mean[mean["class"] == c]
        ax.fill_between(g["threshold"], g["low"], g["high"], color=line.get_color(), alpha=0.15, lw=0)
    return fig


def class_rates(rates: pd.DataFrame, target_far: float) -> plt.Figure:
    """Per-class FAR vs FRR at each run's global threshold (the threshold report's: overall FAR =
    ``target_far``), one panel per without/with-TCM comparison, one dot per test class: the further the
    dots scatter from the target line, the less one threshold means the same for every class.

    ``rates``: :func:`tcm.report.class_rates` (columns comparison, run, tcm, seed, class, threshold,
    FAR, FRR, overall FRR)."""
    keys = list(dict.fromkeys(rates["comparison"]))
    fig, axes = plt.subplots(1, len(keys), figsize=(5.2 * len(keys) + 0.5, 4.4), squeeze=False, sharey=True,
                             layout="constrained")
    for ax, key in zip(axes[0], keys):
        d = rates[rates["comparison"] == key]
        for i, (tcm, label) in enumerate(((False, "without TCM"), (True, "with TCM"))):
            r = d[d["tcm"] == tcm]
            if r.empty:
                continue
            colour = plt.get_cmap("tab10")(i)
            ax.scatter(r["FAR"], r["FRR"], s=14, alpha=0.6, color=colour, edgecolors="none",
                       label=f"{label}: {r['run'].iloc[0]} (t = {r['threshold'].iloc[0]:.3f})")
            ax.axhline(r["overall FRR"].iloc[0], color=colour, ls=":", lw=1)
        ax.axvline(target_far, color="black", ls="--", lw=1, label=f"target FAR {target_far:g} (overall)")
        # symlog: many classes accept no negative at all (FAR 0), the rest spread over decades.
        ax.set_xscale("symlog", linthresh=target_far / 10)
        ax.set_xlim(left=-target_far / 50)  # rates are never negative: no empty half below 0
        seed = d["seed"].iloc[0]
        ax.set(title=f"{key} (seed {seed})", xlabel="class FAR at the global threshold",
               ylabel="class FRR at the global threshold", ylim=(-0.02, 1.02))
        ax.legend(fontsize=7, loc="lower left")
    fig.suptitle("One global threshold per run: per-class FAR and FRR (dots: test classes; dotted: overall FRR)")
    return fig


def training_curves(histories: dict[str, pd.DataFrame]) -> plt.Figure:
    """Loss parts per epoch of every run: the mean over seeds, with a band from the min to the max
    seed (one colour per run)."""
    fig, axes = plt.subplots(1, 3, figsize=(15, 4), layout="constrained")
    colours = plt.get_cmap("tab10" if len(histories) <= 10 else "tab20")
    for i, (name, h) in enumerate(histories.items()):
        colour = colours(i % colours.N)
        n = h["seed"].nunique() if "seed" in h else 1
        for ax, col in zip(axes, LOSS_PARTS):
            g = h.groupby("epoch")[col].agg(["mean", "min", "max"])
            ax.plot(g.index, g["mean"], marker=".", color=colour, label=f"{name} ({n} seed{'s' * (n != 1)})")
            ax.fill_between(g.index, g["min"], g["max"], color=colour, alpha=0.2, lw=0)
    for ax, title in zip(axes, LOSS_PART_TITLES.values()):
        ax.set(xlabel="epoch", ylabel=title, title=f"{title} (mean over seeds, band = min to max)")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes[0].legend(fontsize=7)
    return fig


def tcm_effect(comparison: pd.DataFrame, differences: pd.DataFrame) -> plt.Figure:
    """Per comparison, the mean paired change with TCM (with - without) of OPIS and of Recall@1
    (in percentage points), with its 95% t interval as a bar and each seed's change as a dot.

    ``comparison``: the report's comparison table (columns ``comparison``, ``OPIS change`` and
    ``R@1 change (pp)``, each also with `` low`` and `` high``); ``differences``: one row per
    comparison and seed (``comparison``, ``seed``, ``OPIS change``, ``R@1 change (pp)``)."""
    keys = list(comparison["comparison"])
    fig, axes = plt.subplots(1, 2, figsize=(11, 1.2 + 0.45 * len(keys)), sharey=True, layout="constrained",
                             squeeze=False)
    y = {k: i for i, k in enumerate(keys)}
    seeds = sorted(differences["seed"].unique())
    # Small fixed vertical offsets keep seeds apart without random jitter (figures stay deterministic).
    offset = {s: 0.25 * (j - (len(seeds) - 1) / 2) / max(len(seeds) - 1, 1) for j, s in enumerate(seeds)}
    for ax, (m, col, label) in zip(axes[0], (("OPIS", "OPIS change", "OPIS change (lower = more consistent)"),
                                              ("R@1", "R@1 change (pp)", "Recall@1 change (pp)"))):
        mean, low, high = (comparison[f"{col}{part}"].to_numpy(float) for part in ("", " low", " high"))
        ys, has = np.arange(len(keys)), ~np.isnan(low)
        ax.errorbar(mean[has], ys[has], xerr=[mean[has] - low[has], high[has] - mean[has]], fmt="o", color="black",
                    capsize=4, label="mean, 95% t interval")
        if (~has).any():
            ax.plot(mean[~has], ys[~has], "o", color="black", mfc="white", label="mean (1 seed: no interval)")
        for s in seeds:
            d = differences[(differences["seed"] == s) & differences["comparison"].isin(y)]
            ax.scatter(d[col], [y[k] + offset[s] for k in d["comparison"]], s=14, alpha=0.7,
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
    fig, axes = plt.subplots(1, len(runs), figsize=(5.5 * len(runs), 3.8), sharex=True, sharey=True,
                             squeeze=False, layout="constrained")
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


def _circular_span(angles: np.ndarray, share: float = 0.9) -> tuple[float, float]:
    """(start, end) in degrees, counter-clockwise, of the arc holding the central ``share`` of
    ``angles`` (degrees) around their circular mean; end - start <= 360.

    >>> [round(a) for a in _circular_span(np.array([170.0, 180.0, -170.0]), share=1.0)]
    [170, 190]
    """
    rad = np.radians(angles)
    centre = np.degrees(np.arctan2(np.sin(rad).mean(), np.cos(rad).mean()))
    offset = (angles - centre + 180.0) % 360.0 - 180.0  # each angle relative to the mean, in (-180, 180]
    tail = 100.0 * (1.0 - share) / 2.0
    low, high = np.percentile(offset, [tail, 100.0 - tail])
    return float(centre + low), float(centre + high)


def _draw_on_circle(ax: plt.Axes, x: np.ndarray, y: np.ndarray, classes: np.ndarray, colour) -> None:
    """The toy's L2-normalised 2-D embeddings: the unit circle, the images on it, and outside it one arc
    per class (the central 90% of its images' angles; a radius per class, so overlapping classes stay
    apart) labelled with the class."""
    from matplotlib.patches import Arc

    ax.add_patch(plt.Circle((0, 0), 1.0, fill=False, color="0.6", lw=1))
    for i, c in enumerate(classes):
        m = y == c
        if not m.any():
            continue
        start, end = _circular_span(np.degrees(np.arctan2(x[m, 1], x[m, 0])))
        r = _ARC_RADIUS + _ARC_STEP * i
        ax.add_patch(Arc((0, 0), 2 * r, 2 * r, theta1=start, theta2=end, color=colour(i), lw=3.5))
        mid = np.radians((start + end) / 2)
        ax.text((r + 0.09) * np.cos(mid), (r + 0.09) * np.sin(mid), str(c), color=colour(i), fontsize=10,
                fontweight="bold", ha="center", va="center")
    lim = _ARC_RADIUS + _ARC_STEP * max(len(classes) - 1, 0) + 0.2
    ax.set(xlim=(-lim, lim), ylim=(-lim, lim))


# Class arcs of the 2-D figure: the first at this radius, each further class this much further out.
_ARC_RADIUS, _ARC_STEP = 1.08, 0.035


def embeddings_2d(runs: dict[str, tuple[np.ndarray, np.ndarray]], title: str) -> plt.Figure:
    """Test embeddings in 2-D, one panel per run (see :func:`embeddings_grid`)."""
    return embeddings_grid({"": runs}, title)


def embeddings_grid(rows: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]], title: str) -> plt.Figure:
    """Test embeddings in 2-D: one row per entry of ``rows`` (e.g. one per seed, labelled by its key),
    one panel per run in it (e.g. without and with TCM side by side).

    2-D embeddings (the toy) are drawn as they are, on the unit circle at fixed limits, so how the
    classes share it shows (a collapsed run is one short arc, not a stretched strip), with one arc per
    class outside the circle; higher dimensions by their first two principal components (PCA fitted
    on each panel's own embeddings: the panels share limits, so spreads compare, but each panel's
    directions are its own run's), the axis labels naming the projection and the share of variance
    each component keeps. One colour per class, the same in every panel (legend on the right)."""
    ncols = max(len(runs) for runs in rows.values())
    fig, axes = plt.subplots(len(rows), ncols, figsize=(5.6 * ncols + 1.2, 5.4 * len(rows)), sharex=True,
                             sharey=True, squeeze=False, layout="constrained")
    all_classes = np.unique(np.concatenate([y for runs in rows.values() for _, y in runs.values()]))
    cmap = plt.get_cmap("tab10" if len(all_classes) <= 10 else "tab20")
    shown = all_classes[:cmap.N]
    index = {c: i for i, c in enumerate(shown)}
    for r, (row, runs) in enumerate(rows.items()):
        for ax in axes[r][len(runs):]:
            ax.set_visible(False)
        for ax, (label, (emb, y)) in zip(axes[r], runs.items()):
            x, y = _sample(emb, y, 5000)
            if x.shape[1] == 2:
                projection, names = "raw 2-D embeddings", ("embedding dimension 1", "embedding dimension 2")
            else:
                from sklearn.decomposition import PCA

                pca = PCA(n_components=2, random_state=0).fit(x)
                x = pca.transform(x)
                projection = f"PCA of the {emb.shape[1]}-D embeddings (fitted per run)"
                names = tuple(f"PCA component {i + 1} ({100 * v:.0f}% of variance)"
                              for i, v in enumerate(pca.explained_variance_ratio_))
            # Classes past the palette are drawn grey rather than dropped, so every sampled point shows.
            other = ~np.isin(y, shown)
            if other.any():
                ax.scatter(x[other, 0], x[other, 1], s=10, alpha=0.3, color="grey", label="other classes",
                           rasterized=True)
            for c in shown:
                m = y == c
                ax.scatter(x[m, 0], x[m, 1], s=28, alpha=0.55, color=cmap(index[c]), edgecolors="none",
                           label=f"class {c}", rasterized=True)
            if emb.shape[1] == 2:
                _draw_on_circle(ax, x, y, shown, cmap)
            ax.set(title=f"{row}: {label}" if row else f"{label}: {projection}", xlabel=names[0], ylabel=names[1])
            # adjustable="box": equal aspect with shared limits (the default "datalim" cannot share both axes).
            ax.set_aspect("equal", adjustable="box")
        last = axes[r][len(runs) - 1]
        if r == 0 and len(shown) <= 20:
            last.legend(fontsize=9, markerscale=1.3, loc="upper left", bbox_to_anchor=(1.02, 1.0),
                        title="test images", frameon=False)
    two_d = all(e.shape[1] == 2 for runs in rows.values() for e, _ in runs.values())
    note = (" on the unit circle; arcs outside it: the central 90% of each class's angles" if two_d
            else " (shared axes)")
    fig.suptitle(f"{title}: test embeddings{note}")
    return fig


def per_seed(per_seed_table: pd.DataFrame, summary: pd.DataFrame, metrics: tuple[str, ...]) -> plt.Figure:
    """One panel per metric: each evaluated seed of each run as a dot (seaborn strip plot), with the
    run's mean ± sd over seeds (the summary's numbers) as a black bar; runs without TCM listed first,
    then runs with TCM, coloured by group."""
    import seaborn as sns

    done = per_seed_table[per_seed_table["status"] == "done"]
    tcm = summary.set_index("run")["tcm"].astype(bool)
    runs = sorted(done["run"].unique(), key=lambda r: (tcm[r], list(tcm.index).index(r)))
    groups = {False: "without TCM", True: "with TCM"}
    data = done.assign(group=done["run"].map(tcm).map(groups))
    stats = summary.set_index("run").loc[runs]
    fig, axes = plt.subplots(1, len(metrics), figsize=(3.6 * len(metrics), 1.5 + 0.4 * len(runs)), sharey=True,
                             squeeze=False, layout="constrained")
    for i, (ax, m) in enumerate(zip(axes[0], metrics)):
        # jitter=False: seaborn's jitter is random; figures stay byte-identical for unchanged results.
        sns.stripplot(data=data, x=m, y="run", order=runs, hue="group", hue_order=list(groups.values()),
                      jitter=False, size=6, alpha=0.7, ax=ax, legend=i == len(metrics) - 1)
        ys = np.arange(len(runs)) + 0.25  # just below each run's dots, so the bar hides none of them
        ax.errorbar(stats[f"{m} mean"], ys, xerr=_errors(stats[f"{m} sd"]), fmt="D", ms=4, color="black",
                    capsize=3, label="mean ± sd")
        ax.set(title=m, xlabel=m + (" (lower = more consistent)" if "OPIS" in m else ""), ylabel="")
        ax.xaxis.set_major_locator(MaxNLocator(4))  # long OPIS tick labels overlap at the default density
    axes[0][-1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))
    fig.suptitle("Per-seed results: one dot per seed, black = mean ± sd over seeds")
    return fig
