"""Display helpers for the stage notebooks: thin views over result files, so the notebooks stay
one library call plus displays. Kept apart from the report's figures (tcm.figures, which builds on
the plots here) so that editing a report figure does not re-run training under DVC."""

from __future__ import annotations

import sys
from contextlib import contextmanager, redirect_stderr
from typing import Iterator, Mapping

# No matplotlib.use(): notebooks keep their inline backend; headless runs fall back to Agg by themselves.
import matplotlib.pyplot as plt
import pandas as pd
from matplotlib.ticker import MaxNLocator

from tcm.config import Config
from tcm.runfiles import LOSS_PART_TITLES
from tcm.stats import headline, spread


@contextmanager
def plain_progress() -> Iterator[None]:
    """Within the block, what tcm prints on stderr (progress lines, one line per epoch) shows in the
    notebook as plain output (stdout), not as Jupyter's pink error boxes. `tcm notebook` (and so
    `dvc repro`) passes the kernel's stdout on to the terminal as it arrives, so the terminal still gets
    it. The command-line twins print as before."""
    with redirect_stderr(sys.stdout):
        yield


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
    return run_utility(curves, f"{name} (seed {seed}): per-class utility")


# A legend of more classes than this is unreadable: past it only the classes furthest from the
# overall curve are named (those are the ones threshold consistency is about).
LEGEND_CLASSES = 12
NAMED_OUTLIERS = 5


def _class_key(c: str) -> tuple:
    """Numeric class ids in numeric order (2 before 10), other names after them."""
    return (0, int(c), "") if c.isdigit() else (1, 0, c)


def utility_gaps(curves: pd.DataFrame) -> pd.Series:
    """Per class, the mean |utility - overall utility| over the thresholds of a curves.csv table."""
    overall = curves[curves["class"] == "overall"].set_index("threshold")["utility"]
    per = curves[curves["class"] != "overall"]
    gap = (per["utility"] - per["threshold"].map(overall)).abs()
    return gap.groupby(per["class"]).mean()


def draw_utility(ax: plt.Axes, curves: pd.DataFrame, title: str) -> None:
    """One thin line per class from a curves.csv table, the pooled curve in bold black. Up to
    LEGEND_CLASSES classes each get a colour and a legend entry; with more, only the NAMED_OUTLIERS
    with the largest mean gap to the overall curve do (the legend's title says so), the rest are grey."""
    per = curves[curves["class"] != "overall"]
    classes = sorted(per["class"].unique(), key=_class_key)
    named, note = classes, None
    if len(classes) > LEGEND_CLASSES:
        named = sorted(utility_gaps(curves).nlargest(NAMED_OUTLIERS).index, key=_class_key)
        note = f"named: {len(named)} of {len(classes)} classes,\nlargest mean |gap| to overall"
        rest = per[~per["class"].isin(named)]
        for i, (_, g) in enumerate(rest.groupby("class")):
            ax.plot(g["threshold"], g["utility"], lw=0.7, alpha=0.3, color="grey",
                    label="other classes" if i == 0 else None)
    cmap = plt.get_cmap("tab10" if len(named) <= 10 else "tab20")
    # Colours follow the sorted class ids: with few classes, a class has one colour in both panels of a pair.
    for i, c in enumerate(named):
        g = per[per["class"] == c]
        ax.plot(g["threshold"], g["utility"], lw=1.2, alpha=0.8, color=cmap(i % cmap.N), label=f"class {c}")
    o = curves[curves["class"] == "overall"]
    ax.plot(o["threshold"], o["utility"], color="black", lw=2.5, label="overall")
    ax.set(title=title, xlabel="cosine similarity threshold", ylabel="utility (F-score of TPR, TNR)")
    ax.legend(title=note, fontsize=7, title_fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))


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


def plot_history(history: pd.DataFrame, title: str = "") -> plt.Figure:
    """Loss parts and throughput per epoch of one run: one line per seed."""
    fig, axes = plt.subplots(1, 4, figsize=(16, 3.5), layout="constrained")
    panels = (*LOSS_PART_TITLES.items(), ("images_per_s", "images / s"))
    for seed, h in by_seed(history):
        for ax, (col, _) in zip(axes, panels):
            ax.plot(h["epoch"], h[col], marker=".", label=f"seed {seed}")
    for ax, (_, name) in zip(axes, panels):
        ax.set(xlabel="epoch", ylabel=name, title=f"{title}: {name}" if title else name)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes[0].legend(fontsize=7)
    return fig


def run_utility(curves: pd.DataFrame, title: str) -> plt.Figure:
    """Per-class utility vs threshold of one run."""
    fig, ax = plt.subplots(figsize=(7, 4), layout="constrained")
    draw_utility(ax, curves, title)
    return fig


def by_seed(history: pd.DataFrame):
    """(seed, rows) per seed; a history without a seed column is one seed."""
    return history.groupby("seed") if "seed" in history else [("?", history)]


def pretrain_summary(out_dir) -> pd.DataFrame | str:
    """The pretrain stage's loss and train accuracy per epoch, or its note when nothing was pretrained."""
    import json
    from pathlib import Path

    info = json.loads((Path(out_dir) / "info.json").read_text())
    if not info["pretrained"]:
        return info["note"]
    return pd.DataFrame(info["history"]).set_index("epoch")
