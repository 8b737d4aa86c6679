"""Backbones (torchvision; timm for ViT-B/16 ImageNet-21k) + a linear embedding head with L2 normalisation.

Each backbone's constructor registers under its name in ``tcm.config.registry.BACKBONES`` (timm style:
``@_backbones.register(name)``); :data:`BACKBONES` is the resulting plain dict from name to constructor,
and importing this module fails if a declared name has no constructor.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from tcm.config import BACKBONES as BACKBONE_NAMES
from tcm.config import ModelConfig, Registry
from tcm.errors import TcmError
from tcm.safe_load import UnreadableTorchFile, load_weights_only

_backbones: Registry[Callable[[], tuple[nn.Module, int]]] = Registry("backbone", BACKBONE_NAMES)


class WeightsError(TcmError, RuntimeError):
    """Pretrained weights could not be loaded; the message says from where and how to get them."""


@_backbones.register("small_cnn")
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


@_backbones.register("resnet50")
def _resnet50() -> tuple[nn.Module, int]:
    from torchvision.models import resnet50

    net = resnet50(weights=None)
    dim = net.fc.in_features
    net.fc = nn.Identity()
    return net, dim


@_backbones.register("vit_b_16")
def _vit_b_16() -> tuple[nn.Module, int]:
    from torchvision.models import vit_b_16

    net = vit_b_16(weights=None)
    dim = net.heads.head.in_features
    net.heads = nn.Identity()
    return net, dim


def _vit_b_16_in21k() -> tuple[nn.Module, int]:
    """timm's ViT-B/16 (weights: imagenet21k) without classifier: it returns the final-LayerNorm'd CLS
    token, as RS@k's ViTB16.forward does (its pre_logits is the identity for these weights)."""
    import timm

    net = timm.create_model(TIMM_IN21K_MODEL, pretrained=False, num_classes=0)
    return net, net.num_features


@_backbones.register("vit_tiny")
def _vit_tiny() -> tuple[nn.Module, int]:
    """A 2-layer ViT on 32 px images: stands in for ViT-B/16 where the `smoke` profile runs the
    paper's matrix on CPU in minutes (same torchvision class, so the same code path)."""
    from torchvision.models.vision_transformer import VisionTransformer

    net = VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64)
    net.heads = nn.Identity()
    return net, 32


BACKBONES = _backbones.table()  # name -> constructor returning (module, feature dimension)
# torchvision's ImageNet weights per (backbone, model.weights), downloaded into the torch hub cache when
# online. `imagenet1k` is torchvision's DEFAULT; `imagenet1k_v1` its first release, which for ResNet-50 is
# what the reference recipes start from: RS@k and Smooth-AP load pretrainedmodels' resnet50 (0.7.4:
# torchvision's resnet50-19c8e357.pth, the V1 weights re-serialised as resnet50-0676ba61.pth), ProxyAnchor
# torchvision's resnet50(pretrained=True), also V1 (docs/recipes.md, "Pretrained weights").
TORCHVISION_WEIGHTS = {
    ("resnet50", "imagenet1k"): "ResNet50_Weights.IMAGENET1K_V2",
    ("resnet50", "imagenet1k_v1"): "ResNet50_Weights.IMAGENET1K_V1",
    ("vit_b_16", "imagenet1k"): "ViT_B_16_Weights.IMAGENET1K_V1",
    ("vit_b_16", "imagenet1k_v1"): "ViT_B_16_Weights.IMAGENET1K_V1",
}

# `weights: imagenet21k` (vit_b_16 only): the timm model RS@k starts its ViT-B/16 from. RS@k's netlib.py
# (yash0307/RecallatK_surrogate, src/netlib.py L59) calls timm.create_model('vit_base_patch16_224_in21k',
# pretrained=True) with timm==0.4.12 (its requirements.txt L97). In timm 0.4.12 that name loads Google's
# AugReg ImageNet-21k checkpoint B_16-i21k-300ep-lr_0.001-aug_medium1-wd_0.1-do_0.0-sd_0.0.npz
# (timm v0.4.12 timm/models/vision_transformer.py L118-120; no pre-logits layer, L720-729), not the original
# ViT paper's in21k weights (jx_vit_base_patch16_224_in21k-e5005f0a.pth, up to timm 0.4.9; timm commit
# b319eb5b switched the name to AugReg in June 2021). timm 1.0 serves the same checkpoint (same URL in its
# pretrained config) as `vit_base_patch16_224.augreg_in21k`, and its deprecation table maps the old name to
# it; `.orig_in21k` is the original-paper checkpoint. See docs/recipes.md, "Pretrained weights".
TIMM_IN21K_MODEL = "vit_base_patch16_224.augreg_in21k"
TIMM_IN21K_HUB = ("timm/vit_base_patch16_224.augreg_in21k", "model.safetensors")  # Hugging Face repo id, file


def _torchvision_weights(key: tuple[str, str]):
    """torchvision's weights enum member for (backbone, model.weights), a key of TORCHVISION_WEIGHTS."""
    import torchvision.models as tvm

    enum_name, member = TORCHVISION_WEIGHTS[key].split(".")
    return getattr(getattr(tvm, enum_name), member)


def _load_pretrained(name: str, backbone: nn.Module, cfg: ModelConfig) -> None:
    key = (name, cfg.weights)
    if cfg.weights_path is not None:
        path = Path(cfg.weights_path)
        if not path.is_file():
            source = (f"{TORCHVISION_WEIGHTS[key]} ({_torchvision_weights(key).url})" if key in TORCHVISION_WEIGHTS
                      else "the weights")
            raise WeightsError(f"model.weights_path: {path} does not exist; download {source} from torchvision "
                               "and save its state_dict there")
        state = read_state_dict(path, f"model.weights_path: {path}")
    else:
        if key not in TORCHVISION_WEIGHTS:
            raise WeightsError(f"model.pretrained: no ImageNet weights exist for backbone {name!r}; "
                               "set pretrained: false")
        weights = _torchvision_weights(key)
        try:
            state = weights.get_state_dict(progress=True)
        except Exception as e:  # offline, proxy, corrupted cache ...
            raise WeightsError(
                f"model.pretrained: could not download {TORCHVISION_WEIGHTS[key]} ({_one_line(e)}); "
                f"fetch {weights.url} on a machine with internet and set model.weights_path to the file") from None
    # The classifier head is replaced by the embedding head, so its weights are dropped.
    state = {k: v for k, v in state.items() if not k.startswith(("fc.", "heads."))}
    missing, unexpected = backbone.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise WeightsError(f"weights for {name} do not match the backbone: missing {missing[:5]}, "
                           f"unexpected {unexpected[:5]}")


def read_state_dict(path: Path, where: str) -> dict[str, torch.Tensor]:
    """A backbone's state_dict saved with ``torch.save``; :class:`WeightsError` names ``where`` and the
    fix. Read by :func:`tcm.safe_load.load_weights_only`: a file holding a pickled class or function is
    refused, never run, and the message says how to save a state_dict instead."""
    try:
        state = load_weights_only(path)
    except UnreadableTorchFile as e:
        if e.cause is not None:  # truncated, or not a torch file at all
            raise WeightsError(f"{where} is not a readable torch file ({_one_line(e.cause)}); save it again") from None
        what = f"a pickled Python object ({e.pickled})" if e.pickled else "no readable torch data"
        raise WeightsError(f"{where} holds {what}, not a state_dict; save one with "
                           "torch.save(model.state_dict(), path) (tcm never unpickles code)") from None
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        raise WeightsError(f"{where} is a training checkpoint, not a backbone state_dict; point it at a backbone "
                           "(e.g. pretrained/<dataset>/backbone.pt)")
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(f"{where} holds a {type(state).__name__} that is not a state_dict (names -> tensors); "
                           "save one with torch.save(model.state_dict(), path)")
    return state


def _one_line(e: BaseException) -> str:
    return " ".join(f"{type(e).__name__}: {e}".split())[:300]


def _load_in21k(backbone: nn.Module, cfg: ModelConfig) -> None:
    """timm's ImageNet-21k ViT-B/16 weights from model.weights_path (a timm state_dict: .safetensors or a
    torch file), else from the Hugging Face hub (its cache when offline)."""
    from timm.models import load_state_dict
    from timm.models.vision_transformer import checkpoint_filter_fn

    repo, filename = TIMM_IN21K_HUB
    url = f"https://huggingface.co/{repo}/resolve/main/{filename}"
    if cfg.weights_path is not None:
        path = Path(cfg.weights_path)
        if not path.is_file():
            raise WeightsError(f"model.weights_path: {path} does not exist; download {filename} of the Hugging "
                               f"Face repo {repo} ({url}) and save it there")
    else:
        import huggingface_hub

        try:
            path = Path(huggingface_hub.hf_hub_download(repo_id=repo, filename=filename))
        except Exception as e:  # offline and not cached, proxy, hub down ...
            raise WeightsError(f"model.pretrained: could not download {filename} of the Hugging Face repo {repo} "
                               f"({_one_line(e)}); fetch {url} on a machine with internet and set "
                               "model.weights_path to the file") from None
    try:
        state = load_state_dict(str(path), weights_only=True)
    except Exception as e:
        where = "model.weights_path: " if cfg.weights_path is not None else "Hugging Face cache: "
        raise WeightsError(f"{where}{path} is not a readable state_dict ({_one_line(e)}); fetch {url} again") from None
    # timm's own conversion of older ViT checkpoints (drops pre_logits, resamples position embeddings);
    # the 21k classifier is replaced by the embedding head.
    state = {k: v for k, v in checkpoint_filter_fn(state, backbone).items() if not k.startswith("head.")}
    missing, unexpected = backbone.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise WeightsError(f"weights for vit_b_16 (imagenet21k, timm {TIMM_IN21K_MODEL}) do not match the "
                           f"backbone: missing {missing[:5]}, unexpected {unexpected[:5]}")


class EmbeddingNet(nn.Module):
    """backbone -> linear -> L2-normalised embedding."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        # `weights` picks the architecture too (timm's ViT for imagenet21k), also without loading any, so
        # that a checkpoint rebuilds the same module (tcm.checkpoint.load_trained).
        in21k = cfg.weights == "imagenet21k"  # config.py allows it for vit_b_16 only
        self.backbone, dim = _vit_b_16_in21k() if in21k else BACKBONES[cfg.backbone]()
        if cfg.pretrained or cfg.weights_path is not None:
            if in21k:
                _load_in21k(self.backbone, cfg)
            else:
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
            # Frozen BatchNorm statistics: each BatchNorm normalises with its loaded running mean and
            # variance and never updates them (eval mode), while its affine weight and bias (gamma,
            # beta) keep training, as RS@k (src/netlib.py L116-118) and Smooth-AP (src/netlib.py
            # L89-91) put BatchNorm in eval mode only. ProxyAnchor's --bn-freeze also sets their
            # requires_grad to False (code/net/resnet.py L150-155), but its train.py L280-285 turns it
            # back on for every non-embedding parameter at epoch --warm (>= 1 in all its published
            # commands) and its optimizer holds them (L236-240), so there too they train after the
            # warm-up, which train.warmup_epochs reproduces.
            for m in self.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
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
