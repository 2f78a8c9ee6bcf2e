"""FP8 (e4m3) linear layers for the U-ViT blocks: the `fp8` precision, an fp16 engine whose block matmuls run on
Hopper's FP8 tensor cores.

Scaling is per tensor: each weight once at build time, each activation on every call from its absolute maximum
(dynamic scaling, no calibration set), so an activation never saturates e4m3's +-448. Everything else (embeddings,
LayerNorm, attention, the output projections) stays fp16. Accuracy is reported like any precision's, with e4m3's
unit roundoff 2^-4 in the tolerance rule (reference/tolerances.py).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

E4M3 = torch.float8_e4m3fn
E4M3_MAX = torch.finfo(E4M3).max  # 448
LINEARS_PER_BLOCK = ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2", "skip_linear")


def quantize(x: Tensor) -> tuple[Tensor, Tensor]:
    """x -> (x / s in e4m3, s) with s = amax(|x|) / 448 as an fp32 scalar tensor; all on x's device."""
    scale = (x.abs().amax().float() / E4M3_MAX).clamp(min=1e-12)
    return (x.float() / scale).clamp(-E4M3_MAX, E4M3_MAX).to(E4M3), scale


class Fp8Linear(nn.Module):
    """Drop-in for nn.Linear: y = (x/sx)(W/sw)^T * sx * sw + b, computed by torch._scaled_mm."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        if self.in_features % 16 or self.out_features % 16:
            raise ValueError(f"FP8 matmuls need sizes divisible by 16; got {self.in_features} -> {self.out_features}")
        weight, scale = quantize(linear.weight.detach())
        self.register_buffer("weight_fp8", weight)  # (out, in) e4m3
        self.register_buffer("weight_scale", scale)  # () fp32
        self.bias = linear.bias

    def forward(self, x: Tensor) -> Tensor:  # (..., in) fp16/bf16 -> (..., out) same dtype
        lead = x.shape[:-1]
        xq, x_scale = quantize(x.reshape(-1, self.in_features))
        bias = self.bias.to(x.dtype) if self.bias is not None else None
        y = torch._scaled_mm(
            xq, self.weight_fp8.t(), scale_a=x_scale, scale_b=self.weight_scale, bias=bias, out_dtype=x.dtype
        )  # (M, out)
        return y.reshape(*lead, self.out_features)


def swap_linears(module: nn.Module) -> int:
    """Replace the linear layers of every U-ViT block (LINEARS_PER_BLOCK) by Fp8Linear, marks kept; how many."""
    from engines.runtime import swap_children
    from reference.uvit import Block

    return sum(swap_children(b, nn.Linear, Fp8Linear) for b in [m for m in module.modules() if isinstance(m, Block)])
