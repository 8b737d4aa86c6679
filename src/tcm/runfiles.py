"""The files of one run folder, ``runs/<run>/``, in one place (readers such as the report need not
import the training code and its heavy dependencies).

A run (one configuration of params.yaml) is trained once per seed of ``train.seeds``. Each DVC
stage owns whole folders, so the train stage's ``train/`` and the evaluate stage's ``eval/`` hold
one sub-folder per seed::

    runs/<run>/run.json                  train: settings, seeds, code fingerprint, environment
    runs/<run>/history.csv               train: one row per seed and epoch (column ``seed``)
    runs/<run>/train/progress.json       train: which attempt the checkpoints belong to
    runs/<run>/train/seed-<s>/checkpoint.pt
    runs/<run>/metrics.json              evaluate: mean, sd and n over seeds of the headline metrics
    runs/<run>/eval/seed-<s>/metrics.json, settings.json, curves.csv
    runs/<run>/embeddings/seed-<s>.npz   evaluate: test embeddings and labels (DVC-cached, not in git)
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from tcm.errors import TcmError

_SEED_DIR = re.compile(r"seed-(\d+)")
# The loss columns of history.csv (and of the training step's losses): the total, its base-loss and TCM parts,
# with the title a plot gives each.
LOSS_PART_TITLES = {"loss": "total loss", "base_loss": "base loss", "tcm_loss": "TCM term"}
LOSS_PARTS = tuple(LOSS_PART_TITLES)


class CheckpointError(TcmError, ValueError):
    """A checkpoint that cannot be used: missing, truncated, holding pickled objects, or stale.
    (Defined here, free of torch, so the command line can catch it without importing torch.)"""


@dataclass(frozen=True)
class RunDir:
    root: Path

    @property
    def name(self) -> str:
        return self.root.name

    @property
    def lock(self) -> Path:
        """Held by the process training the run (tcm.locks); ignored by git and DVC."""
        return self.root / ".lock"

    # train stage
    @property
    def info(self) -> Path:
        return self.root / "run.json"

    @property
    def history(self) -> Path:
        return self.root / "history.csv"

    @property
    def train_dir(self) -> Path:
        return self.root / "train"

    @property
    def progress(self) -> Path:
        return self.train_dir / "progress.json"

    def checkpoint(self, seed: int) -> Path:
        return self.train_dir / f"seed-{seed}" / "checkpoint.pt"

    # evaluate stage
    @property
    def metrics(self) -> Path:
        return self.root / "metrics.json"

    @property
    def eval_dir(self) -> Path:
        return self.root / "eval"

    def seed_eval_dir(self, seed: int) -> Path:
        """Written as a whole (atomic.atomic_dir): metrics, settings and curves of one evaluation."""
        return self.eval_dir / f"seed-{seed}"

    def seed_metrics(self, seed: int) -> Path:
        return self.seed_eval_dir(seed) / "metrics.json"

    def seed_settings(self, seed: int) -> Path:
        return self.seed_eval_dir(seed) / "settings.json"

    def seed_curves(self, seed: int) -> Path:
        return self.seed_eval_dir(seed) / "curves.csv"

    @property
    def embeddings_dir(self) -> Path:
        return self.root / "embeddings"

    def seed_embeddings(self, seed: int) -> Path:
        return self.embeddings_dir / f"seed-{seed}.npz"

    def evaluated_seeds(self) -> list[int]:
        """Seeds whose metrics.json exists, ascending."""
        if not self.eval_dir.is_dir():
            return []
        found = (_SEED_DIR.fullmatch(p.name) for p in self.eval_dir.iterdir())
        return sorted(int(m.group(1)) for m in found if m and self.seed_metrics(int(m.group(1))).is_file())
