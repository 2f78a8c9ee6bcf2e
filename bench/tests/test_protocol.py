"""The seed protocol's image plan: 5 warm-up images from prompts.tsv, then the (possibly limited) timed pairs."""

import pytest

from bench.bench_pipeline import WARMUP_IMAGES, image_plan
from reference.prompts import default_prompts_path, read_prompts


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
    assert prompts[:warmup] == [[p] for p in rows[:WARMUP_IMAGES]]
    assert prompts[warmup:] == [[p] for p in (rows[:limit] if limit else rows)]


def test_quick_plan_repeats_one_prompt():
    prompts, warmup, timed = image_plan("quick", rounds=3, warmup=2)
    assert (warmup, timed, len(prompts)) == (2, 3, 5)
    assert {tuple(call) for call in prompts} == {(read_prompts(default_prompts_path())[0],)}


@pytest.mark.parametrize("batch", [2, 41])
def test_a_batch_call_takes_the_first_prompts_in_turn(batch):
    rows = read_prompts(default_prompts_path())
    prompts, warmup, timed = image_plan("quick", rounds=2, warmup=1, batch=batch)
    assert (warmup, timed) == (1, 2)
    assert prompts == [[rows[i % len(rows)] for i in range(batch)]] * 3


def test_the_seed_protocol_is_one_image_a_call(prompts_tsv):
    with pytest.raises(pytest.UsageError, match="one image at a time.*--bench-protocol quick"):
        image_plan("seed", rounds=3, warmup=1, path=prompts_tsv, batch=4)


def test_images_with_nan_are_counted():
    import torch

    from bench.bench_pipeline import nonfinite
    from reference.pipeline import Result

    def made(stage):
        return Result(torch.zeros(2, 2, 3, dtype=torch.uint8), torch.zeros(1, 4, 2, 2), "seed", "truncate", stage)

    p = read_prompts(default_prompts_path())[0]
    assert nonfinite([(p, made(None)), (p, made("uvit")), (p, made("decoder"))]) == 2
