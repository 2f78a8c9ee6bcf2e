"""`python -m bench build`: engines built in a new process record their seconds and whether torch's caches served
them; the second process on the same cache folder must be served from it."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest


def build(cache, out) -> dict:
    cmd = [sys.executable, "-m", "bench", "build", "--backend", "inductor", "--precision", "fp32", "--components",
           "clip", "--size", "tiny", "--device", "cpu", "--cache-dir", str(cache), "--json", str(out)]  # fmt: skip
    subprocess.run(cmd, check=True, capture_output=True)
    return json.loads(out.read_text())


@pytest.mark.slow
def test_a_second_process_compiles_from_the_cache_the_first_filled(tmp_path):
    cache = tmp_path / "cache"
    fresh = build(cache, tmp_path / "fresh.json")
    assert fresh["cache_dir"] == str(cache.resolve())
    assert fresh["cache"]["fxgraph_cache_miss"] >= 1 and fresh["cache"]["fxgraph_cache_hit"] == 0
    assert fresh["engines"]["clip"]["engine"] == "clip/inductor/fp32" and fresh["engines"]["clip"]["compile_s"] > 0
    assert (cache / "fxgraph").is_dir()
    warm = build(cache, tmp_path / "warm.json")
    assert warm["cache"]["fxgraph_cache_hit"] >= 1 and warm["cache"]["fxgraph_cache_miss"] == 0
    with pytest.raises(subprocess.CalledProcessError):  # the result file is the user's: never overwritten unasked
        build(cache, tmp_path / "warm.json")
