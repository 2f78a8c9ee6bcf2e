"""The benchmark matrix spread over pytest-xdist workers (one GPU each on a GPU machine), and the merged report."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from reports.speedup import load_runs, to_markdown

ROOT = Path(__file__).resolve().parents[2]
COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture(scope="module")
def worker_files(tmp_path_factory):
    pytest.importorskip("xdist", reason="pip install pytest-xdist")
    out = tmp_path_factory.mktemp("spread")
    cmd = [
        sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", str(ROOT / "bench"), "-n", "2",
        "--maxschedchunk", "1", "--bench-xdist", "--benchmark-json", str(out / "bench.json"),
        "--bench-images", str(out / "images"), "-k", "test_component and eager/fp32 or test_pipeline",
    ]  # fmt: skip
    env = {**os.environ, "UNIDIFFUSER_COMMIT": COMMIT}  # as on a machine that receives a copy of the tree
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=1200, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    return sorted(out.glob("bench-gw*.json"))


def test_each_worker_measures_and_writes_its_own_file(worker_files):
    assert [f.name for f in worker_files] == ["bench-gw0.json", "bench-gw1.json"]
    names = [b["name"] for f in worker_files for b in json.loads(f.read_text())["benchmarks"]]
    assert len(names) == len(set(names)) >= 3  # every benchmark once, measured (not disabled)
    assert all(json.loads(f.read_text())["benchmarks"][0]["stats"]["rounds"] >= 1 for f in worker_files)


def test_the_report_merges_the_workers(worker_files):
    df, machine = load_runs(worker_files)
    assert {"clip", "uvit", "decoder", "pipeline"} <= set(df["group"])
    md = to_markdown(df, machine["unidiffuser"])
    assert "| clip + encode_prefix" in md and "PyTorch-FP32 (reference)" in md and "| size    | tiny" in md
    runs = df.attrs["runs"]  # the report names the file each part comes from
    assert list(runs["file"]) == ["bench-gw0.json", "bench-gw1.json"] and "## Runs merged" in md
    assert runs["benchmarks"].sum() == len(df)


def test_every_file_names_one_commit_the_one_given(worker_files):
    for f in worker_files:
        data = json.loads(f.read_text())
        assert data["machine_info"]["unidiffuser"]["commit"] == COMMIT
        assert data["commit_info"]["id"] == COMMIT and data["commit_info"]["source"] == "UNIDIFFUSER_COMMIT"
