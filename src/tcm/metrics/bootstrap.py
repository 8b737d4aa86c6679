"""Precision of OPIS on one test set: a class-stratified bootstrap over the test queries; and the
median cosine of the positive and of the negative pairs.

Method. The evaluation's pairs are (query a, gallery b), a != b: every test image is a query and the
whole test split is the gallery. A bootstrap replicate keeps the gallery and redraws the queries
*within each class*: class c's n_c queries are n_c draws with replacement from its n_c images (a
query drawn k times counts its pairs k times). So every class keeps its size and its numbers of
positive and negative pairs, which OPIS's definition fixes. Each replicate's OPIS and eps-OPIS are
computed as the evaluation's (``tcm.metrics.opis``): the pooled FAR of the replicate's negative
pairs, calibration thresholds where that FAR is in ``far_range`` (``n_thresholds`` evenly spaced
grid edges, each end the lowest edge with FAR at most that value), per-class TPR / TNR / utility
with ``beta``, the same class weighting and ``eps``. The bootstrap sd is the sample sd (n - 1) of
the replicates: the sampling error of OPIS from the finite number of test queries per class. It
does not cover the choice of test classes, nor training randomness (the spread over seeds does).
The draws come from ``numpy.random.default_rng(seed)``, in blocks of :data:`BLOCK` replicates.

Efficient form. One chunked pass over the similarities (:func:`query_pass`) stores, for every query,
its positive and its negative pairs with s >= t at every edge t of a histogram grid (suffix sums
of its own histograms; int32, one row per edge, one column per query). A replicate's counts at an
edge are sums of its drawn queries' entries, so: the pooled FAR's crossings are found by a binary
search over the edges (O(N log B) per replicate), the per-class counts at the T thresholds by one
(T x N) gather and a sum per class (O(N T)); nothing per replicate is O(N^2).

Grid. The evaluation's histogram window and bin width, coarsened by powers of two while the two
per-query arrays would pass ``max_bytes`` (:func:`bootstrap_grid`); on the evaluation's own grid a
replicate that draws every query once gives exactly the evaluation's OPIS. A replicate whose
calibration range is not crossed strictly inside the window has its threshold clipped to the window's
edge (as the evaluation's histograms would); such replicates are counted (``off_window``).

Medians. The same pass bins every pair, pooled, on a grid over [-1, 1] of width 2^-``median_exponent``;
a median is read off as the midpoint of the bin holding the middle pair (the mean of the two
middle pairs' midpoints for an even count): within half a bin width of the exact median.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch

from tcm.metrics.histograms import Grid
from tcm.metrics.opis import ClassWeighting, curves_from_counts, eps_opis, opis
from tcm.metrics.scan import Labels

BLOCK = 16  # replicates drawn and counted at a time (the draws' layout: see module doc)
MAX_BYTES = 256 * 2**20  # the two per-query suffix arrays (int32)
MIN_EXPONENT = 6  # coarsest per-query grid: bins of 2^-6 ~ 0.016
# Cells (query rows x max(gallery, slots)) per chunk of the query pass: small on the CPU, where the
# chunk's arrays then stay in cache (2^19: 3-5x faster than whole-matrix chunks at N = 2,000).
PASS_CELLS = {"cpu": 2**19, "other": 2**25}


@dataclass(frozen=True)
class QueryCounts:
    """Per query, its pairs with s >= edge(i) for every local edge index i of ``grid`` (row 0 unused)."""

    grid: Grid
    labels: Labels
    pos_ge: np.ndarray  # (n_slots, N) int32: positive pairs (b in the query's class, b != a)
    neg_ge: np.ndarray  # (n_slots, N) int32: negative pairs (b in another class)


@dataclass(frozen=True)
class PairMedians:
    """Median cosine of the ordered negative and positive pairs (NaN where there are none)."""

    negative: float
    positive: float
    resolution: float  # bin width behind them: each is within half of it of the exact median


@dataclass(frozen=True)
class BootstrapResult:
    opis: np.ndarray  # (R,) OPIS of each replicate
    eps_opis: np.ndarray  # (R,)
    resolution: float  # bin width of the grid the replicates were computed on
    off_window: int  # replicates whose calibration range left the grid's window (thresholds clipped)

    @property
    def opis_sd(self) -> float:
        return float(np.std(self.opis, ddof=1))

    @property
    def eps_opis_sd(self) -> float:
        return float(np.std(self.eps_opis, ddof=1))


def bootstrap_grid(grid: Grid, n_queries: int, max_bytes: int = MAX_BYTES) -> Grid:
    """``grid``'s window at its bin width, or coarser by powers of two until the per-query arrays
    (2 x 4 bytes x queries x slots) fit in ``max_bytes`` (never coarser than 2^-MIN_EXPONENT).

    >>> bootstrap_grid(Grid(14, 0, 4096), 100).exponent, bootstrap_grid(Grid(14, 0, 4096), 10**5).exponent
    (14, 10)
    """
    lo, hi = float(grid.edges()[0]), float(grid.edges()[-1])
    exponent = grid.exponent
    while True:
        g = Grid.covering(lo, hi, exponent)
        if 8 * n_queries * g.n_slots <= max_bytes or exponent <= MIN_EXPONENT:
            return g
        exponent -= 1


def _median(counts: np.ndarray, grid: Grid) -> float:
    """Median of the values counted by slot (under/overflow read as the window's edges)."""
    total = int(counts.sum())
    if total == 0:
        return math.nan
    cum = np.cumsum(counts)
    slots = np.searchsorted(cum, [(total + 1) // 2, total // 2 + 1])  # 1-based ranks of the middle values
    edges = grid.edges()
    mids = [edges[0] if i == 0 else edges[-1] if i == grid.n_slots - 1 else edges[i - 1] + grid.width / 2
            for i in slots]
    return float(np.mean(mids))


def _slots(s: torch.Tensor, grid: Grid, factor: float) -> torch.Tensor:
    """Local slot (0 .. n_bins + 1) of each similarity ``s`` given in units of ``1 / factor`` bins
    (``factor`` a power of two, so the rescaling is exact); int32."""
    lo, hi = float(grid.j_lo - 1), float(grid.j_lo + grid.n_bins)
    b = (s * factor).clamp_(lo, hi).floor_()
    return b.sub_(lo).to(torch.int32)


def query_pass(x: torch.Tensor, lab: Labels, grid: Grid | None,
               median_exponent: int) -> tuple[QueryCounts | None, PairMedians]:
    """One pass over the (N, d) unit rows ``x`` (every row a query against all others): the per-query
    suffix counts on ``grid`` (None: skip them) and the pooled median cosines of the negative and
    positive pairs (bins of 2^-``median_exponent``).

    The chunks are sized here (:data:`PASS_CELLS`), not by the evaluation's ``chunk_size``: a matrix
    product's rounding can depend on its number of rows, and the counts should not depend on a
    memory setting."""
    device = x.device
    n = x.shape[0]
    median_grid = Grid.covering(-1.0, 1.0 + 2.0**-median_exponent, median_exponent)
    finest = max(median_exponent, grid.exponent if grid is not None else 0)
    scale = 2.0**finest
    inv_t = torch.from_numpy(lab.inv).to(device)
    med_all = torch.zeros(median_grid.n_slots, dtype=torch.int64, device=device)
    med_pos = torch.zeros_like(med_all)
    slots = grid.n_slots if grid is not None else 0
    pos_ge = np.empty((slots, n), dtype=np.int32) if grid is not None else None
    neg_ge = np.empty((slots, n), dtype=np.int32) if grid is not None else None
    cells = PASS_CELLS["cpu" if device.type == "cpu" else "other"]
    chunk = int(max(1, min(n, cells // max(n, slots))))
    xt = x.T
    for a in range(0, n, chunk):
        b = min(n, a + chunk)
        m = b - a
        rows = torch.arange(a, b, device=device)
        s = torch.mm(x[a:b] * scale, xt)  # bin units of the finest grid: exact power-of-two scaling
        s[torch.arange(m, device=device), rows] = float("-inf")  # no self-matches (they fall in slot 0)
        same = inv_t[a:b, None] == inv_t[None, :]
        mb = _slots(s, median_grid, 2.0 ** (median_exponent - finest))
        med_all += torch.bincount(mb.reshape(-1), minlength=median_grid.n_slots)
        med_pos += torch.bincount(mb[same], minlength=median_grid.n_slots)
        del mb
        if grid is None:
            continue
        gb = _slots(s, grid, 2.0 ** (grid.exponent - finest))
        gb += (torch.arange(m, device=device, dtype=torch.int32) * slots)[:, None]
        all_c = torch.bincount(gb.reshape(-1), minlength=m * slots).view(m, slots)
        pos_c = torch.bincount(gb[same], minlength=m * slots).view(m, slots)
        del gb
        neg_c = all_c - pos_c
        for counts, out in ((pos_c, pos_ge), (neg_c, neg_ge)):
            counts[:, 0] = 0  # slot 0: pairs below the window (and the self-match); no edge reads it
            suffix = counts.flip(1).cumsum(1).flip(1)
            out[:, a:b] = suffix.T.to(torch.int32).cpu().numpy()
    med_all, med_pos = med_all.cpu().numpy(), med_pos.cpu().numpy()
    med_all[0] -= n  # the self-matches
    med_pos[0] -= n
    medians = PairMedians(_median(med_all - med_pos, median_grid), _median(med_pos, median_grid),
                          median_grid.width)
    counts = QueryCounts(grid, lab, pos_ge, neg_ge) if grid is not None else None
    return counts, medians


def replicate_queries(lab: Labels, resamples: int, seed: int) -> Iterator[np.ndarray]:
    """The bootstrap's query draws, in blocks of at most :data:`BLOCK` replicates: (B, N) image
    indices, each row laid out by class as ``lab.order`` (class c's block holds n_c draws with
    replacement from class c's images)."""
    rng = np.random.default_rng(seed)
    cls = np.repeat(np.arange(len(lab.sizes)), lab.sizes)
    first = lab.starts[cls]
    for start in range(0, resamples, BLOCK):
        draws = rng.integers(0, lab.sizes[cls], size=(min(BLOCK, resamples - start), len(cls)))
        yield lab.order[first + draws]


def _crossings(neg_ge: np.ndarray, idx: np.ndarray, total: int, far: float) -> np.ndarray:
    """Per replicate (row of ``idx``): the lowest local edge i in 1 .. n_bins + 1 whose pooled FAR
    (negative pairs with s >= edge(i) over ``total``) is at most ``far``; n_bins + 1 when none is
    (``ClassHistograms.threshold_at_far``'s rule, by binary search: the FAR falls with i)."""
    last = neg_ge.shape[0] - 1  # n_bins + 1
    lo = np.ones(len(idx), dtype=np.int64)
    hi = np.full(len(idx), last, dtype=np.int64)
    rows = np.arange(len(idx))
    while True:
        active = rows[lo < hi]
        if not len(active):
            return lo
        mid = (lo[active] + hi[active]) // 2
        count = neg_ge[mid[:, None], idx[active]].sum(axis=1, dtype=np.int64)
        ok = count / total <= far
        hi[active] = np.where(ok, mid, hi[active])
        lo[active] = np.where(ok, lo[active], mid + 1)


def bootstrap_opis(counts: QueryCounts, resamples: int, seed: int = 0, *, beta: float = 1.0,
                   far_range: tuple[float, float] = (1e-2, 1e-1), n_thresholds: int = 101, eps: float = 0.05,
                   class_weighting: ClassWeighting = "uniform") -> BootstrapResult:
    """OPIS and eps-OPIS of ``resamples`` (>= 2) class-stratified bootstrap replicates of the queries
    (module doc), with the evaluation's settings under its names."""
    if resamples < 2:
        raise ValueError(f"bootstrap resamples: expected at least 2 (an sd needs two), but got {resamples}")
    lab, grid = counts.labels, counts.grid
    n = len(lab.inv)
    n_pos = lab.sizes * (lab.sizes - 1)
    n_neg = lab.sizes * (n - lab.sizes)
    total = int(n_neg.sum())
    edges = grid.edges()
    last = grid.n_slots - 1
    out_opis, out_eps = [], []
    off = 0
    for idx in replicate_queries(lab, resamples, seed):
        lo, hi = _crossings(counts.neg_ge, idx, total, far_range[1]), _crossings(counts.neg_ge, idx, total,
                                                                                   far_range[0])
        # The window pins a crossing when the FAR is above far_range[1] at its lowest edge and at most
        # far_range[0] at its highest (ClassHistograms.covers).
        far_first = counts.neg_ge[1][idx].sum(axis=1, dtype=np.int64) / total
        far_last = counts.neg_ge[last][idx].sum(axis=1, dtype=np.int64) / total
        off += int(((far_first <= far_range[1]) | (far_last > far_range[0])).sum())
        for r in range(len(idx)):
            local = np.rint(np.linspace(lo[r], hi[r], n_thresholds)).astype(np.int64)
            cols = idx[r]
            pos = np.add.reduceat(counts.pos_ge[local][:, cols], lab.starts, axis=1, dtype=np.int64).T
            neg = np.add.reduceat(counts.neg_ge[local][:, cols], lab.starts, axis=1, dtype=np.int64).T
            curves = curves_from_counts(edges[local - 1], np.ascontiguousarray(pos), np.ascontiguousarray(neg),
                                        n_pos, n_neg, lab.classes, beta, grid.width)
            out_opis.append(opis(curves, class_weighting))
            out_eps.append(eps_opis(curves, eps))
    return BootstrapResult(np.array(out_opis), np.array(out_eps), grid.width, off)
