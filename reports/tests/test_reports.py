"""Reports from real results: a small accuracy run made here, turned into markdown and a plot."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from reports.accuracy import load, summary, write_report
from reports.common import check_writable

ROOT = Path(__file__).resolve().parents[2]


def run_suite(suite: str, out: Path, *args: str) -> subprocess.CompletedProcess:
    """`suite` in a pytest of its own, its results and accuracy report written to `out`."""
    cmd = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", str(ROOT / suite), *args,
           "--results-dir", str(out), "--accuracy-report", str(out / "accuracy.md")]  # fmt: skip
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=1200)


@pytest.fixture(scope="module")
def accuracy_results(tmp_path_factory):
    out = tmp_path_factory.mktemp("acc")
    proc = run_suite("reference/tests/test_accuracy.py", out, "-k", "clip")
    assert proc.returncode == 0, proc.stdout[-3000:]
    return out


def test_the_suite_writes_the_report_and_its_plot(accuracy_results):
    md = (accuracy_results / "accuracy.md").read_text()
    assert md.startswith("# Layer-wise accuracy") and "| weights | random (trained-like init, seed 0)" in md
    assert "| clip/eager/fp32 " in md and "![relative L2 error by mark](accuracy.png)" in md
    assert (accuracy_results / "accuracy.png").read_bytes()[:4] == b"\x89PNG"


def test_summary_names_status_and_first_failure(accuracy_results):
    tables, env = load(sorted(accuracy_results.glob("accuracy-*.json")))
    s = summary(tables).set_index("engine")
    assert s.loc["clip/eager/fp32", "status"] == "pass" and s.loc["clip/eager/fp32", "first failing mark"] == "-"
    assert env["weights"] == "random (trained-like init, seed 0)"
    rows = tables["rows"]
    assert set(rows.loc[rows["engine"] == "clip/eager/bf16", "status"]) == {"pass"}
    assert s.loc["clip/eager/bf16", "output rel L2"] != "-"


def test_reports_never_overwrite_unasked(accuracy_results, tmp_path):
    with pytest.raises(FileExistsError, match="refusing to replace"):
        check_writable(accuracy_results / "accuracy.md", overwrite=False)
    out = write_report(sorted(accuracy_results.glob("accuracy-*.json")), tmp_path / "a.md")
    assert out.exists() and (tmp_path / "a.png").exists()


def test_a_merged_report_lists_its_runs(accuracy_results, tmp_path):
    import json

    first = sorted(accuracy_results.glob("accuracy-*.json"))[0]
    data = json.loads(first.read_text())
    data["env"]["date"] = "2099-01-01 00:00 UTC"  # a later part of the same run
    second = tmp_path / "accuracy-later.json"
    second.write_text(json.dumps(data))
    md = write_report([first, second], tmp_path / "m.md").read_text()
    (tmp_path / "r").mkdir()
    assert write_report([second, first], tmp_path / "r" / "m.md").read_text() == md  # the order given is irrelevant
    assert (tmp_path / "r" / "m.png").read_bytes() == (tmp_path / "m.png").read_bytes()
    assert "this report merges these runs" in md
    assert f"| {first.name} " in md and "| accuracy-later.json " in md and "2099-01-01" in md


@pytest.mark.parametrize("key", ["commit", "gpu", "torch", "weights", "size"])
def test_files_of_different_runs_make_no_report(accuracy_results, tmp_path, key):
    import json

    first = sorted(accuracy_results.glob("accuracy-*.json"))[0]
    data = json.loads(first.read_text())
    data["env"][key] = "another"
    other = tmp_path / "accuracy-other.json"
    other.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=rf"accuracy-other.json and .*{first.name} are different runs \({key}: "):
        write_report([first, other], tmp_path / "m.md")
    assert not (tmp_path / "m.md").exists()


def test_build_times_are_set_against_their_targets():
    import pandas as pd

    from reports.speedup import build_from_caches

    rows = [
        {"group": "build", "recipe": "fast", "caches": "fresh", "build_s": 130.0, "model_load_s": 25.0,
         "clip_compile_s": 14.0, "sampler_step_compile_s": 80.0, "fxgraph_cache_hit": 0, "fxgraph_cache_miss": 3,
         "phase_trace_s": 6.0, "phase_cache_load_s": None},
        {"group": "build", "recipe": "fast", "caches": "warm", "build_s": 9.5, "model_load_s": 25.0,
         "clip_compile_s": 1.0, "sampler_step_compile_s": 4.0, "fxgraph_cache_hit": 3, "fxgraph_cache_miss": 0,
         "phase_trace_s": 5.0, "phase_cache_load_s": 2.0},
        {"group": "clip", "case": "clip/eager/fp32", "p50_ms": 1.0},
    ]  # fmt: skip
    table = build_from_caches(pd.DataFrame(rows))
    assert list(table.index) == ["fast, fresh caches", "fast, warm caches"]
    # one warm run under its target is not a result: three are, their median under it
    assert list(table["target_s"]) == [90.0, 10.0] and list(table["met"]) == ["no", "not shown: 1 of 3 runs"]
    assert "model_load_s" not in table and {"clip_compile_s", "sampler_step_compile_s"} <= set(table)
    # each engine's seconds, then the compile phases of the whole process
    seconds = [c for c in table if c.endswith("_s") and c not in ("target_s", "median_s", "build_s")]
    assert seconds == ["clip_compile_s", "sampler_step_compile_s", "phase_cache_load_s", "phase_trace_s"]
    assert build_from_caches(pd.DataFrame(rows[2:])).empty
    three = pd.DataFrame(rows[:2] + [{**rows[1], "build_s": 8.0}, {**rows[1], "build_s": 12.0}])
    table = build_from_caches(three)
    assert list(table["met"]) == ["no", "yes", "yes", "yes"] and set(table["median_s"][1:]) == {9.5}
    assert (
        list(build_from_caches(pd.DataFrame([*rows[:2], {**rows[1], "build_s": 9.0}]))["met"][1:])
        == ["not shown: 2 of 3 runs"] * 2
    )


def test_each_target_points_at_the_profile_of_its_recipes_engine(tmp_path):
    import pandas as pd

    from engines.recipes import recipe
    from reports.common import env_header
    from reports.profiles import engine_id, index
    from reports.speedup import against_targets, speedup_table

    assert engine_id("clip/inductor/fp16/graph+qkv=stacked,attention=triton") == engine_id(
        "clip/inductor/fp16/graph+attention=triton,qkv=stacked"
    )
    assert engine_id("decoder/inductor/fp16+groupnorm=split") is None and engine_id("fast") is None  # retired; a recipe
    fast = recipe("fast").builds
    profiles = {  # file: (date, engine); the decoder is profiled twice, the later one counts
        "profile-decoder-old.md": ("2026-11-23 10:00 UTC", fast["decoder"].id),
        "profile-decoder-new.md": ("2026-11-24 04:00 UTC", fast["decoder"].id),
        "profile-decoder-split.md": ("2026-11-25 04:00 UTC", "decoder/inductor/fp16/graph+groupnorm=split"),
        "profile-uvit.md": ("2026-11-24 04:00 UTC", fast["uvit"].id),
    }  # fmt: skip
    for name, (date, engine) in profiles.items():
        (tmp_path / name).write_text(env_header("Profile", {"date": date, "engine": engine}) + "\nbody\n")
    found = index(tmp_path)
    assert sorted(found.values()) == ["profile-decoder-new.md", "profile-uvit.md"]
    df = pd.DataFrame(speedup_rows())
    got = against_targets(df, speedup_table(df), found, also={"uvit": "ceilings-uvit.md"})["where the time goes"]
    stages = "[stages](#pipeline-stages-gpu-ms-per-image-medians)"
    assert got["fast: decoder"] == "[profile-decoder-new.md](profile-decoder-new.md)"
    assert (
        got["fast: uvit (one guided step)"]
        == "[profile-uvit.md](profile-uvit.md); [ceilings-uvit.md](ceilings-uvit.md)"
    )
    assert (
        got["fast: pipeline"] == f"{stages}; [profile-uvit.md](profile-uvit.md); [ceilings-uvit.md](ceilings-uvit.md)"
    )
    assert (
        got["fast: clip + encode_prefix"] == "-"
        and got["fast-fp8: pipeline"] == f"{stages}; [ceilings-uvit.md](ceilings-uvit.md)"
    )


def test_every_profile_is_listed_with_the_recipes_that_build_its_engine(tmp_path):
    import json

    from engines.recipes import recipe
    from reports.common import env_header
    from reports.speedup import profile_list, write_report

    fast, fp8 = recipe("fast"), recipe("fast-fp8")
    profiles = {fast.builds["clip"].id: "profile-fast-clip.md", fast.builds["uvit"].id: "profile-fast-uvit.md",
                fp8.builds["uvit"].id: "profile-fast-fp8-uvit.md", "uvit/eager/bf16": "profile-bf16.md"}  # fmt: skip
    table = profile_list(profiles).set_index("profile")
    assert list(table.index) == [f"[{n}]({n})" for n in sorted(profiles.values())]
    clip_recipes = table.loc["[profile-fast-clip.md](profile-fast-clip.md)", "recipes"]
    assert clip_recipes == "fast, fast-fp8, fast-bf16, torchao-fp8, sageattention"
    assert table.loc["[profile-fast-uvit.md](profile-fast-uvit.md)", "recipes"] == "fast"
    assert table.loc["[profile-bf16.md](profile-bf16.md)", "recipes"] == "-"
    # the report beside the profiles lists them all
    (tmp_path / "profile-bf16.md").write_text(env_header("Profile", {"engine": "uvit/eager/bf16"}))
    peak = {"name": "test_matmul_peak[fp16]", "group": "peak", "stats": {"median": 1.0},
            "extra_info": {"precision": "float16", "tflops": 700.0}}  # fmt: skip
    (tmp_path / "bench.json").write_text(json.dumps({"machine_info": {}, "benchmarks": [peak]}))
    md = write_report([tmp_path / "bench.json"], tmp_path / "speedup.md").read_text()
    assert "## Kernel profiles" in md and "| [profile-bf16.md](profile-bf16.md) | `uvit/eager/bf16` | -" in md


def test_clocks_are_listed_for_the_runs_that_sampled_them():
    import pandas as pd

    from reports.speedup import clocks

    rows = [
        {"name": "test_component[uvit]", "clock_samples": 40, "sm_clock_mhz_p50": 1755.0, "sm_clock_mhz_min": 1650.0,
         "power_w_p50": 690.0},
        {"name": "test_component[clip-cpu]", "clock_samples": 0, "clock_note": "not a CUDA device"},
        {"name": "test_component[old-run]"},  # a JSON from before clocks were sampled
    ]  # fmt: skip
    table = clocks(pd.DataFrame(rows))
    assert list(table.index) == ["test_component[uvit]"] and table.loc["test_component[uvit]", "power_w_p50"] == 690
    assert clocks(pd.DataFrame(rows[2:])).empty
    assert clocks(pd.DataFrame(rows[1:])).empty  # a CPU run: samples counted, none taken
    assert "protocol" not in table
    pipes = [{"name": "test_pipeline[fast]", "protocol": p, "clock_samples": n, "sm_clock_mhz_p50": mhz}
             for p, n, mhz in (("quick", 40, 1830.0), ("seed", 400, 1740.0))]  # fmt: skip
    table = clocks(pd.DataFrame(rows + pipes))
    assert list(table["protocol"]) == ["-", "quick", "seed"] and list(table["sm_clock_mhz_p50"])[1:] == [1830, 1740]


def test_an_engine_timed_in_several_builds_shows_their_spread_and_median(tmp_path):
    import json

    from reports.speedup import load_runs

    def run(name: str, decoder_ms: float) -> Path:
        benchmarks = [
            {"name": "test_component[decoder-x]", "group": "decoder", "stats": {"median": decoder_ms / 1e3},
             "extra_info": {"case": "decoder-x", "p50_ms": decoder_ms}},
            {"name": f"test_component[clip-{name}]", "group": "clip", "stats": {"median": 1e-3},
             "extra_info": {"case": f"clip-{name}", "p50_ms": 1.0}},
        ]  # fmt: skip
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps({"machine_info": {}, "benchmarks": benchmarks}))
        return path

    df, _ = load_runs([run("first", 5.7), run("second", 5.3), run("third", 5.2)])
    spread = df.attrs["rebuilds"]
    assert list(spread.index) == ["decoder-x"]  # the clip cases differ by name: one build each
    row = spread.loc["decoder-x"]
    assert (row["builds"], row["min ms"], row["median ms"], row["max ms"]) == (3, 5.2, 5.3, 5.7)
    assert row.iloc[-1] == "5.700 (first.json), 5.300 (second.json), 5.200 (third.json)"
    assert df.set_index("case").loc["decoder-x", "p50_ms"] == 5.3  # the builds' median, not the last file's 5.2
    assert df.set_index("case").loc["clip-third", "p50_ms"] == 1.0
    assert load_runs([run("alone", 5.0)])[0].attrs["rebuilds"].empty


def test_every_build_run_is_listed_with_its_file(tmp_path):
    import json

    from reports.speedup import build_from_caches, load_runs, write_report

    def run(name: str, warm_s: float, **newer) -> Path:
        benchmarks = [
            {"name": f"test_build[fast-{c}]", "group": "build", "stats": {"median": s},
             "extra_info": {"recipe": "fast", "caches": c, "build_s": s, "fxgraph_cache_hit": int(c == "warm"),
                            "fxgraph_cache_miss": int(c == "fresh"), **newer}}
            for c, s in (("fresh", 80.0), ("warm", warm_s))
        ]  # fmt: skip
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps({"machine_info": {}, "benchmarks": benchmarks}))
        return path

    df, _ = load_runs([run("one", 16.5), run("two", 9.0), run("three", 8.0)])
    table = build_from_caches(df.attrs["builds"])
    assert list(table.index) == ["fast, fresh caches (one.json)", "fast, warm caches (one.json)",
                                 "fast, fresh caches (three.json)", "fast, warm caches (three.json)",
                                 "fast, fresh caches (two.json)", "fast, warm caches (two.json)"]  # fmt: skip
    assert list(table["met"]) == ["yes", "yes"] * 3  # the warm median, 9.0 s, beats 10 s whatever one run's 16.5 s
    assert len(build_from_caches(df)) == 2  # the merged rows keep the last run of each
    # a column is explained where the runs recorded it, and only there
    old = write_report([run("old", 9.0)], tmp_path / "old.md").read_text()
    assert "Every run given is listed" in old and "`phase_*`" not in old and "`python_bytecode`" not in old
    new = write_report([run("new", 9.0, phase_trace_s=2.0)], tmp_path / "new.md").read_text()
    assert "`phase_*`: where the process's compiles went" in new and "`python_bytecode`" not in new


def test_the_same_benchmark_files_in_any_order_give_the_same_report(tmp_path):
    """Two runs that both measured the matmul peak: the later-dated one's wins, whichever file is given first."""
    import json

    from reports.speedup import write_report

    def run(name: str, date: str, tflops: float) -> Path:
        peak = {"name": "test_matmul_peak[fp16]", "group": "peak", "stats": {"median": 1.0},
                "extra_info": {"precision": "float16", "tflops": tflops}}  # fmt: skip
        component = {"name": f"test_component[{name}]", "group": "clip", "stats": {"median": 1e-3},
                     "extra_info": {"case": name, "component": "clip", "p50_ms": 1.0, "flops": 1e10}}  # fmt: skip
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps({"machine_info": {"unidiffuser": {"date": date}}, "benchmarks": [peak, component]}))
        return path

    early, late = run("b-early", "2026-11-23 10:00 UTC", 722.0), run("a-late", "2026-11-24 10:00 UTC", 740.0)
    one = write_report([early, late], tmp_path / "one.md").read_text()
    assert write_report([late, early], tmp_path / "two.md").read_text() == one
    assert "measured fp16 matmul peak 740 TFLOP/s" in one


def test_times_and_verdicts_of_different_runs_make_no_speedup_report(accuracy_results, tmp_path):
    """Benchmark files of two GPUs, or image and accuracy verdicts of another run than the times beside them, are
    refused, each naming the files and what differs; a user's existing report stays as it was."""
    import json

    from reports.speedup import write_report

    env = json.loads(sorted(accuracy_results.glob("accuracy-*.json"))[0].read_text())["env"]

    def run(name: str, **changed: str) -> Path:
        component = {"name": f"test_component[{name}]", "group": "clip", "stats": {"median": 1e-3},
                     "extra_info": {"case": name, "component": "clip", "p50_ms": 1.0, "flops": 1e10}}  # fmt: skip
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps({"machine_info": {"unidiffuser": {**env, **changed}}, "benchmarks": [component]}))
        return path

    out = tmp_path / "speedup.md"
    out.write_text("kept")
    with pytest.raises(ValueError, match=r"h100.json and .*h200.json are different runs \(gpu: 'NVIDIA H100' "):
        write_report([run("h200"), run("h100", gpu="NVIDIA H100", date="2099-01-01 00:00 UTC")], out, overwrite=True)
    accuracy = sorted(accuracy_results.glob("accuracy-*.json"))
    with pytest.raises(ValueError, match=r"accuracy-.*json and .*later.json are different runs \(commit: "):
        write_report([run("later", commit="f" * 40)], out, overwrite=True, accuracy=accuracy)
    quality = tmp_path / "quality.json"
    quality.write_text(json.dumps({"env": {**env, "weights": "/ckpt"}, "comparisons": []}))
    with pytest.raises(ValueError, match=r"quality.json and .*same.json are different runs \(weights: '/ckpt' "):
        write_report([run("same")], out, overwrite=True, accuracy=accuracy, quality=quality)
    assert out.read_text() == "kept"
    assert write_report([run("same")], out, overwrite=True, accuracy=accuracy).read_text() != "kept"


def test_a_protocol_run_alone_makes_a_report(tmp_path):
    """The seed's protocol (`--bench-protocol seed`) times the pipeline only: no component, no peak."""
    import json

    from reports.speedup import write_report

    pipeline = {"name": "test_pipeline[fast]", "group": "pipeline", "stats": {"median": 0.474},
                "extra_info": {"recipe": "fast", "protocol": "seed", "images": 40, "clip_ms": 0.54, "uvit_ms": 466.9,
                               "step_p50_ms": 9.34, "decoder_ms": 4.81, "wall_p50_ms": 474.2, "peak_mib": 6631.2,
                               "flops": 2.35e14}}  # fmt: skip
    path = tmp_path / "bench-seed-fast.json"
    path.write_text(json.dumps({"machine_info": {}, "benchmarks": [pipeline]}))
    md = write_report([path], tmp_path / "speedup.md").read_text()
    assert "| pipeline               | -              |" in md and "| 474.200 |" in md
    assert "| fast     | seed       |       40 |" in md


def test_the_seed_protocol_and_the_quick_one_both_stay_and_the_table_takes_the_seeds(tmp_path):
    """The two protocols time the same test; whichever file is later, neither hides the other."""
    import json

    from reports.speedup import write_report

    def run(protocol: str, date: str, wall: float) -> Path:
        pipeline = {"name": "test_pipeline[fast]", "group": "pipeline", "stats": {"median": wall / 1e3},
                    "extra_info": {"recipe": "fast", "protocol": protocol, "images": 40 if protocol == "seed" else 4,
                                   "wall_p50_ms": wall}}  # fmt: skip
        path = tmp_path / f"bench-{protocol}.json"
        path.write_text(json.dumps({"machine_info": {"unidiffuser": {"date": date}}, "benchmarks": [pipeline]}))
        return path

    for seed_date, quick_date in (("2026-12-03 10:00 UTC", "2026-12-03 11:00 UTC"),
                                  ("2026-12-03 11:00 UTC", "2026-12-03 10:00 UTC")):  # fmt: skip
        files = [run("seed", seed_date, 474.2), run("quick", quick_date, 479.0)]
        md = write_report(files, tmp_path / "speedup.md", overwrite=True).read_text()
        time = md.split("## Time (ms)")[1].split("##")[0]
        assert "| 474.200 |" in time and "479.000" not in time
        stages = md.split("## Pipeline stages")[1].split("##")[0]
        assert stages.index("| fast     | seed       |       40 |") < stages.index(
            "| fast     | quick      |        4 |"
        )


def test_other_step_counts_are_listed_apart_and_the_time_table_keeps_50(tmp_path):
    """`--bench-steps 20,50`: the 20-step runs are faster, yet the seed's table is at 50 steps, and a recipe timed at 20
    steps alone has no time there. A batch of 4 (reports/scaling.md's) is in neither table."""
    import json

    from reports.speedup import write_report

    def pipeline(recipe: str, steps: int, wall: float, batch: int = 1) -> dict:
        name = f"test_pipeline[{recipe}]" if steps == 50 else f"test_pipeline[{steps}steps-{recipe}]"
        name = name if batch == 1 else name.replace("[", f"[batch{batch}-")
        info = {"recipe": recipe, "protocol": "quick", "images": 3, "steps": steps, "wall_p50_ms": wall, "batch": batch}
        return {"name": name, "group": "pipeline", "stats": {"median": wall / 1e3}, "extra_info": info}

    runs = [pipeline("fast", 50, 1810.0, batch=4), pipeline("fast", 50, 476.0), pipeline("fast", 20, 191.0),
            pipeline("fast-fp8", 20, 150.0)]  # fmt: skip
    path = tmp_path / "bench-steps.json"
    path.write_text(json.dumps({"machine_info": {}, "benchmarks": runs}))
    md = write_report([path], tmp_path / "speedup.md").read_text()
    time = md.split("## Time (ms)")[1].split("##")[0]
    assert "| 476.000 |" in time and "191.000" not in time and "150.000" not in time and "1,810" not in time
    stages = md.split("## Pipeline stages")[1].split("##")[0]
    assert "1810" not in stages
    assert "| recipe   | protocol   |   steps |   images |" in stages
    assert stages.index("| fast     | quick      |      50 |") < stages.index("| fast     | quick      |      20 |")
    assert "| fast-fp8 | quick      |      20 |" in stages


def speedup_rows(fast_uvit_ms: float = 10.0) -> list[dict]:
    """Component benchmarks of two recipes, as pytest-benchmark's JSON gives them to load_runs."""
    from engines.recipes import LADDER

    base, fast = (next(r for r in LADDER if r.name == n) for n in ("pytorch-fp16-baseline", "fast"))
    rows = []
    for recipe, ms in ((base, {"clip": 4.0, "uvit": 100.0, "decoder": 50.0}),
                     (fast, {"clip": 1.0, "uvit": fast_uvit_ms, "decoder": 5.0})):  # fmt: skip
        for c, b in recipe.builds.items():
            rows.append({"name": f"test_component[{b.id}]", "group": c, "case": b.id, "component": c,
                         "p50_ms": ms[c], "flops": {"clip": 1e10, "uvit": 4.66e12, "decoder": 2.5e12}[c]})  # fmt: skip
    rows.append({"name": "test_matmul_peak[fp16]", "group": "peak", "precision": "float16", "tflops": 800.0})
    return rows


def test_the_speedup_table_takes_the_fastest_and_divides_the_baseline_by_each():
    import pandas as pd

    from reports.speedup import efficiency, speedup_table, speedups

    df = pd.DataFrame(speedup_rows())
    table = speedup_table(df)
    assert table.loc["uvit", "best measured"] == 10.0
    assert table.loc["uvit", "best configuration"].startswith("uvit/inductor/fp16/graph")
    sp = speedups(table)
    assert sp.loc["uvit", "fast"] == pytest.approx(10.0)  # 100 ms / 10 ms
    assert sp.loc["uvit", "pytorch-fp16-baseline"] == pytest.approx(1.0)
    eff, peak = efficiency(df, table)
    assert peak == 800.0
    # 4.66 TFLOP in 10 ms: 466 TFLOP/s, 58% of the 800 TFLOP/s peak
    assert eff.loc["uvit TFLOP/s", "fast"] == pytest.approx(466.0)
    assert eff.loc["uvit share of peak", "fast"] == pytest.approx(466.0 / 800.0)


def test_an_engine_is_held_to_the_floor_of_its_own_precision():
    """`share of its floor`: an FP8 U-ViT against its linears at the FP8 peak (not the fp16 one it may beat), a bf16
    one against the bf16 peak; none for fp32, whose peak is not measured."""
    import pandas as pd

    from engines.recipes import LADDER
    from reports.speedup import efficiency, speedup_table

    rows = speedup_rows()
    for name, ms in (("fast-fp8", 5.0), ("fast-bf16", 9.0)):
        uvit = next(r for r in LADDER if r.name == name).builds["uvit"]
        kinds = {"linear": 4.19e12, "attention": 0.47e12}
        rows.append({"name": f"test_component[{uvit.id}]", "group": "uvit", "case": uvit.id, "component": "uvit",
                     "p50_ms": ms, "flops": 4.66e12, "flops_by_kind": kinds})  # fmt: skip
    rows += [{"name": f"test_matmul_peak[{p}]", "group": "peak", "precision": p, "tflops": t}
             for p, t in (("bfloat16", 820.0), ("float8_e4m3fn", 1600.0))]  # fmt: skip
    df = pd.DataFrame(rows)
    eff, _ = efficiency(df, speedup_table(df))
    share = eff.loc["uvit share of its floor"]
    fp8_floor = 4.19e12 / 1600e12 * 1e3 + 0.47e12 / 800e12 * 1e3
    assert eff.loc["uvit share of peak", "fast-fp8"] == pytest.approx(4.66e12 / 5e-3 / 800e12)  # 117% of fp16's
    assert share["fast-fp8"] == pytest.approx(fp8_floor / 5.0) and share["best measured"] == share["fast-fp8"]
    assert share["fast-bf16"] == pytest.approx(4.66e12 / 820e12 * 1e3 / 9.0)
    assert share["fast"] == pytest.approx(466.0 / 800.0)
    assert pd.isna(eff.loc["decoder share of its floor", "pytorch-fp16-baseline"])  # its decoder runs fp32


def test_a_target_is_met_by_repeated_runs_of_a_recipe_whose_images_pass(tmp_path):
    """Two seed-protocol runs of fast under 390 ms meet its target, one does not; fast-fp8 under 260 ms with images
    that fail does not; a figure over its target is a miss with its FLOP floor beside it."""
    import json

    import pandas as pd

    from reports.speedup import against_targets, image_verdicts, load_runs, speedup_table

    def run(name: str, date: str, fast_ms: float) -> Path:
        pipes = [{"name": f"test_pipeline[{r}]", "group": "pipeline", "stats": {"median": ms / 1e3},
                  "extra_info": {"recipe": r, "protocol": "seed", "steps": 50, "wall_p50_ms": ms}}
                 for r, ms in (("fast", fast_ms), ("fast-fp8", 250.0))]  # fmt: skip
        comps = [{"name": r["name"], "group": r["group"], "stats": {"median": 0.001}, "extra_info": r}
                 for r in speedup_rows()]  # fmt: skip
        path = tmp_path / name
        path.write_text(json.dumps({"machine_info": {"unidiffuser": {"date": date}}, "benchmarks": pipes + comps}))
        return path

    quality = {"comparisons": [{"candidate": "results/images/fast", "verdict": "pass"},
                               {"candidate": "results/images/fast-fp8", "verdict": "FAIL"}]}  # fmt: skip
    verdicts = image_verdicts(quality)
    assert verdicts["pytorch-fp32"] == "reference" and verdicts["inductor-fp16"] == "not judged"
    one = run("one.json", "2026-12-03 10:00 UTC", 385.0)
    df, _ = load_runs([one])
    t = against_targets(df, speedup_table(df), verdicts=verdicts)
    assert t.loc["fast: pipeline", "met"] == "not shown: 1 of 2 runs" and t.loc["fast: pipeline", "spread"] == "-"
    assert t.loc["fast-fp8: pipeline", "met"] == "no: images FAIL"
    assert t.loc["fast: uvit (one guided step)", "met"] == "no"  # 10 ms, over 7.5
    assert t.loc["fast: uvit (one guided step)", "FLOP floor ms"] == pytest.approx(4.66e12 / 800e12 * 1e3)
    assert pd_isna(t.loc["fast-fp8: uvit (one guided step)", "FLOP floor ms"])  # no FP8 matmul peak measured
    with_fp8 = df.copy()  # the FP8 peak, and the step's FLOPs by kind as bench_components.py records them
    with_fp8 = pd.concat([with_fp8, pd.DataFrame([{"name": "test_matmul_peak[fp8]", "group": "peak",
                                                   "precision": "float8_e4m3fn", "tflops": 1600.0}])])  # fmt: skip
    kinds = {"linear": 4.19e12, "attention": 0.47e12}
    with_fp8["flops_by_kind"] = [kinds if g == "uvit" else None for g in with_fp8["group"]]
    floor = against_targets(with_fp8, speedup_table(with_fp8)).loc["fast-fp8: uvit (one guided step)", "FLOP floor ms"]
    assert floor == pytest.approx(4.19e12 / 1600e12 * 1e3 + (4.66e12 - 4.19e12) / 800e12 * 1e3)
    df, _ = load_runs([run("two.json", "2026-12-03 11:00 UTC", 380.0), one])
    t = against_targets(df, speedup_table(df), verdicts=verdicts)
    assert t.loc["fast: pipeline", "met"] == "yes" and t.loc["fast: pipeline", "runs"] == 2
    assert t.loc["fast: pipeline", "spread"] == "380.000-385.000" and t.loc["fast: pipeline", "ms"] == 382.5
    assert speedup_table(df).loc["pipeline", "fast"] == 382.5  # the time table's figure is the same median
    assert against_targets(df, speedup_table(df)).loc["fast-fp8: pipeline", "met"] == "yes"  # without image verdicts
    engines = {"fast": "FAIL (uvit)", "fast-fp8": "pass"}  # an engine of fast fails mark by mark
    t = against_targets(df, speedup_table(df), verdicts=verdicts, accuracy=engines)
    assert (
        t.loc["fast: pipeline", "met"] == "no: accuracy FAIL (uvit)"
        and t.loc["fast: pipeline", "accuracy"] == engines["fast"]
    )


def test_the_engines_timed_again_for_their_targets_are_the_targets_engines():
    """.ci/gpu-reports builds these three times, as a component target needs: fast's three and fast-fp8's U-ViT
    (its CLIP and decoder are fast's), each once."""
    from engines.recipes import recipe
    from reports.speedup import target_engines

    fast, fp8 = recipe("fast").builds, recipe("fast-fp8").builds
    assert sorted(target_engines()) == sorted([fast["clip"].id, fast["uvit"].id, fast["decoder"].id, fp8["uvit"].id])
    assert len(set(target_engines())) == len(target_engines())


def test_a_recipe_passes_its_accuracy_verdict_when_every_engine_it_builds_passes():
    import pandas as pd

    from engines.recipes import recipe
    from reports.speedup import accuracy_verdicts

    fast, fp8 = recipe("fast").builds, recipe("fast-fp8").builds
    rows = [(b.id, "pass") for b in fast.values()] + [(fp8["uvit"].id, "FAIL")]
    got = accuracy_verdicts(pd.DataFrame(rows, columns=["engine", "status"]))
    assert got["fast"] == "pass"
    assert got["fast-fp8"] == "FAIL (uvit)"  # its CLIP and decoder are fast's, which pass
    assert got["pytorch-fp32"] == "not judged (clip, uvit, decoder)"
    unverifiable = rows[:2] + [(fast["decoder"].id, "unverifiable")]
    assert (
        accuracy_verdicts(pd.DataFrame(unverifiable, columns=["engine", "status"]))["fast"] == "unverifiable (decoder)"
    )


def pd_isna(value: object) -> bool:
    import pandas as pd

    return bool(pd.isna(value))


def test_rows_of_a_run_made_again_count_once(tmp_path):
    """A fault-matrix run cut short and made again at the same commit: each fault and each clean build appears once
    in the matrix and the alarm count, the later run's row winning."""
    import json

    def write(name, date, caught):
        fault = {"component": "clip", "fault": "heads", "position": "early", "target": "t", "expected": "m",
                 "precision": "fp16", "engine": "e", "effect": 1.0, "bound": 0.01, "cap": 0.05,
                 "class": "must catch", "first_failing_mark": "m" if caught else "-", "caught": caught,
                 "clean_alarm": "-"}  # fmt: skip
        clean = {"component": "clip", "seed": 0, "precision": "fp16", "engine": "e", "runs": 2, "alarms": 0}
        (tmp_path / name).write_text(json.dumps({"env": {"date": date}, "faults": [fault], "clean": [clean]}))
        return tmp_path / name

    md = write_report([write("b.json", "2026-12-03 04:07", True), write("a.json", "2026-12-03 03:59", False)],
                      tmp_path / "f.md").read_text()  # fmt: skip
    assert "over 1 weight seeds and 2 runs: 0 alarms" in md
    assert "| must catch | True     |        1 |" in md and "False" not in md.split("## Fault matrix")[1]


def test_engines_of_a_run_made_again_are_summarised_once(accuracy_results, tmp_path):
    import json

    first = sorted(accuracy_results.glob("accuracy-*.json"))[0]
    data = json.loads(first.read_text())
    data["env"]["date"] = "9999-12-31 00:00 UTC"  # the later run
    again = tmp_path / "accuracy-again.json"
    again.write_text(json.dumps(data))
    tables, _ = load([first, again])
    engines = summary(tables)["engine"]
    assert len(engines) == len(set(engines)) == len({r["engine"] for r in data["engines"]})
    assert len(tables["perturbation"]) == len({r["engine"] for r in data["perturbation"]})


def test_the_reports_import_without_torch_or_any_layer_below():
    """reports/ reads JSON; the engine ids and recipes it needs come from the torch-free engines.spec and
    engines.recipes. Run in a fresh interpreter where importing torch fails."""
    import subprocess
    import sys

    code = (
        "import sys; sys.modules['torch'] = None\n"
        "import reports.accuracy, reports.pd, reports.speedup, reports.profiles\n"
        "loaded = sorted({m.split('.')[0] for m in sys.modules} & {'bench', 'reference', 'plugin', 'pytest'})\n"
        "assert not loaded, loaded\n"
        "assert sorted(m for m in sys.modules if m.startswith('engines.')) == ['engines.recipes', 'engines.spec']\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_a_test_that_dies_before_adding_rows_is_reported_failed(tmp_path):
    import json

    from reports.accuracy import outcomes

    proc = run_suite("reports/tests/suite_outcomes.py", tmp_path)
    assert proc.returncode == 1, proc.stdout[-3000:]
    md = (tmp_path / "accuracy.md").read_text()
    assert "1 passed, 1 failed, 1 skipped" in md
    died = "| reports/tests/suite_outcomes.py::test_dies_before_adding_rows | call"
    assert f"{died}    | RuntimeError: CUDA out of memory. Tried to allocate 72.00 MiB \\| 5.56 MiB free |" in md
    # made again, and passing: the later outcome stands
    first = next(tmp_path.glob("accuracy-*.json"))
    data = json.loads(first.read_text())
    data["env"]["date"] = "2999-01-01 00:00 UTC"
    data["tests"] = [{**t, "outcome": "passed", "reason": ""} for t in data["tests"] if "dies" in t["test"]]
    again = tmp_path / "accuracy-again.json"
    again.write_text(json.dumps(data))
    assert "2 passed, 0 failed, 1 skipped" in write_report([again, first], tmp_path / "m.md").read_text()
    assert "Not recorded" in outcomes(None)


def test_a_run_never_replaces_the_results_of_another_run_of_its_minute(tmp_path):
    """Results are named by the minute a run starts: where an earlier run of that minute (a stage resumed, a part of
    a suite) wrote the name, the new run writes beside it."""
    import json
    from datetime import datetime, timedelta, timezone

    now = datetime.now(timezone.utc)
    taken = {}
    for minutes in range(3):  # every name the run below may start in
        path = tmp_path / f"accuracy-{(now + timedelta(minutes=minutes)):%Y-%m-%d_%H%M}_UTC.json"
        path.write_text(json.dumps({"env": {}, "rows": [], "kept": minutes}))
        taken[path] = path.read_text()
    run_suite("reports/tests/suite_outcomes.py", tmp_path)
    assert {p: p.read_text() for p in taken} == taken
    (new,) = set(tmp_path.glob("accuracy-*.json")) - set(taken)
    assert new.name.endswith("_UTC-2.json") and len(json.loads(new.read_text())["tests"]) == 3


def test_free_path_counts_past_every_name_taken(tmp_path):
    from reports.common import free_path

    assert free_path(tmp_path, "a") == tmp_path / "a.json"
    for name in ("a.json", "a-2.json", "a-3.json"):
        (tmp_path / name).write_text("{}")
    assert free_path(tmp_path, "a") == tmp_path / "a-4.json"
    assert free_path(tmp_path, "a", ".md") == tmp_path / "a.md"


def test_the_committed_reports_are_made_from_the_committed_data(tmp_path):
    """reports/speedup.md and reports/scaling.md are what `python -m reports` makes of reports/data/, byte for byte,
    beside the profiles and the scaling report they link to: never edited by hand, never stale."""
    import shutil

    from reports import scaling, speedup

    here = ROOT / "reports"
    data = here / "data"
    for name in [p.name for p in here.glob("profile-*.md")] + [speedup.CEILINGS, speedup.SCALING]:
        shutil.copy(here / name, tmp_path / name)
    made = scaling.write_report(sorted(data.glob("scaling-*.json")), tmp_path / "made" / "scaling.md")
    assert made.read_text() == (here / "scaling.md").read_text()
    quality, accuracy = data / "quality.json", sorted(data.glob("*-accuracy-*.json"))
    made = speedup.write_report(sorted(data.glob("bench-*.json")), tmp_path / "speedup.md", quality=quality,
                                accuracy=accuracy)  # fmt: skip
    assert made.read_text() == (here / "speedup.md").read_text()


def test_a_time_of_nan_outputs_or_failing_verdicts_is_marked_and_never_the_best(tmp_path):
    """fast's U-ViT step timed on NaN outputs and fast-fp8's images NaN: each time says so, misses its target and
    is not the best; with images judged, a recipe whose images fail is not the best pipeline either."""
    import json

    import pandas as pd

    from engines.recipes import recipe
    from reports.speedup import against_targets, failing, image_verdicts, load_runs, speedup_table, to_markdown

    fast_uvit = recipe("fast").builds["uvit"].id
    comps = [{"name": r["name"], "group": r["group"], "stats": {"median": 0.001},
              "extra_info": {**r, "nonfinite_outputs": 1056 if r.get("case") == fast_uvit else 0}}
             for r in speedup_rows(fast_uvit_ms=1.0)]  # fmt: skip
    pipes = [
        {
            "name": f"test_pipeline[{r}]",
            "group": "pipeline",
            "stats": {"median": ms / 1e3},
            "extra_info": {
                "recipe": r,
                "protocol": "seed",
                "steps": 50,
                "wall_p50_ms": ms,
                "images": 40,
                "nonfinite_images": bad,
            },
        }
        for r, ms, bad in (("fast", 380.0, 0), ("fast-fp8", 250.0, 3), ("pytorch-fp16-baseline", 900.0, 0))
    ]
    path = tmp_path / "bench.json"  # fmt: skip
    path.write_text(json.dumps({"machine_info": {"unidiffuser": {"date": "2026-12-05"}}, "benchmarks": comps + pipes}))
    df, _ = load_runs([path])
    md = to_markdown(df, {}).split("## Speed-up")[0]
    assert "| 1.000 (NaN/Inf output) " in md and "| 250.000 (NaN/Inf: 3 of 40 images) " in md
    table = speedup_table(df)
    assert table.loc["uvit", "best measured"] == 100.0  # the baseline's step, the only finite one
    assert (table.loc["pipeline", "best measured"], table.loc["pipeline", "best configuration"]) == (380.0, "fast")
    targets = against_targets(df, table)
    assert targets.loc["fast: uvit (one guided step)", "met"] == "no: NaN/Inf output"
    assert targets.loc["fast-fp8: pipeline", "met"] == "no: NaN/Inf: 3 of 40 images"
    fast_fails = {"comparisons": [{"candidate": "images/fast", "verdict": "FAIL"}]}
    md = to_markdown(df, {}, quality=fast_fails).split("## Speed-up")[0]
    best = [line for line in md.splitlines() if line.startswith("| pipeline ")][0]
    assert best.split("|")[-2].strip() == "pytorch-fp16-baseline"  # fast's images fail, fast-fp8's are NaN
    engines = pd.DataFrame([(fast_uvit, "FAIL")], columns=["engine", "status"])
    best = to_markdown(df, {}, engines=engines).split("| pipeline ")[1].split("\n")[0]
    assert best.split("|")[-2].strip() == "pytorch-fp16-baseline"  # an engine of fast fails mark by mark
    decoder = pd.DataFrame([(recipe("fast").builds["decoder"].id, "FAIL")], columns=["engine", "status"])
    assert speedup_table(df, failing(None, decoder)).loc["decoder", "best measured"] == 50.0  # not fast's 5.0
    assert image_verdicts(fast_fails)["fast"] == "FAIL"


def test_the_suite_on_a_faulty_engine_fails_and_its_report_names_the_mark(accuracy_results, tmp_path):
    """`pytest reference --fault`: CLIP's second layer with two heads swapped. The suite fails naming the mark after
    it, the report's summary says FAIL there, and its header names the fault; a malformed fault is a usage error."""
    fault, name = "heads@clip.encoder.layers.1.self_attn", "clip/eager/fp32+fault=heads@clip.encoder.layers.1.self_attn"
    proc = run_suite("reference/tests/test_accuracy.py", tmp_path, "-k", "clip/eager/fp32", "--fault", fault)
    assert proc.returncode == 1, proc.stdout[-3000:]
    assert "first mark outside its bound is 'clip.encoder.layers.1.layer_norm2'" in proc.stdout
    tables, env = load(sorted(tmp_path.glob("accuracy-*.json")))
    s = summary(tables).set_index("engine")
    assert (s.loc[name, "status"], s.loc[name, "first failing mark"]) == ("FAIL", "clip.encoder.layers.1.layer_norm2")
    assert env["fault"] == f"{fault} (injected by --fault)"
    md = (tmp_path / "accuracy.md").read_text()
    assert f"| {fault} (injected by --fault) |" in md
    assert re.search(rf"\| {re.escape(name)} +\| fp32 +\| - +\| FAIL +\| clip\.encoder\.layers\.1\.layer_norm2 ", md)
    with pytest.raises(ValueError, match="different runs \\(fault: "):  # never merged with a clean run
        load(sorted(tmp_path.glob("accuracy-*.json")) + sorted(accuracy_results.glob("accuracy-*.json")))
    for bad, says in (("heads", "expected KIND@MARK"), ("swap@clip.encoder", "unknown fault 'swap'")):
        proc = run_suite("reference/tests/test_accuracy.py", tmp_path / "bad", "--fault", bad)
        assert proc.returncode == 4 and says in proc.stderr, proc.stderr
