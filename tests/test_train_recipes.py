"""Every training recipe of configs/recipes.yaml is a valid run of params.yaml."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tcm.config import parse_config

RECIPES = Path(__file__).resolve().parents[1] / "configs" / "recipes.yaml"
BENCHMARKS = {"cub": "cub", "cars196": "cars196", "sop": "sop", "inat2018": "inat2018"}


def recipes() -> dict:
    return yaml.safe_load(RECIPES.read_text())


@pytest.mark.parametrize("key", sorted(recipes()["runs"]))
def test_recipe_validates(key: str) -> None:
    raw = recipes()
    for field in ("lr", "weight_decay", "lr_gamma"):  # YAML reads 5e-05 (no dot) as a string
        for source in (raw["runs"][key]["train"], raw["run_defaults"]["train"]):
            assert not isinstance(source.get(field, 0.0), str), field
    # "<dataset>/<backbone>/<loss>" or, for a named alternative, "<dataset>/<backbone>/<loss>@<variant>"
    run_name = key.replace("/", "-").replace("@", ".")  # a valid run name
    params = {"datasets": {name: {"source": source} for name, source in BENCHMARKS.items()},
              "run_defaults": raw["run_defaults"], "runs": {run_name: raw["runs"][key]}}
    run = parse_config(params, source=str(RECIPES)).run(run_name)
    dataset, backbone, loss = key.split("@")[0].split("/")
    assert (run.dataset, run.model.backbone, run.loss.name) == (dataset, backbone, loss)
    t = run.train
    assert run.model.embedding_dim == 512 and t.m_per_class == 4
    # the references' ResNet-50 start: torchvision's first ImageNet-1k weights (docs/recipes.md)
    assert run.model.weights == {"resnet50": "imagenet1k_v1", "vit_b_16": "imagenet21k"}[backbone]
    assert t.amp is False  # float32, as every reference trains (no autocast in their loops)
    assert t.schedule == "step" and max(t.lr_milestones) < t.epochs
    if t.chunk_size is not None:
        assert t.chunk_size < t.batch_size


def test_recipes_cover_the_benchmarks_backbones_and_losses() -> None:
    keys = set(recipes()["runs"])
    for ds in BENCHMARKS:
        for backbone in ("resnet50", "vit_b_16"):
            for loss in ("rs_at_k", "smooth_ap"):
                assert f"{ds}/{backbone}/{loss}" in keys
        assert f"{ds}/resnet50/proxy_anchor" in keys
    large = {k: r["train"]["batch_size"] for k, r in recipes()["runs"].items() if k.split("/")[0] in ("sop", "inat2018")
             and k.split("/")[2] in ("rs_at_k", "smooth_ap")}
    assert set(large.values()) == {4000}
