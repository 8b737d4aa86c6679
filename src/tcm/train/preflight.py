"""Checks before anything is moved: everything that can fail on the settings or the machine is tried
before an earlier ``train/`` folder is touched (:func:`_preflight`)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from tcm.atomic import WriteError, free_bytes, refused_write, write_error
from tcm.checkpoint import file_size_limit, state_bytes
from tcm.config import ConfigError, RunConfig
from tcm.data.batches import InputPipeline
from tcm.errors import TcmError
from tcm.losses import build_criterion
from tcm.runfiles import RunDir


def _probe_writable(folder: Path) -> None:
    """Create and delete a file in ``folder``: a read-only or full file system says so here."""
    try:
        fd, tmp = tempfile.mkstemp(prefix=".tcm-probe.", dir=folder)
        os.close(fd)
        os.unlink(tmp)
    except OSError as e:
        if refused_write(e):
            raise write_error(folder, e, "nothing was changed") from None
        raise


def _preflight(name: str, run_cfg: RunConfig, run_dir: RunDir, model: nn.Module, loader: DataLoader,
               pipeline: InputPipeline, classes: np.ndarray, device: torch.device) -> None:
    """Everything that can fail on the settings or the machine, tried before any earlier result is moved:
    the loss builds and runs on the first batch's labels, the sampler plans an epoch, the first batch
    reads and goes through the model, the run folder is writable and has room for a checkpoint."""
    t, loss = run_cfg.train, run_cfg.loss
    try:
        criterion = build_criterion(loss, run_cfg.tcm, len(classes), run_cfg.model.embedding_dim)
    except (TypeError, ValueError) as e:  # what config.LOSS_PARAMS's types let through
        raise ConfigError(f"runs.{name}.loss.params: loss {loss.name!r} rejects {dict(loss.params)} "
                          f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None
    try:
        indices = next(iter(loader.batch_sampler))
    except (MemoryError, OverflowError) as e:
        key = "samples_per_epoch" if t.sampler != "rsk" else "batch_size"
        raise ConfigError(f"runs.{name}.train.{key}: {getattr(t, key)} is too large: the sampler cannot plan an "
                          f"epoch of it in memory ({type(e).__name__}); lower it") from None
    except StopIteration:
        raise ConfigError(f"runs.{name}.train: the sampler plans no batch of {t.batch_size} images from the "
                          "train split; lower batch_size") from None
    dataset = loader.dataset
    labels = torch.as_tensor(np.asarray(dataset.labels)[list(indices)]).to(device)
    # The model sees a few images (a batch of thousands would take long on a CPU); the loss sees the
    # whole batch's labels, with stand-in embeddings.
    few = list(indices)[:max(2 * t.m_per_class, 8)]
    collate = loader.collate_fn
    x, _ = collate([dataset[i] for i in few])  # a file that does not read fails here, in its own words
    model.to(device).eval()
    with torch.no_grad():
        emb = model(pipeline.to_model(x, device))
        stand_in = torch.nn.functional.normalize(torch.randn(len(labels), emb.shape[1], device=device), dim=1)
        criterion.base.to(device)
        try:
            criterion(stand_in, labels)
        except (TypeError, ValueError, RuntimeError, IndexError) as e:
            if isinstance(e, (TcmError, torch.cuda.OutOfMemoryError)):
                raise
            raise ConfigError(f"runs.{name}.loss.params: loss {loss.name!r} fails on a batch with "
                              f"{dict(loss.params)} ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
                              ) from None
    for folder in [run_dir.root, run_dir.train_dir, *run_dir.train_dir.glob("seed-*")]:
        if folder.is_dir():
            _probe_writable(folder)
    # A checkpoint holds the model, the loss's parameters and the optimizer's state (up to twice the
    # parameters for Adam); while it is written, the previous one is still there.
    weights = state_bytes(model.state_dict()) + state_bytes(criterion.base.state_dict())
    need = 3 * weights
    free = free_bytes(run_dir.root)
    if free is not None and free < need:
        raise WriteError(f"cannot write {run_dir.train_dir}: no space left on device: a checkpoint needs about "
                         f"{need / 2**20:.1f} MiB, {free / 2**20:.1f} MiB free; nothing was changed")
    limit = file_size_limit()
    if limit is not None and limit < weights:  # the weights alone: a checkpoint is surely larger
        raise WriteError(f"cannot write {run_dir.train_dir}: file too large: a checkpoint needs more than "
                         f"{weights / 2**20:.1f} MiB, the file size limit (ulimit -f) is {limit / 2**20:.1f} MiB; "
                         "nothing was changed")
