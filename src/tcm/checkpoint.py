"""Checkpoint files: written atomically, holding only tensors and plain Python values, and read
with ``torch.load(weights_only=True)`` so that a checkpoint from anyone else cannot run code.

Shared by training (save, resume) and by evaluation and exploration (the trained model), so that
neither of those imports the training code.
"""

from __future__ import annotations

import pickle
import re
from pathlib import Path

import torch

from tcm.atomic import atomic_path
from tcm.config import ModelConfig
from tcm.models import build_model
from tcm.runfiles import CheckpointError


def save_checkpoint(path: Path, state: dict) -> None:
    """Write ``state`` so that a reader never sees a half-written file."""
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def read_checkpoint(path: Path) -> dict:
    """The state saved at ``path``; raises :class:`CheckpointError` naming the file and the problem."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no checkpoint here; train the run first (dvc repro, or tcm train RUN)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        # weights_only refuses any pickled class or function, which could run code when loaded.
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(e))
        if found is None:
            raise CheckpointError(f"{path}: not a readable checkpoint (truncated or another format); "
                                  "retrain the run") from None
        raise CheckpointError(f"{path}: refused: the checkpoint holds a pickled Python object ({found.group(1)}), "
                              "and tcm loads only tensors and plain values; retrain the run") from None
    except Exception as e:  # truncated, or not a torch file at all
        raise CheckpointError(f"{path}: not a readable checkpoint ({type(e).__name__}: {e}); retrain the run") from None
    if not isinstance(state, dict) or "model" not in state:
        raise CheckpointError(f"{path}: not a tcm checkpoint (no model state); retrain the run")
    return state


def load_trained(path: Path, device: torch.device | str = "cpu") -> tuple[torch.nn.Module, dict]:
    """The trained model of a checkpoint file, in eval mode on ``device``, and the checkpoint's state."""
    state = read_checkpoint(path)
    model_cfg = ModelConfig(**{**state["settings"]["model"], "pretrained": False, "weights_path": None})
    model = build_model(model_cfg)
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as e:
        raise CheckpointError(f"{path}: does not load into a {model_cfg.backbone} model ({e}); "
                              "retrain the run") from None
    return model.to(device).eval(), state
