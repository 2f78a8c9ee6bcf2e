"""Fixtures of the accuracy suite: each component's References (reference/tests/__init__.py), made once, and the
statistics its weights give its layers.

ref = references("uvit", ("fp8=row", "gelu=tanh"))   # the reference making an engine's declared approximations
ref.judge(run, "fp8")                                # each mark of the run against the oracle, anchored
"""

from __future__ import annotations

import copy

import pytest

from engines.components import component_module, example_inputs
from reference.activations import measure
from reference.tests import References


@pytest.fixture(scope="session")
def references(models, device):
    """(component, approximations) -> its References, made once per pytest run."""
    cache: dict[tuple[str, tuple[str, ...]], References] = {}

    def get(component: str, approximations: tuple[str, ...] = ()) -> References:
        key = (component, tuple(sorted(approximations)))
        if key not in cache:
            cache[key] = References.make(component, models, key[1], device=device)
        return cache[key]

    return get


@pytest.fixture(scope="session")
def activation_stats(models, model_config, device, accuracy_log):
    """component -> the statistics its weights give its layers on the example inputs (reference/activations.py),
    logged once for the report."""
    done: set[str] = set()

    def get(component: str) -> None:
        if component in done:
            return
        module = copy.deepcopy(component_module(component, models)).double()
        inputs = {
            k: v.double() if v.is_floating_point() else v
            for k, v in example_inputs(component, model_config, device=device).items()
        }
        rows = measure(module, inputs)
        accuracy_log.add([{"component": component, "order": i, **r} for i, r in enumerate(rows)], table="activations")
        done.add(component)

    return get


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Each engine's tests one after another (its runs are held for them, then dropped: engine_runs)."""
    slots = [i for i, item in enumerate(items) if hasattr(item, "callspec") and "engine_spec" in item.callspec.params]
    order = {}
    for i in slots:
        order.setdefault(items[i].callspec.params["engine_spec"], len(order))
    grouped = sorted((items[i] for i in slots), key=lambda item: order[item.callspec.params["engine_spec"]])
    for i, item in zip(slots, grouped, strict=True):
        items[i] = item
