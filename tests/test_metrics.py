"""Chunked metrics vs brute-force references (all pairs, full sort) written here.

Exactness data: "dyadic" embeddings (entries k / 64, |k| <= 20, d = 8, rows not renormalised) make
every dot product a multiple of 2^-12 that float32 and float64 both compute exactly in any
summation order, so chunked float32 and brute-force float64 similarities are identical, ties
are real ties, and similarities sit exactly on histogram edges (the hardest case for s >= t).
"""

from __future__ import annotations

import ast
import inspect
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import continuous, dyadic

import tcm.metrics
from tcm.config import EvaluationConfig
from tcm.metrics import Grid, ScanOptions, eps_opis, evaluate_embeddings, opis, utility
from tcm.metrics import scan as scan_module
from tcm.metrics.inputs import normalise
from tcm.metrics.scan import Labels, scan

KS = [1, 2, 4, 8, 16]


def retrieval_metrics(e: np.ndarray, y: np.ndarray, recall_k: list[int], assume_normalized: bool = False,
                      **settings) -> dict:
    """Recall@k, MAP@R and R-precision alone: the entry point without the threshold metrics."""
    options = ScanOptions(threshold_metrics=False, assume_normalized=assume_normalized)
    return evaluate_embeddings(e, y, EvaluationConfig(recall_k=recall_k, **settings), options=options).metrics






# ---------------------------------------------------------------- brute force
def brute_sims(e: np.ndarray, normalized: bool) -> np.ndarray:
    x = np.asarray(e, np.float64) if normalized else normalise(e)
    return x @ x.T


def brute_retrieval(s: np.ndarray, y: np.ndarray, ks: list[int]) -> dict:
    n = len(y)
    hits, aps, rps = {k: 0 for k in ks}, [], []
    for q in range(n):
        others = np.array([j for j in range(n) if j != q])
        # Full sort by (-s, index): lexsort's last key is the primary one.
        ranked = others[np.lexsort((others, -s[q, others]))]
        rel = (y[ranked] == y[q]).astype(float)
        r = int(rel.sum())
        if r == 0:
            continue
        for k in ks:
            hits[k] += rel[:k].any()
        prec = np.cumsum(rel) / np.arange(1, n)
        aps.append((prec[:r] * rel[:r]).sum() / r)
        rps.append(rel[:r].sum() / r)
    nq = len(aps)
    return {"recall_at_k": {str(k): hits[k] / nq for k in ks}, "map_at_r": float(np.mean(aps)),
            "r_precision": float(np.mean(rps)), "num_queries": nq}


def brute_pairs(s: np.ndarray, y: np.ndarray) -> tuple[dict, dict]:
    """Per class: sorted positive and negative similarities of ordered pairs (a in c, b != a)."""
    off = ~np.eye(len(y), dtype=bool)
    pos, neg = {}, {}
    for c in np.unique(y):
        rows = y == c
        same = rows[None, :] & off[rows]
        pos[c] = np.sort(s[rows][same])
        neg[c] = np.sort(s[rows][:, ~rows].ravel())
    return pos, neg


def share_ge(v: np.ndarray, t: np.ndarray) -> np.ndarray:
    return np.array([(v >= x).mean() for x in t]) if len(v) else np.zeros(len(t))


def brute_curves(s: np.ndarray, y: np.ndarray, t: np.ndarray, beta: float = 1.0) -> dict:
    pos, neg = brute_pairs(s, y)
    classes = [c for c in pos if len(pos[c])]
    tpr = np.array([share_ge(pos[c], t) for c in classes])
    tnr = np.array([1 - share_ge(neg[c], t) for c in classes])
    all_pos, all_neg = np.concatenate(list(pos.values())), np.concatenate(list(neg.values()))
    o_tpr, o_tnr = share_ge(all_pos, t), 1 - share_ge(all_neg, t)
    return {"classes": np.array(classes), "tpr": tpr, "tnr": tnr, "utility": utility(tpr, tnr, beta),
            "overall_utility": utility(o_tpr, o_tnr, beta), "overall_tpr": o_tpr, "overall_tnr": o_tnr,
            "negatives": all_neg, "n_pos": np.array([len(pos[c]) for c in classes]), "pos": pos, "neg": neg}


def brute_opis(u: np.ndarray, overall: np.ndarray, w: np.ndarray | None = None) -> float:
    gap = ((u - overall) ** 2).mean(1)
    return float(gap.mean() if w is None else (w / w.sum()) @ gap)


def brute_eps_opis(u: np.ndarray, eps: float) -> float:
    n = max(1, math.ceil(eps * len(u)))
    order = np.argsort(u.mean(1), kind="stable")
    return float(((u[order[-n:]].mean(0) - u[order[:n]].mean(0)) ** 2).mean())


# ---------------------------------------------------------------- retrieval: exact
@pytest.mark.parametrize("seed,chunk", [(0, 7), (1, 64), (2, 1000)])
def test_retrieval_exact_with_ties_and_singletons(seed, chunk):
    e, y = dyadic(240, 30, seed)
    got = retrieval_metrics(e, y, KS, chunk_size=chunk, device="cpu", assume_normalized=True)
    want = brute_retrieval(brute_sims(e, True), y, KS)
    assert got["num_queries"] == want["num_queries"] == 240 - 3  # singletons are not queries
    assert got["recall_at_k"] == want["recall_at_k"]
    assert got["map_at_r"] == pytest.approx(want["map_at_r"], abs=1e-12)
    assert got["r_precision"] == pytest.approx(want["r_precision"], abs=1e-12)


def test_massive_ties_exact():
    # Entries in {-2..2}/4, d = 3: only a few distinct similarities, so ties straddle every cut.
    rng = np.random.default_rng(11)
    e = rng.integers(-2, 3, size=(150, 3)) / 4.0
    e[np.abs(e).sum(1) == 0] = [0.25, 0, 0]
    y = rng.integers(0, 10, 150)
    got = retrieval_metrics(e, y, [1, 3, 10], chunk_size=16, device="cpu", assume_normalized=True)
    want = brute_retrieval(brute_sims(e, True), y, [1, 3, 10])
    assert got["recall_at_k"] == want["recall_at_k"]
    assert got["map_at_r"] == pytest.approx(want["map_at_r"], abs=1e-12)
    assert got["r_precision"] == pytest.approx(want["r_precision"], abs=1e-12)


def test_ties_broken_by_gallery_index():
    # Query 0 has 4 gallery images at the same similarity; the lowest indices come first.
    # Images 1, 2 are class 9 (not the query's), 3, 4 class 0: all at s = 1 from image 0.
    # Ranked by index: 1, 2, 3, 4 -> query 0 misses at k = 1, 2 and hits at k = 3.
    e = np.array([[1.0, 0]] * 5 + [[0.0, 1.0]] * 2)
    y = np.array([0, 9, 9, 0, 0, 5, 5])
    m = retrieval_metrics(e, y, [1, 2, 3], chunk_size=2, device="cpu")
    want = brute_retrieval(brute_sims(e, False), y, [1, 2, 3])
    assert m["recall_at_k"] == want["recall_at_k"]
    assert m["map_at_r"] == pytest.approx(want["map_at_r"], abs=1e-12)
    # Hand check of query 0 (R = 2): neighbours 1, 2, 3, 4 -> rel 0, 0, 1, 1: AP@R = 0, R-prec = 0.
    # Query 3 (R = 2): 0, 1, 2, 4 -> rel 1, 0, 0, 1: AP@R = (1/2)(1/1) = 0.5, R-prec = 1/2.
    # Query 4 (R = 2): 0, 1, 2, 3 -> rel 1, 0, 0, 1: 0.5 and 1/2.  Queries 1, 2 (R = 1): 1st
    # neighbour of 1 is 0, of 2 is 0 -> 0. Queries 5, 6: each other -> 1.  7 queries.
    # MAP@R = (0 + 0 + 0 + 0.5 + 0.5 + 1 + 1) / 7 = 3/7;  R@1 = (0+0+0+1+1+1+1)/7 = 4/7.
    assert m["map_at_r"] == pytest.approx(3 / 7)
    assert m["recall_at_k"]["1"] == pytest.approx(4 / 7)


def test_tiny_hand_oracle():
    # Class 0: a=(1,0), b=(.8,.6); class 1: c=(0,1), d=(.6,.8).
    # s(a,b)=.8 s(a,c)=0 s(a,d)=.6 s(b,c)=.6 s(b,d)=.96 s(c,d)=.8
    # nearest: a->b hit, b->d miss, c->d hit, d->b miss: R@1 = MAP@R = R-prec = 1/2; R@2 = 1.
    e = np.array([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0], [0.6, 0.8]])
    y = np.array([0, 0, 1, 1])
    ev = evaluate_embeddings(e, y, EvaluationConfig(recall_k=[1, 2], target_far=0.3, device="cpu"))
    m = ev.metrics
    assert m["recall_at_k"] == {"1": 0.5, "2": 1.0}
    assert m["map_at_r"] == 0.5 and m["r_precision"] == 0.5
    # Negatives (ordered): per class {0, .6, .6, .96}; pooled FAR(t) = 2/8 for .6 < t <= .96.
    # Lowest grid edge with FAR <= .3 is the first edge above .6; there both positives (.8)
    # are accepted (FRR 0) and each class accepts 1 of its 4 negatives (FAR .25).
    tr = m["threshold_report"]
    assert 0.6 < tr["threshold"] <= 0.6 + tr["resolution"]
    assert tr["overall_far"] == 0.25 and tr["overall_frr"] == 0.0
    assert tr["class_far"] == {"min": 0.25, "median": 0.25, "max": 0.25, "worst_share_mean": 0.25}


# ---------------------------------------------------------------- threshold metrics
@pytest.mark.parametrize("seed", [0, 1])
def test_curves_exact_at_grid_thresholds(seed):
    e, y = dyadic(300, 25, seed, spread=8)
    ev = evaluate_embeddings(e, y, EvaluationConfig(recall_k=KS, chunk_size=37, device="cpu", target_far=0.005),
                             options=ScanOptions(assume_normalized=True))
    c = ev.curves
    s = brute_sims(e, True)
    b = brute_curves(s, y, c.thresholds)
    np.testing.assert_array_equal(c.classes, b["classes"])  # singletons have no curve
    for name in ("tpr", "tnr", "utility"):
        np.testing.assert_allclose(getattr(c, f"class_{name}"), b[name], atol=1e-12, rtol=0)
    np.testing.assert_allclose(c.overall_utility, b["overall_utility"], atol=1e-12, rtol=0)
    assert ev.metrics["opis"] == pytest.approx(brute_opis(b["utility"], b["overall_utility"]), abs=1e-12)
    assert ev.metrics["eps_opis"] == pytest.approx(brute_eps_opis(b["utility"], 0.05), abs=1e-12)
    # The calibration range ends are the negatives' quantiles, to within one bin width.
    w = c.resolution
    assert w <= 1e-4
    assert c.thresholds[0] == pytest.approx(np.quantile(b["negatives"], 0.9), abs=w)
    assert c.thresholds[-1] == pytest.approx(np.quantile(b["negatives"], 0.99), abs=w)
    assert np.all(np.diff(c.thresholds) >= 0)
    # Threshold report: FAR / FRR per class at its threshold, brute force.
    tr = ev.metrics["threshold_report"]
    t = tr["threshold"]
    assert t == pytest.approx(np.quantile(b["negatives"], 1 - 0.005), abs=w)
    assert (b["negatives"] >= t).mean() <= 0.005 < (b["negatives"] >= t - w).mean()
    far = np.array([(v >= t).mean() for v in b["neg"].values()])
    frr = np.array([(v < t).mean() for v in b["pos"].values() if len(v)])
    assert tr["class_far"]["max"] == pytest.approx(far.max(), abs=1e-12)
    assert tr["class_far"]["median"] == pytest.approx(np.median(far), abs=1e-12)
    assert tr["class_frr"]["min"] == pytest.approx(frr.min(), abs=1e-12)
    n_worst = math.ceil(0.05 * len(frr))
    assert tr["class_frr"]["worst_share_mean"] == pytest.approx(np.sort(frr)[-n_worst:].mean(), abs=1e-12)


def test_positive_pair_weighting():
    e, y = dyadic(200, 20, 3)
    cfg = EvaluationConfig(chunk_size=50, device="cpu", opis={"class_weighting": "positive_pairs"})
    ev = evaluate_embeddings(e, y, cfg, options=ScanOptions(assume_normalized=True))
    b = brute_curves(brute_sims(e, True), y, ev.curves.thresholds)
    assert ev.metrics["opis"] == pytest.approx(brute_opis(b["utility"], b["overall_utility"], b["n_pos"]), abs=1e-12)
    assert opis(ev.curves, "uniform") == pytest.approx(brute_opis(b["utility"], b["overall_utility"]), abs=1e-12)


def test_continuous_data_within_resolution():
    """Cosine on continuous data: OPIS at our grid thresholds vs brute force at the exact
    quantile thresholds (un-rounded); curves within 1e-4 at our thresholds."""
    e, y = continuous(400, 40, 5)
    ev = evaluate_embeddings(e, y, EvaluationConfig(recall_k=KS, chunk_size=90, device="cpu"))
    s = brute_sims(e, False)
    want = brute_retrieval(s, y, KS)
    assert ev.metrics["recall_at_k"] == want["recall_at_k"]
    assert ev.metrics["map_at_r"] == pytest.approx(want["map_at_r"], abs=1e-12)
    c = ev.curves
    b = brute_curves(s, y, c.thresholds)
    assert np.abs(c.class_utility - b["utility"]).max() <= 1e-4
    assert np.abs(c.class_tnr - b["tnr"]).max() <= 1e-4
    neg = b["negatives"]
    exact_t = np.linspace(np.quantile(neg, 0.9), np.quantile(neg, 0.99), 101)
    assert np.abs(c.thresholds - exact_t).max() <= 1.5 * c.resolution
    e2 = brute_curves(s, y, exact_t)
    assert ev.metrics["opis"] == pytest.approx(brute_opis(e2["utility"], e2["overall_utility"]), rel=0.02)
    assert ev.metrics["eps_opis"] == pytest.approx(brute_eps_opis(e2["utility"], 0.05), rel=0.02)


def test_forced_bad_window_falls_back_to_full_range():
    # A window that misses the needed thresholds: the histograms are rebuilt over [-1, 1].
    e, y = dyadic(150, 12, 4)
    cfg = EvaluationConfig(chunk_size=40, device="cpu")
    good = evaluate_embeddings(e, y, cfg, options=ScanOptions(assume_normalized=True))
    bad = evaluate_embeddings(e, y, cfg, options=ScanOptions(assume_normalized=True, window=(0.9, 0.95)))
    assert bad.metrics["settings"]["histogram_passes"] == 2 and good.metrics["settings"]["histogram_passes"] == 1
    np.testing.assert_array_equal(good.curves.thresholds, bad.curves.thresholds)
    assert bad.metrics["opis"] == good.metrics["opis"]
    assert bad.metrics["threshold_report"] == good.metrics["threshold_report"]


def test_chunk_size_does_not_change_results():
    e, y = continuous(300, 30, 7)
    a = evaluate_embeddings(e, y, EvaluationConfig(recall_k=KS, chunk_size=1, device="cpu")).metrics
    b = evaluate_embeddings(e, y, EvaluationConfig(recall_k=KS, chunk_size=300, device="cpu")).metrics
    a["settings"].pop("chunk_size"), b["settings"].pop("chunk_size")
    # Exact except for float summation order of the per-query averages.
    for k in ("map_at_r", "r_precision"):
        assert a.pop(k) == pytest.approx(b.pop(k), abs=1e-12)
    assert a == b


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cpu_and_cuda_agree():
    e, y = continuous(2000, 100, 8, dim=64)
    a = evaluate_embeddings(e, y, EvaluationConfig(recall_k=KS, device="cpu")).metrics
    g = evaluate_embeddings(e, y, EvaluationConfig(recall_k=KS, device="cuda")).metrics
    assert a["recall_at_k"] == pytest.approx(g["recall_at_k"], abs=2e-3)  # near-ties may swap
    for k in ("map_at_r", "r_precision", "opis", "eps_opis"):
        assert a[k] == pytest.approx(g[k], abs=1e-3)


# ---------------------------------------------------------------- scan: histograms vs brute force
def brute_histograms(e: np.ndarray, y: np.ndarray, grid: Grid, rows: np.ndarray | None = None,
                     pooled: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Per class of the query row: counts of ordered pairs (a, b) by local slot, all b / b in the
    class, every pair below the window (the self pair included) in slot 0. Exact for dyadic data."""
    x = np.asarray(e, np.float64)
    local = np.clip(np.floor(x @ x.T * grid.scale).astype(np.int64) - (grid.j_lo - 1), 0, grid.n_bins + 1)
    np.fill_diagonal(local, 0)
    classes, inv = np.unique(y, return_inverse=True)
    n_rows = 1 if pooled else len(classes)
    all_c = np.zeros((n_rows, grid.n_slots), np.int64)
    pos_c = np.zeros_like(all_c)
    for a in range(len(y)) if rows is None else rows:
        r = 0 if pooled else inv[a]
        all_c[r] += np.bincount(local[a], minlength=grid.n_slots)
        pos_c[r] += np.bincount(local[a, inv == inv[a]], minlength=grid.n_slots)
    return all_c, pos_c


# Windows on a 2^-10 grid (dyadic similarities are multiples of 2^-12: quarter bins, and many
# exactly on an edge): two that leave cells below and above them (a lower edge below 0, where the
# floor matters, and one above 0 with a minority of the cells inside), and one that holds every
# similarity (only the self-matches fall below it).
WINDOWS = {"negative edge": (-0.03, 0.2), "positive edge": (0.05, 0.25), "everything": (-1.0, 1.0)}


@pytest.mark.parametrize("binning", ["dense", "compact"])
@pytest.mark.parametrize("window", list(WINDOWS))
@pytest.mark.parametrize("chunk", [1, 7, 64, 1000])
def test_scan_histograms_match_brute_force(binning, window, chunk):
    e, y = dyadic(240, 30, 0)
    grid = Grid.covering(*WINDOWS[window], 10)
    s = (e @ e.T)[~np.eye(len(y), dtype=bool)] * grid.scale
    if window == "everything":
        assert (s >= grid.j_lo).all() and (s < grid.j_lo + grid.n_bins).all()
    else:
        assert (s < grid.j_lo).any() and (s >= grid.j_lo + grid.n_bins).any()
        assert window == "negative edge" or (s >= grid.j_lo).mean() < 0.4
    sums, hist = scan(torch.from_numpy(e.astype(np.float32)), Labels.of(y), grid, KS, chunk, binning=binning)
    all_c, pos_c = brute_histograms(e, y, grid)
    np.testing.assert_array_equal(hist.all_counts, all_c)
    np.testing.assert_array_equal(hist.pos_counts, pos_c)
    want = brute_retrieval(brute_sims(e, True), y, KS)
    assert sums.n_queries == want["num_queries"]
    assert {str(k): v / sums.n_queries for k, v in sums.hits.items()} == want["recall_at_k"]
    assert sums.ap_sum / sums.n_queries == pytest.approx(want["map_at_r"], abs=1e-12)
    assert sums.r_precision_sum / sums.n_queries == pytest.approx(want["r_precision"], abs=1e-12)


@pytest.mark.parametrize("lo", [-37.0, 5.0])
def test_compact_and_dense_binning_agree(lo):
    """The two binnings of one chunk: quarter-unit values (ties on every edge) around a lower edge
    below / above 0, rows of three classes, a third of the cells in or above the window (more than
    the quarter of the chunk compacted per step, so it takes two). The compact one leaves the
    underflow slots at 0; every other slot is the brute-force count."""
    rng = np.random.default_rng(3)
    m, n, n_bins = 40, 500, 6
    s = torch.from_numpy((rng.integers(-70, 40, (m, n)) / 4 + lo).astype(np.float32))
    s[:, :7] = float("-inf")
    slots, hi = n_bins + 2, lo + n_bins + 1
    assert 0.25 < (s >= lo + 1).float().mean() < 0.5 and (s >= hi).any()
    cls = np.arange(m) * 3 // m
    row_off = torch.from_numpy((cls * slots - lo).astype(np.int32))
    compact = scan_module._count_compact(s.clone(), row_off, lo, hi, 3 * slots).view(3, slots).numpy()
    dense = scan_module._count_dense(s.clone(), row_off, lo, hi, 3 * slots, None, 1).view(3, slots).numpy()
    local = np.clip(np.floor(s.numpy()) - lo, 0, n_bins + 1).astype(int)
    want = np.stack([np.bincount(local[cls == c].ravel(), minlength=slots) for c in range(3)])
    np.testing.assert_array_equal(dense, want)
    np.testing.assert_array_equal(compact[:, 1:], want[:, 1:])
    assert (compact[:, 0] == 0).all() and (want[:, 0] > 0).all()


@pytest.mark.parametrize("binning", ["dense", "compact"])
def test_scan_pooled_pilot_matches_brute_force(binning):
    e, y = dyadic(200, 20, 1)
    grid = Grid.covering(*WINDOWS["negative edge"], 10)
    rows = np.random.default_rng(0).choice(len(y), 50, replace=False)
    _, hist = scan(torch.from_numpy(e.astype(np.float32)), Labels.of(y), grid, None, 16, query_rows=rows,
                   pooled=True, binning=binning)
    all_c, pos_c = brute_histograms(e, y, grid, rows, pooled=True)
    np.testing.assert_array_equal(hist.all_counts, all_c)
    np.testing.assert_array_equal(hist.pos_counts, pos_c)
    assert hist.negative_pairs.tolist() == [sum(int((y != y[a]).sum()) for a in rows)]


def test_scan_bincount_split_over_threads(monkeypatch):
    """The CPU path splits a chunk's bincount over threads; the counts stay those of one call."""
    e, y = dyadic(300, 25, 2)
    grid = Grid.covering(*WINDOWS["negative edge"], 10)
    x = torch.from_numpy(e.astype(np.float32))
    _, one = scan(x, Labels.of(y), grid, None, 100, binning="dense")
    monkeypatch.setattr(scan_module, "POOL_MIN_CELLS", 0)
    threads = torch.get_num_threads()
    torch.set_num_threads(3)
    try:
        _, split = scan(x, Labels.of(y), grid, None, 100, binning="dense")
    finally:
        torch.set_num_threads(threads)
    np.testing.assert_array_equal(split.all_counts, one.all_counts)
    np.testing.assert_array_equal(split.pos_counts, one.pos_counts)
    np.testing.assert_array_equal(one.all_counts, brute_histograms(e, y, grid)[0])


# ---------------------------------------------------------------- vs pytorch-metric-learning
def test_agrees_with_accuracy_calculator():
    from pytorch_metric_learning.distances import CosineSimilarity
    from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator
    from pytorch_metric_learning.utils.inference import CustomKNN

    e, y = continuous(500, 60, 9, dim=32)
    y[:4] = 1000 + np.arange(4)  # singleton classes: AccuracyCalculator skips them as queries too
    ours = retrieval_metrics(e, y, [1], chunk_size=128, device="cpu")
    x = torch.from_numpy(normalise(e).astype(np.float32))
    ac = AccuracyCalculator(include=("precision_at_1", "mean_average_precision_at_r", "r_precision"),
                            k="max_bin_count", device=torch.device("cpu"),
                            knn_func=CustomKNN(CosineSimilarity(), batch_size=128))  # faiss is not installed
    theirs = ac.get_accuracy(x, torch.from_numpy(y))
    assert ours["recall_at_k"]["1"] == pytest.approx(theirs["precision_at_1"], abs=1e-6)
    assert ours["map_at_r"] == pytest.approx(theirs["mean_average_precision_at_r"], abs=1e-6)
    assert ours["r_precision"] == pytest.approx(theirs["r_precision"], abs=1e-6)


# ---------------------------------------------------------------- config / payload
def test_what_the_metrics_read_is_params_yaml_evaluation_section():
    """MetricSettings (what evaluate_embeddings reads) names fields of EvaluationConfig, the one place the
    defaults are declared; and evaluate_embeddings takes at most five parameters."""
    from tcm.config import BootstrapConfig, OpisConfig
    from tcm.metrics.suite import BootstrapSettings, MetricSettings, OpisSettings

    for protocol, model in ((MetricSettings, EvaluationConfig), (OpisSettings, OpisConfig),
                            (BootstrapSettings, BootstrapConfig)):
        assert set(protocol.__annotations__) <= set(model.model_fields), protocol.__name__
    assert len(inspect.signature(evaluate_embeddings).parameters) <= 5


def test_metrics_know_no_config_and_import_at_module_level():
    """The config adapter lives with the callers; inside tcm.metrics no function imports tcm code."""
    for path in Path(tcm.metrics.__file__).parent.glob("*.py"):
        tree = ast.parse(path.read_text())
        imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        imported |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
        assert not any(m == "tcm.config" or m.startswith("tcm.config.") for m in imported), path.name
        for fn in (n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))):
            for n in ast.walk(fn):
                names = [a.name for a in n.names] if isinstance(n, ast.Import) else \
                    [n.module or ""] if isinstance(n, ast.ImportFrom) else []
                assert not any(m.startswith("tcm") for m in names), f"{path.name}: {fn.name} imports {names}"


def test_payload_keys_from_config():
    e, y = continuous(120, 12, 10)
    ev = evaluate_embeddings(e, y, EvaluationConfig(chunk_size=50, device="cpu"))
    metrics, curves = ev.metrics, ev.curves
    assert set(metrics) >= {"recall_at_k", "map_at_r", "r_precision", "opis", "eps_opis", "threshold_report",
                            "settings"}
    assert list(metrics["recall_at_k"]) == ["1", "2", "4", "8"]
    assert all(0 <= v <= 1 for v in metrics["recall_at_k"].values())
    assert metrics["settings"]["opis"]["class_weighting"] == "uniform"
    assert curves.class_utility.shape == (len(curves.classes), 101)
    assert eps_opis(curves, 0.05) == metrics["eps_opis"]
    assert metrics["settings"]["recall_k"] == [1, 2, 4, 8] and metrics["settings"]["chunk_size"] == 50


@pytest.mark.parametrize("e,y,words", [
    (np.ones((3, 2)), np.array([0, 0, 0]), "two classes"),
    (np.ones((3, 2)), np.array([0, 1]), "length"),
    (np.ones(3), np.array([0, 1, 1]), "2-D"),
    (np.array([[np.nan, 1.0], [1.0, 0.0]]), np.array([0, 1]), "NaN"),
    (np.ones((2, 2)), np.array([0.5, 1.0]), "integer"),
    (np.array([[0.0, 0.0], [1.0, 0.0], [1.0, 1.0]]), np.array([0, 1, 1]), "zero"),
    (np.zeros((0, 2)), np.zeros(0, dtype=int), "at least one row"),
])
def test_bad_inputs_raise_naming_the_problem(e, y, words):
    with pytest.raises(ValueError, match=words):
        evaluate_embeddings(e, y, EvaluationConfig(device="cpu"))
