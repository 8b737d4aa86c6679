"""The training stage: :func:`run` trains one run of params.yaml once per seed (:class:`SeedTrainer`)
and writes ``runs/<name>/``; Ctrl-C and SIGTERM become :class:`TrainingInterrupted`."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from tcm.atomic import write_json
from tcm.config import Config, RunConfig, resolved_run, training_settings
from tcm.data import read_manifest
from tcm.data.batches import input_pipeline
from tcm.device import environment, pick_device
from tcm.errors import TcmError
from tcm.fingerprint import code_fingerprint
from tcm.locks import exclusive
from tcm.models import build_model
from tcm.tracking import Tracker
from tcm.train.build import make_loader
from tcm.train.preflight import _preflight
from tcm.train.resume import (
    _Aside,
    _file_digest,
    _interrupted_message,
    _read_progress,
    _shielded,
    _sigterm_interrupts,
    _start_attempt,
    _Status,
    config_hash,
)
from tcm.train.runtime import distributed
from tcm.train.seed import Attempt, SeedTrainer, TrainSplit, _history_frame, _write_history


class TrainingInterrupted(TcmError, RuntimeError):
    """Ctrl-C or SIGTERM stopped training; the message says what was kept and that a rerun resumes."""


@dataclass(frozen=True)
class TrainResult:
    run_dir: Path
    history: pd.DataFrame  # every seed's epochs (column ``seed``)


def run(cfg: Config, name: str, tracker: Tracker | None = None, progress: bool = True) -> TrainResult:
    """Train run ``name`` of ``cfg`` once per seed of ``train.seeds``; an interrupted call resumes
    (see :func:`_start_attempt`), a finished run is trained again. Refused (:class:`LockedError`)
    while another process trains the same run folder.

    Ctrl-C and SIGTERM raise :class:`TrainingInterrupted`, whose message says what was kept; the
    MLflow run ends KILLED. Nothing finished is removed before the new attempt has saved its first
    trained epoch (:class:`_Aside`)."""
    status = _Status()
    aside: list[_Aside] = []  # filled by _run once the old train/ is moved aside
    with _sigterm_interrupts():
        try:
            return _run(cfg, name, tracker, progress, status, aside)
        except BaseException as e:
            kept = ""
            if aside:
                with _shielded():
                    kept = aside[0].settle()
            if isinstance(e, KeyboardInterrupt):
                raise TrainingInterrupted(_interrupted_message(name, status, kept)) from None
            if kept and isinstance(e, TcmError) and e.args:
                e.args = (f"{e.args[0]}; {kept}", *e.args[1:])
            raise


def _run(cfg: Config, name: str, tracker: Tracker | None, progress: bool, status: _Status,
         aside: list[_Aside]) -> TrainResult:
    run_cfg = _resolve_weights(cfg, cfg.run(name))
    run_dir = cfg.run_dir(name)
    with contextlib.ExitStack() as stack:
        d = stack.enter_context(distributed(run_cfg.train.device))
        if d.main:
            # One writer per run folder: a kernel orphaned by a killed `dvc repro` may still be training it.
            stack.enter_context(exclusive(run_dir.lock, f"run {name}"))
        t = run_cfg.train
        status.epochs = t.epochs
        settings = resolved_run(cfg, name)
        manifest = read_manifest(cfg.data_dir(run_cfg.dataset))
        device = pick_device(t.device, d.local_rank)
        pipeline = input_pipeline(manifest, "train", cfg.dataset(run_cfg.dataset), t.decode, device, train=True)
        dataset = pipeline.dataset
        # Losses with per-class parameters (ProxyAnchor) need labels 0..C-1.
        classes = np.unique(dataset.labels)
        dataset.labels = np.searchsorted(classes, dataset.labels)
        loader = make_loader(dataset, run_cfg, name, device, d.world_size, d.rank, pipeline.collate_fn)

        # What a checkpoint must match to be resumed: settings (not evaluation's), process count, torch
        # version, and the source of every tcm module training runs.
        run_hash = config_hash({**training_settings(settings), "world_size": d.world_size, "torch": torch.__version__,
                                "weights": _file_digest(run_cfg.model.weights_path)})
        code = code_fingerprint("tcm.train")
        if d.main:
            run_dir.root.mkdir(parents=True, exist_ok=True)
        # Everything that can fail on the settings or the machine is tried before any checkpoint is moved:
        # the model builds (missing weights), the MLflow store opens, the loss and the first batch work.
        model = build_model(run_cfg.model)
        if d.main:
            tracker = tracker or Tracker(cfg)
        else:  # only rank 0 talks to MLflow
            tracker = Tracker(cfg.model_copy(update={"mlflow": cfg.mlflow.model_copy(update={"enabled": False})}))
        _preflight(name, run_cfg, run_dir, model, loader, pipeline, classes, device)
        del model
        resuming, moved = _start_attempt(run_dir, run_hash, code, d)
        if moved is not None:
            aside.append(moved)
        if d.enabled:
            import torch.distributed as dist

            dist.barrier()  # rank 0 has cleared or kept the checkpoints before any rank reads them

        env = environment(device)
        info = {"run": name, "settings": settings, "run_hash": run_hash, "code_fingerprint": code, "environment": env,
                "num_train_classes": int(len(classes)), "world_size": d.world_size, "seeds": {}}
        split = TrainSplit(loader=loader, pipeline=pipeline, classes=classes, data_dir=cfg.data_dir(run_cfg.dataset),
                           dataset_cfg=cfg.dataset(run_cfg.dataset), eval_batch_size=cfg.evaluation.batch_size)
        attempt = Attempt(name=name, run_cfg=run_cfg, settings=settings, run_dir=run_dir, run_hash=run_hash, code=code,
                          env=env, split=split, d=d, device=device, tracker=tracker, progress=progress,
                          resuming=resuming, status=status, aside=moved)
        histories: dict[int, list[dict]] = {}
        for seed in t.seeds:
            seed_hash, histories[seed], margins = SeedTrainer(attempt, seed, histories).train()
            status.finished.append(seed)
            info["seeds"][str(seed)] = {"config_hash": seed_hash, **({"tcm_margins": margins} if margins else {})}
            if d.main:
                write_json(run_dir.info, info)
        if d.main:
            _write_history(run_dir.history, histories)
            write_json(run_dir.progress, {**_read_progress(run_dir.progress), "complete": True})
        return TrainResult(run_dir.root, _history_frame(histories))


def _resolve_weights(cfg: Config, run_cfg: RunConfig) -> RunConfig:
    """``model.weights_path`` relative to params.yaml's folder, as every path of params.yaml."""
    path = run_cfg.model.weights_path
    if path is None or Path(path).is_absolute():
        return run_cfg
    return run_cfg.model_copy(update={"model": run_cfg.model.model_copy(update={"weights_path": cfg.path(path)})})
