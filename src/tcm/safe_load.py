"""Reading torch files without running code: ``torch.load(weights_only=True)``, which refuses any
pickled class or function (loading one could run code), with its refusal told apart from a file that
is no torch data at all, so that each reader (a checkpoint, a backbone's weights) says in one line
what the file holds and what to do instead of torch's own message (which suggests switching that
protection off, something tcm never does)."""

from __future__ import annotations

import pickle
import re
from pathlib import Path

import torch


class UnreadableTorchFile(Exception):
    """``torch.load(weights_only=True)`` failed. ``pickled``: the class or function the file holds,
    which was refused; ``cause``: what failed otherwise (truncated, not a torch file); both None for
    a pickle stream that is not torch data."""

    def __init__(self, pickled: str | None = None, cause: BaseException | None = None) -> None:
        super().__init__(pickled or cause)
        self.pickled = pickled
        self.cause = cause


def pickled_global(error: pickle.UnpicklingError) -> str | None:
    """The class or function named by weights_only's refusal, or None when the error names none.

    >>> pickled_global(pickle.UnpicklingError("... Unsupported global: GLOBAL os.system was not an allowed global"))
    'os.system'
    """
    found = re.search(r"Unsupported global: GLOBAL (\S+)", str(error))
    return found.group(1) if found else None


def load_weights_only(path: Path) -> object:
    """The tensors and plain values saved at ``path`` (on the CPU); :class:`UnreadableTorchFile` otherwise."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise UnreadableTorchFile(pickled=pickled_global(e)) from None
    except Exception as e:  # truncated, or not a torch file at all
        raise UnreadableTorchFile(cause=e) from None
