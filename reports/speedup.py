"""pytest-benchmark JSON (from `pytest bench`) -> reports/speedup.md: the seed's speed-up table, remeasured.

Small pure functions: load_runs(paths) -> DataFrame, speedup_table(df) -> DataFrame, to_markdown(...) -> str.
Numbers stay numeric until formatting; configuration lives in columns taken from params and extra_info.
"""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from engines.recipes import BASELINE, LADDER, ladder_position
from engines.recipes import recipe as named
from engines.spec import COMPONENTS, EngineSpec
from reports.common import BENCHMARK_JSON, QUALITY_JSON, check_one_run, check_writable, env_header, read_result

# the columns the tables read, there (empty) where no benchmark wrote them: the seed's protocol times the pipeline alone
READ = ("case", "component", "p50_ms", "precision", "tflops", "flops", "wall_min_ms", "wall_max_ms",
        "nonfinite_outputs", "nonfinite_images")  # fmt: skip
CEILINGS = "ceilings-uvit.md"  # `python -m bench ceilings`, beside this report: linked from the U-ViT row
SCALING = "scaling.md"  # `python -m reports scaling`, beside this report: linked from the targets
STEPS = 50  # the model calls per image of the seed's table (reference.dpm_solver.STEPS, which imports torch)
ROWS = {"clip": "clip + encode_prefix", "uvit": "uvit (one guided step)", "decoder": "decoder", "pipeline": "pipeline"}
SEED_A10 = {  # ../shared/SPEC.md section 8: the seed's table on an NVIDIA A10, ms
    "clip": (6.996, 6.936, 1.631),
    "uvit": (270.409, 211.132, 88.406),
    "decoder": (258.488, 223.529, 47.137),
    "pipeline": (13786.638, 10787.720, 4469.315),
}


def read_benchmarks(path: Path) -> dict:
    """A pytest-benchmark file with at least one benchmark, each named and timed, or an error naming the file."""
    data = read_result(path, what=BENCHMARK_JSON, keys=("benchmarks",))
    benchmarks = data["benchmarks"]
    if not isinstance(benchmarks, list) or not benchmarks:
        raise ValueError(f"{path}: 'benchmarks' holds no benchmark (were they all skipped?); expected {BENCHMARK_JSON}")
    for i, b in enumerate(benchmarks):
        if not (isinstance(b, dict) and isinstance(b.get("name"), str) and isinstance(b.get("stats"), dict)
                and isinstance(b["stats"].get("median"), (int, float))):  # fmt: skip
            raise ValueError(f"{path}: benchmark {i} lacks a name or stats.median; expected {BENCHMARK_JSON}")
    return data


def load_runs(paths: list[Path]) -> tuple[pd.DataFrame, dict]:
    """One row per benchmark and protocol (merged over files, e.g. xdist workers or split runs; a name seen twice
    keeps the later file's, but a component engine timed in several files, each a build of its own, takes the median
    of their p50s: `rebuilds`); machine info of the first. Files are taken in the order of their dates, then names,
    whatever the order given: the same files give the same report."""
    if not paths:
        raise ValueError("no benchmark JSON files given")
    loaded = [(Path(path), read_benchmarks(path)) for path in paths]
    when = {p: str(environment_of(d.get("machine_info", {})).get("date", "")) for p, d in loaded}
    loaded.sort(key=lambda item: (when[item[0]], item[0].name, str(item[0])))
    check_one_run([(p, environment_of(d.get("machine_info", {}))) for p, d in loaded])
    rows, machine, runs = [], None, []
    for path, data in loaded:
        machine = machine or data.get("machine_info", {})
        env = environment_of(data.get("machine_info", {}))
        runs.append({"file": Path(path).name, **{k: env.get(k, "-") for k in ("date", "commit", "gpu")},
                     "benchmarks": len(data["benchmarks"])})  # fmt: skip
        for b in data["benchmarks"]:
            info = dict(b.get("extra_info", {}))
            if "rung" in info:  # files written before recipes had their name
                info["recipe"] = info.pop("rung")
            if "engine" in info:  # a component's case is its engine id (engines.spec), as old files' names show it
                info["case"] = info["engine"]
            stats = b["stats"]
            spread = {f"wall_{k}_ms": stats[k] * 1e3 for k in ("min", "max") if isinstance(stats.get(k), (int, float))}
            row = {
                "name": b["name"],
                "group": b.get("group"),
                "wall_median_ms": stats["median"] * 1e3,
                **spread,
                **info,
            }
            rows.append({**row, "file": Path(path).name})
    every = pd.DataFrame(rows)
    every = every.reindex(columns=[*every.columns, *(c for c in READ if c not in every)])
    # the seed's protocol and the quick one time the same test: both stay, one row each
    keys = ["name", "protocol"] if "protocol" in every else ["name"]
    df = every.drop_duplicates(keys, keep="last")
    if "wall_p50_ms" in df:  # a pipeline timed in several runs: the median of their medians
        across = every[every["group"] == "pipeline"].groupby(keys, dropna=False)["wall_p50_ms"].median()
        at = pd.MultiIndex.from_frame(df[keys]) if len(keys) > 1 else pd.Index(df["name"])
        median = pd.Series(across.reindex(at).to_numpy(), index=df.index)
        df = df.assign(wall_p50_ms=median.where(median.notna(), df["wall_p50_ms"]))
    repeated = rebuilds(every)
    if len(repeated):
        median = df["case"].map(repeated["median ms"])
        df = df.assign(p50_ms=median.where(median.notna(), df["p50_ms"]))
    df.attrs["runs"] = pd.DataFrame(runs)  # which file (date, commit) each part of the report comes from
    df.attrs["rebuilds"] = repeated
    # every build run, not only the last: a build's seconds depend on the host's CPU, which changes between machines
    df.attrs["builds"] = every[every["group"] == "build"]
    df.attrs["pipelines"] = every[every["group"] == "pipeline"]  # each run of each: a target needs more than one
    return df, machine or {}


def rebuilds(every: pd.DataFrame) -> pd.DataFrame:
    """Component engines timed in more than one file, each file's a separate build of the engine: the spread of
    their medians. Inductor autotunes its kernels' launch configurations when a build first runs them, so two builds
    of the same code can run at different speeds."""
    comp = every[every["group"].isin(COMPONENTS)]
    if "p50_ms" in comp:
        comp = comp[comp["p50_ms"].notna()]
    many = comp[comp.duplicated("name", keep=False)]
    if many.empty:
        return pd.DataFrame()
    by = many.groupby("case", sort=False)["p50_ms"]
    out = pd.DataFrame({"builds": by.count(), "min ms": by.min(), "median ms": by.median(), "max ms": by.max()})
    out["max / min"] = out["max ms"] / out["min ms"]
    out["p50 ms by file, in the order given"] = many.groupby("case", sort=False)[["p50_ms", "file"]].apply(
        lambda g: ", ".join(f"{p:.3f} ({f})" for p, f in zip(g["p50_ms"], g["file"], strict=True))
    )
    return out


def _component_ms(df: pd.DataFrame) -> dict[str, float]:
    comp = df[df["group"].isin(COMPONENTS)]
    return dict(zip(comp["case"], comp["p50_ms"], strict=True))


def pipeline_rows(df: pd.DataFrame, *, steps: int | None = STEPS) -> pd.DataFrame:
    """Pipeline benchmarks of one image a call at `steps` model calls per image (None: every count, most first) in the
    ladder's order, each recipe's seed-protocol run (the seed's own measure, 40 pairs) before its quick one: the time
    table takes a recipe's first 50-step row. Batches above 1 are reports/scaling.md's."""
    if "recipe" not in df:
        return df.iloc[:0]
    pipes = df[df["group"] == "pipeline"]
    pipes = pipes[pipes["batch"].fillna(1) == 1] if "batch" in pipes else pipes
    calls = pipes["steps"].fillna(STEPS) if "steps" in pipes else pd.Series(STEPS, index=pipes.index)
    pipes, calls = (pipes, calls) if steps is None else (pipes[calls == steps], calls[calls == steps])
    keys = pd.DataFrame({"position": pipes["recipe"].map(ladder_position), "recipe": pipes["recipe"],
                         "steps": -calls, "quick": pipes.get("protocol") != "seed"}, index=pipes.index)  # fmt: skip
    return pipes.loc[keys.sort_values(list(keys), kind="stable").index]


def speedup_table(df: pd.DataFrame, failed: frozenset[str] = frozenset()) -> pd.DataFrame:
    """Rows clip/uvit/decoder/pipeline x ladder columns (ms, CUDA-event medians; the pipeline's is the synchronised
    wall time per image), plus the fastest configuration of each row that may be called best: its outputs finite
    (nonfinite_notes) and its name (an engine id, a recipe) not among those whose verdicts `failed`."""
    by_case = _component_ms(df)
    pipes = _table_pipelines(df)
    table = {}
    for recipe in LADDER:
        col = {c: by_case.get(b.id, float("nan")) for c, b in recipe.builds.items()}
        col["pipeline"] = pipes["wall_p50_ms"].get(recipe.name, float("nan")) if len(pipes) else float("nan")
        table[recipe.name] = col
    out = pd.DataFrame(table).reindex(list(ROWS))
    best, best_name = {}, {}
    comp = df[df["group"].isin(COMPONENTS)]
    comp = comp[(_count(comp, "nonfinite_outputs") == 0) & ~comp["case"].isin(failed)]
    for c in COMPONENTS:
        g = comp[comp["component"] == c]
        if len(g):
            i = g["p50_ms"].idxmin()
            best[c], best_name[c] = g.loc[i, "p50_ms"], g.loc[i, "case"]
    if len(pipes):
        good = pipes[(_count(pipes, "nonfinite_images") == 0) & ~pipes.index.isin(failed)]["wall_p50_ms"].dropna()
        if len(good):
            best["pipeline"], best_name["pipeline"] = good.min(), good.idxmin()
    out["best measured"] = pd.Series(best)
    out["best configuration"] = pd.Series(best_name)
    return out


def _table_pipelines(df: pd.DataFrame) -> pd.DataFrame:
    """The pipeline run behind each recipe's figure in the time table, by recipe."""
    pipes = pipeline_rows(df)
    return pipes.drop_duplicates("recipe").set_index("recipe") if len(pipes) else pd.DataFrame()


def nonfinite_notes(df: pd.DataFrame) -> dict[tuple[str, str], str]:
    """(row, recipe) -> what was NaN or Inf in the run behind that time (a component engine's outputs, a pipeline's
    timed images), for the cells whose time was measured on them: such a time is no result and never the best."""
    comp = df[df["group"].isin(COMPONENTS) & (_count(df, "nonfinite_outputs") > 0)]
    bad = set(comp["case"])
    pipes = _table_pipelines(df)
    notes = {}
    for r in LADDER:
        for c, b in r.builds.items():
            if b.id in bad:
                notes[(c, r.name)] = "NaN/Inf output"
        n = _count(pipes, "nonfinite_images").get(r.name, 0) if len(pipes) else 0
        if n > 0:
            notes[("pipeline", r.name)] = f"NaN/Inf: {n:.0f} of {pipes['images'].get(r.name, float('nan')):.0f} images"
    return notes


def _count(frame: pd.DataFrame, column: str) -> pd.Series:
    """A count column, 0 where a benchmark did not record it (files from before it was recorded)."""
    return frame[column].fillna(0) if column in frame else pd.Series(0, index=frame.index)


def failing(images: dict[str, str] | None, engines: pd.DataFrame | None) -> frozenset[str]:
    """The recipes and engine ids whose verdicts failed: an image verdict other than pass (or the reference, or not
    judged), an engine not passing mark by mark, a recipe building one."""
    out = {name for name, v in (images or {}).items() if v not in ("pass", "reference", "not judged")}
    if engines is not None and len(engines):
        out |= {e for e, s in zip(engines["engine"], engines["status"], strict=True) if s != "pass"}
        out |= {r for r, v in accuracy_verdicts(engines).items() if v != "pass" and not v.startswith("not judged")}
    return frozenset(out)


def speedups(table: pd.DataFrame) -> pd.DataFrame:
    base = table[BASELINE]
    numeric = table.drop(columns=["best configuration"])
    return numeric.rdiv(1.0).mul(base, axis=0)


def efficiency(df: pd.DataFrame, table: pd.DataFrame) -> pd.DataFrame:
    """Achieved TFLOP/s and share of the measured fp16 matmul peak for the U-ViT step and the decoder, and the FLOP
    floor at each engine's own precision over its time: an FP8 U-ViT near the fp16 peak is still far from its own."""
    peak = matmul_peak(df)
    flops = {c: df[df["group"] == c]["flops"].max() for c in ("uvit", "decoder")}
    rows = {}
    for c in ("uvit", "decoder"):
        ms = table.loc[c].drop("best configuration").astype(float)
        tflops = flops[c] / ms / 1e9
        rows[f"{c} TFLOP/s"] = tflops
        rows[f"{c} share of peak"] = tflops / peak
        precision = {r.name: r.builds[c].precision for r in LADDER}
        best = table.loc[c, "best configuration"]
        precision["best measured"] = EngineSpec.parse(best).precision if isinstance(best, str) else None
        rows[f"{c} share of its floor"] = pd.Series({n: floor_ms(df, c, precision[n]) for n in ms.index}) / ms
    return pd.DataFrame(rows).T, peak


def matmul_peak(df: pd.DataFrame, precision: str = "float16") -> float:
    """TFLOP/s of the matmul benchmark at `precision` (bench_components.py, test_matmul_peak: float16, bfloat16,
    float8_e4m3fn), NaN where it did not run."""
    peak = df[(df["group"] == "peak") & (df.get("precision") == precision)]["tflops"]
    return float(peak.iloc[0]) if len(peak) else float("nan")


# Issue 26: the targets on the H200 (ms), each a figure of one recipe (CLIP and the decoder are both fast recipes').
# Met by a median over repeated runs that beats it: two seed-protocol runs (40 images each) of a pipeline, three builds
# of an engine; one run inside the spread between runs is not a result. A recipe's time counts only when its images
# pass their verdict.
TARGETS = {
    ("fast", "pipeline"): 390.0, ("fast", "uvit"): 7.5, ("fast-fp8", "pipeline"): 260.0, ("fast-fp8", "uvit"): 5.0,
    ("fast", "clip"): 0.4, ("fast", "decoder"): 4.5,
}  # fmt: skip
RUNS_NEEDED = {"pipeline": 2, "clip": 3, "uvit": 3, "decoder": 3}


def target_engines() -> list[str]:
    """The ids of the engines whose time has a target: what .ci/gpu-reports builds three times."""
    return list(dict.fromkeys(named(name).builds[row].id for name, row in TARGETS if row != "pipeline"))


STAGES = "Pipeline stages (GPU ms per image, medians)"  # the section that says where a pipeline's time goes


def anchor(heading: str) -> str:
    """The link GitHub gives a markdown heading."""
    return "#" + re.sub(r"[^a-z0-9 _-]", "", heading.lower()).replace(" ", "-")


def image_verdicts(quality: dict | None) -> dict[str, str]:
    """Recipe name -> its image verdict (`python -m bench quality` over the recipe's images, in a folder named
    after the recipe); the reference is what the others are judged against."""
    found = {Path(c["candidate"]).name: c.get("verdict", "-") for c in (quality or {}).get("comparisons", [])}
    return {r.name: "reference" if r.name == LADDER[0].name else found.get(r.name, "not judged") for r in LADDER}


def verdict(ms: float, target: float, runs: int, needed: int, images: str | None, accuracy: str | None = None) -> str:
    """Whether a figure meets its target: a median that beats it, over enough runs, of a recipe whose images and
    engines pass their verdicts (`images`, `accuracy` None: not given, so not judged on them)."""
    if pd.isna(ms):
        return "not measured"
    if ms > target:
        return "no"
    if accuracy is not None and accuracy != "pass":
        return f"no: accuracy {accuracy}"
    if images is not None and images not in ("pass", "reference"):
        return f"no: images {images}"
    return "yes" if runs >= needed else f"not shown: {runs} of {needed} runs"


def accuracy_verdicts(summary: pd.DataFrame) -> dict[str, str]:
    """Recipe name -> its accuracy verdict (reports/accuracy.md's summary): pass when every engine it builds passes
    mark by mark, else the first other status with its component; `not judged` where an engine was not run."""
    status = dict(zip(summary["engine"], summary["status"], strict=True)) if len(summary) else {}
    out = {}
    for r in LADDER:
        got = {c: status.get(b.id) for c, b in r.builds.items()}
        bad = [f"{s} ({c})" for c, s in got.items() if s not in (None, "pass")]
        missing = [c for c, s in got.items() if s is None]
        out[r.name] = bad[0] if bad else f"not judged ({', '.join(missing)})" if missing else "pass"
    return out


def floors(df: pd.DataFrame, recipe_name: str, steps: int = STEPS) -> dict[str, float]:
    """The FLOP floor of each figure of a recipe: the reference model's FLOPs at the measured matmul peaks (the
    pipeline's: `steps` U-ViT steps, the decoder and CLIP). An fp16 engine's at the fp16 peak; an FP8 U-ViT's linears
    at the FP8 peak and the rest (attention) at the fp16 peak. NaN where a peak or the FLOPs by kind were not
    recorded."""
    out = {c: floor_ms(df, c, named(recipe_name).builds[c].precision) for c in COMPONENTS}
    out["pipeline"] = steps * out["uvit"] + out["clip"] + out["decoder"]
    return out


def floor_ms(df: pd.DataFrame, component: str, precision: str | None) -> float:
    """One call's FLOP floor (ms) for an engine of `component` at `precision`: fp16 and bf16 at their matmul peaks;
    FP8 (the U-ViT's) its linears at the FP8 peak and the rest at the fp16 one; NaN for fp32, whose peak is not
    measured, or where a peak or the FLOPs by kind were not recorded."""
    flops = df[df["group"] == component]["flops"].max()
    if precision in ("fp16", "bf16"):
        # the dtype by test_matmul_peak's name for it, spelled here: the reports import without torch
        return flops / matmul_peak(df, {"fp16": "float16", "bf16": "bfloat16"}[precision]) / 1e9
    if precision == "fp8":
        linear = _flops_by_kind(df, component).get("linear", float("nan"))
        return linear / matmul_peak(df, "float8_e4m3fn") / 1e9 + (flops - linear) / matmul_peak(df) / 1e9
    return float("nan")


def _flops_by_kind(df: pd.DataFrame, component: str) -> dict:
    recorded = df[df["group"] == component].get("flops_by_kind", pd.Series(dtype=object)).dropna()
    return recorded.iloc[0] if len(recorded) else {}


def against_targets(
    df: pd.DataFrame,
    table: pd.DataFrame,
    profiles: dict | None = None,
    also: dict | None = None,
    verdicts: dict | None = None,
    accuracy: dict | None = None,
) -> pd.DataFrame:
    """Each target with its recipe's figure (the time table's), the runs behind it and their spread, the verdict, the
    floor, and where the time goes: the profile report of the recipe's engine (reports.profiles.index of the report's
    folder), `also` a further report by component (the U-ViT's ceilings), the pipeline stages."""
    from reports.profiles import engine_id

    runs, nonfinite = pipeline_runs(df), nonfinite_notes(df)
    repeated = df.attrs.get("rebuilds", pd.DataFrame())
    rows = []
    for (name, row), target in TARGETS.items():
        ms = float(table.loc[row, name])
        spec = named(name).builds.get(row)
        if row == "pipeline":
            n, low, high = runs.get(name, (0, float("nan"), float("nan")))
            profile = f"[stages]({anchor(STAGES)})"
            engine = named(name).builds["uvit"].id
        else:
            n = int(repeated["builds"].get(spec.id, 1)) if len(repeated) else 1
            low, high = (repeated["min ms"].get(spec.id), repeated["max ms"].get(spec.id)) if n > 1 else (None, None)
            profile, engine = "", spec.id
        found = (profiles or {}).get(engine_id(engine))
        links = [link for link in (profile, f"[{found}]({found})" if found else "", also_for(also, row)) if link]
        images = verdicts.get(name) if verdicts is not None else None
        engines = accuracy.get(name) if accuracy is not None else None
        rows.append({
            "figure": f"{name}: {ROWS[row]}", "ms": ms,
            "spread": f"{low:.3f}-{high:.3f}" if n > 1 else "-", "runs": n,
            "target ms": target, "ms / target": ms / target,
            "met": f"no: {nonfinite[row, name]}" if (row, name) in nonfinite else
                   verdict(ms, target, n, RUNS_NEEDED[row], images, engines), "images": images or "-",
            "accuracy": engines or "-",
            "FLOP floor ms": floors(df, name)[row], "where the time goes": "; ".join(links) or "-",
        })  # fmt: skip
    return pd.DataFrame(rows).set_index("figure")


def also_for(also: dict | None, row: str) -> str:
    name = (also or {}).get("uvit" if row == "pipeline" else row)
    return f"[{name}]({name})" if name else ""


def pipeline_runs(df: pd.DataFrame) -> dict[str, tuple[int, float, float]]:
    """Recipe -> (seed-protocol runs at 50 steps and batch 1, the fastest and slowest of their medians)."""
    every = df.attrs.get("pipelines", pd.DataFrame())
    if not len(every) or "protocol" not in every:
        return {}
    seed = pipeline_rows(every[every["protocol"] == "seed"])
    return {r: (len(g), g["wall_p50_ms"].min(), g["wall_p50_ms"].max()) for r, g in seed.groupby("recipe")}


BUILD_TARGETS = {"fresh": 90.0, "warm": 10.0}  # issue 26: seconds to build every engine of a fast recipe, H200
BUILDS_NEEDED = 3  # runs of a build, each in new processes, for a build target to be met
PHASE = "phase_"  # a build's compile phases (bench.build.PHASES)
BUILD_COLUMNS = {  # the build table's columns that newer runs record, and what they mean
    "python_bytecode": "`python_bytecode`: where the process kept Python's compiled modules (the cache folder: a fresh "
    "run compiles torch's sources, a warm one reads them; bench/build.py, `process_env`). ",
    PHASE: "`phase_*`: where the process's compiles went, summed over its graphs (torch._dynamo.utils.compile_times; "
    "bench/build.py, `PHASES`): dynamo tracing the Python (`trace`) and building guards (`guards`), which every build "
    "pays whatever its caches hold, and the backend, AOTAutograd and Inductor (`backend`), of which loading the graphs "
    "compiled before (`cache_load`, warm caches only). ",
}


def profile_list(profiles: dict[str, str]) -> pd.DataFrame:
    """Every profile beside the report, with the engine it profiles and the recipes that build that engine: the
    targets table links only each row's best."""
    rows = [{"profile": f"[{name}]({name})", "engine": f"`{engine}`",
             "recipes": ", ".join(r.name for r in LADDER if engine in {b.id for b in r.builds.values()}) or "-"}
            for engine, name in sorted(profiles.items(), key=lambda item: item[1])]  # fmt: skip
    return pd.DataFrame(rows)


def build_from_caches(df: pd.DataFrame) -> pd.DataFrame:
    """bench/bench_build.py: a recipe's engines built in a new process on an empty compile cache and on a warm one; a
    row per run, labelled with its file where the rows carry one."""
    runs = df[df["group"] == "build"]
    if not len(runs):
        return pd.DataFrame()
    # each engine's seconds, then the process's compile phases (bench.build.PHASES), recorded by newer runs
    seconds = [c for c in runs if c.endswith("_s") and c not in ("build_s", "model_load_s") and runs[c].notna().any()]
    seconds = sorted(seconds, key=lambda c: (c.startswith(PHASE), c))
    extra = [c for c in ("python_bytecode",) if c in runs and runs[c].notna().any()]  # recorded by newer runs
    out = runs.set_index(["recipe", "caches"])[["build_s", *seconds, "fxgraph_cache_hit", "fxgraph_cache_miss", *extra]]
    target = pd.Series([BUILD_TARGETS.get(c, float("nan")) for _, c in out.index], index=out.index)
    median = out.groupby(level=[0, 1])["build_s"].transform("median")  # over every run of the recipe and caches
    count = out.groupby(level=[0, 1])["build_s"].transform("count")
    out.insert(1, "target_s", target)
    out.insert(2, "median_s", median)
    out.insert(3, "met", [verdict(m, t, n, BUILDS_NEEDED, None) for m, t, n in zip(median, target, count, strict=True)])
    files = runs["file"] if "file" in runs else [None] * len(runs)
    out.index = [f"{r}, {c} caches" + (f" ({f})" if f else "") for (r, c), f in zip(out.index, files, strict=True)]
    return out


def build_seconds(df: pd.DataFrame) -> pd.DataFrame:
    """Build, compile and capture seconds of each component engine, in the order they were built (a build that
    reuses an earlier compile of the same graph in the process shows ~0 compile seconds)."""
    comp = df[df["group"].isin(COMPONENTS)]
    cols = [c for c in ("build_s", "compile_s", "capture_s", "export_s", "trt_build_s") if c in comp]
    return comp.set_index("case")[cols]


def clocks(df: pd.DataFrame) -> pd.DataFrame:
    """The SM clock and power sampled while each benchmark ran (bench.clocks), for the runs that sampled them."""
    if "clock_samples" not in df:
        return pd.DataFrame()
    sampled = df[df["clock_samples"].fillna(0) > 0]
    cols = ["sm_clock_mhz_p50", "sm_clock_mhz_min", "power_w_p50", "clock_samples"]
    # a pipeline timed under both protocols has one name for two runs
    cols = (["protocol"] if "protocol" in sampled and sampled["protocol"].notna().any() else []) + cols
    return sampled.set_index("name").reindex(columns=cols).fillna({"protocol": "-"})  # a CPU run: no clock columns


def to_markdown(
    df: pd.DataFrame,
    env: dict,
    profiles: dict | None = None,
    also: dict | None = None,
    quality: dict | None = None,
    scaling: bool = False,
    engines: pd.DataFrame | None = None,
) -> str:
    """`engines`: each engine's accuracy verdict (reports.accuracy.summary), for each recipe's (accuracy_verdicts)."""
    verdicts = image_verdicts(quality) if quality is not None else None
    accuracy = accuracy_verdicts(engines) if engines is not None else None
    table = speedup_table(df, failing(verdicts, engines))
    fmt_ms = table.drop(columns=["best configuration"]).map(lambda v: "-" if pd.isna(v) else f"{v:,.3f}")
    fmt_ms["best configuration"] = table["best configuration"].fillna("-")
    sp = speedups(table).map(lambda v: "-" if pd.isna(v) else f"{v:.2f}x")
    for (row, name), note in nonfinite_notes(df).items():
        for formatted in (fmt_ms, sp):
            formatted.loc[row, name] += f" ({note})"
    fmt_ms.index = [ROWS[i] for i in table.index]
    sp.index = fmt_ms.index
    if verdicts is not None:  # beside every column: the recipe's image verdict (reports/pd.md)
        row = pd.Series({r.name: verdicts[r.name] for r in LADDER})
        fmt_ms.loc["image verdict (pd.md)"] = row.reindex(fmt_ms.columns).fillna("")
        sp.loc["image verdict (pd.md)"] = row.reindex(sp.columns).fillna("")
    if accuracy is not None:  # and its engines' verdict, mark by mark (reports/accuracy.md)
        row = pd.Series(accuracy)
        fmt_ms.loc["accuracy verdict (accuracy.md)"] = row.reindex(fmt_ms.columns).fillna("")
        sp.loc["accuracy verdict (accuracy.md)"] = row.reindex(sp.columns).fillna("")
    eff, peak = efficiency(df, table)

    def cell(v: float, share: bool) -> str:
        return "-" if pd.isna(v) else f"{v:.1%}" if share else f"{v:.1f}"

    eff = pd.DataFrame({n: row.map(lambda v, s=" share of " in n: cell(v, s)) for n, row in eff.iterrows()}).T
    seed = pd.DataFrame(SEED_A10, index=["PyTorch-FP32", "PyTorch-FP16 baseline", "TRT-FP16+CudaGraph"]).T
    seed.index = [ROWS[i] for i in seed.index]
    pipes = pipeline_rows(df, steps=None)
    other = "steps" in pipes and (pipes["steps"].fillna(STEPS) != STEPS).any()  # step counts besides the seed's 50
    cols = ["protocol", *(["steps"] if other else []), "images", "clip_ms", "uvit_ms", "step_p50_ms", "decoder_ms",
            "wall_p50_ms", "peak_mib"]  # fmt: skip
    stages = pipes.set_index("recipe").reindex(columns=cols) if len(pipes) else pd.DataFrame()
    parts = [
        env_header("Speed-up table: UniDiffuser t2i, batch 1", env),
        "Milliseconds. Components: median of CUDA-event times per call after warm-up. Pipeline: median synchronised "
        "wall time per image (clip, 50 guided U-ViT steps, decoder, uint8 image on the host), over the seed's protocol "
        "where the recipe ran it, else the quick one (Pipeline stages says which). fp32 engines run strict "
        "IEEE fp32 (TF32 off for matmuls and cuDNN convolutions). Build, compile and capture seconds are recorded in "
        "the benchmark JSON, never in these times. A time measured on NaN or Inf outputs says so beside it. `best "
        "measured` is the fastest configuration whose outputs were finite and whose verdicts, where given, did not "
        "fail (the verdict rows below the table; reports/accuracy.md for an engine outside the recipes).\n",
        "Columns are the recipes of engines/recipes.py, by the name `--recipe` takes:\n\n"
        + "".join(f"- `{r.name}`: {r.label}\n" for r in LADDER),
        "## Time (ms)\n\n" + fmt_ms.to_markdown() + "\n",
        f"## Speed-up against `{BASELINE}`\n\n" + sp.to_markdown() + "\n",
        f"## Efficiency (measured fp16 matmul peak {peak:.0f} TFLOP/s)\n\n"
        "The reference model's FLOPs (bench.flops) over the time: an engine that computes the same function with fewer "
        "(the decoder's `upsample=subpixel`) is credited with the reference's. `share of its floor`: the FLOP floor at "
        "the engine's own precision (as in the targets below: an FP8 U-ViT's linears at the FP8 peak) over its time; "
        "`-` for fp32, whose matmul peak is not measured.\n\n" + eff.to_markdown() + "\n",
    ]
    if len(stages):
        parts.append(
            f"## {STAGES}\n\n`seed` protocol: warm-up images, then the "
            "(prompt, seed) pairs of prompts.tsv; `quick`: prompt 0 repeated. `peak_mib`: the most CUDA memory "
            "allocated in the benchmark's process while its images were made, the engines other benchmarks of that "
            "process still held included (a quick ladder keeps every engine it built; .ci/gpu-reports runs each seed "
            "protocol in a process of its own): the memory of a recipe alone is its footprint in scaling.md, for the "
            "recipes swept.\n\n" + stages.round(2).to_markdown() + "\n"
        )
    targets = against_targets(df, table, profiles, also, verdicts, accuracy)
    targets["FLOP floor ms"] = targets["FLOP floor ms"].map(lambda v: "-" if pd.isna(v) else f"{v:.3f}")
    parts.append(
        "## Against the performance targets\n\nEach target is a figure of one recipe, the time table's (a pipeline's "
        "from its seed-protocol run where it has one; a guided step's is its U-ViT engine timed alone). It is met by "
        f"a median that beats it over at least {RUNS_NEEDED['pipeline']} seed-protocol runs of the pipeline, or "
        f"{RUNS_NEEDED['uvit']} builds of an engine, of a recipe whose images pass their verdict (`images`, "
        "reports/pd.md); `runs` counts what these files hold and `spread` is the fastest and slowest of their medians. "
        "The FLOP floor is the reference model's FLOPs (bench.flops) at the measured matmul peaks: fp16 for an fp16 "
        "figure; for an FP8 U-ViT its linears at the FP8 peak and its attention at the fp16 one. A miss is explained "
        "by the figure's profile (kernel by kernel, against the floor in docs/performance.md, 'Performance: where the "
        "time goes') and, for the U-ViT step, the fastest kernels at its shapes (`python -m bench ceilings`)."
        + (f" How the pipeline's cost grows with the batch and the steps: [{SCALING}]({SCALING})." if scaling else "")
        + "\n\n"
        + targets.to_markdown(floatfmt=".3f")
        + "\n"
    )
    if profiles:
        parts.append(
            "## Kernel profiles\n\nWhere each profiled engine's time goes, kernel by kernel (`python -m bench "
            "profile`):\n\n" + profile_list(profiles).to_markdown(index=False) + "\n"
        )
    parts.append(
        "## Build seconds (component engines)\n\nIn build order within one process; a build that reuses an "
        "earlier compile of the same graph shows ~0 compile seconds.\n\n"
        + build_seconds(df).map(lambda v: "-" if pd.isna(v) else f"{v:.1f}").to_markdown()
        + "\n"
    )
    caches = build_from_caches(df.attrs.get("builds", df))
    if len(caches):
        parts.append(
            "## Building the fastest recipe: fresh machine and warm caches\n\nEvery engine of the recipe built in a "
            "new process (`python -m bench build`), first with empty Inductor/Triton caches, then on the caches that "
            "run filled. `build_s` is all engines, model construction excluded; the per-engine columns say where it "
            "went (a sampler's `step_*` is its U-ViT step). fxgraph hits and misses: the compiled graphs served from "
            "the cache, and compiled anew. "
            # what older runs did not record has no column, and no words
            + "".join(text for column, text in BUILD_COLUMNS.items() if any(c.startswith(column) for c in caches))
            + "Every run given is listed, each with its file: the host's CPU, which differs from machine to machine, "
            "sets much of a build's time.\n\n"
            + caches.map(lambda v: "-" if pd.isna(v) else v).to_markdown(floatfmt=".1f")
            + "\n"
        )
    sampled = clocks(df)
    if len(sampled):
        parts.append(
            "## GPU clocks while timed\n\nSampled by nvidia-smi every 50 ms during each benchmark's rounds: a time "
            "that moves between runs with the clock moved with the GPU, not with the code. The environment header's "
            "`sm_clock` is one reading taken before any work.\n\n" + sampled.to_markdown(floatfmt=".0f") + "\n"
        )
    repeated = df.attrs.get("rebuilds", pd.DataFrame())
    if len(repeated):
        parts.append(
            "## The same engine in separate builds\n\nEngines timed in more than one run, each run a new process "
            "that built the engine anew: Inductor autotunes its kernels' launch configurations on their first call, "
            "and its picks differ from build to build. The tables above take the median of the builds' p50s.\n\n"
            + repeated.to_markdown(floatfmt=".3f")
            + "\n"
        )
    if "runs" in df.attrs:
        parts.append("## Runs merged\n\n" + df.attrs["runs"].to_markdown(index=False) + "\n")
    parts.append("## The seed's table (NVIDIA A10, ms), for comparison\n\n" + seed.to_markdown() + "\n")
    return "\n".join(parts)


def environment_of(machine: dict) -> dict:
    env = dict(machine.get("unidiffuser", {}))
    return env or {"machine": machine.get("node", "unknown"), "python": machine.get("python_version", "")}


def write_report(
    paths: list[Path],
    out: Path,
    *,
    overwrite: bool = False,
    quality: Path | None = None,
    accuracy: list[Path] | None = None,
) -> Path:
    """`quality`: `python -m bench quality`'s JSON over the recipes' images, for the image verdict beside each column;
    `accuracy`: `pytest reference`'s result files, for the verdict of each column's engines."""
    from reports.accuracy import load, summary
    from reports.profiles import index

    df, machine = load_runs(paths)
    env = environment_of(machine)
    tables, accuracy_env = load(accuracy) if accuracy else ({}, None)
    engines = summary(tables) if accuracy else None
    judged = read_result(quality, what=QUALITY_JSON, keys=("comparisons",)) if quality is not None else None
    verdicts = [(Path(accuracy[0]), accuracy_env)] if accuracy else []
    if judged is not None:
        verdicts.append((Path(quality), judged.get("env", {})))
    check_one_run([(Path(paths[0]), env), *verdicts])  # the verdicts beside the times are the same run's
    out = check_writable(out, overwrite=overwrite)
    also = {"uvit": CEILINGS} if (out.parent / CEILINGS).exists() else {}
    if judged is not None:
        qenv = judged.get("env", {})
        env = {**env, "image verdicts": f"{Path(quality).name} ({qenv.get('gpu', '?')}, {qenv.get('commit', '?')})"}
    scaling = (out.parent / SCALING).exists()
    out.write_text(to_markdown(df, env, index(out.parent), also, judged, scaling, engines))
    return out
