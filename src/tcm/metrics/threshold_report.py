"""Threshold report: what one global threshold does to each class.

The threshold t* is the lowest grid edge at which the overall FAR (pooled negatives with
s >= t) is at most ``target_far`` on the test set itself, i.e. the (1 - target_far) quantile of
the negative similarities rounded up to the histogram grid (within one bin width w of it).
At t*, for every class i

    FAR_i = negatives of i accepted / negatives of i      (every class: all have negatives)
    FRR_i = positives of i rejected / positives of i      (classes with a positive pair)

and each rate is summarised over the classes (:func:`class_rate_summary`) as min, median, max and
``worst_share``: the mean of the worst ceil(worst_share * C) classes (highest values), the same
"worst 5%" as eps-OPIS. (Not :class:`tcm.stats.Spread`, which summarises a metric over seeds.)
"""

from __future__ import annotations

import math

import numpy as np

from tcm.metrics.histograms import ClassHistograms


def class_rate_summary(values: np.ndarray, worst_share: float = 0.05) -> dict[str, float]:
    """One rate over the classes: min, median, max and the mean of the worst (highest)
    ceil(worst_share * n) values (metrics.json's ``class_far`` / ``class_frr``).

    >>> class_rate_summary(np.array([0.0, 0.1, 0.2, 0.9]), 0.25)  # worst 1 of 4
    {'min': 0.0, 'median': 0.15000000000000002, 'max': 0.9, 'worst_share_mean': 0.9}
    """
    v = np.sort(np.asarray(values, dtype=np.float64))
    n = max(1, math.ceil(worst_share * len(v)))
    return {"min": float(v[0]), "median": float(np.median(v)), "max": float(v[-1]),
            "worst_share_mean": float(v[-n:].mean())}


def threshold_report(hist: ClassHistograms, target_far: float = 1e-3, worst_share: float = 0.05) -> dict:
    """The global threshold at ``target_far`` and the per-class FAR and FRR at it, each summarised over the
    classes (:func:`class_rate_summary`)."""
    local = hist.threshold_at_far(target_far)
    pos, neg = hist.at_least(np.array([local]))
    n_pos, n_neg = hist.positive_pairs, hist.negative_pairs
    far = neg[:, 0] / n_neg
    has_pos = n_pos > 0
    frr = 1.0 - pos[has_pos, 0] / n_pos[has_pos]
    return {
        "target_far": target_far,
        "threshold": float(hist.grid.edges()[local - 1]),
        "resolution": hist.grid.width,
        "overall_far": float(neg[:, 0].sum() / n_neg.sum()),
        "overall_frr": float(1.0 - pos[:, 0].sum() / n_pos.sum()),
        "worst_share": worst_share,
        "class_far": class_rate_summary(far, worst_share),
        "class_frr": class_rate_summary(frr, worst_share),
        "num_classes_far": int(len(far)),
        "num_classes_frr": int(has_pos.sum()),
    }
