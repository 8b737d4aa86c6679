"""Base losses and the TCM regularizer: hand-worked oracles, brute-force loops and pytorch-metric-learning."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from pytorch_metric_learning.losses import SmoothAPLoss, ThresholdConsistentMarginLoss

from tcm.config import ConfigError, LossConfig, TCMConfig, parse_config
from tcm.losses import ThresholdConsistentMargin, build_criterion
from tcm.losses.recall_at_k import RecallAtKSurrogate
from tcm.losses.registry import BASE_LOSSES
from tcm.losses.smooth_ap import SmoothAP


def sig(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


# Four unit vectors in 2-D: a=(1,0), b=(.8,.6) of class 0; c=(.6,.8), d=(0,1) of class 1.
# Cosine similarities: ab=.8  ac=.6  ad=0  bc=.48+.48=.96  bd=.6  cd=.8
SQUARE = torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.6, 0.8], [0.0, 1.0]])
SQUARE_LABELS = torch.tensor([0, 0, 1, 1])


# ---------------------------------------------------------------- TCM


def test_tcm_hand_worked_oracle() -> None:
    # positives (ordered pairs ab, ba, cd, dc): all s = .8 <= m+ = .9 -> violations .1 each, mean .1
    # negatives >= m- = .5: ac=.6 -> .1, bc=.96 -> .46, bd=.6 -> .1 (ad=0 is no violation);
    #   each appears twice (both orders): mean (.1 + .46 + .1) / 3 = .22
    # L = 1 * .1 + 1 * .22 = .32
    assert ThresholdConsistentMargin()(SQUARE, SQUARE_LABELS).item() == pytest.approx(0.32, abs=1e-6)
    # weights: 2 * .1 + .5 * .22 = .31
    tcm = ThresholdConsistentMargin(pos_weight=2.0, neg_weight=0.5)
    assert tcm(SQUARE, SQUARE_LABELS).item() == pytest.approx(0.31, abs=1e-6)
    # m+ = .7: no positive (s = .8) violates it -> only the negative term .22 remains
    assert ThresholdConsistentMargin(pos_margin=0.7)(SQUARE, SQUARE_LABELS).item() == pytest.approx(0.22, abs=1e-6)


def test_tcm_is_zero_without_violations_and_scale_invariant() -> None:
    # two tight, orthogonal classes: positives s = 1 > .9, negatives s = 0 < .5
    emb = torch.tensor([[1.0, 0.0], [2.0, 0.0], [0.0, 1.0], [0.0, 3.0]], requires_grad=True)
    loss = ThresholdConsistentMargin()(emb, SQUARE_LABELS)
    assert loss.item() == 0.0
    loss.backward()  # a zero loss still has a (zero) gradient
    assert torch.count_nonzero(emb.grad) == 0
    assert ThresholdConsistentMargin()(SQUARE * 7, SQUARE_LABELS).item() == pytest.approx(0.32, abs=1e-6)


@pytest.mark.parametrize("seed", range(6))
def test_tcm_matches_pytorch_metric_learning_on_random_batches(seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    n, dim = int(torch.randint(8, 64, (1,), generator=g)), int(torch.randint(2, 16, (1,), generator=g))
    emb = torch.randn(n, dim, generator=g)
    labels = torch.randint(0, 5, (n,), generator=g)
    margins = [(0.9, 0.5, 1.0, 1.0), (0.3, -0.2, 0.7, 1.3), (0.95, 0.1, 1.0, 0.0)]
    mp, mn, wp, wn = margins[seed % 3]
    ours_in = emb.clone().requires_grad_(True)
    theirs_in = emb.clone().requires_grad_(True)
    ours = ThresholdConsistentMargin(mp, mn, wp, wn)(ours_in, labels)
    theirs = ThresholdConsistentMarginLoss(lambda_plus=wp, lambda_minus=wn, margin_plus=mp, margin_minus=mn)(
        theirs_in, labels)
    assert ours.item() == pytest.approx(float(theirs.detach()), abs=1e-5)
    if theirs.requires_grad:
        ours.backward()
        theirs.backward()
        torch.testing.assert_close(ours_in.grad, theirs_in.grad, atol=1e-5, rtol=1e-4)


def test_tcm_rejects_crossed_margins() -> None:
    with pytest.raises(ValueError, match="neg_margin"):
        ThresholdConsistentMargin(pos_margin=0.4, neg_margin=0.5)


# ---------------------------------------------------------------- RS@k

# Three points: x0=(1,0), x1=(.8,.6) of class 0; x2=(.6,-.8) of class 1.
# s01 = .8, s02 = .6, s12 = .48 - .48 = 0
TRIO = torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.6, -0.8]])
TRIO_LABELS = torch.tensor([0, 0, 1])


def test_rs_at_k_hand_worked_paper_formula() -> None:
    # tau1 = .1, k = 1 with tau2 = 1, the query left out of the ranks (the paper's formula).
    # q=0, p=1: rank = 1 + sig((s02 - s01)/.1) = 1 + sig(-2);  R@1 = sig((1 - rank)/1) / min(1, 1)
    # q=1, p=0: rank = 1 + sig((s12 - s10)/.1) = 1 + sig(-8);  R@1 = sig(1 - rank)
    # q=2 has no positive: not in the mean.  loss = 1 - (R@1(q0) + R@1(q1)) / 2
    r0, r1 = sig(-sig(-2.0)), sig(-sig(-8.0))
    loss = RecallAtKSurrogate(k_values=[1], k_temperatures=[1], temperature=0.1, include_query=False)
    assert loss(TRIO, TRIO_LABELS).item() == pytest.approx(1 - (r0 + r1) / 2, abs=1e-6)
    # k = 2 (tau2 = 2) is normalised by min(k, |P|) = 1: R@2 = sig((2 - rank)/2)
    r0k2, r1k2 = sig((1 - sig(-2.0)) / 2), sig((1 - sig(-8.0)) / 2)
    loss = RecallAtKSurrogate(k_values=[1, 2], k_temperatures=[1, 2], temperature=0.1, include_query=False)
    want = 1 - ((r0 + r0k2) / 2 + (r1 + r1k2) / 2) / 2
    assert loss(TRIO, TRIO_LABELS).item() == pytest.approx(want, abs=1e-6)


def test_rs_at_k_hand_worked_reference_code_counts_the_query() -> None:
    # include_query (reference code): the query's own similarity 1 joins each rank:
    # q=0: rank = 1 + sig(-2) + sig((1 - .8)/.1) = 1 + sig(-2) + sig(2) = 2 exactly  ->  R@1 = sig(-1)
    # q=1: rank = 1 + sig(-8) + sig(2)                                                ->  R@1 = sig(1 - rank)
    r0, r1 = sig(-1.0), sig(-(sig(-8.0) + sig(2.0)))
    loss = RecallAtKSurrogate(k_values=[1], k_temperatures=[1], temperature=0.1, include_query=True)
    assert loss(TRIO, TRIO_LABELS).item() == pytest.approx(1 - (r0 + r1) / 2, abs=1e-6)


def test_rs_at_k_k_is_capped_at_the_batch_size_and_recall_at_k() -> None:
    # One class of 3 on a line of similarities: every query has 2 positives. With k = 16 > N = 3 the
    # k becomes 3; with tau1 -> 0 the ranks are whole numbers 1 and 2, and with tau2 = .01 each
    # positive at rank <= 2 < 3 counts fully: found = 2 = min(k, |P|) -> R@k = 1 and loss = 0.
    emb = torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0]])
    loss = RecallAtKSurrogate(k_values=[16], k_temperatures=[0.01], temperature=1e-4, include_query=False)
    assert loss(emb, torch.zeros(3, dtype=torch.long)).item() == pytest.approx(0.0, abs=1e-6)


def brute_force_rs_at_k(emb, labels, ks, k_temps, tau, include_query):
    e = F.normalize(emb, dim=1)
    s = e @ e.T
    n, per_query = len(labels), []
    for q in range(n):
        pos = [j for j in range(n) if j != q and labels[j] == labels[q]]
        if not pos:
            continue
        recalls = []
        for k, tk in zip(ks, k_temps):
            k = min(k, n)
            found = 0.0
            for p in pos:
                others = [j for j in range(n) if j != p and (include_query or j != q)]
                rank = 1 + sum(torch.sigmoid((s[q, j] - s[q, p]) / tau) for j in others)
                found = found + torch.sigmoid((k - rank) / tk)
            recalls.append(torch.clamp(found, max=k) / min(k, len(pos)))
        per_query.append(torch.stack(recalls).mean())
    return 1 - torch.stack(per_query).mean()


@pytest.mark.parametrize("include_query", [True, False])
def test_rs_at_k_matches_a_brute_force_loop_on_unbalanced_batches(include_query: bool) -> None:
    g = torch.Generator().manual_seed(3)
    emb = torch.randn(14, 6, generator=g)
    labels = torch.tensor([0, 0, 0, 0, 0, 1, 1, 2, 2, 2, 3, 4, 4, 4])  # class 3 has one image: no positive
    ks, temps = [1, 2, 4, 8, 16], [1, 2, 4, 8, 16]
    a = emb.clone().requires_grad_(True)
    b = emb.clone().requires_grad_(True)
    ours = RecallAtKSurrogate(ks, temps, temperature=0.05, include_query=include_query)(a, labels)
    ref = brute_force_rs_at_k(b, labels, ks, temps, 0.05, include_query)
    assert ours.item() == pytest.approx(ref.item(), abs=1e-5)
    ours.backward()
    ref.backward()
    torch.testing.assert_close(a.grad, b.grad, atol=1e-5, rtol=1e-4)


def test_rs_at_k_does_not_depend_on_batch_order_and_handles_no_positives() -> None:
    g = torch.Generator().manual_seed(0)
    emb, labels = torch.randn(12, 4, generator=g), torch.arange(4).repeat(3)
    perm = torch.randperm(12, generator=g)
    loss = RecallAtKSurrogate()
    assert loss(emb, labels).item() == pytest.approx(loss(emb[perm], labels[perm]).item(), abs=1e-6)
    lonely = loss(emb[:4].requires_grad_(True), torch.arange(4))
    assert lonely.item() == 0.0


# ---------------------------------------------------------------- Smooth-AP


def test_smooth_ap_hand_worked() -> None:
    # tau = .1, query left out: q=0: AP = rank_pos / rank_all = 1 / (1 + sig((s02 - s01)/.1)) = 1 / (1 + sig(-2))
    #                           q=1: AP = 1 / (1 + sig((s12 - s10)/.1)) = 1 / (1 + sig(-8));  q=2: no positive
    want = 1 - (1 / (1 + sig(-2.0)) + 1 / (1 + sig(-8.0))) / 2
    assert SmoothAP(temperature=0.1, include_query=False)(TRIO, TRIO_LABELS).item() == pytest.approx(want, abs=1e-6)


@pytest.mark.parametrize("m", [3, 4])
def test_smooth_ap_matches_pytorch_metric_learning_where_that_is_correct(m: int) -> None:
    # pml's SmoothAPLoss is right when m equals the number of classes in the batch
    g = torch.Generator().manual_seed(m)
    emb = torch.randn(m * m, 8, generator=g)
    labels = torch.arange(m).repeat_interleave(m)
    a, b = emb.clone().requires_grad_(True), emb.clone().requires_grad_(True)
    ours, theirs = SmoothAP()(a, labels), SmoothAPLoss()(b, labels)
    assert ours.item() == pytest.approx(theirs.item(), abs=1e-5)
    ours.backward()
    theirs.backward()
    torch.testing.assert_close(a.grad, b.grad, atol=1e-5, rtol=1e-4)


def brute_force_smooth_ap(emb, labels, tau):
    # the reference code's convention: the query is its own positive and part of every ranking
    e = F.normalize(emb, dim=1)
    s = e @ e.T
    n, aps = len(labels), []
    for q in range(n):
        pos = [j for j in range(n) if labels[j] == labels[q]]
        if len(pos) < 2:
            continue
        ap = 0
        for p in pos:
            r_all = 1 + sum(torch.sigmoid((s[q, j] - s[q, p]) / tau) for j in range(n) if j != p)
            r_pos = 1 + sum(torch.sigmoid((s[q, j] - s[q, p]) / tau) for j in pos if j != p)
            ap = ap + r_pos / r_all
        aps.append(ap / len(pos))
    return 1 - torch.stack(aps).mean()


def test_smooth_ap_m_per_class_batches_where_pytorch_metric_learning_is_wrong() -> None:
    # 2 classes x 4 images (m != classes in batch): pml groups the batch into the wrong blocks.
    g = torch.Generator().manual_seed(0)
    emb, labels = torch.randn(8, 8, generator=g), torch.arange(2).repeat_interleave(4)
    ref = brute_force_smooth_ap(emb, labels, 0.01).item()
    assert SmoothAP()(emb, labels).item() == pytest.approx(ref, abs=1e-5)
    assert abs(SmoothAPLoss()(emb, labels).item() - ref) > 1e-2  # documents why smooth_ap is ours


# ---------------------------------------------------------------- registry and config


@pytest.mark.parametrize("name", sorted(BASE_LOSSES))
@pytest.mark.parametrize("tcm", [False, True])
def test_every_base_loss_builds_by_name_and_trains(name: str, tcm: bool) -> None:
    criterion = build_criterion(LossConfig(name=name), TCMConfig(enabled=tcm), num_classes=4, embedding_dim=8)
    g = torch.Generator().manual_seed(0)
    emb = F.normalize(torch.randn(16, 8, generator=g), dim=1).requires_grad_(True)
    parts = criterion(emb, torch.arange(4).repeat_interleave(4))
    assert set(parts) == {"loss", "base_loss", "tcm_loss"}
    assert torch.isfinite(parts["loss"])
    assert parts["loss"].item() == pytest.approx(parts["base_loss"].item() + parts["tcm_loss"].item(), rel=1e-6)
    assert (parts["tcm_loss"].item() > 0) == tcm  # random 8-d embeddings violate the margins
    parts["loss"].backward()
    assert torch.isfinite(emb.grad).all() and emb.grad.abs().sum() > 0
    assert (criterion.miner is not None) == (name == "multi_similarity")
    assert bool(criterion.parameters()) == (name == "proxy_anchor")


def _params_with_loss(loss: dict) -> dict:
    return {"datasets": {"d": {"source": "sklearn_digits", "train_classes": [0, 1]}},
            "run_defaults": {"model": {"backbone": "small_cnn"}}, "runs": {"r": {"dataset": "d", "loss": loss}}}


def test_rs_at_k_params_are_validated_against_its_constructor() -> None:
    cfg = parse_config(_params_with_loss({"name": "rs_at_k", "params": {"k_values": [1, 2], "k_temperatures": [1, 2],
                                                                        "temperature": 0.01}}))
    assert cfg.runs["r"].loss.params["k_values"] == [1, 2]
    with pytest.raises(ConfigError, match=r"runs\.r\.loss.*unknown params \['anneal'\].*k_values"):
        parse_config(_params_with_loss({"name": "rs_at_k", "params": {"anneal": 0.01}}))
    with pytest.raises(ConfigError, match="unknown params"):
        parse_config(_params_with_loss({"name": "smooth_ap", "params": {"num_id": 4}}))
