"""The Threshold-Consistent Margin (TCM) regularizer (Zhang et al., ICLR 2024).

    L_TCM = lambda+ * mean{ m+ - s : s in S+, s <= m+ } + lambda- * mean{ s - m- : s in S-, s >= m- }

S+ / S- are the cosine similarities of all positive / negative ordered pairs in the batch; a term
with no violating pair is 0. Written here (not pytorch-metric-learning's
``ThresholdConsistentMarginLoss``) because that class's ``ref_emb`` path indexes the wrong tensor
and it builds index tuples we do not need; tests check both agree on random batches.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ThresholdConsistentMargin(nn.Module):
    def __init__(self, pos_margin: float = 0.9, neg_margin: float = 0.5, pos_weight: float = 1.0,
                 neg_weight: float = 1.0) -> None:
        super().__init__()
        if neg_margin >= pos_margin:
            raise ValueError(f"neg_margin must be below pos_margin, but got {neg_margin} >= {pos_margin}")
        self.pos_margin, self.neg_margin = pos_margin, neg_margin
        self.pos_weight, self.neg_weight = pos_weight, neg_weight
        self.scale = 1.0  # lambda+ and lambda- are multiplied by this (tcm.warmup_epochs ramps it)

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        emb = F.normalize(embeddings.float(), dim=-1)
        sims = emb @ emb.T
        same = labels[:, None] == labels[None, :]
        not_self = ~torch.eye(len(labels), dtype=torch.bool, device=labels.device)
        pos = sims[same & not_self]
        neg = sims[~same]
        pos_violation = (self.pos_margin - pos).clamp_min(0)
        neg_violation = (neg - self.neg_margin).clamp_min(0)
        # Mean over violating pairs only (s <= m+ / s >= m-); pairs exactly at the margin add 0.
        pos_term = _mean_over(pos_violation, pos <= self.pos_margin)
        neg_term = _mean_over(neg_violation, neg >= self.neg_margin)
        return self.scale * (self.pos_weight * pos_term + self.neg_weight * neg_term)


def _mean_over(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    count = mask.sum()
    return (values * mask).sum() / count.clamp_min(1)
