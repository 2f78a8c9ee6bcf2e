"""A recipe's engines, built: the recipes themselves (the seed's columns, `fast`, `fast-fp8`) are engines.recipes."""

from __future__ import annotations

from collections.abc import Callable

from engines.recipes import BASELINE, LADDER, Recipe, recipe
from engines.spec import EngineSpec
from reference.dpm_solver import STEPS, make_plan

__all__ = ["BASELINE", "LADDER", "Recipe", "build", "recipe", "recipe_engines", "stages"]


def build(component: str, spec: EngineSpec, models, *, steps: int = STEPS, batch: int = 1) -> object:
    """The engine `spec` describes for `batch` images a call; "sampler" is the whole solver loop of `steps` calls
    around that U-ViT step."""
    from engines import build_engine
    from engines.sampler import build_sampler

    if component == "sampler":
        return build_sampler(models, plan=make_plan(steps=steps), batch=batch, **spec.kwargs())
    return build_engine(component, models, batch=batch, **spec.kwargs())


def recipe_engines(recipe: Recipe, get: Callable[[str, EngineSpec], object]) -> dict[str, object]:
    """The engines of a pipeline of this recipe, from `get(component, spec)`; under `loop`, "uvit" is the sampler."""
    engines = {c: get(c, b) for c, b in recipe.builds.items() if not (recipe.loop and c == "uvit")}
    if recipe.loop:
        engines["uvit"] = get("sampler", recipe.builds["uvit"])
    return engines


def stages(recipe: Recipe, engines: dict[str, Callable]) -> dict[str, Callable]:
    """Pipeline keyword arguments for these engines (or wrappers of them)."""
    return {
        "clip": engines["clip"],
        "decoder": engines["decoder"],
        ("sampler" if recipe.loop else "step"): engines["uvit"],
    }
