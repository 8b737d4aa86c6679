"""Backbones, the embedding head, pretrained-weight loading and frozen BatchNorm (random init, no download)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tcm.config import ModelConfig
from tcm.models import GeM, WeightsError, build_model, structure_signature


@pytest.mark.parametrize("backbone,size", [("small_cnn", 32), ("resnet50", 64), ("vit_b_16", 224)])
def test_backbones_give_512d_unit_embeddings(backbone: str, size: int) -> None:
    torch.manual_seed(0)
    model = build_model(ModelConfig(backbone=backbone, embedding_dim=512)).eval()
    with torch.no_grad():
        emb = model(torch.randn(2, 3, size, size))
    assert emb.shape == (2, 512) and emb.dtype == torch.float32
    torch.testing.assert_close(emb.norm(dim=1), torch.ones(2))


def test_gem_pooling_and_layernorm_neck() -> None:
    x = torch.rand(2, 3, 4, 4) + 0.1
    pooled = GeM(p=1.0)(x)  # p = 1 is average pooling
    torch.testing.assert_close(pooled, x.mean(dim=(-2, -1), keepdim=True))
    model = build_model(ModelConfig(backbone="resnet50", pooling="gem", head_layernorm=True, embedding_dim=16))
    assert isinstance(model.backbone.avgpool, GeM) and isinstance(model.neck, nn.LayerNorm)
    assert {id(p) for p in model.head_parameters()} == {id(p) for p in [*model.neck.parameters(),
                                                                         *model.head.parameters()]}
    with pytest.raises(ValueError, match="gem"):
        build_model(ModelConfig(backbone="vit_b_16", pooling="gem"))


def test_frozen_batchnorm_keeps_statistics_and_affine_parameters() -> None:
    torch.manual_seed(0)
    model = build_model(ModelConfig(backbone="small_cnn", embedding_dim=8, freeze_bn=True)).train()
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    before = [(m.running_mean.clone(), m.running_var.clone()) for m in bns]
    model(torch.randn(8, 3, 32, 32)).sum().backward()
    assert model.training and all(not m.training for m in bns)
    assert all(not p.requires_grad and p.grad is None for m in bns for p in m.parameters())
    for m, (mean, var) in zip(bns, before):
        assert torch.equal(m.running_mean, mean) and torch.equal(m.running_var, var)
    assert model.head.weight.grad is not None
    # without freeze_bn a train-mode forward updates the statistics
    free = build_model(ModelConfig(backbone="small_cnn", embedding_dim=8)).train()
    mean0 = next(m for m in free.modules() if isinstance(m, nn.BatchNorm2d)).running_mean.clone()
    free(torch.randn(8, 3, 32, 32))
    assert not torch.equal(next(m for m in free.modules() if isinstance(m, nn.BatchNorm2d)).running_mean, mean0)


def test_local_weights_file_is_loaded(tmp_path) -> None:
    torch.manual_seed(1)
    source = build_model(ModelConfig(backbone="small_cnn", embedding_dim=8))
    path = tmp_path / "backbone.pt"
    torch.save(source.backbone.state_dict(), path)
    torch.manual_seed(2)
    loaded = build_model(ModelConfig(backbone="small_cnn", embedding_dim=8, weights_path=path))
    for (k, a), b in zip(source.backbone.state_dict().items(), loaded.backbone.state_dict().values()):
        assert torch.equal(a, b), k


def test_missing_weights_file_names_the_path_and_the_source(tmp_path) -> None:
    missing = tmp_path / "resnet50.pth"
    with pytest.raises(WeightsError, match=rf"{missing}.*does not exist.*ResNet50_Weights.IMAGENET1K_V2"):
        build_model(ModelConfig(backbone="resnet50", weights_path=missing))


def test_mismatched_weights_file_is_a_clear_error(tmp_path) -> None:
    path = tmp_path / "w.pt"
    torch.save({"conv.weight": torch.zeros(1)}, path)
    with pytest.raises(WeightsError, match="do not match"):
        build_model(ModelConfig(backbone="small_cnn", weights_path=path))


def test_offline_download_error_says_how_to_get_the_weights(monkeypatch) -> None:
    from torchvision.models import ResNet50_Weights

    def offline(self, *a, **k):
        raise OSError("network is unreachable")

    monkeypatch.setattr(type(ResNet50_Weights.IMAGENET1K_V2), "get_state_dict", offline)
    with pytest.raises(WeightsError, match=r"could not download.*network is unreachable.*https://.*weights_path"):
        build_model(ModelConfig(backbone="resnet50", pretrained=True))
    with pytest.raises(WeightsError, match="no ImageNet weights"):
        build_model(ModelConfig(backbone="small_cnn", pretrained=True))


def test_structure_signature_tracks_what_a_checkpoint_needs() -> None:
    a = structure_signature(build_model(ModelConfig(backbone="small_cnn", embedding_dim=8)))
    assert a == structure_signature(build_model(ModelConfig(backbone="small_cnn", embedding_dim=8)))
    assert a != structure_signature(build_model(ModelConfig(backbone="small_cnn", embedding_dim=16)))
    assert a != structure_signature(build_model(ModelConfig(backbone="small_cnn", embedding_dim=8,
                                                            head_layernorm=True)))
