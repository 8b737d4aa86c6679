"""RS@k's epoch sampler (`train.sampler: rsk`): the reference rule counted by hand, the sampler's batches,
ranks, the loader, and a short training run that resumes."""

from __future__ import annotations

import itertools
import json
import os
import random
import subprocess
import sys
from collections import Counter

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import Interrupted, checkpoint_of, config_for, interrupt_after
from torch.utils.data import Dataset

from tcm import train
from tcm.config import ConfigError
from tcm.data import ManifestDataset, read_manifest
from tcm.samplers import RskSampler, rsk_epoch_steps

HAND = [9, 5, 4, 3, 12]  # class sizes; m = 4, 2 classes per batch (batch 8)


def labels_of(sizes: list[int]) -> np.ndarray:
    return np.repeat(np.arange(len(sizes)), sizes)


def reshuffle_transcribed(sizes: list[int], m: int, batch_size: int) -> list[list[int]]:
    """RS@k src/datasets.py L313-334 line by line (images = positions, shuffles left out): each batch's classes."""
    image_dict = {c: list(range(n)) for c, n in enumerate(sizes)}
    classes = [*image_dict]
    total_batches, batch, finished = [], [], 0
    while finished == 0:
        for sub_class in classes:
            if len(image_dict[sub_class]) >= m and len(batch) < batch_size / m:
                batch.append(sub_class)
                image_dict[sub_class] = image_dict[sub_class][m:]
        if len(batch) == batch_size / m:
            total_batches.append(batch)
            batch = []
        else:
            finished = 1
    return total_batches


# ---------------------------------------------------------------- the rule


def test_steps_counted_by_hand_depend_on_the_class_order() -> None:
    # Visiting 9, 5, 4, 3, 12: pass 1 takes 9 and 5 (5 and 1 left), pass 2 takes 9 and 4 (1 and 0
    # left), pass 3 finds only 12 with >= 4 images: 2 steps, and the 12-image class never trains.
    assert rsk_epoch_steps([9, 5, 4, 3, 12], 4, 2) == 2
    # Visiting 12, 9, 5, 4, 3: 12+9, 12+9, 12+5, then only 4 is left: 3 steps.
    assert rsk_epoch_steps([12, 9, 5, 4, 3], 4, 2) == 3
    assert Counter(rsk_epoch_steps(p, 4, 2) for p in itertools.permutations(HAND)) == {2: 20, 3: 100}


def test_steps_and_batches_equal_a_transcription_of_the_reference() -> None:
    from tcm.samplers import rsk_batches

    r = random.Random(0)
    for _ in range(500):
        sizes = [r.randint(0, 20) for _ in range(r.randint(1, 12))]
        m, k = r.randint(1, 5), r.randint(1, 6)
        ours = [sorted(b.tolist()) for b in rsk_batches(sizes, m, k)]
        assert ours == [sorted(b) for b in reshuffle_transcribed(sizes, m, k * m)], (sizes, m, k)


def test_cub_like_table_every_batch_holds_every_class() -> None:
    sizes = [60, 41, 59, 45, 60, 52]  # batch 24 = all 6 classes x 4: floor(41 / 4) steps, whatever the order
    assert {rsk_epoch_steps(p, 4, 6) for p in itertools.permutations(sizes)} == {10}
    sampler = RskSampler(labels_of(sizes), m=4, batch_size=24)
    assert sampler.steps == 10 and len(sampler) == 240
    for seed in (0, 1):
        torch.manual_seed(seed)
        idx = np.array(list(sampler))
        assert len(idx) == 240 and len(set(idx.tolist())) == 240
        for batch in idx.reshape(10, 24):
            assert Counter(labels_of(sizes)[batch].tolist()) == {c: 4 for c in range(6)}


# ---------------------------------------------------------------- the sampler


def test_sampler_draws_the_reference_epoch() -> None:
    labels = labels_of(HAND)
    sampler = RskSampler(labels, m=4, batch_size=8)
    assert sampler.small_classes == 1 and len(sampler) == sampler.steps * 8
    seen_steps = set()
    for seed in range(40):
        epoch = sampler.epoch(seed)
        sizes_in_order = [HAND[c] for c in epoch.class_order]
        assert len(epoch.batches) == rsk_epoch_steps(sizes_in_order, 4, 2)
        # the same batches (as class sets) as the reference code visiting the classes in this order
        expected = Counter(tuple(sorted(epoch.class_order[p] for p in b))
                           for b in reshuffle_transcribed(sizes_in_order, 4, 8))
        assert Counter(tuple(sorted(set(labels[b].tolist()))) for b in epoch.batches) == expected
        seen_steps.add(len(epoch.batches))

        torch.manual_seed(seed)
        idx = list(sampler)
        assert len(idx) % 8 == 0
        assert len(set(idx)) == len(idx)  # no image twice in an epoch
        for batch in np.array(idx).reshape(-1, 8):
            counts = Counter(labels[batch].tolist())
            assert len(counts) == 2 and set(counts.values()) == {4}  # distinct classes, m images each
            assert 3 not in counts  # the class of 3 images is never drawn
        seen_steps.add(len(idx) // 8)
    assert seen_steps == {2, 3}


def test_same_seed_same_epoch_other_seed_other_order() -> None:
    sampler = RskSampler(labels_of(HAND), m=4, batch_size=8)
    torch.manual_seed(5)
    a = list(sampler)
    torch.manual_seed(5)
    assert list(sampler) == a
    others = []
    for seed in range(6, 12):
        torch.manual_seed(seed)
        others.append(list(sampler))
    assert any(o != a for o in others)


def test_ranks_take_disjoint_whole_classes_of_one_global_batch() -> None:
    sizes = [60, 41, 59, 45, 60, 52, 20, 2]
    labels = labels_of(sizes)
    torch.manual_seed(3)
    whole = np.array(list(RskSampler(labels, m=4, batch_size=24))).reshape(-1, 24)
    parts = []
    for rank in (0, 1):
        torch.manual_seed(3)  # under DDP rank 0's seed is broadcast (tested under torchrun below)
        sampler = RskSampler(labels, m=4, batch_size=24, rank=rank, world_size=2)
        assert len(sampler) == sampler.steps * 12
        parts.append(np.array(list(sampler)).reshape(-1, 12))
        for batch in parts[-1]:
            assert set(Counter(labels[batch].tolist()).values()) == {4}  # 3 whole classes
    np.testing.assert_array_equal(np.concatenate(parts, axis=1), whole)


DDP_SCRIPT = """
import json, os, sys
import numpy as np, torch, torch.distributed as dist
from tcm.samplers import RskSampler
from tcm.train import epoch_seed, seed_everything
dist.init_process_group("gloo")
rank = dist.get_rank()
seed_everything(epoch_seed(0, 1, rank))  # as the training loop: every rank its own seed
labels = np.repeat(np.arange(8), [60, 41, 59, 45, 60, 52, 20, 2])
idx = list(RskSampler(labels, m=4, batch_size=24, rank=rank, world_size=2))
json.dump(idx, open(os.path.join(sys.argv[1], f"rank{rank}.json"), "w"))
dist.destroy_process_group()
"""


@pytest.mark.slow
def test_ddp_ranks_share_rank_zeros_epoch(tmp_path) -> None:
    script = tmp_path / "ranks.py"
    script.write_text(DDP_SCRIPT)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    proc = subprocess.run([*torchrun, str(script), str(tmp_path)], env={**os.environ, "OMP_NUM_THREADS": "1"},
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    parts = [np.array(json.loads((tmp_path / f"rank{r}.json").read_text())).reshape(-1, 12) for r in (0, 1)]
    train.seed_everything(train.epoch_seed(0, 1, 0))
    labels = np.repeat(np.arange(8), [60, 41, 59, 45, 60, 52, 20, 2])
    whole = np.array(list(RskSampler(labels, m=4, batch_size=24))).reshape(-1, 24)
    np.testing.assert_array_equal(np.concatenate(parts, axis=1), whole)


# ---------------------------------------------------------------- the loader and training


class Labels(Dataset):
    def __init__(self, labels: np.ndarray) -> None:
        self.labels = labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[int, int]:
        return i, int(self.labels[i])


def test_loader_notes_classes_never_drawn_and_refuses_an_empty_epoch(tmp_path, digits_dir, capsys) -> None:
    run = config_for(tmp_path, digits_dir, batch_size=8, m_per_class=4, sampler="rsk").run("r")
    loader = train.make_loader(Labels(labels_of(HAND)), run, "r", torch.device("cpu"))
    assert isinstance(loader.sampler, RskSampler) and loader.batch_size == 8
    err = capsys.readouterr().err
    assert err.count("tcm:") == 1 and "never drawn by sampler 'rsk'" in err and ": 1 " in err
    torch.manual_seed(0)
    assert all(len(set(y.tolist())) == 2 for _, y in loader)
    run = config_for(tmp_path, digits_dir, batch_size=12, m_per_class=4, sampler="rsk").run("r")
    with pytest.raises(ConfigError, match="needs 3 train classes with at least m_per_class=4 images"):
        train.make_loader(Labels(labels_of([9, 3, 3, 4])), run, "r", torch.device("cpu"))


@pytest.mark.slow
def test_rsk_training_runs_and_resumes_bit_identically(tmp_path, digits_dir, monkeypatch, capsys) -> None:
    # batch 200 = the 5 digits x 40: each epoch is floor(smallest class / 40) steps of 200 images.
    kw = dict(epochs=2, batch_size=200, m_per_class=40, sampler="rsk")
    sizes = np.unique(ManifestDataset(read_manifest(digits_dir), "train").labels, return_counts=True)[1]
    steps = int(sizes.min()) // 40
    whole_dir, cut_dir = tmp_path / "whole", tmp_path / "cut"
    for d in (whole_dir, cut_dir):
        d.mkdir()
    whole = train.run(config_for(whole_dir, digits_dir, **kw), "r", progress=False)
    assert list(whole.history.epoch) == [1, 2] and np.isfinite(whole.history.loss).all()
    assert (whole.history.images_per_s * whole.history.seconds).round().tolist() == [steps * 200] * 2
    cfg = config_for(cut_dir, digits_dir, **kw)
    with monkeypatch.context() as m:
        interrupt_after(m, seed=0, epoch=1)
        with pytest.raises(Interrupted):
            train.run(cfg, "r", progress=False)
    capsys.readouterr()
    resumed = train.run(cfg, "r", progress=False)
    assert "resuming run r seed 0 after epoch 1 of 2" in capsys.readouterr().err
    a, b = checkpoint_of(whole_dir), checkpoint_of(cut_dir)
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    cols = ["seed", "epoch", "loss", "base_loss", "tcm_loss", "lr"]
    pd.testing.assert_frame_equal(whole.history[cols], resumed.history[cols], check_exact=True)
    assert list(pd.read_csv(cut_dir / "runs/r/history.csv").epoch) == [1, 2]
