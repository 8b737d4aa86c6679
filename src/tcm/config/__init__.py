"""params.yaml -> one validated, frozen :class:`Config`.

Every key of params.yaml is checked here, before any work starts: an unknown key, a value of the
wrong type or an impossible value raises :class:`ConfigError`, whose message names the key (as a
dotted path in params.yaml terms) and what is accepted.

``runs.<name>`` entries are deep-merged over ``run_defaults`` so that params.yaml lists each
hyperparameter once, next to its default; the merged run is what gets validated and logged.

Modules (none imports torch: validating params.yaml takes no seconds):
    base        the strict model base, bounded whole numbers, ConfigError
    registry    the backbones and base losses by name, each loss's parameter types; Registry
    datasets    datasets.<name>, and data_settings (what the data stage prepares from)
    runs        runs.<name>: model, loss, TCM, training
    cluster     cluster: the SLURM jobs of `tcm parallel --slurm`
    evaluation  evaluation: embedding the test split, OPIS, the threshold report, the bootstrap
    schema      Config (the whole file, checks across sections) and what is derived per run
    loading     parse_config / load_config: merging, validation, one-line messages
"""

from tcm.config.base import (
    MAX_BATCH,
    MAX_PIXELS,
    MAX_WORKERS,
    ConfigError,
    NonNegativeInt,
    PositiveInt,
    Seed,
)
from tcm.config.cluster import ClusterConfig
from tcm.config.datasets import (
    DATASET_SOURCES,
    EMBEDDED_SOURCES,
    TRAINING_ONLY_KEYS,
    DatasetConfig,
    GlyphsConfig,
    PretrainConfig,
    SyntheticConfig,
    data_settings,
    known_train_classes,
)
from tcm.config.evaluation import BootstrapConfig, EvaluationConfig, OpisConfig
from tcm.config.loading import Origin, deep_merge, load_config, parse_config
from tcm.config.registry import BACKBONES, LOSS_PARAMS, Registry, RegistryError
from tcm.config.runs import LossConfig, ModelConfig, RunConfig, TCMConfig, TrainConfig
from tcm.config.schema import (
    NAME_PATTERN,
    NAME_RULE,
    Config,
    MlflowConfig,
    PathsConfig,
    check_batches,
    resolved_run,
    training_settings,
)

__all__ = [
    "BACKBONES", "DATASET_SOURCES", "EMBEDDED_SOURCES", "LOSS_PARAMS", "MAX_BATCH", "MAX_PIXELS", "MAX_WORKERS",
    "NAME_PATTERN", "NAME_RULE", "TRAINING_ONLY_KEYS", "BootstrapConfig", "ClusterConfig", "Config", "ConfigError",
    "DatasetConfig",
    "EvaluationConfig", "GlyphsConfig", "LossConfig", "MlflowConfig", "ModelConfig", "NonNegativeInt", "OpisConfig",
    "Origin", "PathsConfig", "PositiveInt", "PretrainConfig", "Registry", "RegistryError", "RunConfig", "Seed",
    "SyntheticConfig", "TCMConfig", "TrainConfig", "check_batches", "data_settings", "deep_merge",
    "known_train_classes", "load_config", "parse_config", "resolved_run", "training_settings",
]
