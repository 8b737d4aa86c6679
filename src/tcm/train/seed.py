"""One seed of a run (:class:`SeedTrainer`): restore an interrupted attempt's checkpoint (or start
afresh), set the TCM margins, train the remaining epochs, and save a checkpoint, MLflow metrics and a
history.csv row after each."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader

from tcm.atomic import WriteError, atomic_path
from tcm.checkpoint import read_checkpoint, save_checkpoint
from tcm.config import DatasetConfig, RunConfig
from tcm.data import read_manifest
from tcm.data.batches import InputPipeline, input_pipeline
from tcm.embed import embed
from tcm.errors import TcmError
from tcm.losses.margins import quantile_margins, ramp
from tcm.mlflow_log import history_metrics, log_dataset, seed_run, seed_tags
from tcm.models import structure_signature
from tcm.progress import Progress
from tcm.runfiles import LOSS_PARTS, CheckpointError, RunDir
from tcm.tracking import Tracker
from tcm.train.build import Parts, build_parts, compiles, set_epoch
from tcm.train.resume import _Aside, _shielded, _Status, config_hash
from tcm.train.runtime import Dist, _notice, epoch_seed, seed_everything
from tcm.train.step import LossMeter, train_step

# Steps between the loop's reads of the loss on the host (progress bar, finiteness): each read waits
# for the GPU to finish the queued work, so reading every step would serialise host and device.
SYNC_EVERY = 25


class TrainingDiverged(TcmError, RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


@dataclass(frozen=True)
class TrainSplit:
    """What the seeds train on: the train split's batches, and what the margin rule reads of it."""

    loader: DataLoader
    pipeline: InputPipeline
    classes: np.ndarray  # the train split's labels, in the order of the model's class indices
    data_dir: Path
    dataset_cfg: DatasetConfig
    eval_batch_size: int  # images per forward pass when embedding the train split for the margin rule


@dataclass(frozen=True)
class Attempt:
    """What the seeds of one call of :func:`tcm.train.run` share."""

    name: str
    run_cfg: RunConfig
    settings: dict  # the run's resolved settings (config.resolved_run), saved with each checkpoint
    run_dir: RunDir
    run_hash: str  # what a checkpoint must match to be resumed (see stage._run)
    code: str  # the training code's fingerprint (tcm.fingerprint)
    env: dict  # tcm.device.environment, for MLflow
    split: TrainSplit
    d: Dist  # this process's place in a torchrun job
    device: torch.device
    tracker: Tracker
    progress: bool
    resuming: bool  # continues an interrupted attempt (see _start_attempt)
    status: _Status  # updated as seeds and epochs are saved
    aside: _Aside | None  # the previous train/ folder, until the first trained epoch is saved


class SeedTrainer:
    """Trains (or finishes, or keeps, within an interrupted attempt) one seed of an :class:`Attempt`.

    ``histories``: the seeds before it, written with it to history.csv."""

    def __init__(self, attempt: Attempt, seed: int, histories: dict[int, list[dict]]) -> None:
        self.a, self.seed, self.histories = attempt, seed, histories
        self.t = attempt.run_cfg.train
        self.ckpt = attempt.run_dir.checkpoint(seed)
        self.label = f"{attempt.name} seed {seed}"
        self.parts: Parts | None = None
        self.seed_hash = ""
        self.history: list[dict] = []
        self.margins: dict | None = None
        self.model: nn.Module | None = None  # what the steps call: parts.model, maybe wrapped (DDP, compile)
        self.run_id: str | None = None

    def train(self) -> tuple[str, list[dict], dict | None]:
        """Returns the seed's hash, its history and the TCM margins it used when a rule set them."""
        a, d, t, seed = self.a, self.a.d, self.t, self.seed
        if d.main:
            self.ckpt.parent.mkdir(parents=True, exist_ok=True)
            for stale in self.ckpt.parent.glob(f".{self.ckpt.name}.*.tmp"):  # left by a process killed while saving
                stale.unlink(missing_ok=True)
        self.parts = self._build()
        self.seed_hash = config_hash({"run": a.run_hash, "seed": seed,
                                      "structure": structure_signature(self.parts.model, self.parts.criterion.base)})
        state = self._restore()
        start_epoch, self.history = (state["epoch"] + 1, list(state["history"])) if state is not None else (1, [])
        a.status.seed, a.status.ckpt, a.status.epoch = seed, self.ckpt, start_epoch - 1
        a.status.ino = self.ckpt.stat().st_ino if state is not None else None
        self.margins = self._set_margins(state)
        if start_epoch > t.epochs:
            return self.seed_hash, self.history, self.margins  # finished earlier in this same, interrupted attempt
        if state is not None:
            _notice(d, f"resuming run {a.name} seed {seed} after epoch {state['epoch']} of {t.epochs}")

        run_id = a.tracker.find_run(a.name, self.seed_hash, a.code) if state is not None else None
        new_run = run_id is None
        self.run_id = run_id = seed_run(a.tracker, a.name, a.settings, seed,
                                        seed_tags(seed, self.seed_hash, a.code, a.env), "train", a.run_hash, run_id)
        if new_run:
            data_dir = a.split.data_dir
            log_dataset(a.tracker, run_id, read_manifest(data_dir), data_dir, a.run_cfg.dataset, "train")
        try:
            self.model = self.parts.model
            if d.enabled:
                self.model = nn.parallel.DistributedDataParallel(
                    self.model, device_ids=[a.device.index] if a.device.type == "cuda" else None)
            if compiles(t.compile, a.device):
                self.model = torch.compile(self.model)
            if d.main and state is None:
                self._checkpoint(0)  # a seed killed in its first epoch then resumes, and continues its MLflow run
            self._epochs(start_epoch)
        except BaseException as e:
            # An interrupted run is resumed later and reopened (start_run); it must not show as running.
            with _shielded():
                try:
                    a.tracker.end_run(run_id, status="KILLED" if isinstance(e, KeyboardInterrupt) else "FAILED")
                except TcmError as failed:  # the store went away meanwhile: the first error is the one to tell
                    _notice(d, f"could not mark the MLflow run as ended: {failed}")
            raise
        if d.main:
            a.tracker.set_stage(run_id, "train")
            a.tracker.end_run(run_id)
        return self.seed_hash, self.history, self.margins

    def _build(self) -> Parts:
        a = self.a
        return build_parts(a.run_cfg, self.seed, len(a.split.classes), a.device, len(a.split.loader))

    def _restore(self) -> dict | None:
        """The checkpoint of an interrupted attempt, loaded into :attr:`parts`; None (a fresh start, with
        a notice when a checkpoint was there) when there is none to resume."""
        a, d, seed, ckpt = self.a, self.a.d, self.seed, self.ckpt
        if not (a.resuming and ckpt.is_file()):
            return None
        state = None
        try:
            state = read_checkpoint(ckpt)
        except CheckpointError as e:
            _notice(d, f"{e}; training seed {seed} from scratch")
        if state is not None and state.get("config_hash") != self.seed_hash:
            _notice(d, f"{ckpt} was written for another model; training seed {seed} from scratch")
            state = None
        if state is not None:
            try:
                self.parts.model.load_state_dict(state["model"])
                self.parts.criterion.base.load_state_dict(state["loss"])
                self.parts.optimizer.load_state_dict(state["optimizer"])
                self.parts.scheduler.load_state_dict(state["scheduler"])
            except (RuntimeError, KeyError, ValueError) as e:
                _notice(d, f"{ckpt} does not load into this model ({type(e).__name__}); training seed {seed} "
                        "from scratch")
                self.parts, state = self._build(), None
        return state

    def _set_margins(self, state: dict | None) -> dict | None:
        """Apply ``tcm.margins: train_quantiles``: the margins saved with a resumed checkpoint, else the
        rule's quantiles of the initial model's train-split similarities (tcm.losses.margins). Returns
        the margins set, or None with fixed margins."""
        a, parts = self.a, self.parts
        tcm = a.run_cfg.tcm
        if parts.criterion.tcm is None or tcm.margins != "train_quantiles":
            return None
        if state is not None and state.get("tcm_margins"):
            margins = state["tcm_margins"]
        else:
            ds = a.split.pipeline.dataset
            test_view = input_pipeline(read_manifest(a.split.data_dir), "train", a.split.dataset_cfg, "workers",
                                       a.device, train=False)
            parts.model.eval()
            emb = embed(parts.model, test_view, a.split.eval_batch_size, a.device, progress=False)
            parts.model.train()
            m_pos, m_neg = quantile_margins(emb, ds.labels, tcm.pos_quantile, tcm.neg_quantile,
                                            where=f"runs.{a.name}.tcm")
            margins = {"pos_margin": m_pos, "neg_margin": m_neg}
            _notice(a.d, f"run {a.name}: TCM margins from the train split's pairs (initial model): "
                         f"m+ = {m_pos:.4f} (q{tcm.pos_quantile:g} of positives), m- = {m_neg:.4f} "
                         f"(q{tcm.neg_quantile:g} of negatives)")
        parts.criterion.tcm.pos_margin, parts.criterion.tcm.neg_margin = margins["pos_margin"], margins["neg_margin"]
        return margins

    def _checkpoint(self, epoch: int) -> None:
        a, t, parts = self.a, self.t, self.parts
        try:
            save_checkpoint(self.ckpt, {
                "model": parts.model.state_dict(), "loss": parts.criterion.base.state_dict(),
                "optimizer": parts.optimizer.state_dict(), "scheduler": parts.scheduler.state_dict(),
                "epoch": epoch, "epochs": t.epochs, "history": self.history, "config_hash": self.seed_hash,
                "code": a.code, "seed": self.seed, "settings": a.settings, "classes": a.split.classes.tolist(),
                "world_size": a.d.world_size, "tcm_margins": self.margins})
        except WriteError as e:
            if a.status.epoch >= 1:
                raise WriteError(f"{e} (run {a.name} seed {self.seed} at epoch {a.status.epoch}); make room and "
                                 "rerun to resume") from None
            raise
        a.status.saved(epoch)
        if a.aside is not None:
            if epoch == 0:
                a.aside.marked(self.ckpt)
            elif not a.aside.dropped and a.aside.progressed():
                a.aside.drop()  # the new attempt now has a trained epoch to resume: see _Aside

    def _epochs(self, start_epoch: int) -> None:
        """Epochs ``start_epoch``..``epochs``; each ends with a checkpoint, MLflow metrics and a history.csv
        row (rank 0)."""
        a, t = self.a, self.t
        backbone_params = [p for p in self.parts.model.backbone.parameters() if p.requires_grad]
        for epoch in range(start_epoch, t.epochs + 1):
            frozen = backbone_params if epoch <= t.warmup_epochs else ()
            row = self._epoch(epoch, frozen)
            self.history.append(row)
            if a.d.main:
                # checkpoint, then MLflow, then history.csv: a history row means the epoch is saved and logged
                self._checkpoint(epoch)
                a.tracker.log_metrics(self.run_id, history_metrics(row), step=epoch)
                _write_history(a.run_dir.history, {**self.histories, self.seed: self.history})
                if a.progress:
                    print(f"{self.label} epoch {epoch}/{t.epochs}: loss {row['loss']:.4f} (base "
                          f"{row['base_loss']:.4f}, tcm {row['tcm_loss']:.4f}), {row['images_per_s']:.0f} img/s",
                          file=sys.stderr)

    def _epoch(self, epoch: int, frozen: list[nn.Parameter] | tuple) -> dict:
        """One epoch's steps; returns its history row."""
        a, t, parts, d, device, seed = self.a, self.t, self.parts, self.a.d, self.a.device, self.seed
        loader = a.split.loader
        autocast = device.type == "cuda" and t.amp
        channels_last = device.type == "cuda" and t.channels_last
        # Seeding per epoch makes a resumed run draw exactly the batches an uninterrupted one would.
        seed_everything(epoch_seed(seed, epoch, d.rank))
        set_epoch(parts.scheduler, epoch)
        if parts.criterion.tcm is not None:
            parts.criterion.tcm.scale = ramp(a.run_cfg.tcm.warmup_epochs, epoch)
        self.model.train()
        meter, seen, t0, step = LossMeter(device), 0, time.perf_counter(), 0
        bar = Progress(loader, f"{self.label} epoch {epoch}/{t.epochs}", enabled=a.progress and d.main)
        for step, (x, y) in enumerate(bar, start=1):
            x = a.split.pipeline.to_model(x, device, channels_last)
            y = y.to(device, non_blocking=True)
            losses = train_step(self.model, parts.criterion, parts.optimizer, x, y, autocast=autocast,
                                chunk_size=t.chunk_size, clip_grad_value=t.clip_grad_value, frozen=frozen,
                                world_size=d.world_size, check_finite=False)
            parts.scheduler.step()
            meter.add(step, torch.stack([losses[k].float() for k in LOSS_PARTS]), len(y))
            seen += len(y) * d.world_size
            if step % SYNC_EVERY == 0 or step == len(loader):
                state = meter.read(d.world_size)
                if state["bad_step"]:
                    raise TrainingDiverged(
                        f"run {a.name} seed {seed}: loss is {state['bad_value']} at epoch {epoch}, step "
                        f"{state['bad_step']}; the last good checkpoint (epoch {epoch - 1}) is kept at {self.ckpt}")
                bar.set_postfix(loss=f"{state['last'][0]:.4f}", img_s=f"{seen / (time.perf_counter() - t0):.0f}",
                                refresh=False)
        totals, first_loss, changed = meter.totals(d.world_size)
        if step > 1 and not changed and first_loss != 0.0:
            # A loss that no step moves has lost its gradient (weights blown up by a huge lr, or collapsed
            # embeddings). A loss of exactly 0 is left alone: a miner that finds no hard pairs gives it.
            raise TrainingDiverged(
                f"run {a.name} seed {seed}: the loss stayed at {first_loss:.6g} for all {step} steps of epoch "
                f"{epoch} (train.lr {t.lr:g}): training has stalled, most likely diverged; "
                f"lower runs.{a.name}.train.lr. The last good checkpoint (epoch {epoch - 1}) is kept at {self.ckpt}")
        sums = dict(zip(LOSS_PARTS, totals))
        seconds = time.perf_counter() - t0
        return {"epoch": epoch, **{k: v / max(seen, 1) for k, v in sums.items()},
                "lr": parts.optimizer.param_groups[0]["lr"], "images_per_s": seen / seconds, "seconds": seconds}


def _history_frame(histories: dict[int, list[dict]]) -> pd.DataFrame:
    return pd.DataFrame([{"seed": seed, **row} for seed, rows in sorted(histories.items()) for row in rows])


def _write_history(path: Path, histories: dict[int, list[dict]]) -> None:
    with atomic_path(path) as tmp:
        _history_frame(histories).to_csv(tmp, index=False)
