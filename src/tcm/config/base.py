"""The building blocks of every section of params.yaml: the strict model base, bounded whole
numbers, and :class:`ConfigError`."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, Strict

from tcm.errors import TcmError

# Counts are whole numbers as written: `epochs: 1e20` (a YAML float) is refused rather than truncated.
PositiveInt = Annotated[int, Strict(), Field(gt=0)]
NonNegativeInt = Annotated[int, Strict(), Field(ge=0)]


def count(upper: int, lower: int = 1) -> Any:
    """A whole number in [lower, upper]. Upper bounds sit where a larger value would exhaust memory or
    time before the first result (a 10^12-image epoch dies in a MemoryError, 10^9 thresholds or bootstrap
    resamples run for days), at least 10x above any profile or recipe (profiles/, configs/recipes.yaml:
    the largest batch is 4000, evaluation batch 500, 300 resamples, 101 thresholds)."""
    return Annotated[int, Strict(), Field(ge=lower, le=upper)]


MAX_BATCH = 100_000  # images per batch or forward pass (recipes: 4000)
MAX_WORKERS = 512  # loader or worker processes (profiles: 8)
MAX_PIXELS = 4096  # image side in pixels (profiles: 256)
# numpy's seed (np.random.seed, tcm.train.seed_everything) must be below 2**32.
Seed = count(2**32 - 1, lower=0)


class ConfigError(TcmError, ValueError):
    """A problem in params.yaml; the message names the key and what is accepted."""


class StrictModel(BaseModel):
    # inf and nan are refused wherever a float is accepted (YAML spells them .inf and .nan).
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)
