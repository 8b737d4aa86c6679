"""tcm.stats against numbers worked out by hand (t quantiles from tables: t(0.975, 2) = 4.302653,
t(0.975, 1) = 12.706205)."""

from __future__ import annotations

import math

import pytest

from tcm.stats import HEADLINE, headline, paired_difference, seed_summary, seeds_needed, spread, verdict


def seed_metrics(r1: float, opis: float) -> dict:
    return {"recall_at_k": {"10": 0.99, "1": r1, "2": r1 + 0.1}, "map_at_r": 0.4, "r_precision": 0.5,
            "opis": opis, "eps_opis": 2 * opis}


def test_spread_is_mean_sample_sd_and_n() -> None:
    s = spread([0.010, 0.014, 0.012])
    assert (s.mean, s.sd, s.n) == (pytest.approx(0.012), pytest.approx(0.002), 3)
    one = spread([0.5])
    assert one.mean == 0.5 and math.isnan(one.sd) and one.n == 1
    none = spread([])
    assert math.isnan(none.mean) and math.isnan(none.sd) and none.n == 0


def test_paired_difference_oracle() -> None:
    # diffs -0.002, -0.003, 0: mean -0.0016667, sd 0.0015275; half-width 4.302653 * 0.0015275 / sqrt(3) = 0.0037946.
    d = paired_difference([0.010, 0.014, 0.012], [0.008, 0.011, 0.012])
    assert d.n == 3
    assert d.mean == pytest.approx(-0.0016667, abs=1e-7) and d.sd == pytest.approx(0.0015275, abs=1e-7)
    assert d.low == pytest.approx(-0.0054612, abs=1e-7) and d.high == pytest.approx(0.0021279, abs=1e-7)
    assert not d.significant
    # diffs 0.03, 0.02, 0.03: mean 0.0266667, sd 0.0057735 -> [0.0123245, 0.0410088], excludes 0.
    r = paired_difference([0.80, 0.82, 0.81], [0.83, 0.84, 0.84])
    assert r.low == pytest.approx(0.0123245, abs=1e-7) and r.high == pytest.approx(0.0410088, abs=1e-7)
    assert r.significant
    # Two seeds: diffs -0.002, 0 -> mean -0.001, sd 0.0014142, half-width 12.706205 * 0.001 = 0.0127062.
    two = paired_difference([0.010, 0.012], [0.008, 0.012])
    assert (two.low, two.high) == (pytest.approx(-0.0137062, abs=1e-7), pytest.approx(0.0117062, abs=1e-7))


def test_paired_difference_pairs_by_position_not_by_sorting() -> None:
    # Same values in another order: the pairing (and so the interval) changes.
    assert paired_difference([1.0, 2.0, 3.0], [1.1, 2.1, 3.1]).significant
    assert not paired_difference([1.0, 2.0, 3.0], [3.1, 2.1, 1.1]).significant


def test_paired_difference_one_seed_has_no_interval() -> None:
    d = paired_difference([0.010], [0.008])
    assert d.mean == pytest.approx(-0.002) and d.n == 1
    assert math.isnan(d.sd) and math.isnan(d.low) and math.isnan(d.high) and not d.significant


def test_paired_difference_needs_equal_lengths() -> None:
    with pytest.raises(ValueError, match="same length"):
        paired_difference([1.0, 2.0, 3.0], [1.0, 2.0])


def test_headline_names_every_recall_at_k_in_order() -> None:
    h = headline(seed_metrics(0.8, 0.01))
    assert list(h) == ["R@1", "R@2", "R@10", "MAP@R", "R-precision", "OPIS", "eps-OPIS"]
    assert h["R@2"] == pytest.approx(0.9) and h["eps-OPIS"] == pytest.approx(0.02)


def test_seed_summary_over_seeds() -> None:
    s = seed_summary({2: seed_metrics(0.81, 0.012), 0: seed_metrics(0.80, 0.010), 1: seed_metrics(0.82, 0.014)})
    assert list(s) == [*HEADLINE, "sd"] and set(s["sd"]) == set(HEADLINE)
    assert s["R@1"] == pytest.approx(0.81) and s["sd"]["R@1"] == pytest.approx(0.01)
    assert s["OPIS"] == pytest.approx(0.012) and s["sd"]["OPIS"] == pytest.approx(0.002)
    assert s["eps-OPIS"] == pytest.approx(0.024) and s["sd"]["MAP@R"] == pytest.approx(0.0)


def test_seed_summary_one_seed_has_null_sd() -> None:
    s = seed_summary({0: seed_metrics(0.8, 0.01)})
    assert s["OPIS"] == 0.01
    assert all(v is None for v in s["sd"].values())  # JSON null, not NaN


def test_verdict_reads_the_interval() -> None:
    assert verdict(paired_difference([0.020, 0.022, 0.021], [0.010, 0.011, 0.012])) == "lower"
    assert verdict(paired_difference([0.80, 0.82, 0.81], [0.83, 0.84, 0.84])) == "higher"
    assert verdict(paired_difference([0.010, 0.014, 0.012], [0.008, 0.011, 0.012])) == "no difference"
    assert verdict(paired_difference([0.010], [0.008])) is None


def test_seeds_needed_for_a_paired_test() -> None:
    # (2.8 * 0.0015275 / 0.0012)^2 = 12.70 -> 13; a precise instrument still needs 2; unknown sd -> None.
    assert seeds_needed(0.0015275, 0.0012) == 13
    assert seeds_needed(1e-6, 0.01) == 2 and seeds_needed(0.001, -0.0012) == seeds_needed(0.001, 0.0012) == 6
    assert seeds_needed(math.nan, 0.001) is None and seeds_needed(0.001, 0.0) is None
