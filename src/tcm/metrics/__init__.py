"""Pure retrieval and threshold-consistency metrics, computed in chunks (no N x N matrix).

One entry point, ``evaluate_embeddings`` (in ``suite``): its settings are the validated ``evaluation``
section of params.yaml (``tcm.config.EvaluationConfig``, the one place their defaults are declared;
this package imports no tcm code, so ``MetricSettings`` describes what it reads);
it returns an ``Evaluation`` whose ``metrics`` is the metrics.json payload and ``curves`` the per-class
utility curves.

Modules, one concept each:
    inputs            input checks, cosine normalisation, device and chunk size
    scan              the chunked pass: ranked neighbours + per-class similarity histograms
    histograms        the histogram grid and exact pair counts at its edges
    retrieval         Recall@k, MAP@R, R-precision
    opis              TPR / TNR / utility curves, OPIS, eps-OPIS
    threshold_report  one global threshold at a target FAR; per-class FAR / FRR there, summarised over classes
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
from tcm.metrics.suite import Evaluation, MetricSettings, ScanOptions, evaluate_embeddings
from tcm.metrics.threshold_report import class_rate_summary, threshold_report

__all__ = ["ClassHistograms", "Evaluation", "Grid", "MetricSettings", "ScanOptions", "UtilityCurves",
           "calibration_thresholds", "class_rate_summary", "class_weights", "curves_from_histograms", "curves_table",
           "eps_opis", "evaluate_embeddings", "opis", "threshold_report", "utility"]
