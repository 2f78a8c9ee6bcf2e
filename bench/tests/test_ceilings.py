import math

import pandas as pd
import pytest
import torch

from bench import ceilings
from bench.flops import component_flops
from reference.configs import ModelConfig


def test_step_shapes_are_every_linear_and_attention_of_the_step():
    u = ModelConfig.from_name("full").uvit
    linears, attention = ceilings.step_shapes("full")
    M, D, blocks = 2 * u.num_tokens, u.embed_dim, u.depth + 1  # both guidance halves in one call; in, mid, out blocks
    assert linears[(M, D, 3 * D, False)] == blocks  # qkv, no bias
    assert linears[(M, D, D, True)] == blocks  # attention output projection
    assert linears[(M, D, u.mlp_ratio * D, True)] == linears[(M, u.mlp_ratio * D, D, True)] == blocks
    assert linears[(M, 2 * D, D, True)] == u.depth // 2  # the long skips
    assert attention == {(2, u.num_heads, u.num_tokens, D // u.num_heads): blocks}
    flop = sum(2 * m * k * n * c for (m, k, n, _), c in linears.items())
    flop += sum(4 * b * h * n * n * d * c for (b, h, n, d), c in attention.items())
    assert flop == pytest.approx(component_flops("uvit", "full"), rel=1e-3)  # the rest: patch embedding, a conv


def measured(peak=0.2e12):
    linears = pd.DataFrame(
        {
            "M": [10, 10],
            "K": [4, 8],
            "N": [4, 4],
            "bias": [True, True],
            "calls": [3, 1],
            "us": [2.0, 4.0],
            "flop": [1e6, 4e6],
        }
    )  # fmt: skip  (rates 0.5e12 and 1e12 FLOP/s)
    attention = pd.DataFrame(
        {
            "shape": ["s", "s", "paper"],
            "calls": [2, 2, 0],
            "kernel": ["a", "b", "published"],
            "us": [5.0, 4.0, 1.0],
            "flop": [2e6, 2e6, 4e6],
        }
    )  # fmt: skip  (rates 0.4e12, 0.5e12, 4e12)
    return {"linears": linears, "attention": attention, "peak": peak, "copy": 2e12}


def test_room_takes_the_fastest_kernel_then_the_fastest_rates():
    r = ceilings.room(measured(), target_ms=0.03)
    first, second, third = r.to_dict("records")
    assert first["linears_ms"] == pytest.approx((3 * 2 + 4) / 1e3)
    assert first["attention_ms"] == pytest.approx(2 * 4.0 / 1e3)  # the faster kernel at the step's shape
    assert second["attention_ms"] == pytest.approx(2 * 2e6 / 4e12 * 1e3)  # at the best rate of any row
    assert third["linears_ms"] == pytest.approx((3 * 1e6 + 4e6) / 1e12 * 1e3)  # the faster linear's rate beats peak
    assert third["compute_ms"] == pytest.approx(third["linears_ms"] + third["attention_ms"])
    assert first["left_ms"] == pytest.approx(0.03 - first["compute_ms"])
    assert third["left_GB_at_copy_speed"] == pytest.approx(third["left_ms"] / 1e3 * 2e12 / 1e9)
    assert math.isclose(ceilings.room(measured(), target_ms=0.001)["left_GB_at_copy_speed"].max(), 0.0)


def test_room_uses_the_peak_when_it_is_the_faster_rate():
    third = ceilings.room(measured(peak=7e12), target_ms=1.0).iloc[2]
    assert third["linears_ms"] == pytest.approx(7e6 / 7e12 * 1e3)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_ceilings_need_a_gpu(tmp_path):
    from bench.cli import cli

    with pytest.raises(SystemExit) as e:
        cli(["ceilings", "--out", str(tmp_path / "c.md")])
    assert e.value.code == 2 and not (tmp_path / "c.md").exists()


@pytest.mark.gpu
def test_ceilings_report_on_the_gpu(tmp_path):
    out = ceilings.write_report(size="tiny", out=tmp_path / "c.md")
    m = ceilings.measure("tiny")
    assert (m["linears"]["us"] > 0).all() and (m["attention"]["us"] > 0).all() and m["peak"] > 1e12
    text = out.read_text()
    assert "## Linears" in text and "FlashAttention-3 (published)" in text and "What a 7 ms step leaves" in text
    with pytest.raises(FileExistsError):
        ceilings.write_report(size="tiny", out=out)


def test_the_report_states_what_the_most_generous_row_leaves():
    m = measured()
    text = ceilings.to_markdown({"gpu": "none"}, m, target_ms=0.03)
    last = ceilings.room(m, target_ms=0.03).iloc[-1]
    assert f"takes **{last['compute_ms']:.3f} ms**" in text and f"leaves **{last['left_ms']:.3f} ms**" in text
    assert "REPEAT" not in text and f"median over {ceilings.REPEAT} replays" in text
