"""Pure retrieval and threshold-consistency metrics, computed in chunks (no N x N matrix).

Modules, one concept each:
    similarity        input checks, cosine normalisation, device and chunk size
    scan              the chunked pass: ranked neighbours + per-class similarity histograms
    histograms        the histogram grid and exact pair counts at its edges
    retrieval         Recall@k, MAP@R, R-precision
    opis              TPR / TNR / utility curves, OPIS, eps-OPIS
    threshold_report  one global threshold at a target FAR and the per-class FAR / FRR spread
    suite             everything in one pass: ``evaluate_embeddings``
"""

from __future__ import annotations

import numpy as np

from tcm.config import EvaluationConfig
from tcm.metrics.histograms import ClassHistograms, Grid
from tcm.metrics.opis import (UtilityCurves, calibration_thresholds, class_weights, curves_from_histograms, eps_opis,
                              opis, utility, utility_curves)
from tcm.metrics.retrieval import retrieval_metrics
from tcm.metrics.suite import Evaluation, evaluate_embeddings
from tcm.metrics.threshold_report import spread, threshold_report

__all__ = ["ClassHistograms", "Evaluation", "Grid", "UtilityCurves", "all_metrics", "calibration_thresholds",
           "class_weights", "curves_from_histograms", "eps_opis", "evaluate_embeddings", "evaluate_with_config", "opis",
           "retrieval_metrics", "spread", "threshold_report", "utility", "utility_curves"]


def evaluate_with_config(embeddings: np.ndarray, labels: np.ndarray, cfg: EvaluationConfig,
                         progress: bool = False) -> Evaluation:
    """``evaluate_embeddings`` with every setting taken from the ``evaluation`` section of params.yaml."""
    o = cfg.opis
    return evaluate_embeddings(embeddings, labels, ks=cfg.recall_k, beta=o.beta, far_range=tuple(o.far_range),
                               n_thresholds=o.n_thresholds, eps=o.eps, class_weighting=o.class_weighting,
                               target_far=cfg.target_far, worst_share=cfg.worst_share, resolution=o.resolution,
                               chunk_size=cfg.chunk_size, device=cfg.device, progress=progress)


def all_metrics(embeddings: np.ndarray, labels: np.ndarray, cfg: EvaluationConfig,
                progress: bool = False) -> tuple[dict, UtilityCurves]:
    """The metrics.json payload (Recall@k, MAP@R, R-precision, OPIS, eps-OPIS, threshold report,
    settings) and the utility curves."""
    ev = evaluate_with_config(embeddings, labels, cfg, progress)
    return ev.metrics, ev.curves
