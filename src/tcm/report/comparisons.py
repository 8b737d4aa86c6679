"""Each without/with-TCM pair compared seed by seed: paired changes, their 95% t intervals, verdicts
and the precision of the OPIS instrument."""

from __future__ import annotations

import math

import pandas as pd

from tcm.report.definitions import (
    CONSISTENCY,
    DETECT_CHANGE,
    VERDICT_METRICS,
    Pair,
    change_column,
    change_scale,
    metric_columns,
    seed_list,
)
from tcm.report.runs import paired_rows
from tcm.stats import paired_difference, seeds_needed, verdict


def seed_differences(per_seed: pd.DataFrame, pairs: list[Pair]) -> pd.DataFrame:
    """One row per pair and common seed: each metric without, with TCM and its change (with - without)."""
    metrics = metric_columns(per_seed.columns)
    rows = []
    for p in pairs:
        a, b = paired_rows(per_seed, p)
        for seed in a.index:
            row = {"comparison": p.key, "run (without TCM)": p.without, "run (with TCM)": p.with_tcm, "seed": seed}
            for m in metrics:
                row.update({f"{m} without": a.at[seed, m], f"{m} with": b.at[seed, m],
                            change_column(m): change_scale(m) * (b.at[seed, m] - a.at[seed, m])})
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
        a, b = paired_rows(per_seed, p)
        info = by_run.loc[p.without]
        learned = [by_run.loc[r, "learned"] for r in (p.without, p.with_tcm)]
        row = {"comparison": p.key, "dataset": info["dataset"], "backbone": info["backbone"], "loss": info["loss"],
               "run (without TCM)": p.without, "run (with TCM)": p.with_tcm, "seeds": seed_list(a.index), "n": len(a),
               # A pair where a run stayed at chance or collapsed compares degenerate embeddings: shown, never
               # counted.
               "learned": next((x for x in ("collapsed", "did not learn") if x in learned),
                               "yes" if learned == ["yes"] * 2 else "unknown")}
        for m in metrics:
            d = paired_difference(a[m], b[m])
            va = float(a[m].mean()) if len(a) else math.nan
            vb = float(b[m].mean()) if len(b) else math.nan
            c, k = change_column(m), change_scale(m)
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
