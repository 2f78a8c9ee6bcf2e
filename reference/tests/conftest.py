"""Fixtures of the accuracy suite: the fp32 reference run of each component and its fp64 noise floors."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

from engines import build_engine
from engines.components import component_module, default_marks, example_inputs
from reference.compare import RunResult, floors_against, nondeterministic_marks


@dataclass
class Reference:
    run: RunResult
    floors: dict[str, float]
    marks: tuple[str, ...]
    inputs: dict[str, torch.Tensor]
    nondeterministic: list[str]


@pytest.fixture(scope="session")
def reference_runs(models, model_config, device):
    """component -> its fp32 reference run (made twice: it must be bit-identical) and fp64 noise floors."""
    cache: dict[str, Reference] = {}

    def get(component: str) -> Reference:
        if component not in cache:
            marks = default_marks(component, component_module(component, models))
            inputs = example_inputs(component, model_config, device=device)
            with build_engine(component, models, marks=marks) as ref:
                a, b = RunResult(ref.name, ref(**inputs)), RunResult(ref.name, ref(**inputs))
            with build_engine(component, models, marks=marks, precision="fp64") as ref64:
                floors = floors_against(a, RunResult(ref64.name, ref64(**inputs)))
            cache[component] = Reference(a, floors, marks, inputs, nondeterministic_marks(a, b))
        return cache[component]

    return get
