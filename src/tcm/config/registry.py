"""The backbones and base losses by the names params.yaml gives them: one table of each, read by the
config without importing torch, and :class:`Registry`, through which :mod:`tcm.models` and
:mod:`tcm.losses.registry` register their constructors against these names (a name without a
constructor, or a constructor under a name not declared here, fails at import)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Annotated, Any, Generic, TypeVar

from pydantic import Field, PlainValidator, Strict

from tcm.config.base import PositiveInt

BACKBONES = ("small_cnn", "resnet50", "vit_b_16", "vit_tiny")  # vit_tiny: 32 px, for smoke runs

# Loss parameters: a number is an int or float (not a boolean, not a string such as "two").
_Number = Annotated[float, Strict()]
_PositiveNumber = Annotated[float, Strict(), Field(gt=0)]
_Flag = Annotated[bool, Strict()]


def _all_or_positive_int(v: Any) -> Any:
    # pml's TripletMarginLoss: triplets_per_anchor = "all" or a count. One message (a union would give two).
    if v == "all" or (isinstance(v, int) and not isinstance(v, bool) and v > 0):
        return v
    raise ValueError(f"expected 'all' or a positive integer, but got {v!r}")


# Base losses by params name, with the keyword arguments each accepts from params (constructor
# arguments minus those the code sets; the classes register in tcm.losses.registry) and their types: from
# the annotations of our losses (tcm.losses.smooth_ap, tcm.losses.recall_at_k) and from the defaults of
# pytorch-metric-learning's (which have no annotations), so that check-params refuses what the loss
# would (`alpha: two` otherwise fails at the first training step). Written out rather than read from
# the classes so that validating params.yaml does not import torch (seconds per pipeline stage);
# tcm.losses.registry checks the names against the constructors at import, tests/test_faults_config.py
# the types against their signatures.
LOSS_PARAMS: dict[str, dict[str, Any]] = {
    "multi_similarity": {"alpha": _Number, "base": _Number, "beta": _Number},
    "proxy_anchor": {"alpha": _Number, "margin": _Number},
    "smooth_ap": {"include_query": _Flag, "temperature": _PositiveNumber},
    "rs_at_k": {"include_query": _Flag, "k_temperatures": Annotated[list[_PositiveNumber], Field(min_length=1)],
                "k_values": Annotated[list[PositiveInt], Field(min_length=1)], "temperature": _PositiveNumber},
    "contrastive": {"neg_margin": _Number, "pos_margin": _Number},
    "triplet": {"margin": _Number, "smooth_loss": _Flag, "swap": _Flag,
                "triplets_per_anchor": Annotated[Any, PlainValidator(_all_or_positive_int)]},
}


T = TypeVar("T")


class RegistryError(LookupError):
    """Constructors registered against a table of names do not match it (a programming error, raised at
    import of the module that registers them)."""


class Registry(Generic[T]):
    """Constructors registered by name against one table of names above (timm's ``@register_model``,
    with the names declared where the config can read them without importing torch).

    >>> shapes = Registry("shape", ("square", "circle"))
    >>> @shapes.register("square")
    ... def square(): return 4
    >>> shapes.table()
    Traceback (most recent call last):
    ...
    tcm.config.registry.RegistryError: shapes declared in tcm.config.registry without a constructor: ['circle']
    >>> shapes.register("hexagon")
    Traceback (most recent call last):
    ...
    tcm.config.registry.RegistryError: shape 'hexagon' is not declared in tcm.config.registry (shapes: [...])
    """

    def __init__(self, kind: str, names: Iterable[str]) -> None:
        self.kind = kind
        self.names = tuple(names)
        self._found: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """A decorator registering its class or function as the constructor of ``name``."""
        if name not in self.names:
            raise RegistryError(f"{self.kind} {name!r} is not declared in tcm.config.registry "
                                f"({self.kind}s: {list(self.names)})")
        if name in self._found:
            raise RegistryError(f"{self.kind} {name!r} is registered twice")

        def add(constructor: T) -> T:
            self._found[name] = constructor
            return constructor

        return add

    def table(self) -> dict[str, T]:
        """Name -> constructor in the order of the names; raises unless every name has one."""
        missing = [n for n in self.names if n not in self._found]
        if missing:
            raise RegistryError(f"{self.kind}s declared in tcm.config.registry without a constructor: {missing}")
        return {n: self._found[n] for n in self.names}
