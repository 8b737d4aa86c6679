"""TCM's margins from a rule instead of by hand (``tcm.margins: train_quantiles``).

The paper's m+ = 0.9 and m- = 0.5 suit its ImageNet backbones' similarity scale; another backbone,
head or data set puts its pairs elsewhere, and fixed margins then act on no pair or on all of them.
The rule: before the first step, embed the *train* split with the initial model (pretrained
backbone, this seed's head) and take m+ = the ``pos_quantile`` of the positive-pair cosines and
m- = the ``neg_quantile`` of the negative-pair cosines. The test split is never looked at.
"""

from __future__ import annotations

import numpy as np

from tcm.config import ConfigError

MAX_IMAGES = 4096  # pairs grow with the square: larger train splits are subsampled (seeded) to this many images


def pair_cosines(embeddings: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Cosines of all positive and all negative ordered pairs (a != b) of L2-normalised ``embeddings``.

    >>> e = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    >>> pos, neg = pair_cosines(e, np.array([0, 0, 1]))
    >>> pos.tolist(), neg.tolist()
    ([1.0, 1.0], [0.0, 0.0, 0.0, 0.0])
    """
    emb = np.asarray(embeddings, dtype=np.float64)
    sims = emb @ emb.T
    same = labels[:, None] == labels[None, :]
    np.fill_diagonal(same, False)
    diff = labels[:, None] != labels[None, :]
    return sims[same], sims[diff]


def quantile_margins(embeddings: np.ndarray, labels: np.ndarray, pos_quantile: float, neg_quantile: float,
                     seed: int = 0, where: str = "tcm") -> tuple[float, float]:
    """(m+, m-) = quantiles of the positive and negative pair cosines of a train split's embeddings.

    >>> e = np.array([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0], [-0.6, 0.8]])
    >>> # positive cosines 0.6, 0.8 (each twice); negative -0.6, 0, 0.28, 0.8
    >>> [round(m, 2) for m in quantile_margins(e, np.array([0, 0, 1, 1]), 0.5, 0.5)]
    [0.7, 0.14]
    """
    labels = np.asarray(labels)
    if len(labels) > MAX_IMAGES:
        keep = np.sort(np.random.default_rng(seed).choice(len(labels), MAX_IMAGES, replace=False))
        embeddings, labels = np.asarray(embeddings)[keep], labels[keep]
    pos, neg = pair_cosines(embeddings, labels)
    if not len(pos) or not len(neg):
        raise ConfigError(f"{where}.margins: train_quantiles needs positive and negative train pairs, but the "
                          f"train split has {len(pos)} positive and {len(neg)} negative pairs")
    m_pos, m_neg = float(np.quantile(pos, pos_quantile)), float(np.quantile(neg, neg_quantile))
    if m_neg >= m_pos:
        raise ConfigError(f"{where}.margins: train_quantiles gave m- = {m_neg:.4f} (neg_quantile {neg_quantile}) >= "
                          f"m+ = {m_pos:.4f} (pos_quantile {pos_quantile}) on the train split: the initial model does "
                          "not separate positives from negatives that much; lower neg_quantile or raise pos_quantile")
    return m_pos, m_neg


def ramp(warmup_epochs: int, epoch: int) -> float:
    """TCM's weight factor in (1-based) ``epoch``: 0 in epoch 1, rising linearly to 1 in epoch
    ``warmup_epochs + 1``; always 1 without warm-up.

    >>> [ramp(2, e) for e in (1, 2, 3, 4)], ramp(0, 1)
    ([0.0, 0.5, 1.0, 1.0], 1.0)
    """
    return 1.0 if warmup_epochs <= 0 else min(1.0, (epoch - 1) / warmup_epochs)
