"""``runs.<name>`` (each merged over ``run_defaults``): the model, the base loss and its parameters,
the TCM regulariser and the training settings of one run."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeFloat,
    PositiveFloat,
    Strict,
    create_model,
    field_validator,
    model_validator,
)

from tcm.config.base import MAX_BATCH, MAX_WORKERS, NonNegativeInt, PositiveInt, Seed, StrictModel, count
from tcm.config.registry import BACKBONES, LOSS_PARAMS


def _params_model(name: str, types: dict[str, Any]) -> type[BaseModel]:
    # {params: {...}} so that a bad value's location reads loss.params.<key>.
    inner = create_model(f"{name}_params", __config__=ConfigDict(extra="forbid"),
                         **{k: (t, None) for k, t in types.items()})
    return create_model(f"{name}_loss", params=(inner, ...))


_LOSS_PARAM_MODELS = {name: _params_model(name, types) for name, types in LOSS_PARAMS.items()}


class ModelConfig(StrictModel):
    backbone: Literal[BACKBONES]  # type: ignore[valid-type]
    embedding_dim: count(65_536) = 512
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


class LossConfig(StrictModel):
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


class TCMConfig(StrictModel):
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


class TrainConfig(StrictModel):
    epochs: Annotated[int, Strict(), Field(gt=0, le=100_000)] = 10
    batch_size: count(MAX_BATCH) = 64
    m_per_class: PositiveInt = 4  # images per class in each batch
    # Images drawn per epoch by the m-per-class sampler; null = the size of the train split.
    samples_per_epoch: count(10**8) | None = None  # 10^8: 1,000x ImageNet-1k's train split
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
    chunk_size: count(MAX_BATCH) | None = None
    # torch.compile the model; auto = on CUDA only (ResNet-50 trained 1.44x and ViT-B/16 1.50x faster
    # compiled on an H200, issue 11), falling back to eager with a warning if compilation fails.
    compile: bool | Literal["auto"] = "auto"
    # One training per seed; the report gives mean, sd and paired 95% intervals over them.
    seeds: list[Seed] = Field(default_factory=lambda: [0], min_length=1)
    num_workers: count(MAX_WORKERS, lower=0) = 0
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


class RunConfig(StrictModel):
    dataset: str
    model: ModelConfig
    loss: LossConfig
    tcm: TCMConfig = TCMConfig()
    train: TrainConfig = TrainConfig()
