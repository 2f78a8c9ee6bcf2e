"""`pytest bench --benchmark-only -k build`: every engine of a recipe built in a new process, first on an empty compile
cache (a fresh machine), then again on the cache that run filled (warm caches); the targets are reports/speedup.py's
BUILD_TARGETS.

Each build runs `python -m bench build` in a subprocess, so nothing compiled by this pytest process helps it; Python's
bytecode is cached in the same folder as torch's compiled graphs (bench.build.process_env). The
benchmark's own time is the whole subprocess (interpreter start and model construction included); `build_s` in
extra_info is the engines alone, timed inside it, and is what reports/speedup.md sets against the targets.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench.build import process_env
from engines.recipes import recipe

BUILD_RECIPES = ("fast",)  # every fp16 engine of the fastest configuration
CACHES = ("fresh", "warm")


@pytest.fixture(scope="session")
def build_caches(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Recipe name -> the compile-cache folder its first build filled (one per pytest session)."""
    return {}


def run_build(recipe_name: str, cache: Path, out: Path, config: pytest.Config, device) -> dict:
    cmd = [sys.executable, "-m", "bench", "build", "--recipe", recipe_name, "--cache-dir", str(cache),
           "--json", str(out), "--size", config.getoption("--size")[0], "--device", device.type,
           "--weights-seed", str(config.getoption("--weights-seed"))]  # fmt: skip
    if config.getoption("--weights"):
        cmd += ["--weights", str(config.getoption("--weights"))]
    done = subprocess.run(cmd, capture_output=True, text=True, env=process_env(cache))
    if done.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stderr[-4000:]}")
    return json.loads(out.read_text())


@pytest.mark.benchmark(group="build", disable_gc=True)
@pytest.mark.parametrize("caches", CACHES)
@pytest.mark.parametrize("recipe", [recipe(n) for n in BUILD_RECIPES], ids=BUILD_RECIPES)
def test_build(benchmark, recipe, caches, build_caches, tmp_path_factory, pytestconfig, device):
    if caches == "fresh" or recipe.name not in build_caches:
        build_caches[recipe.name] = tmp_path_factory.mktemp(f"torch-cache-{recipe.name}")
    cache = build_caches[recipe.name]
    if caches == "warm" and not any(cache.iterdir()):  # -k warm alone: fill the cache first, untimed
        run_build(recipe.name, cache, cache.parent / "fill.json", pytestconfig, device)
    out = cache.parent / f"build-{caches}-{time.monotonic_ns()}.json"
    benchmark.pedantic(run_build, args=(recipe.name, cache, out, pytestconfig, device), rounds=1, iterations=1)
    result = json.loads(out.read_text())
    benchmark.extra_info.update(
        recipe=recipe.name, caches=caches, build_s=result["build_s"], model_load_s=result["model_load_s"],
        size=result["size"], python_bytecode=result["python_bytecode"], **result["cache"], **result["phases"],
        **{f"{c}_{k}": v for c, seconds in result["engines"].items() for k, v in seconds.items() if k != "engine"},
    )  # fmt: skip
    served = result["cache"]["fxgraph_cache_hit"]
    assert (served > 0) if caches == "warm" else (served == 0), result["cache"]
