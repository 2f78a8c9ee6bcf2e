"""`pytest bench --benchmark-only`: the whole pipeline (clip, 50 guided steps, decoder, uint8) per recipe.

pytest-benchmark times each image with a synchronising clock (the wall time); CUDA events around every stage give
the GPU time of clip, the U-ViT steps and the decoder beside it, and NVTX ranges label them for Nsight Systems.
`--bench-protocol seed` is the original protocol: 5 warm-up images, then the 40 (prompt, seed) pairs.
`--bench-steps 20,25,50` times each recipe at each step count, a case each; `--bench-batch 1,2,4,8,16` at each batch
size, with the memory the recipe's engines take at their peak (`footprint_mib`) and images per second.
The images are saved (outside the timed region) for the image-quality report (`python -m bench quality`).
"""

from __future__ import annotations

import statistics
from pathlib import Path

import pytest

from bench.clocks import ClockSampler
from bench.flops import pipeline_flops
from bench.ladder import LADDER, recipe_engines
from bench.ladder import stages as pipeline_stages
from bench.timing import Events, allocated_mib, cuda_clock, free_memory, peak_memory_mib, reset_peak_memory, summary_ms
from reference.dpm_solver import STEPS, make_plan
from reference.images import save_results
from reference.pipeline import Pipeline, Result
from reference.prompts import Prompt, default_prompts_path, read_prompts

WARMUP_IMAGES = 5  # the original protocol


def image_plan(
    protocol: str,
    *,
    rounds: int,
    warmup: int,
    seed_warmup: int = WARMUP_IMAGES,
    limit: int = 0,
    path: Path | None = None,
    batch: int = 1,
) -> tuple[list[list[Prompt]], int, int]:
    """(the prompts of each call in call order, warm-up calls, timed calls) for one pipeline benchmark; `path`:
    prompts.tsv. The quick protocol's calls are all the same: prompt 0, or a batch of the first `batch` prompts."""
    if protocol == "seed":
        if batch != 1:
            raise pytest.UsageError("the seed protocol times the 40 pairs one image at a time, as the original work; "
                                    "--bench-batch above 1 runs with --bench-protocol quick")  # fmt: skip
        rows = read_prompts(path or default_prompts_path())
        timed = rows[:limit] if limit else rows  # the warm-up images come from the whole file, whatever the limit
        return [[p] for p in rows[:seed_warmup] + timed], min(seed_warmup, len(rows)), len(timed)
    rows = read_prompts(default_prompts_path())
    first = [rows[i % len(rows)] for i in range(batch)]
    return [first] * (warmup + rounds), warmup, rounds


@pytest.mark.benchmark(timer=cuda_clock, group="pipeline", disable_gc=True)
@pytest.mark.parametrize("recipe", LADDER, ids=[r.name for r in LADDER])
def test_pipeline(benchmark, recipe, steps, batch, engine_for, models, device, rounds, pytestconfig):
    # Under --bench-batch the case builds engines of its own, measures what they and their run take, and frees them:
    # the memory that bounds the batch. Otherwise engines are shared with the other benchmarks of the run.
    sweep = pytestconfig.getoption("--bench-batch") != [1]
    before = allocated_mib(device)
    reset_peak_memory(device)
    # under recipe.loop, the U-ViT stage is the whole solver loop of `steps` calls
    engines = recipe_engines(recipe, lambda c, b: engine_for(c, b, steps=steps, batch=batch, cache_it=not sweep))
    build_peak = peak_memory_mib(device)
    stages = {c: Events(e.output, device=device, label=f"{c} {e.name}") for c, e in engines.items()}
    pipe = Pipeline(models, device, plan=make_plan(steps=steps), **pipeline_stages(recipe, stages))
    asked = pytestconfig.getoption("--bench-warmup")  # the seed protocol warms up on 5 images unless told otherwise
    prompts, warmup, timed = image_plan(
        pytestconfig.getoption("--bench-protocol"), rounds=rounds["pipeline"], warmup=rounds["pipeline_warmup"],
        seed_warmup=asked if asked >= 0 else WARMUP_IMAGES, limit=pytestconfig.getoption("--bench-limit"),
        batch=batch,
    )  # fmt: skip
    queue, results = iter(prompts), []

    def next_call():
        ps = next(queue)
        return (), {"prompts": [p.prompt for p in ps], "seeds": [p.seed for p in ps], "_ps": ps}

    def one_call(*, prompts, seeds, _ps):
        made = pipe.batch(prompts, seeds)  # returns after the images are on the host
        results.extend(zip(_ps, made, strict=True))
        return made

    reset_peak_memory(device)
    with ClockSampler(device) as clocks:
        benchmark.pedantic(one_call, setup=next_call, rounds=timed, warmup_rounds=warmup, iterations=1)

    warmup = 0 if benchmark.disabled else warmup  # disabled: one untimed call, nothing skipped
    calls = pipe.plan.calls
    per_call = 1 if recipe.loop else calls  # U-ViT stage events per pipeline call
    per_batch = {
        "clip_ms": stages["clip"].ms(skip=warmup),
        "decoder_ms": stages["decoder"].ms(skip=warmup),
        "uvit_ms": [sum(chunk) for chunk in _chunks(stages["uvit"].ms(skip=warmup * per_call), per_call)],
    }
    # inside a whole-loop graph a step is not timed on its own: its time is the loop's over the number of calls
    step_ms = [ms / calls for ms in per_batch["uvit_ms"]] if recipe.loop else stages["uvit"].ms(skip=warmup * calls)
    wall_s = float("nan") if benchmark.disabled else benchmark.stats.stats.median
    benchmark.extra_info.update(
        recipe=recipe.name, label=recipe.label, size=models.config.name, device=str(device), weights=models.weights,
        images=timed * batch, warmup_images=warmup * batch, protocol=pytestconfig.getoption("--bench-protocol"),
        **{k: statistics.median(v) for k, v in per_batch.items()},
        step_p50_ms=summary_ms(step_ms)["p50_ms"], step_p90_ms=summary_ms(step_ms)["p90_ms"],
        wall_p50_ms=wall_s * 1e3, flops=pipeline_flops(models.config.name, calls=calls) * batch, steps=calls,
        batch=batch, images_per_s=batch / wall_s,
        nonfinite_images=nonfinite(results[warmup * batch :]),
        peak_mib=peak_memory_mib(device),
        engines={c: e.name for c, e in engines.items()},
        build_seconds={c: e.seconds for c, e in engines.items()},
        noise_order=pipe.noise_order, rounding=pipe.rounding, **clocks.summary(),
    )  # fmt: skip
    if sweep:  # the engines' weights, graphs and activations at their peak (built or run), beyond what was held before
        peak = max(build_peak, peak_memory_mib(device)) - before
        benchmark.extra_info["footprint_mib"] = peak if device.type == "cuda" else None  # CUDA's allocator counts it
        for e in engines.values():
            e.close()
        free_memory(device)
    folder = recipe.name + (f"-{steps}steps" if steps != STEPS else "") + (f"-batch{batch}" if batch != 1 else "")
    timed_results = results[warmup * batch :]
    # a timed call's wall time, shared by the images it made (none where timing is off)
    per_call = [] if benchmark.disabled else benchmark.stats.stats.data
    seconds = [s / batch for s in per_call for _ in range(batch)] or [None] * len(timed_results)
    _save(pytestconfig.getoption("--bench-images") / folder, timed_results, seconds, benchmark.extra_info)
    last = results[-1][1]
    assert last.image.shape == (models.config.image_size, models.config.image_size, 3)


def nonfinite(results: list[tuple[Prompt, Result]]) -> int:
    """How many of these images had NaN or Inf in a stage: counted before they are saved, which refuses them."""
    return sum(result.nonfinite is not None for _, result in results)


def _chunks(values: list[float], n: int) -> list[list[float]]:
    return [values[i : i + n] for i in range(0, len(values), n)]


def _save(folder: Path, results: list[tuple[Prompt, Result]], seconds: list[float | None], info: dict) -> None:
    """Each timed image once (the quick protocol repeats its prompt) as `bench references` writes them
    (reference.images.save_results), so that `bench quality` takes the folder like any other; a NaN image is listed
    as refused, and raised once the others are written."""
    seen, made = set(), []
    for (p, result), s in zip(results, seconds, strict=True):
        if p.index not in seen:
            seen.add(p.index)
            made.append((p, result, s))
    save_results(folder, made, metadata=info)
