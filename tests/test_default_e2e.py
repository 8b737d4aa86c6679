"""The default's own path through DVC, shrunk: data -> pretrain -> train (fine-tuning the pretrained
backbone, TCM margins by the train-split rule) -> evaluate -> report; a pretrain setting re-runs the
pretrain stage and every run that fine-tunes its backbone."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import copy_project, run_command, tiny_glyphs_params, write_params

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def glyphs_project(tmp_path_factory) -> Path:
    dest = copy_project(tmp_path_factory.mktemp("glyphs"), tiny_glyphs_params())
    out = run_command(["dvc", "repro"], dest)
    (dest / "first_repro.log").write_text(out.stdout + out.stderr)
    return dest


def test_pretrain_stage_feeds_the_runs(glyphs_project: Path) -> None:
    log = (glyphs_project / "first_repro.log").read_text()
    order = [log.index(f"Running stage '{s}'") for s in ("data@glyphs", "pretrain@glyphs", "train@glyphs-ms", "report")]
    assert order == sorted(order)
    backbone = torch.load(glyphs_project / "pretrained/glyphs/backbone.pt", weights_only=True)
    trained = torch.load(glyphs_project / "runs/glyphs-ms/train/seed-0/checkpoint.pt", weights_only=True)["model"]
    # Fine-tuned from the pretrained backbone: same tensors, moved by training (not a fresh initialisation).
    key = next(k for k in backbone if k.endswith("weight") and backbone[k].dim() == 4)
    start, end = backbone[key], trained[f"backbone.{key}"]
    assert start.shape == end.shape and 0 < (end - start).norm() < 0.5 * start.norm()
    info = json.loads((glyphs_project / "runs/glyphs-ms-tcm/run.json").read_text())
    margins = info["seeds"]["0"]["tcm_margins"]
    assert margins["neg_margin"] < margins["pos_margin"]
    assert "TCM margins from the train split's pairs" in log


def test_a_pretrain_setting_reruns_pretrain_and_downstream_only(glyphs_project: Path) -> None:
    assert run_command(["dvc", "status", "--json"], glyphs_project).stdout.strip() in ("{}", "")
    params = tiny_glyphs_params()
    params["datasets"]["glyphs"]["pretrain"]["lr"] = 0.002
    write_params(glyphs_project / "params.yaml", params)
    try:
        status = json.loads(run_command(["dvc", "status", "--json"], glyphs_project).stdout)
        assert "pretrain@glyphs" in status and "train@glyphs-ms" in status and "train@glyphs-ms-tcm" in status
    finally:
        write_params(glyphs_project / "params.yaml", tiny_glyphs_params())


def test_an_augmentation_setting_leaves_the_data_stage_alone(glyphs_project: Path) -> None:
    """crop_scale is read by pretraining and training, never by the data stage (config.TRAINING_ONLY_KEYS);
    a generator setting re-runs the data stage."""
    def after_validate(params: dict) -> dict:
        write_params(glyphs_project / "params.yaml", params)
        run_command(["dvc", "repro", "-s", "validate"], glyphs_project)
        return json.loads(run_command(["dvc", "status", "--json"], glyphs_project).stdout or "{}")

    params = tiny_glyphs_params()
    params["datasets"]["glyphs"]["crop_scale"] = [0.5, 1.0]
    try:
        status = after_validate(params)
        assert "data@glyphs" not in status and "pretrain@glyphs" in status and "train@glyphs-ms" in status
        params["datasets"]["glyphs"]["glyphs"]["per_class"] += 1
        assert "data@glyphs" in after_validate(params)
    finally:
        assert after_validate(tiny_glyphs_params()) == {}
