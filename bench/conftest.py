"""Fixtures of the benchmark suites: engines built once per session (outside every timed region) and round counts."""

from __future__ import annotations

import pytest

from bench.ladder import LADDER
from bench.ladder import build as ladder_build
from bench.matrix import matrix
from engines import BackendUnavailable, unavailable
from engines.spec import COMPONENTS, EngineSpec
from reference.dpm_solver import STEPS

# The engines build on the CPU (the accuracy suite runs them there), but their CPU kernels are emulations whose times
# mean nothing for the engine (and the tiny random-weight pipeline's latents grow until the seed's attention, forming
# q.k in fp16 before scaling, overflows).
CPU_EMULATED = {p: f"{p} engines are benchmarked on a GPU: their CPU kernels are emulations" for p in ("fp16", "fp8")}


def _cases(config: pytest.Config) -> list[tuple[str, EngineSpec]]:
    which = config.getoption("--bench-set")
    cases: dict[tuple[str, EngineSpec], None] = {}
    if which in ("all", "ladder"):
        for recipe in LADDER:
            for c in COMPONENTS:
                cases[(c, recipe.builds[c])] = None
    if which in ("all", "matrix"):
        for s in matrix(config).specs():
            cases[(s.component, s)] = None
    for s in config.getoption("--bench-engine"):
        cases[(s.component, s)] = None
    return list(cases)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    steps = metafunc.config.getoption("--bench-steps")
    if "steps" in metafunc.fixturenames and steps != [STEPS]:  # the 50-step cases keep their names
        metafunc.parametrize("steps", steps, ids=[f"{n}steps" for n in steps])
    batches = metafunc.config.getoption("--bench-batch")
    if "batch" in metafunc.fixturenames and batches != [1]:  # the batch-1 cases keep their names
        metafunc.parametrize("batch", batches, ids=[f"batch{n}" for n in batches])
    if "bench_case" in metafunc.fixturenames:
        cases = _cases(metafunc.config)
        metafunc.parametrize("bench_case", cases, ids=[b.id for _, b in cases])


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if (only := config.getoption("--bench-recipes")) is not None:  # the pipeline cases of other recipes go
        dropped = [i for i in items if "recipe" in _params(i) and _params(i)["recipe"].name not in only]
        config.hook.pytest_deselected(items=dropped)
        items[:] = [i for i in items if i not in dropped]
    device = matrix(config).device
    for item in items:
        params = _params(item)
        builds = [params["bench_case"]] if "bench_case" in params else []
        builds += list(params["recipe"].builds.items()) if "recipe" in params else []
        for _, b in builds:
            why = unavailable(b.backend, device=device, precision=b.precision, cuda_graph=b.cuda_graph,
                              options=b.flat())  # fmt: skip
            if not why and device.type == "cpu" and b.precision in CPU_EMULATED:
                why = CPU_EMULATED[b.precision]
            if why:
                item.add_marker(pytest.mark.skip(reason=why))
                break


def _params(item: pytest.Item) -> dict:
    return item.callspec.params if hasattr(item, "callspec") else {}


@pytest.fixture
def steps() -> int:
    """DPM-Solver++ model calls per image of a pipeline benchmark: 50, unless --bench-steps parametrizes it."""
    return STEPS


@pytest.fixture
def batch() -> int:
    """Images per pipeline call: 1, unless --bench-batch parametrizes it."""
    return 1


@pytest.fixture(scope="session")
def engine_for(models):
    """(component, EngineSpec) -> Engine, built once per session and shared by component and pipeline benchmarks.
    Component "sampler" is the whole solver loop of `steps` calls around the U-ViT step that `build` describes
    (engines.sampler). `cache_it=False` builds an engine of the caller's alone, which the caller closes: what its
    memory is measured with."""
    cache = {}

    def get(component: str, build: EngineSpec, steps: int = STEPS, batch: int = 1, *, cache_it: bool = True):
        key = (component, build, steps if component == "sampler" else None, batch)
        if key in cache and cache_it:
            return cache[key]
        try:
            engine = ladder_build(component, build, models, steps=steps, batch=batch)
        except BackendUnavailable as e:
            pytest.skip(str(e))
        if cache_it:
            cache[key] = engine
        return engine

    return get


@pytest.fixture(scope="session")
def rounds(pytestconfig: pytest.Config, device) -> dict[str, int]:
    gpu = device.type == "cuda"
    r, w = pytestconfig.getoption("--bench-rounds"), pytestconfig.getoption("--bench-warmup")
    return {
        "component": r or (20 if gpu else 2),
        "component_warmup": w if w >= 0 else (3 if gpu else 1),
        "pipeline": r or (3 if gpu else 1),
        "pipeline_warmup": w if w >= 0 else (1 if gpu else 0),
    }
