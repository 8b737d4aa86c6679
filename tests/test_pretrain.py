"""The pretrain stage: a backbone trained on the pretrain classes, loaded by the runs through
model.weights_path; a data set without `pretrain:` gets a note only."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import tiny_glyphs_params, tiny_params, write_params

from tcm import pretrain
from tcm.config import load_config
from tcm.data import prepare
from tcm.models import build_model


def _cfg(tmp_path, params):
    params["paths"] = {"data": str(tmp_path / "data"), "pretrained": str(tmp_path / "pretrained"),
                       "runs": str(tmp_path / "runs"), "reports": str(tmp_path / "reports")}
    return load_config(write_params(tmp_path / "params.yaml", params))


def test_pretrained_backbone_loads_into_the_runs_model(tmp_path):
    cfg = _cfg(tmp_path, tiny_glyphs_params())
    prepare(cfg.dataset("glyphs"), cfg.data_dir("glyphs"))
    out = pretrain.run(cfg, "glyphs", progress=False)
    info = json.loads((out / "info.json").read_text())
    assert info["pretrained"] and info["classes"] == 8 and info["images"] == 64 and len(info["history"]) == 1
    state = torch.load(out / "backbone.pt", weights_only=True)
    model_cfg = cfg.run("glyphs-ms").model.model_copy(update={"weights_path": out / "backbone.pt"})
    model = build_model(model_cfg)
    assert all(torch.equal(model.backbone.state_dict()[k], v) for k, v in state.items())
    # Deterministic: the same settings give the same weights.
    again = pretrain.run(cfg, "glyphs", progress=False)
    assert all(torch.equal(state[k], v) for k, v in torch.load(again / "backbone.pt", weights_only=True).items())
    assert not (tmp_path / "pretrained" / "glyphs.partial").exists()


def test_data_set_without_pretrain_gets_a_note(tmp_path):
    cfg = _cfg(tmp_path, tiny_params())
    out = pretrain.run(cfg, "digits", progress=False)
    assert sorted(p.name for p in out.iterdir()) == ["info.json"]
    assert "sets no pretrain" in json.loads((out / "info.json").read_text())["note"]


def test_missing_pretrain_split_is_named(tmp_path):
    from tcm.data import DataError

    cfg = _cfg(tmp_path, tiny_glyphs_params())
    prepare(cfg.dataset("glyphs"), cfg.data_dir("glyphs"))
    manifest = cfg.data_dir("glyphs") / "manifest.csv"
    lines = [ln for ln in manifest.read_text().splitlines() if ",pretrain" not in ln]
    manifest.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match="no 'pretrain' split"):
        pretrain.run(cfg, "glyphs", progress=False)
