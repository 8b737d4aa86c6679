"""The explore notebook's per-class view agrees with the OPIS that evaluation reports."""

from __future__ import annotations

import numpy as np
import pytest

from tcm.config import EvaluationConfig
from tcm.explore import least_consistent_classes
from tcm.metrics import curves_table, evaluate_embeddings


def test_least_consistent_classes_are_the_opis_terms() -> None:
    rng = np.random.default_rng(3)
    labels = np.repeat(np.arange(12), 15)
    emb = rng.normal(size=(len(labels), 8)) + 2.5 * rng.normal(size=(12, 8))[labels]
    ev = evaluate_embeddings(emb, labels, EvaluationConfig(device="cpu"))
    table = least_consistent_classes(curves_table(ev.curves).astype({"class": str}), n=100)
    assert len(table) == 12 and table["mean_sq_gap"].is_monotonic_decreasing
    assert table["share_of_opis"].sum() == pytest.approx(1.0)
    assert table["mean_sq_gap"].mean() == pytest.approx(ev.metrics["opis"], rel=1e-12)  # uniform weights
