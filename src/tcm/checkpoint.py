"""Checkpoint files: written atomically, holding only tensors and plain Python values, and read
with ``torch.load(weights_only=True)`` so that a checkpoint from anyone else cannot run code.

Shared by training (save, resume) and by evaluation and exploration (the trained model), so that
neither of those imports the training code.
"""

from __future__ import annotations

import errno
from pathlib import Path

import torch

from tcm.atomic import WriteError, atomic_path, free_bytes, write_error
from tcm.config import ModelConfig
from tcm.models import build_model
from tcm.runfiles import CheckpointError
from tcm.safe_load import UnreadableTorchFile, load_weights_only


def state_bytes(state: object) -> int:
    """Bytes of the tensors in ``state`` (nested dicts, lists, tuples): about a checkpoint's size."""
    if isinstance(state, torch.Tensor):
        return state.numel() * state.element_size()
    if isinstance(state, dict):
        return sum(state_bytes(v) for v in state.values())
    if isinstance(state, (list, tuple)):
        return sum(state_bytes(v) for v in state)
    return 0


def save_checkpoint(path: Path, state: dict) -> None:
    """Write ``state`` so that a reader never sees a half-written file. A write the disk refuses is a
    :class:`tcm.atomic.WriteError` naming ``path`` (the previous checkpoint, if any, is kept)."""
    path = Path(path)
    kept = "the previous checkpoint is kept" if path.is_file() else ""
    with atomic_path(path) as tmp:
        try:
            torch.save(state, tmp)
        except RuntimeError as e:
            # torch's zip writer loses the errno ("inline_container.cc: unexpected pos ..."): a full disk
            # is told by the space left, anything else by the writer's own words.
            free = free_bytes(path.parent)
            if free is not None and free < state_bytes(state) + 2**20:
                raise write_error(path, OSError(errno.ENOSPC, "no space left on device"), kept) from None
            limit = file_size_limit()
            if limit is not None and state_bytes(state) > limit:
                raise WriteError(f"cannot write {path}: file too large: the checkpoint needs about "
                                 f"{state_bytes(state) / 2**20:.1f} MiB, the file size limit (ulimit -f) is "
                                 f"{limit / 2**20:.1f} MiB{'; ' + kept if kept else ''}") from None
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise WriteError(f"cannot write {path}: {first} ({(free or 0) / 2**20:.1f} MiB free)"
                             f"{'; ' + kept if kept else ''}") from None


def file_size_limit() -> int | None:
    """This process's largest file in bytes (``ulimit -f``), or None when unlimited (or unknown)."""
    try:
        import resource
    except ImportError:  # pragma: no cover - Windows
        return None
    soft = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
    return None if soft == resource.RLIM_INFINITY else soft


def read_checkpoint(path: Path) -> dict:
    """The state saved at ``path``; raises :class:`CheckpointError` naming the file and the problem."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no checkpoint here; train the run first (dvc repro, or tcm train RUN)")
    try:
        state = load_weights_only(path)
    except UnreadableTorchFile as e:
        if e.cause is not None:  # truncated, or not a torch file at all
            raise CheckpointError(f"{path}: not a readable checkpoint ({type(e.cause).__name__}: {e.cause}); "
                                  "retrain the run") from None
        if e.pickled is None:
            raise CheckpointError(f"{path}: not a readable checkpoint (truncated or another format); "
                                  "retrain the run") from None
        raise CheckpointError(f"{path}: refused: the checkpoint holds a pickled Python object ({e.pickled}), "
                              "and tcm loads only tensors and plain values; retrain the run") from None
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
