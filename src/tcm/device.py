"""Where to compute, and what the run's machine is (recorded beside every run: results differ
across CPUs and GPUs even with fixed seeds)."""

from __future__ import annotations

import os
import platform
import sys

import torch

from tcm.config import ConfigError


def pick_device(setting: str, local_rank: int = 0, key: str = "train.device") -> torch.device:
    """``auto`` = CUDA when present, else CPU; ``cuda`` without a GPU is a configuration error
    (naming ``key``, the params.yaml setting)."""
    if setting == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"{key}: 'cuda' was requested but no CUDA device is available; use 'auto' or 'cpu'")
    if setting in ("auto", "cuda") and torch.cuda.is_available():
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(device: torch.device) -> dict[str, str | int]:
    """What a result depends on beyond settings and code: library versions and the hardware."""
    import numpy

    return {
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "python": sys.version.split()[0],
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "cuda": torch.version.cuda or "none",
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count() or 0,
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
        # a SLURM job (`tcm parallel --slurm`): its id and node, in run.json and as MLflow tags env.slurm_*
        **({"slurm_job_id": os.environ["SLURM_JOB_ID"], "slurm_node": os.environ.get("SLURMD_NODENAME", "")}
           if os.environ.get("SLURM_JOB_ID") else {}),
    }
