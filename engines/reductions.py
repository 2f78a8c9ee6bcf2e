"""Inductor's persistent-or-looped choice for reductions along contiguous rows, made by row length.

Inductor makes a reduction persistent (a whole row per program, read once) when its rows hold up to 1024 elements, and
loops over longer rows in chunks. The U-ViT's LayerNorm rows hold 1536. Its `multi_kernel` option compiles both kernels
for such rows and times them on the first call of every process; `PersistentRows` makes the choice at compile time
instead, so a process that loads the compiled graph from the cache loads one kernel per reduction and times nothing.

Imported only by an engine that asks for it (importing InductorChoices loads much of Inductor).
"""

from __future__ import annotations

import functools

from torch._inductor.choices import InductorChoices
from torch._inductor.runtime.hints import ReductionHint
from torch._inductor.virtualized import V


class PersistentRows(InductorChoices):
    def __init__(self, limit: int):
        super().__init__()
        self.limit = limit

    def should_use_persistent_reduction(self, features, cooperative_reduction: bool) -> bool:
        from torch._inductor import config

        if (
            config.triton.persistent_reductions
            and not cooperative_reduction
            and features.get_reduction_hint() == ReductionHint.INNER
            and V.graph.sizevars.statically_known_leq(features.reduction_numel, self.limit)
        ):
            return True
        return InductorChoices.should_use_persistent_reduction(features, cooperative_reduction)

    def uuid(self) -> str:  # torch's FX graph cache keys compiled graphs by it (torch._inductor.config)
        return f"unidiffuser-bench PersistentRows(limit={self.limit})"


def choices(limit: int) -> functools.partial:
    """The factory `torch._inductor.config.inductor_choices_class` takes; a partial of a module-level class, so
    that torch versions that key the cache by pickling the factory see the limit too."""
    return functools.partial(PersistentRows, limit)
