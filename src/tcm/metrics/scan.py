"""One pass over the similarities, chunk by chunk: ranked neighbours for the retrieval metrics
and per-class similarity histograms for the threshold metrics.

Memory: the gallery (N x d float32) plus one chunk of ``chunk_size`` query rows x N similarities
(float32) and their int32 bin indices; no N x N matrix is held. Queries are visited class by
class (a stable sort of the labels), so a chunk touches a short, contiguous run of classes and
its histogram update is one ``bincount`` over (class in chunk, bin).

Neighbour order: by similarity, descending; ties are broken by ascending gallery index (the
order a stable sort of -s gives). ``topk`` alone does not promise any tie order, so the top
K + 1 are fetched: entries tied inside the top K are re-sorted by index, and a row whose K-th
and (K+1)-th values are equal (a tie straddling the cut) is re-ranked from its full row.
The query itself is excluded (its similarity is set to -inf).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm import tqdm

from tcm.metrics.histograms import ClassHistograms, Grid

# Positive pairs gathered at once; bounds the index tensors when classes are huge.
MAX_PAIRS_PER_STEP = 1 << 23


@dataclass
class RetrievalSums:
    """Per-query sums from which Recall@k, MAP@R and R-precision are averages."""

    n_queries: int = 0
    hits: dict[int, int] = field(default_factory=dict)  # k -> queries with a positive in the top k
    ap_sum: float = 0.0
    r_precision_sum: float = 0.0


@dataclass(frozen=True)
class Labels:
    """Class structure: class index of every image, class sizes, images sorted by class."""

    classes: np.ndarray  # (C,) label values
    inv: np.ndarray  # (N,) class index of each image
    sizes: np.ndarray  # (C,)
    order: np.ndarray  # (N,) image indices sorted by class, ascending index within a class
    starts: np.ndarray  # (C,) offset of each class in ``order``

    @staticmethod
    def of(labels: np.ndarray) -> Labels:
        classes, inv, sizes = np.unique(labels, return_inverse=True, return_counts=True)
        order = np.argsort(inv, kind="stable")
        return Labels(classes, inv.astype(np.int64), sizes.astype(np.int64), order,
                      np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64))


def _rank_chunk(s: torch.Tensor, k: int) -> torch.Tensor:
    """Gallery indices of the k nearest neighbours of each row, ordered by (-s, index)."""
    n = s.shape[1]
    vals, idx = s.topk(min(k + 1, n), dim=1)
    kth = vals[:, k - 1].clone()  # topk sorts descending: the k-th largest value
    straddle = (vals[:, k] == kth) if vals.shape[1] > k else None
    vals, idx = vals[:, :k], idx[:, :k]
    idx, p = idx.sort(dim=1)
    vals = vals.gather(1, p)
    p = vals.sort(dim=1, descending=True, stable=True).indices
    idx = idx.gather(1, p)
    if straddle is not None and bool(straddle.any()):
        for r in straddle.nonzero().flatten().tolist():
            # Every entry >= the k-th value, in index order; a stable sort then gives (-s, index).
            cand = torch.nonzero(s[r] >= kth[r]).flatten()
            idx[r] = cand[torch.sort(s[r, cand], descending=True, stable=True).indices[:k]]
    return idx


def _retrieval_update(sums: dict[str, torch.Tensor], idx: torch.Tensor, inv_t: torch.Tensor, qcls: torch.Tensor,
                      r: torch.Tensor, recall_k: list[int]) -> None:
    rel = inv_t[idx] == qcls[:, None]  # (Q, K) is the i-th neighbour a positive
    valid = r > 0  # singleton classes are not queries
    ranks = torch.arange(1, idx.shape[1] + 1, device=idx.device, dtype=torch.float64)
    rel_r = rel & (ranks[None, :] <= r[:, None])  # positives among the first R
    rr = r.clamp(min=1).to(torch.float64)
    ap = (rel.cumsum(1) / ranks * rel_r).sum(1) / rr
    sums["n"] += valid.sum()
    sums["ap"] += ap[valid].sum()
    sums["rp"] += (rel_r.sum(1) / rr)[valid].sum()
    for k in recall_k:
        sums[f"hit{k}"] += (rel[:, :k].any(1) & valid).sum()


def scan(x: torch.Tensor, lab: Labels, grid: Grid, recall_k: list[int] | None, chunk_size: int,
         query_rows: np.ndarray | None = None, pooled: bool = False, progress: bool = False,
         desc: str = "similarities", histograms: bool = True) -> tuple[RetrievalSums | None, ClassHistograms]:
    """Visit every query row (or ``query_rows``) against the whole gallery ``x`` (unit rows).

    Returns the retrieval sums (None when ``recall_k`` is None) and the per-class histograms on
    ``grid`` (one pooled row when ``pooled``: used for the quick pilot that places the window;
    all zero when not ``histograms``).
    """
    device = x.device
    n = x.shape[0]
    if query_rows is None:
        queries = lab.order
    else:
        picked = np.sort(query_rows)
        queries = picked[np.argsort(lab.inv[picked], kind="stable")]
    inv_t = torch.from_numpy(lab.inv).to(device)
    sizes_t = torch.from_numpy(lab.sizes).to(device)
    starts_t = torch.from_numpy(lab.starts).to(device)
    order_t = torch.from_numpy(lab.order).to(device)
    n_rows = 1 if pooled else len(lab.sizes)
    slots = grid.n_slots
    # int32 counts halve the memory when no count can pass 2^31 (largest class x gallery).
    rows_per_count = len(queries) if pooled else int(lab.sizes.max())
    dtype = torch.int32 if rows_per_count * n < 2**31 - 1 else torch.int64
    all_counts = torch.zeros(n_rows, slots, dtype=dtype, device=device)
    pos_counts = torch.zeros(n_rows, slots, dtype=dtype, device=device)

    k_max = None
    if recall_k is not None:
        k_max = int(min(n - 1, max(max(recall_k), int(lab.sizes.max()) - 1)))
        sums = {key: torch.zeros((), dtype=torch.float64, device=device) for key in ("n", "ap", "rp")}
        sums.update({f"hit{k}": torch.zeros((), dtype=torch.int64, device=device) for k in recall_k})

    chunk = max(1, min(chunk_size, len(queries)))
    s_buf = torch.empty(chunk, n, dtype=torch.float32, device=device)
    i_buf = torch.empty(chunk if histograms else 0, n, dtype=torch.int32, device=device)
    lo, hi = float(grid.j_lo - 1), float(grid.j_lo + grid.n_bins)  # underflow / overflow bins
    xt = x.T
    starts = range(0, len(queries), chunk)
    for a in tqdm(starts, desc=desc, disable=not progress, file=sys.stderr, leave=False, mininterval=1.0,
                  unit="chunk"):
        q = torch.from_numpy(queries[a:a + chunk]).to(device)
        m = len(q)
        s, bins = s_buf[:m], i_buf[:m]
        # Similarities in bin units: scaling by 2^e is exact, so order and ties are those of s.
        torch.mm(x.index_select(0, q).mul_(grid.scale), xt, out=s)
        rows = torch.arange(m, device=device)
        s[rows, q] = float("-inf")  # no self-matches
        qcls = inv_t[q]
        if recall_k is not None:
            _retrieval_update(sums, _rank_chunk(s, k_max), inv_t, qcls, sizes_t[qcls] - 1, recall_k)

        if not histograms:
            continue
        # Bin index of every similarity, offset by the class's row in this chunk's histogram.
        c0 = int(qcls[0]) if not pooled else 0
        n_cls = 1 if pooled else int(qcls[-1]) - c0 + 1
        s.clamp_(lo, hi).floor_()
        bins.copy_(s)
        offset = (qcls - c0) * slots if not pooled else torch.zeros_like(qcls)
        bins.add_((offset - (grid.j_lo - 1)).to(torch.int32)[:, None])
        all_counts[c0:c0 + n_cls] += torch.bincount(bins.view(-1), minlength=n_cls * slots).view(n_cls, slots).to(dtype)

        # Positive pairs: row r's class members, read from the binned chunk.
        cnt = sizes_t[qcls]
        cum = torch.cumsum(cnt, 0).cpu().numpy()
        r0 = 0
        while r0 < m:
            base = cum[r0 - 1] if r0 else 0
            r1 = max(r0 + 1, int(np.searchsorted(cum, base + MAX_PAIRS_PER_STEP, side="right")))
            c = cnt[r0:r1]
            pr = torch.repeat_interleave(torch.arange(r0, r1, device=device), c)
            first = torch.cumsum(c, 0) - c
            within = torch.arange(len(pr), device=device) - torch.repeat_interleave(first, c)
            pc = order_t[torch.repeat_interleave(starts_t[qcls[r0:r1]], c) + within]
            counts = torch.bincount(bins[pr, pc], minlength=n_cls * slots)
            pos_counts[c0:c0 + n_cls] += counts.view(n_cls, slots).to(dtype)
            r0 = r1

    result = None
    if recall_k is not None:
        result = RetrievalSums(int(sums["n"].item()), {k: int(sums[f"hit{k}"].item()) for k in recall_k},
                               float(sums["ap"].item()), float(sums["rp"].item()))
    if pooled:
        # Pilot: the pooled counts stand as one "class" of the queried rows.
        q_sizes = lab.sizes[lab.inv[queries]]
        sizes = np.array([len(queries)])
        hist = _PooledHistograms(grid, np.array([-1]), sizes, all_counts.cpu().numpy(), pos_counts.cpu().numpy(),
                                 int((n - q_sizes).sum()))
        return result, hist
    return result, ClassHistograms(grid, lab.classes, lab.sizes, all_counts.cpu().numpy(), pos_counts.cpu().numpy())


@dataclass(frozen=True)
class _PooledHistograms(ClassHistograms):
    """Pilot histograms: one pooled row over a sample of query rows."""

    n_negative: int = 0

    @property
    def negative_pairs(self) -> np.ndarray:
        return np.array([self.n_negative])
