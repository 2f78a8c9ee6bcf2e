"""The Triton row quantiser against engines.fp8.quantize: on the GPU directly; on a CPU through Triton's interpreter,
where only the scales are checked (below)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from engines.fp8 import E4M3, E4M3_MAX, quantize
from plugin.tests import INTERPRETING, ON_GPU, rerun_under_interpreter

# (M, N): the U-ViT's fc2 and attn.proj inputs at full size (both guidance halves), short and odd rows everywhere.
SHAPES = [(37, 100), (5, 3000), (64, 1536), (16, 6144)] + ([(2210, 6144), (2210, 1536)] if ON_GPU else [])
# Triton 3.9's interpreter rounds to e4m3 without carrying into the exponent (7.94 comes out as 4.0, not 8.0).
E4M3_ROUNDING = pytest.mark.skipif(INTERPRETING, reason="Triton's interpreter rounds fp32 to e4m3 wrongly")
# gelu="tanh" is inline PTX (tanh.approx.f32), which the interpreter cannot run
GELUS = ["none", "erf", pytest.param("tanh", marks=pytest.mark.skipif(not ON_GPU, reason="inline PTX: GPU only"))]
# how far the kernel's f(x) may be from torch's in fp64, relative: fp32 erf; the tanh instruction's 2^-11
F_RTOL = {"none": 0, "erf": 1e-6, "tanh": 2**-10}


def rows(shape, seed, *, gelu):
    """fc1-like rows, and two rows of small values whose largest GELU magnitude lies on GELU's negative side."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g) * 2
    x[0] *= 0.02
    x[-1] = x[-1] * 1e-3 if gelu == "none" else -x[-1].abs() * 0.5 - 0.3
    return x


def expected(x, gelu):
    f = x.double() if gelu == "none" else F.gelu(x.double(), approximate="tanh" if gelu == "tanh" else "none")
    return quantize(f.float(), rows=True)


@pytest.mark.parametrize("gelu", GELUS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32], ids=["fp16", "bf16", "fp32"])
@pytest.mark.parametrize("shape", SHAPES, ids=["x".join(map(str, s)) for s in SHAPES])
def test_scales_are_the_row_maxima(kernel_device, shape, dtype, gelu):
    from plugin.fp8 import quantize_rows

    x = rows(shape, hash((shape, gelu)) % 2**31, gelu=gelu).to(dtype)
    q, scale = quantize_rows(x.to(kernel_device), gelu)
    want_q, want_scale = expected(x, gelu)
    assert q.dtype == E4M3 and q.shape == shape and scale.shape == (shape[0], 1) and scale.dtype == torch.float32
    torch.testing.assert_close(scale.cpu(), want_scale, rtol=F_RTOL[gelu], atol=0)


@E4M3_ROUNDING
@pytest.mark.parametrize("gelu", GELUS)
@pytest.mark.parametrize("shape", SHAPES, ids=["x".join(map(str, s)) for s in SHAPES])
def test_values_round_as_torch_rounds_them(kernel_device, shape, gelu):
    from plugin.fp8 import quantize_rows

    x = rows(shape, hash((shape, gelu, 1)) % 2**31, gelu=gelu).half()
    q, scale = quantize_rows(x.to(kernel_device), gelu)
    want_q, want_scale = expected(x, gelu)
    got, want = q.cpu().float(), want_q.float()
    differ = got != want
    # a product with the reciprocal and a quotient part in the last fp32 bit (and the tanh instruction's error, 2^-11,
    # is 2^-8 of an e4m3 step): a value near a rounding midpoint may go the other way, one e4m3 step (2^-3 of its
    # binade), and nowhere else
    assert differ.float().mean().item() < (2e-2 if gelu == "tanh" else 1e-3), differ.sum().item()
    step = torch.exp2(torch.floor(torch.log2(want.abs().clamp(min=2**-6))) - 3)
    assert ((got - want).abs() <= step)[differ].all()
    assert got.abs().max() <= E4M3_MAX and (got.abs().amax(dim=1) == E4M3_MAX).all()  # each row reaches the top


def test_zero_rows_and_strided_rows(kernel_device):
    from plugin.fp8 import quantize_rows

    x = torch.randn(4, 200, device=kernel_device)
    x[1] = 0
    q, scale = quantize_rows(x[:, :96], "none")  # rows 200 apart
    assert scale[1].item() == pytest.approx(1e-12)
    assert (q[1].float() == 0).all()
    torch.testing.assert_close(scale.cpu(), quantize(x[:, :96].cpu(), rows=True)[1], rtol=0, atol=0)


def test_bad_inputs_are_named(kernel_device):
    from plugin.fp8 import quantize_rows

    with pytest.raises(ValueError, match="2-d tensor with contiguous rows"):
        quantize_rows(torch.ones(2, 3, 16, device=kernel_device), "none")
    with pytest.raises(ValueError, match="2-d tensor with contiguous rows"):
        quantize_rows(torch.ones(16, 4, device=kernel_device).t(), "none")
    with pytest.raises(ValueError, match="fp16, bf16 or fp32; got torch.int32"):
        quantize_rows(torch.ones(4, 16, device=kernel_device, dtype=torch.int32), "none")
    with pytest.raises(ValueError, match="unknown gelu 'quick'"):
        quantize_rows(torch.ones(4, 16, device=kernel_device), "quick")
    if kernel_device == "cpu":  # under the interpreter
        with pytest.raises(ValueError, match="gelu='tanh' uses the GPU's tanh instruction"):
            quantize_rows(torch.ones(4, 16), "tanh")


def test_cpu_tensors_are_refused_outside_the_interpreter():
    from plugin.fp8 import quantize_rows

    if INTERPRETING:
        pytest.skip("the interpreter runs CPU tensors")
    with pytest.raises(ValueError, match="CUDA tensors, or TRITON_INTERPRET=1"):
        quantize_rows(torch.ones(4, 16), "none")


@pytest.mark.gpu
def test_works_inside_torch_compile_and_cuda_graphs():
    from engines.runtime import Graphed
    from plugin.fp8 import quantize_rows

    if INTERPRETING:
        pytest.skip("compile and graphs need the GPU kernels, not the interpreter")
    x = torch.randn(64, 1536, device="cuda", dtype=torch.float16)
    want_q, want_scale = quantize_rows(x, "erf")
    compiled = torch.compile(lambda t: quantize_rows(t * 2, "erf"), fullgraph=True)  # one opaque op: no graph break
    q, scale = compiled(x / 2)
    assert torch.equal(q.view(torch.uint8), want_q.view(torch.uint8)) and torch.equal(scale, want_scale)
    graphed = Graphed(lambda x: dict(zip(("q", "scale"), quantize_rows(x, "erf"), strict=True)), {"x": x})
    assert torch.equal(graphed(x=x * -3)["scale"], quantize_rows(x * -3, "erf")[1])


def test_kernels_through_the_interpreter():
    rerun_under_interpreter(__file__)
