"""`python -m bench build`: engines built in a new process record their seconds and whether torch's caches served
them; the second process on the same cache folder must be served from it."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from bench.build import PYCACHE, process_env

CPU_CLIP = ["--backend", "inductor", "--precision", "fp32", "--components", "clip", "--device", "cpu"]


def build(cache, out, what=CPU_CLIP) -> dict:
    cmd = [sys.executable, "-m", "bench", "build", *what, "--size", "tiny", "--cache-dir", str(cache), "--json", out]
    done = subprocess.run(cmd, capture_output=True, text=True, env=process_env(cache))
    if done.returncode:
        print(done.stderr[-3000:])  # pytest shows it with the failure
        raise subprocess.CalledProcessError(done.returncode, cmd, done.stdout, done.stderr)
    return json.loads(out.read_text())


@pytest.mark.slow
def test_a_second_process_compiles_from_the_cache_the_first_filled(tmp_path):
    cache = tmp_path / "cache"
    fresh = build(cache, tmp_path / "fresh.json")
    assert fresh["cache_dir"] == str(cache.resolve())
    assert fresh["cache"]["fxgraph_cache_miss"] >= 1 and fresh["cache"]["fxgraph_cache_hit"] == 0
    assert fresh["engines"]["clip"]["engine"] == "clip/inductor/fp32" and fresh["engines"]["clip"]["compile_s"] > 0
    assert (cache / "fxgraph").is_dir()
    # where the compile went: dynamo's tracing and the backend's compile, and no cache to load from
    phases = fresh["phases"]
    assert phases["phase_trace_s"] > 0 and phases["phase_backend_s"] > phases["phase_trace_s"], phases
    assert phases["phase_cache_load_s"] is None, phases
    # Python's bytecode is cached with the graphs, whatever PYTHONDONTWRITEBYTECODE says here (the H100's sets it)
    assert fresh["python_bytecode"] == "cache folder"
    assert any((cache / PYCACHE).rglob("convert_frame*.pyc")), "torch._dynamo's bytecode was not written"
    warm = build(cache, tmp_path / "warm.json")
    assert warm["cache"]["fxgraph_cache_hit"] >= 1 and warm["cache"]["fxgraph_cache_miss"] == 0
    # a warm build still traces; its backend is mostly loading what the first compiled
    phases = warm["phases"]
    assert phases["phase_trace_s"] > 0 and 0 < phases["phase_cache_load_s"] <= phases["phase_backend_s"], phases
    assert phases["phase_backend_s"] < fresh["phases"]["phase_backend_s"], (phases, fresh["phases"])
    with pytest.raises(subprocess.CalledProcessError):  # the result file is the user's: never overwritten unasked
        build(cache, tmp_path / "warm.json")


def test_engines_built_with_an_option_carry_it(tmp_path):
    regional = [*CPU_CLIP, "--option", "compile=regional"]
    result = build(tmp_path / "cache", tmp_path / "regional.json", regional)
    assert result["engines"]["clip"]["engine"] == "clip/inductor/fp32+compile=regional"
    for wrong, says in (
        (["--recipe", "fast", "--option", "compile=regional"], "--recipe chooses the engines' options itself"),
        ([*CPU_CLIP, "--components", "decoder", "--option", "compile=regional"], "the decoder's blocks differ"),
        ([*CPU_CLIP, "--option", "compile"], "engine option 'compile' is not KEY=VALUE"),
    ):
        with pytest.raises(subprocess.CalledProcessError) as refused:
            build(tmp_path / "cache", tmp_path / "refused.json", wrong)
        assert refused.value.returncode == 2 and says in refused.value.stderr, refused.value.stderr
    assert not (tmp_path / "refused.json").exists()


@pytest.mark.gpu
@pytest.mark.slow
def test_the_fast_recipe_builds_again_from_its_cache(tmp_path):
    """The fast recipe's U-ViT is compiled with our choice of persistent reductions (engines.reductions), which must be
    part of the FX graph cache's key for the second process to be served."""
    cache, recipe = tmp_path / "cache", ["--recipe", "fast", "--device", "cuda"]
    fresh = build(cache, tmp_path / "fresh.json", recipe)
    assert fresh["cache"]["fxgraph_cache_miss"] >= 3
    warm = build(cache, tmp_path / "warm.json", recipe)
    assert warm["cache"]["fxgraph_cache_hit"] >= 3 and warm["cache"]["fxgraph_cache_miss"] == 0
    assert "persistent_rows=2048" in warm["engines"]["sampler"]["engine"]
