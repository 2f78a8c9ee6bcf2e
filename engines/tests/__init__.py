"""Helpers the engine tests share."""

import torch

from engines import Engine, build_engine
from engines.components import component_module, default_marks, example_inputs
from reference.approximations import approximate
from reference.compare import RunResult, compare_simple, errors_against
from reference.tolerances import bounds, caps


def engine_against_eager(models, component: str, *, device: torch.device, precision: str = "fp32", **build) -> Engine:
    """Build `component` with `build` and check every default mark against the fp64 reference under the accuracy
    rule (reference/tolerances.py): within a small multiple of what the eager reference at `precision` errs there.
    The reference makes the approximations the engine declares (reference.approximations)."""
    marks = default_marks(component, component_module(component, models))
    inputs = example_inputs(component, models.config, device=device)
    engine = build_engine(component, models, marks=marks, precision=precision, **build)
    module = approximate(component_module(component, models), engine.approximations)
    got = RunResult(engine.name, engine(**inputs))
    plain = RunResult(
        "plain", build_engine(component, models, module=module, marks=marks, precision=precision)(**inputs)
    )
    oracle = RunResult("fp64", build_engine(component, models, module=module, marks=marks, precision="fp64")(**inputs))
    assert list(got.outputs) == list(oracle.outputs)  # the same marks, in execution order
    limits = bounds(component, precision, errors_against(plain, oracle))
    results = compare_simple(bounds=limits, caps=caps(component, precision, list(limits)))(got, oracle)
    first = next((m for m, r in results.items() if not r), None)
    assert first is None, (first, results[first].status, results[first].rel_l2, results[first].bound)
    return engine
