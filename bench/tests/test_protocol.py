"""The seed protocol's image plan: 5 warm-up images from prompts.tsv, then the (possibly limited) timed pairs."""

import pytest

from bench.bench_pipeline import WARMUP_IMAGES, image_plan
from reference.prompts import default_prompts_path, read_prompts

try:
    ROWS = read_prompts(default_prompts_path())
except FileNotFoundError:
    ROWS = None
needs_prompts = pytest.mark.skipif(
    ROWS is None, reason="prompts.tsv not found: the seed protocol reads ../shared/prompts.tsv beside the checkout"
)


@needs_prompts
@pytest.mark.parametrize("limit", [0, 2, 8])
def test_seed_plan_calls_every_image_it_counts(limit):
    prompts, warmup, timed = image_plan("seed", rounds=3, warmup=1, limit=limit)
    assert len(prompts) == warmup + timed  # pytest-benchmark draws exactly this many
    assert warmup == WARMUP_IMAGES
    assert prompts[:warmup] == ROWS[:WARMUP_IMAGES]
    assert prompts[warmup:] == (ROWS[:limit] if limit else ROWS)


def test_quick_plan_repeats_one_prompt():
    prompts, warmup, timed = image_plan("quick", rounds=3, warmup=2)
    assert (warmup, timed, len(prompts)) == (2, 3, 5)
    assert len(set(prompts)) == 1
