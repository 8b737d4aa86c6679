"""Threshold consistency: per-class utility-vs-threshold curves, OPIS and eps-OPIS.

A pair (a, b), a != b, is accepted when cos(a, b) >= t. For class i the positives are the
ordered pairs inside class i and the negatives the pairs (a in i, b not in i);
TPR_i(t) / TNR_i(t) are the shares of positives accepted / negatives rejected, and the utility is

    U(t) = (1 + beta^2) * TPR * TNR / (beta^2 * TPR + TNR)        (0 where both are 0)

The overall utility uses all pairs pooled. The calibration range is the thresholds at which the
overall FAR = 1 - TNR lies in ``far_range``, sampled at ``n_thresholds`` evenly spaced points.

    OPIS      = sum_i w_i * mean_t (U_i(t) - U(t))^2,   w_i = 1 / C  (or n_pos_i / sum n_pos)
    eps-OPIS  = mean_t (U_top(t) - U_bottom(t))^2

C counts the classes with at least one positive pair; U_top / U_bottom average the
ceil(eps * C) classes with the highest / lowest mean utility over the range.

Resolution: the curves come from per-class histograms (``tcm.metrics.histograms``) with bin
width w (2^-14 ~ 6.1e-5 by default). Every threshold is a bin edge, so TPR, TNR and utility at
the returned thresholds are exact pair counts (up to float32 rounding of the similarities,
~1e-7); the range ends, being quantiles of the negative similarities, are rounded to the grid
and lie within w of the exact quantiles, and the inner thresholds within w of an exact linspace.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np

if TYPE_CHECKING:  # pandas is imported only where the table is built
    import pandas

from tcm.metrics.histograms import ClassHistograms

ClassWeighting = Literal["uniform", "positive_pairs"]


@dataclass(frozen=True)
class UtilityCurves:
    thresholds: np.ndarray  # (T,)
    overall_utility: np.ndarray  # (T,)
    overall_tpr: np.ndarray
    overall_tnr: np.ndarray
    classes: np.ndarray  # (C,) labels with at least one positive pair
    class_tpr: np.ndarray  # (C, T)
    class_tnr: np.ndarray  # (C, T)
    class_utility: np.ndarray  # (C, T)
    class_positive_pairs: np.ndarray | None = None  # (C,) for positive-pair weighting
    resolution: float = 0.0  # grid bin width behind the thresholds (0: exact)


def utility(tpr: np.ndarray, tnr: np.ndarray, beta: float = 1.0) -> np.ndarray:
    """Generalised F-score of TPR and TNR.

    >>> float(utility(np.array(0.5), np.array(1.0)))  # 2 * 0.5 * 1 / 1.5
    0.6666666666666666
    """
    tpr, tnr = np.asarray(tpr, dtype=np.float64), np.asarray(tnr, dtype=np.float64)
    den = beta**2 * tpr + tnr
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, (1 + beta**2) * tpr * tnr / np.where(den > 0, den, 1), 0.0)


def calibration_thresholds(hist: ClassHistograms, far_range: tuple[float, float], n_thresholds: int) -> np.ndarray:
    """Local grid indices of ``n_thresholds`` thresholds evenly spaced from overall FAR = far_range[1] up to
    FAR = far_range[0], each end the lowest grid edge at which the FAR is at most that value
    (the (1 - FAR) quantile of the pooled negatives, rounded up to the grid), each inner point
    rounded to the nearest edge."""
    lo, hi = hist.threshold_at_far(far_range[1]), hist.threshold_at_far(far_range[0])
    return np.rint(np.linspace(lo, hi, n_thresholds)).astype(np.int64)


def curves_from_histograms(hist: ClassHistograms, beta: float = 1.0, far_range: tuple[float, float] = (1e-2, 1e-1),
                           n_thresholds: int = 101) -> UtilityCurves:
    """Per-class and overall TPR / TNR / utility at the calibration thresholds."""
    local = calibration_thresholds(hist, far_range, n_thresholds)
    pos, neg = hist.at_least(local)
    return curves_from_counts(hist.grid.edges()[local - 1], pos, neg, hist.positive_pairs, hist.negative_pairs,
                              hist.classes, beta, hist.grid.width)


def curves_from_counts(thresholds: np.ndarray, pos: np.ndarray, neg: np.ndarray, n_pos: np.ndarray,
                       n_neg: np.ndarray, classes: np.ndarray, beta: float = 1.0,
                       resolution: float = 0.0) -> UtilityCurves:
    """The curves from per-class pair counts at the thresholds: ``pos`` / ``neg`` (C, T) positive /
    negative pairs with s >= t, out of ``n_pos`` / ``n_neg`` (C,). Classes without a positive pair
    are left out of the per-class curves (their negatives still count in the pooled curve)."""
    o_tpr = pos.sum(0) / n_pos.sum()
    o_tnr = 1.0 - neg.sum(0) / n_neg.sum()
    keep = n_pos > 0
    tpr = pos[keep] / n_pos[keep, None]
    tnr = 1.0 - neg[keep] / n_neg[keep, None]
    return UtilityCurves(thresholds, utility(o_tpr, o_tnr, beta), o_tpr, o_tnr, classes[keep], tpr, tnr,
                         utility(tpr, tnr, beta), n_pos[keep], resolution)


def class_weights(curves: UtilityCurves, class_weighting: ClassWeighting = "uniform") -> np.ndarray:
    """w_i: 1/C, or each class's share of the positive pairs.

    >>> c = UtilityCurves(*[np.zeros(1)] * 4, np.arange(2), *[np.zeros((2, 1))] * 3, np.array([2, 6]))
    >>> class_weights(c, "positive_pairs").tolist()
    [0.25, 0.75]
    """
    if class_weighting == "uniform":
        return np.full(len(curves.classes), 1.0 / len(curves.classes))
    if class_weighting == "positive_pairs":
        if curves.class_positive_pairs is None:
            raise ValueError("positive_pairs weighting needs curves with class_positive_pairs")
        p = np.asarray(curves.class_positive_pairs, dtype=np.float64)
        return p / p.sum()
    raise ValueError(f"class weighting must be 'uniform' or 'positive_pairs', but got {class_weighting!r}")


def opis(curves: UtilityCurves, class_weighting: ClassWeighting = "uniform") -> float:
    """sum_i w_i mean_t (U_i(t) - U(t))^2.

    >>> c = UtilityCurves(np.zeros(2), np.array([0.5, 0.5]), *[np.zeros(2)] * 2, np.arange(2),
    ...                   np.zeros((2, 2)), np.zeros((2, 2)), np.array([[0.5, 0.5], [0.7, 0.3]]))
    >>> round(opis(c), 6)  # class 0 on the curve; class 1 off by 0.2 twice: (0 + 0.04) / 2
    0.02
    """
    return float(class_weights(curves, class_weighting) @ class_gaps(curves))


def class_gaps(curves: UtilityCurves) -> np.ndarray:
    """Each class's mean squared gap to the pooled utility curve (OPIS is their weighted sum)."""
    return ((curves.class_utility - curves.overall_utility[None, :]) ** 2).mean(axis=1)


def eps_opis(curves: UtilityCurves, eps: float = 0.05) -> float:
    """Mean squared gap between the best and worst eps share of classes (by mean utility; ties in
    the ranking keep label order).

    >>> c = UtilityCurves(np.zeros(1), *[np.zeros(1)] * 3, np.arange(4), *[np.zeros((4, 1))] * 2,
    ...                   np.array([[0.1], [0.2], [0.8], [0.9]]))
    >>> round(eps_opis(c, 0.5), 6)  # top2 mean 0.85, bottom2 0.15: 0.7^2
    0.49
    """
    n = max(1, math.ceil(eps * len(curves.classes)))
    order = np.argsort(curves.class_utility.mean(axis=1), kind="stable")
    bottom = curves.class_utility[order[:n]].mean(axis=0)
    top = curves.class_utility[order[-n:]].mean(axis=0)
    return float(np.mean((top - bottom) ** 2))


def curves_table(curves: UtilityCurves) -> pandas.DataFrame:
    """Long format: one row per (class, threshold); the pooled curve has class 'overall'."""
    import pandas as pd

    t = curves.thresholds
    frames = [pd.DataFrame({"class": "overall", "threshold": t, "tpr": curves.overall_tpr,
                            "tnr": curves.overall_tnr, "utility": curves.overall_utility})]
    for c, tpr, tnr, u in zip(curves.classes, curves.class_tpr, curves.class_tnr, curves.class_utility):
        frames.append(pd.DataFrame({"class": str(c), "threshold": t, "tpr": tpr, "tnr": tnr, "utility": u}))
    return pd.concat(frames, ignore_index=True)


def curves_from_table(table: pandas.DataFrame) -> UtilityCurves:
    """The inverse of :func:`curves_table` (a curves.csv read back), for analyses of saved runs.

    >>> c = UtilityCurves(np.array([0.1, 0.2]), np.array([0.5, 0.4]), np.ones(2), np.zeros(2), np.array(["7"]),
    ...                   np.ones((1, 2)), np.zeros((1, 2)), np.array([[0.6, 0.3]]))
    >>> back = curves_from_table(curves_table(c))
    >>> back.classes.tolist(), back.class_utility.tolist(), round(opis(back), 6)
    (['7'], [[0.6, 0.3]], 0.01)
    """
    overall = table[table["class"] == "overall"]
    per = table[table["class"] != "overall"]
    classes = per["class"].unique()  # curves_table writes each class's rows together, in class order
    shape = (len(classes), len(overall))

    def stacked(column: str) -> np.ndarray:
        return per[column].to_numpy().reshape(shape)

    return UtilityCurves(overall["threshold"].to_numpy(), overall["utility"].to_numpy(), overall["tpr"].to_numpy(),
                         overall["tnr"].to_numpy(), np.asarray(classes), stacked("tpr"), stacked("tnr"),
                         stacked("utility"))
