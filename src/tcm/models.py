"""Backbones (torchvision) + a linear embedding head with L2 normalisation.

A plain dict from name to constructor (timm style) instead of a framework.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from tcm.config import ModelConfig
from tcm.errors import TcmError


class WeightsError(TcmError, RuntimeError):
    """Pretrained weights could not be loaded; the message says from where and how to get them."""


def _small_cnn() -> tuple[nn.Module, int]:
    """A 4-block CNN for the embedded digits default: trains in seconds on a CPU."""

    def block(cin: int, cout: int) -> nn.Sequential:
        return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout),
                             nn.ReLU(inplace=True))

    net = nn.Sequential(block(3, 16), nn.MaxPool2d(2), block(16, 32), nn.MaxPool2d(2), block(32, 64),
                        nn.MaxPool2d(2), block(64, 64), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    return net, 64


class GeM(nn.Module):
    """Generalized-mean pooling with a learnable exponent p (p=1: average, p->inf: max)."""

    def __init__(self, p: float = 3.0, eps: float = 1e-6) -> None:
        super().__init__()
        self.p = nn.Parameter(torch.ones(1) * p)
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.clamp(min=self.eps).pow(self.p).mean(dim=(-2, -1), keepdim=True).pow(1.0 / self.p)


def _resnet50() -> tuple[nn.Module, int]:
    from torchvision.models import resnet50

    net = resnet50(weights=None)
    dim = net.fc.in_features
    net.fc = nn.Identity()
    return net, dim


def _vit_b_16() -> tuple[nn.Module, int]:
    from torchvision.models import vit_b_16

    net = vit_b_16(weights=None)
    dim = net.heads.head.in_features
    net.heads = nn.Identity()
    return net, dim


def _vit_tiny() -> tuple[nn.Module, int]:
    """A 2-layer ViT on 32 px images: stands in for ViT-B/16 where the `smoke` profile runs the
    paper's matrix on CPU in minutes (same torchvision class, so the same code path)."""
    from torchvision.models.vision_transformer import VisionTransformer

    net = VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64)
    net.heads = nn.Identity()
    return net, 32


BACKBONES: dict[str, Callable[[], tuple[nn.Module, int]]] = {
    "small_cnn": _small_cnn,
    "resnet50": _resnet50,
    "vit_b_16": _vit_b_16,
    "vit_tiny": _vit_tiny,
}
# torchvision's ImageNet weights for each backbone (downloaded into the torch hub cache when online).
TORCHVISION_WEIGHTS = {"resnet50": "ResNet50_Weights.IMAGENET1K_V2", "vit_b_16": "ViT_B_16_Weights.IMAGENET1K_V1"}


def _load_pretrained(name: str, backbone: nn.Module, cfg: ModelConfig) -> None:
    if cfg.weights_path is not None:
        path = Path(cfg.weights_path)
        if not path.is_file():
            raise WeightsError(f"model.weights_path: {path} does not exist; download "
                               f"{TORCHVISION_WEIGHTS.get(name, 'the weights')} from torchvision and save its "
                               "state_dict there")
        state = torch.load(path, map_location="cpu", weights_only=True)
    else:
        if name not in TORCHVISION_WEIGHTS:
            raise WeightsError(f"model.pretrained: no ImageNet weights exist for backbone {name!r}; "
                               "set pretrained: false")
        import torchvision.models as tvm

        enum_name, member = TORCHVISION_WEIGHTS[name].split(".")
        weights = getattr(getattr(tvm, enum_name), member)
        try:
            state = weights.get_state_dict(progress=True)
        except Exception as e:  # offline, proxy, corrupted cache ...
            raise WeightsError(
                f"model.pretrained: could not download {TORCHVISION_WEIGHTS[name]} ({type(e).__name__}: {e}); "
                f"fetch {weights.url} on a machine with internet and set model.weights_path to the file") from None
    # The classifier head is replaced by the embedding head, so its weights are dropped.
    state = {k: v for k, v in state.items() if not k.startswith(("fc.", "heads."))}
    missing, unexpected = backbone.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise WeightsError(f"weights for {name} do not match the backbone: missing {missing[:5]}, "
                           f"unexpected {unexpected[:5]}")


class EmbeddingNet(nn.Module):
    """backbone -> linear -> L2-normalised embedding."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.backbone, dim = BACKBONES[cfg.backbone]()
        if cfg.pretrained or cfg.weights_path is not None:
            _load_pretrained(cfg.backbone, self.backbone, cfg)
        if cfg.pooling == "gem":
            if not hasattr(self.backbone, "avgpool"):
                raise ValueError(f"model.pooling: 'gem' needs a CNN backbone with global pooling (resnet50), "
                                 f"not {cfg.backbone!r}")
            self.backbone.avgpool = GeM()
        self.neck = nn.LayerNorm(dim) if cfg.head_layernorm else nn.Identity()
        self.head = nn.Linear(dim, cfg.embedding_dim)
        self.freeze_bn = cfg.freeze_bn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.head(self.neck(self.backbone(x))).float(), dim=-1)

    def head_parameters(self) -> list[nn.Parameter]:
        """Parameters that train during the warm-up epochs: the layers after the backbone."""
        return [*self.neck.parameters(), *self.head.parameters()]

    def train(self, mode: bool = True) -> EmbeddingNet:
        super().train(mode)
        if mode and self.freeze_bn:
            # Frozen BatchNorm: running statistics and affine parameters stay as loaded.
            for m in self.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
                    for p in m.parameters():
                        p.requires_grad_(False)
        return self


def build_model(cfg: ModelConfig) -> EmbeddingNet:
    return EmbeddingNet(cfg)


def structure_signature(*modules: nn.Module) -> str:
    """A digest of the names, shapes and dtypes of the modules' states: changes whenever a saved
    state_dict would no longer load (another architecture, head size, pooling ...)."""
    import hashlib

    h = hashlib.sha256()
    for i, m in enumerate(modules):
        for k, v in m.state_dict().items():
            h.update(f"{i}:{k}:{tuple(v.shape)}:{v.dtype};".encode())
    return h.hexdigest()[:16]
