"""Per-row FP8 (e4m3) quantisation in Triton, optionally of GELU(x): the `fp8` precision's activation scaling where
Inductor's own kernel is slow.

Two torch custom ops, one launch each. `unidiffuser::quantize_rows(x, gelu) -> (q, scale)`:
    f = the identity (gelu="none"), exact GELU (gelu="erf") or GELU's tanh form (gelu="tanh", with the GPU's
        approximate tanh instruction, relative error 2^-11), in fp32
    scale = max(amax(|f(x)|) over the row / 448, 1e-12)   (M, 1) fp32
    q = clamp(f(x) * (1 / scale), -448, 448) in e4m3, rounded to nearest even   (M, N)
torch (engines.fp8.quantize) divides by the scale instead; the two can differ in the last bit of fp32, and so by one
e4m3 step where f(x) / scale falls on a rounding midpoint (a few elements in 10^5).

Inductor fuses the U-ViT's fc2 input (fc1's output, GELU, row maximum, cast) into one persistent reduction, but at
rows of 6144 its kernel took 38 us on the H100, where a copy of the same bytes takes 14, and so did Triton kernels of
ours that evaluate erf for the maximum and again for the cast and divide by the scale: arithmetic, not memory, bounds
them. This kernel takes the row's maximum from x itself where GELU's increasing side decides it, so erf is evaluated
once per element, and it multiplies by the reciprocal: 23 us; 13 us with GELU's tanh form, whose tanh is one
instruction.
Two passes over each row, in chunks: the second reads from L2. gelu="tanh" runs on the GPU only (inline PTX), not
under Triton's interpreter.

`unidiffuser::add_layernorm_quantize(x, y, weight, bias, eps, extra) -> (out, q, scale)`, the U-ViT block's residual
add and post-LayerNorm with the quantisation of what the next FP8 linear reads (`fp8_layernorm=triton`):
    h = x + y, rounded to x's dtype as torch adds (x alone when y is None)
    out = layer_norm(h in fp32, weight, bias, eps), in x's dtype    (M, N)
    q, scale = the rows of cat([out, extra]) quantised as above     (M, N + E) e4m3, (M, 1) fp32
One program per row, held in registers. Inductor fuses the same into one persistent reduction per norm, which ran at
1.7-2.5 TB/s where a copy runs at 3.0; at the U-ViT's rows (2210 x 1536, on the H100) this kernel with its 8 warps
takes 7.9 us with the add against Inductor's 9.8, 7.7 without it against 9.2, and 10.5 with the long skip as `extra`
against 24.1 (with 4 warps 7.3, 6.5 and 10.0; 2 warps 8.0, 6.2 and 9.9; the step was measured with 8).
Imports nothing of the project.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from plugin import check_device

E4M3 = torch.float8_e4m3fn
E4M3_MAX = tl.constexpr(448.0)
GELUS = ("none", "erf", "tanh")
# GELU falls to its minimum (-0.16997 at x = -0.7518; its tanh form -0.17004 at -0.7525) and rises from there: wherever
# GELU(max x) >= 0.171, it is the row's largest magnitude.
GELU_MIN_BOUND = tl.constexpr(0.171)
LAYERNORM_WARPS = 8


@triton.jit
def _tanh_approx(x):
    return tl.inline_asm_elementwise("tanh.approx.f32 $0, $1;", "=f,f", [x], dtype=tl.float32, is_pure=True, pack=1)


@triton.jit
def _gelu(x, GELU: tl.constexpr):
    if GELU == "tanh":
        return 0.5 * x * (1.0 + _tanh_approx(0.7978845608028654 * (x + 0.044715 * x * x * x)))  # sqrt(2/pi)
    else:
        return 0.5 * x * (1.0 + tl.math.erf(x * 0.7071067811865476))


@triton.jit
def _scale(amax):
    return tl.maximum(tl.math.div_rn(amax, E4M3_MAX), 1e-12)  # IEEE, as torch divides


@triton.jit
def _quantize_rows(x_ptr, q_ptr, scale_ptr, N, s_x, s_q, GELU: tl.constexpr, CHUNK: tl.constexpr,
                   NCHUNK: tl.constexpr):  # fmt: skip
    row = tl.program_id(0)  # one program per row
    cols = tl.arange(0, CHUNK)
    x_row, q_row = x_ptr + row * s_x, q_ptr + row * s_q
    top = tl.full((CHUNK,), float("-inf"), tl.float32)  # GELU: max x; otherwise max |x|
    for i in tl.static_range(NCHUNK):
        x = tl.load(x_row + i * CHUNK + cols, mask=i * CHUNK + cols < N, other=0.0).to(tl.float32)
        top = tl.maximum(top, tl.abs(x) if GELU == "none" else x)
    amax = tl.max(top, axis=0)
    if GELU != "none":
        amax = _gelu(amax, GELU)
        if amax < GELU_MIN_BOUND:  # a row of small values: GELU's negative side may hold the maximum
            for i in tl.static_range(NCHUNK):
                x = tl.load(x_row + i * CHUNK + cols, mask=i * CHUNK + cols < N, other=0.0).to(tl.float32)
                amax = tl.maximum(amax, tl.max(tl.abs(_gelu(x, GELU)), axis=0))
    scale = _scale(amax)
    inv = 1.0 / scale
    for i in tl.static_range(NCHUNK):
        x = tl.load(x_row + i * CHUNK + cols, mask=i * CHUNK + cols < N, other=0.0).to(tl.float32)
        if GELU != "none":
            x = _gelu(x, GELU)
        q = tl.clamp(x * inv, -E4M3_MAX, E4M3_MAX)
        tl.store(q_row + i * CHUNK + cols, q.to(tl.float8e4nv), mask=i * CHUNK + cols < N)
    tl.store(scale_ptr + row, scale)


def launch_config(n: int, gelu: str) -> tuple[int, int]:
    """(chunk, warps), the fastest of 2-8 warps and chunks of 512-2048 on the H100 at the U-ViT's rows: fc2's 6144
    with GELU, attn.proj's 1536 without."""
    return (min(triton.next_power_of_2(n), 512), 2) if gelu == "none" else (min(triton.next_power_of_2(n), 2048), 4)


@triton.jit
def _add_layernorm_quantize(x_ptr, y_ptr, w_ptr, b_ptr, extra_ptr, out_ptr, q_ptr, scale_ptr, N, E, s_x, s_y,
                            s_e, s_out, s_q, eps, HAS_Y: tl.constexpr, BLOCK_N: tl.constexpr,
                            BLOCK_E: tl.constexpr):  # fmt: skip
    row = tl.program_id(0)  # one program per row
    cols = tl.arange(0, BLOCK_N)
    inside = cols < N
    h = tl.load(x_ptr + row * s_x + cols, mask=inside, other=0.0)
    if HAS_Y:  # rounded to x's dtype, as torch adds (Triton's interpreter cannot add bf16 itself)
        h = (h.to(tl.float32) + tl.load(y_ptr + row * s_y + cols, mask=inside, other=0.0).to(tl.float32)).to(h.dtype)
    h = h.to(tl.float32)
    mean = tl.sum(h, axis=0) / N
    centred = tl.where(inside, h - mean, 0.0)
    rstd = tl.math.rsqrt(tl.sum(centred * centred, axis=0) / N + eps)
    w = tl.load(w_ptr + cols, mask=inside, other=0.0).to(tl.float32)
    b = tl.load(b_ptr + cols, mask=inside, other=0.0).to(tl.float32)
    out = (centred * rstd * w + b).to(out_ptr.dtype.element_ty)
    tl.store(out_ptr + row * s_out + cols, out, mask=inside)
    out = out.to(tl.float32)  # what torch would quantise: the rounded output
    amax = tl.max(tl.abs(out), axis=0)
    if BLOCK_E > 0:
        ecols = tl.arange(0, BLOCK_E)
        extra = tl.load(extra_ptr + row * s_e + ecols, mask=ecols < E, other=0.0).to(tl.float32)
        amax = tl.maximum(amax, tl.max(tl.abs(extra), axis=0))
    scale = _scale(amax)
    inv = 1.0 / scale
    tl.store(q_ptr + row * s_q + cols, tl.clamp(out * inv, -E4M3_MAX, E4M3_MAX).to(tl.float8e4nv), mask=inside)
    if BLOCK_E > 0:
        q_extra = tl.clamp(extra * inv, -E4M3_MAX, E4M3_MAX).to(tl.float8e4nv)
        tl.store(q_ptr + row * s_q + N + ecols, q_extra, mask=ecols < E)
    tl.store(scale_ptr + row, scale)


def _check_rows(name: str, x: Tensor) -> None:
    """What the kernels take: 2-d, contiguous rows, a floating dtype, on the GPU or under the interpreter."""
    if x.dim() != 2 or x.stride(1) != 1:
        raise ValueError(f"{name} takes a 2-d tensor with contiguous rows; got shape {tuple(x.shape)}, "
                         f"strides {x.stride()}")  # fmt: skip
    if x.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        raise ValueError(f"{name} takes fp16, bf16 or fp32; got {x.dtype}")
    check_device(x, name)


@torch.library.custom_op("unidiffuser::add_layernorm_quantize", mutates_args=())
def add_layernorm_quantize(
    x: Tensor, y: Tensor | None, weight: Tensor, bias: Tensor, eps: float, extra: Tensor | None
) -> tuple[Tensor, Tensor, Tensor]:
    _check_rows("add_layernorm_quantize", x)
    M, N = x.shape
    for name, t, shape in (("y", y, (M, N)), ("weight", weight, (N,)), ("bias", bias, (N,)), ("extra", extra, None)):
        if t is None:
            continue
        if (shape is not None and t.shape != shape) or (shape is None and (t.dim() != 2 or t.shape[0] != M)):
            want = f"({M}, N_extra)" if shape is None else str(shape)
            raise ValueError(f"add_layernorm_quantize: {name} is {tuple(t.shape)}; x {tuple(x.shape)} needs {want}")
        if t.dtype != x.dtype or t.device != x.device or t.stride(-1) != 1:
            raise ValueError(f"add_layernorm_quantize: {name} must be contiguous along rows, {x.dtype} on {x.device} "
                             f"like x; got {t.dtype} on {t.device}, strides {t.stride()}")  # fmt: skip
    E = extra.shape[1] if extra is not None else 0
    out = torch.empty_like(x)
    q = torch.empty((M, N + E), device=x.device, dtype=E4M3)
    scale = torch.empty((M, 1), device=x.device, dtype=torch.float32)
    if M == 0:
        return out, q, scale
    _add_layernorm_quantize[(M,)](
        x, y if y is not None else x, weight, bias, extra if extra is not None else x, out, q, scale, N, E,
        x.stride(0), y.stride(0) if y is not None else 0, extra.stride(0) if extra is not None else 0,
        out.stride(0), q.stride(0), eps, HAS_Y=y is not None, BLOCK_N=triton.next_power_of_2(N),
        BLOCK_E=triton.next_power_of_2(E) if E else 0, num_warps=LAYERNORM_WARPS,
    )  # fmt: skip
    return out, q, scale


@add_layernorm_quantize.register_fake
def _(x: Tensor, y: Tensor | None, weight: Tensor, bias: Tensor, eps: float, extra: Tensor | None):
    M, N = x.shape
    E = extra.shape[1] if extra is not None else 0
    return torch.empty_like(x), x.new_empty((M, N + E), dtype=E4M3), x.new_empty((M, 1), dtype=torch.float32)


@torch.library.custom_op("unidiffuser::quantize_rows", mutates_args=())
def quantize_rows(x: Tensor, gelu: str) -> tuple[Tensor, Tensor]:
    if gelu not in GELUS:
        raise ValueError(f"unknown gelu {gelu!r}; choose from {list(GELUS)}")
    _check_rows("quantize_rows", x)
    if not x.is_cuda and gelu == "tanh":
        raise ValueError("gelu='tanh' uses the GPU's tanh instruction (inline PTX): CUDA tensors only")
    M, N = x.shape
    q = torch.empty((M, N), device=x.device, dtype=E4M3)
    scale = torch.empty((M, 1), device=x.device, dtype=torch.float32)
    chunk, warps = launch_config(N, gelu)
    if M == 0 or N == 0:
        return q, scale.fill_(1e-12)
    _quantize_rows[(M,)](
        x, q, scale, N, x.stride(0), q.stride(0), GELU=gelu, CHUNK=chunk, NCHUNK=triton.cdiv(N, chunk), num_warps=warps
    )
    return q, scale


@quantize_rows.register_fake
def _(x: Tensor, gelu: str) -> tuple[Tensor, Tensor]:
    M, N = x.shape
    return x.new_empty((M, N), dtype=E4M3), x.new_empty((M, 1), dtype=torch.float32)
