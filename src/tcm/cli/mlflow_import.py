"""`tcm mlflow-import`: the MLflow store rebuilt from the result files (a fresh clone, after `dvc pull`).

mlflow.db and mlartifacts/ are neither in git nor in DVC: they name this machine's paths. This
command writes into the project's store what the stages would have logged, from runs/ (run.json,
history.csv, eval/seed-*/, embeddings, checkpoints -> MLflow models) and reports/ (notebooks,
figures), with the functions the stages log with (tcm.mlflow_log), so that both stores look alike.

It is idempotent: a seed run already in the store (found by run name, settings hash and code
fingerprint, as the stages find theirs) is left alone, so a second call adds nothing.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pandas as pd

from tcm.config import Config
from tcm.errors import TcmError
from tcm.mlflow_log import history_metrics, log_dataset, log_evaluation, log_summary, seed_run, seed_tags
from tcm.tracking import Tracker


def _owned_figures(cfg: Config, fig_dir: Path) -> dict[str, list[Path]]:
    """Each run's figures under reports/figures, as the report stage logs them: its pairs' figures
    (``<kind>_<pair key>.png``) and its own (``<kind>_run_<run>.png``)."""
    from tcm.report import find_pairs

    owned: dict[str, list[Path]] = {}
    figures = sorted(fig_dir.glob("*.png"))
    for pair in find_pairs(cfg):
        stem = pair.key.replace("/", "_")
        for n in (pair.without, pair.with_tcm):
            owned.setdefault(n, []).extend(p for p in figures if p.stem.endswith(f"_{stem}"))
    for name in cfg.runs:
        owned.setdefault(name, []).extend(p for p in figures if p.stem.endswith(f"_run_{name}"))
    return owned


def _import_seed(cfg: Config, tracker: Tracker, name: str, info: dict, seed: int,
                 history: pd.DataFrame | None) -> dict | None:
    """One seed's MLflow run, as train and evaluate log it; returns its test metrics (None: not evaluated)."""
    import torch

    from tcm.checkpoint import load_trained
    from tcm.data import read_manifest
    from tcm.data.batches import input_pipeline
    from tcm.runfiles import CheckpointError

    run_dir = cfg.run_dir(name)
    config_hash = info["seeds"][str(seed)]["config_hash"]
    tags = {**seed_tags(seed, config_hash, info.get("code_fingerprint"), info.get("environment")),
            "tcm.imported": "true"}
    run_id = seed_run(tracker, name, info["settings"], seed, tags, "train", info.get("run_hash"))
    dataset = cfg.runs[name].dataset
    manifest = read_manifest(cfg.data_dir(dataset))
    log_dataset(tracker, run_id, manifest, cfg.data_dir(dataset), dataset, "train")
    if history is not None:
        for row in history[history["seed"] == seed].to_dict("records"):
            tracker.log_metrics(run_id, history_metrics(row), step=int(row["epoch"]))
    metrics = None
    if run_dir.seed_metrics(seed).is_file():
        metrics = json.loads(run_dir.seed_metrics(seed).read_text())
        try:
            model, state = load_trained(run_dir.checkpoint(seed))
        except (CheckpointError, FileNotFoundError, OSError) as e:
            print(f"tcm: mlflow-import: {name} seed {seed}: no model logged ({e}); `dvc pull` fetches the "
                  "checkpoints", file=sys.stderr)
            model, state = None, {}
        tracker.set_stage(run_id, "evaluate")
        pipeline = input_pipeline(manifest, "test", cfg.dataset(dataset), cfg.evaluation.decode, torch.device("cpu"),
                                  train=False)
        log_evaluation(tracker, cfg, run_id, name, seed, metrics, model, state, manifest, pipeline)
    tracker.end_run(run_id)
    return metrics


def import_results(cfg: Config, tracker: Tracker | None = None) -> dict[str, int]:
    """Log every trained seed of params.yaml's runs that the store lacks; returns counts
    (``created``: seed runs written now, ``present``: seed runs already there)."""
    from tcm.report import log_to_mlflow

    tracker = tracker or Tracker(cfg)
    if not tracker.enabled:
        raise TcmError("mlflow-import: MLflow tracking is off (mlflow.enabled: false, or mlflow is not installed)")
    counts = {"created": 0, "present": 0}
    imported = []
    for name in cfg.runs:
        run_dir = cfg.run_dir(name)
        if not run_dir.info.is_file():
            print(f"tcm: mlflow-import: run {name}: no {run_dir.info} (not trained); skipped", file=sys.stderr)
            continue
        info = json.loads(run_dir.info.read_text())
        history = pd.read_csv(run_dir.history) if run_dir.history.is_file() else None
        per_seed, new = {}, False
        for seed in sorted(int(s) for s in info.get("seeds", {})):
            config_hash = info["seeds"][str(seed)]["config_hash"]
            if tracker.find_run(name, config_hash, info.get("code_fingerprint")) is not None:
                counts["present"] += 1
                if run_dir.seed_metrics(seed).is_file():
                    per_seed[seed] = json.loads(run_dir.seed_metrics(seed).read_text())
                continue
            metrics = _import_seed(cfg, tracker, name, info, seed, history)
            if metrics is not None:
                per_seed[seed] = metrics
            counts["created"] += 1
            new = True
        if new:
            if per_seed and info.get("run_hash"):
                log_summary(tracker, cfg, name, info["run_hash"], info["settings"], per_seed)
            imported.append(name)
    if imported:
        reports = cfg.path(cfg.paths.reports)
        log_to_mlflow(cfg, tracker, reports, _owned_figures(cfg, reports / "figures"), runs=imported)
    return counts
