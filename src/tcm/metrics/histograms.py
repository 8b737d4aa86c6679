"""Per-class histograms of positive and negative cosine similarities on a dyadic grid.

The grid has bin width w = 2^-e (e = ``exponent``; 2^-14 ~ 6.1e-5 by default). Bin j holds the
similarities s with j*w <= s < (j+1)*w. Only a window of bins [j_lo, j_lo + B) is stored; local
index 0 collects everything below the window (underflow) and B + 1 everything at or above it
(overflow). So for every grid edge t = (j_lo + i - 1) * w, i = 1 .. B + 1,

    #{s >= t} = sum of local bins i .. B + 1        (exact: no similarity is split by an edge)

which is why every threshold the metrics use is a grid edge: counts there are exact, and the
only approximation is that a threshold defined by a quantile is rounded to the grid (by < w).
w is a power of two so that scaling the query rows by 1/w before the matrix product gives
similarities in bin units bit-for-bit (power-of-two scaling is exact in floating point).

For class c the histograms count ordered pairs (a, b), a in c, b != a: ``all_counts`` every b,
``pos_counts`` b in c; negatives are the difference. Self-matches are set to -inf and land in
the underflow bin, which no count above uses.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Grid:
    """Histogram window: bins j_lo .. j_lo + n_bins - 1 of width 2^-exponent, plus under/overflow."""

    exponent: int
    j_lo: int
    n_bins: int

    @property
    def width(self) -> float:
        """Bin width w = 2^-exponent (the threshold resolution)."""
        return 2.0 ** -self.exponent

    @property
    def scale(self) -> float:
        """Similarity -> bin units."""
        return 2.0**self.exponent

    @property
    def n_slots(self) -> int:
        """Stored counts per class: underflow, n_bins, overflow."""
        return self.n_bins + 2

    def edges(self) -> np.ndarray:
        """Grid edges t_i = (j_lo + i - 1) w for local indices i = 1 .. n_bins + 1.

        >>> Grid(2, -1, 2).edges().tolist()
        [-0.25, 0.0, 0.25]
        """
        return (self.j_lo + np.arange(self.n_bins + 1)) * self.width

    def local_index(self, thresholds: np.ndarray) -> np.ndarray:
        """Local index i of the grid edge nearest to each threshold, clipped to the window."""
        j = np.rint(np.asarray(thresholds, dtype=np.float64) * self.scale).astype(np.int64)
        return np.clip(j - self.j_lo + 1, 1, self.n_bins + 1)

    @staticmethod
    def covering(lo: float, hi: float, exponent: int) -> Grid:
        """The smallest window of width-2^-exponent bins with lo and hi among its edges."""
        s = 2.0**exponent
        j_lo, j_hi = int(np.floor(lo * s)), int(np.ceil(hi * s))
        return Grid(exponent, j_lo, max(j_hi - j_lo, 1))


@dataclass(frozen=True)
class ClassHistograms:
    """Counts of ordered pairs by class of the first image and similarity bin (see module doc)."""

    grid: Grid
    classes: np.ndarray  # (C,) label of each class
    sizes: np.ndarray  # (C,) images per class
    all_counts: np.ndarray  # (C, n_slots) pairs (a in c, b != a)
    pos_counts: np.ndarray  # (C, n_slots) pairs (a in c, b in c, b != a)

    @property
    def n_images(self) -> int:
        return int(self.sizes.sum())

    @property
    def positive_pairs(self) -> np.ndarray:
        """n_c (n_c - 1) ordered positive pairs per class."""
        return self.sizes * (self.sizes - 1)

    @property
    def negative_pairs(self) -> np.ndarray:
        """n_c (N - n_c) ordered negative pairs per class."""
        return self.sizes * (self.n_images - self.sizes)

    def at_least(self, local: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(positive, negative) pair counts with s >= edge(i), each (C, len(local)), for local
        edge indices i (1 .. n_bins + 1). One pass over the counts: suffix sums between the
        requested edges only, so no (C, n_slots) cumulative array is made."""
        local = np.asarray(local, dtype=np.int64)
        order = np.argsort(local)
        pos = np.zeros((len(self.sizes), len(local)), dtype=np.int64)
        neg = np.zeros_like(pos)
        p_run = np.zeros(len(self.sizes), dtype=np.int64)
        a_run = np.zeros(len(self.sizes), dtype=np.int64)
        stop = self.grid.n_slots
        for k in order[::-1]:
            i = int(local[k])
            p_run += self.pos_counts[:, i:stop].sum(axis=1, dtype=np.int64)
            a_run += self.all_counts[:, i:stop].sum(axis=1, dtype=np.int64)
            stop = i
            pos[:, k], neg[:, k] = p_run, a_run - p_run
        return pos, neg

    def pooled_far(self) -> np.ndarray:
        """Overall FAR at every grid edge (local 1 .. n_bins + 1): pooled negatives with s >= t."""
        neg = (self.all_counts.sum(axis=0, dtype=np.int64) - self.pos_counts.sum(axis=0, dtype=np.int64))[1:]
        ge = np.cumsum(neg[::-1])[::-1]
        return ge / self.negative_pairs.sum()

    def threshold_at_far(self, far: float) -> int:
        """Local index of the lowest grid edge t with overall FAR(t) <= far.

        This is the (1 - far) quantile of the pooled negative similarities rounded up to the grid:
        it lies within one bin width of ``np.quantile(negatives, 1 - far)``.
        """
        f = self.pooled_far()
        ok = np.flatnonzero(f <= far)
        return int(ok[0]) + 1 if len(ok) else self.grid.n_bins + 1

    def covers(self, fars: list[float]) -> bool:
        """True when every requested FAR is crossed strictly inside the window, i.e. the
        histogram pins each of those thresholds to within one bin."""
        f = self.pooled_far()
        return bool(f[0] > max(fars) and f[-1] <= min(fars))
