"""Backbones, the embedding head, pretrained-weight loading and frozen BatchNorm (random init, no download)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from tcm.config import ModelConfig
from tcm.models import GeM, WeightsError, build_model, structure_signature


@pytest.mark.slow
@pytest.mark.parametrize("backbone,size", [("small_cnn", 32), ("resnet50", 64), ("vit_b_16", 224)])
def test_backbones_give_512d_unit_embeddings(backbone: str, size: int) -> None:
    torch.manual_seed(0)
    model = build_model(ModelConfig(backbone=backbone, embedding_dim=512)).eval()
    with torch.no_grad():
        emb = model(torch.randn(2, 3, size, size))
    assert emb.shape == (2, 512) and emb.dtype == torch.float32
    torch.testing.assert_close(emb.norm(dim=1), torch.ones(2))


@pytest.mark.slow
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


def test_frozen_batchnorm_keeps_statistics_and_trains_affine_parameters() -> None:
    # As RS@k (src/netlib.py L116-118) and Smooth-AP (src/netlib.py L89-91): BatchNorm in eval mode
    # (running statistics frozen), its weight and bias (gamma, beta) still learn.
    torch.manual_seed(0)
    model = build_model(ModelConfig(backbone="small_cnn", embedding_dim=8, freeze_bn=True)).train()
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert bns and model.training and all(not m.training for m in bns)
    before = [(m.running_mean.clone(), m.running_var.clone(), m.num_batches_tracked.clone()) for m in bns]
    model(torch.randn(8, 3, 32, 32))  # a forward in train mode
    for m, (mean, var, count) in zip(bns, before):
        assert torch.equal(m.running_mean, mean) and torch.equal(m.running_var, var)
        assert torch.equal(m.num_batches_tracked, count)
    emb = model(torch.randn(8, 3, 32, 32))
    (emb @ torch.randn(8, 8)).pow(2).sum().backward()
    for m in bns:
        for name, p in m.named_parameters():
            assert p.requires_grad, name
            assert p.grad is not None and torch.count_nonzero(p.grad) > 0, name
    for m, (mean, var, _) in zip(bns, before):  # the backward pass changes no statistic either
        assert torch.equal(m.running_mean, mean) and torch.equal(m.running_var, var)
    assert model.head.weight.grad is not None
    # the optimizer (tcm.train.make_optimizer takes the parameters that require gradients) holds them
    from tcm.config import LossConfig, RunConfig, TrainConfig
    from tcm.train import make_optimizer

    run = RunConfig(dataset="d", model=ModelConfig(backbone="small_cnn", freeze_bn=True),
                    loss=LossConfig(name="rs_at_k"), train=TrainConfig())
    held = {id(p) for g in make_optimizer(run, model, []).param_groups for p in g["params"]}
    assert all(id(p) in held for m in bns for p in m.parameters())
    # eval() and train() again: still frozen statistics, trainable affine parameters
    model.eval().train()
    assert all(not m.training and m.weight.requires_grad for m in bns)
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


@pytest.mark.parametrize("content,words", [
    ("whole model", ["pickled Python object (tcm.models.EmbeddingNet)", "torch.save(model.state_dict(), path)"]),
    ("truncated", ["is not a readable torch file", "save it again"]),
    ("checkpoint", ["is a training checkpoint, not a backbone state_dict"]),
    ("list", ["holds a list that is not a state_dict"]),
])
def test_unusable_weights_file_names_the_file_and_the_fix(tmp_path, content, words) -> None:
    """A broken model.weights_path is named with its fix; torch's advice (weights_only=False, which
    would run the file's code) is never passed on."""
    model = build_model(ModelConfig(backbone="small_cnn", embedding_dim=8))
    path = tmp_path / "w.pt"
    if content == "truncated":
        torch.save(model.backbone.state_dict(), path)
        path.write_bytes(path.read_bytes()[:200])
    else:
        torch.save({"whole model": model, "checkpoint": {"model": model.state_dict(), "epoch": 3},
                    "list": [torch.zeros(1)]}[content], path)
    with pytest.raises(WeightsError) as info:
        build_model(ModelConfig(backbone="small_cnn", weights_path=path))
    msg = str(info.value)
    assert msg.startswith(f"model.weights_path: {path}") and "weights_only" not in msg, msg
    for w in words:
        assert w in msg, (w, msg)


def test_offline_download_error_says_how_to_get_the_weights(monkeypatch) -> None:
    from torchvision.models import ResNet50_Weights

    def offline(self, *a, **k):
        raise OSError("network is unreachable")

    monkeypatch.setattr(type(ResNet50_Weights.IMAGENET1K_V2), "get_state_dict", offline)
    with pytest.raises(WeightsError, match=r"could not download.*network is unreachable.*https://.*weights_path"):
        build_model(ModelConfig(backbone="resnet50", pretrained=True))
    with pytest.raises(WeightsError, match="no ImageNet weights"):
        build_model(ModelConfig(backbone="small_cnn", pretrained=True))


@pytest.mark.slow
def test_imagenet1k_v1_requests_torchvisions_first_resnet50_weights(monkeypatch, tmp_path) -> None:
    # The references' ResNet-50 (RS@k / Smooth-AP: pretrainedmodels' resnet50; ProxyAnchor: torchvision's
    # resnet50(pretrained=True)) is torchvision's IMAGENET1K_V1. No network: get_state_dict is replaced.
    from torchvision.models import ResNet50_Weights, resnet50

    torch.manual_seed(3)
    served = resnet50(weights=None).state_dict()  # what the download would return (fc included)
    asked = []

    def cached(self, *a, **k):
        asked.append(self)
        return served

    monkeypatch.setattr(type(ResNet50_Weights.IMAGENET1K_V1), "get_state_dict", cached)
    model = build_model(ModelConfig(backbone="resnet50", pretrained=True, weights="imagenet1k_v1"))
    assert asked == [ResNet50_Weights.IMAGENET1K_V1]
    for k, v in model.backbone.state_dict().items():
        assert torch.equal(v, served[k]), k
    asked.clear()
    build_model(ModelConfig(backbone="resnet50", pretrained=True))  # imagenet1k: torchvision's DEFAULT
    assert asked == [ResNet50_Weights.IMAGENET1K_V2] and ResNet50_Weights.DEFAULT == ResNet50_Weights.IMAGENET1K_V2

    v1_url = "https://download.pytorch.org/models/resnet50-0676ba61.pth"

    def offline(self, *a, **k):
        raise OSError("network is unreachable")

    monkeypatch.setattr(type(ResNet50_Weights.IMAGENET1K_V1), "get_state_dict", offline)
    with pytest.raises(WeightsError) as info:
        build_model(ModelConfig(backbone="resnet50", pretrained=True, weights="imagenet1k_v1"))
    msg = str(info.value)
    assert "ResNet50_Weights.IMAGENET1K_V1" in msg and v1_url in msg and "model.weights_path" in msg
    assert "IMAGENET1K_V2" not in msg and "network is unreachable" in msg
    missing = tmp_path / "resnet50-0676ba61.pth"
    with pytest.raises(WeightsError, match=rf"{missing} does not exist.*IMAGENET1K_V1 \({v1_url}\)"):
        build_model(ModelConfig(backbone="resnet50", weights="imagenet1k_v1", weights_path=missing))
    with pytest.raises(ValueError, match="imagenet1k_v1"):  # pydantic's ValidationError
        ModelConfig(backbone="small_cnn", weights="imagenet1k_v1")


def test_structure_signature_tracks_what_a_checkpoint_needs() -> None:
    a = structure_signature(build_model(ModelConfig(backbone="small_cnn", embedding_dim=8)))
    assert a == structure_signature(build_model(ModelConfig(backbone="small_cnn", embedding_dim=8)))
    assert a != structure_signature(build_model(ModelConfig(backbone="small_cnn", embedding_dim=16)))
    assert a != structure_signature(build_model(ModelConfig(backbone="small_cnn", embedding_dim=8,
                                                            head_layernorm=True)))


# ViT-B/16 with timm's ImageNet-21k weights (`weights: imagenet21k`). A real ViT-B/16 is built (random
# init, a few seconds on CPU); its weights come from a file written here, never from the network.
IN21K = dict(backbone="vit_b_16", weights="imagenet21k", embedding_dim=16)


@pytest.fixture(scope="module")
def in21k_file(tmp_path_factory) -> tuple[Path, dict[str, torch.Tensor]]:
    """What the hub serves: timm's state_dict of vit_base_patch16_224.augreg_in21k, 21k classifier
    included, as model.safetensors."""
    import timm
    from safetensors.torch import save_file

    from tcm.models import TIMM_IN21K_MODEL

    torch.manual_seed(1)
    state = timm.create_model(TIMM_IN21K_MODEL, pretrained=False).state_dict()
    assert state["head.weight"].shape == (21843, 768)
    path = tmp_path_factory.mktemp("hub") / "model.safetensors"
    save_file(state, path)
    return path, state


@pytest.mark.slow
def test_imagenet21k_is_timms_vit_base_with_the_cls_token_as_features() -> None:
    from timm.models.vision_transformer import VisionTransformer

    torch.manual_seed(0)
    model = build_model(ModelConfig(**IN21K)).eval()
    net = model.backbone
    assert isinstance(net, VisionTransformer) and isinstance(net.head, nn.Identity)
    assert (net.embed_dim, len(net.blocks), net.patch_embed.patch_size, net.global_pool) == (768, 12, (16, 16), "token")
    assert model.head.in_features == 768 and model.head.out_features == 16
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        emb = model(x)
        cls = net.forward_features(x)[:, 0]  # final LayerNorm'd CLS token, as RS@k's ViTB16.forward
        torch.testing.assert_close(net(x), cls)
    torch.testing.assert_close(emb.norm(dim=1), torch.ones(2))
    # another architecture than torchvision's vit_b_16 (conv_proj, encoder.layers ...): its own state keys
    assert "backbone.cls_token" in model.state_dict() and "backbone.conv_proj.weight" not in model.state_dict()
    # what tcm.checkpoint.load_trained does: the same config without weights rebuilds the same module
    again = build_model(ModelConfig(**IN21K))
    assert structure_signature(again) == structure_signature(model)
    again.load_state_dict(model.state_dict())


@pytest.mark.slow
def test_imagenet21k_weights_load_from_weights_path_and_from_the_hub(in21k_file, monkeypatch) -> None:
    import huggingface_hub

    path, state = in21k_file
    torch.manual_seed(2)  # a random init other than the file's
    loaded = build_model(ModelConfig(**IN21K, weights_path=path))
    got = loaded.backbone.state_dict()
    assert set(got) == {k for k in state if not k.startswith("head.")}  # the 21k classifier is dropped
    for k, v in got.items():
        assert torch.equal(v, state[k]), k

    asked = []

    def hub(repo_id: str, filename: str, **kwargs) -> str:  # the hub's cache, without the network
        asked.append((repo_id, filename))
        return str(path)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", hub)
    from_hub = build_model(ModelConfig(**IN21K, pretrained=True))
    assert asked == [("timm/vit_base_patch16_224.augreg_in21k", "model.safetensors")]
    assert all(torch.equal(v, state[k]) for k, v in from_hub.backbone.state_dict().items())


@pytest.mark.slow
def test_imagenet21k_offline_error_names_the_file_and_where_to_set_it(monkeypatch, tmp_path) -> None:
    import huggingface_hub

    def offline(*a, **k):
        raise OSError("We couldn't connect to 'https://huggingface.co'.\nCheck your connection.")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", offline)
    with pytest.raises(WeightsError) as info:
        build_model(ModelConfig(**IN21K, pretrained=True))
    msg = str(info.value)
    assert "\n" not in msg
    assert "timm/vit_base_patch16_224.augreg_in21k" in msg and "model.safetensors" in msg
    assert "https://huggingface.co/timm/vit_base_patch16_224.augreg_in21k/resolve/main/model.safetensors" in msg
    assert "model.weights_path" in msg and "couldn't connect" in msg
    missing = tmp_path / "in21k.safetensors"
    with pytest.raises(WeightsError, match=rf"{missing} does not exist.*timm/vit_base_patch16_224.augreg_in21k"):
        build_model(ModelConfig(**IN21K, weights_path=missing))
    # a torchvision-layout file is refused with the keys that differ
    wrong = tmp_path / "torchvision.pth"
    torch.save({"conv_proj.weight": torch.zeros(768, 3, 16, 16)}, wrong)
    with pytest.raises(WeightsError, match=r"do not match.*missing \['cls_token'"):
        build_model(ModelConfig(**IN21K, weights_path=wrong))
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"not a safetensors file")
    with pytest.raises(WeightsError, match=rf"{broken} is not a readable state_dict.*fetch https://huggingface.co/"):
        build_model(ModelConfig(**IN21K, weights_path=broken))


def test_imagenet21k_is_for_vit_b_16_only_and_imagenet1k_stays_torchvision() -> None:
    from torchvision.models.vision_transformer import VisionTransformer

    with pytest.raises(ValueError, match="vit_b_16 only"):  # pydantic's ValidationError
        ModelConfig(backbone="resnet50", weights="imagenet21k")
    assert isinstance(build_model(ModelConfig(backbone="vit_b_16")).backbone, VisionTransformer)


def test_every_backbone_name_of_the_config_has_a_constructor_and_no_other() -> None:
    """models registers one constructor against each name of config.BACKBONES (validated without
    importing torch), and a constructor under an undeclared name fails."""
    from tcm import config, models

    assert list(models.BACKBONES) == list(config.BACKBONES)
    with pytest.raises(config.RegistryError, match="'resnet18' is not declared"):
        config.Registry("backbone", config.BACKBONES).register("resnet18")
    half = config.Registry("backbone", config.BACKBONES)
    half.register("small_cnn")(models.BACKBONES["small_cnn"])
    with pytest.raises(config.RegistryError, match="without a constructor: \\['resnet50', 'vit_b_16', 'vit_tiny'\\]"):
        half.table()
