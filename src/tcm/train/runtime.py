"""This process: its place in a torchrun job (:class:`Dist`), its random seeds, its notices."""

from __future__ import annotations

import contextlib
import os
import random
import sys
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch


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


def _notice(d: Dist, message: str) -> None:
    if d.main:
        print(f"tcm: {message}", file=sys.stderr)
