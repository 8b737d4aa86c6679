"""params.yaml -> a validated :class:`Config`: runs merged over ``run_defaults``, and each problem
reported as one line naming its key (where it was written) and what is accepted."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from tcm.config.base import ConfigError
from tcm.config.schema import Config
from tcm.strict_yaml import YamlError, load_yaml


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """``override`` wins; nested mappings merge key by key (lists and scalars are replaced)."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _has_path(d: Any, keys: tuple) -> bool:
    for k in keys:
        if isinstance(d, list) and isinstance(k, int) and 0 <= k < len(d):  # an item of a list (seeds.0)
            d = d[k]
            continue
        if not isinstance(d, dict) or k not in d:
            return False
        d = d[k]
    return True


def _accepted_keys(model: type[BaseModel], loc: tuple) -> list[str] | None:
    """Field names accepted at ``loc`` (the parent of an unknown key), walking nested models."""
    cls: Any = model
    skip_key = False  # the next part is a user key of a dict[str, Model] (a run or dataset name)
    for part in loc:
        if isinstance(part, int) or skip_key:
            skip_key = False
            continue
        if not (isinstance(cls, type) and issubclass(cls, BaseModel)):
            return None
        field = cls.model_fields.get(part)
        if field is None:
            return None
        cls = field.annotation
        skip_key = getattr(cls, "__origin__", None) is dict
        # dict[str, Model] and Optional[Model]: take the model out of the annotation.
        for arg in getattr(cls, "__args__", ()) or ():
            if isinstance(arg, type) and issubclass(arg, BaseModel):
                cls = arg
    if isinstance(cls, type) and issubclass(cls, BaseModel):
        return sorted(f for f in cls.model_fields if f != "base_dir")
    return None


# Where a value at a location of the merged params was written: (file, location there), or None for
# params.yaml itself. Profiles use it to name configs/recipes.yaml and the recipe's key.
Origin = Callable[[tuple[Any, ...]], tuple[str, tuple[Any, ...]] | None]


def _format_errors(err: ValidationError, raw: dict[str, Any], source: str, origin: Origin | None = None) -> str:
    lines = []
    for e in err.errors():
        loc = tuple(e["loc"])
        shown, file = loc, source
        found = origin(loc) if origin is not None else None
        if found is not None:
            file, shown = found
        # A run key that comes from run_defaults is reported where the user wrote it.
        elif len(loc) >= 3 and loc[0] == "runs" and not _has_path(raw.get("runs", {}).get(loc[1], {}), loc[2:]):
            if _has_path(raw.get("run_defaults", {}), loc[2:]):
                shown = ("run_defaults",) + loc[2:]
        key = ".".join(str(p) for p in shown)
        if e["type"] == "extra_forbidden":
            accepted = _accepted_keys(Config, loc[:-1])
            msg = "unknown key" + (f"; accepted keys here: {accepted}" if accepted else "")
        else:
            msg = e["msg"].removeprefix("Value error, ")
            if "input" in e and e["type"] not in ("missing",) and not isinstance(e["input"], dict):
                msg += f" (got {e['input']!r})"
        # Checks across sections (at the top level) name their key at the start of the message.
        lines.append(f"{file}: {key}: {msg}" if key else f"{file}: {msg}")
    # A bad value in run_defaults fails every run that inherits it: say it once.
    return "\n".join(dict.fromkeys(lines))


def parse_config(raw: Any, source: str = "params.yaml", base_dir: Path | str = ".",
                 origin: Origin | None = None) -> Config:
    """Validate an already-loaded params mapping; raise :class:`ConfigError` naming each bad key
    (where ``origin`` places a location in another file, that file and its location)."""
    if raw is None:
        raise ConfigError(f"{source}: the file is empty; write one with `tcm profile default` (or another profile)")
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping at the top level, but got {type(raw).__name__}")
    defaults = raw.get("run_defaults", {}) or {}
    runs = raw.get("runs")
    if not isinstance(defaults, dict):
        raise ConfigError(f"{source}: run_defaults: expected a mapping, but got {type(defaults).__name__}")
    if not isinstance(runs, dict) or not runs:
        raise ConfigError(f"{source}: runs: expected a non-empty mapping of run name -> settings, but got {runs!r}")
    merged = dict(raw)
    merged["runs"] = {}
    for name, run in runs.items():
        if not isinstance(run, dict):
            raise ConfigError(f"{source}: runs.{name}: expected a mapping, but got {run!r}")
        if "dataset" not in run:
            # dvc.yaml wires each run to its data with ${item.dataset}, which sees only the run's own entry.
            raise ConfigError(f"{source}: runs.{name}.dataset: required in each run (not only in run_defaults); "
                              f"datasets defined: {sorted(raw.get('datasets') or {})}")
        merged["runs"][name] = deep_merge(defaults, run)
    merged["base_dir"] = Path(base_dir)
    try:
        return Config.model_validate(merged)
    except ValidationError as err:
        raise ConfigError(_format_errors(err, raw, source, origin)) from None


def load_config(path: Path | str = "params.yaml") -> Config:
    """Read and validate params.yaml; relative paths in it resolve against its folder."""
    path = Path(path)
    try:
        raw = load_yaml(path)
    except YamlError as e:
        raise ConfigError(str(e)) from None
    return parse_config(raw, source=str(path), base_dir=path.resolve().parent)
