"""Helpers the engine tests share."""

import torch

from engines import Engine, build_engine
from engines.components import component_module, default_marks, example_inputs


def engine_against_eager(models, component: str, *, bound: float, device: torch.device, **build) -> Engine:
    """Build `component` with `build` and check every default mark against eager fp32 (relative L2 < bound)."""
    marks = default_marks(component, component_module(component, models))
    inputs = example_inputs(component, models.config, device=device)
    engine = build_engine(component, models, marks=marks, **build)
    got, want = engine(**inputs), build_engine(component, models, marks=marks)(**inputs)
    assert list(got) == list(want)  # the same marks, in execution order
    for name in want:
        a, b = got[name].double(), want[name].double()
        assert ((a - b).norm() / b.norm()).item() < bound, name
    return engine
