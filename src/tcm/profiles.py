"""Experiment profiles: ``profiles/<name>.yaml`` -> ``params.yaml`` (``tcm profile <name>``).

A profile is a params file that may end with a ``matrix:`` section instead of listing its runs:

    matrix:
      name: "{dataset}-{backbone}-{loss}"   # "-tcm" is appended to the runs with TCM
      dataset: [cub, cars196]
      backbone: [resnet50, vit_b_16]
      loss: [smooth_ap, rs_at_k]
      batch_size: [null]                 # optional; null = the recipe's
      tcm: [false, true]
      recipes: configs/recipes.yaml      # optional; per "<dataset>/<backbone>/<loss>" run settings
      stand_ins: {resnet50: small_cnn}   # optional; train another backbone in a slot (smoke runs)
      seeds: [0, 1, 2]                   # optional; train.seeds of every run (not an axis: each run trains them all)
      overrides: {train: {epochs: 1}}    # optional; applied last to every run

The text above ``matrix:`` is copied verbatim (comments included) and the expanded runs are
appended, so params.yaml stays readable. The result is validated before params.yaml is replaced.

Recipes: every run whose loss has a recipe somewhere needs its own "<dataset>/<backbone>/<loss>" entry
(a loss with none, such as the landscape's contrastive, takes the profile's run_defaults); a key that
names no backbone or loss is a typo. Errors in a recipe's values name the recipes file and the key.
"""

from __future__ import annotations

import difflib
import itertools
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tcm.atomic import write_text
from tcm.config import BACKBONES, LOSS_PARAMS, Config, ConfigError, Origin, deep_merge, load_config, parse_config
from tcm.strict_yaml import load_yaml, parse_yaml

MATRIX_KEYS = {"name", "dataset", "backbone", "loss", "batch_size", "tcm", "recipes", "stand_ins", "seeds", "overrides"}


RECIPE_KEY = re.compile(r"(?P<dataset>[^/@]+)/(?P<backbone>[^/@]+)/(?P<loss>[^/@]+)(@[A-Za-z0-9_.-]+)?")


@dataclass(frozen=True)
class _Recipes:
    """configs/recipes.yaml as written: ``source`` names it in errors (the path the matrix gives)."""

    source: str
    defaults: dict[str, Any]
    runs: dict[str, dict[str, Any]]

    def merged(self, key: str) -> dict[str, Any]:
        return deep_merge(self.defaults, self.runs[key])


def _read_recipes(path: Path, source: str) -> _Recipes:
    data = load_yaml(path)
    data = {} if data is None else data
    if not isinstance(data, dict) or set(data) - {"run_defaults", "runs"}:
        found = sorted(data) if isinstance(data, dict) else type(data).__name__
        raise ConfigError(f"{source}: expected a mapping with the keys run_defaults and runs, but got {found}")
    defaults, runs = data.get("run_defaults") or {}, data.get("runs") or {}
    if not isinstance(defaults, dict):
        raise ConfigError(f"{source}: run_defaults: expected a mapping, but got {defaults!r}")
    if not isinstance(runs, dict):
        raise ConfigError(f"{source}: runs: expected a mapping of \"<dataset>/<backbone>/<loss>\" -> settings, "
                          f"but got {runs!r}")
    for key, run in runs.items():
        if not isinstance(run, dict):
            raise ConfigError(f"{source}: runs.{key}: expected a mapping of settings, but got {run!r}")
    return _Recipes(source, defaults, runs)


def _load_recipes(path: Path) -> dict[str, dict]:
    """configs/recipes.yaml: ``runs`` keyed "<dataset>/<backbone>/<loss>", each merged over its ``run_defaults``."""
    recipes = _read_recipes(path, str(path))
    return {key: recipes.merged(key) for key in recipes.runs}


def _closest(word: str, choices: list[str]) -> str:
    return (difflib.get_close_matches(word, choices, n=1, cutoff=0.0) or [""])[0]


def _check_recipe_keys(recipes: _Recipes, combos: dict[str, str], profile: str) -> None:
    """A recipe key must name a backbone and a loss that exist ("<dataset>/<backbone>/<loss>[@variant]"):
    a typo would otherwise leave its runs on the profile's run_defaults without a word. Keys for other
    profiles' runs (other data sets, losses, "@" variants) are fine. ``combos``: key -> run name."""
    for key in recipes.runs:
        m = RECIPE_KEY.fullmatch(str(key))
        problem = ("is not \"<dataset>/<backbone>/<loss>\" (optionally @<variant>)" if m is None
                   else f"names no backbone {m['backbone']!r} (backbones: {list(BACKBONES)})"
                   if m["backbone"] not in BACKBONES
                   else f"names no loss {m['loss']!r} (losses: {list(LOSS_PARAMS)})"
                   if m["loss"] not in LOSS_PARAMS else None)
        if problem is not None:
            near = _closest(str(key), list(combos))
            raise ConfigError(f"{recipes.source}: runs.{key}: the key matches no run of {profile} and {problem}; "
                              f"closest run: {combos[near]} (recipe key {near})")


def _expand(matrix: dict[str, Any], base_dir: Path, source: str) -> tuple[dict[str, dict], Origin]:
    """The runs of a matrix and, for validation errors, where each of their values was written."""
    unknown = sorted(set(matrix) - MATRIX_KEYS)
    if unknown:
        raise ConfigError(f"{source}: matrix: unknown keys {unknown}; accepted: {sorted(MATRIX_KEYS)}")
    for axis in ("dataset", "backbone", "loss"):
        if not isinstance(matrix.get(axis), list) or not matrix[axis]:
            raise ConfigError(f"{source}: matrix.{axis}: expected a non-empty list, but got {matrix.get(axis)!r}")
    recipes = (_read_recipes(base_dir / matrix["recipes"], str(matrix["recipes"])) if matrix.get("recipes")
               else _Recipes("", {}, {}))
    pattern = matrix.get("name", "{dataset}-{backbone}-{loss}")
    runs: dict[str, dict] = {}
    # per run: its recipe key (None: none) and what the matrix itself sets (axes, seeds, overrides)
    made: dict[str, tuple[str | None, dict[str, Any]]] = {}
    combos = {f"{d}/{b}/{loss}": pattern.format(dataset=d, backbone=b, loss=loss, batch_size=batch)
              for d, b, loss, batch in itertools.product(matrix["dataset"], matrix["backbone"], matrix["loss"],
                                                          matrix.get("batch_size") or [None])}
    _check_recipe_keys(recipes, combos, source)
    # Losses with a recipe somewhere must have one for every run; a loss without any recipe takes the
    # profile's run_defaults (the landscape's contrastive, triplet, multi_similarity).
    losses_with_recipes = {m["loss"] for key in recipes.runs if (m := RECIPE_KEY.fullmatch(str(key)))}
    for dataset, backbone, loss, batch, tcm in itertools.product(
            matrix["dataset"], matrix["backbone"], matrix["loss"], matrix.get("batch_size") or [None],
            matrix.get("tcm", [False, True])):
        key = f"{dataset}/{backbone}/{loss}"
        if key not in recipes.runs and loss in losses_with_recipes:
            unused = [k for k in recipes.runs if k not in combos and "@" not in str(k)] or list(recipes.runs)
            raise ConfigError(f"{recipes.source}: runs.{key}: no recipe for run {combos[key]} of {source}, though "
                              f"loss {loss!r} has recipes; closest recipe key: {_closest(key, unused)} (a typo?)")
        recipe = recipes.merged(key) if key in recipes.runs else {}
        stand_in = (matrix.get("stand_ins") or {}).get(backbone, backbone)
        if stand_in != backbone:  # the slot's pretrained weights belong to the backbone it stands in for
            recipe = {**recipe, "model": {k: v for k, v in (recipe.get("model") or {}).items() if k != "weights"}}
        own = {"dataset": dataset, "model": {"backbone": stand_in}, "loss": {"name": loss},
               "tcm": {"enabled": bool(tcm)}}
        if batch is not None:
            own = deep_merge(own, {"train": {"batch_size": batch}})
        if matrix.get("seeds") is not None:
            own = deep_merge(own, {"train": {"seeds": matrix["seeds"]}})
        own = deep_merge(own, matrix.get("overrides") or {})
        name = pattern.format(dataset=dataset, backbone=backbone, loss=loss, batch_size=batch)
        name += "-tcm" if tcm else ""
        if name in runs:
            raise ConfigError(f"{source}: matrix.name {pattern!r} gives two runs the name {name!r}; add {{batch_size}}")
        runs[name] = deep_merge(recipe, own)
        made[name] = (key if key in recipes.runs else None, own)

    def origin(loc: tuple[Any, ...]) -> tuple[str, tuple[Any, ...]] | None:
        # A value of a run that its recipe gave (and the matrix did not set) is reported in the recipes file.
        if len(loc) < 3 or loc[0] != "runs" or loc[1] not in made or made[loc[1]][0] is None:
            return None
        key, own = made[loc[1]]
        rest = loc[2:]
        if _has_path(own, rest) and not isinstance(_get(own, rest), dict):
            return None
        if _has_path(recipes.runs[key], rest):
            return recipes.source, ("runs", key, *rest)
        if _has_path(recipes.defaults, rest):
            return recipes.source, ("run_defaults", *rest)
        return None

    return runs, origin


def _has_path(d: Any, keys: tuple[Any, ...]) -> bool:
    for k in keys:
        if not isinstance(d, dict) or k not in d:
            return False
        d = d[k]
    return True


def _get(d: dict[str, Any], keys: tuple[Any, ...]) -> Any:
    for k in keys:
        d = d[k]
    return d


def expand_matrix(matrix: dict[str, Any], base_dir: Path, source: str) -> dict[str, dict]:
    """The runs of a matrix: the product of its axes, each run = recipe + axis values + overrides."""
    return _expand(matrix, base_dir, source)[0]


def _render(profile: Path, base_dir: Path | None = None) -> tuple[str, Config]:
    raw = load_yaml(profile)
    text = profile.read_text()
    if not isinstance(raw, dict):
        raise ConfigError(f"{profile}: expected a mapping of params sections")
    header = (f"# Generated by `tcm profile {profile.stem}` from profiles/{profile.name}; "
              "edit that file, or this one for a quick experiment.\n")
    origin = None
    if "matrix" in raw:
        if "runs" in raw:
            raise ConfigError(f"{profile}: give either `runs` or `matrix`, not both")
        m = re.search(r"^matrix:", text, flags=re.M)
        if parse_yaml(text[m.start():], str(profile)).keys() != {"matrix"}:
            raise ConfigError(f"{profile}: `matrix:` must be the last section of the file")
        if not isinstance(raw["matrix"], dict):
            raise ConfigError(f"{profile}: matrix: expected a mapping, but got {raw['matrix']!r}")
        runs, origin = _expand(raw["matrix"], profile.parent.parent, str(profile))
        body = text[:m.start()].rstrip() + "\n\n# Runs expanded from the profile's matrix.\n"
        text = body + yaml.safe_dump({"runs": runs}, sort_keys=False, default_flow_style=None, width=110)
        raw = {**{k: v for k, v in raw.items() if k != "matrix"}, "runs": runs}
    # Relative paths resolve against the project: profiles/ sits in it (or against where params.yaml goes).
    cfg = parse_config(raw, source=str(profile), base_dir=base_dir or profile.resolve().parent.parent, origin=origin)
    return header + text, cfg


def render(profile: Path, base_dir: Path | None = None) -> str:
    """The params.yaml text of a profile (validated; its output paths must lie in ``base_dir``, by
    default the project that holds profiles/)."""
    return _render(profile, base_dir)[0]


def load_params(path: Path | str) -> Config:
    """params.yaml, or a profile (which may end with ``matrix:``), validated: what check-params checks."""
    path = Path(path)
    raw = load_yaml(path)
    if isinstance(raw, dict) and "matrix" in raw:
        return _render(path)[1]
    return load_config(path)


def available(profiles_dir: Path) -> list[str]:
    return sorted(p.stem for p in profiles_dir.glob("*.yaml"))


def activate(name: str, profiles_dir: Path | str = "profiles", out: Path | str = "params.yaml") -> Path:
    """Validate profile ``name`` and write it as params.yaml (atomically; untouched on any error)."""
    profiles_dir = Path(profiles_dir)
    path = profiles_dir / f"{name}.yaml"
    if not path.is_file():
        raise ConfigError(f"unknown profile {name!r}; profiles in {profiles_dir}: {available(profiles_dir)}")
    write_text(out, render(path, Path(out).resolve().parent))
    return Path(out)
