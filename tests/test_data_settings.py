"""What the data stage depends on (config.data_settings): augmentation and pretraining settings do not
change the prepared files, so the data stage depends on the rest only (the validate stage writes it to
.tcm/datasets/<name>.json). The DVC side, on a real pipeline: tests/test_default_e2e.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import tiny_glyphs_params, tiny_params, tree_digest, write_params

from tcm.cli import main
from tcm.config import TRAINING_ONLY_KEYS, data_settings, parse_config
from tcm.data import prepare

# A value other than the profiles' for the training-only keys (hflip: flipped per test; pretrain: other epochs).
OTHER = {"image_size": 24, "resize": 28, "crop_scale": [0.5, 0.9]}


def _with(params: dict, name: str, **settings) -> dict:
    params["datasets"][name].update(settings)
    return params


@pytest.mark.slow
@pytest.mark.parametrize("params,name", [(tiny_glyphs_params(), "glyphs"), (tiny_params(), "digits")])
def test_training_only_settings_do_not_change_the_prepared_files(tmp_path: Path, params: dict, name: str) -> None:
    other = _with(json.loads(json.dumps(params)), name, **OTHER)
    other["datasets"][name]["hflip"] = not params["datasets"][name].get("hflip", True)
    if params["datasets"][name].get("pretrain"):
        other["datasets"][name]["pretrain"]["epochs"] = 3
    a, b = parse_config(params).dataset(name), parse_config(other).dataset(name)
    assert {k for k in TRAINING_ONLY_KEYS if getattr(a, k) != getattr(b, k)} == set(TRAINING_ONLY_KEYS) - (
        set() if a.pretrain else {"pretrain"})
    prepare(a, tmp_path / "a")
    prepare(b, tmp_path / "b")
    assert tree_digest(tmp_path / "a") == tree_digest(tmp_path / "b")
    assert data_settings(a) == data_settings(b)


def test_check_params_writes_what_each_data_stage_reads(tmp_path: Path) -> None:
    params = tiny_glyphs_params()
    params["datasets"]["digits"] = tiny_params()["datasets"]["digits"]
    path = write_params(tmp_path / "params.yaml", params)
    out = tmp_path / "settings"
    (out).mkdir()
    (out / "gone.json").write_text("{}")  # a data set no longer in params.yaml
    assert main(["check-params", "--params", str(path), "--data-settings", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["digits.json", "glyphs.json"]
    before = tree_digest(out)
    glyphs = json.loads((out / "glyphs.json").read_text())
    assert glyphs["glyphs"]["per_class"] == params["datasets"]["glyphs"]["glyphs"]["per_class"]
    assert not set(TRAINING_ONLY_KEYS) & set(glyphs)

    write_params(path, _with(params, "glyphs", **OTHER))  # augmentation only: the data stage's input is unchanged
    assert main(["check-params", "--params", str(path), "--data-settings", str(out)]) == 0
    assert tree_digest(out) == before
    params["datasets"]["glyphs"]["glyphs"]["per_class"] += 1  # what the data stage writes: changed
    write_params(path, params)
    assert main(["check-params", "--params", str(path), "--data-settings", str(out)]) == 0
    changed = {k for k, v in tree_digest(out).items() if before[k] != v}
    assert changed == {"glyphs.json"}
