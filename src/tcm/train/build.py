"""What a seed trains with: the batches (m-per-class or RS@k's epoch, :mod:`tcm.samplers`), the
optimizer and its schedule, and the model and loss built from the run's settings (:class:`Parts`)."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from tcm.config import ConfigError, RunConfig
from tcm.data.dataset import ManifestDataset
from tcm.losses import Criterion, build_criterion
from tcm.models import build_model
from tcm.samplers import RskSampler
from tcm.train.runtime import seed_everything


def _m_per_class_sampler(labels: np.ndarray, m: int, batch_size: int, length: int):
    from pytorch_metric_learning.samplers import MPerClassSampler

    class EpochMPerClassSampler(MPerClassSampler):
        """pytorch-metric-learning's sampler shuffles its list of classes in place, so an epoch's
        batches would depend on all earlier epochs; starting each epoch from the same order makes
        them depend on the epoch's seed alone (a resumed run draws the batches of an uninterrupted one)."""

        def __iter__(self):
            self.labels = list(self._initial_labels)
            return super().__iter__()

    sampler = EpochMPerClassSampler(labels, m=m, batch_size=batch_size, length_before_new_iter=length)
    sampler._initial_labels = list(sampler.labels)
    return sampler


def _rsk_sampler(labels: np.ndarray, m: int, batch_size: int, rank: int, world_size: int, name: str) -> RskSampler:
    """RS@k's epoch over the global batch; classes with fewer than m images are never drawn (one notice)."""
    usable = int((np.unique(labels, return_counts=True)[1] >= m).sum())
    if usable < batch_size // m:
        raise ConfigError(
            f"runs.{name}.train.batch_size: {batch_size} needs {batch_size // m} train classes with at least "
            f"m_per_class={m} images for sampler 'rsk', but the train split has {usable}; lower batch_size")
    sampler = RskSampler(labels, m, batch_size, rank=rank, world_size=world_size)
    if sampler.small_classes and rank == 0:
        print(f"tcm: runs.{name}: train classes with fewer than m_per_class={m} images, never drawn by sampler "
              f"'rsk' (as in RS@k's code): {sampler.small_classes} of {len(sampler.sizes)}", file=sys.stderr)
    return sampler


def make_loader(dataset: ManifestDataset, run: RunConfig, name: str, device: torch.device,
                world_size: int = 1, rank: int = 0, collate_fn: Callable | None = None) -> DataLoader:
    """Batches of batch_size / world_size images for this process, m_per_class images per class:
    pytorch-metric-learning's m-per-class sampler (``train.sampler: m_per_class``, samples_per_epoch
    images per epoch), or RS@k's epoch (``rsk``, :class:`tcm.samplers.RskSampler`: every process plans
    the same global epoch and takes its own classes of each batch)."""
    t = run.train
    if t.batch_size % (world_size * t.m_per_class):
        raise ConfigError(f"runs.{name}.train.batch_size: {t.batch_size} must split into {world_size} processes "
                          f"of whole classes of m_per_class={t.m_per_class}")
    batch = t.batch_size // world_size
    n_classes = len(np.unique(dataset.labels))
    if t.m_per_class * n_classes < batch:
        raise ConfigError(
            f"runs.{name}.train.batch_size: {t.batch_size} needs at least {batch // t.m_per_class} train classes "
            f"at m_per_class={t.m_per_class}, but the train split has {n_classes}; "
            "lower batch_size or raise m_per_class")
    if t.sampler == "rsk":
        sampler = _rsk_sampler(dataset.labels, t.m_per_class, t.batch_size, rank, world_size, name)
    else:
        length = (t.samples_per_epoch or len(dataset)) // world_size
        sampler = _m_per_class_sampler(dataset.labels, t.m_per_class, batch, max(length, batch))
    return DataLoader(dataset, batch_size=batch, sampler=sampler, drop_last=True, num_workers=t.num_workers,
                      collate_fn=collate_fn,
                      # Workers are started anew each epoch, seeded from the per-epoch seed: persistent
                      # workers would carry their random state across epochs, so a resumed run would
                      # augment differently from an uninterrupted one.
                      pin_memory=device.type == "cuda", persistent_workers=False)


def make_optimizer(run: RunConfig, model: nn.Module, loss_params: list) -> torch.optim.Optimizer:
    t = run.train
    groups = [{"params": [p for p in model.parameters() if p.requires_grad], "lr": t.lr}]
    if loss_params:  # ProxyAnchor's proxies get their own, faster learning rate
        groups.append({"params": loss_params, "lr": t.lr * run.loss.proxy_lr_multiplier})
    if t.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=t.lr, momentum=0.9, weight_decay=t.weight_decay)
    cls = torch.optim.AdamW if t.optimizer == "adamw" else torch.optim.Adam
    return cls(groups, lr=t.lr, weight_decay=t.weight_decay)


def make_scheduler(run: RunConfig, optimizer: torch.optim.Optimizer, steps_per_epoch: int):
    """Stepped once per batch. 'step' multiplies lr by lr_gamma after each epoch in lr_milestones,
    as torch's MultiStepLR stepped per epoch in the reference recipes."""
    t = run.train
    if t.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=t.epochs * steps_per_epoch)
    if t.schedule == "step":
        # Counted in epochs, not in steps / steps_per_epoch: RS@k's epochs vary in length (tcm.samplers).
        # The training loop sets the epoch at each epoch's start (set_epoch).
        milestones, gamma, clock = list(t.lr_milestones), t.lr_gamma, [1]
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda _: gamma ** sum(m < clock[0] for m in milestones))
        scheduler.epoch_clock = clock
        return scheduler
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)


def set_epoch(scheduler: torch.optim.lr_scheduler.LRScheduler, epoch: int) -> None:
    """Start ``epoch`` (1-based) of an epoch-counted schedule: its learning rate applies from the
    epoch's first step. A no-op for the per-step schedules."""
    clock = getattr(scheduler, "epoch_clock", None)
    if clock is None:
        return
    clock[0] = epoch
    for group, base, factor in zip(scheduler.optimizer.param_groups, scheduler.base_lrs, scheduler.lr_lambdas):
        group["lr"] = base * factor(scheduler.last_epoch)

def compiles(setting: bool | str, device: torch.device) -> bool:
    """``train.compile``: True, False, or auto (CUDA only; a model that fails to compile runs eagerly)."""
    if setting != "auto":
        return bool(setting)
    if device.type != "cuda":
        return False
    import torch._dynamo

    torch._dynamo.config.suppress_errors = True  # auto must never be what stops a run
    return True



@dataclass
class Parts:
    """One seed's model, loss (base + TCM), optimizer and schedule."""

    model: nn.Module
    criterion: Criterion
    optimizer: torch.optim.Optimizer
    scheduler: object


def build_parts(run_cfg: RunConfig, seed: int, num_classes: int, device: torch.device, steps_per_epoch: int) -> Parts:
    """Seeded with ``seed``, so that a seed's initial weights depend on it alone."""
    seed_everything(seed)
    model = build_model(run_cfg.model).to(device)
    model.train()  # applies freeze_bn (BatchNorm in eval mode) before DDP wraps the model
    if device.type == "cuda" and run_cfg.train.channels_last:
        model = model.to(memory_format=torch.channels_last)
    criterion = build_criterion(run_cfg.loss, run_cfg.tcm, num_classes, run_cfg.model.embedding_dim)
    criterion.base.to(device)
    optimizer = make_optimizer(run_cfg, model, criterion.parameters())
    return Parts(model, criterion, optimizer, make_scheduler(run_cfg, optimizer, steps_per_epoch))
