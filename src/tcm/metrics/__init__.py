"""Pure retrieval and threshold-consistency metrics."""

from __future__ import annotations

import numpy as np

from tcm.config import EvaluationConfig
from tcm.metrics.opis import UtilityCurves, calibration_thresholds, eps_opis, opis, utility, utility_curves
from tcm.metrics.retrieval import retrieval_metrics

__all__ = ["UtilityCurves", "all_metrics", "calibration_thresholds", "eps_opis", "opis", "retrieval_metrics",
           "utility", "utility_curves"]


def all_metrics(embeddings: np.ndarray, labels: np.ndarray, cfg: EvaluationConfig) -> tuple[dict, UtilityCurves]:
    """The metrics.json payload (Recall@k, MAP@R, R-precision, OPIS, eps-OPIS, settings) and the curves."""
    out = retrieval_metrics(embeddings, labels, cfg.recall_k)
    o = cfg.opis
    curves = utility_curves(embeddings, labels, o.beta, tuple(o.far_range), o.n_thresholds)
    out.update(opis=opis(curves), eps_opis=eps_opis(curves, o.eps),
               settings={"opis": o.model_dump(mode="json"), "recall_k": list(cfg.recall_k),
                         "num_images": int(len(labels)), "num_classes": int(len(np.unique(labels)))})
    return out, curves
