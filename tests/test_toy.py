"""The paper's 2-D toy: a closed-set split of the digits, the unit-circle figure, and runs that stay at
chance marked "did not learn" and kept out of the claims."""

from __future__ import annotations

import json

import matplotlib.patches
import matplotlib.pyplot
import numpy as np
import pytest
from conftest import MS, PA, tables

from tcm import figures, report
from tcm.config import ConfigError, DatasetConfig, load_config, parse_config
from tcm.data import prepare, read_manifest
from tcm.profiles import render


@pytest.mark.slow
def test_closed_set_split_holds_out_images_of_every_class(tmp_path) -> None:
    ds = DatasetConfig(source="sklearn_digits", closed_set_test_share=0.3, image_size=8, resize=8)
    prepare(ds, tmp_path / "d")
    table = read_manifest(tmp_path / "d").table
    train, test = (table[table.split == s] for s in ("train", "test"))
    assert set(train.label) == set(test.label) == set(range(10))  # every digit in both splits
    share = test.groupby("label").size() / table.groupby("label").size()
    assert share.between(0.28, 0.32).all() and not set(train.path) & set(test.path)


@pytest.mark.slow
def test_closed_set_is_recorded_and_open_world_stays_enforced(tmp_path) -> None:
    prepare(DatasetConfig(source="sklearn_digits", closed_set_test_share=0.3), tmp_path / "c")
    assert '"closed_set": true' in (tmp_path / "c/dataset.json").read_text()
    info = tmp_path / "c/dataset.json"
    info.write_text(info.read_text().replace('"closed_set": true', '"closed_set": false'))
    with pytest.raises(Exception, match="open-world splits need disjoint classes"):
        read_manifest(tmp_path / "c")


@pytest.mark.parametrize("fields,words", [
    ({"source": "sklearn_digits", "closed_set_test_share": 0.3, "train_classes": [0, 1]}, "in place of"),
    ({"source": "cub", "closed_set_test_share": 0.3}, "applies to sources"),
    ({"source": "sklearn_digits"}, r"closed_set_test_share \(closed set\) is required"),
    ({"source": "sklearn_digits", "closed_set_test_share": 1.0}, "less than 1"),
])
def test_closed_set_settings_are_checked(fields, words) -> None:
    raw = {"datasets": {"d": fields}, "runs": {"r": {"dataset": "d", "model": {"backbone": "small_cnn"},
                                                     "loss": {"name": "contrastive"}}}}
    with pytest.raises(ConfigError, match=words):
        parse_config(raw)


def test_toy_profile_trains_every_digit_in_two_dimensions(tmp_path) -> None:
    cfg = _toy_config(tmp_path)
    (ds,) = cfg.datasets.values()
    assert ds.closed_set_test_share is not None and ds.train_classes is None
    for run in cfg.runs.values():
        assert run.model.embedding_dim == 2 and run.train.batch_size // run.train.m_per_class == 10
        assert len(run.train.seeds) >= 3  # the figure shows every seed


def test_toy_margins_follow_the_circle_geometry(tmp_path) -> None:
    """The rule in profiles/toy.yaml: K classes on the unit circle are D = 360/K degrees apart; each
    class an arc of D/3, gaps of 2D/3: m+ = cos(D/3), m- = cos(2D/3), MultiSimilarity's base cos(D/2)."""
    cfg = _toy_config(tmp_path)
    (ds,) = cfg.datasets.values()
    d = np.radians(360 / len(np.unique(_labels(ds))))
    for name, run in cfg.runs.items():
        assert run.loss.name == "multi_similarity"
        assert run.loss.params["base"] == pytest.approx(np.cos(d / 2), abs=5e-4), name
        assert run.tcm.pos_margin == pytest.approx(np.cos(d / 3), abs=5e-4), name
        assert run.tcm.neg_margin == pytest.approx(np.cos(2 * d / 3), abs=5e-4), name
        # Neighbouring class centres (cos D) are never penalised as negatives; MS's threshold lies between.
        assert run.tcm.pos_margin > run.loss.params["base"] > run.tcm.neg_margin > np.cos(d)
    assert any(run.tcm.enabled for run in cfg.runs.values()) and not all(run.tcm.enabled for run in cfg.runs.values())


@pytest.mark.slow
def test_toy_data_and_runs_are_named_after_the_data_they_use(tmp_path) -> None:
    cfg = _toy_config(tmp_path)
    words = {"sklearn_digits": "digits", "mnist": "mnist"}
    for name, ds in cfg.datasets.items():
        assert words[ds.source] in name
        other = {w for w in words.values() if w != words[ds.source]}
        runs = [r for r, run in cfg.runs.items() if run.dataset == name]
        assert runs and all(words[ds.source] in r and not any(w in r for w in other) for r in runs)
    # What dataset.json records is the source itself, never a stand-in.
    (ds,) = cfg.datasets.values()
    prepare(ds, tmp_path / "d")
    assert json.loads((tmp_path / "d/dataset.json").read_text())["source"] == ds.source


def _toy_config(tmp_path):
    (tmp_path / "params.yaml").write_text(_toy_text())
    return load_config(tmp_path / "params.yaml")


def _labels(ds: DatasetConfig) -> np.ndarray:
    if ds.source == "sklearn_digits":
        from sklearn.datasets import load_digits

        return load_digits().target
    return np.arange(10)  # MNIST: the ten digits


def _toy_text() -> str:
    from pathlib import Path

    return render(Path(__file__).parents[1] / "profiles/toy.yaml")


def test_two_dimensional_embeddings_are_drawn_on_the_whole_unit_circle() -> None:
    rng = np.random.default_rng(0)
    angles = rng.uniform(0, 0.1, 50)  # a collapsed run: one short arc
    emb = np.c_[np.cos(angles), np.sin(angles)]
    fig = figures.embeddings_2d({"without TCM": (emb, np.repeat(np.arange(5), 10)),
                                 "with TCM": (emb, np.repeat(np.arange(5), 10))}, "toy")
    for ax in fig.axes[:2]:
        low, high = ax.get_xlim()
        assert low == -high and high > 1.08 and ax.get_ylim() == (low, high)  # the whole circle, fixed limits
        assert ax.patches  # the unit circle and the class arcs
    assert [t.get_text() for t in fig.axes[1].get_legend().get_texts()] == [f"class {c}" for c in range(5)]
    matplotlib.pyplot.close("all")


def test_toy_figure_has_a_row_per_seed_and_an_arc_per_class() -> None:
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(10), 20)
    rows = {}
    for s in range(3):
        angles = np.radians(36 * y + rng.normal(0, 3, len(y)))
        emb = np.c_[np.cos(angles), np.sin(angles)]
        rows[f"seed {s}"] = {"without TCM": (emb, y), "with TCM": (emb, y)}
    fig = figures.embeddings_grid(rows, "toy")
    axes = [ax for ax in fig.axes if ax.get_visible()]
    assert len(axes) == 6 and [ax.get_title() for ax in axes[:2]] == ["seed 0: without TCM", "seed 0: with TCM"]
    for ax in axes:
        arcs = [p for p in ax.patches if isinstance(p, matplotlib.patches.Arc)]
        assert len(arcs) == 10  # one per class, each at its own radius
        assert len({a.width for a in arcs}) == 10
        # Each class's arc covers its own 36-degree slot and little more.
        spans = sorted(((a.theta1 % 360, (a.theta2 - a.theta1)) for a in arcs))
        assert all(span < 20 for _, span in spans)
        assert all(c.get_sizes()[0] >= 20 for c in ax.collections)  # readable markers
    matplotlib.pyplot.close("all")


def test_circular_span_wraps_around_180_degrees() -> None:
    start, end = figures._circular_span(np.array([175.0, 179.0, -179.0, -175.0]), share=1.0)
    assert start == pytest.approx(175.0) and end == pytest.approx(185.0)


def test_chance_level_pairs_are_marked_and_left_out_of_the_claims(full) -> None:
    _, _, cmp = tables(full)
    cmp = cmp.copy()
    cmp["learned"] = ["did not learn" if c == PA else "yes" for c in cmp["comparison"]]
    claims = report.claims_table(cmp, 2).set_index("claim")
    assert claims.loc["comparisons where TCM lowered OPIS", "ours"] == "0 of 1"  # MS's verdict: no difference
    assert claims.loc["largest OPIS reduction", report.SIGNIFICANCE] == f"no ({MS})"
    assert (claims["comparisons"] == "1 complete of 2 configured; 1 left out: did not learn (R@1 at chance)").all()


def test_chance_bound() -> None:
    assert report.chance_bound(5, 10**9) == pytest.approx(0.2, abs=1e-4)
    assert report.chance_bound(100, 1000) > 0.01
