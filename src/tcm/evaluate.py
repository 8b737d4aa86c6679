"""Evaluation: ``run(cfg, name)`` embeds the test split with each seed's trained model and writes,
per seed, ``runs/<name>/eval/seed-<s>/`` metrics.json (retrieval metrics, OPIS, eps-OPIS and their
bootstrap sd over the test queries, the median cosine of the negative and positive pairs, and the
threshold report, from the chunked metrics of ``tcm.metrics``), embeddings.npz and curves.csv
(per-class utility curves); and ``runs/<name>/metrics.json``, the mean and sd over seeds."""

from __future__ import annotations

import functools
import json
import shutil
import sys
from pathlib import Path

import numpy as np

from tcm.atomic import atomic_dir, atomic_path, write_json
from tcm.checkpoint import load_trained
from tcm.config import Config, ConfigError, resolved_run, training_settings
from tcm.data import read_manifest
from tcm.data.batches import input_pipeline
from tcm.device import pick_device
from tcm.embed import embed
from tcm.errors import TcmError
from tcm.metrics import evaluate_embeddings
from tcm.metrics.opis import curves_table
from tcm.mlflow_log import log_evaluation, log_summary, seed_run, seed_tags
from tcm.provenance import RECORD_KEY, evaluation_record
from tcm.runfiles import CheckpointError
from tcm.stats import seed_summary
from tcm.tracking import Tracker


def _check_trained(state: dict, path, trained_settings: dict) -> None:
    """A checkpoint is evaluated only when it is the finished training of the current settings."""
    if state.get("epoch", 0) < state.get("epochs", -1):
        raise CheckpointError(f"{path}: training stopped after epoch {state['epoch']} of {state['epochs']}; "
                              "finish it first (dvc repro, or tcm train RUN)")
    if training_settings(state.get("settings", {})) != trained_settings:
        raise CheckpointError(f"{path}: trained with other settings than params.yaml's; train the run again "
                              "(dvc repro, or tcm train RUN)")


def _run_hash(info: Path) -> str | None:
    try:
        return json.loads(info.read_text()).get("run_hash")
    except (OSError, ValueError):
        return None


class EvaluationInterrupted(TcmError, RuntimeError):
    """Ctrl-C (or the stage runner's interrupt) stopped an evaluation; the message says what is kept."""


def _interrupt_message(evaluate_run):
    """Ctrl-C as one line about evaluation (the command line's generic message is about training)."""

    @functools.wraps(evaluate_run)
    def wrapper(cfg: Config, name: str, *args, **kwargs):
        try:
            return evaluate_run(cfg, name, *args, **kwargs)
        except KeyboardInterrupt:
            raise EvaluationInterrupted(
                f"interrupted: evaluation of run {name} stopped before {cfg.run_dir(name).metrics} was written; "
                "the trained checkpoints are untouched; rerun to evaluate") from None

    return wrapper


@_interrupt_message
def run(cfg: Config, name: str, tracker: Tracker | None = None, progress: bool = True) -> dict[int, dict]:
    """Evaluate every seed of run ``name``; returns each seed's metrics."""
    run_cfg = cfg.run(name)
    run_dir = cfg.run_dir(name)
    settings = resolved_run(cfg, name)
    trained_settings = training_settings(settings)
    device = pick_device(cfg.evaluation.device, key="evaluation.device")
    # Every checkpoint is checked before any embedding: a stale or missing one fails in seconds.
    states = {}
    for seed in run_cfg.train.seeds:
        path = run_dir.checkpoint(seed)
        model, state = load_trained(path, "cpu")
        _check_trained(state, path, trained_settings)
        states[seed] = (model, state)
    manifest = read_manifest(cfg.data_dir(run_cfg.dataset))
    pipeline = input_pipeline(manifest, "test", cfg.dataset(run_cfg.dataset), cfg.evaluation.decode, device,
                              train=False)
    dataset = pipeline.dataset
    # One recall_k list serves every data set of a profile (SOP's k = 1000 too): a k past this test split
    # is skipped with a notice, as Recall@k would be 1 by construction.
    recall_k = [k for k in cfg.evaluation.recall_k if k < len(dataset)]
    skipped = sorted(set(cfg.evaluation.recall_k) - set(recall_k))
    if not recall_k:
        raise ConfigError(f"evaluation.recall_k: every k ({cfg.evaluation.recall_k}) needs more than the "
                          f"{len(dataset) - 1} other images each query of data set {run_cfg.dataset!r} has")
    if skipped:
        print(f"tcm: evaluation.recall_k: skipping k = {skipped} for run {name}: each query of data set "
              f"{run_cfg.dataset!r} has only {len(dataset) - 1} other images", file=sys.stderr)
    metric_settings = cfg.evaluation.model_copy(update={"recall_k": recall_k})
    tracker = tracker or Tracker(cfg)
    run_hash = _run_hash(run_dir.info)  # the configuration's MLflow parent run
    for left in run_dir.eval_dir.glob(".seed-*"):  # atomic_dir's folders, left by a process killed mid-write
        shutil.rmtree(left, ignore_errors=True)

    per_seed: dict[int, dict] = {}
    for seed, (model, state) in states.items():
        emb = embed(model.to(device), pipeline, cfg.evaluation.batch_size, device, progress,
                    cfg.evaluation.num_workers, label=f"{name} seed {seed}")
        result = evaluate_embeddings(emb, dataset.labels, metric_settings, progress=progress and f"{name} seed {seed}")
        metrics, curves = result.metrics, result.curves
        # The embeddings first: a crash before the seed folder is replaced leaves the old results, whose
        # record then still names the checkpoint they came from.
        with atomic_path(run_dir.seed_embeddings(seed)) as tmp:
            with open(tmp, "wb") as f:
                np.savez(f, embeddings=emb, labels=dataset.labels)
        # One folder per seed, replaced as a whole: never new settings beside old metrics.
        with atomic_dir(run_dir.seed_eval_dir(seed)) as stage:
            # metrics.json holds results; what they were computed with (and from) goes beside it.
            write_json(stage / run_dir.seed_settings(seed).name,
                       {"run": name, "seed": seed, **metrics.pop("settings"),
                        RECORD_KEY: evaluation_record(state["config_hash"], settings)})
            curves_table(curves).to_csv(stage / run_dir.seed_curves(seed).name, index=False)
            write_json(stage / run_dir.seed_metrics(seed).name, metrics)
        per_seed[seed] = metrics

        # The training's MLflow run, found by its settings and code; a new one if this store lacks it.
        run_id = tracker.find_run(name, state["config_hash"], state.get("code"))
        run_id = seed_run(tracker, name, settings, seed, seed_tags(seed, state["config_hash"], state.get("code")),
                          "evaluate", run_hash, run_id)
        log_evaluation(tracker, cfg, run_id, name, seed, metrics, model, state, manifest, pipeline)
        tracker.end_run(run_id)
    write_json(run_dir.metrics, seed_summary(per_seed))
    if run_hash:
        log_summary(tracker, cfg, name, run_hash, settings, per_seed)
    return per_seed
