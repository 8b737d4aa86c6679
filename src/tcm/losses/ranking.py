"""Sigmoid-smoothed ranks of positives, and Smooth-AP (Brown et al., ECCV 2020) built on them.

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
import torch.nn.functional as F
from torch import nn

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


class SmoothAP(nn.Module):
    """1 - mean over queries of the smoothed average precision (Brown et al., ECCV 2020).

    AP_q = mean over positives p of rank_pos(q, p) / rank_all(q, p), where rank_pos counts only
    the query's class. With ``include_query`` (the reference code and pytorch-metric-learning's
    ``SmoothAPLoss``), q is one of its own positives and part of every ranking; the tests check
    equality with ``SmoothAPLoss`` on the batches it handles (m equal to the number of classes).
    Queries without another positive in the batch are left out of the mean.
    """

    def __init__(self, temperature: float = 0.01, include_query: bool = True) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, but got {temperature}")
        self.temperature, self.include_query = temperature, include_query

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        emb = F.normalize(embeddings.float(), dim=-1)
        sims = emb @ emb.T
        same = labels[:, None] == labels[None, :]
        has_pos = same.sum(1) > 1
        q, p = positive_pairs(labels, with_self=self.include_query)
        ratios = []
        for sl in pair_chunks(len(q), len(labels)):
            qs, ps = q[sl], p[sl]
            beats = soft_beats(sims, qs, ps, self.temperature, self.include_query)
            r_all = 1.0 + beats.sum(dim=1)
            r_pos = 1.0 + (beats * same[qs]).sum(dim=1)
            ratios.append(r_pos / r_all)
        if not ratios:
            return emb.sum() * 0.0
        ratio = torch.cat(ratios)
        n = len(labels)
        ap_sum = torch.zeros(n, device=emb.device).index_add(0, q, ratio)
        count = torch.zeros(n, device=emb.device).index_add(0, q, torch.ones_like(ratio))
        ap = ap_sum[has_pos] / count[has_pos]
        if ap.numel() == 0:
            return emb.sum() * 0.0
        return 1.0 - ap.mean()
