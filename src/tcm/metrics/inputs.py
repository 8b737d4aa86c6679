"""What every metric needs before the scan: input checks, L2 (cosine) normalisation, the compute
device and the chunk size.

Similarity is cosine: rows are L2-normalised (float32 rows divided by their float64 norms, on the
compute device), so s(a, b) = <x_a, x_b> / (|x_a| |x_b|). A zero row has no direction and is an error.
"""

from __future__ import annotations

import os

import numpy as np
import torch

# Bytes of working memory per (query row, gallery column) of a chunk (see tcm.metrics.scan): on
# the CPU the float32 similarity block, binned in place; on other devices ("compact" binning) also
# a bool mask and the in-window cells, selected at most a quarter of the chunk at a time.
BYTES_PER_CELL = {"cpu": 4, "other": 9}
MAX_CHUNK_BYTES = 512 * 2**20


def check_inputs(embeddings: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Validate an (N, d) real embedding array and an (N,) integer label array with >= 2 classes.

    Raises ``ValueError`` with a one-line message naming the problem.

    >>> check_inputs(np.ones((2, 3)), np.array([0, 1]))[1].dtype
    dtype('int64')
    """
    e, y = np.asarray(embeddings), np.asarray(labels)
    if e.ndim != 2:
        raise ValueError(f"embeddings: expected a 2-D array (N x d), but got shape {e.shape}")
    if not (np.issubdtype(e.dtype, np.floating) or np.issubdtype(e.dtype, np.integer)) or e.dtype == np.bool_:
        raise ValueError(f"embeddings: expected a real-valued numeric array, but got dtype {e.dtype}")
    if e.shape[0] == 0 or e.shape[1] == 0:
        raise ValueError(f"embeddings: expected at least one row and one column, but got shape {e.shape}")
    if y.ndim != 1:
        raise ValueError(f"labels: expected a 1-D array (N), but got shape {y.shape}")
    if not np.issubdtype(y.dtype, np.integer) or y.dtype == np.bool_:
        raise ValueError(f"labels: expected an integer array, but got dtype {y.dtype}")
    if len(y) != len(e):
        raise ValueError(f"embeddings and labels differ in length: {len(e)} rows vs {len(y)} labels")
    bad = ~np.isfinite(e).all(axis=1) if np.issubdtype(e.dtype, np.floating) else np.zeros(len(e), bool)
    if bad.any():
        raise ValueError(f"embeddings: {int(bad.sum())} rows contain NaN or inf "
                         f"(first: row {int(np.flatnonzero(bad)[0])})")
    n_classes = len(np.unique(y))
    if n_classes < 2:
        raise ValueError(f"labels: expected at least two classes, but got {n_classes}")
    return e, y.astype(np.int64, copy=False)


def normalise(embeddings: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (float64); a zero row is an error.

    >>> normalise(np.array([[3.0, 4.0]])).tolist()
    [[0.6, 0.8]]
    """
    x = np.asarray(embeddings, dtype=np.float64)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    if np.any(norms == 0):
        zero = np.flatnonzero(norms[:, 0] == 0)
        raise ValueError(f"embeddings: {len(zero)} rows are all zero (first: row {int(zero[0])}); "
                         "cosine similarity needs a direction")
    return x / norms


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """'auto' -> CUDA when available, else CPU; 'cuda' without a GPU is an error."""
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device: {device!r} was requested but no CUDA device is available; use 'auto' or 'cpu'")
    return torch.device(device)


def available_memory(device: torch.device) -> int:
    """Free bytes on the device (host RAM for CPU)."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:  # psutil is optional; sysconf works on Linux
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))


def default_chunk_size(n_gallery: int, device: torch.device, k: int = 0) -> int:
    """Query rows per chunk so that one chunk's working set (``BYTES_PER_CELL`` per similarity,
    ~48 bytes per ranked neighbour of the k kept) takes at most an eighth of the free memory and
    at most 512 MiB (larger chunks no longer speed up the matrix product, they only raise the
    peak). A multiple of 16, between 16 and 8192."""
    budget = min(MAX_CHUNK_BYTES, available_memory(device) // 8)
    per_cell = BYTES_PER_CELL["cpu" if device.type == "cpu" else "other"]
    rows = budget // (per_cell * max(n_gallery, 1) + 48 * k)
    return int(min(8192, max(16, rows // 16 * 16)))


def to_device(embeddings: np.ndarray, device: torch.device, assume_normalized: bool = False) -> torch.Tensor:
    """float32 (N, d) tensor of unit rows on ``device``; with ``assume_normalized`` the rows are
    taken as they are (the caller vouches they are unit-norm, or wants plain dot products)."""
    # Normalised in float32 with float64 norms: no (N, d) float64 copy, which at iNaturalist scale
    # (136k x 512) would alone take 0.5 GiB; unit rows are then within ~1e-7 of norm 1.
    x = torch.tensor(np.asarray(embeddings), dtype=torch.float32, device=device)
    if not assume_normalized:
        norms = torch.linalg.vector_norm(x, dim=1, dtype=torch.float64)
        zero = torch.nonzero(norms == 0).flatten().tolist()
        if zero:
            raise ValueError(f"embeddings: {len(zero)} rows are all zero (first: row {zero[0]}); "
                             "cosine similarity needs a direction")
        x.div_(norms.to(torch.float32)[:, None])
    return x
