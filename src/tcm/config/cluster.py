"""cluster: what each train stage's SLURM job asks for under `tcm parallel --slurm` (docs/gpus.md).

No train or evaluation stage reads it, so editing it re-runs nothing; command-line flags override
each key."""

from __future__ import annotations

import re

from pydantic import field_validator

from tcm.config.base import StrictModel, count

SLURM_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.,:+-]{0,127}")


class ClusterConfig(StrictModel):
    partition: str | None = None  # sbatch --partition; null = the cluster's default partition
    account: str | None = None  # sbatch --account; null = the user's default account
    nodes: count(1024) = 1  # > 1: one run across nodes (DDP through torchrun in the job)
    gpus_per_job: count(64, lower=0) = 0  # GPUs per node; > 1: DDP through torchrun in the job
    cpus_per_job: count(1024) = 4  # CPUs per node (data-loading workers + the trainer)
    mem_gb: count(16_384) | None = None  # memory per node; null = the partition's default
    time_min: count(60 * 24 * 30) = 24 * 60  # time limit; near it the job is requeued and resumes

    @field_validator("partition", "account")
    @classmethod
    def _slurm_name(cls, v: str | None) -> str | None:
        if v is not None and not SLURM_NAME.fullmatch(v):
            raise ValueError(f"{v!r} is not a SLURM name (letters, digits and _.,:+- only)")
        return v
