"""Evaluation: ``run(cfg, name)`` embeds the test split of a trained run and writes
``runs/<name>/metrics.json`` (retrieval metrics, OPIS, eps-OPIS and the threshold report, from the
chunked metrics of ``tcm.metrics``), ``embeddings.npz`` and ``curves.csv`` (per-class utility curves)."""

from __future__ import annotations

import json
import sys

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from tcm.config import Config
from tcm.data import ManifestDataset, read_manifest
from tcm.data.transforms import test_transform
from tcm.files import CURVES, EMBEDDINGS, METRICS, RUN_INFO
from tcm.io import atomic_path, write_json
from tcm.metrics import all_metrics
from tcm.metrics.opis import curves_table
from tcm.tracking import Tracker
from tcm.train import load_trained, pick_device


@torch.no_grad()
def embed(model: torch.nn.Module, dataset: ManifestDataset, batch_size: int, device: torch.device,
          progress: bool = True, num_workers: int = 0) -> np.ndarray:
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                        pin_memory=device.type == "cuda")
    chunks = []
    for x, _ in tqdm(loader, desc="embedding", disable=not progress, file=sys.stderr, leave=False, mininterval=1.0):
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            chunks.append(model(x.to(device, non_blocking=True)).float().cpu())
    return torch.cat(chunks).numpy()


def run(cfg: Config, name: str, tracker: Tracker | None = None, progress: bool = True) -> dict:
    run_cfg = cfg.run(name)
    out = cfg.run_dir(name)
    device = pick_device(run_cfg.train.device)
    model, _ = load_trained(out, device)
    manifest = read_manifest(cfg.data_dir(run_cfg.dataset))
    dataset = ManifestDataset(manifest, "test", test_transform(cfg.dataset(run_cfg.dataset)))
    emb = embed(model, dataset, cfg.evaluation.batch_size, device, progress, run_cfg.train.num_workers)
    metrics, curves = all_metrics(emb, dataset.labels, cfg.evaluation, progress)
    metrics["run"] = name

    with atomic_path(out / EMBEDDINGS) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, embeddings=emb, labels=dataset.labels)
    with atomic_path(out / CURVES) as tmp:
        curves_table(curves).to_csv(tmp, index=False)
    write_json(out / METRICS, metrics)

    tracker = tracker or Tracker(cfg)
    info = json.loads((out / RUN_INFO).read_text())
    # A new MLflow run (when train's is not in this store) still gets the run's settings as params.
    run_id = tracker.start_run(name, info.get("settings", {}), stage="evaluate", run_id=info.get("mlflow_run_id"))
    tracker.log_metrics(run_id, {"test": {k: v for k, v in metrics.items() if k != "settings"}})
    tracker.log_artifacts(run_id, [out / METRICS, out / RUN_INFO], "results")
    tracker.end_run(run_id)
    return metrics
