"""GroupNorm on channels_last tensors in two custom ops, so that the work around it fuses into them:

  `group_stats` / `add_group_stats`: each group's mean and 1/std of x + bias (+ residual, the sum written in the same
      pass: a residual block's output and the next GroupNorm's statistics), from cells of pixels x channels
      (`_cell_stats`) merged per group (plugin.groupnorm's `_merge_cells`);
  `group_norm_apply`: (x + bias - mean) * rstd * weight + gn_bias, then SiLU if asked.

`bias` is the per-channel bias of the convolution before, run without it: torch.compile would otherwise write the conv
output plus bias once more before the opaque op could read it. Launch configurations are fixed, not autotuned.
Imports nothing of the project outside plugin/.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl
from torch import Tensor

from plugin import check_device
from plugin.groupnorm import _merge_cells


@triton.jit
def _cell_stats(x_ptr, bias_ptr, res_ptr, out_ptr, mean_ptr, var_ptr, HW, C, ROWS, K, G, CG: tl.constexpr,
                BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_RES: tl.constexpr,
                STAGES: tl.constexpr):  # fmt: skip
    """Program (cell, channel block) of a channels_last (N, H*W, C) tensor: v = x + bias (+ residual, rounded to x's
    dtype and written to out) over ROWS pixels x BLOCK_C channels; writes each of its groups' mean and variance over
    the cell. Sums run per element, shifted by the cell's first row so that a large mean cancels exactly, and are
    reduced across threads once, at the end: a reduction per loop iteration halved the bandwidth."""
    pid = tl.program_id(0)  # over N * K cells
    n, k = pid // K, pid % K
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    offs = (n * HW + k * ROWS + tl.arange(0, BLOCK_R)[:, None]) * C + c[None, :]  # (BLOCK_R, BLOCK_C)
    bias = tl.load(bias_ptr + c).to(tl.float32)[None, :] if HAS_BIAS else tl.zeros((1, BLOCK_C), tl.float32)
    row0 = (n * HW + k * ROWS) * C + c[None, :]  # (1, BLOCK_C)
    first = tl.load(x_ptr + row0).to(tl.float32) + bias  # the shift: the cell's first row
    if HAS_RES:
        first = (first + tl.load(res_ptr + row0).to(tl.float32)).to(out_ptr.dtype.element_ty).to(tl.float32)
    s1 = tl.zeros((BLOCK_R, BLOCK_C), tl.float32)
    s2 = tl.zeros((BLOCK_R, BLOCK_C), tl.float32)
    for r in tl.range(0, ROWS, BLOCK_R, num_stages=STAGES):
        v = tl.load(x_ptr + offs + r * C).to(tl.float32) + bias
        if HAS_RES:
            v = (v + tl.load(res_ptr + offs + r * C).to(tl.float32)).to(out_ptr.dtype.element_ty)
            tl.store(out_ptr + offs + r * C, v)
            v = v.to(tl.float32)
        d = v - first
        s1 += d
        s2 += d * d
    t1, t2 = tl.sum(s1, axis=0), tl.sum(s2, axis=0)  # (BLOCK_C,) per channel, shifted
    mean_c = tl.reshape(first, (BLOCK_C,)) + t1 / ROWS
    m2_c = t2 - t1 * t1 / ROWS
    mean_g = tl.sum(tl.reshape(mean_c, (BLOCK_C // CG, CG)), axis=1) / CG  # (groups in the block,)
    d = tl.reshape(mean_c, (BLOCK_C // CG, CG)) - mean_g[:, None]
    var_g = (tl.sum(tl.reshape(m2_c, (BLOCK_C // CG, CG)), axis=1) + ROWS * tl.sum(d * d, axis=1)) / (ROWS * CG)
    g = tl.program_id(1) * (BLOCK_C // CG) + tl.arange(0, BLOCK_C // CG)
    # Merged by a kernel of their own: the last program of each channel block merging them (one launch instead of two
    # per GroupNorm) measured 0.88 against 0.76 ms per decoder call, its long serial merge leaving the GPU idle.
    tl.store(mean_ptr + pid * G + g, mean_g)
    tl.store(var_ptr + pid * G + g, var_g)


@dataclass(frozen=True)
class StatsConfig:
    """A launch of _cell_stats: channels and pixels per step (BLOCK_C x BLOCK_R), pixels per cell, warps, and the
    loads kept in flight (the loop's pipeline stages)."""

    block_c: int
    block_r: int
    rows: int
    warps: int = 8
    stages: int = 3


# Fixed, not autotuned: Inductor's per-build timing of candidate configurations made the same decoder 5.2-5.7 ms from
# build to build. (channels, pixels per sample, with residual) -> config, the fastest of up to 120 at each of the
# decoder's fp16 shapes in a sweep on an H100 (2.5-2.9 TB/s where a copy runs at 2.9); other shapes take
# `rule`.
STATS_CONFIGS = {
    (128, 512 * 512, False): StatsConfig(64, 128, 2048, warps=4, stages=1),
    (128, 512 * 512, True): StatsConfig(64, 128, 512),
    (256, 512 * 512, False): StatsConfig(256, 32, 256),
    (256, 512 * 512, True): StatsConfig(256, 16, 256),
    (512, 256 * 256, False): StatsConfig(512, 8, 64),
    (512, 256 * 256, True): StatsConfig(512, 8, 64),
    (512, 128 * 128, False): StatsConfig(64, 128, 512, warps=4, stages=1),
    (512, 128 * 128, True): StatsConfig(512, 4, 16),
    (512, 64 * 64, False): StatsConfig(512, 16, 16),
    (512, 64 * 64, True): StatsConfig(64, 64, 128, warps=4, stages=1),
}


def rule(N: int, C: int, HW: int) -> StatsConfig:
    """Whole pixel rows of up to 512 channels, 4096 elements per step, cells for about 1024 programs."""
    block_c = min(triton.next_power_of_2(C), 512)
    block_r = max(1, min(4096 // block_c, HW & -HW))  # a power of two dividing H*W
    rows = triton.next_power_of_2(max(N * HW * (C // block_c) // 1024, 1))
    return StatsConfig(block_c, block_r, max(block_r, min(rows, HW & -HW, 4096)))


def _stats_launch(x: Tensor, bias: Tensor | None, residual: Tensor | None, out: Tensor | None, groups: int,
                  eps: float) -> tuple[Tensor, Tensor]:  # fmt: skip
    """The statistics of x + bias (+ residual, written to `out`), each group's mean and 1/std (N, G) in fp32."""
    N, C, H, W = x.shape
    if C % groups:
        raise ValueError(f"{C} channels do not split into {groups} groups")
    for name, t in (("x", x), ("residual", residual), ("out", out)):
        if t is not None and (t.shape != x.shape or t.dtype != x.dtype or not _nhwc(t)):
            raise ValueError(f"group_stats reads channels_last tensors of x's shape and dtype; {name} is {t.dtype} "
                             f"{tuple(t.shape)}, strides {t.stride()} (x: {x.dtype} {tuple(x.shape)})")  # fmt: skip
    if bias is not None and bias.shape != (C,):
        raise ValueError(f"group_stats takes a bias of one value per channel ({C}), got shape {tuple(bias.shape)}")
    check_device(x, "group_stats")
    HW, CG = H * W, C // groups
    cfg = STATS_CONFIGS.get((C, HW, residual is not None)) or rule(N, C, HW)
    BLOCK_C, BLOCK_R, ROWS = cfg.block_c, cfg.block_r, cfg.rows
    if C % BLOCK_C or BLOCK_C % CG:
        raise ValueError(f"group_stats needs channels in blocks of a power of two holding whole groups; C={C}")
    K = HW // ROWS
    mean = torch.empty(N, K, groups, device=x.device, dtype=torch.float32)
    var = torch.empty_like(mean)
    _cell_stats[(N * K, C // BLOCK_C)](
        x, bias if bias is not None else x, residual if residual is not None else x, out if out is not None else x,
        mean, var, HW, C, ROWS, K, groups, CG, BLOCK_R, BLOCK_C, bias is not None, residual is not None,
        cfg.stages, num_warps=cfg.warps,
    )  # fmt: skip
    group_mean = torch.empty(N, groups, device=x.device, dtype=torch.float32)
    rstd = torch.empty_like(group_mean)
    K_PAD = triton.next_power_of_2(K)
    _merge_cells[(N * groups,)](mean, var, group_mean, rstd, K, groups, groups, 1, eps, K_PAD, 1,
                                num_warps=8 if K_PAD > 2048 else 4)  # fmt: skip
    return group_mean, rstd


def _nhwc(t: Tensor) -> bool:
    return t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last)


@torch.library.custom_op("unidiffuser::group_stats", mutates_args=())
def group_stats(x: Tensor, bias: Tensor | None, num_groups: int, eps: float) -> tuple[Tensor, Tensor]:
    """Each group's mean and 1/sqrt(var + eps) of x + bias (bias per channel, optional), (N, G) fp32 each; x (N, C, H,
    W) channels_last. What a GroupNorm needs before its pointwise normalisation, which torch.compile can then fuse."""
    return _stats_launch(x, bias, None, None, num_groups, eps)


@group_stats.register_fake
def _(x: Tensor, bias: Tensor | None, num_groups: int, eps: float) -> tuple[Tensor, Tensor]:
    shape = (x.shape[0], num_groups)
    return x.new_empty(shape, dtype=torch.float32), x.new_empty(shape, dtype=torch.float32)


@torch.library.custom_op("unidiffuser::add_group_stats", mutates_args=())
def add_group_stats(
    x: Tensor, bias: Tensor, residual: Tensor, num_groups: int, eps: float
) -> tuple[Tensor, Tensor, Tensor]:
    """out = x + bias + residual (in x's dtype) and its group statistics as group_stats gives them, in one pass: a
    residual block's output and the next GroupNorm's statistics."""
    out = torch.empty_like(x)
    return (out, *_stats_launch(x, bias, residual, out, num_groups, eps))


@add_group_stats.register_fake
def _(x: Tensor, bias: Tensor, residual: Tensor, num_groups: int, eps: float) -> tuple[Tensor, Tensor, Tensor]:
    shape = (x.shape[0], num_groups)
    return torch.empty_like(x), x.new_empty(shape, dtype=torch.float32), x.new_empty(shape, dtype=torch.float32)


@triton.jit
def _normalize_rows(x_ptr, bias_ptr, mean_ptr, rstd_ptr, w_ptr, b_ptr, y_ptr, HW, C, G, CG: tl.constexpr,
                    BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr, HAS_BIAS: tl.constexpr,
                    SILU: tl.constexpr):  # fmt: skip
    """Program (BLOCK_R pixels of one sample, BLOCK_C channels): y = v * scale + shift per channel, v = x (+ bias)."""
    rows = tl.program_id(0) * BLOCK_R  # BLOCK_R divides H*W: one sample per program
    n = rows // HW
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    mean = tl.load(mean_ptr + n * G + c // CG)
    scale = tl.load(rstd_ptr + n * G + c // CG) * tl.load(w_ptr + c).to(tl.float32)
    shift = tl.load(b_ptr + c).to(tl.float32) - mean * scale
    if HAS_BIAS:
        shift += tl.load(bias_ptr + c).to(tl.float32) * scale
    offs = (rows + tl.arange(0, BLOCK_R))[:, None] * C + c[None, :]
    y = tl.load(x_ptr + offs).to(tl.float32) * scale[None, :] + shift[None, :]
    if SILU:
        y = y * tl.sigmoid(y)
    tl.store(y_ptr + offs, y.to(y_ptr.dtype.element_ty))


APPLY_TILE = 2048  # elements per program: with 4 warps and whole rows of up to 256 channels, copy speed in a sweep


@torch.library.custom_op("unidiffuser::group_norm_apply", mutates_args=())
def group_norm_apply(x: Tensor, bias: Tensor | None, mean: Tensor, rstd: Tensor, weight: Tensor, gn_bias: Tensor,
                     silu: bool) -> Tensor:  # fmt: skip
    """GroupNorm's normalisation of x + bias (per channel, optional) with the statistics group_stats gave, (N, G) fp32
    each, its affine weight and bias, then SiLU if asked: one read and one write, in x's dtype and layout."""
    N, C, H, W = x.shape
    G = mean.shape[-1]
    if not _nhwc(x) or C % G or mean.shape != (N, G) or rstd.shape != (N, G):
        raise ValueError(f"group_norm_apply takes channels_last x (N, C, H, W) and (N, G) statistics, G dividing C; "
                         f"got x {tuple(x.shape)}, strides {x.stride()}, statistics {tuple(mean.shape)} and "
                         f"{tuple(rstd.shape)}")  # fmt: skip
    for name, t in (("bias", bias), ("weight", weight), ("gn_bias", gn_bias)):
        if t is not None and t.shape != (C,):
            raise ValueError(f"group_norm_apply takes a {name} of one value per channel ({C}), got {tuple(t.shape)}")
    check_device(x, "group_norm_apply")
    HW = H * W
    BLOCK_C = min(triton.next_power_of_2(C), 256)
    if C % BLOCK_C:
        raise ValueError(f"group_norm_apply needs channels in blocks of a power of two; C={C}")
    BLOCK_R = max(1, min(APPLY_TILE // BLOCK_C, HW & -HW))
    y = torch.empty_like(x)
    _normalize_rows[(N * HW // BLOCK_R, C // BLOCK_C)](
        x, bias if bias is not None else x, mean.contiguous(), rstd.contiguous(), weight, gn_bias, y, HW, C, G, C // G,
        BLOCK_R, BLOCK_C, bias is not None, silu, num_warps=4,
    )  # fmt: skip
    return y


@group_norm_apply.register_fake
def _(x: Tensor, bias: Tensor | None, mean: Tensor, rstd: Tensor, weight: Tensor, gn_bias: Tensor,
      silu: bool) -> Tensor:  # fmt: skip
    return torch.empty_like(x)
