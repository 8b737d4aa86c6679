"""Report: result files of every run -> ``reports/`` tables, figures and README.

Reads only files the train and evaluate stages wrote (never MLflow); a run or seed whose files are
absent is shown as missing, never filled in. Each run is trained once per seed: a run is summarised
by its mean, sd and n over the evaluated seeds, and each without/with-TCM pair is compared seed by
seed (paired differences with a two-sided 95% Student-t interval, ``tcm.stats``). The claims table
recomputes the paper's headline figures from the means of the pairs that exist, and counts how many
of them are significant.
"""

from __future__ import annotations

import json
import math
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from tcm import figures
from tcm.atomic import atomic_path, write_json, write_text
from tcm.config import Config
from tcm.notebook import run_utility
from tcm.runfiles import RunDir
from tcm.stats import HEADLINE, headline, paired_difference, spread
from tcm.tracking import Tracker

# The paper's headline figures (authors' blog post; ../shared/paper.md). Nothing else is quoted.
PAPER_CLAIMS = {
    "comparisons where TCM lowered OPIS": "16 of 16",
    "largest OPIS reduction": "77.3%",
    "comparisons where TCM raised Recall@1": "14 of 16",
    "largest Recall@1 gain (pp)": "+3.6",
    "largest Recall@1 drop (pp)": "-0.2",
}
RETRIEVAL = ("MAP@R", "R-precision")
# Recall@k reported by the paper for each benchmark (its tables follow the literature's convention).
PAPER_K = {"cub": (1, 2, 4, 8), "cars196": (1, 2, 4, 8), "sop": (1, 10, 100, 1000), "inat2018": (1, 4, 16, 32)}
CONSISTENCY = ("OPIS", "eps-OPIS")
SIGNIFICANCE = "significant at 95% (t, paired over seeds)"
PP = 100.0  # accuracy metrics are fractions; their changes are reported in percentage points


def change_column(metric: str) -> str:
    """The name of a metric's change column (with - without): Recall@k, MAP@R and R-precision change
    in percentage points, named '(pp)'; OPIS and eps-OPIS in their own unit (their relative change has
    its own '%' column). Its interval's columns add ' low' and ' high'.

    >>> change_column("R@1"), change_column("OPIS")
    ('R@1 change (pp)', 'OPIS change')
    """
    return f"{metric} change" + ("" if metric in CONSISTENCY else " (pp)")


def _scale(metric: str) -> float:
    return 1.0 if metric in CONSISTENCY else PP
NEEDS_SEEDS = "intervals need >= 2 seeds"


@dataclass(frozen=True)
class Pair:
    """Two runs identical except for TCM."""

    key: str
    without: str
    with_tcm: str


def metric_columns(columns) -> list[str]:
    """The metric names among ``columns``: Recall@k by k, then MAP@R, R-precision, OPIS, eps-OPIS.

    >>> metric_columns(["run", "OPIS", "R@10", "R@2", "MAP@R"])
    ['R@2', 'R@10', 'MAP@R', 'OPIS']
    """
    recall = sorted((c for c in columns if c.startswith("R@")), key=lambda c: int(c[2:]))
    return recall + [c for c in (*RETRIEVAL, *CONSISTENCY) if c in columns]


def evaluated_seeds(cfg: Config, name: str) -> list[int]:
    """The configured seeds of run ``name`` that have metrics, ascending (a seed no longer configured
    is not reported even if its files remain)."""
    return sorted(set(cfg.runs[name].train.seeds) & set(cfg.run_dir(name).evaluated_seeds()))


def per_seed_table(cfg: Config) -> pd.DataFrame:
    """One row per configured run and seed: the seed's metrics, status 'done' or 'missing'."""
    rows = []
    for name, run in cfg.runs.items():
        evaluated = evaluated_seeds(cfg, name)
        for seed in run.train.seeds:
            row = {"run": name, "seed": seed, "status": "done" if seed in evaluated else "missing"}
            if seed in evaluated:
                row.update(headline(json.loads(cfg.run_dir(name).seed_metrics(seed).read_text())))
            rows.append(row)
    # The configured metrics are columns even when no seed has them, so missing runs read NaN throughout.
    configured = [f"R@{k}" for k in cfg.evaluation.recall_k] + [*RETRIEVAL, *CONSISTENCY]
    table = pd.DataFrame(rows, columns=None if rows else ["run", "seed", "status"])
    return table.reindex(columns=["run", "seed", *metric_columns({*table.columns, *configured}), "status"])


def _done(per_seed: pd.DataFrame, name: str) -> pd.DataFrame:
    """The evaluated seeds of one run, indexed by seed."""
    return per_seed[(per_seed["run"] == name) & (per_seed["status"] == "done")].set_index("seed").sort_index()


def _seed_list(seeds) -> str:
    return ", ".join(str(int(s)) for s in seeds)


def run_summary(cfg: Config, per_seed: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per configured run: its settings, and per metric its mean and sd over the evaluated
    seeds (n of them); status 'done', 'partial' (fewer seeds evaluated than configured) or 'missing'."""
    per_seed = per_seed_table(cfg) if per_seed is None else per_seed
    metrics = metric_columns(per_seed.columns)
    rows = []
    for name, run in cfg.runs.items():
        done = _done(per_seed, name)
        n = len(done)
        row = {"run": name, "dataset": run.dataset, "backbone": run.model.backbone, "loss": run.loss.name,
               "tcm": run.tcm.enabled, "batch_size": run.train.batch_size, "epochs": run.train.epochs,
               "seeds": _seed_list(done.index), "n": n,
               "status": "missing" if n == 0 else "partial" if n < len(run.train.seeds) else "done"}
        for m in metrics:
            s = spread(done[m].dropna()) if n else spread([])
            row[f"{m} mean"], row[f"{m} sd"] = s.mean, s.sd
        row["learned"] = _learned(cfg, name, row.get("R@1 mean", math.nan)) if n else "unknown"
        rows.append(row)
    return pd.DataFrame(rows)


def chance_bound(num_classes: int, num_queries: int) -> float:
    """Recall@1 two standard errors above chance (1 / number of test classes; binomial error over the
    queries): a run at or below it did not learn an embedding of its test classes.

    >>> round(chance_bound(5, 896), 3)
    0.227
    """
    p = 1.0 / num_classes
    return p + 2.0 * math.sqrt(p * (1.0 - p) / num_queries)


def _learned(cfg: Config, name: str, recall1: float) -> str:
    """'yes' when the run's mean Recall@1 is clearly above chance (:func:`chance_bound`), 'did not
    learn' when not, 'unknown' without the numbers to tell."""
    seeds = evaluated_seeds(cfg, name)
    path = cfg.run_dir(name).seed_settings(seeds[0]) if seeds else None
    if path is None or not path.is_file() or math.isnan(recall1):
        return "unknown"
    settings = json.loads(path.read_text())
    bound = chance_bound(int(settings["num_classes"]), int(settings["num_images"]))
    return "yes" if recall1 > bound else "did not learn"


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


def _paired(per_seed: pd.DataFrame, pair: Pair) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Both runs of a pair restricted to the seeds both have evaluated (same seed, same row)."""
    a, b = _done(per_seed, pair.without), _done(per_seed, pair.with_tcm)
    common = a.index.intersection(b.index).sort_values()
    return a.loc[common], b.loc[common]


def seed_differences(per_seed: pd.DataFrame, pairs: list[Pair]) -> pd.DataFrame:
    """One row per pair and common seed: each metric without, with TCM and its change (with - without)."""
    metrics = metric_columns(per_seed.columns)
    rows = []
    for p in pairs:
        a, b = _paired(per_seed, p)
        for seed in a.index:
            row = {"comparison": p.key, "run (without TCM)": p.without, "run (with TCM)": p.with_tcm, "seed": seed}
            for m in metrics:
                row.update({f"{m} without": a.at[seed, m], f"{m} with": b.at[seed, m],
                            change_column(m): _scale(m) * (b.at[seed, m] - a.at[seed, m])})
            rows.append(row)
    return pd.DataFrame(rows, columns=None if rows else ["comparison", "run (without TCM)", "run (with TCM)", "seed"])


def comparison_table(summary: pd.DataFrame, pairs: list[Pair], per_seed: pd.DataFrame) -> pd.DataFrame:
    """Without / with TCM per pair, seed by seed: per metric the means over the common seeds, the mean
    paired change with its 95% t interval (low, high; NaN with fewer than 2 seeds; in percentage points
    for the accuracy metrics, see :func:`change_column`) and whether the interval excludes 0; OPIS and
    eps-OPIS also as % of the mean without TCM."""
    by_run = summary.set_index("run")
    metrics = metric_columns(per_seed.columns)
    rows = []
    for p in pairs:
        a, b = _paired(per_seed, p)
        info = by_run.loc[p.without]
        learned = [by_run.loc[r, "learned"] for r in (p.without, p.with_tcm)]
        row = {"comparison": p.key, "dataset": info["dataset"], "backbone": info["backbone"], "loss": info["loss"],
               "run (without TCM)": p.without, "run (with TCM)": p.with_tcm, "seeds": _seed_list(a.index), "n": len(a),
               # A pair where a run stayed at chance compares collapsed embeddings: shown, never counted.
               "learned": "did not learn" if "did not learn" in learned else "yes" if learned == ["yes"] * 2
               else "unknown"}
        for m in metrics:
            d = paired_difference(a[m], b[m])
            va = float(a[m].mean()) if len(a) else math.nan
            vb = float(b[m].mean()) if len(b) else math.nan
            c, k = change_column(m), _scale(m)
            row.update({f"{m} without": va, f"{m} with": vb, c: k * d.mean, f"{c} low": k * d.low,
                        f"{c} high": k * d.high,
                        # None, not False, where no interval exists: "not significant" would claim a test.
                        f"{m} significant": d.significant if not math.isnan(d.low) else None})
            if m in CONSISTENCY:
                row[f"{m} change %"] = 100.0 * (vb - va) / va if va > 0 else math.nan
        rows.append(row)
    return pd.DataFrame(rows)


def _significance(done: pd.DataFrame, metric: str, lower_is_claim: bool) -> str:
    """'k of N' comparisons whose interval lies wholly on the claimed side of 0 (N: those with an interval)."""
    tested = done[done["n"] >= 2]
    if tested.empty:
        return NEEDS_SEEDS
    low, high = tested[f"{change_column(metric)} low"], tested[f"{change_column(metric)} high"]
    claimed, other = (high < 0, low > 0) if lower_is_claim else (low > 0, high < 0)
    text = f"{int(claimed.sum())} of {len(tested)}"
    return text + (f"; {int(other.sum())} significantly the other way" if other.any() else "")


def _one_significance(row: pd.Series, metric: str) -> str:
    if row["n"] < 2:
        return NEEDS_SEEDS
    return f"{'yes' if row[f'{metric} significant'] else 'no'} ({row['comparison']})"


def claims_table(comparison: pd.DataFrame, configured: int) -> pd.DataFrame:
    """The paper's headline figures recomputed from the means of our complete pairs, beside the
    paper's, with how many of the comparisons are significant at 95% (paired t over seeds)."""
    needed = ["OPIS change %", change_column("R@1")]  # absent when no run has results at all
    done = comparison[comparison["n"] > 0].dropna(subset=needed) if set(needed) <= set(comparison) else comparison[:0]
    excluded = int((done["learned"] == "did not learn").sum()) if "learned" in done else 0
    done = done[done["learned"] != "did not learn"] if "learned" in done else done
    n = len(done)
    if n == 0:
        ours = dict.fromkeys(PAPER_CLAIMS, "missing")
        sig = dict.fromkeys(PAPER_CLAIMS, "missing")
        seeds = "missing"
    else:
        gain = done[change_column("R@1")]  # already in pp
        best_opis, best_gain, worst_gain = (done.loc[i] for i in (done["OPIS change %"].idxmin(), gain.idxmax(),
                                                                    gain.idxmin()))
        ours = {
            "comparisons where TCM lowered OPIS": f"{int((done['OPIS change %'] < 0).sum())} of {n}",
            "largest OPIS reduction": f"{-done['OPIS change %'].min():.1f}%",
            "comparisons where TCM raised Recall@1": f"{int((gain > 0).sum())} of {n}",
            "largest Recall@1 gain (pp)": f"{gain.max():+.1f}",
            "largest Recall@1 drop (pp)": f"{gain.min():+.1f}" if (gain < 0).any() else "no drop",
        }
        sig = {
            "comparisons where TCM lowered OPIS": _significance(done, "OPIS", lower_is_claim=True),
            "largest OPIS reduction": _one_significance(best_opis, "OPIS"),
            "comparisons where TCM raised Recall@1": _significance(done, "R@1", lower_is_claim=False),
            "largest Recall@1 gain (pp)": _one_significance(best_gain, "R@1"),
            "largest Recall@1 drop (pp)": _one_significance(worst_gain, "R@1") if (gain < 0).any() else "",
        }
        lo, hi = int(done["n"].min()), int(done["n"].max())
        seeds = str(lo) if lo == hi else f"{lo} to {hi}"
    return pd.DataFrame({"claim": list(PAPER_CLAIMS), "paper": list(PAPER_CLAIMS.values()),
                         "ours": [ours[c] for c in PAPER_CLAIMS], SIGNIFICANCE: [sig[c] for c in PAPER_CLAIMS],
                         "comparisons": f"{n} complete of {configured} configured"
                                        + (f"; {excluded} left out: did not learn (R@1 at chance)" if excluded else ""),
                         "seeds per comparison": seeds})


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
    """Rows = backbone x base loss of one data set; per metric: mean without / with TCM, mean paired
    change and its 95% interval. ``ks``: the Recall@k to show (default: all computed)."""
    d = comparison[comparison["dataset"] == dataset]
    d = d.drop(columns=["comparison", "dataset", "run (without TCM)", "run (with TCM)", "seeds",
                        *(c for c in d.columns if c.endswith(" significant"))])
    if ks is not None:
        keep = {f"R@{k}" for k in ks}
        d = d[[c for c in d.columns if not c.startswith("R@") or c.split(" ", 1)[0] in keep]]
    return d.reset_index(drop=True)


def threshold_table(cfg: Config) -> pd.DataFrame:
    """Per evaluated run and seed: the global threshold at the target FAR (metrics.json's
    threshold_report) and the spread of per-class FAR and FRR at it."""
    rows = []
    for name in cfg.runs:
        run_dir = cfg.run_dir(name)
        for seed in evaluated_seeds(cfg, name):
            tr = json.loads(run_dir.seed_metrics(seed).read_text()).get("threshold_report")
            if not tr:
                continue
            row = {"run": name, "seed": seed, "target FAR": tr["target_far"], "threshold": tr["threshold"],
                   "overall FAR": tr["overall_far"], "overall FRR": tr["overall_frr"]}
            for rate in ("far", "frr"):
                s = tr[f"class_{rate}"]
                row.update({f"class {rate.upper()} {k}": s[k] for k in ("min", "median", "max")})
                row[f"class {rate.upper()} worst {tr['worst_share']:.0%}"] = s["worst_share_mean"]
            rows.append(row)
    return pd.DataFrame(rows)


def _load_embeddings(path: Path) -> tuple[np.ndarray, np.ndarray]:
    with np.load(path) as z:
        return z["embeddings"], z["labels"]


def _first_seed(cfg: Config, names: tuple[str, ...], file: Callable[[RunDir, int], Path]) -> int | None:
    """The first seed every run of ``names`` has evaluated and has ``file`` for (per-class figures show one seed)."""
    common = set.intersection(*(set(evaluated_seeds(cfg, n)) for n in names))
    return next((s for s in sorted(common) if all(file(cfg.run_dir(n), s).is_file() for n in names)), None)


def _with_recall(cfg: Config, name: str, seed: int, label: str) -> str:
    """``label`` with the seed's Recall@1 and OPIS, where its metrics.json has them."""
    path = cfg.run_dir(name).seed_metrics(seed)
    m = headline(json.loads(path.read_text())) if path.is_file() else {}
    return f"{label} (R@1 {m['R@1']:.3f}, OPIS {m['OPIS']:.4f})" if {"R@1", "OPIS"} <= set(m) else label


def _pair_figures(cfg: Config, pair: Pair, out: Path) -> dict[str, Path]:
    stem = pair.key.replace("/", "_")
    names = (pair.without, pair.with_tcm)
    made: dict[str, Path] = {}
    seed = _first_seed(cfg, names, RunDir.seed_curves)
    if seed is not None:
        a, b = (pd.read_csv(cfg.run_dir(n).seed_curves(seed), dtype={"class": str}) for n in names)
        made[f"Per-class utility vs threshold: {pair.key} (seed {seed})"] = figures.save(
            figures.utility_pair(a, b, f"{pair.key} (seed {seed})"), out / f"utility_{stem}.png")
    seed = _first_seed(cfg, names, RunDir.seed_embeddings)
    if seed is not None:
        emb = {label: _load_embeddings(cfg.run_dir(n).seed_embeddings(seed))
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
                              else _load_embeddings(cfg.run_dir(n).seed_embeddings(s))
                              for label, n in zip(("without TCM", "with TCM"), names)} for s in seeds}
        made[f"Test embeddings in 2-D: {pair.key} (seeds {_seed_list(seeds)})"] = figures.save(
            figures.embeddings_grid(rows, pair.key), out / f"embeddings_{stem}.png")
    return made


def _pm(mean: float, sd: float) -> str:
    """'mean ± sd' (only the mean with one seed, 'missing' with none)."""
    if math.isnan(mean):
        return "missing"
    return f"{mean:.4f}" if math.isnan(sd) else f"{mean:.4f} ± {sd:.4f}"


def _interval(row: pd.Series, m: str) -> str:
    """'change [low, high]' of metric ``m``, in its change column's unit (pp: 2 decimals)."""
    c = change_column(m)
    d, low, high = row[c], row[f"{c} low"], row[f"{c} high"]
    if math.isnan(d):
        return "missing"
    f = ".4f" if m in CONSISTENCY else ".2f"
    return f"{d:+{f}}" + (f" [{low:+{f}}, {high:+{f}}]" if not math.isnan(low) else " (1 seed: no interval)")


def _seeds_text(cfg: Config) -> str:
    sets = {tuple(r.train.seeds) for r in cfg.runs.values()}
    if len(sets) == 1:
        return f"seeds {_seed_list(next(iter(sets)))}"
    return "seeds " + "; ".join(f"{_seed_list(r.train.seeds)} ({name})" for name, r in cfg.runs.items())


def _readme(cfg: Config, summary: pd.DataFrame, comparison: pd.DataFrame, claims: pd.DataFrame,
            tables: list[Path], made: dict[str, Path], reports: Path) -> str:
    o, ev = cfg.evaluation.opis, cfg.evaluation
    rel = lambda p: p.relative_to(reports).as_posix()  # noqa: E731
    md_tables = [p for p in tables if p.suffix == ".md"]
    datasets = sorted(summary["dataset"].unique())
    evaluated = summary[summary["n"] > 0]
    status = summary["status"].value_counts()
    lines = [
        "# Results", "",
        "Generated by the `report` stage of `dvc repro` from the files in `runs/`; do not edit by hand.", "",
        "## Seeds and error bars", "",
        f"- Every run is trained and evaluated once per seed: {_seeds_text(cfg)}. A run's numbers are the "
        "**mean ± sd over its n evaluated seeds** (sample sd, n - 1 in the denominator; n per run in "
        "[tables/runs.md](tables/runs.md), each seed in [tables/runs_per_seed.md](tables/runs_per_seed.md)).",
        "- A without/with-TCM comparison pairs the seeds both runs have (same seed = same initialisation and "
        "data order); its means without and with TCM are over those common seeds. Its change is the mean "
        "of the paired differences (with - without), and its interval the **two-sided 95% Student-t interval "
        "of the paired differences** (n - 1 degrees of freedom; it assumes roughly normal differences). "
        "A change is *significant* when its interval excludes 0. Intervals need at least 2 seeds; "
        "with fewer they read 'missing'.",
        "- Units of a change: Recall@k, MAP@R and R-precision in **percentage points** (columns named "
        "'(pp)'); OPIS and eps-OPIS in their own unit, with the relative change in % ('OPIS change %').",
        "- Seeds not evaluated are shown as missing and never filled in; a run with fewer evaluated seeds "
        "than configured has status 'partial'.", "",
        "## Settings used", "",
        f"- OPIS: utility = F-beta of TPR and TNR with beta = {o.beta}; calibration range = the thresholds where "
        f"the overall FAR is in [{o.far_range[0]}, {o.far_range[1]}], {o.n_thresholds} evenly spaced; "
        f"class weights: {o.class_weighting}; eps-OPIS with eps = {o.eps}.",
        f"- Recall@k for k = {list(ev.recall_k)}; cosine similarity; each test image queries all others.",
        f"- Runs: {len(cfg.runs)} configured, {int(status.get('done', 0))} evaluated on every seed, "
        f"{int(status.get('partial', 0))} partial, {int(status.get('missing', 0))} missing; "
        f"{len(comparison)} without/with-TCM comparisons. Settings of each run: `runs/<run>/run.json` "
        "and its MLflow runs (one per seed).", "",
        "## The paper's claims, checked", "",
        "'ours' is computed on the means over seeds; the significance column counts the comparisons whose "
        "95% interval excludes 0 on the claimed side (N = the comparisons with at least 2 seeds).", "",
        _markdown(claims),
        "| paper's result | our file | from |", "|---|---|---|",
        "| headline figures (OPIS down in 16/16, up to 77.3%; R@1 up in 14/16, +3.6 / -0.2 pp) | "
        "[tables/claims.md](tables/claims.md) | every without/with-TCM pair below |",
        *(f"| results table, {d} | [tables/{d}.md](tables/{d}.md) (also .csv, .tex) | runs on {d} |" for d in datasets),
        "| TCM effect per comparison with 95% intervals | [figures/tcm_effect.png](figures/tcm_effect.png) | "
        "paired seeds of every pair ([tables/tcm_comparison_per_seed.md](tables/tcm_comparison_per_seed.md)) |",
        "| per-class utility vs threshold, without and with TCM (figure 2 style) | `figures/utility_*.png` | "
        "`curves.csv` of each pair's first common seed |",
        "| accuracy vs OPIS landscape with its Pareto frontier | "
        "[figures/opis_vs_recall.png](figures/opis_vs_recall.png) | every evaluated run, mean ± sd over seeds "
        "(the `landscape` profile for the paper's study) |",
        "| 2-D toy embeddings without and with TCM | `figures/embeddings_*.png` | `embeddings.npz` of each pair's "
        "first common seed; 2-D embeddings (the `toy` profile): every common seed, one row each; others by PCA |",
        "| positive / negative similarity distributions | `figures/similarities_*.png` | `embeddings.npz` of each "
        "pair's first common seed |",
        "| training curves | [figures/training_curves.png](figures/training_curves.png) | `history.csv` of each run "
        "(mean over seeds, band = min to max) |",
        "| headline metrics seed by seed | [figures/per_seed.png](figures/per_seed.png) | `metrics.json` of "
        "every evaluated seed ([tables/runs_per_seed.md](tables/runs_per_seed.md)), mean ± sd over seeds |",
        "",
    ]
    if not evaluated.empty:
        runs = evaluated[["run", "n", "status"]].assign(
            **{m: [_pm(r[f"{m} mean"], r[f"{m} sd"]) for _, r in evaluated.iterrows()] for m in HEADLINE})
        lines += ["## Runs (mean ± sd over seeds)", "", _markdown(runs), ""]
    if not comparison.empty:
        cmp = comparison[["dataset", "backbone", "loss", "n"]].assign(**{
            **{f"{m} without": comparison[f"{m} without"] for m in ("R@1", "OPIS")},
            f"{change_column('R@1')} [95% CI]": [_interval(r, "R@1") for _, r in comparison.iterrows()],
            "OPIS change [95% CI]": [_interval(r, "OPIS") for _, r in comparison.iterrows()],
            "OPIS change %": comparison["OPIS change %"]})
        lines += ["## Without vs with TCM (mean paired change, 95% t interval)", "", _markdown(cmp), ""]
    lines += ["## Tables", "", *(f"- [{rel(p)}]({rel(p)})" for p in md_tables), ""]
    lines += ["## Figures", "", "Each PNG has a PDF twin in `figures-pdf/`.", ""]
    for title, p in made.items():
        lines += [f"### {title}", "", f"![{title}]({rel(p)})", ""]
    lines += ["## Executed notebooks", "",
              "`notebooks/`: the executed copy of every stage's notebook (DVC outputs).", ""]
    return "\n".join(lines)


LOSS_PARTS = ("loss", "base_loss", "tcm_loss")


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


def top_metrics(summary: pd.DataFrame) -> dict:
    """reports/metrics.json: per evaluated run, n and the mean (and sd, from 2 seeds) of the headline
    metrics, so `dvc metrics diff` compares runs across commits."""
    out = {}
    for _, r in summary[summary["n"] > 0].iterrows():
        out[r["run"]] = {"n_seeds": int(r["n"]),
                         "mean": {m: float(r[f"{m} mean"]) for m in HEADLINE if not math.isnan(r[f"{m} mean"])},
                         "sd": {m: float(r[f"{m} sd"]) for m in HEADLINE if not math.isnan(r[f"{m} sd"])}}
    return out


def notebook_html(notebook: Path, out_dir: Path) -> Path | None:
    """An HTML render of an executed notebook (what the MLflow UI can show), or None if it is missing."""
    if not notebook.is_file():
        return None
    import nbformat
    from nbconvert import HTMLExporter

    html, _ = HTMLExporter().from_notebook_node(nbformat.read(notebook, as_version=4))
    out = out_dir / notebook.with_suffix(".html").name
    write_text(out, html)
    return out


def _log_to_mlflow(cfg: Config, tracker: Tracker, reports: Path, owned: dict[str, list[Path]]) -> None:
    """Attach each run's notebooks (as HTML), own figures and run.json to the MLflow run of each of its seeds."""
    with tempfile.TemporaryDirectory() as tmp:
        for name in cfg.runs:
            run_dir = cfg.run_dir(name)
            if not run_dir.info.is_file():
                continue
            info = json.loads(run_dir.info.read_text())
            stems = (f"data-{cfg.runs[name].dataset}", f"train-{name}", f"evaluate-{name}")
            rendered = [notebook_html(reports / "notebooks" / f"{stem}.ipynb", Path(tmp)) for stem in stems]
            html = [p for p in rendered if p is not None]
            for _seed, seed_info in sorted(info.get("seeds", {}).items(), key=lambda kv: int(kv[0])):
                run_id = tracker.find_run(name, seed_info["config_hash"])
                tracker.log_artifacts(run_id, html, "notebooks")
                tracker.log_artifacts(run_id, owned.get(name, []), "figures")
                tracker.log_artifacts(run_id, [run_dir.info], "config")
                tracker.set_stage(run_id, "report")


def run(cfg: Config, tracker: Tracker | None = None) -> dict[str, list[Path]]:
    """Write every table and figure; returns the files written by kind."""
    reports = cfg.path(cfg.paths.reports)
    fig_dir = reports / "figures"
    (reports / "tables").mkdir(parents=True, exist_ok=True)
    fig_dir.mkdir(parents=True, exist_ok=True)
    per_seed = per_seed_table(cfg)
    summary = run_summary(cfg, per_seed)
    pairs = find_pairs(cfg)
    comparison = comparison_table(summary, pairs, per_seed)
    differences = seed_differences(per_seed, pairs)
    claims = claims_table(comparison, len(pairs))

    tables = write_table(summary, reports / "tables" / "runs")
    tables += write_table(per_seed, reports / "tables" / "runs_per_seed")
    tables += write_table(comparison, reports / "tables" / "tcm_comparison")
    tables += write_table(differences, reports / "tables" / "tcm_comparison_per_seed")
    tables += write_table(claims, reports / "tables" / "claims", latex=True)
    tables += write_table(threshold_table(cfg), reports / "tables" / "thresholds")
    for d in sorted(summary["dataset"].unique()):
        ks = PAPER_K.get(cfg.datasets[d].source)
        tables += write_table(dataset_table(comparison, d, ks) if not comparison.empty else comparison,
                              reports / "tables" / d, latex=True)

    made: dict[str, Path] = {}
    owned: dict[str, list[Path]] = {}  # run -> the figures drawn from its own files (logged to its MLflow runs)
    for p in pairs:
        pair_made = _pair_figures(cfg, p, fig_dir)
        made.update(pair_made)
        for n in (p.without, p.with_tcm):
            owned.setdefault(n, []).extend(pair_made.values())
    for name in cfg.runs:  # per-class utility curves of every evaluated run, its first evaluated seed
        seed = _first_seed(cfg, (name,), RunDir.seed_curves)
        if seed is not None:
            curves = pd.read_csv(cfg.run_dir(name).seed_curves(seed), dtype={"class": str})
            title = f"Per-class utility vs threshold: {name} (seed {seed})"
            made[title] = figures.save(run_utility(curves, f"{name} (seed {seed}): per-class utility"),
                                       fig_dir / f"utility_run_{name}.png")
            owned.setdefault(name, []).append(made[title])
    evaluated = summary[summary["n"] > 0]
    if not evaluated.empty:
        made["Accuracy vs OPIS, all runs (mean ± sd over seeds)"] = figures.save(
            figures.landscape(evaluated), fig_dir / "opis_vs_recall.png")
        made["Headline metrics per seed, runs without / with TCM (mean ± sd over seeds)"] = figures.save(
            figures.per_seed(per_seed, evaluated, tuple(m for m in HEADLINE if m in per_seed)),
            fig_dir / "per_seed.png")
    if not differences.empty:
        made["TCM effect per comparison (paired over seeds, 95% t intervals)"] = figures.save(
            figures.tcm_effect(comparison[comparison["n"] > 0], differences), fig_dir / "tcm_effect.png")
    histories = {n: pd.read_csv(cfg.run_dir(n).history) for n in cfg.runs if cfg.run_dir(n).history.is_file()}
    if histories:
        made["Training curves (mean over seeds, band = min to max)"] = figures.save(
            figures.training_curves(histories), fig_dir / "training_curves.png")
    (reports / "plots").mkdir(parents=True, exist_ok=True)
    with atomic_path(reports / "plots" / "training_curves.csv") as tmp:
        curves_long(histories).to_csv(tmp, index=False)

    write_json(reports / "metrics.json", top_metrics(summary))
    write_text(reports / "README.md", _readme(cfg, summary, comparison, claims, tables, made, reports))

    tracker = tracker or Tracker(cfg)
    if tracker.enabled:
        _log_to_mlflow(cfg, tracker, reports, owned)
    return {"tables": tables, "figures": list(made.values()), "readme": [reports / "README.md"]}
