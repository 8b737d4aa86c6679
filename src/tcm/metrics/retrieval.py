"""Retrieval metrics on test embeddings (cosine similarity, leave-one-out: each image queries
all others).

Ties in similarity are broken by gallery index (a stable sort), so results are deterministic.
A query whose class has no other image is skipped for Recall@k / MAP@R / R-precision but stays
in the gallery.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np


def _normalise(embeddings: np.ndarray) -> np.ndarray:
    x = np.asarray(embeddings, dtype=np.float64)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    if np.any(norms == 0):
        raise ValueError(f"embeddings: expected non-zero rows, but rows {np.flatnonzero(norms[:, 0] == 0)[:5].tolist()} are zero")
    return x / norms


def retrieval_metrics(embeddings: np.ndarray, labels: np.ndarray, ks: Sequence[int] = (1, 2, 4, 8)) -> dict:
    """Recall@k (share of queries with a same-class image among the k nearest), MAP@R and
    R-precision (R = number of other images of the query's class).

    MAP@R = mean_q (1/R) sum_{i<=R} P@i * rel(i)   (Musgrave et al., 2020)

    >>> e = np.array([[1.0, 0], [0.9, 0.1], [0, 1.0], [0.1, 0.9]]); y = np.array([0, 0, 1, 1])
    >>> retrieval_metrics(e, y, ks=[1])["recall_at_k"]
    {'1': 1.0}
    """
    x = _normalise(embeddings)
    labels = np.asarray(labels)
    sims = x @ x.T
    np.fill_diagonal(sims, -np.inf)
    order = np.argsort(-sims, axis=1, kind="stable")[:, :-1]  # drop self (always last)
    rel = labels[order] == labels[:, None]
    r = rel.sum(axis=1)
    valid = r > 0
    rel, r = rel[valid], r[valid]
    recall = {str(k): float(rel[:, :k].any(axis=1).mean()) for k in ks}
    ranks = np.arange(1, rel.shape[1] + 1)
    within_r = ranks[None, :] <= r[:, None]
    precision_at_i = np.cumsum(rel, axis=1) / ranks[None, :]
    map_r = ((precision_at_i * rel * within_r).sum(axis=1) / r).mean()
    r_prec = ((rel * within_r).sum(axis=1) / r).mean()
    return {"recall_at_k": recall, "map_at_r": float(map_r), "r_precision": float(r_prec),
            "num_queries": int(valid.sum())}
