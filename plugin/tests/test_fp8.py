"""The Triton row quantiser and the LayerNorm + quantise kernel against torch (F.layer_norm, engines.fp8.quantize): on
the GPU directly; on a CPU through Triton's interpreter, where only the scales and the LayerNorm are checked (below)."""

from __future__ import annotations

import zlib

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
# how far the kernel's f(x) may be from the exact one, over |x|: GELU is x (1 + erf or tanh(...)) / 2, and where x < 0
# the sum cancels, so the error of erf in fp32 (a few units of 2^-24) or of the tanh instruction (2^-11) counts
# against 1, not against the small result
F_ATOL = {"none": 0, "erf": 2**-21, "tanh": 2**-11}


def rows(shape, seed, *, gelu):
    """fc1-like rows, and two rows of small values whose largest GELU magnitude lies on GELU's negative side."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g) * 2
    x[0] *= 0.02
    x[-1] = x[-1] * 1e-3 if gelu == "none" else -x[-1].abs() * 0.5 - 0.3
    return x


def seed(*parts) -> int:
    """A seed per parametrisation that is the same in every process (hash() of a string is not)."""
    return zlib.crc32(repr(parts).encode())


def only_at_midpoints(got, want, exact, error):
    """Where the kernel's e4m3 values differ from torch's, they are neighbours, one e4m3 step apart (2^-3 of the
    binade), and the exact value f(x) / scale lies within fp32's last bits (the kernel multiplies by the scale's
    reciprocal where torch divides) and the kernel's own error of f(x) (`error`, in the same units) of the midpoint
    between them, where either rounding is as right."""
    differ = got != want
    step = torch.exp2(torch.floor(torch.log2(want.abs().clamp(min=2**-6))) - 3)
    mid = (got.double() + want.double()) / 2
    near = (exact - mid).abs() <= 2**-20 * mid.abs() + error
    return bool(((got - want).abs() <= step)[differ].all() and near[differ].all())


def expected(x, gelu):
    f = x.double() if gelu == "none" else F.gelu(x.double(), approximate="tanh" if gelu == "tanh" else "none")
    return quantize(f.float(), rows=True)


@pytest.mark.parametrize("gelu", GELUS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32], ids=["fp16", "bf16", "fp32"])
@pytest.mark.parametrize("shape", SHAPES, ids=["x".join(map(str, s)) for s in SHAPES])
def test_scales_are_the_row_maxima(kernel_device, shape, dtype, gelu):
    from plugin.fp8 import quantize_rows

    x = rows(shape, seed(shape, gelu), gelu=gelu).to(dtype)
    q, scale = quantize_rows(x.to(kernel_device), gelu)
    want_q, want_scale = expected(x, gelu)
    assert q.dtype == E4M3 and q.shape == shape and scale.shape == (shape[0], 1) and scale.dtype == torch.float32
    torch.testing.assert_close(scale.cpu(), want_scale, rtol=F_RTOL[gelu], atol=0)


@E4M3_ROUNDING
@pytest.mark.parametrize("gelu", GELUS)
@pytest.mark.parametrize("shape", SHAPES, ids=["x".join(map(str, s)) for s in SHAPES])
def test_values_round_as_torch_rounds_them(kernel_device, shape, gelu):
    from plugin.fp8 import quantize_rows

    x = rows(shape, seed(shape, gelu, 1), gelu=gelu).half()
    q, scale = quantize_rows(x.to(kernel_device), gelu)
    got, want = q.cpu().float(), expected(x, gelu)[0].float()
    f = x.double() if gelu == "none" else F.gelu(x.double(), approximate="tanh" if gelu == "tanh" else "none")
    inv = 1 / scale.cpu().double()
    assert only_at_midpoints(got, want, f * inv, F_ATOL[gelu] * x.double().abs() * inv), (got != want).sum().item()
    assert got.abs().max() <= E4M3_MAX and (got.abs().amax(dim=1) == E4M3_MAX).all()  # each row reaches the top


def layernorm_case(shape, *, add, extra, dtype, seed=0):
    """x, y, weight, bias and extra as a U-ViT block's norms see them: a residual stream and a sublayer's output, an
    affine LayerNorm, and the long skip the next out-block concatenates."""
    g = torch.Generator().manual_seed(seed)
    M, N = shape
    t = lambda *s, k=1.0: (torch.randn(*s, generator=g) * k).to(dtype)  # noqa: E731
    return t(M, N, k=3), t(M, N) if add else None, t(N, k=0.5) + 1, t(N, k=0.1), t(M, N // 2 + 8) if extra else None


def layernorm_reference(x, y, w, b, extra):
    """torch's add (in x's dtype) and LayerNorm (in fp32, cast back): the reference block's norm(x + sublayer(x))."""
    h = x + y if y is not None else x
    return F.layer_norm(h.float(), (h.shape[-1],), w.float(), b.float(), 1e-5).to(x.dtype)


LAYERNORM_CASES = [(False, False), (True, False), (True, True)]  # (add, extra): norm1, norm2/3, norm3 before skip
# (M, N): short and odd rows, the U-ViT's (64 tokens; on the GPU both guidance halves at full size)
LAYERNORM_SHAPES = [(37, 100), (5, 3000), (64, 1536)] + ([(2210, 1536)] if ON_GPU else [])


@pytest.mark.parametrize("add,extra", LAYERNORM_CASES, ids=["norm", "add", "add+extra"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32], ids=["fp16", "bf16", "fp32"])
@pytest.mark.parametrize("shape", LAYERNORM_SHAPES, ids=["x".join(map(str, s)) for s in LAYERNORM_SHAPES])
def test_layernorm_and_its_row_scales_match_torch(kernel_device, shape, dtype, add, extra):
    from plugin.fp8 import add_layernorm_quantize

    if INTERPRETING and add and dtype == torch.bfloat16:
        pytest.skip("Triton's interpreter truncates fp32 to bf16 (1 + 3 * 2^-9 comes out 1.0); x + y rounds to bf16")
    x, y, w, b, e = layernorm_case(shape, add=add, extra=extra, dtype=dtype)
    on = lambda t: None if t is None else t.to(kernel_device)  # noqa: E731
    out, q, scale = add_layernorm_quantize(on(x), on(y), on(w), on(b), 1e-5, on(e))
    want = layernorm_reference(x, y, w, b, e)
    assert out.dtype == dtype and q.shape == (shape[0], shape[1] + (e.shape[1] if extra else 0))
    # the statistics' fp32 sums in another order: one rounding of fp16/bf16 apart at most, a few units of fp32's
    tol = max(torch.finfo(dtype).eps, 2**-20)
    torch.testing.assert_close(out.cpu(), want, rtol=tol, atol=tol)
    row = torch.cat([out.cpu(), e], -1) if extra else out.cpu()  # the kernel's own output, as torch would quantise it
    torch.testing.assert_close(scale.cpu(), quantize(row.float(), rows=True)[1], rtol=0, atol=0)


@E4M3_ROUNDING
@pytest.mark.parametrize("add,extra", LAYERNORM_CASES, ids=["norm", "add", "add+extra"])
def test_layernorm_values_round_as_torch_rounds_them(kernel_device, add, extra):
    from plugin.fp8 import add_layernorm_quantize

    x, y, w, b, e = layernorm_case(LAYERNORM_SHAPES[-1], add=add, extra=extra, dtype=torch.float16, seed=1)
    on = lambda t: None if t is None else t.to(kernel_device)  # noqa: E731
    out, q, scale = add_layernorm_quantize(on(x), on(y), on(w), on(b), 1e-5, on(e))
    row = torch.cat([out.cpu(), e], -1) if extra else out.cpu()
    got, want = q.cpu().float(), quantize(row.float(), rows=True)[0].float()
    assert only_at_midpoints(got, want, row.double() / scale.cpu().double(), 0), (got != want).sum().item()


def test_layernorm_inputs_are_checked(kernel_device):
    from plugin.fp8 import add_layernorm_quantize

    x, y, w, b, e = (t.to(kernel_device) for t in layernorm_case((8, 64), add=True, extra=True, dtype=torch.float32))
    with pytest.raises(ValueError, match=r"y is \(8, 32\); x \(8, 64\) needs \(8, 64\)"):
        add_layernorm_quantize(x, y[:, :32], w, b, 1e-5, None)
    with pytest.raises(ValueError, match=r"weight is \(63,\); x \(8, 64\) needs \(64,\)"):
        add_layernorm_quantize(x, y, w[:63], b, 1e-5, None)
    with pytest.raises(ValueError, match=r"extra is \(4, 40\); x \(8, 64\) needs \(8, N_extra\)"):
        add_layernorm_quantize(x, y, w, b, 1e-5, e[:4])
    with pytest.raises(ValueError, match="bias must be contiguous along rows, torch.float32"):
        add_layernorm_quantize(x, y, w, b.half(), 1e-5, None)
    with pytest.raises(ValueError, match="2-d tensor with contiguous rows"):
        add_layernorm_quantize(x.t(), None, w[:8], b[:8], 1e-5, None)


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


@pytest.mark.gpu
def test_layernorm_works_inside_torch_compile_and_cuda_graphs():
    from engines.runtime import Graphed
    from plugin.fp8 import add_layernorm_quantize

    if INTERPRETING:
        pytest.skip("compile and graphs need the GPU kernels, not the interpreter")
    x, y, w, b, e = (t.cuda() for t in layernorm_case((64, 1536), add=True, extra=True, dtype=torch.float16))
    want = add_layernorm_quantize(x, y, w, b, 1e-5, e)
    compiled = torch.compile(lambda x: add_layernorm_quantize(x * 2, y, w, b, 1e-5, e), fullgraph=True)
    got = compiled(x / 2)
    assert all(torch.equal(g.view(torch.uint8), v.view(torch.uint8)) for g, v in zip(got, want, strict=True))
    run = lambda x: dict(zip(("out", "q", "scale"), add_layernorm_quantize(x, y, w, b, 1e-5, e), strict=True))  # noqa: E731
    graphed = Graphed(run, {"x": x})
    assert torch.equal(graphed(x=x * -3)["out"], add_layernorm_quantize(x * -3, y, w, b, 1e-5, e)[0])


def test_kernels_through_the_interpreter():
    rerun_under_interpreter(__file__)
