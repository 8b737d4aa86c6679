"""Runs and seeds: which seeds count (current, not stale), the per-seed table and the run summary
(mean and sd over seeds), whether a run learned or collapsed, and the without/with-TCM pairs."""

from __future__ import annotations

import json
import math

import pandas as pd

from tcm.config import Config
from tcm.provenance import stale_reason
from tcm.report.definitions import (
    COLLAPSE_NEG_COS_MEDIAN,
    COLLAPSE_R1_DROP_PP,
    CONSISTENCY,
    DIAGNOSTICS,
    PP,
    RETRIEVAL,
    Pair,
    metric_columns,
    seed_list,
)
from tcm.stats import headline, spread


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
            a, b = paired_rows(per_seed, p)
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


def done_rows(per_seed: pd.DataFrame, name: str) -> pd.DataFrame:
    """The evaluated seeds of one run, indexed by seed."""
    return per_seed[(per_seed["run"] == name) & (per_seed["status"] == "done")].set_index("seed").sort_index()


def run_summary(cfg: Config, per_seed: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per configured run: its settings, and per metric its mean and sd over the evaluated
    seeds (n of them); status 'done', 'partial' (fewer seeds evaluated than configured), 'stale' (no
    current seed, some stale: see :func:`per_seed_table`) or 'missing'."""
    per_seed = per_seed_table(cfg) if per_seed is None else per_seed
    metrics = metric_columns(per_seed.columns)
    rows = []
    for name, run in cfg.runs.items():
        done = done_rows(per_seed, name)
        n = len(done)
        row = {"run": name, "dataset": run.dataset, "backbone": run.model.backbone, "loss": run.loss.name,
               "tcm": run.tcm.enabled, "batch_size": run.train.batch_size, "epochs": run.train.epochs,
               "seeds": seed_list(done.index), "n": n,
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
        row["collapsed seeds"] = seed_list(collapsed)
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


def paired_rows(per_seed: pd.DataFrame, pair: Pair) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Both runs of a pair restricted to the seeds both have evaluated (same seed, same row)."""
    a, b = done_rows(per_seed, pair.without), done_rows(per_seed, pair.with_tcm)
    common = a.index.intersection(b.index).sort_values()
    return a.loc[common], b.loc[common]
