"""GroupNorm (+ optional SiLU) in Triton: fp16/bf16/fp32 in and out, statistics in fp32, NCHW or channels_last.

Registered as the torch custom op `unidiffuser::group_norm`, so torch.compile treats it as one opaque node and CUDA
graphs capture its launches. Three steps, no host synchronisation:
  1. `_partial_stats`: one program per (sample, group, chunk of pixels) writes the chunk's mean and M2 (fp32);
  2. `_merge_stats`: one program per group merges its chunks' statistics in fp32 (Chan's parallel formula);
  3. `_normalize`: the same tiling applies (x - mean) * rstd * weight + bias, then SiLU if asked.
`_merge_cells` merges per-channel statistics of cells into groups for plugin.groupstats, which splits a GroupNorm
differently, for channels_last tensors.
Each group holds C/G channels (4 to 16 in the SD decoder) times H*W pixels, up to a million elements at 512x512, so
splitting groups into chunks is what fills the GPU: a program per group would leave most SMs idle.
Imports nothing of the project.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor, nn

TILE = 4096  # elements per program: (channels of a group, padded to a power of two) x pixels


@triton.jit
def _partial_stats(x_ptr, mean_ptr, m2_ptr, HW, s_n, s_c, s_p, G, CG, CHUNKS, CG_PAD: tl.constexpr,
                   BLOCK_P: tl.constexpr):  # fmt: skip
    pid = tl.program_id(0)  # over N * G * CHUNKS
    chunk = pid % CHUNKS
    ng = pid // CHUNKS
    n, g = ng // G, ng % G
    c = g * CG + tl.arange(0, CG_PAD)[:, None]  # (CG_PAD, 1)
    p = chunk * BLOCK_P + tl.arange(0, BLOCK_P)[None, :]  # (1, BLOCK_P)
    mask = (tl.arange(0, CG_PAD)[:, None] < CG) & (p < HW)
    x = tl.load(x_ptr + n * s_n + c * s_c + p * s_p, mask=mask, other=0.0).to(tl.float32)
    count = tl.sum(mask.to(tl.float32), axis=1)
    count = tl.sum(count, axis=0)
    mean = tl.sum(tl.sum(x, axis=1), axis=0) / count
    d = tl.where(mask, x - mean, 0.0)
    tl.store(mean_ptr + pid, mean)
    tl.store(m2_ptr + pid, tl.sum(tl.sum(d * d, axis=1), axis=0))


@triton.jit
def _merge_stats(mean_ptr, m2_ptr, group_mean_ptr, rstd_ptr, CHUNKS, n_full, n_last, eps, CHUNKS_PAD: tl.constexpr):
    """Chan et al.: one program per (sample, group) merges its chunks (all of n_full elements but the last, of
    n_last) into the group's mean and 1/std, in fp32; one launch where plain torch took a dozen."""
    ng = tl.program_id(0)
    i = tl.arange(0, CHUNKS_PAD)
    valid = i < CHUNKS
    mean = tl.load(mean_ptr + ng * CHUNKS + i, mask=valid, other=0.0)
    m2 = tl.load(m2_ptr + ng * CHUNKS + i, mask=valid, other=0.0)
    n = tl.where(valid, tl.where(i == CHUNKS - 1, n_last, n_full), 0.0)
    total = tl.sum(n, axis=0)
    group_mean = tl.sum(mean * n, axis=0) / total
    d = mean - group_mean
    group_m2 = tl.sum(m2, axis=0) + tl.sum(n * d * d, axis=0)
    tl.store(group_mean_ptr + ng, group_mean)
    tl.store(rstd_ptr + ng, 1.0 / tl.sqrt(group_m2 / total + eps))


@triton.jit
def _merge_cells(mean_ptr, var_ptr, group_mean_ptr, rstd_ptr, K, C, G, CG, eps, K_PAD: tl.constexpr,
                 CG_PAD: tl.constexpr):  # fmt: skip
    """One program per (sample, group) merges the group's K x CG cells, each the statistics of one channel over the
    same number of pixels: mean of the means, mean of the variances plus the variance of the means, in fp32."""
    ng = tl.program_id(0)
    n, g = ng // G, ng % G
    k = tl.arange(0, K_PAD)[:, None]
    cg = tl.arange(0, CG_PAD)[None, :]
    mask = (k < K) & (cg < CG)
    offs = n * K * C + k * C + g * CG + cg
    mean = tl.load(mean_ptr + offs, mask=mask, other=0.0)
    var = tl.load(var_ptr + offs, mask=mask, other=0.0)
    count = K * CG * 1.0  # a Python number where Triton specialised K or CG (== 1) to a constant
    group_mean = tl.sum(tl.sum(mean, axis=1), axis=0) / count
    d = tl.where(mask, mean - group_mean, 0.0)
    group_var = (tl.sum(tl.sum(var, axis=1), axis=0) + tl.sum(tl.sum(d * d, axis=1), axis=0)) / count
    tl.store(group_mean_ptr + ng, group_mean)
    tl.store(rstd_ptr + ng, 1.0 / tl.sqrt(group_var + eps))


@triton.jit
def _normalize(x_ptr, y_ptr, w_ptr, b_ptr, mean_ptr, rstd_ptr, HW, s_n, s_c, s_p, G, CG, CHUNKS, CG_PAD: tl.constexpr,
               BLOCK_P: tl.constexpr, SILU: tl.constexpr):  # fmt: skip
    pid = tl.program_id(0)
    chunk = pid % CHUNKS
    ng = pid // CHUNKS
    n, g = ng // G, ng % G
    cg = tl.arange(0, CG_PAD)[:, None]
    c = g * CG + cg
    p = chunk * BLOCK_P + tl.arange(0, BLOCK_P)[None, :]
    mask = (cg < CG) & (p < HW)
    offs = n * s_n + c * s_c + p * s_p
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    mean = tl.load(mean_ptr + ng)
    rstd = tl.load(rstd_ptr + ng)
    w = tl.load(w_ptr + c, mask=cg < CG, other=1.0).to(tl.float32)
    b = tl.load(b_ptr + c, mask=cg < CG, other=0.0).to(tl.float32)
    y = (x - mean) * rstd * w + b
    if SILU:
        y = y / (1.0 + tl.exp(-y))
    tl.store(y_ptr + offs, y.to(y_ptr.dtype.element_ty), mask=mask)


def _layout(x: Tensor) -> tuple[int, int, int]:
    """Strides (sample, channel, pixel) of a 4-d NCHW or channels_last tensor viewed as (N, C, H*W)."""
    N, C, H, W = x.shape
    if x.is_contiguous():
        return C * H * W, H * W, 1
    if x.is_contiguous(memory_format=torch.channels_last):
        return C * H * W, 1, C
    raise ValueError("group_norm needs an NCHW-contiguous or channels_last tensor; call .contiguous() first")


@torch.library.custom_op("unidiffuser::group_norm", mutates_args=())
def group_norm(x: Tensor, weight: Tensor, bias: Tensor, num_groups: int, eps: float, silu: bool) -> Tensor:
    y = torch.empty_like(x)  # keeps x's memory format
    group_norm_into(y, x, weight, bias, num_groups, eps, silu)
    return y


def group_norm_into(y: Tensor, x: Tensor, weight: Tensor, bias: Tensor, num_groups: int, eps: float, silu: bool):
    """The kernels writing into `y` (x's shape, dtype and layout): a TensorRT plugin hands over its output buffer."""
    if x.dim() != 4:
        raise ValueError(f"group_norm expects (N, C, H, W), got shape {tuple(x.shape)}")
    N, C, H, W = x.shape
    if C % num_groups:
        raise ValueError(f"{C} channels do not split into {num_groups} groups")
    if y.shape != x.shape or y.stride() != x.stride():
        raise ValueError(f"group_norm output {tuple(y.shape)}, strides {y.stride()}, does not match x's {x.stride()}")
    s_n, s_c, s_p = _layout(x)
    G, CG, HW = num_groups, C // num_groups, H * W
    CG_PAD = triton.next_power_of_2(CG)
    BLOCK_P = max(16, min(triton.next_power_of_2(HW), TILE // CG_PAD))
    CHUNKS = triton.cdiv(HW, BLOCK_P)
    grid = (N * G * CHUNKS,)
    mean = torch.empty(N * G * CHUNKS, device=x.device, dtype=torch.float32)
    m2 = torch.empty_like(mean)
    _partial_stats[grid](x, mean, m2, HW, s_n, s_c, s_p, G, CG, CHUNKS, CG_PAD, BLOCK_P)
    # Counts stay host scalars: a host-to-device copy would break CUDA-graph capture.
    n_full, n_last = float(BLOCK_P * CG), float((HW - (CHUNKS - 1) * BLOCK_P) * CG)
    group_mean = torch.empty(N * G, device=x.device, dtype=torch.float32)
    rstd = torch.empty_like(group_mean)
    _merge_stats[(N * G,)](mean, m2, group_mean, rstd, CHUNKS, n_full, n_last, eps, triton.next_power_of_2(CHUNKS))
    _normalize[grid](x, y, weight, bias, group_mean, rstd, HW, s_n, s_c, s_p, G, CG, CHUNKS, CG_PAD, BLOCK_P, silu)


@group_norm.register_fake
def _(x: Tensor, weight: Tensor, bias: Tensor, num_groups: int, eps: float, silu: bool) -> Tensor:
    return torch.empty_like(x)


class TritonGroupNorm(nn.GroupNorm):
    """Drop-in for nn.GroupNorm (same parameters and state dict) that runs the kernel; `silu=True` fuses SiLU."""

    def __init__(self, num_groups: int, num_channels: int, eps: float = 1e-5, *, silu: bool = False, **kw):
        super().__init__(num_groups, num_channels, eps=eps, affine=True, **kw)
        self.silu = silu

    @classmethod
    def from_groupnorm(cls, gn: nn.GroupNorm, *, silu: bool = False) -> TritonGroupNorm:
        new = cls(gn.num_groups, gn.num_channels, gn.eps, silu=silu, device=gn.weight.device, dtype=gn.weight.dtype)
        new.load_state_dict(gn.state_dict())
        return new

    def forward(self, x: Tensor) -> Tensor:
        return group_norm(x, self.weight, self.bias, self.num_groups, self.eps, self.silu)
