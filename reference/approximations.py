"""The approximations an engine may make on purpose, as reference models that make them too.

An engine that approximates (engines.Engine.approximations) is compared layer by layer with the reference that makes
the same approximation, in fp64 (the oracle) and plainly at the engine's precision (reference/tolerances.py), so that
its own arithmetic is judged as tightly as any engine's; whether the approximation itself is good enough is for the
image verdicts to say (bench/verdicts.py). An approximation no engine declares is a fault.

    gelu=tanh     the U-ViT MLP's GELU in its tanh form (cuBLASLt's GELU epilogue, our FP8 quantiser's GELU).
    fp8=tensor    the U-ViT blocks' linears read e4m3 values: input and weight each divided by a scale (its absolute
    fp8=row       maximum over 448: the whole tensor's, or each row's: each token's, each output channel's), rounded
                  to e4m3, multiplied back. Written here from the recipe, independently of engines/fp8.py, so that a
                  bug there is not copied into its oracle.
    fp8=torchao-row
                  fp8=row as torchao 0.18 forms it (engines.alternatives, fp8_kernels=torchao): the weights first
                  rounded to bf16 (its PerRow takes no other), and each scale amax / 448 computed in its tensor's own
                  dtype, bf16 or the activations' fp16, so rounded to it; 1.8% of random weights' e4m3 codes then
                  differ by a step from fp8=row's (measured).
                  Each scaling's product is exact; an engine built with fp8_accumulate=fast sums it as Hopper's
                  tensor cores do (fast_accumulation_matmul), which the FP8-linear check emulates from that option.
    attention=int8-blocks
                  the U-ViT attention's scores from int8 values, as SageAttention 1.0.6 forms them (engines.alternatives
                  runs its kernels): the keys less their mean over the tokens (a constant per query, which the softmax
                  cancels), then q and k each divided by a scale per block of 128 queries or 64 keys of a head (its
                  absolute maximum over 127), rounded half away from zero, multiplied back; the rest exact. Written
                  from its paper's recipe, not its code.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from reference import uvit as uv

APPROXIMATIONS = ("gelu=tanh", "fp8=tensor", "fp8=row", "fp8=torchao-row", "attention=int8-blocks")
INT8_MAX = 127.0
FP8_LINEARS = ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2", "skip_linear")  # per U-ViT block
E4M3_MAX = 448.0  # torch.finfo(torch.float8_e4m3fn).max


def check_approximations(approximations: tuple[str, ...]) -> tuple[str, ...]:
    unknown = [a for a in approximations if a not in APPROXIMATIONS]
    if unknown:
        raise ValueError(f"unknown approximations {unknown}; choose from {list(APPROXIMATIONS)}")
    if sum(a.startswith("fp8=") for a in approximations) > 1:
        raise ValueError(f"{[a for a in approximations if a.startswith('fp8=')]} are scalings of the same linears: "
                         "choose one")  # fmt: skip
    return tuple(sorted(approximations))


def e4m3_codes(x: Tensor, *, rows: bool, scale_dtype: torch.dtype | None = None) -> tuple[Tensor, Tensor]:
    """x as e4m3 codes and their scale amax / 448, per tensor or per row (of the last axis), both in at least fp32:
    the division in at least fp32, as our quantisers do it, or in `scale_dtype`, as torchao's do it (its scale is then
    rounded to that dtype)."""
    wide = x.to(torch.promote_types(x.dtype, torch.float32))
    at = wide if scale_dtype is None else x.to(scale_dtype)
    amax = at.abs().amax(dim=-1, keepdim=True) if rows else at.abs().amax()
    scale = (amax / E4M3_MAX).to(wide.dtype).clamp_min(1e-12)
    return (wide / scale).clamp(-E4M3_MAX, E4M3_MAX).to(torch.float8_e4m3fn).to(wide.dtype), scale


def dequantize(codes_and_scale: tuple[Tensor, Tensor], dtype: torch.dtype) -> Tensor:
    codes, scale = codes_and_scale
    return (codes * scale).to(dtype)


def fake_quantize(x: Tensor, *, rows: bool, scale_dtype: torch.dtype | None = None) -> Tensor:
    """x rounded through e4m3 (e4m3_codes) and multiplied back, in x's dtype."""
    return dequantize(e4m3_codes(x, rows=rows, scale_dtype=scale_dtype), x.dtype)


# fp8=torchao-row: torchao's PerRow takes bf16 weights, and forms each scale in its tensor's dtype
TORCHAO_WEIGHTS = torch.bfloat16


def e4m3_operands(
    x: Tensor, w: Tensor, scaling: str, dtype: torch.dtype = torch.float16
) -> tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor]]:
    """x's and w's e4m3 codes and scales (e4m3_codes) as an FP8 linear of the recipe (`scaling`: "fp8=tensor",
    "fp8=row" or "fp8=torchao-row") forms them, in x's dtype or wider; `dtype` is the engine's: torchao receives its
    weights as bf16 and forms the activations' scales in it."""
    rows = scaling != "fp8=tensor"
    if scaling != "fp8=torchao-row":
        return e4m3_codes(x, rows=rows), e4m3_codes(w, rows=rows)
    w = w.to(dtype).to(TORCHAO_WEIGHTS).to(x.dtype)
    return e4m3_codes(x, rows=True, scale_dtype=dtype), e4m3_codes(w, rows=True, scale_dtype=TORCHAO_WEIGHTS)


# fp8_accumulate=fast (torch._scaled_mm's use_fast_accum): Hopper's FP8 tensor cores then sum all of K in their own
# accumulator, never promoting it to fp32. Each MMA instruction adds 32 products of K to it: the 33 terms aligned to the
# largest one's exponent e (each below 2^e) and truncated toward zero to multiples of 2^(e - 14), then summed; the
# accumulator keeps 13 mantissa bits (14 significant), truncated (the format DeepSeek-V3's report and SageAttention2's
# paper describe).
# Measured on an H200 against torch._scaled_mm at fc2's shape (K = 6144): 3.5e-5 from its output and 79-90% of it bit
# for bit, where an exact sum is 1.9e-3 away; at some small shapes cuBLAS sums otherwise (docs/performance.md).
MMA_K, ALIGNED_BITS, ACCUMULATOR_BITS = 32, 14, 14  # bits kept: the leading one and 13 after it


def _truncate(x: Tensor, exponent: Tensor, bits: int) -> Tensor:
    """x truncated toward zero to multiples of 2^(exponent - bits): `bits` significant bits where x < 2^exponent."""
    unit = torch.pow(2.0, (exponent - bits).to(torch.float64))
    return torch.trunc(x / unit) * unit


def fast_accumulation_matmul(a: Tensor, b: Tensor) -> Tensor:
    """a (M, K) @ b (N, K)^T for e4m3 codes a and b (in fp64), summed as fp8_accumulate=fast sums them."""
    (M, K), N = a.shape, b.shape[0]
    out, rows = a.new_empty(M, N), max(1, 2**24 // ((MMA_K + 1) * N))  # a few hundred MB of terms at a time
    for r in range(0, M, rows):
        acc = a.new_zeros(min(rows, M - r), N)
        for k in range(0, K, MMA_K):
            products = a[r : r + rows, k : k + MMA_K, None] * b[:, k : k + MMA_K].T  # exact: 4-bit mantissas
            terms = torch.cat([acc[:, None], products], dim=1)
            largest = torch.frexp(terms.abs().amax(dim=1, keepdim=True)).exponent
            acc = _truncate(terms, largest, ALIGNED_BITS).sum(dim=1)
            acc = _truncate(acc, torch.frexp(acc).exponent, ACCUMULATOR_BITS)
        out[r : r + rows] = acc
    return out


def emulate_linear(
    linear: nn.Linear, x: Tensor, *, scaling: str, dtype: torch.dtype, gelu: str = "none", plain: bool = False,
    accumulate: str = "exact",
) -> Tensor:  # fmt: skip
    """What an FP8 linear of the recipe (`scaling`, as e4m3_operands) computes from its input x: the weight as an
    engine of `dtype` holds it, x through the GELU the engine folds into the quantisation ("erf", "tanh" or "none"),
    both rounded through e4m3, the product in fp64, its sum as `accumulate` says ("exact", or "fast":
    fast_accumulation_matmul); with `plain`, all of it in `dtype`, as straightforward code at that precision would."""
    at = dtype if plain else torch.float64
    w, b = linear.weight.detach().to(dtype).to(at), linear.bias
    x = x.to(at) if gelu == "none" else F.gelu(x.to(at), approximate="tanh" if gelu == "tanh" else "none")
    xq, wq = e4m3_operands(x, w, scaling, dtype)
    b = None if b is None else b.detach().to(at)
    if accumulate != "fast" or plain:
        return F.linear(dequantize(xq, at), dequantize(wq, at), b)
    (xc, xs), (wc, ws) = xq, wq
    y = fast_accumulation_matmul(xc.flatten(0, -2), wc).unflatten(0, x.shape[:-1]) * xs * ws.flatten()
    return y if b is None else y + b


def int8_rows(x: Tensor, tokens: int = 1) -> Tensor:
    """x (..., L, D) rounded through int8 with a scale per row (of the last axis), or with `tokens`, per block of that
    many rows (the last block shorter): its absolute maximum over 127, half away from zero; the division in at least
    fp32."""
    wide = x.to(torch.promote_types(x.dtype, torch.float32))
    L = x.shape[-2] if x.dim() > 1 else 1
    blocks = F.pad(wide, (0, 0, 0, -L % tokens)).unflatten(-2, (-1, tokens)) if tokens > 1 else wide.unsqueeze(-2)
    scale = (blocks.abs().amax(dim=(-2, -1), keepdim=True) / INT8_MAX).clamp_min(1e-12)  # zero padding: no maximum
    y = (blocks / scale).clamp(-INT8_MAX, INT8_MAX)
    out = torch.trunc(y + torch.where(y < 0, -0.5, 0.5)) * scale
    out = out.flatten(-3, -2)[..., :L, :] if tokens > 1 else out.squeeze(-2)
    return out.to(x.dtype)


SAGE_TOKENS = (128, 64)  # attention=int8-blocks: queries, keys per scale


def int8_attention(qkv: Tensor, scale: float, tokens: tuple[int, int]) -> Tensor:
    """softmax(Q(q) Q(k - mean k)^T * scale) v for stacked (B, L, 3, H, D) q/k/v, Q rounding q and k through int8
    with a scale per (query, key) `tokens` rows; returns (B, L, H * D) in qkv's dtype."""
    q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, H, L, D)
    k = k - k.mean(dim=-2, keepdim=True)
    s = int8_rows(q, tokens[0]) @ int8_rows(k, tokens[1]).transpose(-2, -1) * scale
    return (s.softmax(dim=-1) @ v).transpose(1, 2).flatten(2)


class Int8BlockAttentionEmulation(uv.Attention):
    """The U-ViT attention with its scores from int8 q and smoothed k, a scale per block (int8_attention)."""

    def forward(self, x: Tensor) -> Tensor:  # (B, L, C) -> (B, L, C)
        B, L, C = x.shape
        qkv = self.qkv(x).reshape(B, L, 3, self.num_heads, C // self.num_heads)
        return self.proj(int8_attention(qkv, self.scale, SAGE_TOKENS))


class Fp8Emulation(nn.Linear):
    """nn.Linear whose input and weight are rounded through e4m3 as its recipe `scaling` does it (e4m3_operands),
    for an fp16 engine: y = Q(x) Q(W)^T + b, in the module's dtype."""

    scaling = "fp8=tensor"

    def forward(self, x: Tensor) -> Tensor:
        xq, wq = e4m3_operands(x, self.weight, self.scaling)
        return F.linear(dequantize(xq, x.dtype), dequantize(wq, x.dtype), self.bias)


def approximate(module: nn.Module, approximations: tuple[str, ...]) -> nn.Module:
    """A copy of `module` (any component holding U-ViT blocks, or none) making `approximations`."""
    approximations = check_approximations(approximations)
    if not approximations:
        return module
    module = copy.deepcopy(module)
    blocks = [m for m in module.modules() if isinstance(m, uv.Block)]
    if not blocks:
        raise ValueError(f"{approximations} apply to U-ViT blocks, and {type(module).__name__} has none")
    for block in blocks:
        if "gelu=tanh" in approximations:
            block.mlp.act = nn.GELU(approximate="tanh")
        if "attention=int8-blocks" in approximations:
            block.attn.__class__ = Int8BlockAttentionEmulation  # same parameters and marks, another forward
        scaling = next((a for a in approximations if a.startswith("fp8=")), None)
        if scaling is not None:
            layers = dict(block.named_modules())
            for path in FP8_LINEARS:
                if layers.get(path) is not None:
                    layers[path].__class__ = Fp8Emulation  # same parameters and marks, another forward
                    layers[path].scaling = scaling
    return module
