"""The one module that talks to MLflow.

MLflow is a side output: runs receive params, per-epoch metrics, final metrics and artifacts,
but no stage reads results back from it. When mlflow is not importable (GPU boxes) or is
disabled in params, every call is a no-op and a single notice is printed.

One store per project, whoever writes: relative store paths resolve against the project root, which
is ``$DVC_ROOT`` under DVC (queued ``dvc exp`` runs execute in temporary copies, and DVC points that
variable at the project they came from) and params.yaml's folder otherwise. Several processes may
write at once (``dvc queue start -j 2``): the store is created under a lock, uses SQLite's
write-ahead log, and busy writes are retried.

A store that cannot be used (a read-only or garbage file, a folder in its place, the experiment
deleted in the UI, another process holding its lock too long) is a :class:`TrackingError` when the
Tracker is created: training creates it before it touches any earlier result.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, TypeVar

from tcm.config import Config
from tcm.errors import TcmError
from tcm.locks import exclusive

T = TypeVar("T")
RETRIES = 8  # busy-store retries, waiting 0.5, 1, 2, ... s (plus SQLite's own 20 s busy timeout each)

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


def store_root(cfg: Config) -> Path:
    """Where relative MLflow paths start: the DVC project (also from a queued experiment's temporary
    copy), else params.yaml's folder."""
    root = os.environ.get("DVC_ROOT")
    return Path(root) if root and Path(root).is_dir() else cfg.base_dir


def store_paths(cfg: Config) -> tuple[Path, Path]:
    """(SQLite file, artifact folder) of the project's MLflow store, absolute."""
    root = store_root(cfg)
    db = Path(cfg.mlflow.tracking_uri.removeprefix("sqlite:///"))
    artifacts = Path(cfg.mlflow.artifact_location)
    return (root / db).resolve(), (root / artifacts).resolve()


def store_uris(cfg: Config) -> tuple[str, str]:
    """(tracking URI, artifact location URI) of :func:`store_paths`."""
    db, artifacts = store_paths(cfg)
    return f"sqlite:///{db}", artifacts.as_uri()


def dvc_tags(cwd: Path) -> dict[str, str]:
    """The DVC experiment this process runs in, as MLflow tags: its name ("workspace" under plain
    `dvc repro`, as `dvc exp show` calls it) and the commit it started from. None outside DVC."""
    if not os.environ.get("DVC_ROOT"):
        return {}
    return {"dvc.exp_name": os.environ.get("DVC_EXP_NAME") or "workspace",
            "dvc.baseline_rev": os.environ.get("DVC_EXP_BASELINE_REV") or git_commit(cwd).removesuffix("-dirty")}


def _torch_version() -> str:
    import torch

    return torch.__version__.split("+")[0]


class TrackingError(TcmError, RuntimeError):
    """The MLflow store cannot be used; the message names the store and what to do."""


def _busy(e: Exception) -> bool:
    # Only SQLite's "database is locked" is another writer: MLflow files every OperationalError
    # (a read-only file included) under TEMPORARILY_UNAVAILABLE, and those never clear by waiting.
    return "database is locked" in str(e)


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:300] if text else type(e).__name__


def store_problem(db: Path, e: BaseException) -> str:
    """What is wrong with the store ``db``, from an error its use raised."""
    text = str(e).lower()
    if "readonly" in text or "read-only" in text:
        return f"{db.name} is read-only ({db}); make it writable (and its folder), or set mlflow.tracking_uri"
    if "not a database" in text or "file is encrypted" in text or "malformed" in text:
        return (f"{db.name} is not an SQLite database, or is damaged ({db}); move it away (a new store is "
                "created) or set mlflow.tracking_uri")
    if "disk is full" in text or "no space" in text:
        return f"no space left on device for the MLflow store {db}"
    return f"the MLflow store {db} cannot be used: {_first_line(e)}"


def retry(call: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """``call(*args, **kwargs)``, retried while the SQLite store is busy with another writer."""
    for attempt in range(RETRIES):
        try:
            return call(*args, **kwargs)
        except Exception as e:
            if not _busy(e) or attempt == RETRIES - 1:
                raise
            time.sleep(0.5 * 2 ** attempt)
    raise AssertionError("unreachable")


class _Retrying:
    """An ``MlflowClient`` whose every call is :func:`retry`-ed; a call that still fails is a
    :class:`TrackingError` naming the store (one line, not MLflow's traceback)."""

    def __init__(self, client: Any, db: Path) -> None:
        self._client = client
        self._db = db

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._client, name)
        if not callable(attr):
            return attr

        def call(*a: Any, **k: Any) -> Any:
            try:
                return retry(attr, *a, **k)
            except TcmError:
                raise
            except Exception as e:
                raise TrackingError(f"MLflow: {name}: {store_problem(self._db, e)}") from e

        return call


def _check_store_file(db: Path) -> None:
    """Fail early, in one line, on a store path that SQLite would misread or fail on later."""
    if db.is_dir():
        raise TrackingError(f"{db.name} is a directory, not an SQLite file ({db}); move it away (a new store is "
                            "created) or set mlflow.tracking_uri")
    if db.is_file():
        with open(db, "rb") as f:
            head = f.read(16)
        if head and head != b"SQLite format 3\x00":
            raise TrackingError(f"{db.name} is not an SQLite database ({db}); move it away (a new store is "
                                "created) or set mlflow.tracking_uri")
        if not os.access(db, os.W_OK):
            raise TrackingError(f"{db.name} is read-only ({db}); make it writable, or set mlflow.tracking_uri")
    # SQLite writes its -wal and -shm files beside the store.
    if db.parent.is_dir() and not os.access(db.parent, os.W_OK):
        raise TrackingError(f"{db.name} is read-only: its folder {db.parent} is not writable; make it writable, or "
                            "set mlflow.tracking_uri")


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
        db = store_paths(cfg)[0]
        # Creating the tables and the experiment is a check-then-act: one process at a time.
        _check_store_file(db)
        with exclusive(db.with_name(db.name + ".lock"), f"MLflow store {db}", wait=True):
            try:
                # WAL lets readers and one writer work at once; the mode is stored in the file, once.
                with contextlib.closing(sqlite3.connect(db, timeout=60)) as con:
                    con.execute("PRAGMA journal_mode=WAL")
                    # A write probe: SQLite opens a file it may not write read-only and says so only at
                    # the first write, which would come after training has begun.
                    version = con.execute("PRAGMA user_version").fetchone()[0]  # unused by MLflow
                    con.execute(f"PRAGMA user_version = {int(version)}")
            except sqlite3.Error as e:
                raise TrackingError(store_problem(db, e)) from None
            client = _Retrying(MlflowClient(tracking_uri=uri), db)
            exp = client.get_experiment_by_name(cfg.mlflow.experiment)
            if exp is not None and exp.lifecycle_stage != "active":
                raise TrackingError(
                    f"MLflow experiment {cfg.mlflow.experiment!r} (id {exp.experiment_id}) in {db} is deleted (in the "
                    f"MLflow UI); restore it (mlflow experiments restore --experiment-id {exp.experiment_id}) or set "
                    "mlflow.experiment to another name")
            # The kind tag makes the MLflow UI open the experiment on its training-runs table.
            self.experiment_id = (exp.experiment_id if exp is not None else client.create_experiment(
                cfg.mlflow.experiment, artifact_location=artifacts,
                tags={"mlflow.experimentKind": "custom_model_development"}))
            if exp is not None and "mlflow.experimentKind" not in exp.tags:
                client.set_experiment_tag(self.experiment_id, "mlflow.experimentKind", "custom_model_development")
            self.client = client

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
            for key, value in dvc_tags(self.cfg.base_dir).items():
                self.client.set_tag(run_id, key, value)
            return run_id
        all_tags = {"tcm.run": run_name, "git_commit": git_commit(self.cfg.base_dir), "stage": stage,
                    **dvc_tags(self.cfg.base_dir), **(tags or {})}
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

    def parent_run(self, run_name: str, run_hash: str, params: Mapping[str, Any]) -> str | None:
        """The parent run of configuration ``run_name`` with settings hash ``run_hash`` (named
        ``run_name``; its seed runs are nested beneath it), created (finished, with ``params``) when
        the store has none."""
        if not self.enabled:
            return None
        query = (f"tags.`tcm.run` = '{run_name}' AND tags.`tcm.run_hash` = '{run_hash}' "
                 "AND tags.`tcm.role` = 'configuration'")
        found = self.client.search_runs([self.experiment_id], filter_string=query, max_results=1,
                                        order_by=["attributes.start_time DESC"])
        if found:
            self._known[found[0].info.run_id] = True
            return found[0].info.run_id
        run_id = self.start_run(run_name, params, stage="train",
                                tags={"tcm.role": "configuration", "tcm.run_hash": run_hash})
        self.end_run(run_id)
        return run_id

    def log_input(self, run_id: str | None, rows: Any, name: str, context: str, source: str | None = None) -> None:
        """A data set's rows (a DataFrame) as an input of the run (``mlflow.data``, context training/testing)."""
        if not self._live(run_id):
            return
        import warnings

        import mlflow.data
        from mlflow.entities import DatasetInput, InputTag

        # MLflow warns that a local path "can be interpreted in multiple ways" (two local sources), that
        # integer columns (labels) cannot hold missing values, and of pandas deprecations in its own code.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            entity = mlflow.data.from_pandas(rows, source=source, name=name)._to_mlflow_entity()
        self.client.log_inputs(run_id, [DatasetInput(entity, tags=[InputTag("mlflow.data.context", context)])])

    def log_model(self, run_id: str | None, model: Any, example: Any, output: Any, metadata: Mapping | None = None,
                  registered_name: str | None = None) -> None:
        """A PyTorch network as the run's MLflow model ``model``: exported (pt2, no pickle) with an
        input example and the signature of (example, output); registered as ``registered_name``."""
        if not self._live(run_id):
            return
        import mlflow
        import mlflow.pytorch
        from mlflow.models import infer_signature
        from mlflow.tracking._tracking_service import utils as tracking_utils

        status = self.client.get_run(run_id).info.status
        uri = store_uris(self.cfg)[0]
        previous = tracking_utils._tracking_uri  # None when unset: restored as it was
        mlflow.set_tracking_uri(uri)
        try:
            # The fluent API logs models into the active run: this one, reopened and left as it was.
            with mlflow.start_run(run_id=run_id):
                retry(mlflow.pytorch.log_model, model, name="model", serialization_format="pt2",
                      input_example=example, signature=infer_signature(example, output),
                      metadata=dict(metadata or {}), registered_model_name=registered_name,
                      pip_requirements=[f"torch=={_torch_version()}"])
        except Exception as e:
            raise TrackingError(f"MLflow: log_model: {store_problem(store_paths(self.cfg)[0], e)}") from e
        finally:
            self.client.update_run(run_id, status=status)
            tracking_utils._tracking_uri = previous

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
