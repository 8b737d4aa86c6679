"""The one module that talks to MLflow.

MLflow is a side output: runs receive params, per-epoch metrics, final metrics and artifacts,
but no stage reads results back from it. When mlflow is not importable (GPU boxes) or is
disabled in params, every call is a no-op and a single notice is printed.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any, Iterable, Mapping

from tcm.config import Config

_NOTICE_SHOWN = False


def git_commit(cwd: Path) -> str:
    """HEAD's commit, with '-dirty' when tracked files differ from it; 'unknown' outside git."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd, capture_output=True,
                               text=True, check=True).stdout.strip()
        return head + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def store_uris(cfg: Config) -> tuple[str, str]:
    """(tracking URI, artifact location URI) with relative paths taken from params.yaml's folder."""
    db = Path(cfg.mlflow.tracking_uri.removeprefix("sqlite:///"))
    artifacts = Path(cfg.mlflow.artifact_location)
    return f"sqlite:///{cfg.path(db).resolve()}", cfg.path(artifacts).resolve().as_uri()


class Tracker:
    """Thin wrapper over ``MlflowClient``; safe to call when MLflow is absent."""

    def __init__(self, cfg: Config) -> None:
        global _NOTICE_SHOWN
        self.cfg = cfg
        self.client = None
        self._known: dict[str, bool] = {}
        if not cfg.mlflow.enabled:
            return
        try:
            from mlflow.tracking import MlflowClient
        except ImportError:
            if not _NOTICE_SHOWN:
                print("tcm: mlflow is not installed; skipping experiment tracking", file=sys.stderr)
                _NOTICE_SHOWN = True
            return
        uri, artifacts = store_uris(cfg)
        # The kind tag makes the MLflow UI open the experiment on its training-runs table.
        self.client = MlflowClient(tracking_uri=uri)
        exp = self.client.get_experiment_by_name(cfg.mlflow.experiment)
        self.experiment_id = (exp.experiment_id if exp is not None else
                              self.client.create_experiment(cfg.mlflow.experiment, artifact_location=artifacts,
                                                            tags={"mlflow.experimentKind": "custom_model_development"}))

    @property
    def enabled(self) -> bool:
        return self.client is not None

    def _live(self, run_id: str | None) -> bool:
        """Whether ``run_id`` is a run of this store: a run.json from another machine (or a store
        that was deleted) names runs that are not here, and logging to them must not fail a stage."""
        if not (self.enabled and run_id):
            return False
        if run_id not in self._known:
            try:
                self.client.get_run(run_id)
                self._known[run_id] = True
            except Exception:
                print(f"tcm: MLflow run {run_id} is not in this store; not logging to it", file=sys.stderr)
                self._known[run_id] = False
        return self._known[run_id]

    def start_run(self, run_name: str, params: Mapping[str, Any], stage: str, run_id: str | None = None,
                  tags: Mapping[str, str] | None = None, seed: int | None = None) -> str | None:
        """Continue ``run_id`` when given and present in the store, else create a run (one per run
        of params.yaml and seed, tagged ``tcm.run`` and ``tags``)."""
        if not self.enabled:
            return None
        if self._live(run_id):
            self.client.update_run(run_id, status="RUNNING")
            self.set_stage(run_id, stage)
            return run_id
        all_tags = {"tcm.run": run_name, "git_commit": git_commit(self.cfg.base_dir), "stage": stage, **(tags or {})}
        title = run_name if seed is None else f"{run_name}-s{seed}"
        run = self.client.create_run(self.experiment_id, run_name=title, tags=all_tags)
        self._known[run.info.run_id] = True
        flat = flatten(params)
        from mlflow.entities import Param

        self.client.log_batch(run.info.run_id, params=[Param(k, str(v)[:6000]) for k, v in flat.items()])
        return run.info.run_id

    def find_run(self, run_name: str, config_hash: str, code: str | None = None) -> str | None:
        """The newest MLflow run of run ``run_name`` trained with settings hash ``config_hash`` (and
        code fingerprint ``code``): run ids are machine-specific, so none is written to result files."""
        if not self.enabled:
            return None
        query = f"tags.`tcm.run` = '{run_name}' AND tags.`tcm.config_hash` = '{config_hash}'"
        if code is not None:
            query += f" AND tags.`tcm.code` = '{code}'"
        found = self.client.search_runs([self.experiment_id], filter_string=query, max_results=1,
                                        order_by=["attributes.start_time DESC"])
        return found[0].info.run_id if found else None

    def set_stage(self, run_id: str | None, stage: str) -> None:
        if self._live(run_id):
            self.client.set_tag(run_id, "stage", stage)
            self.client.set_tag(run_id, f"stage.{stage}.git_commit", git_commit(self.cfg.base_dir))

    def log_metrics(self, run_id: str | None, metrics: Mapping[str, float], step: int | None = None) -> None:
        if not self._live(run_id):
            return
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, step or 0) for k, v in flatten(metrics).items()
                 if isinstance(v, (int, float)) and not isinstance(v, bool)]
        self.client.log_batch(run_id, metrics=batch)

    def log_artifacts(self, run_id: str | None, paths: Iterable[Path], artifact_path: str | None = None) -> None:
        if not self._live(run_id):
            return
        for p in paths:
            if Path(p).is_file():
                self.client.log_artifact(run_id, str(p), artifact_path)

    def end_run(self, run_id: str | None, status: str = "FINISHED") -> None:
        if self._live(run_id):
            self.client.set_terminated(run_id, status=status)
