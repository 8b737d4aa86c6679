"""Faults in params files, profiles and recipes, tried as a user would meet them: `tcm check-params`
(or `tcm profile`) refuses what a later stage would die on, in one line naming the file, key and value,
exit 2, no traceback, nothing written. (Other faults: tests/test_faults.py.)"""

from __future__ import annotations

import inspect
import shutil
import typing
from collections.abc import Sequence
from pathlib import Path

import pytest
import yaml
from conftest import REPO, tiny_params, write_params
from pydantic import TypeAdapter, ValidationError

from tcm.cli import main
from tcm.config import LOSS_PARAMS

PROFILES = REPO / "profiles"


def fails_in_one_line(capsys: pytest.CaptureFixture, argv: list[str], *words: str) -> str:
    """Run the command line; it must return 2 with exactly one line on stderr holding ``words``."""
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    lines = [line for line in err.splitlines() if line.startswith("tcm")]
    assert len(lines) == 1 and len(err.splitlines()) == 1 and "Traceback" not in err, err
    for w in words:
        assert w in lines[0], (w, lines[0])
    return lines[0]


def _project(tmp_path: Path, params: dict) -> Path:
    """params.yaml in a project folder of its own, its outputs inside it."""
    root = tmp_path / "project"
    root.mkdir()
    return write_params(root / "params.yaml", params)


def _set(params: dict, dotted: str, value) -> None:
    *parents, leaf = dotted.split(".")
    node = params
    for key in parents:
        node = node.setdefault(key, {})
    node[leaf] = value


# ---------------------------------------------------------------- loss parameters


@pytest.mark.parametrize(("where", "loss", "key", "value", "said"), [
    ("runs.digits-ms", "multi_similarity", "alpha", "two", "alpha: Input should be a valid number (got 'two')"),
    ("run_defaults", "multi_similarity", "alpha", "two", "alpha: Input should be a valid number (got 'two')"),
    ("runs.digits-ms", "multi_similarity", "beta", True, "beta: Input should be a valid number (got True)"),
    ("runs.digits-ms", "proxy_anchor", "margin", [0.1], "margin: Input should be a valid number (got [0.1])"),
    ("runs.digits-ms", "smooth_ap", "temperature", 0, "temperature: Input should be greater than 0 (got 0)"),
    ("runs.digits-ms", "smooth_ap", "include_query", "yes",
     "include_query: Input should be a valid boolean (got 'yes')"),
    ("runs.digits-ms", "rs_at_k", "k_values", [1, 2.5], "k_values.1: Input should be a valid integer (got 2.5)"),
    ("runs.digits-ms", "contrastive", "pos_margin", "0.1", "pos_margin: Input should be a valid number (got '0.1')"),
    ("runs.digits-ms", "triplet", "triplets_per_anchor", "some",
     "triplets_per_anchor: expected 'all' or a positive integer, but got 'some'"),
])
def test_a_loss_parameter_of_the_wrong_type_is_refused_before_training(tmp_path, capsys, where, loss, key,
                                                                       value, said) -> None:
    p = tiny_params(runs=("digits-ms",))
    p["paths"] = {"data": "data", "runs": "runs", "reports": "reports"}
    _set(p, f"{where}.loss", {"name": loss, "params": {key: value}})
    if where == "run_defaults":
        p["runs"]["digits-ms"].pop("loss", None)
    path = str(_project(tmp_path, p))
    fails_in_one_line(capsys, ["check-params", "--params", path], path, f"{where}.loss.params.{said}")
    # `tcm train` used to die here with a 45-line TypeError at the first step; now nothing is written
    fails_in_one_line(capsys, ["train", "digits-ms", "--params", path], f"{where}.loss.params.{key}")
    assert sorted(x.name for x in (tmp_path / "project").iterdir()) == ["params.yaml"]


def test_rs_at_k_k_values_and_temperatures_must_pair(tmp_path, capsys) -> None:
    p = tiny_params(runs=("digits-ms",))
    p["runs"]["digits-ms"]["loss"] = {"name": "rs_at_k", "params": {"k_values": [1, 2], "k_temperatures": [1]}}
    path = str(_project(tmp_path, p))
    fails_in_one_line(capsys, ["check-params", "--params", path], "runs.digits-ms.loss", "k_values", "[1, 2]", "[1]")


def test_every_loss_accepts_its_own_defaults_as_typed() -> None:
    """Recipes' values and the constructors' defaults pass the typed table (a bound too tight would
    refuse a published recipe)."""
    from tcm.losses.registry import BASE_LOSSES

    for name, types in LOSS_PARAMS.items():
        sig = inspect.signature(BASE_LOSSES[name].__init__)
        for key, t in types.items():
            default = sig.parameters[key].default
            TypeAdapter(t).validate_python(list(default) if isinstance(default, tuple) else default)


def _kind(t) -> str:
    """number, int, bool, str or list[...] of a type or annotation (constraints stripped)."""
    if typing.get_origin(t) is typing.Annotated:
        return _kind(typing.get_args(t)[0])
    origin = typing.get_origin(t)
    if origin in (list, Sequence, tuple):
        return f"list[{_kind(typing.get_args(t)[0])}]"
    return {float: "number", int: "int", bool: "bool", str: "str"}.get(t, repr(t))


def _value_kind(v) -> str:
    if isinstance(v, (list, tuple)):
        return f"list[{'number' if any(isinstance(x, float) for x in v) else 'int'}]"
    return {bool: "bool", int: "number", float: "number", str: "str"}[type(v)]


def test_loss_parameter_types_match_the_loss_signatures() -> None:
    """config.LOSS_PARAMS is written out (no torch when validating): it must say what each constructor
    takes: our losses' annotations, and for pytorch-metric-learning's (no annotations) their defaults."""
    from tcm.losses.registry import BASE_LOSSES

    for name, types in LOSS_PARAMS.items():
        sig = inspect.signature(BASE_LOSSES[name].__init__, eval_str=True)
        for key, t in types.items():
            param = sig.parameters[key]
            if param.annotation is not inspect.Parameter.empty:
                expected = _kind(param.annotation)
            elif isinstance(param.default, str):  # triplets_per_anchor: "all" or a count
                expected = "str"
                assert TypeAdapter(t).validate_python(3) == 3, (name, key)
            else:
                expected = _value_kind(param.default)
            kind = "str" if name == "triplet" and key == "triplets_per_anchor" else _kind(t)
            # an int constructor default (alpha=2) is a number: floats are meant (beta=50, base=0.5)
            assert kind == expected or (kind == "number" and expected == "int"), (name, key, kind, expected)
            with pytest.raises(ValidationError):  # a string is never a number, a flag or a list
                TypeAdapter(t).validate_python("two")


# ---------------------------------------------------------------- counts that would exhaust memory or time


@pytest.mark.parametrize(("key", "value"), [
    ("run_defaults.train.samples_per_epoch", 1_000_000_000_000),
    ("evaluation.opis.n_thresholds", 1_000_000_000),
    ("run_defaults.train.batch_size", 16 * 10**7),
    ("run_defaults.train.chunk_size", 10**9),
    ("run_defaults.train.num_workers", 10**6),
    ("run_defaults.train.seeds", [2**40]),
    ("run_defaults.model.embedding_dim", 10**9),
    ("evaluation.batch_size", 10**9),
    ("evaluation.chunk_size", 10**12),
    ("evaluation.bootstrap.resamples", 10**9),
    ("evaluation.num_workers", 10**6),
    ("datasets.digits.image_size", 10**6),
])
def test_counts_have_upper_bounds(tmp_path, capsys, key, value) -> None:
    p = tiny_params(runs=("digits-ms",))
    _set(p, key, value)
    path = str(_project(tmp_path, p))
    shown = key if key != "run_defaults.train.seeds" else "run_defaults.train.seeds.0"
    fails_in_one_line(capsys, ["check-params", "--params", path], path, shown, "less than or equal",
                       str(value[0] if isinstance(value, list) else value))


@pytest.mark.parametrize("name", sorted(p.stem for p in PROFILES.glob("*.yaml")))
def test_every_profile_passes_check_params(capsys, name: str) -> None:
    """The bounds refuse no real profile; a matrix profile is checked as it renders."""
    assert main(["check-params", "--params", str(PROFILES / f"{name}.yaml")]) == 0, capsys.readouterr().err


# ---------------------------------------------------------------- MLflow


@pytest.mark.parametrize("name", ["", "   "])
def test_an_empty_experiment_name_is_refused(tmp_path, capsys, name: str) -> None:
    p = tiny_params(runs=("digits-ms",), mlflow=True)
    p["mlflow"]["experiment"] = name
    path = str(_project(tmp_path, p))
    fails_in_one_line(capsys, ["check-params", "--params", path], path, "mlflow.experiment", repr(name))
    fails_in_one_line(capsys, ["train", "digits-ms", "--params", path], "mlflow.experiment")
    assert sorted(x.name for x in (tmp_path / "project").iterdir()) == ["params.yaml"]


# ---------------------------------------------------------------- output paths stay in the project


@pytest.mark.parametrize("key", ["paths.data", "paths.pretrained", "paths.runs", "paths.reports",
                                 "mlflow.tracking_uri", "mlflow.artifact_location"])
@pytest.mark.parametrize("outside", ["relative", "absolute"])
def test_output_paths_outside_the_project_are_refused(tmp_path, capsys, key: str, outside: str) -> None:
    target = "../elsewhere" if outside == "relative" else str(tmp_path / "elsewhere")
    value = f"sqlite:///{target}/mlflow.db" if key == "mlflow.tracking_uri" else target
    p = tiny_params(runs=("digits-ms",), mlflow=True)
    _set(p, key, value)
    path = str(_project(tmp_path, p))
    fails_in_one_line(capsys, ["check-params", "--params", path], path, key, repr(value), "outside the project")
    fails_in_one_line(capsys, ["data", "prepare", "digits", "--params", path], key)
    assert sorted(x.name for x in tmp_path.iterdir()) == ["project"]


def test_output_paths_inside_the_project_or_linked_from_it_are_accepted(tmp_path, capsys) -> None:
    elsewhere = tmp_path / "big-disk"
    elsewhere.mkdir()
    p = tiny_params(runs=("digits-ms",))
    p["paths"] = {"data": str(tmp_path / "project/data"), "runs": "runs/../runs", "reports": "out/reports",
                  "pretrained": "linked"}
    path = _project(tmp_path, p)
    (path.parent / "linked").symlink_to(elsewhere)  # a link inside the project may point anywhere
    assert main(["check-params", "--params", str(path)]) == 0, capsys.readouterr().err


# ---------------------------------------------------------------- profiles and configs/recipes.yaml


def _profile_copy(tmp_path: Path, edit) -> tuple[Path, Path]:
    """profiles/paper.yaml and configs/recipes.yaml in a temporary project, the recipes edited by
    ``edit(recipes) -> recipes``; returns (profiles folder, params.yaml to write)."""
    (tmp_path / "profiles").mkdir()
    (tmp_path / "configs").mkdir()
    shutil.copy2(PROFILES / "paper.yaml", tmp_path / "profiles/paper.yaml")
    recipes = edit(yaml.safe_load((REPO / "configs/recipes.yaml").read_text()))
    (tmp_path / "configs/recipes.yaml").write_text(yaml.safe_dump(recipes, sort_keys=False))
    out = tmp_path / "params.yaml"
    out.write_text("keep me\n")
    return tmp_path / "profiles", out


def _rename(old: str, new: str):
    def edit(recipes: dict) -> dict:
        recipes["runs"] = {(new if k == old else k): v for k, v in recipes["runs"].items()}
        return recipes
    return edit


def _profile_fails(capsys, profiles: Path, out: Path, *words: str) -> str:
    line = fails_in_one_line(capsys, ["profile", "paper", "--profiles", str(profiles), "--out", str(out)], *words)
    assert out.read_text() == "keep me\n"  # params.yaml untouched
    # check-params on the profile says the same
    assert fails_in_one_line(capsys, ["check-params", "--params", str(profiles / "paper.yaml")], *words) == line
    return line


@pytest.mark.parametrize(("typo", "what"), [("cub/resnet50/smoth_ap", "no loss 'smoth_ap'"),
                                            ("cub/resnet5/smooth_ap", "no backbone 'resnet5'"),
                                            ("cub-resnet50-smooth_ap", "is not")])
def test_a_typo_in_a_recipe_key_names_the_file_the_key_and_the_closest_run(tmp_path, capsys, typo, what) -> None:
    profiles, out = _profile_copy(tmp_path, _rename("cub/resnet50/smooth_ap", typo))
    _profile_fails(capsys, profiles, out, "configs/recipes.yaml", f"runs.{typo}", what,
                   "closest run: cub-resnet50-smooth_ap")


def test_a_run_without_its_recipe_names_the_file_the_run_and_the_closest_key(tmp_path, capsys) -> None:
    profiles, out = _profile_copy(tmp_path, _rename("cub/vit_b_16/rs_at_k", "cbu/vit_b_16/rs_at_k"))
    _profile_fails(capsys, profiles, out, "configs/recipes.yaml", "runs.cub/vit_b_16/rs_at_k",
                   "no recipe for run cub-vit_b_16-rs_at_k", "closest recipe key: cbu/vit_b_16/rs_at_k")

    def drop(recipes: dict) -> dict:
        del recipes["runs"]["sop/resnet50/smooth_ap"]
        return recipes

    shutil.rmtree(tmp_path / "profiles")
    shutil.rmtree(tmp_path / "configs")
    profiles, out = _profile_copy(tmp_path, drop)
    _profile_fails(capsys, profiles, out, "configs/recipes.yaml", "no recipe for run sop-resnet50-smooth_ap")


@pytest.mark.parametrize(("edit", "words"), [
    (lambda r: r["runs"]["cub/resnet50/rs_at_k"]["train"].update(lr="fast"),
     ["runs.cub/resnet50/rs_at_k.train.lr", "'fast'"]),
    (lambda r: r["runs"]["cub/resnet50/smooth_ap"]["loss"]["params"].update(temperature="hot"),
     ["runs.cub/resnet50/smooth_ap.loss.params.temperature", "'hot'"]),
    (lambda r: r["runs"]["sop/vit_b_16/rs_at_k"]["train"].update(chunk_size=10**9),
     ["runs.sop/vit_b_16/rs_at_k.train.chunk_size", "1000000000"]),
    (lambda r: r["runs"]["cub/vit_b_16/smooth_ap"]["model"].update(embeding_dim=64),
     ["runs.cub/vit_b_16/smooth_ap.model.embeding_dim", "unknown key", "embedding_dim"]),
    (lambda r: r["run_defaults"]["train"].update(m_per_class="four"), ["run_defaults.train.m_per_class", "'four'"]),
])
def test_a_bad_value_in_a_recipe_names_the_recipes_file_and_key(tmp_path, capsys, edit, words) -> None:
    def change(recipes: dict) -> dict:
        edit(recipes)
        return recipes

    profiles, out = _profile_copy(tmp_path, change)
    line = _profile_fails(capsys, profiles, out, "configs/recipes.yaml", *words)
    assert "paper.yaml" not in line  # the profile is not at fault


def test_a_malformed_recipes_file_is_named(tmp_path, capsys) -> None:
    profiles, out = _profile_copy(tmp_path, lambda r: {**r, "run": {}})
    _profile_fails(capsys, profiles, out, "configs/recipes.yaml", "'run'", "run_defaults and runs")
