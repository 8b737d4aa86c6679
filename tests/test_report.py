"""The report on hand-made run folders (RunDir layout, several seeds): aggregation over seeds,
paired comparisons with 95% t intervals, the claims, missing / partial runs, one seed, and the
files report.run writes. Expected numbers are worked out by hand, not with tcm.stats."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
import pytest
from conftest import MS, PA, make_cfg, populate, tables, tiny_params, write_seed
from conftest import REPORT_OPIS as OPIS
from conftest import REPORT_R1 as R1
from conftest import REPORT_RUNS as RUNS

from tcm import figures, report
from tcm.config import Config, parse_config
from tcm.notebook import LEGEND_CLASSES, NAMED_OUTLIERS, draw_utility, plot_history, run_utility, utility_gaps

matplotlib.use("Agg")


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
    assert ms["OPIS change %"] == -13.9  # on the means: 0.0103333 / 0.012 - 1, to 1 decimal
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
    assert pa["OPIS change %"] == -47.6
    # Verdicts from the intervals: MS's OPIS interval holds 0, its R@1 one lies above 0; PA the other way.
    assert (ms["OPIS verdict"], ms["R@1 verdict"], pa["OPIS verdict"], pa["R@1 verdict"]) == (
        "no difference", "higher", "lower", "no difference")


def test_claims_count_verdicts_and_significance(full: Config) -> None:
    _, _, cmp = tables(full)
    claims = report.claims_table(cmp, 2).set_index("claim")
    ours, sig = claims["ours"], claims[report.SIGNIFICANCE]
    # Both OPIS means fell, but only PA's interval excludes 0: one verdict 'lower', so 1 of 2.
    assert ours["comparisons where TCM lowered OPIS"] == "1 of 2"
    assert sig["comparisons where TCM lowered OPIS"] == "1 lower, 1 no difference, 0 higher"
    assert ours["largest OPIS reduction"] == "47.6%" and sig["largest OPIS reduction"] == f"yes ({PA})"
    assert ours["comparisons where TCM raised Recall@1"] == "1 of 2"
    assert sig["comparisons where TCM raised Recall@1"] == "0 lower, 1 no difference, 1 higher"
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


@pytest.mark.slow
def test_one_seed_gives_no_intervals_and_does_not_crash(tmp_path: Path) -> None:
    cfg = make_cfg(tmp_path, [0])
    populate(cfg, dict.fromkeys(RUNS, [0]))
    _, summary, cmp = tables(cfg)
    assert (summary["status"] == "done").all() and summary["OPIS sd"].isna().all()
    assert cmp["OPIS change low"].isna().all() and cmp["R@1 change (pp) high"].isna().all()
    assert cmp["OPIS significant"].isna().all()
    assert cmp.set_index("comparison").loc[MS, "OPIS change"] == pytest.approx(-0.002)
    assert cmp["OPIS verdict"].isna().all() and cmp["seeds for 10%"].isna().all()
    claims = report.claims_table(cmp, 2).set_index("claim")
    assert claims.loc["comparisons where TCM lowered OPIS", "ours"] == "0 of 2"  # no interval, no verdict
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
        prefix = f"{artifact_path}/" if artifact_path else ""
        self.logged.setdefault(run_id, set()).update(f"{prefix}{Path(p).name}" for p in paths if Path(p).is_file())

    def set_stage(self, run_id, stage) -> None:
        self.stages.append((run_id, stage))


@pytest.mark.slow
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
            "utility.png", "utility_pair.png"} <= own  # figures at the root, named alike in every run (Compare)
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


@pytest.mark.slow
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


@pytest.mark.slow
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


# ---------------------------------------------------------------- verdicts, precision, collapse, purpose
def boot_and_medians(cfg: Config, runs: dict[str, dict[int, dict]] | None = None) -> None:
    """Every seed of ``full`` again, with a bootstrap sd of 10% of its OPIS and pair medians;
    ``runs`` overrides R@1 or the metrics.json keys of some (run, seed)."""
    for run in RUNS:
        for s in range(3):
            over = dict((runs or {}).get(run, {}).get(s, {}))
            r1 = over.pop("r1", R1[run][s])
            extra = {"opis_boot_sd": 0.1 * OPIS[run][s], "eps_opis_boot_sd": 0.5 * OPIS[run][s],
                     "neg_cos_median": 0.1, "pos_cos_median": 0.7, **over}
            write_seed(cfg, run, s, r1, OPIS[run][s], **extra)


@pytest.mark.slow
def test_precision_columns_of_each_comparison(full: Config) -> None:
    boot_and_medians(full)
    per_seed, summary, cmp = tables(full)
    assert per_seed.set_index(["run", "seed"]).loc[("digits-ms", 1), "OPIS boot sd"] == pytest.approx(0.0014)
    assert summary.set_index("run").loc["digits-ms", "neg cos median mean"] == pytest.approx(0.1)
    ms, pa = (cmp.set_index("comparison").loc[k] for k in (MS, PA))
    # MS: half-width 4.302653 * 0.0015275 / sqrt(3) = 0.0037946 = 31.62% of 0.012.
    assert ms["OPIS CI half-width %"] == pytest.approx(31.622, abs=1e-3)
    assert ms["OPIS boot sd % without"] == pytest.approx(10.0) and ms["OPIS boot sd % with"] == pytest.approx(10.0)
    # seeds for 10%: ceil((2.8 * 0.0015275 / 0.0012)^2) = ceil(12.70) = 13; PA: (2.8 * 0.001 / 0.0021)^2 = 1.78 -> 2.
    assert ms["seeds for 10%"] == 13 and pa["seeds for 10%"] == 2
    assert (ms["learned"], pa["learned"]) == ("unknown", "unknown")  # no settings.json here: chance unknown
    written = report.run(full, tracker=NoTracker())
    reports = full.path(full.paths.reports)
    md = (reports / "tables/tcm_comparison.md").read_text()
    assert "-13.9 " in md and "-13.8889" not in md and "-13.9000" not in md  # percentages to 1 decimal
    csv = pd.read_csv(reports / "tables/tcm_comparison.csv")
    assert {"OPIS verdict", "R@1 verdict", "OPIS CI half-width %", "OPIS boot sd % without", "OPIS boot sd % with",
            "seeds for 10%", "learned"} <= set(csv.columns)
    readme = written["readme"][0].read_text()
    assert "n = ceil(((1.96 + 0.84) × sd of the paired differences / (0.1 × OPIS without TCM))²)" in readme
    assert re.search(r"\| +-13\.9 \| no difference +\| higher +\| +31\.6 \| +10\.0 \| +10\.0 \| +13 \|", readme)
    assert "class-stratified bootstrap over the test queries" in readme
    assert "300 resamples, seed 0" in readme
    runs_per_seed = pd.read_csv(reports / "tables/runs_per_seed.csv")
    assert {"OPIS boot sd", "eps-OPIS boot sd", "neg cos median", "pos cos median", "learned",
            "collapsed because"} <= set(runs_per_seed.columns)


@pytest.mark.slow
def test_collapsed_seeds_are_marked_and_left_out_of_the_claims(full: Config) -> None:
    # PA without TCM, seed 2: negative pairs bunched near 1. MS with TCM, seed 1: R@1 6 pp below MS's
    # seed 1 (0.82 -> 0.76). Boundaries not collapsed: a median just below 0.9, a drop of exactly 5 pp.
    boot_and_medians(full, {"digits-pa": {2: {"neg_cos_median": 0.95}, 1: {"neg_cos_median": 0.8999}},
                            "digits-ms-tcm": {1: {"r1": 0.76}, 2: {"r1": 0.76}}})  # seed 2: 0.81 -> 0.76, 5 pp
    per_seed, summary, cmp = tables(full)
    seeds = per_seed.set_index(["run", "seed"])
    assert seeds.loc[("digits-pa", 2), "learned"] == "collapsed"
    assert seeds.loc[("digits-pa", 2), "collapsed because"] == "negative-pair cosine median 0.950 >= 0.9"
    assert seeds.loc[("digits-ms-tcm", 1), "learned"] == "collapsed"
    assert seeds.loc[("digits-ms-tcm", 1), "collapsed because"].startswith("R@1 6.0 pp below digits-ms")
    assert seeds.loc[("digits-pa", 1), "learned"] == seeds.loc[("digits-ms-tcm", 2), "learned"] == "unknown"
    runs = summary.set_index("run")
    assert runs.loc["digits-pa", "learned"] == "collapsed" and runs.loc["digits-pa", "collapsed seeds"] == "2"
    assert runs.loc["digits-ms-tcm", "collapsed seeds"] == "1" and runs.loc["digits-ms", "learned"] == "unknown"
    assert set(cmp.set_index("comparison")["learned"]) == {"collapsed"}
    claims = report.claims_table(cmp, 2)
    assert (claims["ours"] == "missing").all()
    assert (claims["comparisons"] == "0 complete of 2 configured; 2 left out: collapsed (negative-pair cosine "
                                     "median >= 0.9, or R@1 with TCM more than 5 pp below without)").all()

    # Only PA collapsed: MS is counted alone, and the count of those left out is said.
    boot_and_medians(full, {"digits-pa": {2: {"neg_cos_median": 0.9}}})
    _, _, cmp = tables(full)
    claims = report.claims_table(cmp, 2).set_index("claim")
    assert claims.loc["comparisons where TCM raised Recall@1", "ours"] == "1 of 1"
    assert claims.loc["comparisons where TCM lowered OPIS", "ours"] == "0 of 1"
    assert claims["comparisons"].iloc[0].startswith("1 complete of 2 configured; 1 left out: collapsed")
    written = report.run(full, tracker=NoTracker())
    readme = written["readme"][0].read_text()
    assert "collapsed" in readme and ">= 0.9" in readme and "more than 5 percentage points below" in readme
    comparison = pd.read_csv(full.path(full.paths.reports) / "tables/tcm_comparison.csv").set_index("comparison")
    assert comparison.loc[PA, "learned"] == "collapsed" and comparison.loc[MS, "learned"] == "unknown"


def test_chance_level_and_collapse_are_judged_per_seed(full: Config) -> None:
    """With settings.json (5 test classes, 900 images: chance bound ~0.227), seeds learn or not."""
    boot_and_medians(full, {"digits-ms": {0: {"r1": 0.2}}})
    for run in RUNS:
        for s in range(3):
            path = full.run_dir(run).seed_settings(s)
            path.write_text(json.dumps({**json.loads(path.read_text()), "num_classes": 5, "num_images": 900}))
    per_seed, summary, cmp = tables(full)
    seeds = per_seed.set_index(["run", "seed"])["learned"]
    assert seeds[("digits-ms", 0)] == "did not learn" and seeds[("digits-ms", 1)] == "yes"
    # ms-tcm seed 0 (0.83) vs ms seed 0 (0.2): a gain is no collapse.
    assert seeds[("digits-ms-tcm", 0)] == "yes" and set(cmp["learned"]) == {"yes"}


@pytest.mark.slow
def test_purpose_statement_for_data_the_package_makes(full: Config, tmp_path: Path) -> None:
    from types import SimpleNamespace as S

    readme = report.run(full, tracker=NoTracker())["readme"][0].read_text()
    assert readme.startswith("# Results\n\n## What this run is\n\nA demonstration of the pipeline and of the "
                             "precision of its metrics on data generated by the package (digits: scikit-learn's")
    assert "**not a test of the paper's claims**" in readme and "`paper` and `cub-quick` profiles" in readme
    assert "reported as they came out" in readme
    glyphs = S(runs={"r": S(dataset="g")}, datasets={"g": S(source="glyphs", synthetic=None)})
    assert "g: random-stroke glyphs of classes disjoint across pretrain" in report._purpose(glyphs)[2]
    p = tiny_params(RUNS)
    p["datasets"] = {"digits": {"source": "cub", "synthetic": {"n_classes": 8}}}
    assert "a generated copy in cub's file format" in report._purpose(parse_config(p, base_dir=tmp_path))[2]
    p["datasets"] = {"digits": {"source": "cub", "root": str(tmp_path)}}  # the real benchmark: no such paragraph
    assert report._purpose(parse_config(p, base_dir=tmp_path)) == []
    mixed = S(runs={"a": S(dataset="g"), "b": S(dataset="c")},
              datasets={"g": S(source="glyphs", synthetic=None), "c": S(source="cars196", synthetic=None)})
    assert report._purpose(mixed) == []


def test_class_rates_at_one_threshold() -> None:
    # class 0: two close images; class 1: two images far apart, one of them close to class 0
    emb = np.array([[1.0, 0.0], [1.0, 0.05], [0.99, 0.1], [-1.0, 0.0]])
    rates = report.class_rates_at(emb, np.array([0, 0, 1, 1]), 0.9).set_index("class")
    # class 0: positives (0,1),(1,0) accepted: FRR 0; negatives: 0->2 and 1->2 accepted of 4: FAR 0.5
    assert rates.loc["0", "FRR"] == 0.0 and rates.loc["0", "FAR"] == 0.5
    # class 1: its positive pair is rejected both ways (FRR 1); 2->0, 2->1 accepted of 4 negatives
    assert rates.loc["1", "FRR"] == 1.0 and rates.loc["1", "FAR"] == 0.5


def test_utility_over_seeds_is_the_mean_with_a_min_max_band() -> None:
    t = np.linspace(0.2, 0.8, 5)
    a, b = _curves(2, t), _curves(2, t).assign(utility=lambda d: d["utility"] + 0.1)
    mean = report.utility_over_seeds([a, b])
    row = mean[mean["class"] == "1"].iloc[0]
    assert row["utility"] == pytest.approx(0.56) and (row["low"], row["high"]) == pytest.approx((0.51, 0.61))
    assert set(mean["seeds"]) == {2} and len(mean) == 3 * 5
    # seeds sampled on different calibration ranges: the grid is the range both cover
    shifted = report.utility_over_seeds([a, b.assign(threshold=b["threshold"] + 0.1)])
    assert shifted["threshold"].min() == pytest.approx(0.3) and shifted["threshold"].max() == pytest.approx(0.8)


def test_report_writes_class_rates_utility_bands_and_plot_data(full: Config) -> None:
    written = report.run(full, tracker=FakeTracker())
    reports = full.path(full.paths.reports)
    assert reports / "figures/class_rates.png" in written["figures"]
    utility = pd.read_csv(reports / "plots/utility.csv", dtype={"class": str})
    assert list(utility.columns) == ["run", "class", "threshold", "utility"] and set(utility["run"]) == set(RUNS)
    rates = pd.read_csv(reports / "plots/class_rates.csv", dtype={"class": str})
    assert {"run", "class", "FAR", "FRR"} <= set(rates.columns) and set(rates["class"]) == {"0", "1", "2"}
    readme = written["readme"][0].read_text()
    assert "figures/class_rates.png" in readme and "mean over seeds 0, 1, 2, band = min to max" in readme


def test_markdown_tables_round_percentages_and_changes(full: Config) -> None:
    report.run(full, tracker=FakeTracker())
    reports = full.path(full.paths.reports)
    md = (reports / "tables/tcm_comparison_per_seed.md").read_text()
    csv = pd.read_csv(reports / "tables/tcm_comparison_per_seed.csv")
    change = csv["R@1 change (pp)"].iloc[0]
    assert f"{change:.2f}" in md and f"{change:.4f}" not in md  # pp changes to 2 decimals; the CSV keeps all
    assert report._column_format("OPIS change %") == ".1f" and report._column_format("OPIS") == ".4f"


def test_report_notebook_sections_head_every_table_and_figure(full: Config) -> None:
    written = report.run(full, tracker=FakeTracker())
    sections = dict(report.notebook_sections(written))
    shown = [p for paths in sections.values() for p in paths]
    assert sorted(shown) == sorted([p for p in written["tables"] if p.suffix == ".md"] + written["figures"])
    assert [p.stem for p in sections["One global threshold: per-class FAR and FRR"]] == ["thresholds", "class_rates"]
    assert all(p.stem.startswith("utility_") for p in sections["Per-class utility vs threshold"])


def test_plain_progress_shows_stderr_as_output(capsys: pytest.CaptureFixture) -> None:
    import sys

    from tcm.notebook import plain_progress

    with plain_progress():
        print("epoch 1/2", file=sys.stderr)
    out = capsys.readouterr()
    assert "epoch 1/2" in out.out
