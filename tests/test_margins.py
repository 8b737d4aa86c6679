"""TCM's margin rule (train-split quantiles of the initial model) and warm-up ramp, in the loop."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import tiny_glyphs_params, write_params

from tcm import pretrain, train
from tcm.config import ConfigError, load_config
from tcm.data import prepare
from tcm.losses.margins import pair_cosines, quantile_margins
from tcm.losses.tcm import ThresholdConsistentMargin


def test_quantiles_match_brute_force():
    rng = np.random.default_rng(0)
    e = rng.normal(size=(30, 5))
    e /= np.linalg.norm(e, axis=1, keepdims=True)
    y = rng.integers(0, 4, 30)
    pos = [e[a] @ e[b] for a in range(30) for b in range(30) if a != b and y[a] == y[b]]
    neg = [e[a] @ e[b] for a in range(30) for b in range(30) if y[a] != y[b]]
    m_pos, m_neg = quantile_margins(e, y, 0.8, 0.2)
    assert m_pos == pytest.approx(np.quantile(pos, 0.8)) and m_neg == pytest.approx(np.quantile(neg, 0.2))
    p, n = pair_cosines(e, y)
    assert len(p) == len(pos) and len(n) == len(neg)


def test_crossing_margins_are_refused_with_the_keys():
    e = np.eye(4)  # every pair at cosine 0: m- would equal m+
    with pytest.raises(ConfigError, match=r"runs\.r\.tcm\.margins: train_quantiles gave m- = 0\.0000"):
        quantile_margins(e, np.array([0, 0, 1, 1]), 0.5, 0.5, where="runs.r.tcm")


def test_scale_multiplies_the_term():
    emb, y = torch.randn(8, 4), torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    reg = ThresholdConsistentMargin(0.9, 0.1)
    full = reg(emb, y)
    reg.scale = 0.25
    assert torch.allclose(reg(emb, y), 0.25 * full)


@pytest.fixture(scope="module")
def glyphs_project(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("glyphs")
    p = tiny_glyphs_params(runs=("glyphs-ms-tcm",), epochs=2, seeds=(0, 1))
    p["paths"] = {"data": str(tmp / "data"), "pretrained": str(tmp / "pretrained"), "runs": str(tmp / "runs"),
                  "reports": str(tmp / "reports")}
    p["run_defaults"]["model"]["weights_path"] = str(tmp / "pretrained/glyphs/backbone.pt")
    cfg = load_config(write_params(tmp / "params.yaml", p))
    prepare(cfg.dataset("glyphs"), cfg.data_dir("glyphs"))
    pretrain.run(cfg, "glyphs", progress=False)
    return tmp, p


def test_rule_sets_margins_per_seed_from_train_pairs(glyphs_project):
    tmp, p = glyphs_project
    p = json.loads(json.dumps(p))
    p["run_defaults"]["tcm"]["warmup_epochs"] = 1
    cfg = load_config(write_params(tmp / "params.yaml", p))
    train.run(cfg, "glyphs-ms-tcm", progress=False)
    info = json.loads((tmp / "runs/glyphs-ms-tcm/run.json").read_text())
    margins = {s: info["seeds"][s]["tcm_margins"] for s in ("0", "1")}
    for m in margins.values():
        assert -1 < m["neg_margin"] < m["pos_margin"] < 1
    state = torch.load(tmp / "runs/glyphs-ms-tcm/train/seed-0/checkpoint.pt", weights_only=True)
    assert state["tcm_margins"] == margins["0"]
    # Warm-up: no TCM in epoch 1, full weight in epoch 2.
    history = json.loads(json.dumps(state["history"]))
    assert history[0]["tcm_loss"] == 0.0 and history[1]["tcm_loss"] > 0.0
