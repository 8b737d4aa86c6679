"""Pure retrieval and threshold-consistency metrics, computed in chunks (no N x N matrix).

One entry point, ``evaluate_embeddings`` (in ``suite``): plain keyword settings named as in the
``evaluation`` section of params.yaml; it returns an ``Evaluation`` whose ``metrics`` is the
metrics.json payload and ``curves`` the per-class utility curves.

Modules, one concept each:
    inputs            input checks, cosine normalisation, device and chunk size
    scan              the chunked pass: ranked neighbours + per-class similarity histograms
    histograms        the histogram grid and exact pair counts at its edges
    retrieval         Recall@k, MAP@R, R-precision
    opis              TPR / TNR / utility curves, OPIS, eps-OPIS
    threshold_report  one global threshold at a target FAR and the per-class FAR / FRR spread
    bootstrap         class-stratified bootstrap sd of OPIS over the queries; pair cosine medians
    suite             everything in one pass: ``evaluate_embeddings``
"""

from __future__ import annotations

from tcm.metrics.histograms import ClassHistograms, Grid
from tcm.metrics.opis import (
    UtilityCurves,
    calibration_thresholds,
    class_weights,
    curves_from_histograms,
    curves_table,
    eps_opis,
    opis,
    utility,
)
from tcm.metrics.suite import Evaluation, evaluate_embeddings
from tcm.metrics.threshold_report import spread, threshold_report

__all__ = ["ClassHistograms", "Evaluation", "Grid", "UtilityCurves", "calibration_thresholds", "class_weights",
           "curves_from_histograms", "curves_table", "eps_opis", "evaluate_embeddings", "opis", "spread",
           "threshold_report", "utility"]
