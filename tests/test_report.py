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
from tcm.notebook import LEGEND_CLASSES, NAMED_OUTLIERS, draw_utility, plot_history, run_utility, utility_gaps

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
    # diffs 0.03, 0.02, 0.03: mean 0.0266667, sd 0.0057735 -> [0.0123245, 0.0410088], excludes 0;
    # Recall changes are in percentage points.
    assert ms["R@1 change (pp)"] == pytest.approx(2.66667, abs=1e-5)
    assert ms["R@1 change (pp) low"] == pytest.approx(1.23245, abs=1e-5)
    assert ms["R@1 change (pp) high"] == pytest.approx(4.10088, abs=1e-5)
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
    assert ours["largest Recall@1 gain (pp)"] == "+2.7" and sig["largest Recall@1 gain (pp)"] == f"yes ({MS})"
    assert ours["largest Recall@1 drop (pp)"] == "-0.3" and sig["largest Recall@1 drop (pp)"] == f"no ({PA})"
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
    assert cmp["OPIS change low"].isna().all() and cmp["R@1 change (pp) high"].isna().all()
    assert cmp["OPIS significant"].isna().all()
    assert cmp.set_index("comparison").loc[MS, "OPIS change"] == pytest.approx(-0.002)
    claims = report.claims_table(cmp, 2).set_index("claim")
    assert claims.loc["comparisons where TCM lowered OPIS", "ours"] == "2 of 2"
    assert claims.loc["comparisons where TCM lowered OPIS", report.SIGNIFICANCE] == report.NEEDS_SEEDS
    written = report.run(cfg)
    assert (cfg.path(cfg.paths.reports) / "figures/tcm_effect.png").is_file()
    assert (cfg.path(cfg.paths.reports) / "figures/per_seed.png").is_file()  # one seed: a dot, no sd bar
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
    import nbformat

    for stage in ("train", "evaluate"):  # logged to MLflow as HTML renders
        nbformat.write(nbformat.v4.new_notebook(), reports / "notebooks" / f"{stage}-digits-ms.ipynb")
    tracker = FakeTracker()
    written = report.run(full, tracker=tracker)

    names = {p.name for p in written["tables"]}
    assert {f"{t}.{e}" for t in ("runs", "runs_per_seed", "tcm_comparison", "claims", "thresholds", "digits")
            for e in ("csv", "md")} <= names and {"claims.tex", "digits.tex"} <= names
    figs = {p.name for p in written["figures"]}
    assert {"opis_vs_recall.png", "training_curves.png", "tcm_effect.png",
            "utility_digits_small_cnn_multi_similarity.png", "similarities_digits_small_cnn_proxy_anchor.png",
            "embeddings_digits_small_cnn_multi_similarity.png", "utility_run_digits-pa-tcm.png", "per_seed.png"} <= figs
    assert all(figures.pdf_twin(p).is_file() for p in written["figures"])

    per_seed = pd.read_csv(reports / "tables/runs_per_seed.csv")
    assert list(per_seed.columns[:2]) == ["run", "seed"] and len(per_seed) == 12
    digits = pd.read_csv(reports / "tables/digits.csv")
    assert {"R@1 with", "R@8 change (pp) low", "OPIS change high", "OPIS change %", "n"} <= set(digits.columns)
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
    assert {"notebooks/train-digits-ms.html", "notebooks/evaluate-digits-ms.html", "config/run.json",
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


class NoTracker:
    enabled = False


def test_recall_changes_are_in_percentage_points_everywhere(full: Config) -> None:
    written = report.run(full, tracker=NoTracker())
    reports = full.path(full.paths.reports)
    for t in ("tcm_comparison", "tcm_comparison_per_seed", "digits"):
        cols = set(pd.read_csv(reports / f"tables/{t}.csv").columns)
        assert "R@1 change (pp)" in cols and "MAP@R change (pp)" in cols, t
        assert not {"R@1 change", "R@1 change low", "MAP@R change"} & cols, t  # no unlabelled fractions left
        assert "OPIS change" in cols and "OPIS change (pp)" not in cols, t  # OPIS keeps its own unit
    per_seed = pd.read_csv(reports / "tables/tcm_comparison_per_seed.csv").set_index(["comparison", "seed"])
    assert per_seed.loc[(MS, 1), "R@1 change (pp)"] == pytest.approx(2.0)  # 0.84 - 0.82
    claims = pd.read_csv(reports / "tables/claims.csv")["claim"]
    assert "largest Recall@1 gain (pp)" in set(claims) and not claims.str.contains("points").any()
    readme = written["readme"][0].read_text()
    assert "R@1 change (pp) [95% CI]" in readme and "+2.67 [+1.23, +4.10]" in readme
    assert "percentage points" in readme and "OPIS change %" in readme


def test_per_seed_figure_is_written_and_listed(full: Config) -> None:
    written = report.run(full, tracker=NoTracker())
    png = full.path(full.paths.reports) / "figures/per_seed.png"
    assert png in written["figures"] and figures.pdf_twin(png).is_file()
    assert "(figures/per_seed.png)" in written["readme"][0].read_text()
    per_seed, summary, _ = tables(full)
    fig = figures.per_seed(per_seed, summary, ("R@1", "OPIS"))
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["digits-ms", "digits-pa", "digits-ms-tcm",
                                                            "digits-pa-tcm"]  # without TCM first
    assert sum(len(c.get_offsets()) for c in ax.collections if len(c.get_offsets()) > 0) >= 12  # a dot per seed
    legend = [t.get_text() for t in fig.axes[1].get_legend().get_texts()]
    assert {"without TCM", "with TCM", "mean ± sd"} <= set(legend)
    matplotlib.pyplot.close("all")


def _curves(n_classes: int, t: np.ndarray) -> pd.DataFrame:
    """Class k has utility 0.5 + k/100 flat over t; 'overall' is 0.5 + n/200 (class gaps grow away from it)."""
    rows = [pd.DataFrame({"class": str(k), "threshold": t, "utility": 0.5 + k / 100}) for k in range(n_classes)]
    rows.append(pd.DataFrame({"class": "overall", "threshold": t, "utility": 0.5 + n_classes / 200}))
    return pd.concat(rows, ignore_index=True)


def test_utility_plots_name_their_classes() -> None:
    t = np.linspace(0.2, 0.8, 5)
    fig = run_utility(_curves(3, t), "few")
    legend = [x.get_text() for x in fig.axes[0].get_legend().get_texts()]
    assert legend == ["class 0", "class 1", "class 2", "overall"]
    overall = fig.axes[0].get_lines()[-1]
    assert overall.get_color() == "black" and overall.get_linewidth() > 2
    # Many classes: only the NAMED_OUTLIERS furthest from the overall curve are named, and the legend says so.
    n = LEGEND_CLASSES + 8
    curves = _curves(n, t)
    _, ax = matplotlib.pyplot.subplots()
    draw_utility(ax, curves, "many")
    legend = [x.get_text() for x in ax.get_legend().get_texts()]
    far = sorted(utility_gaps(curves).nlargest(NAMED_OUTLIERS).index, key=int)
    assert legend == ["other classes", *(f"class {c}" for c in far), "overall"]
    assert {"0", str(n - 1)} <= set(far)  # the two ends are furthest from the middle
    assert f"{NAMED_OUTLIERS} of {n} classes" in ax.get_legend().get_title().get_text()
    assert len(ax.get_lines()) == n + 1  # every class is still drawn
    matplotlib.pyplot.close("all")


def test_without_and_with_tcm_panels_share_axes() -> None:
    a, b = _curves(3, np.linspace(0.2, 0.5, 5)), _curves(3, np.linspace(0.4, 0.9, 5))
    b["utility"] -= 0.3
    fig = figures.utility_pair(a, b, "pair")
    left, right = fig.axes[:2]
    assert left.get_xlim() == right.get_xlim() and left.get_ylim() == right.get_ylim()
    assert left.get_xlim()[0] <= 0.2 and left.get_xlim()[1] >= 0.9  # both ranges fit
    assert {x.get_text() for x in left.get_legend().get_texts()} >= {"class 0", "class 2", "overall"}
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(3), 20)
    runs = {"without TCM": (rng.normal(size=(60, 2)), y), "with TCM": (5 * rng.normal(size=(60, 2)), y)}
    for fig in (figures.embeddings_2d(runs, "pair"), figures.similarity_histograms(runs, (0.7, 0.3), "pair")):
        left, right = fig.axes[:2]
        assert left.get_xlim() == right.get_xlim() and left.get_ylim() == right.get_ylim()
    matplotlib.pyplot.close("all")


def test_embedding_plot_names_its_projection() -> None:
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(3), 20)
    # Most variance along the first axis, so PCA component 1 keeps most of it.
    emb = rng.normal(size=(60, 8)) * np.array([10, 3, 1, 1, 1, 1, 1, 1])
    ax = figures.embeddings_2d({"without TCM": (emb, y)}, "pca").axes[0]
    assert ax.get_xlabel().startswith("PCA component 1 (") and ax.get_xlabel().endswith("% of variance)")
    assert ax.get_ylabel().startswith("PCA component 2 (")
    share = int(ax.get_xlabel().split("(")[1].split("%")[0])
    assert 50 < share < 100
    assert "PCA of the 8-D embeddings" in ax.get_title()
    ax = figures.embeddings_2d({"toy": (emb[:, :2], y)}, "toy").axes[0]
    assert ax.get_xlabel() == "embedding dimension 1" and "raw 2-D embeddings" in ax.get_title()
    assert {x.get_text() for x in ax.get_legend().get_texts()} == {"class 0", "class 1", "class 2"}
    matplotlib.pyplot.close("all")
