"""Inductor's persistent-or-looped choice for reductions along contiguous rows, made by row length.

Inductor makes a reduction persistent (a whole row per program, read once) when its rows hold up to 1024 elements, and
loops over longer rows in chunks. The U-ViT's LayerNorm rows hold 1536. Its `multi_kernel` option compiles both kernels
for such rows and times them on the first call of every process; `persistent_rows` makes the choice at compile time
instead, so a process that loads the compiled graph from the cache loads one kernel per reduction and times nothing.

An engine passes `Rows(limit)` as torch.compile's `inductor_choices_class` option, which puts it in the FX graph
cache's key and in dynamo's comparison of backends. Inductor, though, makes each thread's choices object once, from
the config of the thread's first compile; `installed` puts a `PersistentRows` in its place while an engine compiles or
runs, one that reads the limit from the config of the compile at hand and acts as Inductor's own choices where there is
none.
Imported only by an engine that asks for it (importing InductorChoices loads much of Inductor).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

from torch._inductor import config
from torch._inductor.choices import InductorChoices
from torch._inductor.runtime.hints import ReductionHint
from torch._inductor.virtualized import V


@dataclass(frozen=True)
class Rows:
    """The factory `inductor_choices_class` takes: equal by limit, so equal engines share dynamo's graphs."""

    limit: int

    def __call__(self) -> PersistentRows:
        return PersistentRows()


class PersistentRows(InductorChoices):
    """Inductor's own choices, but INNER reductions over rows of up to the config's `Rows.limit` elements persistent."""

    @staticmethod
    def row_limit() -> int:
        factory = config.inductor_choices_class
        return factory.limit if isinstance(factory, Rows) else 0

    def should_use_persistent_reduction(self, features, cooperative_reduction: bool) -> bool:
        limit = self.row_limit()
        if (
            limit
            and config.triton.persistent_reductions
            and not cooperative_reduction
            and features.get_reduction_hint() == ReductionHint.INNER
            and V.graph.sizevars.statically_known_leq(features.reduction_numel, limit)
        ):
            return True
        return InductorChoices.should_use_persistent_reduction(features, cooperative_reduction)

    def uuid(self) -> str:  # torch 2.13 keys compiled graphs by it; older versions pickle the Rows
        return f"unidiffuser-bench PersistentRows(limit={self.row_limit()})"


@contextlib.contextmanager
def installed() -> Iterator[None]:
    """This thread's Inductor choices a PersistentRows while the block runs (a compile, or a call that may recompile),
    then what they were; refuses to replace choices someone else installed."""
    current = V.choices
    if type(current) is PersistentRows:
        yield
        return
    if type(current) is not InductorChoices:
        raise ValueError(f"persistent_rows would replace this thread's Inductor choices, {type(current).__name__}")
    with V.set_choices_handler(PersistentRows()):
        yield
