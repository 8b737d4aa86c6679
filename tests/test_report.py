"""The report on hand-made run folders (RunDir layout, several seeds): aggregation over seeds,
paired comparisons with 95% t intervals, the claims, missing / partial runs, one seed, and the
files report.run writes. Expected numbers are worked out by hand, not with tcm.stats."""

from __future__ import annotations

import json
import math
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
import pytest
from conftest import tiny_params

from tcm import figures, report
from tcm.config import Config, parse_config
from tcm.notebook import plot_history

matplotlib.use("Agg")

RUNS = ("digits-ms", "digits-ms-tcm", "digits-pa", "digits-pa-tcm")
MS, PA = "digits/small_cnn/multi_similarity", "digits/small_cnn/proxy_anchor"
# Made-up per-seed results (seeds 0, 1, 2). digits-ms -> -tcm: OPIS down but not significantly,
# R@1 up significantly. digits-pa -> -tcm: OPIS down significantly, R@1 down but not significantly.
OPIS = {"digits-ms": [0.010, 0.014, 0.012], "digits-ms-tcm": [0.008, 0.011, 0.012],
        "digits-pa": [0.020, 0.022, 0.021], "digits-pa-tcm": [0.010, 0.011, 0.012]}
R1 = {"digits-ms": [0.80, 0.82, 0.81], "digits-ms-tcm": [0.83, 0.84, 0.84],
      "digits-pa": [0.90, 0.91, 0.92], "digits-pa-tcm": [0.90, 0.905, 0.915]}


def make_cfg(tmp_path: Path, seeds: list[int]) -> Config:
    p = tiny_params(RUNS)
    p["run_defaults"]["train"].pop("seed", None)
    p["run_defaults"]["train"]["seeds"] = seeds
    return parse_config(p, base_dir=tmp_path)


def write_seed(cfg: Config, run: str, seed: int, r1: float, opis: float) -> None:
    """One seed's evaluate outputs: metrics.json, a tiny curves.csv and 2-D embeddings."""
    d = cfg.run_dir(run)
    d.seed_metrics(seed).parent.mkdir(parents=True, exist_ok=True)
    rates = {"min": 0.0, "median": 0.001, "max": 0.01, "worst_share_mean": 0.008}
    d.seed_metrics(seed).write_text(json.dumps({
        "recall_at_k": {"1": r1, "2": r1 + 0.05, "4": 0.97, "8": 0.99}, "map_at_r": r1 / 2, "r_precision": r1 / 1.5,
        "opis": opis, "eps_opis": 5 * opis,
        "threshold_report": {"target_far": 0.001, "threshold": 0.6, "overall_far": 0.001, "overall_frr": 0.2,
                             "worst_share": 0.05, "class_far": rates, "class_frr": rates}}))
    t = np.linspace(0.2, 0.8, 5)
    curves = pd.concat([pd.DataFrame({"class": c, "threshold": t, "tpr": 1 - t / 2, "tnr": t,
                                      "utility": 0.5 + k * t / 10}) for k, c in enumerate(["0", "1", "overall"])])
    curves.to_csv(d.seed_curves(seed), index=False)
    rng = np.random.default_rng(seed)
    d.seed_embeddings(seed).parent.mkdir(parents=True, exist_ok=True)
    np.savez(d.seed_embeddings(seed), embeddings=rng.normal(size=(30, 2)), labels=np.repeat(np.arange(3), 10))


def write_train(cfg: Config, run: str, seeds: list[int]) -> None:
    """history.csv (one row per seed and epoch) and run.json with a config hash per seed."""
    d = cfg.run_dir(run)
    d.root.mkdir(parents=True, exist_ok=True)
    pd.DataFrame([{"seed": s, "epoch": e, "loss": 2.0 / e + s / 10, "base_loss": 1.5 / e, "tcm_loss": 0.1 * s,
                   "lr": 0.001, "images_per_s": 500.0, "seconds": 1.0} for s in seeds for e in (1, 2)]).to_csv(
        d.history, index=False)
    seed_info = {str(s): {"config_hash": f"h{s}"} for s in seeds}
    d.info.write_text(json.dumps({"run": run, "settings": {}, "seeds": seed_info}))


def populate(cfg: Config, seeds: dict[str, list[int]]) -> None:
    for run, ss in seeds.items():
        write_train(cfg, run, ss)
        for s in ss:
            write_seed(cfg, run, s, R1[run][s], OPIS[run][s])


@pytest.fixture
def full(tmp_path: Path) -> Config:
    cfg = make_cfg(tmp_path, [0, 1, 2])
    populate(cfg, dict.fromkeys(RUNS, [0, 1, 2]))
    return cfg


def tables(cfg: Config) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    per_seed = report.per_seed_table(cfg)
    summary = report.run_summary(cfg, per_seed)
    return per_seed, summary, report.comparison_table(summary, report.find_pairs(cfg), per_seed)


def test_summary_is_mean_sd_and_n_over_seeds(full: Config) -> None:
    per_seed, summary, _ = tables(full)
    assert len(per_seed) == 12 and (per_seed["status"] == "done").all()
    assert per_seed.set_index(["run", "seed"]).loc[("digits-ms", 1), "OPIS"] == 0.014
    s = summary.set_index("run").loc["digits-ms"]
    assert s["status"] == "done" and s["n"] == 3 and s["seeds"] == "0, 1, 2"
    assert s["OPIS mean"] == pytest.approx(0.012) and s["OPIS sd"] == pytest.approx(0.002)
    assert s["R@1 mean"] == pytest.approx(0.81) and s["R@1 sd"] == pytest.approx(0.01)
    assert s["eps-OPIS mean"] == pytest.approx(0.06)
    assert {"R@2 mean", "R@8 sd", "MAP@R mean", "R-precision sd", "eps-OPIS sd"} <= set(summary.columns)


def test_pairs_are_compared_seed_by_seed_with_t_intervals(full: Config) -> None:
    _, _, cmp = tables(full)
    ms = cmp.set_index("comparison").loc[MS]
    assert ms["n"] == 3 and ms["seeds"] == "0, 1, 2"
    assert ms["OPIS without"] == pytest.approx(0.012) and ms["OPIS with"] == pytest.approx(0.0103333, abs=1e-7)
    # diffs -0.002, -0.003, 0: mean -0.0016667, sd 0.0015275, half-width t(0.975, 2) 4.302653 * sd / sqrt(3).
    assert ms["OPIS change"] == pytest.approx(-0.0016667, abs=1e-7)
    assert ms["OPIS change low"] == pytest.approx(-0.0054612, abs=1e-7)
    assert ms["OPIS change high"] == pytest.approx(0.0021279, abs=1e-7)
    assert ms["OPIS significant"] is False or ms["OPIS significant"] == False  # noqa: E712
    assert ms["OPIS change %"] == pytest.approx(-13.8889, abs=1e-4)  # on the means: 0.0103333 / 0.012 - 1
    # diffs 0.03, 0.02, 0.03: mean 0.0266667, sd 0.0057735 -> [0.0123245, 0.0410088], excludes 0.
    assert ms["R@1 change"] == pytest.approx(0.0266667, abs=1e-7)
    assert ms["R@1 change low"] == pytest.approx(0.0123245, abs=1e-7)
    assert ms["R@1 change high"] == pytest.approx(0.0410088, abs=1e-7)
    assert ms["R@1 significant"] == True  # noqa: E712
    pa = cmp.set_index("comparison").loc[PA]
    # OPIS diffs -0.010, -0.011, -0.009: mean -0.010, sd 0.001 -> [-0.0124841, -0.0075159], significant.
    assert (pa["OPIS change low"], pa["OPIS change high"]) == (pytest.approx(-0.0124841, abs=1e-7),
                                                             pytest.approx(-0.0075159, abs=1e-7))
    assert pa["OPIS significant"] == True and pa["R@1 significant"] == False  # noqa: E712
    assert pa["OPIS change %"] == pytest.approx(-47.6190, abs=1e-4)


def test_claims_count_means_and_significance(full: Config) -> None:
    _, _, cmp = tables(full)
    claims = report.claims_table(cmp, 2).set_index("claim")
    ours, sig = claims["ours"], claims[report.SIGNIFICANCE]
    assert ours["comparisons where TCM lowered OPIS"] == "2 of 2"
    assert sig["comparisons where TCM lowered OPIS"] == "1 of 2"
    assert ours["largest OPIS reduction"] == "47.6%" and sig["largest OPIS reduction"] == f"yes ({PA})"
    assert ours["comparisons where TCM raised Recall@1"] == "1 of 2"
    assert sig["comparisons where TCM raised Recall@1"] == "1 of 2"
    assert ours["largest Recall@1 gain (points)"] == "+2.7" and sig["largest Recall@1 gain (points)"] == f"yes ({MS})"
    assert ours["largest Recall@1 drop (points)"] == "-0.3" and sig["largest Recall@1 drop (points)"] == f"no ({PA})"
    assert (claims["comparisons"] == "2 complete of 2 configured").all()
    assert (claims["seeds per comparison"] == "3").all()
    assert claims.loc["comparisons where TCM lowered OPIS", "paper"] == "16 of 16"


def test_missing_and_partial_runs_are_shown_never_filled_in(tmp_path: Path) -> None:
    cfg = make_cfg(tmp_path, [0, 1, 2])
    populate(cfg, {"digits-ms": [0, 1, 2], "digits-ms-tcm": [0, 2]})
    write_seed(cfg, "digits-pa", 5, 0.9, 0.02)  # a seed no longer configured is not reported
    per_seed, summary, cmp = tables(cfg)
    status = summary.set_index("run")["status"]
    assert status.to_dict() == {"digits-ms": "done", "digits-ms-tcm": "partial", "digits-pa": "missing",
                                "digits-pa-tcm": "missing"}
    assert per_seed.set_index(["run", "seed"]).loc[("digits-ms-tcm", 1), "status"] == "missing"
    assert math.isnan(per_seed.set_index(["run", "seed"]).loc[("digits-ms-tcm", 1), "OPIS"])
    assert summary.set_index("run").loc["digits-ms-tcm", "n"] == 2
    assert math.isnan(summary.set_index("run").loc["digits-pa", "OPIS mean"])
    c = cmp.set_index("comparison")
    # Paired on seeds 0 and 2 only: diffs -0.002, 0 -> mean -0.001, t(0.975, 1) = 12.706205 -> [-0.0137062, 0.0117062].
    assert c.loc[MS, "seeds"] == "0, 2" and c.loc[MS, "OPIS change"] == pytest.approx(-0.001)
    assert c.loc[MS, "OPIS change low"] == pytest.approx(-0.0137062, abs=1e-7)
    assert c.loc[PA, "n"] == 0 and math.isnan(c.loc[PA, "OPIS without"])
    claims = report.claims_table(cmp, 2)
    assert (claims["comparisons"] == "1 complete of 2 configured").all()
    assert (claims["seeds per comparison"] == "2").all()


def test_one_seed_gives_no_intervals_and_does_not_crash(tmp_path: Path) -> None:
    cfg = make_cfg(tmp_path, [0])
    populate(cfg, dict.fromkeys(RUNS, [0]))
    _, summary, cmp = tables(cfg)
    assert (summary["status"] == "done").all() and summary["OPIS sd"].isna().all()
    assert cmp["OPIS change low"].isna().all() and cmp["R@1 change high"].isna().all()
    assert cmp["OPIS significant"].isna().all()
    assert cmp.set_index("comparison").loc[MS, "OPIS change"] == pytest.approx(-0.002)
    claims = report.claims_table(cmp, 2).set_index("claim")
    assert claims.loc["comparisons where TCM lowered OPIS", "ours"] == "2 of 2"
    assert claims.loc["comparisons where TCM lowered OPIS", report.SIGNIFICANCE] == report.NEEDS_SEEDS
    written = report.run(cfg)
    assert (cfg.path(cfg.paths.reports) / "figures/tcm_effect.png").is_file()
    assert "Intervals need at least 2 seeds" in written["readme"][0].read_text()
    metrics = json.loads((cfg.path(cfg.paths.reports) / "metrics.json").read_text())
    assert metrics["digits-ms"] == {"n_seeds": 1, "mean": {"R@1": 0.8, "MAP@R": 0.4, "OPIS": 0.01, "eps-OPIS": 0.05},
                                    "sd": {}}


def test_no_results_at_all(tmp_path: Path) -> None:
    cfg = make_cfg(tmp_path, [0, 1])
    _, summary, cmp = tables(cfg)
    assert (summary["status"] == "missing").all()
    assert (report.claims_table(cmp, 2)["ours"] == "missing").all()
    report.run(cfg)
    assert json.loads((cfg.path(cfg.paths.reports) / "metrics.json").read_text()) == {}


class FakeTracker:
    """Records what the report would log to MLflow."""

    enabled = True

    def __init__(self) -> None:
        self.logged: dict[str, set[str]] = {}
        self.stages: list[tuple[str, str]] = []

    def find_run(self, name: str, config_hash: str) -> str | None:
        return f"{name}:{config_hash}"

    def log_artifacts(self, run_id, paths, artifact_path=None) -> None:
        self.logged.setdefault(run_id, set()).update(f"{artifact_path}/{Path(p).name}" for p in paths
                                                     if Path(p).is_file())

    def set_stage(self, run_id, stage) -> None:
        self.stages.append((run_id, stage))


def test_run_writes_tables_figures_metrics_and_readme(full: Config) -> None:
    reports = full.path(full.paths.reports)
    (reports / "notebooks").mkdir(parents=True)
    for stage in ("train", "evaluate"):
        (reports / "notebooks" / f"{stage}-digits-ms.ipynb").write_text("{}")
    tracker = FakeTracker()
    written = report.run(full, tracker=tracker)

    names = {p.name for p in written["tables"]}
    assert {f"{t}.{e}" for t in ("runs", "runs_per_seed", "tcm_comparison", "claims", "thresholds", "digits")
            for e in ("csv", "md")} <= names and {"claims.tex", "digits.tex"} <= names
    figs = {p.name for p in written["figures"]}
    assert {"opis_vs_recall.png", "training_curves.png", "tcm_effect.png",
            "utility_digits_small_cnn_multi_similarity.png", "similarities_digits_small_cnn_proxy_anchor.png",
            "embeddings_digits_small_cnn_multi_similarity.png", "utility_run_digits-pa-tcm.png"} <= figs
    assert all(p.with_suffix(".pdf").is_file() for p in written["figures"])

    per_seed = pd.read_csv(reports / "tables/runs_per_seed.csv")
    assert list(per_seed.columns[:2]) == ["run", "seed"] and len(per_seed) == 12
    digits = pd.read_csv(reports / "tables/digits.csv")
    assert {"R@1 with", "R@8 change low", "OPIS change high", "OPIS change %", "n"} <= set(digits.columns)
    assert len(pd.read_csv(reports / "tables/thresholds.csv")) == 12

    metrics = json.loads((reports / "metrics.json").read_text())
    assert set(metrics) == set(RUNS)
    ms = metrics["digits-ms"]
    assert ms["n_seeds"] == 3 and set(ms["mean"]) == set(ms["sd"]) == {"R@1", "MAP@R", "OPIS", "eps-OPIS"}
    assert ms["mean"]["OPIS"] == pytest.approx(0.012) and ms["sd"]["OPIS"] == pytest.approx(0.002)
    assert "settings" not in json.dumps(metrics)

    readme = written["readme"][0].read_text()
    assert "mean ± sd over its n evaluated seeds" in readme and "seeds 0, 1, 2" in readme
    assert "two-sided 95% Student-t interval of the paired differences" in readme
    assert "comparisons where TCM lowered OPIS" in readme and "16 of 16" in readme
    assert "0.0120 ± 0.0020" in readme and "-0.0017 [-0.0055, +0.0021]" in readme

    # One MLflow run per seed, found by its config hash; each gets its own run's files only.
    assert set(tracker.logged) == {f"{r}:h{s}" for r in RUNS for s in range(3)}
    own = tracker.logged["digits-ms:h1"]
    assert {"notebooks/train-digits-ms.ipynb", "notebooks/evaluate-digits-ms.ipynb", "config/run.json",
            "figures/utility_run_digits-ms.png", "figures/utility_digits_small_cnn_multi_similarity.png"} <= own
    assert not any("proxy_anchor" in f or "tcm_effect" in f or "opis_vs_recall" in f for f in own)
    assert ("digits-pa:h2", "report") in tracker.stages


def test_figures_show_seeds(full: Config) -> None:
    history = pd.read_csv(full.run_dir("digits-ms").history)
    fig = plot_history(history, "digits-ms")
    assert len(fig.axes[0].get_lines()) == 3  # one line per seed
    fig = figures.training_curves({"a": history, "b": history})
    assert len(fig.axes[0].get_lines()) == 2 and len(fig.axes[0].collections) == 2  # mean line + band per run
    _, summary, _ = tables(full)
    fig = figures.landscape(summary)
    assert any(len(c.get_segments()) for c in fig.axes[0].collections)  # error bars drawn
    matplotlib.pyplot.close("all")
