"""Build seconds of a recipe's engines in one process, and whether torch's compile caches served them.

    python -m bench build --recipe fast --cache-dir results/torch-cache --json results/build.json

Run it twice with the same `--cache-dir`: the first run is a fresh machine (an empty cache), the second has warm
caches. Inductor keeps compiled graphs (FX graph cache), AOTAutograd artifacts and Triton binaries under
TORCHINDUCTOR_CACHE_DIR (default /tmp/torchinductor_$USER), so a second process on the same machine skips the
compilation but still traces with dynamo, loads the kernels and captures the CUDA graphs. `bench/bench_build.py` times
both, each in a process started with `process_env` (Python's bytecode cached in the same folder), and
`reports/speedup.md` sets them against the targets.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from bench import ladder
from engines import check_backend
from engines.components import COMPONENTS
from engines.spec import EngineSpec
from reference.dpm_solver import STEPS

CACHE_ENV = ("TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR")
PYCACHE = "pycache"  # Python's bytecode, under the cache folder
COUNTERS = {  # torch._dynamo.utils.counters: what served each compile
    "inductor": ("fxgraph_cache_hit", "fxgraph_cache_miss", "fxgraph_cache_bypass"),
    "aot_autograd": ("autograd_cache_hit", "autograd_cache_miss", "autograd_cache_bypass"),
}


def use_cache_dir(folder: Path) -> Path:
    """Point Inductor's and Triton's caches at `folder` (read when they are first used, so before any compile)."""
    folder = Path(folder).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(folder)
    os.environ["TRITON_CACHE_DIR"] = str(folder / "triton")
    return folder


def process_env(cache_dir: Path) -> dict[str, str]:
    """The environment of a build process on `cache_dir`: this one's, with Python's bytecode written to and read from
    the same folder. A machine that has run torch before keeps the bytecode of what it imported (pip also writes it at
    install), and a warm build must start from that too: the lent H100's torch has none and its environment sets
    PYTHONDONTWRITEBYTECODE=1, so every process there compiled torch's modules from source, which took a warm build
    from 11.8 s to 16.7-18.6 s."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPYCACHEPREFIX"] = str(Path(cache_dir).resolve() / PYCACHE)
    return env


def bytecode_cache(cache_dir: str | None) -> str:
    """Where this process keeps Python's bytecode, as the build result records it."""
    if sys.flags.dont_write_bytecode:
        return "not written"
    prefix = sys.pycache_prefix
    if prefix is None:
        return "beside the sources"
    return "cache folder" if cache_dir and Path(prefix).resolve().is_relative_to(Path(cache_dir)) else prefix


# The phases of torch._dynamo.utils.compile_times that say where a build's compiles went, each summed over the
# process's graphs: dynamo reading the Python and building the guards, which every process pays whatever its caches
# hold, and the backend (AOTAutograd and Inductor), which on warm caches is mostly loading what was compiled before.
# The phases nest (the cache load is part of the backend); reports/speedup.py shows every `phase_*` key.
PHASES = {
    "phase_trace_s": "bytecode_tracing",
    "phase_guards_s": "build_guards",
    "phase_backend_s": "OutputGraph.call_user_compiler",
    "phase_cache_load_s": "AOTAutogradCache.inductor_load",
}


def compile_phases() -> dict[str, float]:
    """Seconds dynamo and Inductor spent per phase in this process (torch._dynamo.utils.compile_times)."""
    from torch._dynamo.utils import compile_times

    names, seconds = compile_times(repr="csv", aggregate=True)
    return {n: float(s) for n, s in zip(names, seconds, strict=True)}


def phase_seconds(phases: dict[str, float]) -> dict[str, float | None]:
    """PHASES from `compile_phases()`; None for a phase this process did not run (no cache load in a fresh build)."""
    return {key: phases.get(name) for key, name in PHASES.items()}


def cache_counts() -> dict[str, int]:
    from torch._dynamo.utils import counters

    return {name: int(counters[group][name]) for group, names in COUNTERS.items() for name in names}


def build_times(
    *,
    recipe: str | None = None,
    backend: str = "inductor",
    precision: str = "fp16",
    cuda_graph: bool = False,
    components: tuple[str, ...] = COMPONENTS,
    options: dict[str, object] | None = None,
    size: str = "auto",
    device: str = "auto",
    weights: Path | None = None,
    weights_seed: int = 0,
    cache_dir: Path | None = None,
    steps: int = STEPS,
    progress: bool = True,
) -> dict:
    """Build every engine of `recipe` (or `components` with one backend, precision and `options`) once; seconds and
    cache counts."""
    from torch._dynamo.utils import counters

    from bench.environment import resolve
    from reference.checkpoints import load_models

    if cache_dir is not None:
        use_cache_dir(cache_dir)
    if recipe is not None:
        chosen = ladder.recipe(recipe)
    else:
        unknown = sorted(set(components) - set(COMPONENTS))
        if unknown:
            raise ValueError(f"unknown components {unknown}; choose from {list(COMPONENTS)}")
        chosen = ladder.Recipe(
            "-",
            f"{backend} {precision}",
            {c: EngineSpec.of(c, check_backend(backend), precision, cuda_graph, **(options or {})) for c in components},
        )
    cfg, dev = resolve(size, device)
    t0 = time.perf_counter()
    models = load_models(cfg, weights=weights, seed=weights_seed).to(dev)
    load_s = time.perf_counter() - t0
    counters.clear()
    engines, bar = {}, tqdm(total=len(chosen.builds), desc="building engines", disable=not progress)

    def get(component: str, build: EngineSpec):
        engine = ladder.build(component, build, models, steps=steps)
        engines[component] = {"engine": engine.name, **{f"{k}_s": v for k, v in engine.seconds.items()}}
        bar.update()
        return engine

    t0 = time.perf_counter()
    ladder.recipe_engines(chosen, get)
    bar.close()
    if dev.type == "cuda":
        torch.cuda.synchronize()
    build_s, phases = time.perf_counter() - t0, compile_phases()
    return {
        "recipe": recipe or "-",
        "steps": steps,
        "size": cfg.name,
        "device": str(dev),
        "weights": models.weights,
        "cache_dir": os.environ.get("TORCHINDUCTOR_CACHE_DIR", "torch's default"),
        "python_bytecode": bytecode_cache(os.environ.get("TORCHINDUCTOR_CACHE_DIR")),
        "model_load_s": load_s,
        "build_s": build_s,
        "engines": engines,
        "cache": cache_counts(),
        "phases": phase_seconds(phases),
        "compile_phases_s": {name: s for name, s in phases.items() if s >= 0.2},  # the phases that took some time
    }


def write_build_times(out: Path | None, *, overwrite: bool = False, **kwargs) -> dict:
    from reports.common import check_writable

    out = check_writable(out, overwrite=overwrite) if out is not None else None  # before the minutes of building
    result = build_times(**kwargs)
    if out is not None:
        out.write_text(json.dumps(result, indent=1, default=str))
    return result
