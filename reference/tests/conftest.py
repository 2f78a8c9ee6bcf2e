"""Fixtures of the accuracy suite: each component's oracle, its plain runs at each precision, and the fp32 reference.

ref = references("uvit", ("fp8=row", "gelu=tanh"))   # the reference making an engine's declared approximations
ref.oracle                                           # its fp64 run: what every engine is compared with
ref.plain_errors("fp8")                              # per mark, how far the plain run at that rule errs
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import pytest
import torch

from engines import build_engine
from engines.components import component_module, default_marks, example_inputs
from reference.activations import measure
from reference.approximations import approximate
from reference.compare import RunResult, errors_against, nondeterministic_marks
from reference.tolerances import rule_for


@dataclass
class References:
    component: str
    approximations: tuple[str, ...]
    module: torch.nn.Module  # the reference component making `approximations`
    marks: tuple[str, ...]
    inputs: dict[str, torch.Tensor]
    oracle: RunResult  # the module in fp64
    models: object
    plain: dict[str, RunResult] = field(default_factory=dict)  # by the precision it ran at
    nondeterministic: list[str] = field(default_factory=list)  # marks where two fp32 runs differ

    def plain_run(self, precision: str) -> RunResult:
        """The module cast to the rule's plain precision and run eagerly (fp32: the strict-fp32 reference, run twice:
        it must repeat itself bit for bit before any engine is blamed)."""
        at = rule_for(self.component, precision).plain
        if at not in self.plain:
            with build_engine(self.component, self.models, module=self.module, precision=at, marks=self.marks) as e:
                self.plain[at] = RunResult(e.name, e(**self.inputs))
                if at == "fp32":
                    self.nondeterministic = nondeterministic_marks(self.plain[at], RunResult(e.name, e(**self.inputs)))
        return self.plain[at]

    def plain_errors(self, precision: str) -> dict[str, float]:
        return errors_against(self.plain_run(precision), self.oracle)


@pytest.fixture(scope="session")
def references(models, model_config, device):
    """(component, approximations) -> its References, made once per pytest run."""
    cache: dict[tuple[str, tuple[str, ...]], References] = {}

    def get(component: str, approximations: tuple[str, ...] = ()) -> References:
        key = (component, tuple(sorted(approximations)))
        if key not in cache:
            module = approximate(component_module(component, models), key[1])
            marks = default_marks(component, module)
            inputs = example_inputs(component, model_config, device=device)
            with build_engine(component, models, module=module, marks=marks, precision="fp64") as oracle:
                run = RunResult(oracle.name, oracle(**inputs))
            cache[key] = References(component, key[1], module, marks, inputs, run, models)
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
