"""The class-stratified bootstrap of OPIS (tcm.metrics.bootstrap) against a brute-force reference that
materialises every resampled query set and runs the evaluation's exact code on it (scan with those
query rows -> per-class histograms -> curves -> OPIS); the pair cosine medians; the setting."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from conftest import continuous, dyadic

from tcm.config import ConfigError, EvaluationConfig, parse_config
from tcm.metrics import Grid, ScanOptions, evaluate_embeddings
from tcm.metrics import bootstrap as bs
from tcm.metrics.opis import curves_from_histograms, eps_opis, opis
from tcm.metrics.scan import Labels, scan


def brute_force(e: np.ndarray, y: np.ndarray, grid: Grid, resamples: int, seed: int, **settings) -> tuple[list, list]:
    """OPIS and eps-OPIS of each replicate, the query set built explicitly (duplicates and all)."""
    x, lab = torch.from_numpy(e.astype(np.float32)), Labels.of(y)
    far_range, n_t = settings.pop("far_range"), settings.pop("n_thresholds")
    weighting, eps = settings.pop("class_weighting"), settings.pop("eps")
    out_opis, out_eps = [], []
    for block in bs.replicate_queries(lab, resamples, seed):
        for rows in block:
            assert (np.bincount(lab.inv[rows], minlength=len(lab.sizes)) == lab.sizes).all()  # stratified
            _, hist = scan(x, lab, grid, None, 23, query_rows=rows)
            curves = curves_from_histograms(hist, settings["beta"], far_range, n_t)
            out_opis.append(opis(curves, weighting))
            out_eps.append(eps_opis(curves, eps))
    return out_opis, out_eps


@pytest.mark.parametrize("weighting", ["uniform", "positive_pairs"])
def test_replicates_equal_brute_force_resampled_query_sets(weighting: str) -> None:
    # Dyadic data: similarities exact in any order, so both sides bin every pair identically.
    e, y = dyadic(180, 14, 3)
    grid = Grid.covering(-0.3, 0.7, 11)
    settings = dict(beta=1.0, far_range=(0.02, 0.2), n_thresholds=31, eps=0.1, class_weighting=weighting)
    counts, _ = bs.query_pass(torch.from_numpy(e.astype(np.float32)), Labels.of(y), grid, 12)
    got = bs.bootstrap_opis(counts, 24, 7, **settings)  # 24 > BLOCK: several blocks of draws
    want_opis, want_eps = brute_force(e, y, grid, 24, 7, **settings)
    np.testing.assert_array_equal(got.opis, want_opis)
    np.testing.assert_array_equal(got.eps_opis, want_eps)
    assert got.off_window == 0 and got.opis_sd == pytest.approx(np.std(want_opis, ddof=1), rel=1e-12)
    assert len(set(got.opis)) > 20  # the replicates differ


def test_one_draw_of_every_query_gives_the_evaluations_opis(monkeypatch) -> None:
    e, y = dyadic(200, 16, 5)
    ev = evaluate_embeddings(e, y, EvaluationConfig(device="cpu", bootstrap={"resamples": 2, "seed": 0}),
                             options=ScanOptions(assume_normalized=True))
    lab = Labels.of(y)
    monkeypatch.setattr(bs, "replicate_queries", lambda lab, r, seed: iter([np.stack([lab.order] * r)]))
    x = torch.from_numpy(e.astype(np.float32))
    counts, _ = bs.query_pass(x, lab, bs.bootstrap_grid(ev.histograms.grid, len(y)), 14)
    assert counts.grid == ev.histograms.grid  # small enough for the evaluation's own grid
    b = bs.bootstrap_opis(counts, 2)
    assert b.opis.tolist() == [ev.metrics["opis"]] * 2 and b.eps_opis.tolist() == [ev.metrics["eps_opis"]] * 2


def _sd(n_classes: int, per_class: int) -> float:
    """Bootstrap sd of OPIS on data from one fixed model (class centres, class-specific spread): the
    smaller sets are the first classes and the first images of each class of the largest."""
    rng = np.random.default_rng(2)
    centres, spread = rng.normal(size=(48, 16)), rng.uniform(0.6, 1.4, 48)  # classes differ in tightness
    noise = rng.normal(size=(48, 40, 16))
    e = centres[:n_classes, None] + spread[:n_classes, None, None] * noise[:n_classes, :per_class]
    y = np.repeat(np.arange(n_classes), per_class)
    cfg = EvaluationConfig(device="cpu", recall_k=[1], bootstrap={"resamples": 100, "seed": 0})
    return evaluate_embeddings(e.reshape(-1, 16), y, cfg).metrics["opis_boot_sd"]


def test_sd_shrinks_as_classes_and_queries_grow() -> None:
    few, more_queries, more_classes = _sd(12, 10), _sd(12, 40), _sd(48, 40)
    assert more_queries < 0.75 * few  # 4x the queries per class: ~1/2 in theory (0.37 here)
    assert more_classes < 0.75 * more_queries  # 4x the classes: ~1/2 (0.44 here)


def test_replicates_off_the_window_are_counted() -> None:
    e, y = continuous(120, 10, 2)
    x = torch.from_numpy((e / np.linalg.norm(e, axis=1, keepdims=True)).astype(np.float32))
    counts, _ = bs.query_pass(x, Labels.of(y), Grid.covering(0.9, 0.95, 10), 10)  # far above the range
    assert bs.bootstrap_opis(counts, 5).off_window == 5
    with pytest.raises(ValueError, match="at least 2"):
        bs.bootstrap_opis(counts, 1)


def test_pair_medians_within_half_a_bin() -> None:
    e, y = continuous(300, 12, 4)
    x = e / np.linalg.norm(e, axis=1, keepdims=True)
    m = evaluate_embeddings(e, y, EvaluationConfig(device="cpu", recall_k=[1], bootstrap={"resamples": 0})).metrics
    s = x @ x.T
    same, other = y[:, None] == y[None, :], ~np.eye(len(y), dtype=bool)
    width = m["settings"]["pair_median_resolution"]
    assert m["neg_cos_median"] == pytest.approx(np.median(s[~same]), abs=width / 2 + 1e-6)
    assert m["pos_cos_median"] == pytest.approx(np.median(s[same & other]), abs=width / 2 + 1e-6)
    assert width <= 1e-4 and "opis_boot_sd" not in m and "bootstrap" not in m["settings"]  # resamples 0: off


def test_collapsed_embeddings_have_a_negative_median_near_one() -> None:
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(8), 10)
    e = np.ones((80, 8)) + 0.02 * rng.normal(size=(80, 8))  # every image in one narrow cone
    m = evaluate_embeddings(e, y, EvaluationConfig(device="cpu", recall_k=[1])).metrics
    assert m["neg_cos_median"] > 0.99 and m["pos_cos_median"] > 0.99


def test_payload_with_the_default_setting_is_numbers_only() -> None:
    e, y = continuous(150, 10, 1)
    ev = evaluate_embeddings(e, y, EvaluationConfig(device="cpu"))  # the default: params.yaml's (300 resamples)
    m = ev.metrics
    assert {"opis_boot_sd", "eps_opis_boot_sd", "neg_cos_median", "pos_cos_median"} <= set(m)
    assert all(isinstance(m[k], float) and math.isfinite(m[k]) and m[k] >= 0
               for k in ("opis_boot_sd", "eps_opis_boot_sd"))
    assert m["settings"]["bootstrap"]["resamples"] == 300 and m["settings"]["bootstrap"]["off_window"] == 0
    assert len(ev.bootstrap.opis) == 300
    json.dumps(m, allow_nan=False)


def test_bootstrap_setting_defaults_and_checks() -> None:
    assert EvaluationConfig().bootstrap.model_dump() == {"resamples": 300, "seed": 0}
    base = {"datasets": {"d": {"source": "sklearn_digits", "train_classes": [0, 1, 2, 3, 4]}},
            "runs": {"r": {"dataset": "d", "model": {"backbone": "small_cnn"}, "loss": {"name": "contrastive"}}}}
    assert parse_config(base).evaluation.bootstrap.resamples == 300  # params without the block stay valid
    off = parse_config({**base, "evaluation": {"bootstrap": {"resamples": 0}}})
    assert off.evaluation.bootstrap.resamples == 0
    with pytest.raises(ConfigError, match="evaluation.bootstrap.resamples"):
        parse_config({**base, "evaluation": {"bootstrap": {"resamples": 1}}})
