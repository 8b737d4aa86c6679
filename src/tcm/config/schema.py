"""The whole of params.yaml (:class:`Config`: paths, MLflow, data sets, runs, evaluation), the checks
across its sections, and what is derived from it per run (:func:`resolved_run`, :func:`check_batches`)."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from pydantic import Field, field_validator, model_validator

from tcm.config.base import ConfigError, StrictModel
from tcm.config.cluster import ClusterConfig
from tcm.config.datasets import DatasetConfig, known_train_classes
from tcm.config.evaluation import EvaluationConfig
from tcm.config.runs import RunConfig
from tcm.runfiles import RunDir

# Run and data set names become folder names and unquoted arguments of the stage commands (dvc.yaml),
# so they are restricted to characters that are safe in both.
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,79}")
NAME_RULE = ("1-80 characters from letters, digits, '_', '.', '-', starting with a letter or digit "
             "(it names a folder and a stage)")


class MlflowConfig(StrictModel):
    enabled: bool = True
    tracking_uri: str = "sqlite:///mlflow.db"  # relative paths are taken from params.yaml's folder
    artifact_location: str = "mlartifacts"
    experiment: str = "tcm"
    # Log each evaluated seed's network as an MLflow model (`model`: PyTorch's pt2 export, no pickle, with
    # an input example and signature), so that a run id opens anywhere (mlflow.pytorch.load_model).
    log_model: bool = True
    # Also register each logged model in the store's model registry, as "<experiment>-<run>".
    register_model: bool = False

    @field_validator("tracking_uri")
    @classmethod
    def _not_default_store(cls, v: str) -> str:
        if not v.startswith("sqlite:///"):
            raise ValueError(f"tracking_uri must be an explicit sqlite:/// store, but got {v!r}")
        return v

    @field_validator("experiment")
    @classmethod
    def _named(cls, v: str) -> str:
        # MLflow refuses an empty name only when the first seed is logged, after the run folder was reset.
        if not v.strip():
            raise ValueError("the experiment needs a name (MLflow refuses an empty one)")
        return v


class PathsConfig(StrictModel):
    data: Path = Path("data")
    pretrained: Path = Path("pretrained")  # the pretrain stage's backbones: pretrained/<dataset>/
    runs: Path = Path("runs")
    reports: Path = Path("reports")


class Config(StrictModel):
    paths: PathsConfig = PathsConfig()
    mlflow: MlflowConfig = MlflowConfig()
    datasets: dict[str, DatasetConfig]
    run_defaults: dict[str, Any] = Field(default_factory=dict)
    runs: dict[str, RunConfig]
    evaluation: EvaluationConfig = EvaluationConfig()
    cluster: ClusterConfig = ClusterConfig()  # SLURM jobs of `tcm parallel --slurm`
    # Where params.yaml lives; relative paths are resolved against it. Set by load_config.
    base_dir: Path = Path(".")

    @model_validator(mode="after")
    def _cross_refs(self) -> Config:
        for section, names in (("datasets", self.datasets), ("runs", self.runs)):
            for name in names:
                if not NAME_PATTERN.fullmatch(name):
                    raise ValueError(f"{section}.{name}: the name {name!r} is not allowed: use {NAME_RULE}")
        for name, run in self.runs.items():
            if run.dataset not in self.datasets:
                raise ValueError(
                    f"runs.{name}.dataset: unknown dataset {run.dataset!r}; "
                    f"defined in datasets: {sorted(self.datasets)}"
                )
        self._inside_project()
        return self

    def _inside_project(self) -> None:
        """The stages write under paths.* and the MLflow store: each must lie inside the project (the
        folder of params.yaml), or a typo (`../runs`, an absolute path) would write, and a rerun delete,
        files elsewhere. A symbolic link inside the project may point elsewhere (a big disk)."""
        outputs: dict[str, tuple[Path, str]] = {f"paths.{key}": (value, str(value)) for key, value in self.paths}
        uri = self.mlflow.tracking_uri
        outputs["mlflow.tracking_uri"] = (Path(uri.removeprefix("sqlite:///")), uri)
        outputs["mlflow.artifact_location"] = (Path(self.mlflow.artifact_location), self.mlflow.artifact_location)
        base = Path(os.path.abspath(self.base_dir))
        for key, (value, written) in outputs.items():
            lexical = Path(os.path.abspath(base / value))
            if not (lexical.is_relative_to(base) or (base / value).resolve().is_relative_to(base.resolve())):
                raise ValueError(f"{key}: {written!r} lies outside the project ({base}, the folder of the params "
                                 f"file); give a path inside it (a symbolic link there may point elsewhere)")

    def path(self, p: Path | str) -> Path:
        p = Path(p)
        return p if p.is_absolute() else self.base_dir / p

    def run(self, name: str) -> RunConfig:
        if name not in self.runs:
            raise ConfigError(f"unknown run {name!r}; runs in params.yaml: {sorted(self.runs)}")
        return self.runs[name]

    def dataset(self, name: str) -> DatasetConfig:
        if name not in self.datasets:
            raise ConfigError(f"unknown dataset {name!r}; datasets in params.yaml: {sorted(self.datasets)}")
        return self.datasets[name]

    def run_dir(self, name: str) -> RunDir:
        return RunDir(self.path(self.paths.runs) / name)

    def data_dir(self, name: str) -> Path:
        return self.path(self.paths.data) / name

    def pretrained_dir(self, dataset: str) -> Path:
        return self.path(self.paths.pretrained) / dataset


def check_batches(cfg: Config, source: str = "params.yaml") -> None:
    """Each run's batch of one process needs batch_size / m_per_class distinct train classes: checked
    where params alone tell the class count (the validate stage; the train stage checks every data set
    on its manifest, per process of a data-parallel job, before writing anything)."""
    for name, run in cfg.runs.items():
        classes = known_train_classes(cfg.datasets[run.dataset])
        per_batch = run.train.batch_size // run.train.m_per_class
        if classes is not None and per_batch > classes:
            raise ConfigError(
                f"{source}: runs.{name}.train.batch_size: {run.train.batch_size} images at m_per_class="
                f"{run.train.m_per_class} need {per_batch} distinct train classes per batch, but data set "
                f"{run.dataset!r} trains on {classes}; lower batch_size or raise m_per_class")


def resolved_run(cfg: Config, name: str) -> dict[str, Any]:
    """The merged settings of one run as plain data: what is saved beside the run and logged."""
    run = cfg.run(name)
    return {
        "run": name,
        **run.model_dump(mode="json"),
        "dataset_config": cfg.dataset(run.dataset).model_dump(mode="json"),
        "evaluation": cfg.evaluation.model_dump(mode="json"),
    }


def training_settings(settings: dict[str, Any]) -> dict[str, Any]:
    """The part of a :func:`resolved_run` that training depends on (all but ``evaluation``): what a
    checkpoint must match to be resumed or evaluated."""
    return {k: v for k, v in settings.items() if k != "evaluation"}
