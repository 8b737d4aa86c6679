"""One pass over the similarities, chunk by chunk: ranked neighbours for the retrieval metrics
and per-class similarity histograms for the threshold metrics.

Queries are visited class by class (a stable sort of the labels), so a chunk touches a short,
contiguous run of classes and its histogram update is one ``bincount`` over (class in chunk, bin).
Each chunk's positive pairs are gathered from its similarities (bin units) and binned the same
way. Slot 0 of each class (underflow: every pair below the window, self-matches included; no
metric reads it) is not counted cell by cell but set at the end to the exact remainder: pairs
scanned minus those counted in slots 1 .. n_bins + 1. Two binnings, with the same counts:

- ``dense`` (the CPU's): the chunk is clamped to the window, floored, converted to int32 in place
  (an int32 view of the same buffer), offset by class, and every cell counted; ``bincount`` runs
  on one thread, so the chunk's rows are split over the intra-op threads. Selecting only the
  cells in the window (``masked_select``, ``nonzero``) costs the CPU several times what it saves.
- ``compact`` (the default elsewhere): only the cells at or above the window's lower edge (~21 %
  in benchmarks/eval_scale.py's data) are selected, binned and counted, so that a GPU's
  ``bincount`` atomics do not all land on the underflow slots; at most a quarter of the chunk is
  selected per step, and a chunk with more than half of its cells in the window is binned dense.

Memory: the gallery (N x d float32) plus, for one chunk of ``chunk_size`` query rows x N, the
float32 similarities (4 bytes per cell); ``compact`` adds a bool mask (1 byte) and per step up to
16 bytes per selected cell (values, their int64 index, class offsets), i.e. at most 4 bytes per
cell of the chunk (its dense fallback off the CPU: an int32 block, 4 bytes per cell): 9 in all
(``tcm.metrics.inputs.BYTES_PER_CELL``). No N x N matrix is held.

Neighbour order: by similarity, descending; ties are broken by ascending gallery index (the
order a stable sort of -s gives). ``topk`` alone does not promise any tie order, so the top
K + 1 are fetched: entries tied inside the top K are re-sorted by index, and a row whose K-th
and (K+1)-th values are equal (a tie straddling the cut) is re-ranked from its full row.
The query itself is excluded (its similarity is set to -inf).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import torch

from tcm.metrics.histograms import ClassHistograms, Grid
from tcm.progress import Progress

# Positive pairs gathered at once; bounds the index tensors when classes are huge.
MAX_PAIRS_PER_STEP = 1 << 23
# CPU chunks of at least this many cells split their bincount over the intra-op threads.
POOL_MIN_CELLS = 1 << 22


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


def _bincount(b: torch.Tensor, length: int, pool: ThreadPoolExecutor | None, parts: int) -> torch.Tensor:
    """``bincount`` of every entry of the 2-D int32 block ``b`` (``length`` bins, int64). On the
    CPU ``bincount`` runs on one thread, so with a ``pool`` the rows are split into ``parts``
    counted side by side (torch releases the GIL) and the counts summed."""
    if pool is None or parts < 2 or b.shape[0] < parts:
        return torch.bincount(b.reshape(-1), minlength=length)
    cut = np.linspace(0, b.shape[0], parts + 1).round().astype(int)
    futures = [pool.submit(torch.bincount, b[r0:r1].reshape(-1), minlength=length) for r0, r1 in zip(cut, cut[1:])]
    return sum(f.result() for f in futures)


def _bin_selected(v: torch.Tensor, off: torch.Tensor, hi: float, length: int) -> torch.Tensor:
    """Counts of the 1-D similarities ``v`` (bin units, every one at or above the window's lower
    edge; modified in place) in slots ``off + local bin``: ``off`` is the class's offset minus
    the bin index of local slot 0, per entry (int32)."""
    b = v.clamp_max_(hi).floor_().to(torch.int32)  # floored before the offset: exact
    return torch.bincount(b.add_(off), minlength=length)


def _count_dense(s: torch.Tensor, row_off: torch.Tensor, lo: float, hi: float, length: int,
                 pool: ThreadPoolExecutor | None, parts: int) -> torch.Tensor:
    """Counts of every cell of the chunk ``s`` (m x N, bin units) in slots (class offset of its row
    + local bin). ``s`` is overwritten: on the CPU it is binned in place (its int32 view then holds
    the slot indices); elsewhere the indices are a new int32 block."""
    s.clamp_(lo, hi)
    if lo < 0:
        s.floor_()  # for s >= 0 the int conversion's truncation is the floor already
    if s.device.type == "cpu":
        b = s.view(torch.int32)
        b.copy_(s)  # element by element onto itself (checked on the CPU): no second (m x N) buffer
    else:
        b = s.to(torch.int32)
    b.add_(row_off[:, None])
    return _bincount(b, length, pool, parts)


def _count_compact(s: torch.Tensor, row_off: torch.Tensor, lo: float, hi: float, length: int) -> torch.Tensor:
    """As ``_count_dense``, but only the cells in the window or above it go through ``bincount``
    (the underflow slot is left at 0), selected at most a quarter of the chunk at a time. A
    chunk with more than half of its cells in the window is binned dense instead."""
    m, n = s.shape
    j_lo = lo + 1  # lower edge of the window, bin units
    mask = torch.ge(s, j_lo)
    per_row = mask.sum(1)
    cum = torch.cumsum(per_row, 0).cpu().numpy()  # the chunk's one host sync besides masked_select's
    if 2 * int(cum[-1]) > m * n:
        del mask
        return _count_dense(s, row_off, lo, hi, length, None, 1)
    counts = torch.zeros(length, dtype=torch.int64, device=s.device)
    cap = max(n, m * n // 4)
    r0 = 0
    while r0 < m:
        base = int(cum[r0 - 1]) if r0 else 0
        r1 = max(r0 + 1, int(np.searchsorted(cum, base + cap, side="right")))
        k = int(cum[r1 - 1]) - base
        if k:
            v = s[r0:r1].reshape(-1).masked_select(mask[r0:r1].reshape(-1))
            off = torch.repeat_interleave(row_off[r0:r1], per_row[r0:r1], output_size=k)
            counts += _bin_selected(v, off, hi, length)
        r0 = r1
    return counts


def scan(x: torch.Tensor, lab: Labels, grid: Grid, recall_k: list[int] | None, chunk_size: int,
         query_rows: np.ndarray | None = None, pooled: bool = False, progress: bool = False,
         desc: str = "similarities", histograms: bool = True,
         binning: str = "auto") -> tuple[RetrievalSums | None, ClassHistograms]:
    """Visit every query row (or ``query_rows``) against the whole gallery ``x`` (unit rows).

    Returns the retrieval sums (None when ``recall_k`` is None) and the per-class histograms on
    ``grid`` (one pooled row when ``pooled``: used for the quick pilot that places the window;
    all zero when not ``histograms``). ``binning``: "dense", "compact" or "auto" (dense on the
    CPU, compact elsewhere; see the module doc); the counts are the same either way.
    """
    if binning not in ("auto", "dense", "compact"):
        raise ValueError(f"binning: expected 'auto', 'dense' or 'compact', but got {binning!r}")
    device = x.device
    compact = binning == "compact" or (binning == "auto" and device.type != "cpu")
    n = x.shape[0]
    if query_rows is None:
        queries = lab.order
    else:
        picked = np.sort(query_rows)
        queries = picked[np.argsort(lab.inv[picked], kind="stable")]
    queries_t = torch.from_numpy(queries).to(device)
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
    lo_bin = grid.j_lo - 1  # bin index of local slot 0 (underflow); j_lo + n_bins: overflow
    lo, hi = float(lo_bin), float(grid.j_lo + grid.n_bins)
    parts = torch.get_num_threads() if device.type == "cpu" and not compact else 1
    pool = ThreadPoolExecutor(parts) if histograms and parts > 1 and chunk * n >= POOL_MIN_CELLS else None
    xt = x.T
    starts = range(0, len(queries), chunk)
    try:
        for a in Progress(starts, desc, enabled=progress, unit="chunk"):
            q_np, q = queries[a:a + chunk], queries_t[a:a + chunk]
            m = len(q)
            s = s_buf[:m]
            # Similarities in bin units: scaling by 2^e is exact, so order and ties are those of s.
            torch.mm(x.index_select(0, q).mul_(grid.scale), xt, out=s)
            s[torch.arange(m, device=device), q] = float("-inf")  # no self-matches
            qcls = inv_t[q]
            if recall_k is not None:
                _retrieval_update(sums, _rank_chunk(s, k_max), inv_t, qcls, sizes_t[qcls] - 1, recall_k)

            if not histograms:
                continue
            # Rows are in class order, so the chunk's classes are c0 .. c0 + n_cls - 1 (known on
            # the host) and row r's slots start at (class - c0) * slots.
            qcls_np = lab.inv[q_np]
            c0 = 0 if pooled else int(qcls_np[0])
            n_cls = 1 if pooled else int(qcls_np[-1]) - c0 + 1
            length = n_cls * slots
            row_class = torch.zeros_like(qcls) if pooled else qcls - c0
            row_off = (row_class * slots - lo_bin).to(torch.int32)  # slot index = row_off + bin index

            # Positive pairs first (dense binning overwrites s): row r's class members, gathered
            # from s and binned like every other cell.
            cnt_np = lab.sizes[qcls_np]
            cum = np.cumsum(cnt_np)
            cnt = sizes_t[qcls]
            r0 = 0
            while r0 < m:
                base = int(cum[r0 - 1]) if r0 else 0
                r1 = max(r0 + 1, int(np.searchsorted(cum, base + MAX_PAIRS_PER_STEP, side="right")))
                total = int(cum[r1 - 1]) - base
                c = cnt[r0:r1]
                pr = torch.repeat_interleave(torch.arange(r0, r1, device=device), c, output_size=total)
                first = torch.cumsum(c, 0) - c
                within = torch.arange(total, device=device) - torch.repeat_interleave(first, c, output_size=total)
                pc = order_t[torch.repeat_interleave(starts_t[qcls[r0:r1]], c, output_size=total) + within]
                pv = s[pr, pc]
                keep = pv >= lo + 1  # below the window: the underflow slot, filled at the end
                counts = _bin_selected(pv[keep], row_off[pr][keep], hi, length)
                pos_counts[c0:c0 + n_cls] += counts.view(n_cls, slots).to(dtype)
                r0 = r1

            if compact:
                counts = _count_compact(s, row_off, lo, hi, length)
            else:
                counts = _count_dense(s, row_off, lo, hi, length, pool, parts)
            all_counts[c0:c0 + n_cls] += counts.view(n_cls, slots).to(dtype)
    finally:
        if pool is not None:
            pool.shutdown()

    result = None
    if recall_k is not None:
        result = RetrievalSums(int(sums["n"].item()), {k: int(sums[f"hit{k}"].item()) for k in recall_k},
                               float(sums["ap"].item()), float(sums["rp"].item()))
    all_np, pos_np = all_counts.cpu().numpy(), pos_counts.cpu().numpy()
    q_sizes = lab.sizes[lab.inv[queries]]
    if histograms:
        # Underflow slots: the exact remainder, i.e. every scanned pair below the window
        # (self-matches included): rows of the class x N cells, rows x class size positives.
        rows = np.array([len(queries)]) if pooled else np.bincount(lab.inv[queries], minlength=n_rows)
        pos_total = np.array([q_sizes.sum()]) if pooled else rows * lab.sizes
        all_np[:, 0] = rows * n - all_np[:, 1:].sum(axis=1, dtype=np.int64)
        pos_np[:, 0] = pos_total - pos_np[:, 1:].sum(axis=1, dtype=np.int64)
    if pooled:
        # Pilot: the pooled counts stand as one "class" of the queried rows.
        hist = _PooledHistograms(grid, np.array([-1]), np.array([len(queries)]), all_np, pos_np,
                                 int((n - q_sizes).sum()))
        return result, hist
    return result, ClassHistograms(grid, lab.classes, lab.sizes, all_np, pos_np)


@dataclass(frozen=True)
class _PooledHistograms(ClassHistograms):
    """Pilot histograms: one pooled row over a sample of query rows."""

    n_negative: int = 0

    @property
    def negative_pairs(self) -> np.ndarray:
        return np.array([self.n_negative])
