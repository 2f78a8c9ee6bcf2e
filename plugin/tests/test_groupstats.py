"""The channels_last GroupNorm ops against float64 torch: on the GPU directly; on a CPU through Triton's interpreter."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from plugin.tests import INTERPRETING, ON_GPU, rerun_under_interpreter
from plugin.tests.test_groupnorm import DECODER

# channels_last shapes group_stats takes: power-of-two channel blocks holding whole groups
STATS_SHAPES = [(1, 64, 8, 8), (2, 128, 4, 8), (1, 32, 1, 33), (1, 512, 4, 4)] + (DECODER if ON_GPU else [])


@pytest.mark.parametrize("residual", [False, True], ids=["stats", "add+stats"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32], ids=["fp16", "fp32"])
@pytest.mark.parametrize("shape", STATS_SHAPES, ids=["x".join(map(str, s)) for s in STATS_SHAPES])
def test_group_stats_of_x_plus_bias_plus_residual(kernel_device, shape, dtype, residual):
    from plugin.groupstats import add_group_stats, group_stats

    g = torch.Generator().manual_seed(hash((shape, residual)) % 2**31)
    x, r = (torch.randn(shape, generator=g) for _ in range(2))
    x = x * (0.05 + torch.rand(shape[1], 1, 1, generator=g)) + 40  # a mean far larger than the spread
    bias = torch.randn(shape[1], generator=g)
    x, r, bias = (t.to(kernel_device, dtype) for t in (x, r, bias))
    x, r = (t.contiguous(memory_format=torch.channels_last) for t in (x, r))
    want = x.double() + bias.double()[:, None, None]
    if residual:
        out, mean, rstd = add_group_stats(x, bias, r, 32, 1e-6)
        want = (x.float() + bias.float()[:, None, None] + r.float()).to(dtype)  # what the kernel writes
        assert out.is_contiguous(memory_format=torch.channels_last)
        assert torch.equal(out, want)
        want = want.double()
    else:
        mean, rstd = group_stats(x, bias, 32, 1e-6)
    var_want, mean_want = torch.var_mean(want.reshape(shape[0], 32, -1), dim=-1, correction=0)
    assert mean.shape == rstd.shape == (shape[0], 32) and mean.dtype == rstd.dtype == torch.float32
    torch.testing.assert_close(mean.double(), mean_want, rtol=1e-6, atol=0)
    torch.testing.assert_close(rstd.double(), torch.rsqrt(var_want + 1e-6), rtol=2e-5, atol=0)


def test_group_stats_names_bad_input(kernel_device):
    from plugin.groupstats import add_group_stats, group_stats

    x = torch.zeros(1, 64, 4, 4, device=kernel_device).contiguous(memory_format=torch.channels_last)
    with pytest.raises(ValueError, match="channels_last"):
        group_stats(x.contiguous(), None, 32, 1e-6)
    with pytest.raises(ValueError, match="residual is torch.float16"):
        add_group_stats(x, x[0, :, 0, 0], x.half(), 32, 1e-6)
    with pytest.raises(ValueError, match="one value per channel"):
        group_stats(x, x[0, :4, 0, 0], 32, 1e-6)
    with pytest.raises(ValueError, match="do not split into 32 groups"):
        group_stats(x[:, :48], None, 32, 1e-6)
    with pytest.raises(ValueError, match="whole groups"):
        group_stats(torch.zeros(1, 96, 4, 4, device=kernel_device).contiguous(memory_format=torch.channels_last),
                    None, 32, 1e-6)  # fmt: skip


@pytest.mark.parametrize("silu", [False, True], ids=["gn", "gn+silu"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32], ids=["fp16", "fp32"])
@pytest.mark.parametrize("shape", STATS_SHAPES, ids=["x".join(map(str, s)) for s in STATS_SHAPES])
def test_statistics_then_apply_is_groupnorm_of_x_plus_bias(kernel_device, shape, dtype, silu):
    from plugin.groupstats import group_norm_apply, group_stats

    g = torch.Generator().manual_seed(hash((shape, silu)) % 2**31)
    x = torch.randn(shape, generator=g) * 2 + 3
    bias, w, b = (torch.randn(shape[1], generator=g) for _ in range(3))
    x, bias, w, b = (t.to(kernel_device, dtype) for t in (x, bias, w, b))
    x = x.contiguous(memory_format=torch.channels_last)
    y = group_norm_apply(x, bias, *group_stats(x, bias, 32, 1e-6), w, b, silu)
    ref = F.group_norm(x.double() + bias.double()[:, None, None], 32, w.double(), b.double(), 1e-6)
    ref = F.silu(ref) if silu else ref
    assert y.dtype == dtype and y.is_contiguous(memory_format=torch.channels_last)
    err = ((y.double() - ref).norm() / ref.norm()).item()
    assert err < {torch.float16: 1e-3, torch.float32: 1e-5}[dtype], err


def test_apply_names_bad_input(kernel_device):
    from plugin.groupstats import group_norm_apply

    x = torch.zeros(1, 64, 4, 4, device=kernel_device).contiguous(memory_format=torch.channels_last)
    stats, ones = torch.zeros(1, 32, device=kernel_device), torch.ones(64, device=kernel_device)
    with pytest.raises(ValueError, match="channels_last"):
        group_norm_apply(x.contiguous(), None, stats, stats, ones, ones, True)
    with pytest.raises(ValueError, match=r"statistics \(1, 16\)"):
        group_norm_apply(x, None, stats[:, :16], stats, ones, ones, True)
    with pytest.raises(ValueError, match="weight of one value per channel"):
        group_norm_apply(x, None, stats, stats, ones[:32], ones, True)


def test_statistics_are_the_same_call_after_call_and_in_a_cuda_graph(kernel_device):
    """The same inputs give bit-identical outputs: no state carried from call to call, none in a graph replay."""
    from plugin.groupstats import add_group_stats

    g = torch.Generator().manual_seed(1)
    x, r = (torch.randn(2, 256, 32, 32, generator=g).to(kernel_device).contiguous(memory_format=torch.channels_last)
            for _ in range(2))  # fmt: skip
    bias = torch.randn(256, generator=g).to(kernel_device)
    first = add_group_stats(x, bias, r, 32, 1e-6)
    for _ in range(3):
        for a, b in zip(first, add_group_stats(x, bias, r, 32, 1e-6), strict=True):
            assert torch.equal(a, b)
    if kernel_device != "cuda":
        return
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = add_group_stats(x, bias, r, 32, 1e-6)
    for _ in range(3):
        graph.replay()
        for a, b in zip(first, captured, strict=True):
            assert torch.equal(a, b)


@pytest.mark.skipif(INTERPRETING, reason="the interpreter runs the kernels on CPU tensors")
def test_cpu_tensors_are_refused_without_the_interpreter():
    from plugin.groupstats import group_norm_apply, group_stats

    x = torch.zeros(1, 64, 4, 4).contiguous(memory_format=torch.channels_last)
    with pytest.raises(ValueError, match="TRITON_INTERPRET=1; got cpu"):
        group_stats(x, None, 32, 1e-6)
    stats, ones = torch.zeros(1, 32), torch.ones(64)
    with pytest.raises(ValueError, match="TRITON_INTERPRET=1; got cpu"):
        group_norm_apply(x, None, stats, stats, ones, ones, True)


def test_kernels_through_the_interpreter():
    rerun_under_interpreter(__file__)
