"""Base losses by params name (pytorch-metric-learning classes or ours), composed with TCM by addition."""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import pytorch_metric_learning.losses as pml_losses
import torch
from torch import nn

from tcm.config import LOSS_PARAMS, LossConfig, Registry, RegistryError, TCMConfig
from tcm.losses.recall_at_k import RecallAtKSurrogate
from tcm.losses.smooth_ap import SmoothAP
from tcm.losses.tcm import ThresholdConsistentMargin
from tcm.runfiles import LOSS_PARTS

_losses: Registry[type[nn.Module]] = Registry("loss", LOSS_PARAMS)
# Each base loss under its params name (tcm.config.registry.LOSS_PARAMS, which also declares the parameters
# params.yaml may set and their types). Smooth-AP is ours: pml's SmoothAPLoss mis-groups positives when m
# differs from the number of classes in the batch, and needs O(batch^3) memory (tests/test_losses.py).
_losses.register("multi_similarity")(pml_losses.MultiSimilarityLoss)
_losses.register("proxy_anchor")(pml_losses.ProxyAnchorLoss)
_losses.register("smooth_ap")(SmoothAP)
_losses.register("rs_at_k")(RecallAtKSurrogate)
_losses.register("contrastive")(pml_losses.ContrastiveLoss)
_losses.register("triplet")(pml_losses.TripletMarginLoss)
BASE_LOSSES: dict[str, type[nn.Module]] = _losses.table()
# Constructor arguments that build_criterion fills in itself (or leaves at their defaults), so params must
# not set them. (simix: RS@k's, from loss.simix rather than loss.params.)
_ARGS_SET_BY_CODE = {"num_classes", "embedding_size", "distance", "reducer", "embedding_regularizer",
                     "embedding_reg_weight", "collect_stats", "simix"}


def accepted_loss_params(name: str) -> list[str]:
    """Constructor arguments of base loss ``name`` that params may set."""
    accepted = set(inspect.signature(BASE_LOSSES[name].__init__).parameters) - {"self", "kwargs"}
    return sorted(accepted - _ARGS_SET_BY_CODE)


def _check_declared_params() -> None:
    """LOSS_PARAMS names, for each loss, exactly the constructor arguments params may set (checked at
    import, as the names are; tests/test_faults_config.py checks their types against the signatures)."""
    for name, declared in LOSS_PARAMS.items():
        if sorted(declared) != accepted_loss_params(name):
            raise RegistryError(f"tcm.config.registry.LOSS_PARAMS[{name!r}] declares {sorted(declared)}, but "
                                f"{BASE_LOSSES[name].__name__} accepts {accepted_loss_params(name)} from params")


_check_declared_params()


@dataclass
class Criterion:
    """base(embeddings, labels [, miner tuples]) + TCM(embeddings, labels), reported per part (LOSS_PARTS)."""

    base: nn.Module
    miner: nn.Module | None
    tcm: ThresholdConsistentMargin | None

    def __call__(self, embeddings: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        tuples = self.miner(embeddings, labels) if self.miner is not None else None
        base = self.base(embeddings, labels, tuples) if tuples is not None else self.base(embeddings, labels)
        tcm = self.tcm(embeddings, labels) if self.tcm is not None else torch.zeros((), device=embeddings.device)
        return dict(zip(LOSS_PARTS, (base + tcm, base, tcm)))

    def parameters(self) -> list[nn.Parameter]:
        """Learnable loss parameters (ProxyAnchor's proxies)."""
        return list(self.base.parameters())


def build_criterion(loss: LossConfig, tcm: TCMConfig, num_classes: int, embedding_dim: int) -> Criterion:
    import pytorch_metric_learning.miners as pml_miners

    kwargs = dict(loss.params)
    if loss.name == "proxy_anchor":
        kwargs.update(num_classes=num_classes, embedding_size=embedding_dim)
    if loss.name == "rs_at_k":  # SiMix mixes the base loss's batch only: TCM sees the real embeddings
        kwargs.update(simix=loss.simix)
    base = BASE_LOSSES[loss.name](**kwargs)  # what config.LOSS_PARAMS misses, train's preflight names
    miner = pml_miners.MultiSimilarityMiner() if (loss.name == "multi_similarity" and loss.miner) else None
    reg = (ThresholdConsistentMargin(tcm.pos_margin, tcm.neg_margin, tcm.pos_weight, tcm.neg_weight)
           if tcm.enabled else None)
    return Criterion(base=base, miner=miner, tcm=reg)
