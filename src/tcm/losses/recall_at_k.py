"""Recall@k Surrogate (RS@k; Patel, Tolias, Matas, CVPR 2022), written from the paper and its
reference code (`yash0307/RecallatK_surrogate`, `src/losses.py`, `src/main.py`).

For a query q with positives P(q) in the batch (same label, not q itself):

    rank(q, p)  = 1 + sum_{j != p} sigmoid((s_qj - s_qp) / tau1)             (see tcm.losses.ranking)
    R@k(q)      = min( sum_{p in P(q)} sigmoid((k - rank(q, p)) / tau2_k), k ) / min(k, |P(q)|)
    loss        = 1 - mean over queries with |P(q)| >= 1 of mean over k of R@k(q)

Published settings (src/main.py): tau1 = 0.01 (`--sigmoid_temperature`), k in {1, 2, 4, 8, 16}
(`--k_vals_train`) with tau2_k = k (`--k_temperatures` 1, 2, 4, 8, 16); each k is capped at the
batch size. Similarity mixup, SiMix (`--mixup`, L37, off by default there), is ``simix`` (:func:`simix`).

tau2_k = k is the reference code as it stood while the TCM paper (ICLR 2024) was written, in 2023:
`--k_temperatures` defaults to 1 2 4 8 16, with nothing overriding it, from commit 063feca (2 May 2022) through
44b7011 and a16a671 (11 May 2023). (The pre-release main.py of March-April 2022, e.g. c949c56 L58, forced
1.0 for every k.) Commit ed05202 (4 Nov 2024, after the paper) sets the default to 1 1 1 1 1 (src/main.py L41)
and overrides it with ``opt.k_temperatures = [1] * len(opt.k_vals)`` (L153), i.e. tau2_k = 1: another objective
(e.g. 0.30 instead of 0.43 on a batch of 100 separated classes x 4; up to ~0.2 apart). We keep 1, 2, 4, 8, 16
(the recipes set it explicitly); ``k_temperatures: [1, 1, 1, 1, 1]`` gives the current head's variant. See
docs/recipes.md, "RS@k temperatures".

``include_query=True`` counts the query itself in the ranks, as the reference code does (its
similarity row of q spans the whole batch); false follows the paper's formula.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from tcm.losses.ranking import pair_chunks, positive_pairs, soft_beats


def simix(emb: torch.Tensor, labels: torch.Tensor,
          alphas: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """SiMix, RS@k's similarity mixup: the batch plus, for every unordered pair (a, b) of embeddings of
    one class (a before b in the batch), the virtual positive ``alpha * e_a + (1 - alpha) * e_b`` of that
    class, alpha ~ U(0, 1) drawn per pair (``alphas``: given instead, one per pair in the order of
    ``torch.triu(same_class, 1).nonzero()``). Returns (embeddings, labels): the batch's, then the mixes.

    RS@k's `src/mixup.py` (`pos_mixup`, L9-132 at 44b7011) mixes every pair of each class's
    m = `samples_per_class` consecutive embeddings (m = 3, 4 or 6: 3, 6, 15 pairs, `np.random.rand()`
    per pair), and `src/main.py` L234-245 takes the loss over the whole mixed batch, the mixes as
    queries and as positives of their class. The mixes are not re-normalised, so their similarities
    are the mixes of the pair's similarities: s(q, mix) = alpha s(q, a) + (1 - alpha) s(q, b) (the
    paper's "similarity mixing"). Here classes are found by label (any m, any order, any class
    size; a class with one image in the batch gets no mix).
    """
    same = labels[:, None] == labels[None, :]
    a, b = torch.triu(same, diagonal=1).nonzero(as_tuple=True)
    if alphas is None:
        alphas = torch.rand(len(a), dtype=emb.dtype, device=emb.device)
    if alphas.shape != a.shape:
        raise ValueError(f"simix: expected {len(a)} alphas (one per same-class pair), but got {tuple(alphas.shape)}")
    w = alphas.to(emb.dtype)[:, None]
    mixed = w * emb[a] + (1.0 - w) * emb[b]
    return torch.cat([emb, mixed]), torch.cat([labels, labels[a]])


class RecallAtKSurrogate(nn.Module):
    """``simix``: the loss is taken on the batch with SiMix's virtual positives (:func:`simix`), drawn
    anew at every call from torch's global generator."""

    def __init__(self, k_values: Sequence[int] = (1, 2, 4, 8, 16), k_temperatures: Sequence[float] = (1, 2, 4, 8, 16),
                 temperature: float = 0.01, include_query: bool = True, simix: bool = False) -> None:
        super().__init__()
        if len(k_values) != len(k_temperatures) or not k_values:
            raise ValueError(f"k_values and k_temperatures must be non-empty and of equal length, "
                             f"but got {list(k_values)} and {list(k_temperatures)}")
        if min(k_values) < 1 or min(k_temperatures) <= 0 or temperature <= 0:
            raise ValueError("k_values must be >= 1 and the temperatures > 0")
        self.k_values = [int(k) for k in k_values]
        self.k_temperatures = [float(t) for t in k_temperatures]
        self.temperature, self.include_query = float(temperature), include_query
        self.simix = bool(simix)

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        emb = F.normalize(embeddings.float(), dim=-1)
        if self.simix:  # mixed after normalising, as RS@k mixes its network's unit embeddings
            emb, labels = simix(emb, labels)
        n = len(labels)
        sims = emb @ emb.T
        q, p = positive_pairs(labels, with_self=False)
        if len(q) == 0:
            return emb.sum() * 0.0
        k = torch.tensor([min(k, n) for k in self.k_values], dtype=emb.dtype, device=emb.device)
        k_temp = torch.tensor(self.k_temperatures, dtype=emb.dtype, device=emb.device)
        # soft "p is within the top k of q", one column per k
        hits = []
        for sl in pair_chunks(len(q), n):
            rank = 1.0 + soft_beats(sims, q[sl], p[sl], self.temperature, self.include_query).sum(dim=1)
            hits.append(torch.sigmoid((k[None, :] - rank[:, None]) / k_temp[None, :]))
        hit = torch.cat(hits)  # pairs x K
        found = torch.zeros(n, len(k), dtype=emb.dtype, device=emb.device).index_add(0, q, hit)
        n_pos = torch.zeros(n, dtype=emb.dtype, device=emb.device).index_add(0, q, torch.ones_like(q, dtype=emb.dtype))
        has_pos = n_pos > 0
        recall = torch.minimum(found[has_pos], k[None, :]) / torch.minimum(k[None, :], n_pos[has_pos][:, None])
        return 1.0 - recall.mean()
