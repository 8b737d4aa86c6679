"""Report: result files of every run -> ``reports/`` tables, figures and README.

Reads only files the train and evaluate stages wrote (never MLflow); a run or seed whose files are
absent is shown as missing, never filled in. Each run is trained once per seed: a run is summarised
by its mean, sd and n over the evaluated seeds, and each without/with-TCM pair is compared seed by
seed (paired differences with a two-sided 95% Student-t interval, ``tcm.stats``), which gives each
comparison a verdict: lower, higher or no difference. A seed whose embedding collapsed (see
:data:`COLLAPSE_NEG_COS_MEDIAN`, :data:`COLLAPSE_R1_DROP_PP`) marks its run and comparison
'collapsed'. The claims table counts the verdicts of the comparisons that learned and did not
collapse, and recomputes the paper's largest changes from their means.
"""

from __future__ import annotations

import json
import math
import sys
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from tcm import figures
from tcm.atomic import atomic_path, write_json, write_text
from tcm.config import Config
from tcm.mlflow_log import log_report
from tcm.provenance import stale_reason
from tcm.runfiles import LOSS_PARTS, RunDir
from tcm.stats import HEADLINE, Z_95, Z_POWER_80, headline, paired_difference, seeds_needed, spread, verdict
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
# Per-seed numbers that qualify the metrics rather than rank the models: report column -> metrics.json key.
DIAGNOSTICS = {"OPIS boot sd": "opis_boot_sd", "eps-OPIS boot sd": "eps_opis_boot_sd",
               "neg cos median": "neg_cos_median", "pos cos median": "pos_cos_median"}
# Collapse guard. A seed is "collapsed" when the median cosine of its test negative pairs is at least
# COLLAPSE_NEG_COS_MEDIAN (images of different classes look alike: every pair is bunched near 1, so its
# thresholds and OPIS describe a degenerate embedding), or, for a run with TCM, when its Recall@1 is more
# than COLLAPSE_R1_DROP_PP percentage points below the same seed of its run without TCM (its consistency
# was bought by breaking retrieval). Such a run and its comparison are shown, marked "collapsed", and
# never counted in the claims (as runs that did not learn).
COLLAPSE_NEG_COS_MEDIAN = 0.9
COLLAPSE_R1_DROP_PP = 5.0
# Verdicts are given for these metrics; "seeds for 10%" sizes a paired test for this relative change of OPIS.
VERDICT_METRICS = ("R@1", "OPIS")
DETECT_CHANGE = 0.10
LEFT_OUT = ("did not learn", "collapsed")
# Data sets the package makes itself (or bundles): a report on them only is a demonstration (see _purpose).
GENERATED_SOURCES = {"glyphs": "random-stroke glyphs of classes disjoint across pretrain, train and test",
                     "sklearn_digits": "scikit-learn's 8x8 digits", "mnist": "MNIST"}


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


def stale_seeds(cfg: Config, name: str) -> dict[int, str]:
    """The configured seeds of run ``name`` whose results are not those of the checkpoint and settings
    now on record, with the reason (:func:`tcm.provenance.stale_reason`)."""
    reasons = {seed: stale_reason(cfg, name, seed) for seed in cfg.runs[name].train.seeds}
    return {seed: why for seed, why in reasons.items() if why}


def evaluated_seeds(cfg: Config, name: str) -> list[int]:
    """The configured seeds of run ``name`` with current metrics, ascending: a seed no longer
    configured is not reported even if its files remain, nor a stale one (:func:`stale_seeds`)."""
    current = set(cfg.runs[name].train.seeds) - set(stale_seeds(cfg, name))
    return sorted(current & set(cfg.run_dir(name).evaluated_seeds()))


def per_seed_table(cfg: Config) -> pd.DataFrame:
    """One row per configured run and seed: the seed's metrics and :data:`DIAGNOSTICS` (NaN where its
    metrics.json predates them), status 'done', 'stale' (results of another training or other settings
    than params.yaml's: shown as missing, the reason in 'stale because') or 'missing', and whether it
    learned: 'yes', 'did not learn' (Recall@1 at chance, :func:`chance_bound`), 'collapsed'
    (:data:`COLLAPSE_NEG_COS_MEDIAN`, :data:`COLLAPSE_R1_DROP_PP`; the reason in 'collapsed because') or
    'unknown'."""
    rows = []
    for name, run in cfg.runs.items():
        evaluated, stale = evaluated_seeds(cfg, name), stale_seeds(cfg, name)
        for seed in run.train.seeds:
            row = {"run": name, "seed": seed, "stale because": stale.get(seed, ""),
                   "status": "done" if seed in evaluated else "stale" if seed in stale else "missing"}
            if seed in evaluated:
                metrics = json.loads(cfg.run_dir(name).seed_metrics(seed).read_text())
                row.update(headline(metrics))
                row.update({c: float(metrics[k]) for c, k in DIAGNOSTICS.items() if metrics.get(k) is not None})
            rows.append(row)
    # The configured metrics are columns even when no seed has them, so missing runs read NaN throughout.
    configured = [f"R@{k}" for k in cfg.evaluation.recall_k] + [*RETRIEVAL, *CONSISTENCY]
    table = pd.DataFrame(rows, columns=None if rows else ["run", "seed", "status"])
    table = table.reindex(columns=["run", "seed", *metric_columns({*table.columns, *configured}), *DIAGNOSTICS,
                                   "status", "stale because"])
    reasons = collapse_reasons(cfg, table)
    table["learned"] = [_seed_learned(cfg, r["run"], int(r["seed"]), r.get("R@1", math.nan), reasons)
                        if r["status"] == "done" else None for _, r in table.iterrows()]
    table["collapsed because"] = [reasons.get((r["run"], int(r["seed"])), "") for _, r in table.iterrows()]
    return table


def collapse_reasons(cfg: Config, per_seed: pd.DataFrame) -> dict[tuple[str, int], str]:
    """(run, seed) -> why that evaluated seed collapsed (module constants :data:`COLLAPSE_NEG_COS_MEDIAN`
    and :data:`COLLAPSE_R1_DROP_PP`); seeds that did not collapse are absent. A seed without a
    negative-pair median (older metrics.json) is judged by Recall@1 alone."""
    reasons: dict[tuple[str, int], list[str]] = {}
    done = per_seed[per_seed["status"] == "done"]
    if "neg cos median" in done:
        for _, r in done[done["neg cos median"] >= COLLAPSE_NEG_COS_MEDIAN].iterrows():
            reasons.setdefault((r["run"], int(r["seed"])), []).append(
                f"negative-pair cosine median {r['neg cos median']:.3f} >= {COLLAPSE_NEG_COS_MEDIAN}")
    if "R@1" in done:
        for p in find_pairs(cfg):
            a, b = _paired(per_seed, p)
            for seed in a.index:
                drop = round(PP * (a.at[seed, "R@1"] - b.at[seed, "R@1"]), 9)  # 9 places: no float-noise drops
                if drop > COLLAPSE_R1_DROP_PP:
                    reasons.setdefault((p.with_tcm, int(seed)), []).append(
                        f"R@1 {drop:.1f} pp below {p.without} (same seed) > {COLLAPSE_R1_DROP_PP:g} pp")
    return {k: "; ".join(v) for k, v in reasons.items()}


def _seed_learned(cfg: Config, name: str, seed: int, recall1: float, reasons: dict) -> str:
    if (name, seed) in reasons:
        return "collapsed"
    bound = _chance_bound_of(cfg, name, seed)
    if bound is None or math.isnan(recall1):
        return "unknown"
    return "yes" if recall1 > bound else "did not learn"


def _done(per_seed: pd.DataFrame, name: str) -> pd.DataFrame:
    """The evaluated seeds of one run, indexed by seed."""
    return per_seed[(per_seed["run"] == name) & (per_seed["status"] == "done")].set_index("seed").sort_index()


def _seed_list(seeds) -> str:
    return ", ".join(str(int(s)) for s in seeds)


def run_summary(cfg: Config, per_seed: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per configured run: its settings, and per metric its mean and sd over the evaluated
    seeds (n of them); status 'done', 'partial' (fewer seeds evaluated than configured), 'stale' (no
    current seed, some stale: see :func:`per_seed_table`) or 'missing'."""
    per_seed = per_seed_table(cfg) if per_seed is None else per_seed
    metrics = metric_columns(per_seed.columns)
    rows = []
    for name, run in cfg.runs.items():
        done = _done(per_seed, name)
        n = len(done)
        row = {"run": name, "dataset": run.dataset, "backbone": run.model.backbone, "loss": run.loss.name,
               "tcm": run.tcm.enabled, "batch_size": run.train.batch_size, "epochs": run.train.epochs,
               "seeds": _seed_list(done.index), "n": n,
               "status": "partial" if 0 < n < len(run.train.seeds) else "done" if n else
               "stale" if (per_seed[per_seed["run"] == name]["status"] == "stale").any() else "missing"}
        for m in metrics:
            s = spread(done[m].dropna()) if n else spread([])
            row[f"{m} mean"], row[f"{m} sd"] = s.mean, s.sd
        for d in DIAGNOSTICS:
            row[f"{d} mean"] = spread(done[d].dropna()).mean if n and d in done else math.nan
        collapsed = done.index[done["learned"] == "collapsed"] if "learned" in done else []
        row["learned"] = ("collapsed" if len(collapsed) else _learned(cfg, name, row.get("R@1 mean", math.nan))
                          if n else "unknown")
        row["collapsed seeds"] = _seed_list(collapsed)
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


def _chance_bound_of(cfg: Config, name: str, seed: int) -> float | None:
    """:func:`chance_bound` of one evaluated seed's test split (None without its settings.json or sizes)."""
    path = cfg.run_dir(name).seed_settings(seed)
    settings = json.loads(path.read_text()) if path.is_file() else {}
    if "num_classes" not in settings or "num_images" not in settings:
        return None
    return chance_bound(int(settings["num_classes"]), int(settings["num_images"]))


def _learned(cfg: Config, name: str, recall1: float) -> str:
    """'yes' when the run's mean Recall@1 is clearly above chance (:func:`chance_bound`), 'did not
    learn' when not, 'unknown' without the numbers to tell."""
    seeds = evaluated_seeds(cfg, name)
    bound = _chance_bound_of(cfg, name, seeds[0]) if seeds else None
    if bound is None or math.isnan(recall1):
        return "unknown"
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
    eps-OPIS also as % of the mean without TCM (1 decimal).

    For :data:`VERDICT_METRICS` a verdict ('lower' / 'higher' / 'no difference': the interval lies
    below / above 0 or holds it; None without an interval); for OPIS also the precision of the
    instrument: the interval's half-width as % of OPIS without TCM ('OPIS CI half-width %'), the mean
    bootstrap sd over the seeds as % of the mean OPIS ('OPIS boot sd % without' / '... with') and
    'seeds for 10%' (:func:`tcm.stats.seeds_needed` for a change of 10% of OPIS without TCM).
    'learned' is 'collapsed' or 'did not learn' when either run is (collapsed first)."""
    by_run = summary.set_index("run")
    metrics = metric_columns(per_seed.columns)
    rows = []
    for p in pairs:
        a, b = _paired(per_seed, p)
        info = by_run.loc[p.without]
        learned = [by_run.loc[r, "learned"] for r in (p.without, p.with_tcm)]
        row = {"comparison": p.key, "dataset": info["dataset"], "backbone": info["backbone"], "loss": info["loss"],
               "run (without TCM)": p.without, "run (with TCM)": p.with_tcm, "seeds": _seed_list(a.index), "n": len(a),
               # A pair where a run stayed at chance or collapsed compares degenerate embeddings: shown, never
               # counted.
               "learned": next((x for x in ("collapsed", "did not learn") if x in learned),
                               "yes" if learned == ["yes"] * 2 else "unknown")}
        for m in metrics:
            d = paired_difference(a[m], b[m])
            va = float(a[m].mean()) if len(a) else math.nan
            vb = float(b[m].mean()) if len(b) else math.nan
            c, k = change_column(m), _scale(m)
            row.update({f"{m} without": va, f"{m} with": vb, c: k * d.mean, f"{c} low": k * d.low,
                        f"{c} high": k * d.high,
                        # None, not False, where no interval exists: "not significant" would claim a test.
                        f"{m} significant": d.significant if not math.isnan(d.low) else None})
            if m in VERDICT_METRICS:
                row[f"{m} verdict"] = verdict(d)
            if m in CONSISTENCY:
                row[f"{m} change %"] = round(100.0 * (vb - va) / va, 1) if va > 0 else math.nan
            if m == "OPIS":
                row.update(_precision(a, b, d, va, vb))
        rows.append(row)
    table = pd.DataFrame(rows)
    if "seeds for 10%" in table:  # whole seeds (None where unknown), not floats
        table["seeds for 10%"] = pd.Series([row["seeds for 10%"] for row in rows], dtype=object)
    return table


def _precision(a: pd.DataFrame, b: pd.DataFrame, d, va: float, vb: float) -> dict:
    """The OPIS precision columns of one comparison (see :func:`comparison_table`)."""
    def pct(x: float, of: float) -> float:
        return 100.0 * x / of if of > 0 and not math.isnan(x) else math.nan

    boot = [float(t["OPIS boot sd"].mean()) if "OPIS boot sd" in t and len(t) else math.nan for t in (a, b)]
    return {"OPIS CI half-width %": pct((d.high - d.low) / 2, va), "OPIS boot sd % without": pct(boot[0], va),
            "OPIS boot sd % with": pct(boot[1], vb),
            "seeds for 10%": seeds_needed(d.sd, DETECT_CHANGE * va) if va > 0 else None}


def _verdicts(done: pd.DataFrame, metric: str) -> pd.Series:
    """Each comparison's verdict on ``metric`` (its column, or from its interval where the table has none)."""
    if f"{metric} verdict" in done:
        return done[f"{metric} verdict"]
    low, high = done[f"{change_column(metric)} low"], done[f"{change_column(metric)} high"]
    return pd.Series([None if math.isnan(lo) else "lower" if hi < 0 else "higher" if lo > 0 else "no difference"
                      for lo, hi in zip(low, high)], index=done.index, dtype=object)


def _verdict_count(done: pd.DataFrame, metric: str, claimed: str) -> str:
    """'k of N': the comparisons whose verdict is the claimed one, of all counted (N)."""
    return f"{int((_verdicts(done, metric) == claimed).sum())} of {len(done)}"


def _verdict_breakdown(done: pd.DataFrame, metric: str) -> str:
    """'a lower, b no difference, c higher' over the comparisons with an interval (and how many have none)."""
    v = _verdicts(done, metric)
    if v.isna().all():
        return NEEDS_SEEDS
    text = ", ".join(f"{int((v == x).sum())} {x}" for x in ("lower", "no difference", "higher"))
    return text + (f"; {int(v.isna().sum())} without an interval (1 seed)" if v.isna().any() else "")


def _one_significance(row: pd.Series, metric: str) -> str:
    if row["n"] < 2:
        return NEEDS_SEEDS
    return f"{'yes' if row[f'{metric} significant'] else 'no'} ({row['comparison']})"


def claims_table(comparison: pd.DataFrame, configured: int) -> pd.DataFrame:
    """The paper's headline figures from our complete pairs, beside the paper's: the counts ('k of N')
    are of verdicts (the comparison's 95% paired t interval excludes 0 on the claimed side), never of
    signs of means; the largest changes are means over seeds, with whether their interval excludes 0.
    Comparisons that did not learn or collapsed are left out, and the 'comparisons' column says how many."""
    needed = ["OPIS change %", change_column("R@1")]  # absent when no run has results at all
    done = comparison[comparison["n"] > 0].dropna(subset=needed) if set(needed) <= set(comparison) else comparison[:0]
    learned = done["learned"] if "learned" in done else pd.Series("unknown", index=done.index)
    excluded = {why: int((learned == why).sum()) for why in LEFT_OUT}
    done = done[~learned.isin(LEFT_OUT)]
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
            "comparisons where TCM lowered OPIS": _verdict_count(done, "OPIS", "lower"),
            "largest OPIS reduction": f"{-done['OPIS change %'].min():.1f}%",
            "comparisons where TCM raised Recall@1": _verdict_count(done, "R@1", "higher"),
            "largest Recall@1 gain (pp)": f"{gain.max():+.1f}",
            "largest Recall@1 drop (pp)": f"{gain.min():+.1f}" if (gain < 0).any() else "no drop",
        }
        sig = {
            "comparisons where TCM lowered OPIS": _verdict_breakdown(done, "OPIS"),
            "largest OPIS reduction": _one_significance(best_opis, "OPIS"),
            "comparisons where TCM raised Recall@1": _verdict_breakdown(done, "R@1"),
            "largest Recall@1 gain (pp)": _one_significance(best_gain, "R@1"),
            "largest Recall@1 drop (pp)": _one_significance(worst_gain, "R@1") if (gain < 0).any() else "",
        }
        lo, hi = int(done["n"].min()), int(done["n"].max())
        seeds = str(lo) if lo == hi else f"{lo} to {hi}"
    return pd.DataFrame({"claim": list(PAPER_CLAIMS), "paper": list(PAPER_CLAIMS.values()),
                         "ours": [ours[c] for c in PAPER_CLAIMS], SIGNIFICANCE: [sig[c] for c in PAPER_CLAIMS],
                         "comparisons": f"{n} complete of {configured} configured" + _left_out(excluded),
                         "seeds per comparison": seeds})


def _left_out(excluded: dict[str, int]) -> str:
    why = {"did not learn": "did not learn (R@1 at chance)",
           "collapsed": f"collapsed (negative-pair cosine median >= {COLLAPSE_NEG_COS_MEDIAN}, or R@1 with TCM more "
                        f"than {COLLAPSE_R1_DROP_PP:g} pp below without)"}
    return "".join(f"; {k} left out: {why[w]}" for w, k in excluded.items() if k)


def _column_format(column: str) -> str:
    """How a Markdown table shows a column's numbers (the CSV keeps full precision): percentages
    ('... %' or '... % ...') with 1 decimal, percentage-point changes with 2 (the paper's precision of
    a change of Recall@k), other numbers (rates, OPIS, thresholds) with 4.

    >>> [_column_format(c) for c in ("OPIS change %", "R@1 change (pp) low", "OPIS")]
    ['.1f', '.2f', '.4f']
    """
    return ".1f" if " %" in column else ".2f" if "(pp)" in column else ".4f"


def _markdown(df: pd.DataFrame) -> str:
    fmt = [_column_format(str(c)) for c in df.columns]
    return df.to_markdown(index=False, floatfmt=fmt or ".4f", missingval="missing") + "\n"


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
        seed = _first_seed(cfg, names, RunDir.seed_embeddings)
        if seed is None:
            continue
        for name in names:
            tr = json.loads(cfg.run_dir(name).seed_metrics(seed).read_text()).get("threshold_report")
            if not tr:
                continue
            emb, labels = _load_embeddings(cfg.run_dir(name).seed_embeddings(seed))
            frames.append(class_rates_at(emb, labels, tr["threshold"]).assign(
                comparison=p.key, run=name, tcm=cfg.runs[name].tcm.enabled, seed=seed, threshold=tr["threshold"],
                **{"target FAR": tr["target_far"], "overall FRR": tr["overall_frr"]}))
    columns = ["comparison", "run", "tcm", "seed", "class", "threshold", "target FAR", "FAR", "FRR", "overall FRR"]
    return pd.concat(frames)[columns].reset_index(drop=True) if frames else pd.DataFrame(columns=columns)


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


def generated_by_package(ds) -> bool:
    """Whether a data set's images are made by the package (drawn glyphs, scikit-learn's digits, MNIST
    as the package prepares it, or a benchmark's generated copy) rather than a paper benchmark.

    >>> from types import SimpleNamespace as S
    >>> [generated_by_package(S(source=s, synthetic=y)) for s, y in (("glyphs", None), ("cub", None), ("cub", {}))]
    [True, False, True]
    """
    return ds.source in GENERATED_SOURCES or getattr(ds, "synthetic", None) is not None


def _purpose(cfg: Config) -> list[str]:
    """The README's opening paragraph when every data set of the runs is made by the package (else none)."""
    names = sorted({r.dataset for r in cfg.runs.values()} or cfg.datasets)
    if not names or not all(generated_by_package(cfg.datasets[n]) for n in names):
        return []
    what = "; ".join(f"{n}: " + GENERATED_SOURCES.get(cfg.datasets[n].source,
                                                       f"a generated copy in {cfg.datasets[n].source}'s file format")
                     for n in names)
    return ["## What this run is", "",
            f"A demonstration of the pipeline and of the precision of its metrics on data generated by the package "
            f"({what}). It is **not a test of the paper's claims**: those need the paper's benchmarks (CUB-200-2011, "
            "Cars196, Stanford Online Products, iNaturalist 2018) and ImageNet-pretrained backbones, i.e. the "
            "`paper` and `cub-quick` profiles. The verdicts below are what this instrument measured, reported as "
            "they came out.", ""]


def _bootstrap_text(cfg: Config) -> str:
    b = cfg.evaluation.bootstrap
    if not b.resamples:
        return "- Bootstrap sd of OPIS within a seed: off (0 resamples)."
    return ("- Precision of OPIS within one seed: a **class-stratified bootstrap over the test queries** "
            f"({b.resamples} resamples, seed {b.seed}): within each class its queries are drawn again with "
            "replacement, the gallery (every test image) stays fixed, and each resample's OPIS and eps-OPIS are "
            "computed with the same thresholds rule, beta, class weights and eps as above. Their sd per seed is "
            "'OPIS boot sd' / 'eps-OPIS boot sd' ([tables/runs_per_seed.md](tables/runs_per_seed.md)); it measures "
            "the sampling error of the finite test queries, not the spread over seeds (the intervals cover that).")


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
        *_purpose(cfg),
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
        "- **Verdict** of a comparison (OPIS and R@1): 'lower' / 'higher' when its 95% interval lies below / above "
        "0 (with TCM lower / higher than without), 'no difference' when the interval holds 0. "
        "'OPIS CI half-width %' is half the interval's width as % of OPIS without TCM; 'OPIS boot sd % without' / "
        "'... with' the mean bootstrap sd of OPIS over the seeds as % of the mean OPIS; 'seeds for 10%' the seeds a "
        "paired test would need to detect a change of 10% of OPIS without TCM at two-sided 95% with 80% power: "
        f"n = ceil((({Z_95} + {Z_POWER_80}) × sd of the paired differences / (0.1 × OPIS without TCM))²), at least 2 "
        "(normal approximation; the t test needs a seed or two more when n is small).",
        "- Units of a change: Recall@k, MAP@R and R-precision in **percentage points** (columns named "
        "'(pp)'); OPIS and eps-OPIS in their own unit, with the relative change in % ('OPIS change %').",
        "- Seeds not evaluated are shown as missing and never filled in; a run with fewer evaluated seeds "
        "than configured has status 'partial'. A seed whose results came from another training or other "
        "settings than params.yaml's is 'stale': left out like a missing one, the reason in "
        "[tables/runs_per_seed.md](tables/runs_per_seed.md) ('stale because').", "",
        "## Settings used", "",
        f"- OPIS: utility = F-beta of TPR and TNR with beta = {o.beta}; calibration range = the thresholds where "
        f"the overall FAR is in [{o.far_range[0]}, {o.far_range[1]}], {o.n_thresholds} evenly spaced; "
        f"class weights: {o.class_weighting}; eps-OPIS with eps = {o.eps}.",
        _bootstrap_text(cfg),
        f"- Recall@k for k = {list(ev.recall_k)}; cosine similarity; each test image queries all others.",
        "- Runs that did not learn or collapsed are marked in the 'learned' columns and **left out of the claims** "
        "(the claims table says how many). *Did not learn*: mean Recall@1 at or below chance + 2 standard errors "
        "(chance = 1 / number of test classes). *Collapsed*: a seed whose median cosine of test negative pairs "
        f"is >= {COLLAPSE_NEG_COS_MEDIAN} (images of different classes look alike: every pair bunched near 1), or, "
        f"for a run with TCM, whose Recall@1 is more than {COLLAPSE_R1_DROP_PP:g} percentage points below the same "
        "seed of its run without TCM; the per-seed table says which seed and why ('collapsed because'). The "
        "negative- and positive-pair cosine medians of every seed are in "
        "[tables/runs_per_seed.md](tables/runs_per_seed.md) ('neg cos median', 'pos cos median').",
        f"- Runs: {len(cfg.runs)} configured, {int(status.get('done', 0))} evaluated on every seed, "
        f"{int(status.get('partial', 0))} partial, {int(status.get('stale', 0))} stale, "
        f"{int(status.get('missing', 0))} missing; "
        f"{len(comparison)} without/with-TCM comparisons. Settings of each run: `runs/<run>/run.json` "
        "and its MLflow runs (one per seed).", "",
        "## The paper's claims, checked", "",
        "The counts in 'ours' are **verdicts**: k of N = the comparisons whose 95% interval lies on the claimed "
        "side of 0, of the N complete comparisons that learned and did not collapse (a mean change whose interval "
        "holds 0 counts as no difference, whatever its sign). The largest changes are means over seeds. The "
        "significance column breaks the verdicts down (over the comparisons with at least 2 seeds), or says "
        "whether the largest change's interval excludes 0.", "",
        _markdown(claims),
        "| paper's result | our file | from |", "|---|---|---|",
        "| headline figures (OPIS down in 16/16, up to 77.3%; R@1 up in 14/16, +3.6 / -0.2 pp) | "
        "[tables/claims.md](tables/claims.md) | every without/with-TCM pair below |",
        *(f"| results table, {d} | [tables/{d}.md](tables/{d}.md) (also .csv, .tex) | runs on {d} |" for d in datasets),
        "| TCM effect per comparison with 95% intervals | [figures/tcm_effect.png](figures/tcm_effect.png) | "
        "paired seeds of every pair ([tables/tcm_comparison_per_seed.md](tables/tcm_comparison_per_seed.md)) |",
        "| per-class utility vs threshold, without and with TCM (figure 2 style) | `figures/utility_*.png` | "
        "`curves.csv` of each pair's first common seed |",
        "| per-class FAR and FRR at the one global threshold of the target FAR, without and with TCM | "
        "[figures/class_rates.png](figures/class_rates.png) | `embeddings.npz` and `metrics.json` (threshold) of "
        "each pair's first common seed; data in `plots/class_rates.csv` |",
        "| per-class utility vs threshold of each run, mean over seeds (band = min to max) | "
        "`figures/utility_run_*.png` | `curves.csv` of every evaluated seed; data in `plots/utility.csv` |",
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
        runs = evaluated[["run", "n", "status", "learned"]].assign(
            **{m: [_pm(r[f"{m} mean"], r[f"{m} sd"]) for _, r in evaluated.iterrows()] for m in HEADLINE})
        lines += ["## Runs (mean ± sd over seeds)", "", _markdown(runs), ""]
    if not comparison.empty:
        cmp = comparison[["dataset", "backbone", "loss", "n"]].assign(**{
            **{f"{m} without": comparison[f"{m} without"] for m in ("R@1", "OPIS")},
            f"{change_column('R@1')} [95% CI]": [_interval(r, "R@1") for _, r in comparison.iterrows()],
            "OPIS change [95% CI]": [_interval(r, "OPIS") for _, r in comparison.iterrows()],
            "OPIS change %": comparison["OPIS change %"],
            **{c: comparison[c] for c in ("OPIS verdict", "R@1 verdict", "OPIS CI half-width %",
                                          "OPIS boot sd % without", "OPIS boot sd % with", "seeds for 10%", "learned")
               if c in comparison}})
        lines += ["## Without vs with TCM (mean paired change, 95% t interval)", "", _markdown(cmp), ""]
    lines += ["## Tables", "", *(f"- [{rel(p)}]({rel(p)})" for p in md_tables), ""]
    lines += ["## Figures", "", "Each PNG has a PDF twin in `figures-pdf/`.", ""]
    for title, p in made.items():
        lines += [f"### {title}", "", f"![{title}]({rel(p)})", ""]
    lines += ["## Executed notebooks", "",
              "`notebooks/`: the executed copy of every stage's notebook (DVC outputs).", ""]
    return "\n".join(lines)


# The executed report notebook's sections: heading -> the tables (stems) and figures (stem prefixes) under it,
# in order; anything else written goes under the last heading.
NOTEBOOK_SECTIONS = (
    ("The paper's claims, checked", ("claims",)),
    ("Runs (mean ± sd over seeds, and seed by seed)", ("runs", "runs_per_seed", "per_seed", "opis_vs_recall")),
    ("Without vs with TCM (paired over seeds)", ("tcm_comparison", "tcm_comparison_per_seed", "tcm_effect")),
    ("One global threshold: per-class FAR and FRR", ("thresholds", "class_rates")),
    ("Per-class utility vs threshold", ("utility_",)),
    ("Similarities and embeddings", ("similarities_", "embeddings_")),
    ("Training curves", ("training_curves",)),
    ("Results tables per data set", ()),
)


def notebook_sections(written: dict[str, list[Path]]) -> list[tuple[str, list[Path]]]:
    """The Markdown tables and figures of :func:`run` grouped under :data:`NOTEBOOK_SECTIONS` (empty
    sections left out)."""
    items = [p for p in written["tables"] if p.suffix == ".md"] + list(written["figures"])

    def section(p: Path) -> int:
        for i, (_, stems) in enumerate(NOTEBOOK_SECTIONS):
            if any(p.stem == s or (s.endswith("_") and p.stem.startswith(s)) for s in stems):
                return i
        return len(NOTEBOOK_SECTIONS) - 1

    groups = [(heading, [p for p in items if section(p) == i]) for i, (heading, _) in enumerate(NOTEBOOK_SECTIONS)]
    return [(heading, paths) for heading, paths in groups if paths]


def show(written: dict[str, list[Path]]) -> None:
    """The report in the executed notebook: a heading per section, then its tables and figures."""
    from IPython.display import Image, Markdown, display

    for heading, paths in notebook_sections(written):
        display(Markdown(f"## {heading}"))
        for p in paths:
            display(Markdown(p.read_text()) if p.suffix == ".md" else Image(filename=str(p)))


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


# nbconvert's template gives images no alt text (and warns once per notebook): an image's own
# (IPython's Image(alt=...)) or a line naming the cell that drew it.
_ALT_TEMPLATE = """{%- extends 'lab/index.html.j2' -%}
{%- macro with_alt(html, output, cell, mime) -%}
{%- set alt = output.metadata.get(mime, {}).get('alt')
    or 'figure drawn by the cell: ' ~ (cell.source.splitlines()[:1] | join('')) -%}
{{ html | replace('<img src=', '<img alt="' ~ (alt | escape_html) ~ '" src=', 1) }}
{%- endmacro -%}
{% block data_png scoped %}{{ with_alt(super(), output, cell, 'image/png') }}{% endblock data_png %}
{% block data_jpg scoped %}{{ with_alt(super(), output, cell, 'image/jpeg') }}{% endblock data_jpg %}
"""


def notebook_html(notebook: Path, out_dir: Path) -> Path | None:
    """An HTML render of an executed notebook (what the MLflow UI can show), or None if it is missing."""
    if not notebook.is_file():
        return None
    import nbformat
    from jinja2 import DictLoader
    from nbconvert import HTMLExporter

    exporter = HTMLExporter(extra_loaders=[DictLoader({"tcm.html.j2": _ALT_TEMPLATE})], template_file="tcm.html.j2")
    html, _ = exporter.from_notebook_node(nbformat.read(notebook, as_version=4))
    out = out_dir / notebook.with_suffix(".html").name
    write_text(out, html)
    return out


def log_to_mlflow(cfg: Config, tracker: Tracker, reports: Path, owned: dict[str, list[Path]],
                  runs: list[str] | None = None) -> None:
    """Attach each run's (of ``runs``, default all) notebooks (as HTML), own figures (under names equal
    across runs) and run.json to its configuration's MLflow run and the run of each of its seeds."""
    with tempfile.TemporaryDirectory() as tmp:
        for name in cfg.runs if runs is None else runs:
            run_dir = cfg.run_dir(name)
            if not run_dir.info.is_file():
                continue
            info = json.loads(run_dir.info.read_text())
            stems = (f"data-{cfg.runs[name].dataset}", f"train-{name}", f"evaluate-{name}")
            rendered = [notebook_html(reports / "notebooks" / f"{stem}.ipynb", Path(tmp)) for stem in stems]
            html = [p for p in rendered if p is not None]
            run_ids = [tracker.find_run(name, seed_info["config_hash"])
                       for _seed, seed_info in sorted(info.get("seeds", {}).items(), key=lambda kv: int(kv[0]))]
            if info.get("run_hash"):
                run_ids.insert(0, tracker.parent_run(name, info["run_hash"], info.get("settings", {})))
            log_report(tracker, run_ids, name, html, owned.get(name, []), run_dir.info)


def _say_stale(per_seed: pd.DataFrame) -> None:
    """One line on stderr for every stale seed together (they are marked in the tables too)."""
    stale = per_seed[per_seed["status"] == "stale"]
    if stale.empty:
        return
    names = [f"{r['run']} seed {r['seed']}" for _, r in stale.iterrows()]
    listed = ", ".join(names[:4]) + (f" and {len(names) - 4} more" if len(names) > 4 else "")
    print(f"tcm: report: left out {len(names)} stale seed(s) ({listed}); {names[0]}: "
          f"{stale.iloc[0]['stale because']}; evaluate them again (dvc repro, or tcm evaluate RUN)", file=sys.stderr)


def run(cfg: Config, tracker: Tracker | None = None) -> dict[str, list[Path]]:
    """Write every table and figure; returns the files written by kind."""
    reports = cfg.path(cfg.paths.reports)
    fig_dir = reports / "figures"
    (reports / "tables").mkdir(parents=True, exist_ok=True)
    fig_dir.mkdir(parents=True, exist_ok=True)
    per_seed = per_seed_table(cfg)
    _say_stale(per_seed)
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
    utility = {}  # run -> per-class utility, mean over its evaluated seeds (also the DVC plot's data)
    for name in cfg.runs:
        seeds = [s for s in evaluated_seeds(cfg, name) if cfg.run_dir(name).seed_curves(s).is_file()]
        if not seeds:
            continue
        utility[name] = utility_over_seeds([pd.read_csv(cfg.run_dir(name).seed_curves(s), dtype={"class": str})
                                            for s in seeds])
        title = f"Per-class utility vs threshold: {name} (mean over seeds {_seed_list(seeds)}, band = min to max)"
        made[title] = figures.save(figures.utility_over_seeds(
            utility[name], f"{name}: per-class utility, mean over {len(seeds)} seed{'s' * (len(seeds) != 1)}"),
            fig_dir / f"utility_run_{name}.png")
        owned.setdefault(name, []).append(made[title])
    rates = class_rates(cfg, pairs)
    if not rates.empty:
        made["Per-class FAR and FRR at the global threshold (target FAR), without / with TCM"] = figures.save(
            figures.class_rates(rates, float(rates["target FAR"].iloc[0])), fig_dir / "class_rates.png")
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
    # The data of dvc.yaml's `plots:` (`dvc plots diff` overlays them across experiments).
    utility_columns = ["run", "class", "threshold", "utility"]
    plot_data = {"training_curves.csv": curves_long(histories),
                 "utility.csv": pd.concat([u.assign(run=n)[utility_columns] for n, u in utility.items()])
                 if utility else pd.DataFrame(columns=utility_columns),
                 "class_rates.csv": rates[["run", "seed", "class", "threshold", "FAR", "FRR"]]}
    for file, data in plot_data.items():
        with atomic_path(reports / "plots" / file) as tmp:
            data.to_csv(tmp, index=False)

    write_json(reports / "metrics.json", top_metrics(summary))
    write_text(reports / "README.md", _readme(cfg, summary, comparison, claims, tables, made, reports))

    tracker = tracker or Tracker(cfg)
    if tracker.enabled:
        log_to_mlflow(cfg, tracker, reports, owned)
    return {"tables": tables, "figures": list(made.values()), "readme": [reports / "README.md"]}
