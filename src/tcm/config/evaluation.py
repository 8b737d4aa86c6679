"""``evaluation``: how the test split is embedded and scored (Recall@k, OPIS and eps-OPIS, the
threshold report, the bootstrap of OPIS). One object travels to ``tcm.metrics.evaluate_embeddings``."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, PositiveFloat, field_validator

from tcm.config.base import MAX_BATCH, MAX_WORKERS, PositiveInt, Seed, StrictModel, count


class OpisConfig(StrictModel):
    beta: PositiveFloat = 1.0  # F-beta utility of TPR and TNR (assumed beta = 1)
    far_range: tuple[PositiveFloat, PositiveFloat] = (1e-2, 1e-1)  # calibration range of overall FAR
    n_thresholds: count(10**6, lower=2) = 101
    eps: float = Field(0.05, gt=0.0, le=0.5)  # share of best / worst classes for eps-OPIS
    # OPIS class weights w_i: "uniform" = 1/C (assumed), "positive_pairs" = share of positive pairs.
    class_weighting: Literal["uniform", "positive_pairs"] = "uniform"
    # Upper bound on the similarity-histogram bin width: thresholds lie within it of exact quantiles.
    resolution: float = Field(1e-4, gt=0.0, le=0.01)

    @field_validator("far_range")
    @classmethod
    def _range(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not 0 < v[0] < v[1] < 1:
            raise ValueError(f"far_range must satisfy 0 < low < high < 1, but got {list(v)}")
        return v


class BootstrapConfig(StrictModel):
    # Class-stratified bootstrap of OPIS over the test queries (tcm.metrics.bootstrap): its sd is written
    # per seed as opis_boot_sd / eps_opis_boot_sd. resamples: 0 = off, else at least 2.
    resamples: count(100_000, lower=0) = 300
    seed: Seed = 0

    @field_validator("resamples")
    @classmethod
    def _two(cls, v: int) -> int:
        if v == 1:
            raise ValueError("resamples must be 0 (off) or at least 2 (an sd needs two), but got 1")
        return v


class EvaluationConfig(StrictModel):
    batch_size: count(MAX_BATCH) = 256  # images per forward pass when embedding the test split
    recall_k: list[PositiveInt] = [1, 2, 4, 8]
    opis: OpisConfig = OpisConfig()
    # Query rows per similarity chunk; null = from the free memory (at most 512 MiB per chunk).
    chunk_size: count(10**6) | None = None
    # Where the test split is embedded and the similarities computed; loader processes for embedding.
    device: Literal["auto", "cpu", "cuda"] = "auto"
    num_workers: count(MAX_WORKERS, lower=0) = 0
    decode: Literal["workers", "device"] = "workers"  # as train.decode, for the test split
    # Threshold report: the global threshold with this overall FAR on the test set, and the per-class FAR /
    # FRR at it summarised over the classes (min, median, max, mean of the worst `worst_share` of classes).
    target_far: float = Field(1e-3, gt=0.0, lt=1.0)
    worst_share: float = Field(0.05, gt=0.0, le=1.0)
    bootstrap: BootstrapConfig = BootstrapConfig()
