"""FP8 (e4m3) linear layers for the U-ViT blocks: the `fp8` precision, an fp16 engine whose block matmuls run on
Hopper's FP8 tensor cores.

Scales come from absolute maxima: each weight's once at build time, each activation's on every call (dynamic
scaling, no calibration set), so nothing saturates e4m3's +-448. Everything else (embeddings, LayerNorm, attention,
the output projections) stays fp16. Accuracy is reported like any precision's, with e4m3's unit roundoff 2^-4 in the
tolerance rule (reference/tolerances.py). Engine options:

    fp8_scaling=tensor      one scale per tensor (the default). An activation's maximum is a reduction over the whole
                            tensor that must finish before any element is scaled: a pass of its own.
    fp8_scaling=row         one scale per activation row (token) and per weight row (output channel). A row's maximum
                            fuses into the kernel that makes the row (LayerNorm, GELU), scaling included.
    fp8_accumulate=fast     Hopper's FP8 tensor-core accumulation without the periodic promotion of partial sums to
                            fp32 (torch._scaled_mm's use_fast_accum); `exact` (the default) keeps it.
    fp8_quantize=triton     (with fp8_scaling=row) our Triton kernel (plugin.fp8) quantises the inputs that no
                            Inductor fusion makes cheap: fc2's, with the MLP's GELU folded in, and attn.proj's (the
                            attention's output). qkv's, fc1's and skip_linear's stay torch ops, which Inductor fuses
                            into the LayerNorm or the concatenation that makes them. `torch` (the default): all torch.
    fp8_gelu=tanh           (with fp8_quantize=triton) the GELU folded into fc2's quantisation in its tanh form, with
                            the GPU's approximate tanh instruction, instead of erf (the default): the form the fp16
                            recipe's cuBLASLt epilogue computes (mlp=epilogue).
    fp8_kernels=torchao     torchao's float8 inference instead of ours (engines.alternatives), per row (with
                            fp8_scaling=row) and with fp8_accumulate; the other options are our kernels.
    fp8_layernorm=triton    (with fp8_quantize=triton) each block LayerNorm, with the residual add before it, in one
                            launch of our kernel (plugin.fp8.add_layernorm_quantize) that also quantises its output for
                            the FP8 linear after it: fc1's, the next block's qkv, or the next out-block's skip_linear,
                            whose concatenation with its long skip the kernel quantises as one row. The blocks then
                            hand each other (activation, Quantized) pairs (Fp8Block, Fp8UViT). `torch` (the default):
                            torch ops, which Inductor fuses.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from engines.spec import Fp8Options
from reference import uvit as uv

E4M3 = torch.float8_e4m3fn
E4M3_MAX = torch.finfo(E4M3).max  # 448
LINEARS_PER_BLOCK = ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2", "skip_linear")
OPTIONS = {f"fp8_{name}": choices for name, choices in Fp8Options.CHOICES.items()}  # first: the default
TRITON_QUANTIZED = ("attn.proj", "mlp.fc2")  # fp8_quantize=triton


def quantize(x: Tensor, *, rows: bool = False) -> tuple[Tensor, Tensor]:
    """x -> (x / s in e4m3, s) with s = amax(|x|) / 448 in fp32, over the whole tensor (s a scalar tensor) or, with
    `rows`, over each row of the last dimension (s of shape (..., 1)); all on x's device."""
    amax = x.abs().amax(dim=-1, keepdim=True) if rows else x.abs().amax()
    scale = (amax.float() / E4M3_MAX).clamp(min=1e-12)
    return (x.float() / scale).clamp(-E4M3_MAX, E4M3_MAX).to(E4M3), scale


def check_options(**given: str) -> None:
    """Refuses unknown options, unknown values and combinations that do not exist (engines.spec.Fp8Options); absent
    options take defaults."""
    unknown = sorted(set(given) - set(OPTIONS))
    if unknown:
        raise ValueError(f"unknown fp8 options {unknown}; choose from {sorted(OPTIONS)}")
    Fp8Options(**{name.removeprefix("fp8_"): value for name, value in given.items()})


class Quantized(NamedTuple):
    """An activation as an FP8 linear reads it: q (..., K) e4m3 and its row scales (..., 1) fp32, and the dtype the
    activation had. `shape` is q's, so the attention modules, which read their input's shape, take one in its place."""

    q: Tensor
    scale: Tensor
    dtype: torch.dtype

    @property
    def shape(self) -> torch.Size:
        return self.q.shape

    @classmethod
    def rows_of(cls, q: Tensor, scale: Tensor, x: Tensor) -> Quantized:
        """A kernel's rows, q (M, K) and scale (M, 1), given x's leading dimensions and its dtype."""
        lead = x.shape[:-1]
        return cls(q.view(*lead, q.shape[-1]), scale.view(*lead, 1), x.dtype)


class Fp8Linear(nn.Module):
    """Drop-in for nn.Linear: y = (x/sx)(W/sw)^T * sx * sw + b, computed by torch._scaled_mm. With `gelu` "erf" or
    "tanh", the layer takes its input before the GELU that precedes it and applies it while quantising: x = GELU(input),
    exact or in its tanh form."""

    def __init__(
        self,
        linear: nn.Linear,
        *,
        fp8_scaling: str = "tensor",
        fp8_accumulate: str = "exact",
        fp8_quantize: str = "torch",
        gelu: str = "none",
    ):
        super().__init__()
        check_options(fp8_scaling=fp8_scaling, fp8_accumulate=fp8_accumulate, fp8_quantize=fp8_quantize)
        if gelu not in ("none", *OPTIONS["fp8_gelu"]):
            raise ValueError(f"unknown gelu {gelu!r}; choose from {['none', *OPTIONS['fp8_gelu']]}")
        self.in_features, self.out_features = linear.in_features, linear.out_features
        if self.in_features % 16 or self.out_features % 16:
            raise ValueError(f"FP8 matmuls need sizes divisible by 16; got {self.in_features} -> {self.out_features}")
        self.rows, self.fast, self.gelu = fp8_scaling == "row", fp8_accumulate == "fast", gelu
        self.triton = fp8_quantize == "triton"
        if self.triton:
            import plugin.fp8  # noqa: F401  (registers torch.ops.unidiffuser.quantize_rows)
        weight, scale = quantize(linear.weight.detach(), rows=self.rows)  # (out, in) e4m3; () or (out, 1) fp32
        self.register_buffer("weight_fp8", weight)
        self.register_buffer("weight_scale", scale.t().contiguous())  # () or (1, out), as scale_b wants it
        self.bias = linear.bias

    def forward(self, x: Tensor | Quantized) -> Tensor:  # (..., in) fp16/bf16 -> (..., out) same dtype
        if isinstance(x, Quantized):  # quantised by the kernel that made it (fp8_layernorm=triton)
            lead, dtype = x.q.shape[:-1], x.dtype
            xq, x_scale = x.q.reshape(-1, self.in_features), x.scale.reshape(-1, 1)  # (M, in), (M, 1)
        else:
            lead, dtype = x.shape[:-1], x.dtype
            xq, x_scale = self.quantize_input(x.reshape(-1, self.in_features))
        bias = self.bias.to(dtype) if self.bias is not None else None
        y = torch._scaled_mm(
            xq,
            self.weight_fp8.t(),
            scale_a=x_scale,
            scale_b=self.weight_scale,
            bias=bias,
            out_dtype=dtype,
            use_fast_accum=self.fast,
        )  # (M, out) fmt: skip
        return y.reshape(*lead, self.out_features)

    def quantize_input(self, x: Tensor) -> tuple[Tensor, Tensor]:  # (M, in) -> e4m3 (M, in), scale () or (M, 1)
        if self.triton:
            return torch.ops.unidiffuser.quantize_rows(x, self.gelu)
        x = x if self.gelu == "none" else F.gelu(x, approximate="tanh" if self.gelu == "tanh" else "none")
        return quantize(x, rows=self.rows)


def swap_linears(module: nn.Module, **options: str) -> int:
    """Replace the linear layers of every U-ViT block (LINEARS_PER_BLOCK) by Fp8Linear(linear, **options), marks
    kept; how many. With fp8_quantize=triton, TRITON_QUANTIZED take it and the MLP's GELU moves into fc2; with
    fp8_layernorm=triton, swap_layernorms as well."""
    from engines.runtime import swap_children

    check_options(**options)
    options = dict(options)
    if options.pop("fp8_kernels", OPTIONS["fp8_kernels"][0]) == "torchao":
        from engines.alternatives import torchao_linears

        return torchao_linears(module, LINEARS_PER_BLOCK, fast=options.get("fp8_accumulate") == "fast")
    gelu, triton = options.pop("fp8_gelu", OPTIONS["fp8_gelu"][0]), options.get("fp8_quantize") == "triton"
    if options.pop("fp8_layernorm", OPTIONS["fp8_layernorm"][0]) == "triton":
        swap_layernorms(module)
    swapped = 0
    for block in [m for m in module.modules() if isinstance(m, uv.Block)]:
        if triton and block.mlp.act._forward_hooks:
            raise ValueError("fp8_quantize=triton applies the MLP's GELU inside fc2's quantisation, so mlp.act has no "
                             "output to mark: mark mlp.fc2 or the block instead")  # fmt: skip
        paths = {id(m): name for name, m in block.named_modules()}

        def make(linear: nn.Linear, paths: dict = paths) -> Fp8Linear:
            path = paths[id(linear)]
            here = options if path in TRITON_QUANTIZED else {**options, "fp8_quantize": "torch"}
            return Fp8Linear(linear, **here, gelu=gelu if triton and path == "mlp.fc2" else "none")

        swapped += swap_children(block, nn.Linear, make)
        if triton:
            block.mlp.act = nn.Identity()
    return swapped


class NormQuantize(uv.LayerNorm):
    """A block's LayerNorm of x + y in one launch of plugin.fp8.add_layernorm_quantize, which also quantises the rows of
    cat([out, extra]) for the FP8 linear after it: returns (out, Quantized). Same parameters as the LayerNorm it
    replaces; a mark on it records `out`."""

    def forward(self, x: Tensor, y: Tensor | None = None, extra: Tensor | None = None) -> tuple[Tensor, Quantized]:
        rows = lambda t: None if t is None else t.reshape(-1, t.shape[-1])  # noqa: E731  (B, L, C) -> (B * L, C)
        out, q, scale = torch.ops.unidiffuser.add_layernorm_quantize(
            rows(x), rows(y), self.weight, self.bias, self.eps, rows(extra)
        )  # fmt: skip
        return out.view(x.shape), Quantized.rows_of(q, scale, x)


class Fp8Block(uv.Block):
    """The block with NormQuantize norms. Takes (activation, the input of its first linear quantised) and returns the
    same pair for the block after it, so that no activation is read a second time to be quantised. An out-block's
    first linear, skip_linear, reads cat([x, skip]): the block before quantises its output with that skip
    (`next_skip`) as one row."""

    def forward(self, h: tuple[Tensor, Quantized], next_skip: Tensor | None = None) -> tuple[Tensor, Quantized]:
        x, xq = h  # x (B, L, D); xq: x, or cat([x, skip]) for an out-block, quantised
        if self.skip_linear is not None:
            x, xq = self.norm1(self.skip_linear(xq))
        x, xq = self.norm2(x, self.attn(xq))
        return self.norm3(x, self.mlp(xq), next_skip)


class Fp8UViT(uv.UViT):
    """The U-ViT whose trunk runs Fp8Blocks: each block is handed the skip its successor concatenates."""

    def blocks(self, x: Tensor) -> Tensor:  # (B, L, D) -> (B, L, D)
        # our kernel: Inductor fused this row maximum into the embeddings' concatenation, a looped reduction of 37 us
        h = (x, Quantized.rows_of(*torch.ops.unidiffuser.quantize_rows(x.reshape(-1, x.shape[-1]), "none"), x))
        skips = []
        for blk in self.in_blocks:
            h = blk(h)
            skips.append(h[0])
        h = self.mid_block(h, next_skip=skips[-1])
        for blk in self.out_blocks:
            skips.pop()  # blk's skip, in its input already
            h = blk(h, next_skip=skips[-1] if skips else None)
        return h[0]


def swap_layernorms(module: nn.Module) -> None:
    """fp8_layernorm=triton: every U-ViT in `module` an Fp8UViT, its blocks Fp8Blocks, their norms NormQuantize (the
    same modules, parameters and marks, with other forwards)."""
    import plugin.fp8  # noqa: F401  (registers torch.ops.unidiffuser.add_layernorm_quantize)

    uvits = [m for m in module.modules() if isinstance(m, uv.UViT)]
    if not uvits:
        raise ValueError("fp8_layernorm=triton changes what U-ViT blocks hand each other, which UViT.blocks runs: "
                         "swap a whole U-ViT")  # fmt: skip
    for uvit in uvits:
        uvit.__class__ = Fp8UViT
        for block in [m for m in uvit.modules() if isinstance(m, uv.Block)]:
            block.__class__ = Fp8Block
            for norm in (block.norm1, block.norm2, block.norm3):
                if norm is not None:
                    norm.__class__ = NormQuantize
