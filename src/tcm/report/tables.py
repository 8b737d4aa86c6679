"""Writing the tables (CSV, Markdown, LaTeX) and reports/metrics.json, and the tables made only for
writing: one per data set, and the threshold report per seed."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd

from tcm.atomic import atomic_path, write_text
from tcm.config import Config
from tcm.report.runs import evaluated_seeds
from tcm.stats import HEADLINE


def _column_format(column: str) -> str:
    """How a Markdown table shows a column's numbers (the CSV keeps full precision): percentages
    ('... %' or '... % ...') with 1 decimal, percentage-point changes with 2 (the paper's precision of
    a change of Recall@k), other numbers (rates, OPIS, thresholds) with 4.

    >>> [_column_format(c) for c in ("OPIS change %", "R@1 change (pp) low", "OPIS")]
    ['.1f', '.2f', '.4f']
    """
    return ".1f" if " %" in column else ".2f" if "(pp)" in column else ".4f"


def markdown(df: pd.DataFrame) -> str:
    fmt = [_column_format(str(c)) for c in df.columns]
    return df.to_markdown(index=False, floatfmt=fmt or ".4f", missingval="missing") + "\n"


def write_table(df: pd.DataFrame, stem: Path, latex: bool = False) -> list[Path]:
    """CSV + Markdown (+ LaTeX) copies of one table; missing values read 'missing'."""
    written = [stem.with_suffix(".csv"), stem.with_suffix(".md")]
    with atomic_path(written[0]) as tmp:
        df.to_csv(tmp, index=False)
    write_text(written[1], markdown(df))
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
    threshold_report) and the per-class FAR and FRR at it, summarised over the classes."""
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


def top_metrics(summary: pd.DataFrame) -> dict:
    """reports/metrics.json: per evaluated run, n and the mean (and sd, from 2 seeds) of the headline
    metrics, so `dvc metrics diff` compares runs across commits."""
    out = {}
    for _, r in summary[summary["n"] > 0].iterrows():
        out[r["run"]] = {"n_seeds": int(r["n"]),
                         "mean": {m: float(r[f"{m} mean"]) for m in HEADLINE if not math.isnan(r[f"{m} mean"])},
                         "sd": {m: float(r[f"{m} sd"]) for m in HEADLINE if not math.isnan(r[f"{m} sd"])}}
    return out
