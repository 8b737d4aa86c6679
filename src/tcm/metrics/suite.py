"""The metrics' one entry point, ``evaluate_embeddings``: the full metric set in chunked passes (no N x N matrix).

Steps: (1) a pilot pass over at most ``pilot_rows`` evenly spaced query rows builds a coarse
(2^-10) pooled histogram of negative similarities, which places the fine histogram's window
around the thresholds the requested FARs need (with generous margins); (2) the main pass
ranks neighbours and fills the per-class fine histograms; (3) if an exact FAR crossing fell
outside the window after all (the pilot is a sample), the histograms are rebuilt once over
the whole [-1, 1] range (recorded as ``histogram_passes: 2``); the results stay exact at the
grid, only slower; (4) a second pass (``tcm.metrics.bootstrap``) gives the median cosine of
the negative and of the positive pairs and, when asked, the class-stratified bootstrap sd of OPIS
and eps-OPIS over the test queries.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol, Sequence

import numpy as np
import torch

from tcm.metrics.bootstrap import BootstrapResult, bootstrap_grid, bootstrap_opis, query_pass
from tcm.metrics.histograms import ClassHistograms, Grid
from tcm.metrics.inputs import available_memory, check_inputs, default_chunk_size, resolve_device, to_device
from tcm.metrics.opis import ClassWeighting, UtilityCurves, curves_from_histograms, eps_opis, opis
from tcm.metrics.retrieval import from_sums
from tcm.metrics.scan import Labels, scan
from tcm.metrics.threshold_report import threshold_report

PILOT_EXPONENT = 10  # pilot bins of ~1e-3
MAX_HIST_BYTES = 1 << 30


@dataclass(frozen=True)
class Evaluation:
    metrics: dict  # the metrics.json payload
    curves: UtilityCurves | None
    histograms: ClassHistograms | None
    bootstrap: BootstrapResult | None = None  # the replicates behind opis_boot_sd / eps_opis_boot_sd


def exponent_for(resolution: float) -> int:
    """Smallest e with 2^-e <= resolution.

    >>> exponent_for(1e-4)  # 2^-14 ~ 6.1e-5
    14
    """
    return max(1, math.ceil(-math.log2(resolution)))


def _fit_memory(lo: float, hi: float, resolution: float, n_classes: int, budget: int) -> Grid:
    """Covering grid with bins of at most ``resolution``, coarsened by powers of two until both
    (C, n_slots) count arrays fit in ``budget`` bytes."""
    exponent = exponent_for(resolution)
    while True:
        g = Grid.covering(lo, hi, exponent)
        if 2 * 8 * n_classes * g.n_slots <= budget or exponent <= PILOT_EXPONENT - 4:
            return g
        exponent -= 1


def pilot_window(x: torch.Tensor, lab: Labels, fars: Sequence[float], pilot_rows: int,
                 chunk_size: int) -> tuple[float, float]:
    """A similarity range that should contain every threshold the FARs need, from a sample."""
    n = x.shape[0]
    rows = np.unique(np.linspace(0, n - 1, min(n, pilot_rows)).round().astype(np.int64))
    g = Grid.covering(-1.0, 1.0 + 2.0**-PILOT_EXPONENT, PILOT_EXPONENT)
    _, h = scan(x, lab, g, None, chunk_size, query_rows=rows, pooled=True)
    far, edges = h.pooled_far(), g.edges()
    # Margins: the sample's FAR may be off by a factor; two coarse bins more for rounding.
    below = np.flatnonzero(far >= min(1.0, 2 * max(fars)))
    above = np.flatnonzero(far <= min(fars) / 3)
    lo = edges[max(int(below[-1]) - 2, 0)] if len(below) else edges[0]
    hi = edges[min(int(above[0]) + 2, len(edges) - 1)] if len(above) else edges[-1]
    return float(lo), float(hi)


class OpisSettings(Protocol):
    beta: float
    far_range: Sequence[float]
    n_thresholds: int
    eps: float
    class_weighting: ClassWeighting
    resolution: float


class BootstrapSettings(Protocol):
    resamples: int
    seed: int


class MetricSettings(Protocol):
    """What :func:`evaluate_embeddings` reads: the ``evaluation`` section of params.yaml as validated by
    ``tcm.config.EvaluationConfig``, where the defaults are declared once (the metrics import no tcm code,
    so the type is described here and tests/test_metrics.py holds the names equal)."""

    recall_k: Sequence[int]
    opis: OpisSettings
    chunk_size: int | None
    device: str
    target_far: float
    worst_share: float
    bootstrap: BootstrapSettings


@dataclass(frozen=True)
class ScanOptions:
    """How one evaluation runs, not what it measures (tests and benchmarks set these)."""

    assume_normalized: bool = False  # take the rows as unit vectors (no L2 normalisation)
    retrieval: bool = True  # False: no Recall@k, MAP@R, R-precision (nor their keys)
    threshold_metrics: bool = True  # False: no OPIS, eps-OPIS, curves, threshold report (nor their keys)
    window: tuple[float, float] | None = None  # the histogram range, instead of the pilot's (repeat runs)
    pilot_rows: int = 1024  # query rows of the pilot pass


def evaluate_embeddings(embeddings: np.ndarray, labels: np.ndarray, settings: MetricSettings, *,
                        progress: bool | str = False, options: ScanOptions = ScanOptions()) -> Evaluation:
    """Recall@k, MAP@R, R-precision, OPIS, eps-OPIS, the utility curves and the threshold report
    of (N, d) ``embeddings`` with (N,) integer ``labels`` under cosine similarity.

    ``settings``: the ``evaluation`` section of params.yaml, validated (``tcm.config.EvaluationConfig()``
    gives its defaults; :class:`MetricSettings`). What it sets here: ``recall_k``, ``opis`` (``beta``,
    ``far_range``, ``n_thresholds``, ``eps``, ``class_weighting``, ``resolution``: the upper bound on the
    histogram bin width, coarsened by powers of two only if the per-class counts would pass 1 GiB; the
    width used is in ``settings``), ``chunk_size`` (query rows per chunk; None: from free memory, see
    ``default_chunk_size``), ``device``, ``target_far`` and ``worst_share`` (the threshold report), and
    ``bootstrap``: ``resamples`` >= 2 adds ``opis_boot_sd`` and ``eps_opis_boot_sd``, the class-stratified
    bootstrap sd over the test queries (``tcm.metrics.bootstrap``); 0 turns it off.
    ``progress``: False, True, or the label its progress lines start with (run and seed).
    With the threshold metrics come ``neg_cos_median`` and ``pos_cos_median``: the median cosine of
    the ordered negative / positive pairs, within half a histogram bin of the exact medians.

    >>> from tcm.config import EvaluationConfig
    >>> e = np.array([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0], [0.6, 0.8]]); y = np.array([0, 0, 1, 1])
    >>> m = evaluate_embeddings(e, y, EvaluationConfig(recall_k=[1], device="cpu")).metrics
    >>> m["recall_at_k"], m["map_at_r"]  # nearest: 0->1 (0.8), 1->3 (0.96), 2->3 (0.8), 3->1 (0.96)
    ({'1': 0.5}, 0.5)
    >>> e = np.array([[1.0, 0], [0.9, 0.1], [0, 1.0], [0.1, 0.9]])
    >>> only_retrieval = ScanOptions(threshold_metrics=False)
    >>> evaluate_embeddings(e, y, EvaluationConfig(recall_k=[1]), options=only_retrieval).metrics["recall_at_k"]
    {'1': 1.0}
    """
    s, opt = settings, options
    o = s.opis
    # The names the computation below reads, from the one settings object.
    beta, far_range, n_thresholds, eps, resolution = o.beta, o.far_range, o.n_thresholds, o.eps, o.resolution
    class_weighting, target_far, worst_share = o.class_weighting, s.target_far, s.worst_share
    retrieval, threshold_metrics = opt.retrieval, opt.threshold_metrics
    label, progress = (progress, bool(progress)) if isinstance(progress, str) else ("", progress)
    e, y = check_inputs(embeddings, labels)
    recall_k = sorted({int(k) for k in s.recall_k})
    if retrieval and not recall_k:
        raise ValueError("recall_k: expected at least one k")
    lab = Labels.of(y)
    if threshold_metrics and lab.sizes.max() < 2:
        raise ValueError("labels: every class has a single image, so there are no positive pairs for OPIS")
    dev = resolve_device(s.device)
    x = to_device(e, dev, opt.assume_normalized)
    n = len(y)
    if retrieval and recall_k[-1] >= n:
        # Recall@k with k past the gallery is 1 by construction: a number that says nothing.
        raise ValueError(f"recall_k: k = {recall_k[-1]} needs more than the {n - 1} other points each query has")
    k_max = min(n - 1, max(recall_k[-1], int(lab.sizes.max()) - 1)) if retrieval else 0
    chunk_size = int(s.chunk_size) if s.chunk_size else default_chunk_size(n, dev, k_max)
    fars = [far_range[0], far_range[1], target_far]

    budget = min(MAX_HIST_BYTES, available_memory(dev) // 4)
    passes = 0
    if threshold_metrics:
        lo, hi = opt.window if opt.window is not None else pilot_window(x, lab, fars, opt.pilot_rows, chunk_size)
        grid = _fit_memory(lo, hi, resolution, len(lab.sizes), budget)
    else:
        grid = Grid(exponent_for(resolution), 0, 1)  # unused: the scan needs a grid but nobody reads it
    desc = f"{label}: similarities" if label else "similarities"
    sums, hist = scan(x, lab, grid, recall_k if retrieval else None, chunk_size, progress=progress,
                      histograms=threshold_metrics, desc=desc)
    passes += 1
    if threshold_metrics and not hist.covers(fars):
        lo = -1.0 - grid.width if hist.pooled_far()[0] <= max(fars) else grid.edges()[0]
        hi = 1.0 + 2 * grid.width if hist.pooled_far()[-1] > min(fars) else grid.edges()[-1]
        grid = _fit_memory(lo, hi, resolution, len(lab.sizes), budget)
        _, hist = scan(x, lab, grid, None, chunk_size, progress=progress, desc=f"{desc} (wider window)")
        passes += 1

    out: dict = from_sums(sums) if retrieval else {}
    curves = None
    settings = {"recall_k": recall_k, "num_images": int(n), "num_classes": int(len(lab.sizes)),
                "num_singleton_classes": int((lab.sizes == 1).sum()), "similarity": "cosine",
                "tie_breaking": "by ascending gallery index", "self_matches": "excluded",
                "chunk_size": chunk_size, "device": str(dev)}
    boot = None
    if threshold_metrics:
        curves = curves_from_histograms(hist, beta, far_range, n_thresholds)
        out.update(opis=opis(curves, class_weighting), eps_opis=eps_opis(curves, eps),
                   threshold_report=threshold_report(hist, target_far, worst_share))
        settings.update(opis={"beta": beta, "far_range": list(far_range), "n_thresholds": n_thresholds, "eps": eps,
                              "class_weighting": class_weighting},
                        target_far=target_far, worst_share=worst_share, threshold_resolution=grid.width,
                        histogram_window=[float(grid.edges()[0]), float(grid.edges()[-1])], histogram_passes=passes)
        resamples, seed = s.bootstrap.resamples, s.bootstrap.seed
        counts, medians = query_pass(x, lab, bootstrap_grid(grid, n) if resamples else None, grid.exponent)
        out.update(neg_cos_median=medians.negative, pos_cos_median=medians.positive)
        settings["pair_median_resolution"] = medians.resolution
        if resamples:
            boot = bootstrap_opis(counts, resamples, seed, beta=beta, far_range=(far_range[0], far_range[1]),
                                  n_thresholds=n_thresholds, eps=eps, class_weighting=class_weighting)
            out.update(opis_boot_sd=boot.opis_sd, eps_opis_boot_sd=boot.eps_opis_sd)
            settings["bootstrap"] = {"resamples": resamples, "seed": seed,
                                     "method": "queries redrawn with replacement within each class; gallery fixed",
                                     "resolution": boot.resolution, "off_window": boot.off_window}
    out["settings"] = settings
    return Evaluation(out, curves, hist if threshold_metrics else None, boot)
