"""The paper's 2-D toy: a closed-set split of the digits, the unit-circle figure, and runs that stay at
chance marked "did not learn" and kept out of the claims."""

from __future__ import annotations

import numpy as np
import pytest
from test_report import MS, PA, full, tables  # noqa: F401  (fixture)

from tcm import figures, report
from tcm.config import ConfigError, DatasetConfig, load_config, parse_config
from tcm.data import prepare, read_manifest
from tcm.profiles import render


def test_closed_set_split_holds_out_images_of_every_class(tmp_path) -> None:
    ds = DatasetConfig(source="sklearn_digits", closed_set_test_share=0.3, image_size=8, resize=8)
    prepare(ds, tmp_path / "d")
    table = read_manifest(tmp_path / "d").table
    train, test = (table[table.split == s] for s in ("train", "test"))
    assert set(train.label) == set(test.label) == set(range(10))  # every digit in both splits
    share = test.groupby("label").size() / table.groupby("label").size()
    assert share.between(0.28, 0.32).all() and not set(train.path) & set(test.path)


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
    (tmp_path / "params.yaml").write_text(_toy_text())
    cfg = load_config(tmp_path / "params.yaml")
    ds = cfg.datasets["mnist"]
    assert ds.closed_set_test_share is not None and ds.train_classes is None
    for run in cfg.runs.values():
        assert run.model.embedding_dim == 2 and run.train.batch_size // run.train.m_per_class == 10


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
        assert ax.get_xlim() == (-1.15, 1.15) and ax.get_ylim() == (-1.15, 1.15)
        assert [t.get_text() for t in ax.get_legend().get_texts()] == [f"class {c}" for c in range(5)]
        assert ax.patches  # the unit circle


def test_chance_level_pairs_are_marked_and_left_out_of_the_claims(full) -> None:  # noqa: F811
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
