"""The batch and step sweeps (`bash .ci/gpu-reports scaling`) -> reports/scaling.md and scaling.png: how a recipe's
cost grows with the batch and with the number of solver steps, where its throughput saturates and what memory bounds
its batch.

Reads pytest-benchmark JSON of bench/bench_pipeline.py run with `--bench-batch` (cases with `footprint_mib`) and
with `--bench-steps` (batch 1); a 50-step point comes from the batch sweep's batch-1 case.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, never a window
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from engines.recipes import ladder_position  # noqa: E402
from reports.common import check_writable, env_header  # noqa: E402
from reports.speedup import environment_of, load_runs  # noqa: E402

BATCH_CASE = r"[\[-]batch\d+-"  # the id of a batch sweep's case (bench/conftest.py), e.g. test_pipeline[batch4-fast]
SATURATED = 0.95  # a batch whose images per second are within 5% of the sweep's best has reached the plateau
MIB_PER_GIB = 1024


def _order(df: pd.DataFrame, *by: str) -> pd.DataFrame:
    keys = df.assign(_position=df["recipe"].map(ladder_position))
    return keys.sort_values(["_position", "recipe", *by], kind="stable").drop(columns="_position")


def _count(pipes: pd.DataFrame, column: str) -> pd.Series | None:
    """A count column as whole numbers, missing where a run did not record it."""
    return pipes[column].astype("Int64") if column in pipes else None


def batch_rows(df: pd.DataFrame) -> pd.DataFrame:
    """One row per (recipe, batch) of the batch sweep (`--bench-batch`, whose cases are named `batchN`): the cases that
    built their own engines and measured them. Their memory is measured on a GPU alone."""
    pipes = df[(df["group"] == "pipeline") & df["name"].str.contains(BATCH_CASE)]
    if not len(pipes):
        return pd.DataFrame()
    pipes = _order(pipes.assign(batch=pipes["batch"].astype(int)), "batch")
    b = pipes["batch"]
    out = pd.DataFrame({
        "recipe": pipes["recipe"], "steps": pipes["steps"].astype(int), "batch": b,
        "images_per_s": b / (pipes["wall_median_ms"] / 1e3),
        "ms_per_image": pipes["wall_median_ms"] / b,
        "ms_per_image_min": pipes["wall_min_ms"] / b, "ms_per_image_max": pipes["wall_max_ms"] / b,
        "step_ms": pipes["step_p50_ms"],
        "footprint_gib": pipes["footprint_mib"].astype(float) / MIB_PER_GIB,
        "sm_clock_mhz_p50": pipes.get("sm_clock_mhz_p50"), "nonfinite_images": _count(pipes, "nonfinite_images"),
    })  # fmt: skip
    first = out.groupby("recipe")["images_per_s"].transform("first")
    out.insert(4, "vs_batch_1", out["images_per_s"] / first)
    return out.reset_index(drop=True)


def step_rows(df: pd.DataFrame) -> pd.DataFrame:
    """One row per (recipe, steps) at batch 1, fewest steps first: the step sweep and the batch sweep's batch-1 case."""
    pipes = df[df["group"] == "pipeline"]
    if not len(pipes) or "steps" not in pipes:
        return pd.DataFrame()
    pipes = pipes[pipes.get("batch", pd.Series(1, index=pipes.index)).fillna(1) == 1]
    pipes = _order(pipes.assign(steps=pipes["steps"].astype(int)), "steps").drop_duplicates(["recipe", "steps"])
    out = pd.DataFrame({
        "recipe": pipes["recipe"], "steps": pipes["steps"], "ms_per_image": pipes["wall_median_ms"],
        "ms_min": pipes["wall_min_ms"], "ms_max": pipes["wall_max_ms"], "uvit_ms": pipes["uvit_ms"],
        "ms_per_step": pipes["uvit_ms"] / pipes["steps"], "clip_decoder_ms": pipes["clip_ms"] + pipes["decoder_ms"],
        "nonfinite_images": _count(pipes, "nonfinite_images"),
    })  # fmt: skip
    return out.reset_index(drop=True)


def findings(batches: pd.DataFrame, gpu_gib: float | None = None) -> pd.DataFrame:
    """Per recipe: the best throughput and the smallest batch within 5% of it, and the memory: the fixed part, what
    each further image adds (a straight line through the two largest batches) and, given the GPU's memory, the
    largest batch that line fits in it."""
    rows = []
    for recipe, g in batches.groupby("recipe", sort=False):
        best = g["images_per_s"].max()
        plateau = int(g.loc[g["images_per_s"] >= SATURATED * best, "batch"].min())
        top = g.nlargest(2, "batch").sort_values("batch")
        per_image = (top["footprint_gib"].diff().iloc[-1] / top["batch"].diff().iloc[-1]) if len(top) == 2 else None
        rows.append({
            "recipe": recipe, "batch 1 images/s": g["images_per_s"].iloc[0], "best images/s": best,
            "best at batch": int(g.loc[g["images_per_s"].idxmax(), "batch"]),
            f"within {1 - SATURATED:.0%} of best from batch": plateau,
            "footprint at batch 1 GiB": g["footprint_gib"].iloc[0],
            "GiB per further image": per_image if per_image is not None else float("nan"),
            "largest batch in the GPU's memory": _fits(top, per_image, gpu_gib),
        })  # fmt: skip
    return pd.DataFrame(rows)


def _fits(top: pd.DataFrame, per_image: float | None, gpu_gib: float | None) -> float:
    """The batch at which the line through the largest measured batches reaches the GPU's memory (the harness's own
    models left out): NaN without the memory, a line, or a growing footprint."""
    if gpu_gib is None or per_image is None or not per_image > 0:
        return float("nan")
    last = top.iloc[-1]
    return float(last["batch"] + (gpu_gib - last["footprint_gib"]) // per_image)


def plot(batches: pd.DataFrame, steps: pd.DataFrame, path: Path) -> Path:
    fig, (a, m, s) = plt.subplots(1, 3, figsize=(13.5, 3.6))
    for recipe, g in batches.groupby("recipe", sort=False) if len(batches) else ():
        a.plot(g["batch"], g["images_per_s"], marker="o", label=recipe)
        m.plot(g["batch"], g["footprint_gib"], marker="o", label=recipe)
    for recipe, g in steps.groupby("recipe", sort=False) if len(steps) else ():
        spread = [g["ms_per_image"] - g["ms_min"], g["ms_max"] - g["ms_per_image"]]
        s.errorbar(g["steps"], g["ms_per_image"], yerr=spread, marker="o", capsize=3, label=recipe)
    for ax, title, ylabel in ((a, "throughput", "images / s"), (m, "memory of the engines and their run", "GiB"),
                              (s, "time per image, batch 1", "ms (min-max over rounds)")):  # fmt: skip
        ax.set_title(title, fontsize=9)
        ax.set_ylabel(ylabel, fontsize=8)
        ax.legend(fontsize=7)
    for ax in (a, m):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("batch (images per call; the U-ViT runs twice that, with guidance)", fontsize=8)
    s.set_xlabel("DPM-Solver++ steps", fontsize=8)
    s.set_yscale("log")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def gpu_memory_gib(env: dict) -> float | None:
    """The GPU's memory from the environment header (bench.environment records it as '139.8 GiB'), if there."""
    text = str(env.get("gpu_memory", ""))
    return float(text.split()[0]) if text.endswith(" GiB") else None


def _markdown(table: pd.DataFrame) -> str:
    """Two decimals; a figure not measured (memory on a CPU) as '-'."""
    return table.astype(object).where(table.notna(), None).to_markdown(index=False, floatfmt=".2f", missingval="-")


def to_markdown(batches: pd.DataFrame, steps: pd.DataFrame, env: dict, runs: pd.DataFrame, picture: str) -> str:
    parts = [env_header("How cost grows: batch and steps", env)]
    parts.append(
        "Each case is a pipeline benchmark (bench/bench_pipeline.py, quick protocol): clip, the guided U-ViT steps and "
        "the decoder for a batch of images made together, until the images are on the host. A batch's prompts are the "
        "first of prompts.tsv, each image with its own seed's noise. Times are synchronised wall times per call, "
        "median over rounds after a warm-up call, divided by the batch; the spread is the fastest and slowest round. "
        "Under `--bench-batch` every case builds its engines for its batch and frees them after: `footprint` is the "
        "most memory they and their run held at once (their weights, CUDA graphs and activations), beyond what the "
        "harness held before (its fp32 reference models). The SM clock is nvidia-smi's median while the case ran: "
        "at its power limit a GPU runs a large batch at a lower clock. `nonfinite_images`: the timed images with NaN "
        "or Inf in a stage, a recipe's verdict whatever its speed ('-': a run that did not count them).\n"
    )
    parts.append(f"![throughput, memory and time per image]({picture})\n")
    if len(batches):
        parts.append(
            "## Where throughput saturates and what bounds the batch\n\n"
            + _markdown(findings(batches, gpu_memory_gib(env)))
            + "\n"
        )
        names = {"vs_batch_1": "images/s vs batch 1", "ms_per_image_min": "min", "ms_per_image_max": "max",
                 "step_ms": "guided step ms (whole batch)"}  # fmt: skip
        shown = batches.rename(columns=names)
        parts.append("## By batch\n\n" + _markdown(shown) + "\n")
    if len(steps):
        shown = steps.rename(columns={"ms_min": "min", "ms_max": "max", "clip_decoder_ms": "clip + decoder ms"})
        parts.append(
            "## By number of steps (batch 1)\n\nThe U-ViT's time is the steps' (or the whole-loop graph's); clip and "
            "the decoder are paid once per image whatever the count.\n\n" + _markdown(shown) + "\n"
        )
    parts.append("## Runs merged\n\n" + runs.to_markdown(index=False) + "\n")
    return "\n".join(parts)


def write_report(paths: list[Path], out: Path, *, overwrite: bool = False) -> Path:
    df, machine = load_runs(paths)
    batches, steps = batch_rows(df), step_rows(df)
    if not len(batches) and not len(steps):
        raise ValueError("no pipeline benchmarks in these files; expected the JSON of `pytest bench/bench_pipeline.py "
                         "--bench-batch ...` or `--bench-steps ...` (bash .ci/gpu-reports scaling)")  # fmt: skip
    out = check_writable(out, overwrite=overwrite)
    picture = out.with_suffix(".png")
    check_writable(picture, overwrite=overwrite)
    plot(batches, steps, picture)
    out.write_text(to_markdown(batches, steps, environment_of(machine), df.attrs["runs"], picture.name))
    return out
