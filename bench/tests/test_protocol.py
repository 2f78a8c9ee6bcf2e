"""The seed protocol's image plan: 5 warm-up images from prompts.tsv, then the (possibly limited) timed pairs."""

import pytest

from bench.bench_pipeline import WARMUP_IMAGES, image_plan
from reference.prompts import read_prompts


@pytest.fixture
def prompts_tsv(tmp_path):
    """A prompts file in the layout of ../shared/prompts.tsv, 12 rows."""
    path = tmp_path / "prompts.tsv"
    path.write_text("index\tseed\tprompt\n" + "".join(f"{i}\t{100 + i}\tprompt number {i}\n" for i in range(12)))
    return path


@pytest.mark.parametrize("limit", [0, 2, 8])
def test_seed_plan_calls_every_image_it_counts(prompts_tsv, limit):
    rows = read_prompts(prompts_tsv)
    prompts, warmup, timed = image_plan("seed", rounds=3, warmup=1, limit=limit, path=prompts_tsv)
    assert len(prompts) == warmup + timed  # pytest-benchmark draws exactly this many
    assert warmup == WARMUP_IMAGES
    assert prompts[:warmup] == rows[:WARMUP_IMAGES]
    assert prompts[warmup:] == (rows[:limit] if limit else rows)


def test_quick_plan_repeats_one_prompt():
    prompts, warmup, timed = image_plan("quick", rounds=3, warmup=2)
    assert (warmup, timed, len(prompts)) == (2, 3, 5)
    assert len(set(prompts)) == 1
