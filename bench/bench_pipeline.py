"""`pytest bench --benchmark-only`: the whole pipeline (clip, 50 guided steps, decoder, uint8) per recipe.

pytest-benchmark times each image with a synchronising clock (the wall time); CUDA events around every stage give
the GPU time of clip, the U-ViT steps and the decoder beside it, and NVTX ranges label them for Nsight Systems.
`--bench-protocol seed` is the original protocol: 5 warm-up images, then the 40 (prompt, seed) pairs.
`--bench-steps 20,25,50` times each recipe at each step count, a case each.
The images are saved (outside the timed region) for the image-quality report (`python -m bench quality`).
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest

from bench.clocks import ClockSampler
from bench.flops import pipeline_flops
from bench.ladder import LADDER, recipe_engines
from bench.ladder import stages as pipeline_stages
from bench.timing import Events, cuda_clock, peak_memory_mib, reset_peak_memory, summary_ms
from reference.dpm_solver import STEPS, make_plan
from reference.images import save_result
from reference.pipeline import Pipeline
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
) -> tuple[list[Prompt], int, int]:
    """(prompts in call order, warm-up count, timed count) for one pipeline benchmark; `path`: prompts.tsv."""
    if protocol == "seed":
        rows = read_prompts(path or default_prompts_path())
        timed = rows[:limit] if limit else rows  # the warm-up images come from the whole file, whatever the limit
        return rows[:seed_warmup] + timed, min(seed_warmup, len(rows)), len(timed)
    first = read_prompts(default_prompts_path())[0]
    return [first] * (warmup + rounds), warmup, rounds


@pytest.mark.benchmark(timer=cuda_clock, group="pipeline", disable_gc=True)
@pytest.mark.parametrize("recipe", LADDER, ids=[r.name for r in LADDER])
def test_pipeline(benchmark, recipe, steps, engine_for, models, device, rounds, pytestconfig):
    # under recipe.loop, the U-ViT stage is the whole solver loop of `steps` calls
    engines = recipe_engines(recipe, lambda c, b: engine_for(c, b, steps=steps))
    stages = {c: Events(e.output, device=device, label=f"{c} {e.name}") for c, e in engines.items()}
    pipe = Pipeline(models, device, plan=make_plan(steps=steps), **pipeline_stages(recipe, stages))
    asked = pytestconfig.getoption("--bench-warmup")  # the seed protocol warms up on 5 images unless told otherwise
    prompts, warmup, timed = image_plan(
        pytestconfig.getoption("--bench-protocol"), rounds=rounds["pipeline"], warmup=rounds["pipeline_warmup"],
        seed_warmup=asked if asked >= 0 else WARMUP_IMAGES, limit=pytestconfig.getoption("--bench-limit"),
    )  # fmt: skip
    queue, results = iter(prompts), []

    def next_image():
        p = next(queue)
        return (), {"prompt": p.prompt, "seed": p.seed, "_p": p}

    def one_image(*, prompt, seed, _p):
        result = pipe(prompt, seed)  # returns after the image is on the host
        results.append((_p, result))
        return result

    reset_peak_memory(device)
    with ClockSampler(device) as clocks:
        benchmark.pedantic(one_image, setup=next_image, rounds=timed, warmup_rounds=warmup, iterations=1)

    warmup = 0 if benchmark.disabled else warmup  # disabled: one untimed call, nothing skipped
    calls = pipe.plan.calls
    per_call = 1 if recipe.loop else calls  # U-ViT stage events per image
    per_image = {
        "clip_ms": stages["clip"].ms(skip=warmup),
        "decoder_ms": stages["decoder"].ms(skip=warmup),
        "uvit_ms": [sum(chunk) for chunk in _chunks(stages["uvit"].ms(skip=warmup * per_call), per_call)],
    }
    # inside a whole-loop graph a step is not timed on its own: its time is the loop's over the number of calls
    step_ms = [ms / calls for ms in per_image["uvit_ms"]] if recipe.loop else stages["uvit"].ms(skip=warmup * calls)
    wall_s = float("nan") if benchmark.disabled else benchmark.stats.stats.median
    benchmark.extra_info.update(
        recipe=recipe.name, label=recipe.label, size=models.config.name, device=str(device), weights=models.weights,
        images=timed, warmup_images=warmup, protocol=pytestconfig.getoption("--bench-protocol"),
        **{k: statistics.median(v) for k, v in per_image.items()},
        step_p50_ms=summary_ms(step_ms)["p50_ms"], step_p90_ms=summary_ms(step_ms)["p90_ms"],
        wall_p50_ms=wall_s * 1e3, flops=pipeline_flops(models.config.name, calls=calls), steps=calls,
        peak_mib=peak_memory_mib(device),
        engines={c: e.name for c, e in engines.items()},
        build_seconds={c: e.seconds for c, e in engines.items()},
        noise_order=pipe.noise_order, rounding=pipe.rounding, **clocks.summary(),
    )  # fmt: skip
    folder = recipe.name if steps == STEPS else f"{recipe.name}-{steps}steps"
    _save(pytestconfig.getoption("--bench-images") / folder, results[warmup:], benchmark.extra_info)
    last = results[-1][1]
    assert last.image.shape == (models.config.image_size, models.config.image_size, 3)
    assert last.latents.isfinite().all(), f"{recipe.name}: non-finite latents"


def _chunks(values: list[float], n: int) -> list[list[float]]:
    return [values[i : i + n] for i in range(0, len(values), n)]


def _save(folder, results, info) -> None:
    """Each timed image (reference.images.save_result), plus what made them."""
    folder.mkdir(parents=True, exist_ok=True)
    seen = set()
    for p, result in results:
        if p.index not in seen:
            seen.add(p.index)
            save_result(folder, p, result)
    (folder / "manifest.json").write_text(json.dumps({**info, "files": sorted(seen)}, indent=1, default=str))
