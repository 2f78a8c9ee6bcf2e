"""Module swaps that do in one kernel what the reference does in several; engines opt in by option, and the accuracy
suite shows what each costs.

    mlp=epilogue   U-ViT fc1 + bias + GELU as one cuBLASLt GEMM with its GELU epilogue (torch._addmm_activation):
                   the separate GELU pass over the (2210, 6144) hidden activations goes. On CUDA the epilogue is the
                   tanh approximation of GELU (the reference's nn.GELU is the exact one); on the CPU it is exact.
    qkv=stacked    CLIP's q, k and v projections as one Linear: at 77 tokens each GEMM is a few microseconds of a
                   mostly idle GPU, so one launch three times as wide replaces three.
    upsample=subpixel
                   the decoder's nearest 2x upsampling + 3x3 conv as a 2x2 conv on the small image (SubpixelUpsample):
                   16 instead of 36 multiply-adds per output value, and the 4x-sized upsampled input is never written.
    conv_out=taps  the decoder's last conv (128 -> 3 channels at 512x512) as one GEMM from each pixel to its nine taps'
                   contributions and a shifted sum of those (TapConv): cuDNN runs a 3-channel conv as a padded implicit
                   GEMM several times slower than a read of its input.

`groupnorm=stats` (`swap_stats`) gives the decoder's GroupNorm statistics to our Triton kernels and restructures the
residual blocks around them.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from reference import autoencoder as ae
from reference import uvit as uv


class EpilogueMlp(uv.Mlp):
    def forward(self, x: Tensor) -> Tensor:  # (B, L, D) -> (B, L, D)
        lead = x.shape[:-1]
        h = torch._addmm_activation(self.fc1.bias, x.reshape(-1, x.shape[-1]), self.fc1.weight.t(), use_gelu=True)
        return self.fc2(h.view(*lead, -1))


class FlashAttention(uv.Attention):
    """The U-ViT's attention with its q/k/v projection read in place by our Triton kernel (`attention=triton`,
    plugin.attention.flash_attention): no copy into heads or back, scores and softmax in fp32."""

    def forward(self, x: Tensor) -> Tensor:  # (B, L, C) -> (B, L, C)
        from plugin.attention import flash_attention

        B, L, C = x.shape
        qkv = self.qkv(x).view(B, L, 3, self.num_heads, C // self.num_heads)
        return self.proj(flash_attention(qkv, self.scale))


class SubpixelUpsample(ae.Upsample):
    """The reference's conv3x3(upsample_nearest_2x(x)), computed on x itself.

    Output pixel (2i + a, 2j + b) sees x only at rows i - 1 + a .. i + a and columns j - 1 + b .. j + b, with the 3x3
    kernel's taps that fall on the same input pixel summed: per axis, phase 0 takes (w0, w1 + w2) and phase 1
    (w0 + w1, w2). So one 2x2 conv with four outputs per channel (one per phase (a, b)), padded by 1, gives every phase,
    and a gather interleaves them. The sums are formed once, in fp32, when the layer is swapped in (`fold`).
    """

    def fold(self) -> SubpixelUpsample:
        w = self.conv.weight
        wide = w.to(torch.promote_types(w.dtype, torch.float32))  # sums of fp16 weights formed in fp32
        phases = _phase_taps(_phase_taps(wide, 2), 4)  # (C_out, C_in, 3, 3) -> (2 b, 2 a, C_out, C_in, 2, 2)
        # not in the state dict: the checkpoint's keys stay the reference's
        self.register_buffer("phases", phases.transpose(0, 1).flatten(0, 2).to(w.dtype), persistent=False)
        return self

    def forward(self, x: Tensor) -> Tensor:  # (B, C, H, W) -> (B, C, 2H, 2W)
        B, C, H, W = x.shape
        y = F.conv2d(x, self.phases, padding=1).unflatten(1, (2, 2, C))  # (B, 2 a, 2 b, C, H + 1, W + 1)
        cols = lambda a: torch.stack([y[:, a, b, :, a : a + H, b : b + W] for b in (0, 1)], -1)  # noqa: E731
        out = torch.stack([cols(0), cols(1)], 3).view(B, C, 2 * H, 2 * W)  # (B, C, H, 2 a, W, 2 b) row-major
        out = out + self.conv.bias.view(C, 1, 1)
        return out.contiguous(memory_format=torch.channels_last) if channels_last(x) else out


class TapConv(nn.Conv2d):
    """A 3x3 conv (stride 1, padding 1) with few output channels as z = x W, each input pixel's contribution to each of
    its nine output neighbours (a GEMM over channels), then out[i, j] = sum over taps (r, s) of z[i + r - 1, j + s - 1,
    (r, s)]: the input is read once, and what is written between the two is 9 x out_channels values per pixel (padded
    to a multiple of 8, the GEMM's alignment) instead of a padded implicit GEMM's tiles. Each tap's contribution is
    rounded to x's dtype before the sum, which runs in fp32 (fp64 for fp64)."""

    def fold(self) -> TapConv:
        if self.kernel_size != (3, 3) or self.padding != (1, 1) or self.stride != (1, 1) or self.groups != 1:
            raise ValueError(f"TapConv takes a 3x3 conv with padding 1 and stride 1; got {self}")
        taps = self.weight.permute(1, 2, 3, 0).flatten(1)  # (C_in, 3 r * 3 s * C_out)
        width = -(-taps.shape[1] // 8) * 8
        # not in the state dict: the checkpoint's keys stay the reference's
        self.register_buffer("taps", F.pad(taps, (0, width - taps.shape[1])), persistent=False)
        return self

    def forward(self, x: Tensor) -> Tensor:  # (B, C_in, H, W) -> (B, C_out, H, W), x's memory format
        B, _, H, W = x.shape
        C_out, wide = self.out_channels, torch.promote_types(x.dtype, torch.float32)
        z = x.permute(0, 2, 3, 1) @ self.taps  # (B, H, W, width): a GEMM on channels_last memory
        z = z[..., : 9 * C_out].unflatten(-1, (3, 3, C_out))  # (B, H, W, 3 r, 3 s, C_out)
        z = F.pad(z, (0, 0, 0, 0, 0, 0, 1, 1, 1, 1))  # (B, H + 2, W + 2, 3, 3, C_out): zeros outside the image
        out = sum(z[:, r : r + H, s : s + W, r, s].to(wide) for r in range(3) for s in range(3))  # (B, H, W, C_out)
        out = (out + self.bias.to(wide)).to(x.dtype).permute(0, 3, 1, 2)  # a channels_last view of (B, C_out, H, W)
        return out if channels_last(x) else out.contiguous()


def channels_last(x: Tensor) -> bool:
    """x is laid out NHWC (and not also NCHW, as a tensor with one channel or one pixel is)."""
    return x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()


def _phase_taps(w: Tensor, dim: int) -> Tensor:
    """3 taps along `dim` -> the 2 taps each output phase of a nearest 2x upsampling sees, phases stacked first."""
    t0, t1, t2 = w.unbind(dim)
    return torch.stack([torch.stack([t0, t1 + t2], dim), torch.stack([t0 + t1, t2], dim)])


def normalized(gn: nn.GroupNorm, v: Tensor, mean: Tensor, rstd: Tensor) -> Tensor:
    """(v - mean) * rstd * weight + bias in fp32, v (N, C, H, W) fp32 and each group's mean and 1/std (N, G): pointwise
    torch that Inductor fuses with what comes before and after."""
    mean_c, rstd_c = (t.repeat_interleave(v.shape[1] // gn.num_groups, dim=1)[:, :, None, None] for t in (mean, rstd))
    w, b = gn.weight.float()[:, None, None], gn.bias.float()[:, None, None]
    return (v - mean_c) * (rstd_c * w) + b


class StatsGroupNorm(ae.GroupNorm):
    """The reference GroupNorm of x (+ the per-channel bias of the conv before, which ran without it) as two kernels of
    ours (plugin.groupstats, fixed launch configurations: Inductor's reductions and normalisations ran at 60-80% of a
    copy's bandwidth and got different launch configurations from build to build): the statistics, unless the block
    before handed them in, then the normalisation, SiLU included if asked. In torch off the GPU."""

    def forward(self, x: Tensor, bias: Tensor | None = None, stats: tuple[Tensor, Tensor] | None = None,
                silu: bool = False) -> Tensor:  # fmt: skip
        # (N, C, H, W) -> (N, C, H, W), x's dtype and memory format
        mean, rstd = stats if stats is not None else group_stats(x, bias, None, self.num_groups, self.eps)[1:]
        if x.is_cuda:
            from plugin.groupstats import group_norm_apply

            return group_norm_apply(x, bias, mean, rstd, self.weight, self.bias, silu)
        y = normalized(self, plus_bias(x, bias), mean, rstd).to(x.dtype)
        return F.silu(y) if silu else y

    def then_silu(self, x: Tensor, bias: Tensor | None = None, stats: tuple[Tensor, Tensor] | None = None) -> Tensor:
        """SiLU(self(x)), in the normalisation's kernel; a mark on the norm sees its own output, the SiLU after it."""
        if self._forward_hooks:
            return F.silu(self(x, bias, stats))
        return self(x, bias, stats, silu=True)


class StatsResnetBlock(ae.ResnetBlock):
    """The reference block with its convolutions run without bias: conv1's is added where norm2 reads its output, and
    conv2's and nin_shortcut's by the kernel that writes the block's output and, in the same pass, the statistics for
    `reader`, the GroupNorm that reads that output, with its groups and eps (None: the statistics go unused). Takes
    and returns (x, its group statistics or None); the output tuple is marked by its first tensor, the block's
    output."""

    def forward(
        self, x: Tensor, stats: tuple[Tensor, Tensor] | None = None, reader: nn.GroupNorm | None = None
    ) -> tuple[Tensor, tuple[Tensor, Tensor] | None]:
        h = F.conv2d(self.norm1.then_silu(x, stats=stats), self.conv1.weight, padding=1)  # (B, Cout, H, W)
        h = F.conv2d(self.norm2.then_silu(h, bias=self.conv1.bias), self.conv2.weight, padding=1)
        bias, residual = self.conv2.bias, x
        if self.nin_shortcut is not None:
            bias, residual = bias + self.nin_shortcut.bias, F.conv2d(x, self.nin_shortcut.weight)
        norm = reader if reader is not None else self.norm2
        out, mean, rstd = group_stats(h, bias, residual, norm.num_groups, norm.eps)
        return out, ((mean, rstd) if reader is not None else None)


class StatsDecoder(ae.Decoder):
    """The reference decoder passing each residual block's output statistics on to the GroupNorm that reads it: the
    next block's first norm, or norm_out after the last block (an upsampling or the attention between reads the
    output itself)."""

    def forward(self, z: Tensor) -> Tensor:  # (B, 4, 64, 64) -> (B, 3, 512, 512)
        h, _ = self.mid.block_1(self.conv_in(z))
        steps = [self.mid.block_2]
        for i_level in reversed(range(len(self.up))):
            steps += list(self.up[i_level].block) + ([self.up[i_level].upsample] if i_level != 0 else [])
        h, stats = self.mid.attn_1(h), None
        for step, after in zip(steps, [*steps[1:], None], strict=True):
            if isinstance(step, ae.ResnetBlock):
                reader = self.norm_out if after is None else after.norm1 if isinstance(after, ae.ResnetBlock) else None
                h, stats = step(h, stats, reader)
            else:
                h, stats = step(h), None
        return self.conv_out(self.norm_out.then_silu(h, stats=stats))


def swap_stats(module: nn.Module) -> nn.Module:
    """groupnorm=stats on every decoder in `module`; a conv it runs without its module (conv1, conv2, nin_shortcut of
    a residual block) cannot carry a mark."""
    for m in module.modules():
        if type(m) is ae.ResnetBlock:
            convs = {"conv1": m.conv1, "conv2": m.conv2, "nin_shortcut": m.nin_shortcut}
            hooked = [name for name, conv in convs.items() if conv is not None and conv._forward_hooks]
            if hooked:
                raise ValueError(
                    f"groupnorm=stats runs a residual block's {hooked} without their modules, so they cannot be "
                    "marked: mark the block or its norms, or build with another groupnorm"
                )
            m.__class__ = StatsResnetBlock
        elif type(m) is ae.GroupNorm:
            m.__class__ = StatsGroupNorm
        elif type(m) is ae.Decoder:
            m.__class__ = StatsDecoder
    return module


def group_stats(
    x: Tensor, bias: Tensor | None, residual: Tensor | None, groups: int, eps: float
) -> tuple[Tensor | None, Tensor, Tensor]:
    """(x + bias + residual in x's dtype, or None without a residual; each group's mean and 1/std of it, (N, G) fp32):
    plugin.groupstats's kernels on the GPU, the same in torch elsewhere."""
    if x.is_cuda:
        from plugin import groupstats

        if residual is None:
            return None, *groupstats.group_stats(x, bias, groups, eps)
        return groupstats.add_group_stats(x, bias, residual, groups, eps)
    v = plus_bias(x, bias)
    out = (v + residual.float()).to(x.dtype) if residual is not None else None
    v = out.float() if out is not None else v
    var, mean = torch.var_mean(v.reshape(v.shape[0], groups, -1), dim=-1, correction=0)
    return out, mean, torch.rsqrt(var + eps)


def plus_bias(x: Tensor, bias: Tensor | None) -> Tensor:
    """x (N, C, H, W) + a per-channel bias, in fp32."""
    return x.float() if bias is None else x.float() + bias.float()[:, None, None]


class StackedQKVAttention(nn.Module):
    """Hugging Face's CLIPAttention with q/k/v in one `qkv` Linear, called as its encoder layer calls it."""

    def __init__(self, attn: nn.Module):
        super().__init__()
        self.num_heads, self.head_dim, self.scale = attn.num_heads, attn.head_dim, attn.scale
        self.kernel = "sdpa" if attn.config._attn_implementation == "sdpa" else "math"  # engines.eager.ATTENTION
        projections = (attn.q_proj, attn.k_proj, attn.v_proj)
        w = attn.q_proj.weight
        self.qkv = nn.Linear(w.shape[1], 3 * w.shape[0], device=w.device, dtype=w.dtype)
        with torch.no_grad():
            self.qkv.weight.copy_(torch.cat([p.weight for p in projections]))
            self.qkv.bias.copy_(torch.cat([p.bias for p in projections]))
        self.out_proj = attn.out_proj

    def forward(self, hidden_states: Tensor, attention_mask: Tensor | None = None, **kwargs) -> tuple[Tensor, None]:
        B, L, C = hidden_states.shape
        qkv = self.qkv(hidden_states).view(B, L, 3, self.num_heads, self.head_dim)
        if self.kernel == "triton":
            from plugin.attention import short_attention

            return self.out_proj(short_attention(qkv, attention_mask, self.scale)), None
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, H, L, Dh)
        if self.kernel == "sdpa":
            o = F.scaled_dot_product_attention(q, k, v, attn_mask=attention_mask, scale=self.scale)
        else:  # Hugging Face's eager path: softmax in fp32
            s = (q @ k.transpose(-2, -1)) * self.scale
            s = s + attention_mask if attention_mask is not None else s
            o = s.softmax(dim=-1, dtype=torch.float32).to(q.dtype) @ v
        return self.out_proj(o.transpose(1, 2).reshape(B, L, C)), None


def apply(module: nn.Module, options: Mapping[str, object]) -> nn.Module:
    """Swap in the fused layers `options` (an engine spec's, flat, with its defaults: engines.spec.defaults) ask for;
    after the attention kind is set (the CLIP swap reads it) and after the cast (the upsampling folds its weights in
    their final dtype)."""
    from transformers.models.clip.modeling_clip import CLIPAttention

    mlp, qkv, upsample, conv_out = (options[k] for k in ("mlp", "qkv", "upsample", "conv_out"))
    for m in module.modules():
        if mlp == "epilogue" and type(m) is uv.Mlp:
            m.__class__ = EpilogueMlp  # same parameters and hooks, another forward
        if upsample == "subpixel" and type(m) is ae.Upsample:
            m.__class__ = SubpixelUpsample
            m.fold()
        if conv_out == "taps" and isinstance(m, ae.Decoder):
            m.conv_out.__class__ = TapConv
            m.conv_out.fold()
        if qkv == "stacked":
            for child_name, child in m.named_children():
                if isinstance(child, CLIPAttention):
                    setattr(m, child_name, StackedQKVAttention(child))
    return module
