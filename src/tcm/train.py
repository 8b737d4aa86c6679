"""Training: ``run(cfg, name)`` -> ``runs/<name>/`` with checkpoint.pt, history.csv and run.json.

The loop reads top to bottom: m-per-class batches -> embeddings -> base loss + TCM -> step.
A checkpoint is written atomically after every epoch; calling ``run`` again after an
interruption resumes from it when the run's settings are unchanged.
"""

from __future__ import annotations

import hashlib
import json
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from tcm.config import Config, ConfigError, RunConfig, resolved_run
from tcm.data import ManifestDataset, read_manifest
from tcm.data.transforms import train_transform
from tcm.io import atomic_path, write_json
from tcm.losses import build_criterion
from tcm.models import build_model
from tcm.tracking import Tracker

CHECKPOINT, HISTORY, RUN_INFO = "checkpoint.pt", "history.csv", "run.json"


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


@dataclass(frozen=True)
class TrainResult:
    run_dir: Path
    history: pd.DataFrame
    mlflow_run_id: str | None


def pick_device(setting: str) -> torch.device:
    if setting == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device: 'cuda' was requested but no CUDA device is available; use 'auto' or 'cpu'")
    return torch.device("cuda" if setting in ("auto", "cuda") and torch.cuda.is_available() else "cpu")


def seed_everything(seed: int) -> None:
    # pytorch-metric-learning's samplers draw from numpy's global generator.
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def config_hash(settings: dict) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def make_loader(dataset: ManifestDataset, run: RunConfig, name: str, device: torch.device) -> DataLoader:
    from pytorch_metric_learning.samplers import MPerClassSampler

    t = run.train
    n_classes = len(np.unique(dataset.labels))
    if t.m_per_class * n_classes < t.batch_size:
        raise ConfigError(
            f"runs.{name}.train.batch_size: {t.batch_size} needs at least {t.batch_size // t.m_per_class} train classes "
            f"at m_per_class={t.m_per_class}, but the train split has {n_classes}; lower batch_size or raise m_per_class")
    length = t.samples_per_epoch or len(dataset)
    sampler = MPerClassSampler(dataset.labels, m=t.m_per_class, batch_size=t.batch_size,
                               length_before_new_iter=max(length, t.batch_size))
    return DataLoader(dataset, batch_size=t.batch_size, sampler=sampler, drop_last=True, num_workers=t.num_workers,
                      pin_memory=device.type == "cuda", persistent_workers=t.num_workers > 0)


def make_optimizer(run: RunConfig, model: torch.nn.Module, loss_params: list) -> torch.optim.Optimizer:
    t = run.train
    groups = [{"params": [p for p in model.parameters() if p.requires_grad], "lr": t.lr}]
    if loss_params:  # ProxyAnchor's proxies get their own, faster learning rate
        groups.append({"params": loss_params, "lr": t.lr * run.loss.proxy_lr_multiplier})
    if t.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=t.lr, momentum=0.9, weight_decay=t.weight_decay)
    cls = torch.optim.AdamW if t.optimizer == "adamw" else torch.optim.Adam
    return cls(groups, lr=t.lr, weight_decay=t.weight_decay)


def _save_checkpoint(path: Path, state: dict) -> None:
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def _load_resumable(path: Path, digest: str) -> dict | None:
    if not path.is_file():
        return None
    state = torch.load(path, map_location="cpu", weights_only=False)
    return state if state.get("config_hash") == digest else None


def run(cfg: Config, name: str, tracker: Tracker | None = None, progress: bool = True) -> TrainResult:
    """Train run ``name`` of ``cfg``; resumes from ``runs/<name>/checkpoint.pt`` when it matches."""
    run_cfg, settings = cfg.run(name), resolved_run(cfg, name)
    ds_cfg = cfg.dataset(run_cfg.dataset)
    out = cfg.run_dir(name)
    out.mkdir(parents=True, exist_ok=True)
    digest = config_hash({k: v for k, v in settings.items() if k != "evaluation"})

    manifest = read_manifest(cfg.data_dir(run_cfg.dataset))
    dataset = ManifestDataset(manifest, "train", train_transform(ds_cfg))
    # Losses with per-class parameters (ProxyAnchor) need labels 0..C-1.
    classes = np.unique(dataset.labels)
    dataset.labels = np.searchsorted(classes, dataset.labels)

    device = pick_device(run_cfg.train.device)
    loader = make_loader(dataset, run_cfg, name, device)
    seed_everything(run_cfg.train.seed)
    model = build_model(run_cfg.model).to(device)
    if device.type == "cuda" and run_cfg.train.channels_last:
        model = model.to(memory_format=torch.channels_last)
    criterion = build_criterion(run_cfg.loss, run_cfg.tcm, len(classes), run_cfg.model.embedding_dim)
    criterion.base.to(device)
    optimizer = make_optimizer(run_cfg, model, criterion.parameters())
    epochs = run_cfg.train.epochs
    total_steps = epochs * len(loader)
    scheduler = (torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total_steps)
                 if run_cfg.train.schedule == "cosine" else torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0))
    autocast = device.type == "cuda" and run_cfg.train.amp

    start_epoch, history, mlflow_run_id = 1, [], None
    state = _load_resumable(out / CHECKPOINT, digest)
    if state is not None:
        model.load_state_dict(state["model"])
        criterion.base.load_state_dict(state["loss"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start_epoch, history, mlflow_run_id = state["epoch"] + 1, state["history"], state.get("mlflow_run_id")
        print(f"tcm: resuming run {name} after epoch {state['epoch']} of {epochs}", file=sys.stderr)

    tracker = tracker or Tracker(cfg)
    mlflow_run_id = tracker.start_run(name, settings, stage="train", run_id=mlflow_run_id)
    write_json(out / RUN_INFO, {"run": name, "config_hash": digest, "mlflow_run_id": mlflow_run_id,
                                "settings": settings, "num_train_classes": int(len(classes))})

    for epoch in range(start_epoch, epochs + 1):
        # Seeding per epoch makes a resumed run draw exactly the batches an uninterrupted one would.
        seed_everything(run_cfg.train.seed * 100_003 + epoch)
        model.train()
        sums = {"loss": 0.0, "base_loss": 0.0, "tcm_loss": 0.0}
        seen, t0 = 0, time.perf_counter()
        bar = tqdm(loader, desc=f"{name} epoch {epoch}/{epochs}", disable=not progress, file=sys.stderr,
                   leave=False, mininterval=1.0)
        for step, (x, y) in enumerate(bar, start=1):
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            if device.type == "cuda" and run_cfg.train.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
                emb = model(x)
            parts = criterion(emb.float(), y)
            if not torch.isfinite(parts["loss"]):
                tracker.end_run(mlflow_run_id, status="FAILED")
                raise TrainingDiverged(
                    f"run {name}: loss is {parts['loss'].item()} at epoch {epoch}, step {step}; "
                    f"the last good checkpoint (epoch {epoch - 1}) is kept at {out / CHECKPOINT}")
            optimizer.zero_grad(set_to_none=True)
            parts["loss"].backward()
            optimizer.step()
            scheduler.step()
            for k in sums:
                sums[k] += parts[k].item() * len(y)
            seen += len(y)
            bar.set_postfix(loss=f"{parts['loss'].item():.4f}", img_s=f"{seen / (time.perf_counter() - t0):.0f}",
                            refresh=False)
        seconds = time.perf_counter() - t0
        row = {"epoch": epoch, **{k: v / max(seen, 1) for k, v in sums.items()},
               "lr": optimizer.param_groups[0]["lr"], "images_per_s": seen / seconds, "seconds": seconds}
        history.append(row)
        with atomic_path(out / HISTORY) as tmp:
            pd.DataFrame(history).to_csv(tmp, index=False)
        _save_checkpoint(out / CHECKPOINT, {
            "model": model.state_dict(), "loss": criterion.base.state_dict(), "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(), "epoch": epoch, "history": history, "config_hash": digest,
            "settings": settings, "mlflow_run_id": mlflow_run_id, "classes": classes.tolist()})
        tracker.log_metrics(mlflow_run_id, {f"train.{k}": v for k, v in row.items() if k != "epoch"}, step=epoch)
        if progress:
            print(f"{name} epoch {epoch}/{epochs}: loss {row['loss']:.4f} (base {row['base_loss']:.4f}, "
                  f"tcm {row['tcm_loss']:.4f}), {row['images_per_s']:.0f} img/s", file=sys.stderr)

    tracker.set_stage(mlflow_run_id, "train")
    return TrainResult(out, pd.DataFrame(history), mlflow_run_id)


def load_trained(run_dir: Path, device: torch.device | str = "cpu") -> tuple[torch.nn.Module, dict]:
    """The trained model of a run directory and its checkpoint's metadata."""
    from tcm.config import ModelConfig

    state = torch.load(Path(run_dir) / CHECKPOINT, map_location="cpu", weights_only=False)
    model_cfg = ModelConfig(**{**state["settings"]["model"], "pretrained": False, "weights_path": None})
    model = build_model(model_cfg)
    model.load_state_dict(state["model"])
    return model.to(device).eval(), state
