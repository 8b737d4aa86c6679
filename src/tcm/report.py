"""Report: result files of every run -> ``reports/`` tables, figures and README.

Reads only files the train and evaluate stages wrote (never MLflow); a run whose files are
absent is shown as missing, never filled in. The claims table recomputes the paper's headline
figures from the without/with-TCM pairs that exist.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from tcm import figures
from tcm.config import Config
from tcm.files import CURVES, EMBEDDINGS, HISTORY, METRICS, RUN_INFO
from tcm.io import atomic_path, write_json, write_text
from tcm.tracking import Tracker

# The paper's headline figures (authors' blog post; ../shared/paper.md). Nothing else is quoted.
PAPER_CLAIMS = {
    "comparisons where TCM lowered OPIS": "16 of 16",
    "largest OPIS reduction": "77.3%",
    "comparisons where TCM raised Recall@1": "14 of 16",
    "largest Recall@1 gain (points)": "+3.6",
    "largest Recall@1 drop (points)": "-0.2",
}
RETRIEVAL = ("MAP@R", "R-precision")
# Recall@k reported by the paper for each benchmark (its tables follow the literature's convention).
PAPER_K = {"cub": (1, 2, 4, 8), "cars196": (1, 2, 4, 8), "sop": (1, 10, 100, 1000), "inat2018": (1, 4, 16, 32)}
CONSISTENCY = ("OPIS", "eps-OPIS")


@dataclass(frozen=True)
class Pair:
    """Two runs identical except for TCM."""

    key: str
    without: str
    with_tcm: str


def run_summary(cfg: Config) -> pd.DataFrame:
    """One row per configured run: its settings and test metrics (status 'missing' if not evaluated)."""
    rows = []
    for name, run in cfg.runs.items():
        row = {"run": name, "dataset": run.dataset, "backbone": run.model.backbone, "loss": run.loss.name,
               "tcm": run.tcm.enabled, "batch_size": run.train.batch_size, "epochs": run.train.epochs}
        path = cfg.run_dir(name) / METRICS
        if path.is_file():
            m = json.loads(path.read_text())
            row.update({f"R@{k}": m["recall_at_k"][k] for k in sorted(m["recall_at_k"], key=int)})
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
    found = [(cfg.runs[g[False]], g[False], g[True]) for g in groups.values() if False in g and True in g]
    keys = [f"{r.dataset}/{r.model.backbone}/{r.loss.name}" for r, _, _ in found]
    # Several pairs of one data set, backbone and loss (the landscape's batch sizes): name them apart.
    return [Pair(k + (f"/bs{r.train.batch_size}" if keys.count(k) > 1 else ""), a, b)
            for k, (r, a, b) in zip(keys, found)]


def comparison_table(summary: pd.DataFrame, pairs: list[Pair]) -> pd.DataFrame:
    """Without / with TCM side by side, with the change of each metric (OPIS as a relative change)."""
    by_run = summary.set_index("run")
    metrics = [c for c in summary.columns if c.startswith("R@")] + [*RETRIEVAL, *CONSISTENCY]
    rows = []
    for p in pairs:
        a, b = by_run.loc[p.without], by_run.loc[p.with_tcm]
        row = {"dataset": a["dataset"], "backbone": a["backbone"], "loss": a["loss"],
               "run (without TCM)": p.without, "run (with TCM)": p.with_tcm}
        for m in metrics:
            va, vb = float(a.get(m, np.nan)), float(b.get(m, np.nan))
            row[f"{m} without"], row[f"{m} with"] = va, vb
            if m in CONSISTENCY:
                row[f"{m} change %"] = 100.0 * (vb - va) / va if va > 0 else np.nan
            else:
                row[f"{m} change"] = vb - va
        rows.append(row)
    return pd.DataFrame(rows)


def claims_table(comparison: pd.DataFrame, configured: int) -> pd.DataFrame:
    """The paper's headline figures recomputed from our complete pairs, beside the paper's."""
    done = comparison.dropna(subset=["OPIS change %", "R@1 change"]) if not comparison.empty else comparison
    n = len(done)
    if n == 0:
        ours = dict.fromkeys(PAPER_CLAIMS, "missing")
    else:
        gain = 100.0 * done["R@1 change"]
        ours = {
            "comparisons where TCM lowered OPIS": f"{int((done['OPIS change %'] < 0).sum())} of {n}",
            "largest OPIS reduction": f"{-done['OPIS change %'].min():.1f}%",
            "comparisons where TCM raised Recall@1": f"{int((gain > 0).sum())} of {n}",
            "largest Recall@1 gain (points)": f"{gain.max():+.1f}",
            "largest Recall@1 drop (points)": f"{gain.min():+.1f}" if (gain < 0).any() else "no drop",
        }
    return pd.DataFrame({"claim": list(PAPER_CLAIMS), "paper": list(PAPER_CLAIMS.values()),
                         "ours": [ours[c] for c in PAPER_CLAIMS],
                         "comparisons": f"{n} complete of {configured} configured"})


def _markdown(df: pd.DataFrame) -> str:
    return df.to_markdown(index=False, floatfmt=".4f", missingval="missing") + "\n"


def write_table(df: pd.DataFrame, stem: Path, latex: bool = False) -> list[Path]:
    """CSV + Markdown (+ LaTeX) copies of one table; missing values read 'missing'."""
    written = [stem.with_suffix(".csv"), stem.with_suffix(".md")]
    with atomic_path(written[0]) as tmp:
        df.to_csv(tmp, index=False)
    write_text(written[1], _markdown(df))
    if latex:
        written.append(stem.with_suffix(".tex"))
        write_text(written[2], df.to_latex(index=False, float_format="%.4f", na_rep="missing", escape=True))
    return written


def dataset_table(comparison: pd.DataFrame, dataset: str, ks: tuple[int, ...] | None = None) -> pd.DataFrame:
    """Rows = backbone x base loss of one data set; metric columns without / with TCM / change.
    ``ks``: the Recall@k to show (default: all computed)."""
    d = comparison[comparison["dataset"] == dataset].drop(columns=["dataset", "run (without TCM)", "run (with TCM)"])
    if ks is not None:
        keep = {f"R@{k}" for k in ks}
        d = d[[c for c in d.columns if not c.startswith("R@") or c.rsplit(" ", 1)[0] in keep]]
    return d.reset_index(drop=True)


def _load_embeddings(cfg: Config, name: str) -> tuple[np.ndarray, np.ndarray] | None:
    path = cfg.run_dir(name) / EMBEDDINGS
    if not path.is_file():
        return None
    with np.load(path) as z:
        return z["embeddings"], z["labels"]


def _pair_figures(cfg: Config, pair: Pair, out: Path) -> dict[str, Path]:
    stem = pair.key.replace("/", "_")
    made: dict[str, Path] = {}
    curves = [cfg.run_dir(n) / CURVES for n in (pair.without, pair.with_tcm)]
    if all(c.is_file() for c in curves):
        a, b = (pd.read_csv(c, dtype={"class": str}) for c in curves)
        made[f"Per-class utility vs threshold: {pair.key}"] = figures.save(
            figures.utility_pair(a, b, pair.key), out / f"utility_{stem}.png")
    emb = {label: _load_embeddings(cfg, n) for label, n in (("without TCM", pair.without), ("with TCM", pair.with_tcm))}
    if all(v is not None for v in emb.values()):
        tcm = cfg.runs[pair.with_tcm].tcm
        made[f"Pair similarity histograms: {pair.key}"] = figures.save(
            figures.similarity_histograms(emb, (tcm.pos_margin, tcm.neg_margin), pair.key),
            out / f"similarities_{stem}.png")
        made[f"Test embeddings in 2-D: {pair.key}"] = figures.save(
            figures.embeddings_2d(emb, pair.key), out / f"embeddings_{stem}.png")
    return made


def _readme(cfg: Config, summary: pd.DataFrame, comparison: pd.DataFrame, claims: pd.DataFrame,
            tables: list[Path], made: dict[str, Path], reports: Path) -> str:
    o, ev = cfg.evaluation.opis, cfg.evaluation
    rel = lambda p: p.relative_to(reports).as_posix()  # noqa: E731
    md_tables = [p for p in tables if p.suffix == ".md"]
    datasets = sorted(summary["dataset"].unique())
    lines = [
        "# Results", "",
        "Generated by the `report` stage of `dvc repro` from the files in `runs/`; do not edit by hand.", "",
        "## Settings used", "",
        f"- OPIS: utility = F-beta of TPR and TNR with beta = {o.beta}; calibration range = the thresholds where "
        f"the overall FAR is in [{o.far_range[0]}, {o.far_range[1]}], {o.n_thresholds} evenly spaced; "
        f"class weights: {o.class_weighting}; eps-OPIS with eps = {o.eps}.",
        f"- Recall@k for k = {list(ev.recall_k)}; cosine similarity; each test image queries all others.",
        f"- Runs: {len(cfg.runs)} configured, {int((summary['status'] == 'done').sum())} evaluated; "
        f"{len(comparison)} without/with-TCM comparisons. Settings of each run: `runs/<run>/run.json` "
        "and its MLflow run.", "",
        "## The paper's claims, checked", "",
        _markdown(claims),
        "| paper's result | our file | from |", "|---|---|---|",
        "| headline figures (OPIS down in 16/16, up to 77.3%; R@1 up in 14/16, +3.6 / -0.2) | "
        "[tables/claims.md](tables/claims.md) | every without/with-TCM pair below |",
        *(f"| results table, {d} | [tables/{d}.md](tables/{d}.md) (also .csv, .tex) | runs on {d} |" for d in datasets),
        "| per-class utility vs threshold, without and with TCM (figure 2 style) | `figures/utility_*.png` | "
        "`curves.csv` of each pair |",
        "| accuracy vs OPIS landscape with its Pareto frontier | [figures/opis_vs_recall.png](figures/opis_vs_recall.png)"
        " | every evaluated run (the `landscape` profile for the paper's study) |",
        "| 2-D toy embeddings without and with TCM | `figures/embeddings_*.png` | `embeddings.npz` of each pair "
        "(the `toy` profile has 2-D embeddings; others are shown by PCA) |",
        "| positive / negative similarity distributions | `figures/similarities_*.png` | `embeddings.npz` of each pair |",
        "| training curves | [figures/training_curves.png](figures/training_curves.png) | `history.csv` of each run |",
        "",
        "## Tables", "",
        *(f"- [{rel(p)}]({rel(p)})" for p in md_tables), "",
    ]
    if not comparison.empty:
        cols = ["dataset", "backbone", "loss", "R@1 without", "R@1 with", "OPIS without", "OPIS with", "OPIS change %"]
        lines += ["### Without vs with TCM", "", _markdown(comparison[cols]), ""]
    lines += ["## Figures", "", "Each PNG has a PDF twin beside it.", ""]
    for title, p in made.items():
        lines += [f"### {title}", "", f"![{title}]({rel(p)})", ""]
    lines += ["## Executed notebooks", "", "`notebooks/`: the executed copy of every stage's notebook (DVC outputs).", ""]
    return "\n".join(lines)


def threshold_table(cfg: Config) -> pd.DataFrame:
    """Per evaluated run: the global threshold at the target FAR (metrics.json's threshold_report)
    and the spread of per-class FAR and FRR at it."""
    rows = []
    for name in cfg.runs:
        path = cfg.run_dir(name) / METRICS
        tr = json.loads(path.read_text()).get("threshold_report") if path.is_file() else None
        if not tr:
            continue
        row = {"run": name, "target FAR": tr["target_far"], "threshold": tr["threshold"],
               "overall FAR": tr["overall_far"], "overall FRR": tr["overall_frr"]}
        for rate in ("far", "frr"):
            s = tr[f"class_{rate}"]
            row.update({f"class {rate.upper()} {k}": s[k] for k in ("min", "median", "max")})
            row[f"class {rate.upper()} worst {tr['worst_share']:.0%}"] = s["worst_share_mean"]
        rows.append(row)
    return pd.DataFrame(rows)


def run(cfg: Config, tracker: Tracker | None = None) -> dict[str, list[Path]]:
    """Write every table and figure; returns the files written by kind."""
    reports = cfg.path(cfg.paths.reports)
    fig_dir = reports / "figures"
    (reports / "tables").mkdir(parents=True, exist_ok=True)
    fig_dir.mkdir(parents=True, exist_ok=True)
    summary = run_summary(cfg)
    pairs = find_pairs(cfg)
    comparison = comparison_table(summary, pairs)
    claims = claims_table(comparison, len(pairs))

    tables = write_table(summary, reports / "tables" / "runs")
    tables += write_table(comparison, reports / "tables" / "tcm_comparison")
    tables += write_table(claims, reports / "tables" / "claims", latex=True)
    tables += write_table(threshold_table(cfg), reports / "tables" / "thresholds")
    for d in sorted(summary["dataset"].unique()):
        ks = PAPER_K.get(cfg.datasets[d].source)
        tables += write_table(dataset_table(comparison, d, ks) if not comparison.empty else comparison,
                              reports / "tables" / d, latex=True)

    made: dict[str, Path] = {}
    for p in pairs:
        made.update(_pair_figures(cfg, p, fig_dir))
    for name in cfg.runs:  # per-class utility curves of every evaluated run
        if (cfg.run_dir(name) / CURVES).is_file():
            made[f"Per-class utility vs threshold: {name}"] = figures.save(
                plot_run_utility(cfg, name), fig_dir / f"utility_run_{name}.png")
    done = summary[summary["status"] == "done"]
    if not done.empty:
        made["Accuracy vs OPIS, all runs"] = figures.save(figures.landscape(done), fig_dir / "opis_vs_recall.png")
    histories = {n: pd.read_csv(cfg.run_dir(n) / HISTORY) for n in cfg.runs if (cfg.run_dir(n) / HISTORY).is_file()}
    if histories:
        made["Training curves"] = figures.save(figures.training_curves(histories), fig_dir / "training_curves.png")

    # Top-level DVC metrics: one entry per run, so `dvc metrics diff` compares runs across commits.
    write_json(reports / "metrics.json", {
        r["run"]: {k: float(r[k]) for k in ("R@1", "MAP@R", "OPIS", "eps-OPIS") if not math.isnan(r[k])}
        for _, r in done.iterrows()})
    write_text(reports / "README.md", _readme(cfg, summary, comparison, claims, tables, made, reports))

    tracker = tracker or Tracker(cfg)
    if tracker.enabled:
        for name in cfg.runs:
            info = cfg.run_dir(name) / RUN_INFO
            if not info.is_file():
                continue
            run_id = json.loads(info.read_text()).get("mlflow_run_id")
            notebooks = [reports / "notebooks" / f"{stage}-{name}.ipynb" for stage in ("train", "evaluate")]
            tracker.log_artifacts(run_id, notebooks, "notebooks")
            tracker.log_artifacts(run_id, list(made.values()), "figures")
            tracker.log_artifacts(run_id, [info], "config")
            tracker.set_stage(run_id, "report")
    return {"tables": tables, "figures": list(made.values()), "readme": [reports / "README.md"]}


# Notebook helpers: thin views over one run's files.

def split_counts(manifest) -> pd.DataFrame:
    """Images and classes per split of a manifest."""
    return manifest.table.groupby("split").agg(images=("path", "size"), classes=("label", "nunique"))


def metrics_frame(metrics: dict) -> pd.DataFrame:
    """metrics.json as a one-column table."""
    flat = {f"R@{k}": v for k, v in metrics["recall_at_k"].items()}
    flat.update({k: metrics[k] for k in ("map_at_r", "r_precision", "opis", "eps_opis")})
    return pd.DataFrame({"value": flat})


def plot_run_utility(cfg: Config, name: str):
    """Per-class utility vs threshold of one evaluated run."""
    return figures.run_utility(pd.read_csv(cfg.run_dir(name) / CURVES, dtype={"class": str}), f"{name}: per-class utility")
