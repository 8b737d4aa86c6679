"""params.yaml -> one validated, frozen :class:`Config`.

Every key of params.yaml is checked here, before any work starts: an unknown key, a value of the
wrong type or an impossible value raises :class:`ConfigError`, whose message names the key (as a
dotted path in params.yaml terms) and what is accepted.

``runs.<name>`` entries are deep-merged over ``run_defaults`` so that params.yaml lists each
hyperparameter once, next to its default; the merged run is what gets validated and logged.
"""

from __future__ import annotations

import copy
import math
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeFloat,
    PlainValidator,
    PositiveFloat,
    Strict,
    ValidationError,
    create_model,
    field_validator,
    model_validator,
)

from tcm.errors import TcmError
from tcm.runfiles import RunDir
from tcm.strict_yaml import YamlError, load_yaml

DATASET_SOURCES = ("glyphs", "sklearn_digits", "mnist", "cub", "cars196", "sop", "inat2018")
# Sources whose images the package writes itself (no download): the data stage regenerates them.
EMBEDDED_SOURCES = ("glyphs", "sklearn_digits", "mnist")
BACKBONES = ("small_cnn", "resnet50", "vit_b_16", "vit_tiny")  # vit_tiny: 32 px, for smoke runs
# Counts are whole numbers as written: `epochs: 1e20` (a YAML float) is refused rather than truncated.
PositiveInt = Annotated[int, Strict(), Field(gt=0)]
NonNegativeInt = Annotated[int, Strict(), Field(ge=0)]


def _count(upper: int, lower: int = 1) -> Any:
    """A whole number in [lower, upper]. Upper bounds sit where a larger value would exhaust memory or
    time before the first result (a 10^12-image epoch dies in a MemoryError, 10^9 thresholds or bootstrap
    resamples run for days), at least 10x above any profile or recipe (profiles/, configs/recipes.yaml:
    the largest batch is 4000, evaluation batch 500, 300 resamples, 101 thresholds)."""
    return Annotated[int, Strict(), Field(ge=lower, le=upper)]


MAX_BATCH = 100_000  # images per batch or forward pass (recipes: 4000)
MAX_WORKERS = 512  # loader or worker processes (profiles: 8)
MAX_PIXELS = 4096  # image side in pixels (profiles: 256)
# numpy's seed (np.random.seed, tcm.train.seed_everything) must be below 2**32.
Seed = _count(2**32 - 1, lower=0)

# Loss parameters: a number is an int or float (not a boolean, not a string such as "two").
_Number = Annotated[float, Strict()]
_PositiveNumber = Annotated[float, Strict(), Field(gt=0)]
_Flag = Annotated[bool, Strict()]


def _all_or_positive_int(v: Any) -> Any:
    # pml's TripletMarginLoss: triplets_per_anchor = "all" or a count. One message (a union would give two).
    if v == "all" or (isinstance(v, int) and not isinstance(v, bool) and v > 0):
        return v
    raise ValueError(f"expected 'all' or a positive integer, but got {v!r}")


# Base losses by params name, with the keyword arguments each accepts from params (constructor
# arguments minus those the code sets; the classes are in tcm.losses.registry) and their types: from
# the annotations of our losses (tcm.losses.smooth_ap, tcm.losses.recall_at_k) and from the defaults of
# pytorch-metric-learning's (which have no annotations), so that check-params refuses what the loss
# would (`alpha: two` otherwise fails at the first training step). Written out rather than read from
# the classes so that validating params.yaml does not import torch (seconds per pipeline stage);
# tests/test_config.py and tests/test_faults_config.py check names and types against the signatures.
LOSS_PARAMS: dict[str, dict[str, Any]] = {
    "multi_similarity": {"alpha": _Number, "base": _Number, "beta": _Number},
    "proxy_anchor": {"alpha": _Number, "margin": _Number},
    "smooth_ap": {"include_query": _Flag, "temperature": _PositiveNumber},
    "rs_at_k": {"include_query": _Flag, "k_temperatures": Annotated[list[_PositiveNumber], Field(min_length=1)],
                "k_values": Annotated[list[PositiveInt], Field(min_length=1)], "temperature": _PositiveNumber},
    "contrastive": {"neg_margin": _Number, "pos_margin": _Number},
    "triplet": {"margin": _Number, "smooth_loss": _Flag, "swap": _Flag,
                "triplets_per_anchor": Annotated[Any, PlainValidator(_all_or_positive_int)]},
}


def _params_model(name: str, types: dict[str, Any]) -> type[BaseModel]:
    # {params: {...}} so that a bad value's location reads loss.params.<key>.
    inner = create_model(f"{name}_params", __config__=ConfigDict(extra="forbid"),
                         **{k: (t, None) for k, t in types.items()})
    return create_model(f"{name}_loss", params=(inner, ...))


_LOSS_PARAM_MODELS = {name: _params_model(name, types) for name, types in LOSS_PARAMS.items()}

# Run and data set names become folder names and unquoted arguments of the stage commands (dvc.yaml),
# so they are restricted to characters that are safe in both.
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,79}")
NAME_RULE = ("1-80 characters from letters, digits, '_', '.', '-', starting with a letter or digit "
             "(it names a folder and a stage)")


class ConfigError(TcmError, ValueError):
    """A problem in params.yaml; the message names the key and what is accepted."""


class _Strict(BaseModel):
    # inf and nan are refused wherever a float is accepted (YAML spells them .inf and .nan).
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class SyntheticConfig(_Strict):
    """A tiny generated copy of a benchmark in its real format (the `smoke` profile)."""

    n_classes: _count(10_000) = 8  # even: the lower half trains
    per_class: _count(1_000) = 6
    size: tuple[_count(MAX_PIXELS), _count(MAX_PIXELS)] = (64, 48)  # width, height of each JPEG
    seed: Seed = 0


class GlyphsConfig(_Strict):
    """The generated open world of the default (tcm.data.glyphs): three disjoint sets of classes."""

    pretrain_classes: _count(100_000, lower=0) = 200  # for the upstream pretraining stage (the default's "ImageNet")
    train_classes: _count(100_000, lower=2) = 100
    test_classes: _count(100_000, lower=2) = 100
    per_class: Annotated[int, Strict(), Field(ge=2, le=10_000)] = 20
    size: Annotated[int, Strict(), Field(ge=8, le=512)] = 32  # pixels (square, grayscale PNG)
    seed: Seed = 0


class PretrainConfig(_Strict):
    """Upstream pretraining of a backbone on the data set's ``pretrain`` classes (disjoint from train and
    test), as the paper's backbones come pretrained on ImageNet: softmax classification, once, shared
    by every run and seed that sets ``model.weights_path`` to its output (``pretrained/<dataset>/backbone.pt``)."""

    backbone: Literal[BACKBONES] = "small_cnn"  # type: ignore[valid-type]
    epochs: Annotated[int, Strict(), Field(gt=0, le=10_000)] = 10
    batch_size: _count(MAX_BATCH) = 128
    lr: PositiveFloat = 1e-3  # Adam, cosine decay to 0
    weight_decay: NonNegativeFloat = 1e-4
    seed: Seed = 0


class DatasetConfig(_Strict):
    source: Literal[DATASET_SOURCES]  # type: ignore[valid-type]
    # source glyphs: what to generate (required there, refused elsewhere).
    glyphs: GlyphsConfig | None = None
    # Pretrain a backbone on the `pretrain` split (sources with one: glyphs) in the pretrain stage.
    pretrain: PretrainConfig | None = None
    # Benchmarks only: generate a tiny copy under data/<name>/source and parse it with the real parser
    # (counts are then non-standard by design).
    synthetic: SyntheticConfig | None = None
    # Folder holding the official files as extracted (benchmarks only; digits ship with sklearn).
    root: Path | None = None
    # Open-world split for digits/MNIST: these classes train, the rest test.
    train_classes: list[Annotated[int, Strict()]] | None = None
    # Closed-set split for digits/MNIST instead (the toy): every class trains, and this share of each
    # class's images (a fixed draw) is held out as the test split.
    closed_set_test_share: float | None = Field(None, gt=0.0, lt=1.0)
    # Train: RandomResizedCrop(image_size, scale=crop_scale) (+ flip); test: Resize(resize) + CenterCrop.
    image_size: _count(MAX_PIXELS) = 224
    resize: _count(MAX_PIXELS) = 256
    crop_scale: tuple[PositiveFloat, PositiveFloat] = (0.08, 1.0)
    hflip: bool = True
    # Waive the standard per-split image/class counts (subsets, tiny test copies).
    allow_nonstandard_counts: bool = False
    # Benchmarks: 'exists' = every listed file is there, a regular file, non-empty; 'full' also decodes every image.
    verify: Literal["exists", "full"] = "exists"
    # Fetch the data set into `root` when it is not there (only where a stable public address exists: CUB).
    download: bool = False
    # Re-encode the images to this short side (JPEG) in the data stage; null = train on the originals.
    preprocess_short_side: _count(MAX_PIXELS) | None = None
    preprocess_quality: Annotated[int, Strict()] = Field(90, ge=50, le=100)
    # Worker processes for full verification and preprocessing; null = all CPU cores.
    workers: _count(MAX_WORKERS) | None = None

    @model_validator(mode="after")
    def _check(self) -> DatasetConfig:
        if self.preprocess_short_side is not None and self.preprocess_short_side < self.image_size:
            raise ValueError(f"preprocess_short_side ({self.preprocess_short_side}) must be >= image_size "
                             f"({self.image_size}), or the crops would be upsampled")
        if (self.glyphs is not None) != (self.source == "glyphs"):
            raise ValueError(f"glyphs: settings are required for source 'glyphs' and apply to it only "
                             f"(source '{self.source}')")
        if self.pretrain is not None and (self.glyphs is None or self.glyphs.pretrain_classes < 2):
            raise ValueError("pretrain needs a data set with a pretrain split of at least 2 classes "
                             "(source glyphs with glyphs.pretrain_classes >= 2)")
        if self.preprocess_short_side is not None and self.source in EMBEDDED_SOURCES:
            raise ValueError(f"preprocess_short_side applies to the benchmarks (cub, cars196, sop, inat2018), "
                             f"not to source '{self.source}'")
        lo, hi = self.crop_scale
        if not lo <= hi <= 1.0:
            raise ValueError(f"crop_scale must satisfy 0 < low <= high <= 1, but got {list(self.crop_scale)}")
        if self.resize < self.image_size:
            raise ValueError(f"resize ({self.resize}) must be >= image_size ({self.image_size})")
        if self.closed_set_test_share is not None:
            if self.source not in ("sklearn_digits", "mnist") or self.train_classes is not None:
                raise ValueError("closed_set_test_share applies to sources sklearn_digits and mnist, in place of "
                                 f"train_classes (got source '{self.source}', train_classes {self.train_classes})")
        elif self.source in ("sklearn_digits", "mnist"):
            if not self.train_classes:
                raise ValueError(f"train_classes (open world) or closed_set_test_share (closed set) is required "
                                 f"for source '{self.source}' (e.g. train_classes: [0, 1, 2, 3, 4])")
            bad = [c for c in self.train_classes if not 0 <= c <= 9]
            if bad or len(set(self.train_classes)) >= 10:
                raise ValueError(f"train_classes must be a proper subset of 0..9, but got {self.train_classes}")
        return self


class ModelConfig(_Strict):
    backbone: Literal[BACKBONES]  # type: ignore[valid-type]
    embedding_dim: _count(65_536) = 512
    # ImageNet weights: torchvision's download when online, or `weights_path` (a local state_dict).
    pretrained: bool = False
    weights_path: Path | None = None
    # BatchNorm keeps its loaded running statistics (eval mode) while training; its affine weight and
    # bias still train (RS@k, Smooth-AP; ProxyAnchor after its warm-up). See tcm.models.EmbeddingNet.train.
    freeze_bn: bool = False
    # ResNet-50 only: global pooling before the head ("gem": generalized mean, as RS@k's netlib.py).
    pooling: Literal["avg", "gem"] = "avg"
    # LayerNorm between backbone and linear head (RS@k's netlib.py does this for ResNet-50 and ViT).
    head_layernorm: bool = False
    # Which pretrained weights `pretrained`/`weights_path` mean (docs/recipes.md, "Pretrained weights"):
    #   imagenet1k     torchvision's recommended ImageNet-1k weights (its DEFAULT): ResNet-50 IMAGENET1K_V2
    #                  (80.9% top-1, 2021 training recipe), ViT-B/16 IMAGENET1K_V1;
    #   imagenet1k_v1  torchvision's first ImageNet-1k release, IMAGENET1K_V1: for ResNet-50 (76.1% top-1) the
    #                  weights RS@k, Smooth-AP (pretrainedmodels' resnet50) and ProxyAnchor start from;
    #   imagenet21k    vit_b_16 only: timm's ImageNet-21k ViT-B/16, as RS@k's code trains its ViT.
    weights: Literal["imagenet1k", "imagenet1k_v1", "imagenet21k"] = "imagenet1k"

    @model_validator(mode="after")
    def _weights(self) -> ModelConfig:
        if self.weights == "imagenet21k" and self.backbone != "vit_b_16":
            raise ValueError(f"weights 'imagenet21k' is offered for backbone vit_b_16 only, not {self.backbone!r}")
        if self.weights == "imagenet1k_v1" and self.backbone not in ("resnet50", "vit_b_16"):
            raise ValueError(f"weights 'imagenet1k_v1' is offered for backbones resnet50 and vit_b_16 (torchvision's "
                             f"ImageNet weights), not {self.backbone!r}")
        return self


class LossConfig(_Strict):
    name: Literal[tuple(LOSS_PARAMS)]  # type: ignore[valid-type]
    # Keyword arguments of the loss class, e.g. {alpha: 2, beta: 50} for multi_similarity,
    # {k_values: [1, 2, 4, 8, 16]} for rs_at_k.
    params: dict[str, float | int | bool | str | list[float | int]] = Field(default_factory=dict)
    # MultiSimilarityMiner in front of multi_similarity (the paper's recipe pairs them).
    miner: bool = True
    # ProxyAnchor's proxies learn this many times faster than the network (its authors use 100).
    proxy_lr_multiplier: PositiveFloat = 100.0
    # rs_at_k only: SiMix, RS@k's similarity mixup (its src/main.py L37 `--mixup`, 0 = off by default and in
    # its README's main commands): every same-class pair of the batch adds a virtual positive, a random
    # convex mix of the two embeddings (tcm.losses.recall_at_k.simix). A setting of its own, not a
    # `params` entry, so that it is checked here as a boolean (strictly: true/false, not "yes" or 1); TCM
    # always sees the real embeddings.
    simix: Annotated[bool, Strict()] = False

    @field_validator("params", mode="before")
    @classmethod
    def _param_values(cls, v: Any) -> Any:
        # One message per bad value (pydantic would report it once per member of the union type).
        if not isinstance(v, dict):
            return v
        for key, value in v.items():
            items = value if isinstance(value, list) else [value]
            if isinstance(value, list) and not all(isinstance(x, (int, float)) and not isinstance(x, bool)
                                                   for x in value):
                raise ValueError(f"{key}: a list must hold numbers only, but got {value!r}")
            if not all(isinstance(x, (bool, int, float, str)) for x in items):
                raise ValueError(f"{key}: expected a number, boolean, string or list of numbers, but got {value!r}")
            if any(isinstance(x, float) and not math.isfinite(x) for x in items):
                raise ValueError(f"{key}: must be a finite number, but got {value!r}")
        return v

    @model_validator(mode="after")
    def _known_params(self) -> LossConfig:
        accepted = LOSS_PARAMS[self.name]
        unknown = sorted(set(self.params) - set(accepted))
        if unknown:
            hint = " (SiMix is the setting loss.simix, not a params entry)" if "simix" in unknown else ""
            raise ValueError(f"unknown params {unknown} for loss '{self.name}'; accepted: {list(accepted)}{hint}")
        if self.simix and self.name != "rs_at_k":
            raise ValueError(f"simix (RS@k's similarity mixup) applies to loss 'rs_at_k' only, not '{self.name}'")
        # Each value's type (LOSS_PARAMS); the ValidationError raised here is reported at loss.params.<key>.
        # The values themselves stay as written (what a checkpoint's settings record).
        _LOSS_PARAM_MODELS[self.name].model_validate({"params": self.params})
        k_values, k_temps = self.params.get("k_values"), self.params.get("k_temperatures")
        if self.name == "rs_at_k" and len(k_values or [1] * 5) != len(k_temps or [1] * 5):
            # RecallAtKSurrogate pairs them (its defaults hold 5 each)
            raise ValueError(f"params.k_values and params.k_temperatures must have equal lengths, but got "
                             f"{k_values or '(default, 5)'} and {k_temps or '(default, 5)'}")
        return self


class TCMConfig(_Strict):
    """The TCM regularizer (paper section 5.2 defaults)."""

    enabled: bool = False
    # fixed: m+ and m- as written below. train_quantiles: set per seed before the first step, from the
    # initial model's cosine similarities on the train split (never the test split): m+ = the
    # pos_quantile of the positive pairs, m- = the neg_quantile of the negative pairs (tcm.margins).
    margins: Literal["fixed", "train_quantiles"] = "fixed"
    pos_margin: float = Field(0.9, ge=-1.0, le=1.0)  # m+: positives below this are penalised
    neg_margin: float = Field(0.5, ge=-1.0, le=1.0)  # m-: negatives above this are penalised
    pos_quantile: float = Field(0.5, ge=0.0, le=1.0)  # margins: train_quantiles only
    neg_quantile: float = Field(0.5, ge=0.0, le=1.0)
    pos_weight: NonNegativeFloat = 1.0  # lambda+
    neg_weight: NonNegativeFloat = 1.0  # lambda-
    # lambda+ and lambda- ramp linearly from 0 in epoch 1 to their value in epoch warmup_epochs + 1.
    warmup_epochs: NonNegativeInt = 0

    @model_validator(mode="after")
    def _margins(self) -> TCMConfig:
        if self.margins == "fixed" and self.neg_margin >= self.pos_margin:
            raise ValueError(
                f"neg_margin (m-) must be below pos_margin (m+), but got m- = {self.neg_margin} "
                f">= m+ = {self.pos_margin}"
            )
        return self


class TrainConfig(_Strict):
    epochs: Annotated[int, Strict(), Field(gt=0, le=100_000)] = 10
    batch_size: _count(MAX_BATCH) = 64
    m_per_class: PositiveInt = 4  # images per class in each batch
    # Images drawn per epoch by the m-per-class sampler; null = the size of the train split.
    samples_per_epoch: _count(10**8) | None = None  # 10^8: 1,000x ImageNet-1k's train split
    # m_per_class: pytorch-metric-learning's MPerClassSampler, samples_per_epoch images per epoch.
    # rsk: RS@k's epoch: each batch holds distinct classes with m_per_class unused images each, images are
    # used without replacement, and the epoch ends when no such batch can be formed (classes with fewer
    # than m_per_class images never train). samples_per_epoch does not apply.
    sampler: Literal["m_per_class", "rsk"] = "m_per_class"
    optimizer: Literal["adam", "adamw", "sgd"] = "adam"
    lr: PositiveFloat = 1e-4
    weight_decay: NonNegativeFloat = 0.0
    # constant | cosine (per step, to 0) | step (x lr_gamma at each epoch of lr_milestones, as MultiStepLR)
    schedule: Literal["constant", "cosine", "step"] = "constant"
    lr_milestones: list[PositiveInt] = Field(default_factory=list)  # epochs after which lr *= lr_gamma
    lr_gamma: PositiveFloat = 0.1
    # First epochs train only the embedding head and the loss's parameters (ProxyAnchor's `--warm`).
    warmup_epochs: NonNegativeInt = 0
    clip_grad_value: PositiveFloat | None = None  # clamp each gradient element (ProxyAnchor: 10)
    # Images per forward pass: a batch larger than this is embedded in chunks without autograd, the
    # loss is taken on the whole batch, then each chunk is re-run and back-propagated (RS@k's
    # `bs_base`). null = one forward pass for the whole batch.
    chunk_size: _count(MAX_BATCH) | None = None
    # torch.compile the model; auto = on CUDA only (ResNet-50 trained 1.44x and ViT-B/16 1.50x faster
    # compiled on an H200, issue 11), falling back to eager with a warning if compilation fails.
    compile: bool | Literal["auto"] = "auto"
    # One training per seed; the report gives mean, sd and paired 95% intervals over them.
    seeds: list[Seed] = Field(default_factory=lambda: [0], min_length=1)
    num_workers: _count(MAX_WORKERS, lower=0) = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    amp: bool = True  # bf16 autocast, CUDA only
    channels_last: bool = True  # CUDA only
    # workers: loader processes decode and crop with PIL; device: they only read the files, and the
    # batch is decoded (nvJPEG on CUDA) and cropped on the training device (tcm.data.batches).
    decode: Literal["workers", "device"] = "workers"

    @model_validator(mode="after")
    def _batch(self) -> TrainConfig:
        if self.batch_size % self.m_per_class:
            raise ValueError(
                f"batch_size ({self.batch_size}) must be a multiple of m_per_class ({self.m_per_class})"
            )
        if self.schedule == "step" and not self.lr_milestones:
            raise ValueError("schedule 'step' needs lr_milestones (epochs after which lr is multiplied by lr_gamma)")
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds must be distinct, but got {self.seeds}")
        if self.lr_milestones != sorted(set(self.lr_milestones)):
            raise ValueError(f"lr_milestones must be strictly increasing, but got {self.lr_milestones}")
        return self


class RunConfig(_Strict):
    dataset: str
    model: ModelConfig
    loss: LossConfig
    tcm: TCMConfig = TCMConfig()
    train: TrainConfig = TrainConfig()


class OpisConfig(_Strict):
    beta: PositiveFloat = 1.0  # F-beta utility of TPR and TNR (assumed beta = 1)
    far_range: tuple[PositiveFloat, PositiveFloat] = (1e-2, 1e-1)  # calibration range of overall FAR
    n_thresholds: _count(10**6, lower=2) = 101
    eps: float = Field(0.05, gt=0.0, le=0.5)  # share of best / worst classes for eps-OPIS
    # OPIS class weights w_i: "uniform" = 1/C (assumed), "positive_pairs" = share of positive pairs.
    class_weighting: Literal["uniform", "positive_pairs"] = "uniform"
    # Upper bound on the similarity-histogram bin width: thresholds lie within it of exact quantiles.
    resolution: float = Field(1e-4, gt=0.0, le=0.01)

    @field_validator("far_range")
    @classmethod
    def _range(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not 0 < v[0] < v[1] < 1:
            raise ValueError(f"far_range must satisfy 0 < low < high < 1, but got {list(v)}")
        return v


class BootstrapConfig(_Strict):
    # Class-stratified bootstrap of OPIS over the test queries (tcm.metrics.bootstrap): its sd is written
    # per seed as opis_boot_sd / eps_opis_boot_sd. resamples: 0 = off, else at least 2.
    resamples: _count(100_000, lower=0) = 300
    seed: Seed = 0

    @field_validator("resamples")
    @classmethod
    def _two(cls, v: int) -> int:
        if v == 1:
            raise ValueError("resamples must be 0 (off) or at least 2 (an sd needs two), but got 1")
        return v


class EvaluationConfig(_Strict):
    batch_size: _count(MAX_BATCH) = 256  # images per forward pass when embedding the test split
    recall_k: list[PositiveInt] = [1, 2, 4, 8]
    opis: OpisConfig = OpisConfig()
    # Query rows per similarity chunk; null = from the free memory (at most 512 MiB per chunk).
    chunk_size: _count(10**6) | None = None
    # Where the test split is embedded and the similarities computed; loader processes for embedding.
    device: Literal["auto", "cpu", "cuda"] = "auto"
    num_workers: _count(MAX_WORKERS, lower=0) = 0
    decode: Literal["workers", "device"] = "workers"  # as train.decode, for the test split
    # Threshold report: the global threshold with this overall FAR on the test set, and the spread
    # of per-class FAR / FRR at it (min, median, max, mean of the worst `worst_share` of classes).
    target_far: float = Field(1e-3, gt=0.0, lt=1.0)
    worst_share: float = Field(0.05, gt=0.0, le=1.0)
    bootstrap: BootstrapConfig = BootstrapConfig()


class MlflowConfig(_Strict):
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


class PathsConfig(_Strict):
    data: Path = Path("data")
    pretrained: Path = Path("pretrained")  # the pretrain stage's backbones: pretrained/<dataset>/
    runs: Path = Path("runs")
    reports: Path = Path("reports")


# ---------------------------------------------------------------- cluster (SLURM) begin
# `tcm parallel --slurm`: what each train stage's SLURM job asks for (docs/gpus.md). No train or
# evaluation stage reads it: editing it re-runs nothing. Command-line flags override each key.
SLURM_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.,:+-]{0,127}")


class ClusterConfig(_Strict):
    partition: str | None = None  # sbatch --partition; null = the cluster's default partition
    account: str | None = None  # sbatch --account; null = the user's default account
    nodes: _count(1024) = 1  # > 1: one run across nodes (DDP through torchrun in the job)
    gpus_per_job: _count(64, lower=0) = 0  # GPUs per node; > 1: DDP through torchrun in the job
    cpus_per_job: _count(1024) = 4  # CPUs per node (data-loading workers + the trainer)
    mem_gb: _count(16_384) | None = None  # memory per node; null = the partition's default
    time_min: _count(60 * 24 * 30) = 24 * 60  # time limit; near it the job is requeued and resumes

    @field_validator("partition", "account")
    @classmethod
    def _slurm_name(cls, v: str | None) -> str | None:
        if v is not None and not SLURM_NAME.fullmatch(v):
            raise ValueError(f"{v!r} is not a SLURM name (letters, digits and _.,:+- only)")
        return v
# ---------------------------------------------------------------- cluster (SLURM) end


class Config(_Strict):
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


def known_train_classes(ds: DatasetConfig) -> int | None:
    """How many classes the train split of ``ds`` will have, where params alone tell (digits, MNIST,
    synthetic copies); None for real benchmark files, whose count the train stage checks before
    writing anything."""
    if ds.glyphs is not None:
        return ds.glyphs.train_classes
    if ds.train_classes is not None:
        return len(set(ds.train_classes))
    if ds.closed_set_test_share is not None:
        return 10
    if ds.synthetic is not None:
        return ds.synthetic.n_classes // 2
    return None


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


def resolved_run(cfg: Config, name: str) -> dict[str, Any]:
    """The merged settings of one run as plain data: what is saved beside the run and logged."""
    run = cfg.run(name)
    return {
        "run": name,
        **run.model_dump(mode="json"),
        "dataset_config": cfg.dataset(run.dataset).model_dump(mode="json"),
        "evaluation": cfg.evaluation.model_dump(mode="json"),
    }


# Settings of a data set that say how training and pretraining use its images, which the data stage
# never reads: an edit to them re-runs training, not `tcm data prepare` (the data stage depends on
# data_settings() only, written by the validate stage; tests/test_data_settings.py holds that the
# prepared files do not change with them).
TRAINING_ONLY_KEYS = ("image_size", "resize", "crop_scale", "hflip", "pretrain")


def data_settings(dataset: DatasetConfig) -> dict[str, Any]:
    """What the data stage prepares a data set from: its settings less :data:`TRAINING_ONLY_KEYS`."""
    return dataset.model_dump(mode="json", exclude=set(TRAINING_ONLY_KEYS))


def training_settings(settings: dict[str, Any]) -> dict[str, Any]:
    """The part of a :func:`resolved_run` that training depends on (all but ``evaluation``): what a
    checkpoint must match to be resumed or evaluated."""
    return {k: v for k, v in settings.items() if k != "evaluation"}
