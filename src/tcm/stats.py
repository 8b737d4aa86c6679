"""Statistics over seeds: each configuration's mean, standard deviation and n, and each
without/with-TCM comparison as a paired difference (same seed without and with TCM) with a
two-sided 95% Student-t interval.

Why t and not bootstrap: with the 3 seeds of the default (and rarely more than 5), a bootstrap
over n values has only n^n resamples and under-covers badly; the t interval is exact when the
paired differences are normal, and its assumption is stated in the report.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, Mapping, Sequence

import numpy as np
from scipy import stats as _scipy_stats

# The metrics the report, the claims and the run-level metrics.json summarise over seeds.
HEADLINE = ("R@1", "MAP@R", "OPIS", "eps-OPIS")


def headline(metrics: Mapping) -> dict[str, float]:
    """Every Recall@k and the headline metrics of one seed's metrics.json, under report names."""
    out = {f"R@{k}": float(v) for k, v in sorted(metrics["recall_at_k"].items(), key=lambda kv: int(kv[0]))}
    out.update({"MAP@R": float(metrics["map_at_r"]), "R-precision": float(metrics["r_precision"]),
                "OPIS": float(metrics["opis"]), "eps-OPIS": float(metrics["eps_opis"])})
    return out


@dataclass(frozen=True)
class Spread:
    """Mean, sample standard deviation (n - 1 in the denominator; NaN for one value) and n."""

    mean: float
    sd: float
    n: int


def spread(values: Sequence[float]) -> Spread:
    """Mean, sample sd and n of ``values`` (NaN sd for one value; NaN mean and sd for none).

    >>> spread([1.0, 2.0, 3.0])
    Spread(mean=2.0, sd=1.0, n=3)
    """
    x = np.asarray(values, dtype=float)
    if x.size == 0:
        return Spread(math.nan, math.nan, 0)
    return Spread(float(x.mean()), float(x.std(ddof=1)) if x.size > 1 else math.nan, int(x.size))


@dataclass(frozen=True)
class PairedDifference:
    """with - without over paired seeds; [low, high] is the 95% t interval (NaN for n < 2)."""

    mean: float
    sd: float
    n: int
    low: float
    high: float

    @property
    def significant(self) -> bool:
        """The interval excludes 0 (False when it cannot be computed)."""
        return bool(self.low > 0 or self.high < 0)


def paired_difference(without: Sequence[float], with_tcm: Sequence[float], level: float = 0.95) -> PairedDifference:
    """Paired differences ``with_tcm[i] - without[i]`` (the i-th values share a seed).

    >>> d = paired_difference([1.0, 2.0, 3.0], [2.0, 3.0, 5.0])
    >>> d.mean, d.n, round(d.low, 4), round(d.high, 4)
    (1.3333333333333333, 3, -0.1009, 2.7676)
    """
    a, b = np.asarray(without, dtype=float), np.asarray(with_tcm, dtype=float)
    if a.shape != b.shape:
        raise ValueError(f"paired values need the same length, but got {a.size} without and {b.size} with TCM")
    s = spread(b - a)
    if s.n < 2:
        return PairedDifference(s.mean, s.sd, s.n, math.nan, math.nan)
    half = float(_scipy_stats.t.ppf(0.5 + level / 2, s.n - 1)) * s.sd / math.sqrt(s.n)
    return PairedDifference(s.mean, s.sd, s.n, s.mean - half, s.mean + half)


Verdict = Literal["lower", "higher", "no difference"]


def verdict(d: PairedDifference) -> Verdict | None:
    """What a paired comparison's 95% interval says about with - without: 'lower' (it lies below 0),
    'higher' (above 0) or 'no difference' (it holds 0); None without an interval (fewer than 2 seeds).

    >>> verdict(paired_difference([1.0, 2.0, 3.0], [0.5, 1.4, 2.6])), verdict(paired_difference([1.0], [2.0]))
    ('lower', None)
    """
    if math.isnan(d.low) or math.isnan(d.high):
        return None
    return "lower" if d.high < 0 else "higher" if d.low > 0 else "no difference"


# Normal quantiles of the sample-size rule: two-sided 95% (1.96) and 80% power (0.84).
Z_95, Z_POWER_80 = 1.96, 0.84


def seeds_needed(sd_diff: float, change: float) -> int | None:
    """Seeds a paired test needs to detect a true mean change ``change`` at two-sided 95% with 80% power,
    given the sd of the paired differences: n = ceil(((1.96 + 0.84) * sd_diff / change)^2), at least 2
    (the normal approximation: the t test needs a seed or two more when n is small). None when the sd
    or the change is unknown or the change is 0.

    >>> seeds_needed(0.001, 0.0012), seeds_needed(0.002, 0.001), seeds_needed(float("nan"), 0.001)
    (6, 32, None)
    """
    if not (math.isfinite(sd_diff) and math.isfinite(change)) or change == 0:
        return None
    return max(2, math.ceil(((Z_95 + Z_POWER_80) * sd_diff / abs(change)) ** 2))


def seed_summary(per_seed: Mapping[int, Mapping]) -> dict:
    """The run-level metrics.json (a DVC metric): the mean over the evaluated seeds of each headline
    metric, and their sd under ``sd``. Numbers only, so that `dvc metrics show` stays one narrow row
    per run (the seeds are in run.json and the per-seed files)."""
    seeds = sorted(per_seed)
    rows = {s: headline(per_seed[s]) for s in seeds}
    spreads = {k: spread([rows[s][k] for s in seeds]) for k in HEADLINE}
    # sd is null (not NaN, which is not JSON) when one seed gives no spread.
    return {**{k: v.mean for k, v in spreads.items()},
            "sd": {k: (None if math.isnan(v.sd) else v.sd) for k, v in spreads.items()}}
