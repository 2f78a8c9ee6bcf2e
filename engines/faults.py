"""Faults, injected into an engine's own module after its transforms: what the accuracy suite must catch and name.

    engine = build_engine("uvit", models, precision="fp16", fault=Fault("heads", "uvit.mid_block.attn"), marks=...)

Each kind changes one layer, found by its mark name, the way a real bug would change it; a kind that does not apply
to that layer in this engine (no FP8 linear there, a GELU the engine already declares approximated) raises
FaultDoesNotApply. The fault matrix (reference/tests/test_faults.py) injects each at an early, a middle and a late
layer and requires the first failing mark to be the one right after it.

    heads            two attention heads swapped: head 0's output written where head 1's goes (the output
                     projection's input columns of the two heads exchanged).
    scale            the attention scale taken over the whole width, 1/sqrt(D), instead of per head.
    ln_eps           a LayerNorm's eps 1e-5 -> 1e-3.
    gn_eps           a GroupNorm's eps 1e-6 -> 1e-4.
    gn_fp16_stats    a GroupNorm's mean and variance in fp16 as E[x^2] - E[x]^2 (the bug of the original TensorRT work).
    gelu_tanh        the U-ViT MLP's exact GELU replaced by its tanh form, undeclared.
    guidance0        classifier-free guidance scale 7 -> 0.
    fp8_unscaled     an FP8 linear's output left without its dequantisation (no scales applied).
    fp8_scale_transposed
                     a square FP8 linear's per-output-row weight scales applied along its input axis.
    fp8_wrong_axis   an FP8 linear's input quantised with scales taken over the token axis (one per column) while the
                     GEMM multiplies back the per-token ones.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from engines.fp8 import E4M3, E4M3_MAX, Fp8Linear
from engines.fused import StackedQKVAttention, StatsGroupNorm, normalized, plus_bias
from reference import autoencoder as ae
from reference import uvit as uv
from reference.pipeline import GuidedStep


class FaultDoesNotApply(ValueError):
    """The fault has nothing to change at that layer of this engine."""


@dataclass(frozen=True)
class Fault:
    kind: str
    target: str  # the mark name (module path in the component) of the layer changed; "" for the component itself

    def __post_init__(self) -> None:
        if self.kind not in FAULTS:
            raise ValueError(f"unknown fault {self.kind!r}; choose from {sorted(FAULTS)}")

    @property
    def label(self) -> str:
        return f"{self.kind}@{self.target or 'component'}"


def inject(component: nn.Module, fault: Fault) -> None:
    """Apply `fault` to `component` (an engine's module after its transforms, before compile or capture)."""
    from engines.components import module_by_mark

    layers = {"": component, **module_by_mark(component)}
    if fault.target not in layers:
        raise FaultDoesNotApply(f"{fault.label}: no layer {fault.target!r} in {type(component).__name__}")
    with torch.no_grad():
        FAULTS[fault.kind](layers[fault.target])


def _needs(layer: nn.Module, kinds: tuple[type, ...], what: str) -> None:
    if not isinstance(layer, kinds):
        raise FaultDoesNotApply(f"needs {what}, found {type(layer).__name__}")


def _attention(layer: nn.Module) -> tuple[nn.Module, int]:
    """The output projection and head count of a U-ViT or CLIP attention, however the engine wrote it."""
    from transformers.models.clip.modeling_clip import CLIPAttention

    _needs(layer, (uv.Attention, CLIPAttention, StackedQKVAttention), "a multi-head attention")
    proj = layer.proj if isinstance(layer, uv.Attention) else layer.out_proj
    return proj, layer.num_heads


def swap_heads(layer: nn.Module) -> None:
    proj, heads = _attention(layer)
    weight = proj.weight_fp8 if hasattr(proj, "weight_fp8") else proj.weight  # (out, in): heads along `in`
    d = weight.shape[1] // heads
    order = torch.arange(weight.shape[1], device=weight.device)
    order[:d], order[d : 2 * d] = order[d : 2 * d].clone(), order[:d].clone()
    raw = weight.view(torch.uint8) if weight.dtype == torch.float8_e4m3fn else weight  # e4m3 cannot be indexed
    raw.copy_(raw[:, order])


def width_scale(layer: nn.Module) -> None:
    _, heads = _attention(layer)
    layer.scale = layer.scale / heads**0.5  # (D / heads)^-0.5 -> D^-0.5


def layernorm_eps(layer: nn.Module) -> None:
    _needs(layer, (nn.LayerNorm,), "a LayerNorm")
    layer.eps = 1e-3


def groupnorm_eps(layer: nn.Module) -> None:
    _needs(layer, (nn.GroupNorm,), "a GroupNorm")
    layer.eps = 1e-4


def fp16_stats(v: Tensor, groups: int, eps: float) -> tuple[Tensor, Tensor]:
    """v (N, C, H, W) -> each group's mean and 1/std (N, G) from fp16 sums: E[x^2] - E[x]^2 in half precision."""
    h = v.reshape(v.shape[0], groups, -1).half()
    mean = h.mean(-1)
    var = ((h * h).mean(-1) - mean * mean).clamp_min(0)
    return mean.float(), torch.rsqrt(var.float() + eps)


class Fp16StatsGroupNorm(ae.GroupNorm):
    def forward(self, x: Tensor) -> Tensor:  # (N, C, H, W)
        return normalized(self, x.float(), *fp16_stats(x.float(), self.num_groups, self.eps)).to(x.dtype)


class Fp16StatsStatsGroupNorm(StatsGroupNorm):
    """The stats decoder's norm, ignoring the statistics handed in for its own fp16 ones."""

    def forward(self, x: Tensor, bias: Tensor | None = None, stats: tuple[Tensor, Tensor] | None = None,
                silu: bool = False) -> Tensor:  # fmt: skip
        return super().forward(x, bias, fp16_stats(plus_bias(x, bias), self.num_groups, self.eps), silu)


def groupnorm_fp16_stats(layer: nn.Module) -> None:
    _needs(layer, (nn.GroupNorm,), "a GroupNorm")
    layer.__class__ = Fp16StatsStatsGroupNorm if isinstance(layer, StatsGroupNorm) else Fp16StatsGroupNorm


def gelu_tanh(layer: nn.Module) -> None:
    _needs(layer, (uv.Mlp,), "a U-ViT MLP")
    fc2 = layer.fc2
    if isinstance(fc2, Fp8Linear) and fc2.gelu != "none":  # the FP8 quantiser applies the GELU
        if fc2.gelu == "tanh":
            raise FaultDoesNotApply("this engine declares the tanh GELU (gelu=tanh) already")
        fc2.gelu = "tanh"
        return
    if type(layer) is not uv.Mlp and layer.fc1.weight.is_cuda:
        raise FaultDoesNotApply("this engine's fused MLP declares the tanh GELU (gelu=tanh) already")
    layer.__class__, layer.act = uv.Mlp, nn.GELU(approximate="tanh")


def no_guidance(layer: nn.Module) -> None:
    _needs(layer, (GuidedStep,), "the guided U-ViT step")
    layer.scale = 0.0


def _fp8(layer: nn.Module, *, square: bool = False, rows: bool = False) -> None:
    _needs(layer, (Fp8Linear,), "an FP8 linear (precision fp8)")
    if square and layer.in_features != layer.out_features:
        raise FaultDoesNotApply(f"needs a square FP8 linear, found {layer.in_features} -> {layer.out_features}")
    if rows and not layer.rows:
        raise FaultDoesNotApply("needs per-row scales (fp8_scaling=row)")


class UnscaledFp8Linear(Fp8Linear):
    def quantize_input(self, x: Tensor) -> tuple[Tensor, Tensor]:
        q, scale = super().quantize_input(x)
        return q, torch.ones_like(scale)


def fp8_unscaled(layer: nn.Module) -> None:
    _fp8(layer)
    layer.weight_scale = torch.ones_like(layer.weight_scale)
    layer.__class__ = UnscaledFp8Linear


class TransposedScaleFp8Linear(Fp8Linear):
    def forward(self, x: Tensor) -> Tensor:  # (..., K) -> (..., N), K = N
        lead, dtype = x.shape[:-1], x.dtype
        xq, x_scale = self.quantize_input(x.reshape(-1, self.in_features))  # (M, K), (M, 1)
        w = self.weight_fp8.float() * self.weight_scale  # (N, K) * (1, N): row n's scale on column n
        y = (xq.float() * x_scale) @ w.t() + (self.bias.float() if self.bias is not None else 0.0)
        return y.to(dtype).reshape(*lead, self.out_features)


def fp8_scale_transposed(layer: nn.Module) -> None:
    _fp8(layer, square=True, rows=True)
    layer.__class__ = TransposedScaleFp8Linear


class WrongAxisFp8Linear(Fp8Linear):
    def quantize_input(self, x: Tensor) -> tuple[Tensor, Tensor]:  # (M, K) -> e4m3 (M, K), (M, 1)
        column = (x.abs().amax(dim=0, keepdim=True).float() / E4M3_MAX).clamp(min=1e-12)  # (1, K): the wrong axis
        row = (x.abs().amax(dim=1, keepdim=True).float() / E4M3_MAX).clamp(min=1e-12)  # what the GEMM multiplies
        return (x.float() / column).clamp(-E4M3_MAX, E4M3_MAX).to(E4M3), row


def fp8_wrong_axis(layer: nn.Module) -> None:
    _fp8(layer, rows=True)
    layer.__class__ = WrongAxisFp8Linear


FAULTS: dict[str, Callable[[nn.Module], None]] = {
    "heads": swap_heads,
    "scale": width_scale,
    "ln_eps": layernorm_eps,
    "gn_eps": groupnorm_eps,
    "gn_fp16_stats": groupnorm_fp16_stats,
    "gelu_tanh": gelu_tanh,
    "guidance0": no_guidance,
    "fp8_unscaled": fp8_unscaled,
    "fp8_scale_transposed": fp8_scale_transposed,
    "fp8_wrong_axis": fp8_wrong_axis,
}
