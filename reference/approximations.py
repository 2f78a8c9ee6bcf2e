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
    attention=int8
                  the U-ViT attention's scores from int8 values: the keys less their mean over the tokens (a constant
                  per query, which the softmax cancels), then q and k each divided by a scale per row (each token of
                  each head: its absolute maximum over 127), rounded half away from zero, multiplied back; the rest
                  exact. Written from SageAttention's recipe, independently of plugin/attention.py.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from reference import uvit as uv

APPROXIMATIONS = ("gelu=tanh", "fp8=tensor", "fp8=row", "attention=int8")
INT8_MAX = 127.0
FP8_LINEARS = ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2", "skip_linear")  # per U-ViT block
E4M3_MAX = 448.0  # torch.finfo(torch.float8_e4m3fn).max


def check_approximations(approximations: tuple[str, ...]) -> tuple[str, ...]:
    unknown = [a for a in approximations if a not in APPROXIMATIONS]
    if unknown:
        raise ValueError(f"unknown approximations {unknown}; choose from {list(APPROXIMATIONS)}")
    if "fp8=tensor" in approximations and "fp8=row" in approximations:
        raise ValueError("fp8=tensor and fp8=row are two scalings of the same linears: choose one")
    return tuple(sorted(approximations))


def fake_quantize(x: Tensor, *, rows: bool) -> Tensor:
    """x rounded through e4m3 with a scale amax / 448 per tensor or per row (of the last axis), in x's dtype; the
    division in at least fp32, as the engines' quantisers do it."""
    wide = x.to(torch.promote_types(x.dtype, torch.float32))
    amax = wide.abs().amax(dim=-1, keepdim=True) if rows else wide.abs().amax()
    scale = (amax / E4M3_MAX).clamp_min(1e-12)
    q = (wide / scale).clamp(-E4M3_MAX, E4M3_MAX).to(torch.float8_e4m3fn)
    return (q.to(wide.dtype) * scale).to(x.dtype)


def emulate_linear(
    linear: nn.Linear, x: Tensor, *, rows: bool, dtype: torch.dtype, gelu: str = "none", plain: bool = False
) -> Tensor:
    """What an FP8 linear of the recipe computes from its input x: the weight as an engine of `dtype` holds it, x
    through the GELU the engine folds into the quantisation ("erf", "tanh" or "none"), both rounded through e4m3,
    the product in fp64; with `plain`, all of it in `dtype`, as straightforward code at that precision would."""
    at = dtype if plain else torch.float64
    w, b = linear.weight.detach().to(dtype).to(at), linear.bias
    x = x.to(at) if gelu == "none" else F.gelu(x.to(at), approximate="tanh" if gelu == "tanh" else "none")
    y = F.linear(fake_quantize(x, rows=rows), fake_quantize(w, rows=rows), None if b is None else b.detach().to(at))
    return y


def int8_rows(x: Tensor) -> Tensor:
    """x rounded through int8 with a scale per row (of the last axis), its absolute maximum over 127, half away from
    zero; the division in at least fp32."""
    wide = x.to(torch.promote_types(x.dtype, torch.float32))
    scale = (wide.abs().amax(dim=-1, keepdim=True) / INT8_MAX).clamp_min(1e-12)
    y = (wide / scale).clamp(-INT8_MAX, INT8_MAX)
    return (torch.trunc(y + torch.where(y < 0, -0.5, 0.5)) * scale).to(x.dtype)


def int8_attention(qkv: Tensor, scale: float) -> Tensor:
    """softmax(Q(q) Q(k - mean k)^T * scale) v for stacked (B, L, 3, H, D) q/k/v, Q rounding each row through int8;
    returns (B, L, H * D) in qkv's dtype."""
    q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, H, L, D)
    k = k - k.mean(dim=-2, keepdim=True)
    s = int8_rows(q) @ int8_rows(k).transpose(-2, -1) * scale
    return (s.softmax(dim=-1) @ v).transpose(1, 2).flatten(2)


class Int8AttentionEmulation(uv.Attention):
    """The U-ViT attention with its scores from int8 q and smoothed k (int8_attention)."""

    def forward(self, x: Tensor) -> Tensor:  # (B, L, C) -> (B, L, C)
        B, L, C = x.shape
        qkv = self.qkv(x).reshape(B, L, 3, self.num_heads, C // self.num_heads)
        return self.proj(int8_attention(qkv, self.scale))


class Fp8Emulation(nn.Linear):
    """nn.Linear whose input and weight are fake-quantised to e4m3: y = Q(x) Q(W)^T + b, in the module's dtype."""

    rows = False

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(fake_quantize(x, rows=self.rows), fake_quantize(self.weight, rows=self.rows), self.bias)


class Fp8RowEmulation(Fp8Emulation):
    rows = True


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
        if "attention=int8" in approximations:
            block.attn.__class__ = Int8AttentionEmulation  # same parameters and marks, another forward
        scaling = next((a for a in approximations if a.startswith("fp8=")), None)
        if scaling is not None:
            cls = Fp8RowEmulation if scaling == "fp8=row" else Fp8Emulation
            layers = dict(block.named_modules())
            for path in FP8_LINEARS:
                if layers.get(path) is not None:
                    layers[path].__class__ = cls  # same parameters and marks, another forward
    return module
