"""Base-loss registry (pytorch-metric-learning) and the TCM regularizer."""

from tcm.losses.registry import Criterion, build_criterion
from tcm.losses.tcm import ThresholdConsistentMargin

__all__ = ["Criterion", "ThresholdConsistentMargin", "build_criterion"]
