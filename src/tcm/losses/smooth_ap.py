"""Smooth-AP (Brown et al., ECCV 2020): 1 - mean over queries of a smoothed average precision,
with the sigmoid-smoothed ranks of :mod:`tcm.losses.ranking` (see there for ``include_query`` and
the chunked memory bound)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from tcm.losses.ranking import pair_chunks, positive_pairs, soft_beats


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
