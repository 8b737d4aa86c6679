"""Report: result files of every run -> ``reports/`` tables, figures and README.

Reads only files the train and evaluate stages wrote (never MLflow); a run whose files are
absent is shown as missing, never filled in.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from tcm.config import Config  # noqa: E402
from tcm.evaluate import CURVES, METRICS  # noqa: E402
from tcm.io import atomic_path, write_json, write_text  # noqa: E402
from tcm.tracking import Tracker  # noqa: E402
from tcm.train import HISTORY, RUN_INFO  # noqa: E402

# Matplotlib writes the date into PNGs by default; without it, unchanged results give unchanged files.
PNG_META = {"Software": None}


@dataclass(frozen=True)
class Pair:
    """Two runs identical except for TCM."""

    key: str
    without: str
    with_tcm: str


def run_summary(cfg: Config) -> pd.DataFrame:
    """One row per configured run: its settings and test metrics (NaN where not evaluated yet)."""
    rows = []
    for name, run in cfg.runs.items():
        row = {"run": name, "dataset": run.dataset, "backbone": run.model.backbone, "loss": run.loss.name,
               "tcm": run.tcm.enabled, "batch_size": run.train.batch_size, "epochs": run.train.epochs}
        path = cfg.run_dir(name) / METRICS
        if path.is_file():
            m = json.loads(path.read_text())
            row.update({f"R@{k}": v for k, v in m["recall_at_k"].items()})
            row.update({"MAP@R": m["map_at_r"], "R-precision": m["r_precision"], "OPIS": m["opis"],
                        "eps-OPIS": m["eps_opis"], "status": "done"})
        else:
            row["status"] = "missing"
        rows.append(row)
    return pd.DataFrame(rows)


def find_pairs(cfg: Config) -> list[Pair]:
    """Pair runs whose settings differ only in ``tcm``."""
    groups: dict[str, dict[bool, str]] = {}
    for name, run in cfg.runs.items():
        key = json.dumps(run.model_dump(mode="json", exclude={"tcm"}), sort_keys=True)
        groups.setdefault(key, {}).setdefault(run.tcm.enabled, name)
    pairs = []
    for key, g in groups.items():
        if False in g and True in g:
            run = cfg.runs[g[False]]
            pairs.append(Pair(f"{run.dataset}/{run.model.backbone}/{run.loss.name}", g[False], g[True]))
    return pairs


def comparison_table(summary: pd.DataFrame, pairs: list[Pair]) -> pd.DataFrame:
    """Without / with TCM side by side, with the change of each metric (OPIS as a relative change)."""
    by_run = summary.set_index("run")
    metrics = [c for c in summary.columns if c.startswith("R@")] + ["MAP@R", "OPIS", "eps-OPIS"]
    rows = []
    for p in pairs:
        a, b = by_run.loc[p.without], by_run.loc[p.with_tcm]
        row = {"dataset": a["dataset"], "backbone": a["backbone"], "loss": a["loss"],
               "run (without TCM)": p.without, "run (with TCM)": p.with_tcm}
        for m in metrics:
            va, vb = a.get(m, np.nan), b.get(m, np.nan)
            row[f"{m} without"], row[f"{m} with"] = va, vb
            if m in ("OPIS", "eps-OPIS"):
                row[f"{m} change %"] = 100.0 * (vb - va) / va if va and np.isfinite(va) else np.nan
            else:
                row[f"{m} change"] = vb - va
        rows.append(row)
    return pd.DataFrame(rows)


def _save(fig: plt.Figure, path: Path) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight", metadata=PNG_META)
    plt.close(fig)
    return path


def _draw_utility(ax: plt.Axes, curves: pd.DataFrame, title: str) -> None:
    """One thin line per class from a curves.csv table, the pooled curve in bold black."""
    for _, g in curves[curves["class"] != "overall"].groupby("class"):
        ax.plot(g["threshold"], g["utility"], lw=1, alpha=0.6)
    o = curves[curves["class"] == "overall"]
    ax.plot(o["threshold"], o["utility"], color="black", lw=2.5, label="overall")
    ax.set(title=title, xlabel="cosine similarity threshold", ylabel="utility (F-score of TPR, TNR)")
    ax.legend(loc="lower left")


def plot_utility_pair(cfg: Config, pair: Pair, path: Path) -> Path | None:
    """Per-class utility vs threshold without and with TCM (paper figure 2 style)."""
    tables = {}
    for label, name in (("without TCM", pair.without), ("with TCM", pair.with_tcm)):
        f = cfg.run_dir(name) / CURVES
        if not f.is_file():
            return None
        tables[label] = pd.read_csv(f, dtype={"class": str})
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for ax, (label, df) in zip(axes, tables.items()):
        _draw_utility(ax, df, f"{pair.key} — {label}")
    fig.suptitle("Per-class utility over the calibration range (one line per test class)")
    return _save(fig, path)


def plot_opis_vs_recall(summary: pd.DataFrame, path: Path) -> Path | None:
    done = summary[summary["status"] == "done"]
    if done.empty:
        return None
    fig, ax = plt.subplots(figsize=(6, 4.5))
    for tcm, marker in ((False, "o"), (True, "^")):
        d = done[done["tcm"] == tcm]
        ax.scatter(d["R@1"], d["OPIS"], marker=marker, s=60, label="with TCM" if tcm else "without TCM")
        for _, r in d.iterrows():
            ax.annotate(r["run"], (r["R@1"], r["OPIS"]), fontsize=7, xytext=(4, 4), textcoords="offset points")
    ax.set(xlabel="Recall@1", ylabel="OPIS (lower = more threshold-consistent)", title="Accuracy vs threshold consistency")
    ax.legend()
    return _save(fig, path)


def plot_training_curves(cfg: Config, path: Path) -> Path | None:
    histories = {n: pd.read_csv(cfg.run_dir(n) / HISTORY) for n in cfg.runs if (cfg.run_dir(n) / HISTORY).is_file()}
    if not histories:
        return None
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for name, h in histories.items():
        for ax, col in zip(axes, ("loss", "base_loss", "tcm_loss")):
            ax.plot(h["epoch"], h[col], marker=".", label=name)
    for ax, col in zip(axes, ("total loss", "base loss", "TCM term")):
        ax.set(xlabel="epoch", ylabel=col, title=col)
    axes[0].legend(fontsize=8)
    return _save(fig, path)


def split_counts(manifest) -> pd.DataFrame:
    """Images and classes per split of a manifest."""
    return manifest.table.groupby("split").agg(images=("path", "size"), classes=("label", "nunique"))


def plot_sample_images(manifest, per_class: int = 8, max_classes: int = 10) -> plt.Figure:
    """A grid of the first images of the first classes of each split (rows = classes)."""
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
    fig.tight_layout()
    return fig


def plot_history(history: pd.DataFrame, title: str = "") -> plt.Figure:
    """Loss parts and throughput per epoch of one run."""
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.5))
    for col in ("loss", "base_loss", "tcm_loss"):
        a.plot(history["epoch"], history[col], marker=".", label=col)
    a.set(xlabel="epoch", ylabel="loss", title=title)
    a.legend()
    b.plot(history["epoch"], history["images_per_s"], marker=".")
    b.set(xlabel="epoch", ylabel="images / s", title="training throughput")
    return fig


def metrics_frame(metrics: dict) -> pd.DataFrame:
    """metrics.json as a one-column table."""
    flat = {f"R@{k}": v for k, v in metrics["recall_at_k"].items()}
    flat.update({k: metrics[k] for k in ("map_at_r", "r_precision", "opis", "eps_opis")})
    return pd.DataFrame({"value": flat})


def plot_run_utility(cfg: Config, name: str) -> plt.Figure:
    """Per-class utility vs threshold of one evaluated run."""
    df = pd.read_csv(cfg.run_dir(name) / CURVES, dtype={"class": str})
    fig, ax = plt.subplots(figsize=(6, 4))
    _draw_utility(ax, df, f"{name}: per-class utility")
    return fig


def _markdown(df: pd.DataFrame) -> str:
    return df.to_markdown(index=False, floatfmt=".4f", missingval="missing") + "\n"


def _write_table(df: pd.DataFrame, stem: Path) -> list[Path]:
    with atomic_path(stem.with_suffix(".csv")) as tmp:
        df.to_csv(tmp, index=False)
    write_text(stem.with_suffix(".md"), _markdown(df))
    return [stem.with_suffix(".csv"), stem.with_suffix(".md")]


def _readme(cfg: Config, summary: pd.DataFrame, comparison: pd.DataFrame, figures: dict[str, Path],
            reports: Path) -> str:
    o = cfg.evaluation.opis
    rel = lambda p: p.relative_to(reports).as_posix()  # noqa: E731
    lines = [
        "# Results", "",
        "Generated by the `report` stage (`dvc repro`) from the files in `runs/`; do not edit by hand.", "",
        "## Settings", "",
        f"- OPIS: utility = F-beta of TPR and TNR with beta = {o.beta}; calibration range = thresholds where the "
        f"overall FAR is in [{o.far_range[0]}, {o.far_range[1]}], {o.n_thresholds} evenly spaced thresholds; "
        f"class weights 1/C; eps-OPIS with eps = {o.eps}.",
        f"- Recall@k for k = {list(cfg.evaluation.recall_k)}; cosine similarity; leave-one-out over the test split.",
        f"- Runs: {len(cfg.runs)} configured, {int((summary['status'] == 'done').sum())} evaluated. "
        "Full settings of each run: `runs/<run>/run.json` and its MLflow run.", "",
        "## Tables", "",
        "- [tables/runs.md](tables/runs.md) ([csv](tables/runs.csv)): one row per run.",
        "- [tables/tcm_comparison.md](tables/tcm_comparison.md) ([csv](tables/tcm_comparison.csv)): "
        "each base loss without and with TCM side by side; OPIS change in % (negative = more consistent).", "",
    ]
    if not comparison.empty:
        cols = ["dataset", "backbone", "loss", "R@1 without", "R@1 with", "OPIS without", "OPIS with", "OPIS change %"]
        lines += ["### Without vs with TCM", "", _markdown(comparison[cols]), ""]
    lines += ["## Figures", ""]
    for title, p in figures.items():
        lines += [f"### {title}", "", f"![{title}]({rel(p)})", ""]
    lines += ["## Executed notebooks", "", "`notebooks/`: the executed copy of every stage's notebook (DVC outputs).", ""]
    return "\n".join(lines)


def run(cfg: Config, tracker: Tracker | None = None) -> dict[str, list[Path]]:
    """Write every table and figure; returns the files written by kind."""
    reports = cfg.path(cfg.paths.reports)
    (reports / "tables").mkdir(parents=True, exist_ok=True)
    (reports / "figures").mkdir(parents=True, exist_ok=True)
    summary = run_summary(cfg)
    pairs = find_pairs(cfg)
    comparison = comparison_table(summary, pairs)
    tables = _write_table(summary, reports / "tables" / "runs") + _write_table(comparison, reports / "tables" / "tcm_comparison")

    figures: dict[str, Path] = {}
    for p in pairs:
        f = plot_utility_pair(cfg, p, reports / "figures" / f"utility_{p.key.replace('/', '_')}.png")
        if f:
            figures[f"Per-class utility vs threshold: {p.key}"] = f
    for title, f in (("OPIS vs Recall@1, all runs", plot_opis_vs_recall(summary, reports / "figures" / "opis_vs_recall.png")),
                     ("Training curves", plot_training_curves(cfg, reports / "figures" / "training_curves.png"))):
        if f:
            figures[title] = f

    # Top-level DVC metrics: one entry per run, so `dvc metrics diff` compares runs across commits.
    done = summary[summary["status"] == "done"].set_index("run")
    write_json(reports / "metrics.json", {r: {k: float(done.loc[r, k]) for k in ("R@1", "MAP@R", "OPIS", "eps-OPIS")}
                                          for r in done.index})
    write_text(reports / "README.md", _readme(cfg, summary, comparison, figures, reports))

    tracker = tracker or Tracker(cfg)
    if tracker.enabled:
        for name in cfg.runs:
            info = cfg.run_dir(name) / RUN_INFO
            if not info.is_file():
                continue
            run_id = json.loads(info.read_text()).get("mlflow_run_id")
            notebooks = [reports / "notebooks" / f"{stage}-{name}.ipynb" for stage in ("train", "evaluate")]
            tracker.log_artifacts(run_id, notebooks, "notebooks")
            tracker.log_artifacts(run_id, list(figures.values()), "figures")
            tracker.log_artifacts(run_id, [info], "config")
            tracker.set_stage(run_id, "report")
    return {"tables": tables, "figures": list(figures.values()), "readme": [reports / "README.md"]}
