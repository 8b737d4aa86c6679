"""The report stage: every table, figure and plot data file from the result files of every run,
reports/README.md and reports/metrics.json, and what MLflow gets of them."""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import pandas as pd

from tcm import figures
from tcm.atomic import atomic_path, write_json, write_text
from tcm.config import Config
from tcm.mlflow_log import log_report
from tcm.report.claims import claims_table
from tcm.report.comparisons import comparison_table, seed_differences
from tcm.report.definitions import PAPER_K, seed_list
from tcm.report.figure_data import class_rates, curves_long, pair_figures, utility_over_seeds
from tcm.report.notebooks import notebook_html
from tcm.report.readme import readme
from tcm.report.runs import evaluated_seeds, find_pairs, per_seed_table, run_summary
from tcm.report.tables import dataset_table, threshold_table, top_metrics, write_table
from tcm.stats import HEADLINE
from tcm.tracking import Tracker


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
        pair_made = pair_figures(cfg, p, fig_dir)
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
        title = f"Per-class utility vs threshold: {name} (mean over seeds {seed_list(seeds)}, band = min to max)"
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
    write_text(reports / "README.md", readme(cfg, summary, comparison, claims, tables, made, reports))

    tracker = tracker or Tracker(cfg)
    if tracker.enabled:
        log_to_mlflow(cfg, tracker, reports, owned)
    return {"tables": tables, "figures": list(made.values()), "readme": [reports / "README.md"]}
