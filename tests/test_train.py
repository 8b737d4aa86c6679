"""The training step and loop: chunked recomputation, schedules, warm-up, divergence, resume checks."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from conftest import Interrupted, checkpoint_of, config_for, interrupt_after, write_params
from torch import nn

from tcm import train
from tcm.config import LossConfig, ModelConfig, TCMConfig, load_config
from tcm.losses import build_criterion
from tcm.models import build_model
from tcm.train import build as train_build
from tcm.train import preflight as train_preflight
from tcm.train import seed as train_seed
from tcm.train import stage as train_stage

# ---------------------------------------------------------------- helpers shared by test_train_*.py








# ---------------------------------------------------------------- chunked step == plain step


def _setup(loss: str, freeze_bn: bool, seed: int = 0, model: nn.Module | None = None):
    torch.manual_seed(seed)
    model = model or build_model(ModelConfig(backbone="small_cnn", embedding_dim=16, freeze_bn=freeze_bn))
    model.train()
    criterion = build_criterion(LossConfig(name=loss), TCMConfig(enabled=True), num_classes=4, embedding_dim=16)
    params = [{"params": [p for p in model.parameters() if p.requires_grad]}]
    if criterion.parameters():
        params.append({"params": criterion.parameters()})
    return model, criterion, torch.optim.SGD(params, lr=0.1)


def _batch(n: int = 24, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 32, 32, generator=g), torch.arange(n // 4).repeat_interleave(4) % 4


@pytest.mark.parametrize("loss", ["multi_similarity", "rs_at_k", "proxy_anchor"])
def test_chunked_step_gives_the_plain_step_gradients(loss: str) -> None:
    # BatchNorm in eval mode (freeze_bn): a sample's embedding does not depend on its chunk.
    x, y = _batch()
    m1, c1, o1 = _setup(loss, freeze_bn=True)
    m2, c2, o2 = copy.deepcopy(m1), copy.deepcopy(c1), None
    o2 = torch.optim.SGD([{"params": g["params"]} for g in _setup(loss, True, model=m2)[2].param_groups], lr=0.1)
    if c2.parameters():  # the optimizer must hold the copied criterion's proxies
        o2 = torch.optim.SGD([{"params": [p for p in m2.parameters() if p.requires_grad]},
                              {"params": c2.parameters()}], lr=0.1)
    plain = train.train_step(m1, c1, o1, x, y)
    chunked = train.train_step(m2, c2, o2, x, y, chunk_size=7)  # 7 + 7 + 7 + 3
    assert plain["loss"].item() == pytest.approx(chunked["loss"].item(), abs=1e-6)
    named = dict(m2.named_parameters())
    for name, p in m1.named_parameters():
        if p.grad is not None:
            torch.testing.assert_close(named[name].grad, p.grad, atol=1e-6, rtol=1e-4, msg=name)
            torch.testing.assert_close(named[name], p, atol=1e-6, rtol=1e-5, msg=name)
    for a, b in zip(c1.parameters(), c2.parameters()):
        torch.testing.assert_close(a.grad, b.grad, atol=1e-6, rtol=1e-4)


def test_chunked_step_updates_batchnorm_statistics_once_per_chunk() -> None:
    # BatchNorm in train mode: each chunk is normalised with its own statistics (as RS@k's
    # reference code does) and updates the running statistics once, not twice.
    x, y = _batch()
    model, criterion, opt = _setup("multi_similarity", freeze_bn=False)
    reference = copy.deepcopy(model)
    with torch.no_grad():
        for sl in (slice(0, 10), slice(10, 20), slice(20, 24)):
            reference(x[sl])
    train.train_step(model, criterion, opt, x, y, chunk_size=10)
    bn = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    ref_bn = [m for m in reference.modules() if isinstance(m, nn.BatchNorm2d)]
    for a, b in zip(bn, ref_bn):
        torch.testing.assert_close(a.running_mean, b.running_mean)
        torch.testing.assert_close(a.running_var, b.running_var)
        assert a.num_batches_tracked.item() == 3


class _DropoutNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 32), nn.ReLU(), nn.Dropout(0.5),
                                  nn.Linear(32, 16))

    def forward(self, x):
        return F.normalize(self.body(x), dim=-1)


def test_chunked_step_replays_dropout_masks() -> None:
    # The recomputation must see the dropout masks of the no-grad pass: compare with a step whose
    # forward runs the same chunks in order with autograd.
    x, y = _batch()
    m1, c1, o1 = _setup("multi_similarity", False, model=_DropoutNet())
    m2, c2 = copy.deepcopy(m1), copy.deepcopy(c1)
    o2 = torch.optim.SGD(m2.parameters(), lr=0.1)
    torch.manual_seed(5)
    emb = torch.cat([m1(x[i:i + 8]) for i in range(0, 24, 8)])
    c1(emb, y)["loss"].backward()
    torch.manual_seed(5)
    train.train_step(m2, c2, o2, x, y, chunk_size=8)
    for (name, a), b in zip(m1.named_parameters(), m2.parameters()):
        torch.testing.assert_close(b.grad, a.grad, atol=1e-6, rtol=1e-4, msg=name)


def test_warmup_freezes_the_backbone_and_clipping_bounds_gradients() -> None:
    x, y = _batch()
    model, criterion, opt = _setup("multi_similarity", freeze_bn=False)
    backbone = [p.detach().clone() for p in model.backbone.parameters()]
    head = model.head.weight.detach().clone()
    train.train_step(model, criterion, opt, x, y, frozen=list(model.backbone.parameters()), clip_grad_value=1e-3)
    assert all(torch.equal(a, b) for a, b in zip(backbone, model.backbone.parameters()))
    assert not torch.equal(head, model.head.weight)
    assert model.head.weight.grad.abs().max() <= 1e-3


def test_non_finite_loss_raises_before_any_change() -> None:
    x, y = _batch()
    model, criterion, opt = _setup("multi_similarity", freeze_bn=False)
    before = copy.deepcopy(model.state_dict())
    x[0] = float("nan")
    with pytest.raises(train.NonFiniteLoss):
        train.train_step(model, criterion, opt, x, y)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items()
               if "running" not in k and "num_batches" not in k)  # BN statistics may move: no parameter does


# ---------------------------------------------------------------- schedules and sampling


def test_step_schedule_matches_multistep_lr_per_epoch(tmp_path, digits_dir) -> None:
    cfg = config_for(tmp_path, digits_dir, epochs=5, schedule="step", lr_milestones=[2, 4], lr_gamma=0.3, lr=1.0)
    param = nn.Parameter(torch.zeros(1))
    ours = torch.optim.SGD([param], lr=1.0)
    sched = train.make_scheduler(cfg.run("r"), ours, steps_per_epoch=3)
    theirs = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    ref = torch.optim.lr_scheduler.MultiStepLR(theirs, milestones=[2, 4], gamma=0.3)
    # Epochs of different lengths (RS@k's sampler): the schedule follows epochs, not steps / 3.
    for epoch, steps in enumerate((3, 5, 2, 4, 1), start=1):
        train.set_epoch(sched, epoch)
        for _ in range(steps):
            assert ours.param_groups[0]["lr"] == pytest.approx(theirs.param_groups[0]["lr"]), epoch
            ours.step()
            sched.step()
        theirs.step()
        ref.step()


def test_loader_draws_m_per_class_batches_per_process(tmp_path, digits_dir) -> None:
    from tcm.data import ManifestDataset, read_manifest

    cfg = config_for(tmp_path, digits_dir, batch_size=40, m_per_class=4, samples_per_epoch=400)
    ds = ManifestDataset(read_manifest(digits_dir), "train")
    batches = {}
    for rank in (0, 1):
        loader = train.make_loader(ds, cfg.run("r"), "r", torch.device("cpu"), world_size=2)
        train.seed_everything(train.epoch_seed(0, 1, rank))
        idx = list(loader.sampler)
        assert len(loader) == 10 and loader.batch_size == 20  # 400 images / 2 processes / 20
        for b in range(0, len(idx), 20):
            _, counts = np.unique(ds.labels[idx[b:b + 20]], return_counts=True)
            assert set(counts) == {4}
        batches[rank] = idx
    assert batches[0] != batches[1]
    with pytest.raises(Exception, match="split into 3 processes"):
        train.make_loader(ds, cfg.run("r"), "r", torch.device("cpu"), world_size=3)


# ---------------------------------------------------------------- the loop


def poison_loss_at_call(monkeypatch, call: int) -> None:
    """Make the base loss NaN at its ``call``-th evaluation in training (counted over the whole run, after
    the one evaluation of train's check before it starts)."""
    real = train_build.build_criterion
    calls = {"n": 0}

    def poisoned(*a, **k):
        crit = real(*a, **k)
        base = crit.base

        class Poison(nn.Module):
            def forward(self, emb, labels, *rest):
                calls["n"] += 1
                out = base(emb, labels, *rest)
                return out * float("nan") if calls["n"] == call + 1 else out

        crit.base = Poison()
        return crit

    for module in (train_build, train_preflight):  # the seed's criterion, and the one the checks run
        monkeypatch.setattr(module, "build_criterion", poisoned)


@pytest.mark.slow
def test_nan_loss_stops_with_epoch_and_step_and_keeps_the_last_good_checkpoint(tmp_path, digits_dir,
                                                                                monkeypatch) -> None:
    cfg = config_for(tmp_path, digits_dir, epochs=3)
    poison_loss_at_call(monkeypatch, 2 + 2)  # epoch 2 has 2 steps: its 2nd
    with pytest.raises(train.TrainingDiverged, match=r"loss is nan at epoch 2, step 2.*epoch 1"):
        train.run(cfg, "r", progress=False)
    state = torch.load(tmp_path / "runs/r/train/seed-0/checkpoint.pt", weights_only=True)
    assert state["epoch"] == 1
    assert list(pd.read_csv(tmp_path / "runs/r/history.csv").epoch) == [1]








@pytest.mark.slow
def test_finished_run_is_trained_again_with_a_notice(tmp_path, digits_dir, capsys) -> None:
    cfg = config_for(tmp_path, digits_dir, epochs=2)
    first = train.run(cfg, "r", progress=False)
    assert list(first.history.columns) == ["seed", "epoch", "loss", "base_loss", "tcm_loss", "lr", "images_per_s",
                                           "seconds"]
    assert list(pd.read_csv(tmp_path / "runs/r/history.csv").epoch) == [1, 2]
    again = train.run(cfg, "r", progress=False)
    err = capsys.readouterr().err
    assert "holds a finished run; training r from scratch" in err and "resuming" not in err
    cols = ["seed", "epoch", "loss", "base_loss", "tcm_loss", "lr"]
    pd.testing.assert_frame_equal(first.history[cols], again.history[cols], check_exact=True)  # same machine


@pytest.mark.slow
def test_interrupted_run_resumes_bit_identically_and_keeps_finished_seeds(tmp_path, digits_dir, monkeypatch,
                                                                         capsys) -> None:
    whole_dir, cut_dir = tmp_path / "whole", tmp_path / "cut"
    for d in (whole_dir, cut_dir):
        d.mkdir()
    whole = train.run(config_for(whole_dir, digits_dir, epochs=2, seeds=[0, 1]), "r", progress=False)
    cfg = config_for(cut_dir, digits_dir, epochs=2, seeds=[0, 1])
    with monkeypatch.context() as m:
        interrupt_after(m, seed=1, epoch=1)
        with pytest.raises(Interrupted):
            train.run(cfg, "r", progress=False)
    seed0 = (cut_dir / "runs/r/train/seed-0/checkpoint.pt").read_bytes()
    capsys.readouterr()
    resumed = train.run(cfg, "r", progress=False)
    err = capsys.readouterr().err
    assert "resuming run r seed 1 after epoch 1 of 2" in err and "from scratch" not in err
    assert "seed 0" not in err  # finished in the interrupted attempt: kept, not retrained
    assert (cut_dir / "runs/r/train/seed-0/checkpoint.pt").read_bytes() == seed0
    for seed in (0, 1):
        a, b = checkpoint_of(whole_dir, seed), checkpoint_of(cut_dir, seed)
        assert a["epoch"] == b["epoch"] == 2
        for key in a["model"]:
            assert torch.equal(a["model"][key], b["model"][key]), (seed, key)
    cols = ["seed", "epoch", "loss", "base_loss", "tcm_loss", "lr"]
    pd.testing.assert_frame_equal(whole.history[cols], resumed.history[cols], check_exact=True)


@pytest.mark.slow
@pytest.mark.parametrize("change,notice", [
    ("code", "was written by other code (tcm source files changed)"),
    ("settings", "was written with other settings"),
])
def test_interrupted_run_of_other_code_or_settings_starts_afresh(tmp_path, digits_dir, monkeypatch, capsys,
                                                                 change, notice) -> None:
    cfg = config_for(tmp_path, digits_dir, epochs=2)
    with monkeypatch.context() as m:
        interrupt_after(m, seed=0, epoch=1)
        with pytest.raises(Interrupted):
            train.run(cfg, "r", progress=False)
    if change == "code":  # as if a loss, the model or the data code had been edited
        monkeypatch.setattr(train_stage, "code_fingerprint", lambda module: "edited")
    else:
        cfg = config_for(tmp_path, digits_dir, epochs=2, lr=0.002)
    capsys.readouterr()
    result = train.run(cfg, "r", progress=False)
    err = capsys.readouterr().err
    assert notice in err and "resuming" not in err
    assert list(result.history.epoch) == [1, 2]


@pytest.mark.slow
def test_checkpoint_of_another_model_structure_starts_afresh(tmp_path, digits_dir, monkeypatch, capsys) -> None:
    # Same params and fingerprinted code, another structure (a module patched from outside): start fresh.
    cfg = config_for(tmp_path, digits_dir, epochs=2)
    with monkeypatch.context() as m:
        interrupt_after(m, seed=0, epoch=1)
        with pytest.raises(Interrupted):
            train.run(cfg, "r", progress=False)
    real = train_build.build_model
    for module in (train_build, train_stage):  # the seed's model, and the one the checks run
        monkeypatch.setattr(module, "build_model", lambda m: real(m.model_copy(update={"embedding_dim": 32})))
    result = train.run(cfg, "r", progress=False)
    assert "was written for another model" in capsys.readouterr().err
    assert list(result.history.epoch) == [1, 2]
    assert checkpoint_of(tmp_path)["model"]["head.weight"].shape[0] == 32


@pytest.mark.slow
def test_checkpoint_that_does_not_load_starts_afresh(tmp_path, digits_dir, monkeypatch, capsys) -> None:
    cfg = config_for(tmp_path, digits_dir, epochs=2)
    path = tmp_path / "runs/r/train/seed-0/checkpoint.pt"
    for corrupt, notice in ((lambda s: s["model"].pop("head.bias"), "does not load into this model"),
                            (None, "not a readable checkpoint")):
        with monkeypatch.context() as m:
            interrupt_after(m, seed=0, epoch=1)
            with pytest.raises(Interrupted):
                train.run(cfg, "r", progress=False)
        if corrupt is None:
            path.write_bytes(b"not a checkpoint")
        else:
            state = torch.load(path, weights_only=True)
            corrupt(state)
            torch.save(state, path)
        capsys.readouterr()
        result = train.run(cfg, "r", progress=False)
        assert notice in capsys.readouterr().err
        assert list(result.history.epoch) == [1, 2]


@pytest.mark.slow
def test_chunked_large_batch_recipe_trains_end_to_end(tmp_path, digits_dir) -> None:
    cfg = config_for(tmp_path, digits_dir, epochs=1, batch_size=80, m_per_class=16, chunk_size=32,
                     schedule="step", lr_milestones=[1], warmup_epochs=1, clip_grad_value=10.0)
    params = yaml_load(tmp_path / "params.yaml")
    params["runs"]["r"]["loss"] = {"name": "rs_at_k"}
    cfg = load_config(write_params(tmp_path / "params.yaml", params))
    result = train.run(cfg, "r", progress=False)
    assert np.isfinite(result.history.loss).all()


def yaml_load(path: Path) -> dict:
    import yaml

    return yaml.safe_load(path.read_text())


def test_loss_meter_keeps_the_first_non_finite_step_on_the_device() -> None:
    meter = train.LossMeter(torch.device("cpu"))
    for step, loss in enumerate([2.0, 1.5, float("nan"), float("inf"), 1.0], start=1):
        meter.add(step, torch.tensor([loss, loss, 0.0]), 10)
    state = meter.read()
    assert state["bad_step"] == 3 and np.isnan(state["bad_value"]) and state["last"] == [1.0, 1.0, 0.0]
    clean = train.LossMeter(torch.device("cpu"))
    for step in (1, 2):
        clean.add(step, torch.tensor([3.0, 2.0, 1.0]), 5)
    assert clean.read()["bad_step"] == 0
    sums, first, changed = clean.totals()
    assert sums == [30.0, 20.0, 10.0] and first == 3.0 and not changed


def test_the_loop_reads_the_loss_on_the_host_every_sync_every_steps(tmp_path, digits_dir, monkeypatch) -> None:
    """No per-step host sync in our loop: 12 steps per epoch with SYNC_EVERY = 5 read at steps 5, 10
    and 12 (the epoch's end), and a NaN at step 7 is still reported as step 7."""
    cfg = config_for(tmp_path, digits_dir, epochs=1, batch_size=10, m_per_class=2, samples_per_epoch=120)
    monkeypatch.setattr(train_seed, "SYNC_EVERY", 5)
    reads = []
    real_read = train.LossMeter.read
    monkeypatch.setattr(train.LossMeter, "read", lambda self, w=1: reads.append(1) or real_read(self, w))
    train.run(cfg, "r", progress=False)
    assert len(reads) == 3

    poison_loss_at_call(monkeypatch, 7)
    reads.clear()
    (tmp_path / "b").mkdir()
    cfg = config_for(tmp_path / "b", digits_dir, epochs=1, batch_size=10, m_per_class=2, samples_per_epoch=120)
    with pytest.raises(train.TrainingDiverged, match=r"loss is nan at epoch 1, step 7;"):
        train.run(cfg, "r", progress=False)
    assert len(reads) == 2  # found at the read after step 10
