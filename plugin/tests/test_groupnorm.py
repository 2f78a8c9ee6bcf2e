"""The Triton GroupNorm against fp32 GroupNorm: on the GPU directly; on a CPU through Triton's interpreter."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from plugin.tests import INTERPRETING, ON_GPU, rerun_under_interpreter

# (N, C, H, W): the SD decoder's GroupNorm inputs at full size on the GPU, small and odd shapes everywhere.
SMALL = [(1, 64, 8, 8), (2, 96, 5, 7), (1, 128, 16, 16), (1, 512, 4, 4), (3, 32, 1, 33)]
DECODER = [
    (1, 512, 64, 64),
    (1, 512, 128, 128),
    (1, 512, 256, 256),
    (1, 256, 256, 256),
    (1, 256, 512, 512),
    (1, 128, 512, 512),
]
SHAPES = SMALL + (DECODER if ON_GPU else [])
TOL = {torch.float32: 2e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}  # relative L2, about 4 output roundings


@pytest.mark.parametrize("silu", [False, True], ids=["gn", "gn+silu"])
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32], ids=["fp16", "bf16", "fp32"])
@pytest.mark.parametrize("shape", SHAPES, ids=["x".join(map(str, s)) for s in SHAPES])
def test_matches_fp32_groupnorm(kernel_device, shape, dtype, channels_last, silu):
    from plugin.groupnorm import group_norm

    g = torch.Generator().manual_seed(hash((shape, silu)) % 2**31)
    # an offset mean: a one-pass E[x^2] - E[x]^2 in low precision would fail here
    x = (torch.randn(shape, generator=g) * 2 + 3).to(kernel_device, dtype)
    w, b = (torch.randn(shape[1], generator=g).to(kernel_device, dtype) for _ in range(2))
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    y = group_norm(x, w, b, 32, 1e-6, silu)
    ref = F.group_norm(x.double(), 32, w.double(), b.double(), 1e-6)
    ref = F.silu(ref) if silu else ref
    assert y.dtype == dtype and y.shape == x.shape
    assert y.is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    rel = ((y.double() - ref).norm() / ref.norm()).item()
    assert rel < TOL[dtype], rel


def test_bad_inputs_are_named(kernel_device):
    from plugin.groupnorm import group_norm

    w = torch.ones(48, device=kernel_device)
    with pytest.raises(ValueError, match="48 channels do not split into 32 groups"):
        group_norm(torch.ones(1, 48, 4, 4, device=kernel_device), w, w, 32, 1e-6, False)
    with pytest.raises(ValueError, match=r"expects \(N, C, H, W\)"):
        group_norm(torch.ones(48, 4, device=kernel_device), w, w, 32, 1e-6, False)


def test_module_is_a_drop_in_for_groupnorm(kernel_device):
    from plugin.groupnorm import TritonGroupNorm

    gn = torch.nn.GroupNorm(32, 64, eps=1e-6).to(kernel_device)
    with torch.no_grad():
        gn.weight.normal_(), gn.bias.normal_()
    tg = TritonGroupNorm.from_groupnorm(gn)
    assert tg.state_dict().keys() == gn.state_dict().keys()
    x = torch.randn(2, 64, 8, 8, device=kernel_device)
    torch.testing.assert_close(tg(x), gn(x), atol=1e-4, rtol=1e-4)


@pytest.mark.gpu
def test_works_inside_torch_compile_and_cuda_graphs():
    from plugin.groupnorm import TritonGroupNorm

    if INTERPRETING:
        pytest.skip("compile and graphs need the GPU kernels, not the interpreter")
    tg = TritonGroupNorm(32, 128, 1e-6, silu=True).cuda().half().requires_grad_(False)  # inference: no autograd
    x = torch.randn(1, 128, 64, 64, device="cuda", dtype=torch.float16)
    expect = tg(x)
    compiled = torch.compile(tg, fullgraph=True)  # one opaque custom op: no graph break
    torch.testing.assert_close(compiled(x), expect, rtol=2e-3, atol=2e-3)
    static = x.clone()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        tg(static)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = tg(static)
    static.copy_(x * -1)
    graph.replay()
    torch.testing.assert_close(out, tg(x * -1), rtol=2e-3, atol=2e-3)


def test_kernels_through_the_interpreter():
    rerun_under_interpreter(__file__)
