"""Training: ``run(cfg, name)`` trains one run of params.yaml once per seed of ``train.seeds``
and writes ``runs/<name>/`` (see :mod:`tcm.runfiles`): a checkpoint per seed, history.csv, run.json.

The loop reads top to bottom: m-per-class batches (or RS@k's epoch, :mod:`tcm.samplers`) -> embeddings
-> base loss + TCM -> step.
A checkpoint is written atomically after every epoch. Calling ``run`` again after an interruption
resumes the interrupted attempt when the settings and the training code are unchanged (seeds already
finished are kept; the interrupted one continues from its last epoch and draws exactly the batches
an uninterrupted run would, seeded per epoch, so the result is bit-identical on CPU). Anything else
(a finished run, other settings, other code) trains from scratch, with a one-line notice.

Under ``torchrun`` (WORLD_SIZE > 1) the model is wrapped in DistributedDataParallel; each process
draws its own batch of batch_size / world_size images (m-per-class: seeded by its rank; RS@k's epoch:
its share of one shared plan) and rank 0
alone writes checkpoints, history and MLflow.

Large batches (RS@k and Smooth-AP use 4000) fit in memory with ``train.chunk_size``: see
:func:`train_step`.

Nothing finished is lost to a fault. Before an earlier ``train/`` folder is touched, everything that can
fail on the settings or the machine is tried (:func:`_preflight`, and the MLflow store's own check in
:class:`tcm.tracking.Tracker`); a new attempt moves the earlier folder aside and deletes it only once it
has saved a trained epoch (:class:`_Aside`). Ctrl-C and SIGTERM end the MLflow run KILLED and raise
:class:`TrainingInterrupted`, whose one line says which epoch is kept where.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import shutil
import signal
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader

from tcm.atomic import WriteError, atomic_path, free_bytes, refused_write, write_error, write_json
from tcm.checkpoint import file_size_limit, read_checkpoint, save_checkpoint, state_bytes
from tcm.config import Config, ConfigError, DatasetConfig, RunConfig, resolved_run, training_settings
from tcm.data import read_manifest
from tcm.data.batches import InputPipeline, input_pipeline
from tcm.data.dataset import ManifestDataset
from tcm.device import environment, pick_device
from tcm.embed import embed
from tcm.errors import TcmError
from tcm.fingerprint import code_fingerprint
from tcm.locks import exclusive
from tcm.losses import Criterion, build_criterion
from tcm.losses.margins import quantile_margins, ramp
from tcm.mlflow_log import history_metrics, log_dataset, seed_run, seed_tags
from tcm.models import build_model, structure_signature
from tcm.progress import Progress
from tcm.runfiles import LOSS_PARTS, CheckpointError, RunDir
from tcm.samplers import RskSampler
from tcm.tracking import Tracker


class TrainingDiverged(TcmError, RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


class TrainingInterrupted(TcmError, RuntimeError):
    """Ctrl-C or SIGTERM stopped training; the message says what was kept and that a rerun resumes."""


class NonFiniteLoss(ArithmeticError):
    """Raised by :func:`train_step` before any parameter changes; ``value`` is the loss."""

    def __init__(self, value: float) -> None:
        super().__init__(f"loss is {value}")
        self.value = value


@dataclass(frozen=True)
class TrainResult:
    run_dir: Path
    history: pd.DataFrame  # every seed's epochs (column ``seed``)


@dataclass(frozen=True)
class Dist:
    """This process's place in a torchrun job (world_size 1 without torchrun)."""

    world_size: int = 1
    rank: int = 0
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def main(self) -> bool:
        return self.rank == 0


@contextlib.contextmanager
def distributed(device_setting: str) -> Iterator[Dist]:
    """This process's place in a torchrun job (WORLD_SIZE > 1: joins the process group, and leaves
    it afterwards if it created it); a plain Dist() otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        yield Dist()
        return
    import torch.distributed as dist

    d = Dist(world, int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0")))
    created = not dist.is_initialized()
    if created:
        use_cuda = device_setting != "cpu" and torch.cuda.is_available()
        if use_cuda:
            torch.cuda.set_device(d.local_rank)
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    try:
        yield d
    finally:
        if created:
            dist.destroy_process_group()


def seed_everything(seed: int) -> None:
    # pytorch-metric-learning's samplers draw from numpy's global generator.
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def epoch_seed(seed: int, epoch: int, rank: int = 0) -> int:
    # Rank 0 (and a single process) keeps the seeds of earlier versions; other ranks draw other batches.
    return (seed * 100_003 + epoch + rank * 1_000_003) % 2**32


def config_hash(settings: dict) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


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


def _bn_buffers(model: nn.Module) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(buffer, saved copy) of every BatchNorm running statistic that a train-mode forward updates."""
    out = []
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training and m.track_running_stats:
            for b in (m.running_mean, m.running_var, m.num_batches_tracked):
                if b is not None:
                    out.append((b, b.detach().clone()))
    return out


def _has_dropout(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.dropout._DropoutNd) and m.p > 0 for m in model.modules())


def _rng_state(device: torch.device) -> tuple:
    return torch.get_rng_state(), (torch.cuda.get_rng_state(device) if device.type == "cuda" else None)


def _set_rng_state(state: tuple, device: torch.device) -> None:
    torch.set_rng_state(state[0])
    if state[1] is not None:
        torch.cuda.set_rng_state(state[1], device)


def train_step(model: nn.Module, criterion: Criterion, optimizer: torch.optim.Optimizer, x: torch.Tensor,
               y: torch.Tensor, *, autocast: bool = False, chunk_size: int | None = None,
               clip_grad_value: float | None = None, frozen: Sequence[nn.Parameter] = (),
               world_size: int = 1, check_finite: bool = True) -> dict[str, torch.Tensor]:
    """One optimisation step on batch (x, y); returns the detached loss parts of this process's batch.

    ``model`` may be wrapped (DistributedDataParallel, torch.compile). With ``chunk_size`` smaller
    than the batch, the step recomputes instead of storing activations:

    1. embed the batch chunk by chunk under ``no_grad`` (BatchNorm running statistics are restored
       afterwards, so each chunk updates them once, in step 3; dropout's random state is recorded);
    2. take the loss on the whole batch of detached embeddings, back-propagate it to them
       (dL/d embedding) and to the loss's own parameters;
    3. re-run each chunk with autograd and back-propagate its slice of dL/d embedding.

    The gradients equal the plain step's whenever the forward of a sample does not depend on the
    other samples of its pass: models without BatchNorm (ViT), or BatchNorm in eval mode
    (``model.freeze_bn``). BatchNorm in train mode normalises each chunk with the chunk's own
    statistics, as RS@k's reference code (`bs_base` chunks) does.

    ``check_finite``: raise :class:`NonFiniteLoss` before any parameter changes. The check reads the
    loss on the host, which makes the CPU wait for the GPU every step; the training loop passes False
    and watches the loss on the device instead (:class:`LossMeter`).
    """
    import torch.distributed as dist

    device = x.device
    ddp = isinstance(getattr(model, "_orig_mod", model), nn.parallel.DistributedDataParallel)
    chunked = chunk_size is not None and len(x) > chunk_size
    optimizer.zero_grad(set_to_none=True)
    if not chunked:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            emb = model(x)
        parts = criterion(emb.float(), y)
        if check_finite:
            _check_finite(parts, world_size)
        parts["loss"].backward()
    else:
        inner = getattr(model, "module", model)
        inner = getattr(inner, "_orig_mod", inner)  # the un-compiled module for the no-grad pass
        slices = [slice(i, min(i + chunk_size, len(x))) for i in range(0, len(x), chunk_size)]
        keep_rng = _has_dropout(inner)
        bn = _bn_buffers(inner)
        rng_states, chunks = [], []
        with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            for sl in slices:
                if keep_rng:
                    rng_states.append(_rng_state(device))
                chunks.append(inner(x[sl]).float())
        for buf, saved in bn:
            buf.copy_(saved)
        emb = torch.cat(chunks).requires_grad_(True)
        parts = criterion(emb, y)
        if check_finite:
            _check_finite(parts, world_size)
        parts["loss"].backward()
        grad = emb.grad
        for i, sl in enumerate(slices):
            if keep_rng:
                _set_rng_state(rng_states[i], device)
            last = i == len(slices) - 1
            sync = contextlib.nullcontext() if (last or not ddp) else model.no_sync()
            with sync:
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
                    out = model(x[sl])
                out.float().backward(grad[sl])
    if world_size > 1:  # the loss's own parameters (proxies) sit outside DDP: average their gradients
        for p in criterion.parameters():
            if p.grad is not None:
                dist.all_reduce(p.grad)
                p.grad /= world_size
    for p in frozen:  # warm-up: these parameters keep their values (as requires_grad=False would)
        p.grad = None
    if clip_grad_value is not None:
        params = [p for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
        torch.nn.utils.clip_grad_value_(params, clip_grad_value)
    optimizer.step()
    return {k: v.detach() for k, v in parts.items()}


def _compiles(setting: bool | str, device: torch.device) -> bool:
    """``train.compile``: True, False, or auto (CUDA only; a model that fails to compile runs eagerly)."""
    if setting != "auto":
        return bool(setting)
    if device.type != "cuda":
        return False
    import torch._dynamo

    torch._dynamo.config.suppress_errors = True  # auto must never be what stops a run
    return True


# Steps between the loop's reads of the loss on the host (progress bar, finiteness): each read waits
# for the GPU to finish the queued work, so reading every step would serialise host and device.
SYNC_EVERY = 25


class LossMeter:
    """An epoch's loss sums and checks, kept on the device; :meth:`read` is the one host sync.

    Per step it records the loss parts x images, whether the loss moved since the epoch's first
    step, and the first step whose loss was NaN or infinite (and its value)."""

    def __init__(self, device: torch.device) -> None:
        self.sums = torch.zeros(3, dtype=torch.float64, device=device)
        self.first: torch.Tensor | None = None
        self.last = torch.zeros(3, device=device)
        self.changed = torch.zeros((), dtype=torch.bool, device=device)
        self.bad_step = torch.zeros((), dtype=torch.int64, device=device)  # 0: every loss so far is finite
        self.bad_value = torch.zeros((), device=device)

    def add(self, step: int, values: torch.Tensor, n: int) -> None:
        """``values``: (loss, base_loss, tcm_loss) of this process's batch of ``n`` images."""
        loss = values[0]
        newly_bad = ~torch.isfinite(loss) & (self.bad_step == 0)
        self.bad_step = torch.where(newly_bad, step, self.bad_step)
        self.bad_value = torch.where(newly_bad, loss, self.bad_value)
        self.sums += values.double() * n
        if self.first is None:
            self.first = loss.clone()
        else:
            self.changed |= loss != self.first
        self.last = values

    def read(self, world_size: int = 1) -> dict:
        """Host copies: ``bad_step``/``bad_value`` (the first non-finite loss on any process), ``last``
        (this process's last losses). Collective under torchrun: every rank calls it at the same step."""
        bad = self.bad_step.clone()
        if world_size > 1:
            import torch.distributed as dist

            # The earliest bad step on any rank (0 = none, so it is mapped past every real step).
            big = torch.iinfo(torch.int64).max
            bad = torch.where(bad == 0, big, bad)
            dist.all_reduce(bad, op=dist.ReduceOp.MIN)
            bad = torch.where(bad == big, 0, bad)
        bad_step = int(bad)
        value = float(self.bad_value) if bad_step and bad_step == int(self.bad_step) else float("nan")
        return {"bad_step": bad_step, "bad_value": value, "last": self.last.tolist()}

    def totals(self, world_size: int = 1) -> tuple[list[float], float | None, bool]:
        """Epoch end: the loss sums over every process, the first step's loss, and whether it moved."""
        sums, changed = self.sums.clone(), self.changed.to(torch.int64)
        if world_size > 1:
            import torch.distributed as dist

            dist.all_reduce(sums)
            dist.all_reduce(changed, op=dist.ReduceOp.MAX)
        first = None if self.first is None else float(self.first)
        return sums.tolist(), first, bool(changed)


def _check_finite(parts: dict[str, torch.Tensor], world_size: int) -> None:
    if world_size > 1:
        # Every rank must take the same decision, or the others would wait forever in all_reduce.
        import torch.distributed as dist

        total = parts["loss"].detach().clone()
        dist.all_reduce(total)
        value = total / world_size
    else:
        value = parts["loss"].detach()
    if not torch.isfinite(value):
        raise NonFiniteLoss(value.item())


@dataclass
class _Parts:
    model: nn.Module
    criterion: Criterion
    optimizer: torch.optim.Optimizer
    scheduler: object


def _build(run_cfg: RunConfig, seed: int, num_classes: int, device: torch.device, steps_per_epoch: int) -> _Parts:
    seed_everything(seed)
    model = build_model(run_cfg.model).to(device)
    model.train()  # applies freeze_bn (BatchNorm in eval mode) before DDP wraps the model
    if device.type == "cuda" and run_cfg.train.channels_last:
        model = model.to(memory_format=torch.channels_last)
    criterion = build_criterion(run_cfg.loss, run_cfg.tcm, num_classes, run_cfg.model.embedding_dim)
    criterion.base.to(device)
    optimizer = make_optimizer(run_cfg, model, criterion.parameters())
    return _Parts(model, criterion, optimizer, make_scheduler(run_cfg, optimizer, steps_per_epoch))


def _resolve_weights(cfg: Config, run_cfg: RunConfig) -> RunConfig:
    """``model.weights_path`` relative to params.yaml's folder, as every path of params.yaml."""
    path = run_cfg.model.weights_path
    if path is None or Path(path).is_absolute():
        return run_cfg
    return run_cfg.model_copy(update={"model": run_cfg.model.model_copy(update={"weights_path": cfg.path(path)})})


def _file_digest(path: Path | None) -> str | None:
    """SHA-256 of a weights file, so that new pretrained weights never resume an attempt begun on old ones."""
    if path is None or not Path(path).is_file():
        return None
    import hashlib

    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _set_margins(a: _Attempt, parts: _Parts, state: dict | None) -> dict | None:
    """Apply ``tcm.margins: train_quantiles``: the margins saved with a resumed checkpoint, else the
    rule's quantiles of the initial model's train-split similarities (tcm.losses.margins). Returns
    the margins set, or None with fixed margins."""
    tcm = a.run_cfg.tcm
    if parts.criterion.tcm is None or tcm.margins != "train_quantiles":
        return None
    if state is not None and state.get("tcm_margins"):
        margins = state["tcm_margins"]
    else:
        ds = a.pipeline.dataset
        test_view = input_pipeline(read_manifest(a.data_dir), "train", a.dataset_cfg, "workers", a.device, train=False)
        parts.model.eval()
        emb = embed(parts.model, test_view, a.eval_batch_size, a.device, progress=False)
        parts.model.train()
        m_pos, m_neg = quantile_margins(emb, ds.labels, tcm.pos_quantile, tcm.neg_quantile, where=f"runs.{a.name}.tcm")
        margins = {"pos_margin": m_pos, "neg_margin": m_neg}
        _notice(a.d, f"run {a.name}: TCM margins from the train split's pairs (initial model): "
                     f"m+ = {m_pos:.4f} (q{tcm.pos_quantile:g} of positives), m- = {m_neg:.4f} "
                     f"(q{tcm.neg_quantile:g} of negatives)")
    parts.criterion.tcm.pos_margin, parts.criterion.tcm.neg_margin = margins["pos_margin"], margins["neg_margin"]
    return margins


def _restore(parts: _Parts, state: dict) -> None:
    parts.model.load_state_dict(state["model"])
    parts.criterion.base.load_state_dict(state["loss"])
    parts.optimizer.load_state_dict(state["optimizer"])
    parts.scheduler.load_state_dict(state["scheduler"])


def _history_frame(histories: dict[int, list[dict]]) -> pd.DataFrame:
    return pd.DataFrame([{"seed": seed, **row} for seed, rows in sorted(histories.items()) for row in rows])


def _write_history(path: Path, histories: dict[int, list[dict]]) -> None:
    with atomic_path(path) as tmp:
        _history_frame(histories).to_csv(tmp, index=False)


def _notice(d: Dist, message: str) -> None:
    if d.main:
        print(f"tcm: {message}", file=sys.stderr)


def _read_progress(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


# --------------------------------------------------------------------------- signals


@contextlib.contextmanager
def _sigterm_interrupts() -> Iterator[None]:
    """SIGTERM (``kill``, a job scheduler, torchrun stopping its workers) stops training as Ctrl-C does:
    the exception unwinds through the cleanup that ends the MLflow run as KILLED and keeps the
    checkpoints, where the default action would end the process on the spot (MLflow run left RUNNING)."""
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be set from the main thread
        return

    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt("SIGTERM")

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def _shielded() -> Iterator[None]:
    """Ignore Ctrl-C and SIGTERM for a short cleanup (ending the MLflow run, putting train/ back): a second
    signal there would leave the cleanup half done. Pressing Ctrl-C twice is common."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


# --------------------------------------------------------------------------- what a failure keeps


@dataclass
class _Status:
    """Where the attempt stands, for the one line an interrupt or a failure prints."""

    seed: int | None = None  # the seed being trained
    epoch: int = 0  # its last saved epoch (0: none trained)
    epochs: int = 0
    ckpt: Path | None = None
    ino: int | None = None  # the inode of ckpt at that epoch: a later atomic save gives it a new one
    finished: list[int] = field(default_factory=list)

    def saved(self, epoch: int) -> None:
        self.epoch, self.ino = epoch, self.ckpt.stat().st_ino

    def kept_epoch(self) -> int:
        """The epoch on disk: a signal may land after a save replaced the file and before saved() ran."""
        try:
            ino = self.ckpt.stat().st_ino if self.ckpt is not None else None
        except OSError:
            return self.epoch
        return self.epoch + 1 if (ino is not None and self.ino is not None and ino != self.ino) else self.epoch


ASIDE_PREFIX = "train.old-"  # runs/<run>/train.old-<pid>: ignored by git and DVC (.gitignore, .dvcignore)


@dataclass
class _Aside:
    """The previous ``train/`` folder, moved aside (not deleted) while a new attempt starts.

    It comes back when the new attempt fails or is interrupted before it has saved a trained epoch;
    it is deleted once the new attempt has saved its first trained epoch. From then on the new attempt
    is what a rerun resumes, and the old folder (a finished run, or other settings or code) is
    something no rerun would resume, so keeping it until the whole run finishes would only double the
    disk it takes."""

    train_dir: Path
    old: Path
    mark: tuple[Path, int] | None = None  # the untrained checkpoint of the first seed, and its inode
    dropped: bool = False

    def marked(self, ckpt: Path) -> None:
        """``ckpt`` now holds the new attempt's untrained (epoch 0) checkpoint."""
        if self.mark is None:
            self.mark = (ckpt, ckpt.stat().st_ino)

    def progressed(self) -> bool:
        """Whether the new attempt has saved a trained epoch (an atomic save gives the file a new inode)."""
        if self.mark is None:
            return False
        try:
            return self.mark[0].stat().st_ino != self.mark[1]
        except OSError:
            return False

    def drop(self) -> None:
        progress = _read_progress(self.train_dir / "progress.json")
        if progress is not None and progress.pop("aside", None) is not None:
            # First, so that a kill during the deletion never lets _recover_aside put back half a folder.
            write_json(self.train_dir / "progress.json", progress)
        shutil.rmtree(self.old, ignore_errors=True)
        self.dropped = True

    def put_back(self) -> None:
        shutil.rmtree(self.train_dir, ignore_errors=True)
        os.replace(self.old, self.train_dir)

    def settle(self) -> str:
        """After a failure: keep what is worth more; returns what was kept, for the message."""
        if self.dropped:
            return ""
        if self.progressed():
            self.drop()
            return ""
        self.put_back()
        return f"the earlier {self.train_dir} is put back unchanged"


def _recover_aside(run_dir: RunDir, d: Dist) -> None:
    """A folder moved aside by a process that was killed (kill -9, power loss): with the run's lock held,
    no one else uses it. It goes back when the attempt that replaced it had not saved a trained epoch
    (progress.json still names it), else it is deleted."""
    for old in sorted(run_dir.root.glob(ASIDE_PREFIX + "*")):
        progress = _read_progress(run_dir.progress) or {}
        if progress.get("aside") == old.name or not run_dir.train_dir.exists():
            _notice(d, f"{run_dir.train_dir} was replaced by an attempt that saved no trained epoch; putting back "
                       f"the earlier one ({old.name})")
            shutil.rmtree(run_dir.train_dir, ignore_errors=True)
            os.replace(old, run_dir.train_dir)
        else:
            shutil.rmtree(old, ignore_errors=True)


def _start_attempt(run_dir: RunDir, run_hash: str, code: str, d: Dist) -> tuple[bool, _Aside | None]:
    """Whether this call continues an interrupted attempt (same settings, same code, not finished);
    otherwise a new attempt starts in a new ``train/`` folder, the old one moved aside (:class:`_Aside`,
    returned; None when there was none).

    Only an unfinished attempt is resumed: re-running a finished run (``dvc repro --force``, or a
    stage re-run because its code changed) trains again, so a stage never passes off old results
    as new ones."""
    if d.main:
        _recover_aside(run_dir, d)
    progress = _read_progress(run_dir.progress)
    reason = None
    if progress is None:
        reason = "holds no readable progress.json" if run_dir.train_dir.exists() else None
    elif progress.get("complete"):
        reason = "holds a finished run"
    elif progress.get("run_hash") != run_hash:
        reason = "was written with other settings"
    elif progress.get("code") != code:
        reason = "was written by other code (tcm source files changed)"
    if progress is not None and reason is None:
        return True, None
    aside = None
    if d.main:
        if reason is not None:
            _notice(d, f"{run_dir.train_dir} {reason}; training {run_dir.name} from scratch")
        fresh = {"run": run_dir.name, "run_hash": run_hash, "code": code, "complete": False}
        if run_dir.train_dir.exists():
            aside = _Aside(run_dir.train_dir, run_dir.root / f"{ASIDE_PREFIX}{os.getpid()}")
            shutil.rmtree(aside.old, ignore_errors=True)
            os.replace(run_dir.train_dir, aside.old)
            fresh["aside"] = aside.old.name  # for _recover_aside, should this process be killed
        try:
            write_json(run_dir.progress, fresh)
        except BaseException:
            if aside is not None:
                aside.put_back()
            raise
    return False, aside


def _interrupted_message(name: str, status: _Status, kept: str) -> str:
    done = f"; seeds {status.finished} finished" if status.finished else ""
    if status.seed is None:
        what = kept or "nothing was changed"
        return f"interrupted: run {name} before training began; {what}; rerun to train it"
    epoch = status.kept_epoch()
    if epoch >= 1:
        return (f"interrupted: run {name} seed {status.seed} kept at epoch {epoch} of {status.epochs} in "
                f"{status.ckpt}{done}; rerun to resume")
    what = f"; {kept}" if kept else ""
    return f"interrupted: run {name} seed {status.seed} in its first epoch{done}{what}; rerun to resume"


# --------------------------------------------------------------------------- checks before anything is moved


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
        code = code_fingerprint(__name__)
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
        attempt = _Attempt(name, run_cfg, run_dir, settings, loader, pipeline, classes, device, d, tracker, progress,
                           run_hash, code, env, resuming, cfg.data_dir(run_cfg.dataset), cfg.dataset(run_cfg.dataset),
                           cfg.evaluation.batch_size, status, moved)
        histories: dict[int, list[dict]] = {}
        for seed in t.seeds:
            seed_hash, histories[seed], margins = _train_seed(attempt, seed, histories)
            status.finished.append(seed)
            info["seeds"][str(seed)] = {"config_hash": seed_hash, **({"tcm_margins": margins} if margins else {})}
            if d.main:
                write_json(run_dir.info, info)
        if d.main:
            _write_history(run_dir.history, histories)
            write_json(run_dir.progress, {**_read_progress(run_dir.progress), "complete": True})
        return TrainResult(run_dir.root, _history_frame(histories))


@dataclass(frozen=True)
class _Attempt:
    """What the seeds of one call of :func:`run` share."""

    name: str
    run_cfg: RunConfig
    run_dir: RunDir
    settings: dict
    loader: DataLoader
    pipeline: InputPipeline
    classes: np.ndarray
    device: torch.device
    d: Dist
    tracker: Tracker
    progress: bool
    run_hash: str
    code: str
    env: dict
    resuming: bool  # continues an interrupted attempt (see _start_attempt)
    data_dir: Path
    dataset_cfg: DatasetConfig
    eval_batch_size: int  # images per forward pass when embedding the train split for the margin rule
    status: _Status  # updated as seeds and epochs are saved
    aside: _Aside | None  # the previous train/ folder, until the first trained epoch is saved


def _train_seed(a: _Attempt, seed: int, histories: dict[int, list[dict]]) -> tuple[str, list[dict], dict | None]:
    """Train (or finish, or keep, within an interrupted attempt) one seed; returns its hash, history
    (``histories``: the seeds before it, written with it to history.csv) and the TCM margins it used
    when a rule set them."""
    run_cfg, name, run_dir, loader, classes, device, d, tracker = (
        a.run_cfg, a.name, a.run_dir, a.loader, a.classes, a.device, a.d, a.tracker)
    t = run_cfg.train
    ckpt = run_dir.checkpoint(seed)
    if d.main:
        ckpt.parent.mkdir(parents=True, exist_ok=True)
        for stale in ckpt.parent.glob(f".{ckpt.name}.*.tmp"):  # left by a process killed while saving
            stale.unlink(missing_ok=True)
    parts = _build(run_cfg, seed, len(classes), device, len(loader))
    seed_hash = config_hash({"run": a.run_hash, "seed": seed,
                             "structure": structure_signature(parts.model, parts.criterion.base)})

    state = None
    if a.resuming and ckpt.is_file():
        try:
            state = read_checkpoint(ckpt)
        except CheckpointError as e:
            _notice(d, f"{e}; training seed {seed} from scratch")
        if state is not None and state.get("config_hash") != seed_hash:
            _notice(d, f"{ckpt} was written for another model; training seed {seed} from scratch")
            state = None
        if state is not None:
            try:
                _restore(parts, state)
            except (RuntimeError, KeyError, ValueError) as e:
                _notice(d, f"{ckpt} does not load into this model ({type(e).__name__}); training seed {seed} "
                        "from scratch")
                parts, state = _build(run_cfg, seed, len(classes), device, len(loader)), None
    start_epoch, history = (state["epoch"] + 1, list(state["history"])) if state is not None else (1, [])
    a.status.seed, a.status.ckpt, a.status.epoch = seed, ckpt, start_epoch - 1
    a.status.ino = ckpt.stat().st_ino if state is not None else None
    margins = _set_margins(a, parts, state)
    if start_epoch > t.epochs:
        return seed_hash, history, margins  # finished earlier in this same, interrupted attempt
    if state is not None:
        _notice(d, f"resuming run {name} seed {seed} after epoch {state['epoch']} of {t.epochs}")

    run_id = tracker.find_run(name, seed_hash, a.code) if state is not None else None
    new_run = run_id is None
    run_id = seed_run(tracker, name, a.settings, seed, seed_tags(seed, seed_hash, a.code, a.env), "train", a.run_hash,
                      run_id)
    if new_run:
        log_dataset(tracker, run_id, read_manifest(a.data_dir), a.data_dir, run_cfg.dataset, "train")
    try:
        model = raw_model = parts.model
        if d.enabled:
            model = nn.parallel.DistributedDataParallel(
                model, device_ids=[device.index] if device.type == "cuda" else None)
        if _compiles(t.compile, device):
            model = torch.compile(model)

        def checkpoint(epoch: int) -> None:
            try:
                save_checkpoint(ckpt, {
                    "model": raw_model.state_dict(), "loss": parts.criterion.base.state_dict(),
                    "optimizer": parts.optimizer.state_dict(), "scheduler": parts.scheduler.state_dict(),
                    "epoch": epoch, "epochs": t.epochs, "history": history, "config_hash": seed_hash,
                    "code": a.code, "seed": seed, "settings": a.settings, "classes": classes.tolist(),
                    "world_size": d.world_size, "tcm_margins": margins})
            except WriteError as e:
                if a.status.epoch >= 1:
                    raise WriteError(f"{e} (run {name} seed {seed} at epoch {a.status.epoch}); make room and rerun "
                                     "to resume") from None
                raise
            a.status.saved(epoch)
            if a.aside is not None:
                if epoch == 0:
                    a.aside.marked(ckpt)
                elif not a.aside.dropped and a.aside.progressed():
                    a.aside.drop()  # the new attempt now has a trained epoch to resume: see _Aside

        if d.main and state is None:
            checkpoint(0)  # a seed killed in its first epoch then resumes, and continues its MLflow run
        autocast = device.type == "cuda" and t.amp
        backbone_params = [p for p in raw_model.backbone.parameters() if p.requires_grad]
        _epochs(a, seed, parts, model, raw_model, history, histories, start_epoch, checkpoint, run_id, autocast,
                backbone_params)
    except BaseException as e:
        # An interrupted run is resumed later and reopened (start_run); it must not show as running.
        with _shielded():
            try:
                tracker.end_run(run_id, status="KILLED" if isinstance(e, KeyboardInterrupt) else "FAILED")
            except TcmError as failed:  # the store went away meanwhile: the first error is the one to tell
                _notice(d, f"could not mark the MLflow run as ended: {failed}")
        raise
    if d.main:
        tracker.set_stage(run_id, "train")
        tracker.end_run(run_id)
    return seed_hash, history, margins


def _epochs(a: _Attempt, seed: int, parts: _Parts, model: nn.Module, raw_model: nn.Module, history: list[dict],
            histories: dict[int, list[dict]], start_epoch: int, checkpoint: Callable[[int], None],
            run_id: str | None, autocast: bool, backbone_params: list[nn.Parameter]) -> None:
    """Epochs ``start_epoch``..``epochs`` of one seed; each ends with a checkpoint, MLflow metrics and
    a history.csv row (rank 0)."""
    run_cfg, name, run_dir, loader, device, d, tracker = (
        a.run_cfg, a.name, a.run_dir, a.loader, a.device, a.d, a.tracker)
    t = run_cfg.train
    ckpt = run_dir.checkpoint(seed)
    label = f"{name} seed {seed}"
    channels_last = device.type == "cuda" and t.channels_last
    for epoch in range(start_epoch, t.epochs + 1):
        # Seeding per epoch makes a resumed run draw exactly the batches an uninterrupted one would.
        seed_everything(epoch_seed(seed, epoch, d.rank))
        set_epoch(parts.scheduler, epoch)
        if parts.criterion.tcm is not None:
            parts.criterion.tcm.scale = ramp(run_cfg.tcm.warmup_epochs, epoch)
        model.train()
        frozen = backbone_params if epoch <= t.warmup_epochs else ()
        meter, seen, t0, step = LossMeter(device), 0, time.perf_counter(), 0
        bar = Progress(loader, f"{label} epoch {epoch}/{t.epochs}", enabled=a.progress and d.main)
        for step, (x, y) in enumerate(bar, start=1):
            x = a.pipeline.to_model(x, device, channels_last)
            y = y.to(device, non_blocking=True)
            losses = train_step(model, parts.criterion, parts.optimizer, x, y, autocast=autocast,
                                chunk_size=t.chunk_size, clip_grad_value=t.clip_grad_value, frozen=frozen,
                                world_size=d.world_size, check_finite=False)
            parts.scheduler.step()
            meter.add(step, torch.stack([losses[k].float() for k in LOSS_PARTS]), len(y))
            seen += len(y) * d.world_size
            if step % SYNC_EVERY == 0 or step == len(loader):
                state = meter.read(d.world_size)
                if state["bad_step"]:
                    raise TrainingDiverged(
                        f"run {name} seed {seed}: loss is {state['bad_value']} at epoch {epoch}, step "
                        f"{state['bad_step']}; the last good checkpoint (epoch {epoch - 1}) is kept at {ckpt}")
                bar.set_postfix(loss=f"{state['last'][0]:.4f}", img_s=f"{seen / (time.perf_counter() - t0):.0f}",
                                refresh=False)
        totals, first_loss, changed = meter.totals(d.world_size)
        if step > 1 and not changed and first_loss != 0.0:
            # A loss that no step moves has lost its gradient (weights blown up by a huge lr, or collapsed
            # embeddings). A loss of exactly 0 is left alone: a miner that finds no hard pairs gives it.
            raise TrainingDiverged(
                f"run {name} seed {seed}: the loss stayed at {first_loss:.6g} for all {step} steps of epoch {epoch} "
                f"(train.lr {t.lr:g}): training has stalled, most likely diverged; "
                f"lower runs.{name}.train.lr. The last good checkpoint (epoch {epoch - 1}) is kept at {ckpt}")
        sums = dict(zip(LOSS_PARTS, totals))
        seconds = time.perf_counter() - t0
        row = {"epoch": epoch, **{k: v / max(seen, 1) for k, v in sums.items()},
               "lr": parts.optimizer.param_groups[0]["lr"], "images_per_s": seen / seconds, "seconds": seconds}
        history.append(row)
        if d.main:
            # checkpoint, then MLflow, then history.csv: a history row means the epoch is saved and logged
            checkpoint(epoch)
            tracker.log_metrics(run_id, history_metrics(row), step=epoch)
            _write_history(run_dir.history, {**histories, seed: history})
            if a.progress:
                print(f"{label} epoch {epoch}/{t.epochs}: loss {row['loss']:.4f} (base {row['base_loss']:.4f}, "
                      f"tcm {row['tcm_loss']:.4f}), {row['images_per_s']:.0f} img/s", file=sys.stderr)
