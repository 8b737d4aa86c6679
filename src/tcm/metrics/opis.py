"""Threshold consistency: per-class utility-vs-threshold curves, OPIS and eps-OPIS.

A pair (a, b), a != b, is accepted when cos(a, b) >= t. For class i the positives are the
ordered pairs inside class i and the negatives the pairs (a in i, b not in i);
TPR_i(t) / TNR_i(t) are the shares of positives accepted / negatives rejected, and the utility is

    U(t) = (1 + beta^2) * TPR * TNR / (beta^2 * TPR + TNR)        (0 where both are 0)

The overall utility uses all pairs pooled. The calibration range is the thresholds at which the
overall FAR = 1 - TNR lies in ``far_range``, sampled at ``n_thresholds`` evenly spaced points.

    OPIS      = sum_i w_i * mean_t (U_i(t) - U(t))^2,   w_i = 1 / C
    eps-OPIS  = mean_t (U_top(t) - U_bottom(t))^2

C counts the classes with at least one positive pair; U_top / U_bottom average the
ceil(eps * C) classes with the highest / lowest mean utility over the range.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from tcm.metrics.retrieval import _normalise


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


def utility(tpr: np.ndarray, tnr: np.ndarray, beta: float = 1.0) -> np.ndarray:
    """Generalised F-score of TPR and TNR.

    >>> float(utility(np.array(0.5), np.array(1.0)))  # 2 * 0.5 * 1 / 1.5
    0.6666666666666666
    """
    tpr, tnr = np.asarray(tpr, dtype=np.float64), np.asarray(tnr, dtype=np.float64)
    den = beta**2 * tpr + tnr
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, (1 + beta**2) * tpr * tnr / np.where(den > 0, den, 1), 0.0)


def calibration_thresholds(negative_sims: np.ndarray, far_range: tuple[float, float], n: int) -> np.ndarray:
    """``n`` thresholds evenly spaced between the points where overall FAR = far_range[1] and far_range[0]."""
    lo = np.quantile(negative_sims, 1.0 - far_range[1])
    hi = np.quantile(negative_sims, 1.0 - far_range[0])
    return np.linspace(lo, hi, n)


def _share_at_least(sorted_values: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    return (len(sorted_values) - np.searchsorted(sorted_values, thresholds, side="left")) / max(len(sorted_values), 1)


def utility_curves(embeddings: np.ndarray, labels: np.ndarray, beta: float = 1.0,
                   far_range: tuple[float, float] = (1e-2, 1e-1), n_thresholds: int = 101) -> UtilityCurves:
    """Exact curves from the full similarity matrix (fine for a few thousand images)."""
    x = _normalise(embeddings)
    labels = np.asarray(labels)
    sims = x @ x.T
    same = labels[:, None] == labels[None, :]
    off_diag = ~np.eye(len(labels), dtype=bool)
    pos_all, neg_all = np.sort(sims[same & off_diag]), np.sort(sims[~same])
    if len(pos_all) == 0 or len(neg_all) == 0:
        raise ValueError("utility curves need at least one positive and one negative pair")
    t = calibration_thresholds(neg_all, far_range, n_thresholds)
    o_tpr, o_tnr = _share_at_least(pos_all, t), 1.0 - _share_at_least(neg_all, t)
    classes, tprs, tnrs = [], [], []
    for c in np.unique(labels):
        rows = labels == c
        pos = np.sort(sims[np.ix_(rows, rows)][~np.eye(rows.sum(), dtype=bool)])
        if len(pos) == 0:
            continue
        neg = np.sort(sims[np.ix_(rows, ~rows)].ravel())
        classes.append(c)
        tprs.append(_share_at_least(pos, t))
        tnrs.append(1.0 - _share_at_least(neg, t))
    tpr, tnr = np.array(tprs), np.array(tnrs)
    return UtilityCurves(t, utility(o_tpr, o_tnr, beta), o_tpr, o_tnr, np.array(classes), tpr, tnr,
                         utility(tpr, tnr, beta))


def opis(curves: UtilityCurves) -> float:
    """Mean over classes (w_i = 1/C) of the mean squared gap to the overall utility curve."""
    return float(np.mean((curves.class_utility - curves.overall_utility[None, :]) ** 2))


def eps_opis(curves: UtilityCurves, eps: float = 0.05) -> float:
    """Mean squared gap between the best and worst eps share of classes (by mean utility)."""
    n = max(1, math.ceil(eps * len(curves.classes)))
    order = np.argsort(curves.class_utility.mean(axis=1), kind="stable")
    bottom = curves.class_utility[order[:n]].mean(axis=0)
    top = curves.class_utility[order[-n:]].mean(axis=0)
    return float(np.mean((top - bottom) ** 2))
