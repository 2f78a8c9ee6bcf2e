"""Attention in Triton, reading q, k and v in place from the output of one stacked q/k/v projection.

Both kernels take that output viewed as (B, L, 3, H, D) and return (B, L, H * D), the layout the output projection
reads, so no copy into heads and none back. Scores and softmax in fp32; the probabilities are cast to v's dtype
before the second product. fp32 inputs are multiplied in IEEE fp32, not TF32.

`short_attention` (torch custom op `unidiffuser::short_attention`, CLIP): up to 256 tokens, an additive mask. At 77
tokens the explicit path costs four launches per layer (a copy into heads, two batched GEMMs on misaligned 77-wide
tiles, a softmax), each a few microseconds of a mostly idle GPU; here one program per (sample, head, block of
queries) holds all the keys, so scores, softmax and the weighted sum stay on chip (the cast before the second product
is also what Hugging Face's eager CLIP does).

`flash_attention` (`unidiffuser::flash_attention`, the U-ViT): any length, no mask. Each program keeps a block of
queries and walks the keys in blocks with the online softmax (FlashAttention's running maximum and sum). On the H100
at the U-ViT's 2 x 24 heads x 1105 tokens x 64 it took 46.9 us against 53.3 for cuDNN's fused attention, the fastest
of torch's (flash 69.4), each timed as a CUDA graph of 20 calls. The tile below was the fastest of those tried: 32-128
queries by 32-128 keys, 2-8 warps, 2-5 stages; the scale folded into q, exponentials in fp16 and TMA descriptor
loads were all slower.
Imports nothing of the project.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl
from torch import Tensor

MAX_TOKENS = 256  # short_attention: all keys of a head sit in one tile
BLOCK_M = 32  # short_attention: queries per program
FLASH = {"BLOCK_M": 64, "BLOCK_N": 64, "num_warps": 4, "num_stages": 3}  # flash_attention's tile, measured above
MAX_HEAD = 128  # flash_attention: larger heads need smaller tiles than FLASH's


@triton.jit
def _query_tile(qkv_ptr, L, H, s_qb, s_ql, s_qh, D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """This program's sample and head, its query, key and feature indices, the head's first element in qkv, and its
    block of queries (BLOCK_M, D), zero past L."""
    bh = tl.program_id(1)  # the query blocks of one head run next to each other and share its keys in L2
    b, h = bh // H, bh % H
    rm = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = tl.arange(0, BLOCK_N)
    rd = tl.arange(0, D)
    base = qkv_ptr + b * s_qb + h * s_qh
    q = tl.load(base + rm[:, None] * s_ql + rd[None, :], mask=rm[:, None] < L, other=0.0)
    return b, h, rm, rn, rd, base, q


@triton.jit
def _attention(qkv_ptr, mask_ptr, o_ptr, L, H, s_qb, s_ql, s_qt, s_qh, s_mb, s_mq, s_mk, s_ob, s_ol, s_oh, scale,
               HAS_MASK: tl.constexpr, DOT: tl.constexpr, D: tl.constexpr, BLOCK_M: tl.constexpr,
               BLOCK_N: tl.constexpr):  # fmt: skip
    b, h, rm, rn, rd, base, q = _query_tile(qkv_ptr, L, H, s_qb, s_ql, s_qh, D, BLOCK_M, BLOCK_N)
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


@triton.jit
def _online_softmax_step(q, k, v, m_i, l_i, acc, qk_scale, valid, MASK: tl.constexpr, DOT: tl.constexpr):
    """One block of keys: scores, the running maximum and sum rescaled, the weighted values added (log2 domain)."""
    s = tl.dot(q, tl.trans(k), input_precision=DOT) * qk_scale  # (BLOCK_M, BLOCK_N) fp32
    if MASK:
        s = tl.where(valid[None, :], s, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, 1))
    p = tl.math.exp2(s - m_new[:, None])
    alpha = tl.math.exp2(m_i - m_new)
    acc = tl.dot(p.to(v.dtype), v, acc * alpha[:, None], input_precision=DOT)
    return m_new, l_i * alpha + tl.sum(p, 1), acc


@triton.jit
def _flash(qkv_ptr, o_ptr, L, H, s_qb, s_ql, s_qt, s_qh, s_ob, s_ol, s_oh, qk_scale,
           DOT: tl.constexpr, D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):  # fmt: skip
    b, h, rm, rn, rd, base, q = _query_tile(qkv_ptr, L, H, s_qb, s_ql, s_qh, D, BLOCK_M, BLOCK_N)
    k_ptrs = base + s_qt + rn[:, None] * s_ql + rd[None, :]  # (BLOCK_N, D)
    v_ptrs = base + 2 * s_qt + rn[:, None] * s_ql + rd[None, :]
    m_i = tl.full((BLOCK_M,), float("-inf"), tl.float32)
    l_i = tl.zeros((BLOCK_M,), tl.float32)
    acc = tl.zeros((BLOCK_M, D), tl.float32)
    whole = (L // BLOCK_N) * BLOCK_N  # the blocks before the last partial one load and score without masks
    for start in range(0, whole, BLOCK_N):
        k, v = tl.load(k_ptrs + start * s_ql), tl.load(v_ptrs + start * s_ql)
        m_i, l_i, acc = _online_softmax_step(q, k, v, m_i, l_i, acc, qk_scale, rn, False, DOT)
    if whole < L:
        valid = whole + rn < L
        k = tl.load(k_ptrs + whole * s_ql, mask=valid[:, None], other=0.0)
        v = tl.load(v_ptrs + whole * s_ql, mask=valid[:, None], other=0.0)
        m_i, l_i, acc = _online_softmax_step(q, k, v, m_i, l_i, acc, qk_scale, valid, True, DOT)
    tl.store(o_ptr + b * s_ob + rm[:, None] * s_ol + h * s_oh + rd[None, :],
             (acc / l_i[:, None]).to(o_ptr.dtype.element_ty), mask=rm[:, None] < L)  # fmt: skip


def check_qkv(qkv: Tensor, op: str, max_head: int | None = None) -> None:
    if qkv.dim() != 5 or qkv.shape[2] != 3:
        raise ValueError(f"{op} expects stacked q/k/v of shape (B, L, 3, H, D), got {tuple(qkv.shape)}")
    D = qkv.shape[-1]
    if D < 16 or D & (D - 1) or (max_head is not None and D > max_head):
        limit = f" and at most {max_head}" if max_head is not None else ""
        raise ValueError(f"{op} needs a head size that is a power of two of at least 16{limit}, got {D}")
    if qkv.stride(-1) != 1:
        raise ValueError(f"{op} needs the head dimension contiguous")


def heads_out(qkv: Tensor) -> Tensor:
    """The output for stacked q/k/v (B, L, 3, H, D): (B, L, H * D), uninitialised, qkv's dtype and device."""
    B, L, _, H, D = qkv.shape
    return qkv.new_empty(B, L, H * D)


def dot_precision(qkv: Tensor) -> str:
    return "ieee" if qkv.dtype == torch.float32 else "tf32"  # tf32: Triton's default, unused by fp16/bf16 tiles


def check(qkv: Tensor, mask: Tensor | None) -> None:
    check_qkv(qkv, "short_attention")
    B, L = qkv.shape[:2]
    if L > MAX_TOKENS:
        raise ValueError(f"short_attention holds at most {MAX_TOKENS} tokens per head, got {L}")
    if mask is not None and (mask.dim() != 4 or mask.shape[1] != 1 or mask.shape[-2:] != (L, L)
                             or mask.shape[0] not in (1, B)):  # fmt: skip
        raise ValueError(f"attention mask must be (B or 1, 1, {L}, {L}), additive; got {tuple(mask.shape)}")


@torch.library.custom_op("unidiffuser::short_attention", mutates_args=())
def short_attention(qkv: Tensor, mask: Tensor | None, scale: float) -> Tensor:
    """softmax(q k^T * scale + mask) v for each head; qkv (B, L, 3, H, D), mask additive (B or 1, 1, L, L) or None;
    returns (B, L, H * D) in qkv's dtype."""
    check(qkv, mask)
    B, L, _, H, D = qkv.shape
    o = heads_out(qkv)
    has_mask = mask is not None
    if has_mask:
        s_mb, _, s_mq, s_mk = mask.stride()
        s_mb = 0 if mask.shape[0] == 1 else s_mb
    else:
        mask, s_mb, s_mq, s_mk = qkv, 0, 0, 0  # never read
    grid = (triton.cdiv(L, BLOCK_M), B * H)
    _attention[grid](
        qkv, mask, o, L, H, qkv.stride(0), qkv.stride(1), qkv.stride(2), qkv.stride(3), s_mb, s_mq, s_mk,
        o.stride(0), o.stride(1), D, scale, HAS_MASK=has_mask, DOT=dot_precision(qkv), D=D, BLOCK_M=BLOCK_M,
        BLOCK_N=max(16, triton.next_power_of_2(L)),
    )  # fmt: skip
    return o


@short_attention.register_fake
def _(qkv: Tensor, mask: Tensor | None, scale: float) -> Tensor:
    check(qkv, mask)
    return heads_out(qkv)


@torch.library.custom_op("unidiffuser::flash_attention", mutates_args=())
def flash_attention(qkv: Tensor, scale: float) -> Tensor:
    """softmax(q k^T * scale) v for each head, any length; qkv (B, L, 3, H, D); returns (B, L, H * D) in qkv's
    dtype."""
    check_qkv(qkv, "flash_attention", MAX_HEAD)
    B, L, _, H, D = qkv.shape
    o = heads_out(qkv)
    grid = (triton.cdiv(L, FLASH["BLOCK_M"]), B * H)
    _flash[grid](
        qkv, o, L, H, qkv.stride(0), qkv.stride(1), qkv.stride(2), qkv.stride(3), o.stride(0), o.stride(1), D,
        scale * math.log2(math.e), DOT=dot_precision(qkv), D=D, **FLASH,
    )  # fmt: skip
    return o


@flash_attention.register_fake
def _(qkv: Tensor, scale: float) -> Tensor:
    check_qkv(qkv, "flash_attention", MAX_HEAD)
    return heads_out(qkv)
