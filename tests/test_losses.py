"""Base losses and the TCM regularizer: hand-worked oracles, brute-force loops and pytorch-metric-learning."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from pytorch_metric_learning.losses import SmoothAPLoss, ThresholdConsistentMarginLoss

from tcm.config import ConfigError, LossConfig, TCMConfig, parse_config
from tcm.losses import ThresholdConsistentMargin, build_criterion
from tcm.losses.recall_at_k import RecallAtKSurrogate, simix
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


# ---------------------------------------------------------------- SiMix (RS@k's similarity mixup)


def test_simix_mixes_every_same_class_pair_hand_worked() -> None:
    # Classes interleaved (0, 1, 0, 1, 0): class 0 = x0, x2, x4; class 1 = x1, x3.
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8], [-1.0, 0.0], [0.0, -1.0]])
    labels = torch.tensor([0, 1, 0, 1, 0])
    # same-class pairs (a < b) in row order: (0, 2), (0, 4), (1, 3), (2, 4), one alpha each
    alphas = torch.tensor([0.25, 0.5, 0.75, 1.0])
    emb, lab = simix(x, labels, alphas)
    want = torch.tensor([
        [0.25 * 1.0 + 0.75 * 0.6, 0.25 * 0.0 + 0.75 * 0.8],    # .25 x0 + .75 x2 = (.7, .6)
        [0.5 * 1.0 + 0.5 * 0.0, 0.5 * 0.0 + 0.5 * -1.0],        # .5 x0 + .5 x4  = (.5, -.5)
        [0.75 * 0.0 + 0.25 * -1.0, 0.75 * 1.0 + 0.25 * 0.0],    # .75 x1 + .25 x3 = (-.25, .75)
        [0.6, 0.8],                                             # 1 x2 + 0 x4 = x2
    ])
    torch.testing.assert_close(emb[:5], x)  # the batch itself comes first, unchanged
    torch.testing.assert_close(emb[5:], want)
    assert lab.tolist() == [0, 1, 0, 1, 0, 0, 0, 1, 0]
    # not re-normalised: |(.5, -.5)| = .707, so s(q, mix) = alpha s(q, a) + (1 - alpha) s(q, b)
    assert emb[6].norm().item() == pytest.approx(0.5 ** 0.5)
    # m images of a class give m (m - 1) / 2 mixes (RS@k: 3, 6, 15 for m = 3, 4, 6); a single image none
    for m, pairs in ((3, 3), (4, 6), (6, 15)):
        e, lab = simix(torch.randn(2 * m + 1, 4), torch.tensor([0] * m + [1] * m + [2]))
        assert len(e) == 2 * m + 1 + 2 * pairs and lab[2 * m + 1:].bincount().tolist() == [pairs, pairs]
    with pytest.raises(ValueError, match="expected 4 alphas"):
        simix(x, labels, torch.tensor([0.5]))


def _reference_sigmoid(tensor, temp=1.0):  # RS@k src/losses.py L15-19
    exponent = torch.clamp(-tensor / temp, min=-50, max=50)
    return 1.0 / (1.0 + torch.exp(exponent))


def _reference_recall_at_k(preds, q_id, num_id, bs, k_vals, k_temperatures, anneal):
    """RS@k src/losses.py RecallatK (44b7011, L21-69) for query q_id, transcribed for the CPU."""
    k_vals = [min(bs, k) for k in k_vals]  # L29: capped at the un-mixed batch size (opt.bs)
    batch_size = preds.shape[0]
    samples_per_class = int(batch_size / num_id)
    norm_vals = torch.tensor([min(k, samples_per_class - 1) for k in k_vals], dtype=preds.dtype)
    group_num = int(q_id / samples_per_class)
    sim_all = (preds[q_id] * preds).sum(1)
    sim_all_g = sim_all.view(num_id, int(batch_size / num_id))
    sim_diff_all = sim_all.unsqueeze(-1) - sim_all_g[group_num, :].unsqueeze(0).repeat(batch_size, 1)
    sim_sg = _reference_sigmoid(sim_diff_all, temp=anneal)
    for i in range(samples_per_class):
        sim_sg[group_num * samples_per_class + i, i] = 0.
    sim_all_rk = (1.0 + torch.sum(sim_sg, dim=0)).unsqueeze(dim=0)
    sim_all_rk[:, q_id % samples_per_class] = 0.
    sim_all_rk = sim_all_rk.unsqueeze(dim=-1).repeat(1, 1, len(k_vals))
    kv = torch.tensor(k_vals, dtype=preds.dtype).unsqueeze(dim=0).unsqueeze(dim=0).repeat(1, samples_per_class, 1)
    sim_all_rk = kv - sim_all_rk
    for given_k in range(0, len(k_vals)):
        sim_all_rk[:, :, given_k] = _reference_sigmoid(sim_all_rk[:, :, given_k], temp=float(k_temperatures[given_k]))
    sim_all_rk[:, q_id % samples_per_class, :] = 0.
    recall = torch.minimum(torch.sum(sim_all_rk, dim=1), torch.tensor(k_vals, dtype=preds.dtype).unsqueeze(dim=0))
    recall = torch.sum(torch.div(torch.sum(recall, dim=0), norm_vals)) / len(k_vals)
    return (1. - recall) / batch_size


# RS@k src/mixup.py pos_mixup, num_pos == 4 (L79-107): fake = alpha * t[i + a] + (1 - alpha) * t[i + b]
# for these (a, b), in this order, one np.random.rand() each; each class's 6 fakes follow its 4 images
# (L125-131).
_REFERENCE_PAIRS_M4 = [(0, 1), (1, 2), (2, 3), (0, 3), (0, 2), (1, 3)]


def _reference_pos_mixup(tensor, alphas):
    out, it = [], iter(alphas)
    for i in range(0, tensor.shape[0], 4):
        fakes = []
        for a, b in _REFERENCE_PAIRS_M4:
            alpha = next(it)
            fakes.append(alpha * tensor[i + a, :] + (1. - alpha) * tensor[i + b, :])
        out += [tensor[i:i + 4], torch.stack(fakes)]
    return torch.cat(out)


@pytest.mark.parametrize("tau", [0.01, 0.1])
def test_rs_at_k_simix_matches_the_reference_code(tau: float) -> None:
    # RS@k's training step with --mixup 1 (src/main.py L234-247): pos_mixup on the unit embeddings, then
    # the loss summed over every query of the mixed batch; gradients flow back through the mixes.
    g = torch.Generator().manual_seed(7)
    classes, m = 5, 4
    x = F.normalize(torch.randn(classes * m, 16, generator=g), dim=1)
    labels = torch.arange(classes).repeat_interleave(m)  # RS@k's batches: each class's m images in a row
    ks, temps = [1, 2, 4, 8, 16], [1, 2, 4, 8, 16]
    ours_in, ref_in = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    torch.manual_seed(11)
    ours = RecallAtKSurrogate(ks, temps, temperature=tau, include_query=True, simix=True)(ours_in, labels)
    torch.manual_seed(11)
    drawn = torch.rand(classes * 6)  # the forward's draw: one alpha per pair, pairs in row order
    ours_order = [(a, b) for a in range(m) for b in range(a + 1, m)]  # (0,1) (0,2) (0,3) (1,2) (1,3) (2,3)
    alphas = [float(drawn[c * 6 + ours_order.index(pair)]) for c in range(classes) for pair in _REFERENCE_PAIRS_M4]
    # RS@k's network ends with normalize (netlib.py L133), through which its gradients flow as through ours
    mixed = _reference_pos_mixup(F.normalize(ref_in, dim=-1), alphas)
    assert mixed.shape == (classes * (m + 6), 16)
    ref = sum(_reference_recall_at_k(mixed, q, classes, classes * m, ks, temps, tau) for q in range(len(mixed)))
    assert ours.item() == pytest.approx(ref.item(), abs=1e-5)
    ours.backward()
    ref.backward()
    torch.testing.assert_close(ours_in.grad, ref_in.grad, atol=1e-5, rtol=1e-3)
    assert ours_in.grad.abs().sum() > 0


def test_simix_off_leaves_the_loss_unchanged_and_draws_nothing() -> None:
    g = torch.Generator().manual_seed(3)
    emb, labels = torch.randn(16, 8, generator=g), torch.arange(4).repeat_interleave(4)
    state = torch.get_rng_state()
    off = RecallAtKSurrogate(simix=False)(emb, labels)
    assert torch.equal(torch.get_rng_state(), state)
    assert off.item() == pytest.approx(brute_force_rs_at_k(emb, labels, [1, 2, 4, 8, 16], [1, 2, 4, 8, 16],
                                                           0.01, True).item(), abs=1e-5)
    off_criterion = build_criterion(LossConfig(name="rs_at_k"), TCMConfig(enabled=True), 4, 8)
    assert off_criterion(emb, labels)["base_loss"].item() == off.item()
    # on: another objective (virtual positives), and TCM still sees the real embeddings only
    on = build_criterion(LossConfig(name="rs_at_k", simix=True), TCMConfig(enabled=True), 4, 8)
    assert on.base.simix and not off_criterion.base.simix
    parts = on(emb, labels)
    assert abs(parts["base_loss"].item() - off.item()) > 1e-4
    assert parts["tcm_loss"].item() == ThresholdConsistentMargin()(emb, labels).item()


def test_simix_is_a_boolean_setting_of_rs_at_k_only() -> None:
    assert LossConfig(name="rs_at_k").simix is False  # off, as RS@k's --mixup 0
    assert parse_config(_params_with_loss({"name": "rs_at_k", "simix": True})).runs["r"].loss.simix is True
    with pytest.raises(ConfigError, match=r"runs\.r\.loss: simix .*'rs_at_k' only, not 'smooth_ap'"):
        parse_config(_params_with_loss({"name": "smooth_ap", "simix": True}))
    with pytest.raises(ConfigError, match=r"unknown params \['simix'\].*loss\.simix"):
        parse_config(_params_with_loss({"name": "rs_at_k", "params": {"simix": True}}))
    with pytest.raises(ConfigError, match=r"runs\.r\.loss\.simix"):
        parse_config(_params_with_loss({"name": "rs_at_k", "simix": "yes"}))


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
