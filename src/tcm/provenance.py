"""Whether a seed's evaluation results belong to what is on record now: the checkpoint that
``runs/<run>/run.json`` names for the seed and the settings of params.yaml.

The evaluate stage writes :func:`evaluation_record` into each seed's ``settings.json``; readers (the
report and its command-line twin) call :func:`stale_reason` and leave out a seed whose results came
from another training or other settings, instead of publishing them beside the new settings. Only
small JSON files are read (no checkpoint), so this works on a clone without ``dvc pull``."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from tcm.config import Config, resolved_run, training_settings

RECORD_KEY = "provenance"


def digest(settings: Any) -> str:
    """A short, order-independent hash of JSON-able settings.

    >>> digest({"a": 1, "b": [2, 3]}) == digest({"b": [2, 3], "a": 1})
    True
    """
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def evaluation_record(checkpoint_hash: str, settings: dict[str, Any]) -> dict[str, str]:
    """What a seed's results were computed from: the checkpoint's config hash (as run.json records
    it; it covers the training settings) and the digest of the run's evaluation settings (``settings``:
    a :func:`resolved_run`)."""
    return {"checkpoint_hash": checkpoint_hash, "evaluation_settings": digest(settings["evaluation"])}


def _read(path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def stale_reason(cfg: Config, name: str, seed: int) -> str | None:
    """Why the evaluated results of ``seed`` of run ``name`` are not those of the current checkpoint
    and settings (None when they are, or when the seed has no results)."""
    run_dir = cfg.run_dir(name)
    if not run_dir.seed_metrics(seed).is_file():
        return None
    record = (_read(run_dir.seed_settings(seed)) or {}).get(RECORD_KEY)
    if not isinstance(record, dict):
        return f"{run_dir.seed_settings(seed)} records no checkpoint or settings (written by an older tcm)"
    info = _read(run_dir.info)
    if info is None:
        return f"{run_dir.info} is missing or unreadable (the run's training is not on record)"
    trained = (info.get("seeds") or {}).get(str(seed), {}).get("config_hash")
    if trained != record.get("checkpoint_hash"):
        return (f"computed from another checkpoint than {run_dir.info} records for seed {seed} "
                "(the run was trained again)")
    settings = resolved_run(cfg, name)
    if digest(training_settings(info.get("settings") or {})) != digest(training_settings(settings)):
        return f"{run_dir.info}: trained with other settings than params.yaml's"
    if record.get("evaluation_settings") != digest(settings["evaluation"]):
        return "evaluated with other evaluation settings than params.yaml's"
    return None
