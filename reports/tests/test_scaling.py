"""reports/scaling.md from the batch and step sweeps' JSON: the arithmetic, the plateau, the order, the bytes."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from reports.scaling import batch_rows, findings, gpu_memory_gib, step_rows, write_report
from reports.speedup import load_runs

# (recipe, batch) -> (wall ms per call, footprint MiB); fast saturates at batch 2, the baseline grows to 8
BATCHES = {
    ("fast", 1): (480.0, 4000.0), ("fast", 2): (900.0, 4000.0), ("fast", 4): (1830.0, 4100.0),
    ("fast", 8): (3650.0, 4600.0), ("pytorch-fp16-baseline", 1): (2700.0, 5000.0),
    ("pytorch-fp16-baseline", 2): (4900.0, 5800.0), ("pytorch-fp16-baseline", 4): (9000.0, 7400.0),
    ("pytorch-fp16-baseline", 8): (16000.0, 10600.0),
}  # fmt: skip
STEPS = {("fast", 20): 190.0, ("fast", 25): 240.0, ("pytorch-fp16-baseline", 20): 1100.0}


def case(recipe: str, *, batch: int = 1, steps: int = 50, wall: float, footprint: float | None = None) -> dict:
    swept = f"batch{batch}-" if footprint is not None else ""  # only the batch sweep's cases name their batch
    name = f"test_pipeline[{'' if steps == 50 else f'{steps}steps-'}{swept}{recipe}]"
    info = {"recipe": recipe, "protocol": "quick", "steps": steps, "batch": batch, "images": 3 * batch,
            "wall_p50_ms": wall, "step_p50_ms": wall / steps, "uvit_ms": wall - 10.0, "clip_ms": 2.0,
            "decoder_ms": 8.0, "sm_clock_mhz_p50": 1980.0}  # fmt: skip
    if footprint is not None:
        info["footprint_mib"] = footprint
    stats = {"median": wall / 1e3, "min": 0.99 * wall / 1e3, "max": 1.02 * wall / 1e3}
    return {"name": name, "group": "pipeline", "stats": stats, "extra_info": info}


def write(path: Path, benchmarks: list[dict], date: str) -> Path:
    env = {"date": date, "commit": "abc123", "gpu": "NVIDIA H200"}
    path.write_text(json.dumps({"machine_info": {"unidiffuser": env}, "benchmarks": benchmarks}))
    return path


@pytest.fixture
def sweeps(tmp_path) -> list[Path]:
    batch = [case(r, batch=b, wall=w, footprint=f) for (r, b), (w, f) in BATCHES.items()]
    batch[-1]["extra_info"]["nonfinite_images"] = 2
    steps = [case(r, steps=s, wall=w) for (r, s), w in STEPS.items()]
    return [write(tmp_path / "scaling-batch.json", batch, "2026-12-03 21:50 UTC"),
            write(tmp_path / "scaling-steps.json", steps, "2026-12-03 21:58 UTC")]  # fmt: skip


def test_throughput_memory_and_time_per_image_come_from_the_cases(sweeps):
    df, _ = load_runs(sweeps)
    b = batch_rows(df).set_index(["recipe", "batch"])
    assert b.loc[("fast", 4), "images_per_s"] == pytest.approx(4 / 1.83)
    assert b.loc[("fast", 4), "ms_per_image"] == pytest.approx(1830.0 / 4)
    assert b.loc[("fast", 4), "ms_per_image_max"] == pytest.approx(1.02 * 1830.0 / 4)
    assert b.loc[("fast", 8), "footprint_gib"] == pytest.approx(4600 / 1024)
    assert b.loc[("fast", 2), "vs_batch_1"] == pytest.approx((2 / 0.9) / (1 / 0.48))
    # the baseline first: the ladder's order, whatever the files' order
    assert list(batch_rows(df)["recipe"].drop_duplicates()) == ["pytorch-fp16-baseline", "fast"]
    s = step_rows(df).set_index(["recipe", "steps"])
    assert list(s.loc["fast"].index) == [20, 25, 50]  # 50 from the batch sweep's batch-1 case
    assert s.loc[("fast", 50), "ms_per_image"] == 480.0 and s.loc[("fast", 25), "ms_per_step"] == pytest.approx(9.2)
    assert ("fast", 2) not in s.index  # no batch but the first one among the step counts
    assert set(s.index.get_level_values("steps")) == {20, 25, 50}


def test_the_plateau_and_the_memory_per_image(sweeps):
    df, _ = load_runs(sweeps)
    assert findings(batch_rows(df))["largest batch in the GPU's memory"].isna().all()  # the GPU's memory not given
    assert gpu_memory_gib({"gpu_memory": "139.8 GiB"}) == 139.8 and gpu_memory_gib({"gpu": "none (CPU)"}) is None
    fits = findings(batch_rows(df), 139.8).set_index("recipe")["largest batch in the GPU's memory"]
    per_image = (4600 - 4100) / 4 / 1024  # fast: the line through batches 4 and 8
    assert fits["fast"] == 8 + (139.8 - 4600 / 1024) // per_image
    f = findings(batch_rows(df)).set_index("recipe")
    assert f.loc["fast", "best at batch"] == 2 and f.loc["fast", "within 5% of best from batch"] == 2
    assert f.loc["pytorch-fp16-baseline", "best at batch"] == 8
    assert f.loc["pytorch-fp16-baseline", "within 5% of best from batch"] == 8  # batch 4's 0.444 is 11% short of 0.5
    assert f.loc["pytorch-fp16-baseline", "GiB per further image"] == pytest.approx((10600 - 7400) / 4 / 1024)


def test_the_report_gives_the_same_bytes_in_any_order(sweeps, tmp_path):
    first = write_report(sweeps, tmp_path / "a" / "scaling.md")
    again = write_report(sweeps[::-1], tmp_path / "b" / "scaling.md")
    assert first.read_text() == again.read_text()
    assert (tmp_path / "a" / "scaling.png").read_bytes() == (tmp_path / "b" / "scaling.png").read_bytes()
    md = first.read_text()
    # the baseline's NaN images, beside its times; '-' for a case that did not count them
    assert (
        re.search(r"nonfinite_images \|\n", md)
        and "|                  2 |\n" in md
        and "| -                  |\n" in md
    )
    assert md.startswith("# How cost grows") and "![throughput, memory and time per image](scaling.png)" in md
    assert re.search(r"\| commit +\| abc123 +\|", md) and "| scaling-batch.json " in md  # one run, its files named
    with pytest.raises(FileExistsError, match="refusing to replace"):
        write_report(sweeps, first)


def test_files_without_sweeps_are_refused(tmp_path):
    component = {"name": "test_component[clip/eager/fp32]", "group": "clip", "stats": {"median": 0.005},
                 "extra_info": {"case": "clip/eager/fp32", "component": "clip", "p50_ms": 5.0}}  # fmt: skip
    path = write(tmp_path / "bench.json", [component], "2026-12-03 21:50 UTC")
    with pytest.raises(ValueError, match="no pipeline benchmarks.*--bench-batch"):
        write_report([path], tmp_path / "scaling.md")
    assert not (tmp_path / "scaling.md").exists()


def test_sweeps_of_another_commit_are_refused(sweeps, tmp_path):
    data = json.loads(sweeps[1].read_text())
    data["machine_info"]["unidiffuser"]["commit"] = "def456"
    sweeps[1].write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"scaling-steps.json and .*scaling-batch.json are different runs \(commit"):
        write_report(sweeps, tmp_path / "scaling.md")
    assert not (tmp_path / "scaling.md").exists()
