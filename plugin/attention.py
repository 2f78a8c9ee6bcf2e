"""Attention over a short sequence (up to 256 tokens: CLIP's 77) in one Triton kernel, reading q, k and v in place.

Registered as the torch custom op `unidiffuser::short_attention`. The input is the output of one stacked q/k/v
projection viewed as (B, L, 3, H, D); the output is (B, L, H * D), the layout the output projection reads. At 77
tokens the explicit path costs four launches per layer (a copy into heads, two batched GEMMs on misaligned 77-wide
tiles, a softmax), each a few microseconds of a mostly idle GPU; here one program per (sample, head, block of
queries) holds all the keys, so scores, softmax and the weighted sum stay on chip. Scores and softmax in fp32; the
probabilities are cast to v's dtype before the second product, as Hugging Face's eager CLIP does. fp32 inputs are
multiplied in IEEE fp32, not TF32.
Imports nothing of the project.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

MAX_TOKENS = 256  # all keys of a head sit in one tile
BLOCK_M = 32  # queries per program


@triton.jit
def _attention(qkv_ptr, mask_ptr, o_ptr, L, H, s_qb, s_ql, s_qt, s_qh, s_mb, s_mq, s_mk, s_ob, s_ol, s_oh, scale,
               HAS_MASK: tl.constexpr, DOT: tl.constexpr, D: tl.constexpr, BLOCK_M: tl.constexpr,
               BLOCK_N: tl.constexpr):  # fmt: skip
    bh = tl.program_id(1)
    b, h = bh // H, bh % H
    rm = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = tl.arange(0, BLOCK_N)
    rd = tl.arange(0, D)
    base = qkv_ptr + b * s_qb + h * s_qh
    q = tl.load(base + rm[:, None] * s_ql + rd[None, :], mask=rm[:, None] < L, other=0.0)  # (BLOCK_M, D)
    k = tl.load(base + s_qt + rn[:, None] * s_ql + rd[None, :], mask=rn[:, None] < L, other=0.0)  # (BLOCK_N, D)
    v = tl.load(base + 2 * s_qt + rn[:, None] * s_ql + rd[None, :], mask=rn[:, None] < L, other=0.0)
    s = tl.dot(q, tl.trans(k), input_precision=DOT) * scale  # (BLOCK_M, BLOCK_N) fp32
    if HAS_MASK:
        valid = (rm[:, None] < L) & (rn[None, :] < L)
        s += tl.load(mask_ptr + b * s_mb + rm[:, None] * s_mq + rn[None, :] * s_mk, mask=valid, other=0.0).to(
            tl.float32
        )
    s = tl.where(rn[None, :] < L, s, float("-inf"))
    p = tl.exp(s - tl.max(s, axis=1)[:, None])
    p = (p / tl.sum(p, axis=1)[:, None]).to(v.dtype)
    o = tl.dot(p, v, input_precision=DOT)
    tl.store(o_ptr + b * s_ob + rm[:, None] * s_ol + h * s_oh + rd[None, :], o.to(o_ptr.dtype.element_ty),
             mask=rm[:, None] < L)  # fmt: skip


def check(qkv: Tensor, mask: Tensor | None) -> None:
    if qkv.dim() != 5 or qkv.shape[2] != 3:
        raise ValueError(f"short_attention expects stacked q/k/v of shape (B, L, 3, H, D), got {tuple(qkv.shape)}")
    B, L, _, H, D = qkv.shape
    if L > MAX_TOKENS:
        raise ValueError(f"short_attention holds at most {MAX_TOKENS} tokens per head, got {L}")
    if D < 16 or D & (D - 1):
        raise ValueError(f"short_attention needs a head size that is a power of two of at least 16, got {D}")
    if qkv.stride(-1) != 1:
        raise ValueError("short_attention needs the head dimension contiguous")
    if mask is not None and (mask.dim() != 4 or mask.shape[1] != 1 or mask.shape[-2:] != (L, L)
                             or mask.shape[0] not in (1, B)):  # fmt: skip
        raise ValueError(f"attention mask must be (B or 1, 1, {L}, {L}), additive; got {tuple(mask.shape)}")


@torch.library.custom_op("unidiffuser::short_attention", mutates_args=())
def short_attention(qkv: Tensor, mask: Tensor | None, scale: float) -> Tensor:
    """softmax(q k^T * scale + mask) v for each head; qkv (B, L, 3, H, D), mask additive (B or 1, 1, L, L) or None;
    returns (B, L, H * D) in qkv's dtype."""
    check(qkv, mask)
    B, L, _, H, D = qkv.shape
    o = qkv.new_empty(B, L, H * D)
    has_mask = mask is not None
    if has_mask:
        s_mb, _, s_mq, s_mk = mask.stride()
        s_mb = 0 if mask.shape[0] == 1 else s_mb
    else:
        mask, s_mb, s_mq, s_mk = qkv, 0, 0, 0  # never read
    dot = "ieee" if qkv.dtype == torch.float32 else "tf32"  # tf32: Triton's default, unused by fp16/bf16 tiles
    grid = (triton.cdiv(L, BLOCK_M), B * H)
    _attention[grid](
        qkv, mask, o, L, H, qkv.stride(0), qkv.stride(1), qkv.stride(2), qkv.stride(3), s_mb, s_mq, s_mk,
        o.stride(0), o.stride(1), D, scale, HAS_MASK=has_mask, DOT=dot, D=D, BLOCK_M=BLOCK_M,
        BLOCK_N=max(16, triton.next_power_of_2(L)),
    )  # fmt: skip
    return o


@short_attention.register_fake
def _(qkv: Tensor, mask: Tensor | None, scale: float) -> Tensor:
    check(qkv, mask)
    B, L, _, H, D = qkv.shape
    return qkv.new_empty(B, L, H * D)
