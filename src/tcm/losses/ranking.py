"""Sigmoid-smoothed ranks of positives, shared by Smooth-AP and RS@k.

For a query q and one of its positives p in a batch of N embeddings (cosine similarity s):

    rank(q, p) = 1 + sum_{j != p} sigmoid((s_qj - s_qp) / tau)

The sum runs over the batch; whether the query itself (s_qq = 1, so it adds ~1) is part of it is
``include_query``. Both reference implementations include it (Smooth-AP's `Smooth_AP_loss.py`,
RS@k's `src/losses.py`: their similarity row of q spans the whole batch); the papers' formulas run
over the batch without q. ``include_query=True`` reproduces the reference code, so it is the
default; set it to false for the papers' formulas.

The ranks are computed for all (query, positive) pairs, a chunk of pairs at a time: memory is
O(pairs x N) = O(N^2 m), not the O(N^3) of an all-pairs difference tensor, so the batches of 4000
of the large-batch recipes fit; labels need not be grouped or balanced.
"""

from __future__ import annotations

from typing import Iterator

import torch

# Elements of one (pairs x N) block: bounds the memory of the rank computation.
_BLOCK = 1 << 22


def positive_pairs(labels: torch.Tensor, with_self: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(query, positive) index pairs: same label, p != q (plus (q, q) when ``with_self``)."""
    same = labels[:, None] == labels[None, :]
    if not with_self:
        same = same & ~torch.eye(len(labels), dtype=torch.bool, device=labels.device)
    q, p = same.nonzero(as_tuple=True)
    return q, p


def pair_chunks(n_pairs: int, n: int) -> Iterator[slice]:
    step = max(1, _BLOCK // max(n, 1))
    for start in range(0, n_pairs, step):
        yield slice(start, min(start + step, n_pairs))


def soft_beats(sims: torch.Tensor, q: torch.Tensor, p: torch.Tensor, temperature: float,
               include_query: bool) -> torch.Tensor:
    """pairs x N: sigmoid((s_qj - s_qp) / tau), 0 where j = p (and j = q unless ``include_query``).

    rank(q, p) = 1 + its row sum; restricted to columns of q's class it is the rank among positives.
    """
    diff = (sims[q] - sims[q, p][:, None]) / temperature
    keep = torch.ones_like(diff, dtype=torch.bool)
    rows = torch.arange(len(p), device=p.device)
    keep[rows, p] = False
    if not include_query:
        keep[rows, q] = False
    return torch.sigmoid(diff) * keep
