"""The pretrain stage: a backbone trained once on a data set's ``pretrain`` classes, for the runs to
fine-tune, as the paper's runs fine-tune ImageNet backbones.

Why: from scratch, a small CNN starts with every pair at cosine ~0.997 and TCM's margins act unlike
they do on a pretrained backbone, whose features already separate images. The pretrain classes are
disjoint from both the train and the test classes (tcm.data.glyphs), so nothing about the test
classes leaks in. Softmax classification, as ImageNet backbones are trained; the classifier is
dropped and only the backbone's state_dict is kept, in the format ``model.weights_path`` loads.

Writes ``pretrained/<dataset>/`` as a whole (staging folder, renamed at the end): ``backbone.pt``
and ``info.json`` (settings, per-epoch loss and accuracy). A data set without ``pretrain:`` gets
``info.json`` alone, saying so, so that every train stage can depend on its data set's folder.
"""

from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from tcm.atomic import write_json
from tcm.config import Config, PretrainConfig
from tcm.data import read_manifest
from tcm.data.batches import input_pipeline
from tcm.data.manifest import PRETRAIN, DataError
from tcm.data.transforms import normalize
from tcm.device import environment, pick_device
from tcm.models import BACKBONES
from tcm.progress import Progress

WEIGHTS = "backbone.pt"
INFO = "info.json"


def _seed(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed)


def train_backbone(p: PretrainConfig, loader: DataLoader, n_classes: int, device: torch.device,
                   label: str = "pretrain", progress: bool = True) -> tuple[nn.Module, list[dict]]:
    """Softmax classification of ``loader``'s images into ``n_classes``; returns the backbone and a
    history row per epoch (loss, train accuracy, images/s)."""
    _seed(p.seed)
    backbone, dim = BACKBONES[p.backbone]()
    classifier = nn.Linear(dim, n_classes)
    model = nn.Sequential(backbone, classifier).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=p.lr, weight_decay=p.weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=p.epochs * len(loader))
    history = []
    for epoch in range(1, p.epochs + 1):
        _seed(p.seed * 100_003 + epoch)  # each epoch's batches depend on the seed and epoch alone
        model.train()
        total, correct, seen, t0 = 0.0, 0, 0, time.perf_counter()
        for x, y in Progress(loader, f"{label} epoch {epoch}/{p.epochs}", enabled=progress):
            x, y = x.to(device), y.to(device)
            logits = model(normalize(x))
            loss = F.cross_entropy(logits, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            total += loss.item() * len(y)
            correct += int((logits.argmax(1) == y).sum())
            seen += len(y)
        seconds = time.perf_counter() - t0
        row = {"epoch": epoch, "loss": total / seen, "accuracy": correct / seen, "images_per_s": seen / seconds,
               "seconds": seconds}
        history.append(row)
        if progress:
            print(f"{label} epoch {epoch}/{p.epochs}: loss {row['loss']:.4f}, train accuracy {row['accuracy']:.3f}, "
                  f"{row['images_per_s']:.0f} img/s", file=sys.stderr)
    return backbone.cpu(), history


def run(cfg: Config, dataset: str, progress: bool = True) -> Path:
    """Pretrain data set ``dataset``'s backbone (or record that it has none); returns the output folder."""
    ds = cfg.dataset(dataset)
    out = cfg.pretrained_dir(dataset)
    staging = out.with_name(out.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    info: dict = {"dataset": dataset, "pretrained": ds.pretrain is not None}
    if ds.pretrain is None:
        info["note"] = f"datasets.{dataset} sets no pretrain: nothing to pretrain"
    else:
        p = ds.pretrain
        manifest = read_manifest(cfg.data_dir(dataset))
        if not (manifest.table.split == PRETRAIN).any():
            raise DataError(f"{cfg.data_dir(dataset)}: no '{PRETRAIN}' split to pretrain on; "
                            f"re-run `tcm data prepare {dataset}`")
        device = pick_device("auto")
        pipeline = input_pipeline(manifest, PRETRAIN, ds, "workers", device, train=True)
        classes = np.unique(pipeline.dataset.labels)
        pipeline.dataset.labels = np.searchsorted(classes, pipeline.dataset.labels)
        generator = torch.Generator().manual_seed(p.seed)
        loader = DataLoader(pipeline.dataset, batch_size=p.batch_size, shuffle=True, drop_last=True,
                            generator=generator)
        t0 = time.perf_counter()
        backbone, history = train_backbone(p, loader, len(classes), device, f"pretrain {dataset}", progress)
        torch.save(backbone.state_dict(), staging / WEIGHTS)
        info.update(settings=p.model_dump(mode="json"), classes=int(len(classes)),
                    images=len(pipeline.dataset), history=history, seconds=time.perf_counter() - t0,
                    environment=environment(device))
    write_json(staging / INFO, info)
    shutil.rmtree(out, ignore_errors=True)
    staging.rename(out)
    return out
