"""RS@k's epoch sampler (``train.sampler: rsk``), as RS@k's and Smooth-AP's training sets form an epoch.

Source: yash0307/RecallatK_surrogate ``src/datasets.py`` [3cce96f, unchanged at ed05202],
``TrainDatasetrsk.reshuffle`` L313-334 (Andrew-Brown1/Smooth_AP ``src/datasets.py`` [3e5ad75]
``TrainDatasetsmoothap.reshuffle`` L370-397 is the same code). One epoch:

1. each class's images in random order (L316-317); the classes in one random order, fixed for the
   whole epoch (L318-319);
2. passes over that order (L323-332): a pass takes, from each class that still has >= m unused
   images (m = ``samples_per_class``), its next m images, until the batch holds batch_size / m classes
   (L325-327); a full batch is kept, a pass that cannot fill one ends the epoch and its images are
   dropped (L328-332). So each batch holds the *first* batch_size / m classes of the order that
   still have m unused images; images are never used twice; a class with fewer than m images left
   (or from the start) is not drawn again; leftover images wait for the next epoch;
3. the batches in random order (L333), each read as one loader batch (``SequentialSampler``,
   ``batch_size=opt.bs``, ``drop_last=True``: L24-27); ``reshuffle`` runs after every epoch
   (``src/main.py`` L282).

The count of steps therefore depends on the class order, except where every batch holds every class
with >= m images (CUB: batch 400 = 100 classes x 4; Cars196: 392 = 98 x 4), where it is
floor(smallest class size / m). Our random numbers are numpy's, not Python's ``random``: the same
rule and distribution, not the reference's exact draws.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Sampler


def rsk_batches(class_sizes: Sequence[int], m: int, classes_per_batch: int) -> list[np.ndarray]:
    """The classes of each batch of RS@k's epoch (positions in ``class_sizes``), in the order formed.

    ``class_sizes`` lists the classes in the epoch's (shuffled) visiting order. Each pass takes the
    first ``classes_per_batch`` classes that still have ``m`` unused images (datasets.py L324-327);
    the epoch ends at the first pass that cannot fill a batch (L328-332)."""
    chunks = np.asarray(class_sizes, dtype=np.int64) // m  # a class can be drawn floor(size / m) times
    left = chunks.copy()
    usable = np.flatnonzero(chunks > 0)  # classes with >= m images, in visiting order
    # The classes drawn so far and not used up all lie before the untouched ones (each pass takes the
    # first available), so a pass is: those, then the next untouched classes. O(steps x batch).
    front, nxt = np.empty(0, dtype=np.int64), 0
    batches = []
    while True:
        need = classes_per_batch - len(front)
        if nxt + need > len(usable):
            return batches
        take = np.concatenate([front, usable[nxt:nxt + need]])
        nxt += need
        left[take] -= 1
        batches.append(take)
        front = take[left[take] > 0]


def rsk_epoch_steps(class_sizes: Sequence[int], m: int, classes_per_batch: int) -> int:
    """Steps of RS@k's epoch for classes visited in the order of ``class_sizes`` (see :func:`rsk_batches`)."""
    return len(rsk_batches(class_sizes, m, classes_per_batch))


@dataclass(frozen=True)
class RskEpoch:
    class_order: np.ndarray  # class numbers (into RskSampler.classes) in the epoch's visiting order
    batches: np.ndarray  # (steps, batch_size) dataset indices: the whole batch of every process, in training order


class RskSampler(Sampler[int]):
    """Dataset indices of one RS@k epoch for this process: per step, its batch_size / world_size slice
    of the global batch (whole classes: a rank gets classes_per_batch / world_size of them).

    Each ``iter`` draws a new epoch from a seed taken from torch's global generator, as torch's
    RandomSampler does: seeded per epoch (``seed_everything(epoch_seed(...))``), a resumed run draws
    the epochs of an uninterrupted one. Under DDP rank 0's seed is broadcast, so every process plans
    the same global epoch and takes its own slice. Without a process group the caller must seed all
    ranks alike (tests)."""

    def __init__(self, labels: Sequence[int] | np.ndarray, m: int, batch_size: int, rank: int = 0,
                 world_size: int = 1) -> None:
        if batch_size % (m * world_size):
            raise ValueError(f"batch_size {batch_size} must split into {world_size} processes of whole classes of "
                             f"m={m}")
        labels = np.asarray(labels)
        self.classes, class_of, self.sizes = np.unique(labels, return_inverse=True, return_counts=True)
        self.m, self.batch_size, self.rank, self.world_size = m, batch_size, rank, world_size
        self.classes_per_batch = batch_size // m
        self.small_classes = int((self.sizes < m).sum())  # never drawn
        if int((self.sizes >= m).sum()) < self.classes_per_batch:
            raise ValueError(f"a batch of {batch_size} needs {self.classes_per_batch} classes with >= {m} images, "
                             f"but there are {int((self.sizes >= m).sum())}")
        self._by_class = np.argsort(class_of, kind="stable")  # dataset indices grouped by class
        self._class_of_sorted = class_of[self._by_class]
        self._starts = np.concatenate([[0], np.cumsum(self.sizes)[:-1]])
        # __len__ is needed before an epoch is drawn (the scheduler's steps per epoch). It is exact where
        # the count does not depend on the class order (every batch holds every usable class: CUB,
        # Cars196); otherwise the median over fixed reference orders (it varies by a step or so).
        ref = np.random.default_rng(0)
        counts = [rsk_epoch_steps(self.sizes[ref.permutation(len(self.sizes))], m, self.classes_per_batch)
                  for _ in range(9)]
        self.steps = int(np.median(counts))

    def epoch(self, seed: int) -> RskEpoch:
        """The epoch drawn from ``seed`` (all processes' batches), following datasets.py L313-334."""
        rng = np.random.default_rng(seed)
        # L316-317: each class's images in random order (a random key sorted within each class).
        images = self._by_class[np.lexsort((rng.random(len(self._by_class)), self._class_of_sorted))]
        order = rng.permutation(len(self.sizes))  # L318-319: one class order for the whole epoch
        used = np.zeros(len(self.sizes), dtype=np.int64)  # draws so far per class
        batches = []
        for positions in rsk_batches(self.sizes[order], self.m, self.classes_per_batch):
            cls = order[positions]
            first = self._starts[cls] + used[cls] * self.m  # L326-327: the class's next m images
            batches.append(images[first[:, None] + np.arange(self.m)].ravel())
            used[cls] += 1
        batches = np.stack(batches)[rng.permutation(len(batches))]  # L333: batches in random order
        return RskEpoch(order, batches)

    def _seed(self) -> int:
        seed = int(torch.empty((), dtype=torch.int64).random_().item())
        if self.world_size > 1:
            import torch.distributed as dist

            if dist.is_available() and dist.is_initialized():
                box = [seed]
                dist.broadcast_object_list(box, src=0)  # every rank plans rank 0's epoch
                seed = box[0]
        return seed

    def __iter__(self) -> Iterator[int]:
        per = self.batch_size // self.world_size
        batches = self.epoch(self._seed()).batches
        yield from batches[:, self.rank * per:(self.rank + 1) * per].ravel().tolist()

    def __len__(self) -> int:
        return self.steps * (self.batch_size // self.world_size)
