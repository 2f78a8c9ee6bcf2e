"""Stable-Diffusion KL-f8 VAE decoder plus `post_quant_conv`, plain fp32 PyTorch (../shared/SPEC.md section 5).

Attribute names equal the keys of `autoencoder_kl.pth` (`decoder.*`, `post_quant_conv.*`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from reference.configs import AutoencoderConfig
from reference.uvit import upcast


class GroupNorm(nn.GroupNorm):
    """GroupNorm(32, eps 1e-6); statistics in at least fp32, output in the input dtype. Engines may swap in a kernel."""

    def __init__(self, channels: int):
        super().__init__(32, channels, eps=1e-6, affine=True)

    def forward(self, x: Tensor) -> Tensor:
        return F.group_norm(upcast(x), self.num_groups, upcast(self.weight), upcast(self.bias), self.eps).type_as(x)


class ResnetBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.norm1 = GroupNorm(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = GroupNorm(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.nin_shortcut = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else None

    def forward(self, x: Tensor) -> Tensor:  # (B, Cin, H, W) -> (B, Cout, H, W)
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return (x if self.nin_shortcut is None else self.nin_shortcut(x)) + h


class AttnBlock(nn.Module):
    """One head over all H*W positions (4096 at 64x64)."""

    sdpa = False  # engines may switch to PyTorch's fused attention kernels; the reference stays explicit

    def __init__(self, channels: int):
        super().__init__()
        self.norm = GroupNorm(channels)
        self.q = nn.Conv2d(channels, channels, 1)
        self.k = nn.Conv2d(channels, channels, 1)
        self.v = nn.Conv2d(channels, channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        B, C, H, W = x.shape
        h = self.norm(x)
        q = self.q(h).reshape(B, C, H * W).transpose(1, 2)  # (B, HW, C)
        k = self.k(h).reshape(B, C, H * W)  # (B, C, HW)
        v = self.v(h).reshape(B, C, H * W)  # (B, C, HW)
        if self.sdpa:
            o = F.scaled_dot_product_attention(q[:, None], k.transpose(1, 2)[:, None], v.transpose(1, 2)[:, None])
            h = o[:, 0].transpose(1, 2).reshape(B, C, H, W)  # (B, 1, HW, C) -> (B, C, H, W)
        else:
            w = torch.softmax((q @ k) * C**-0.5, dim=2)  # (B, HW_q, HW_k)
            h = (v @ w.transpose(1, 2)).reshape(B, C, H, W)  # (B, C, HW_q) -> (B, C, H, W)
        return x + self.proj_out(h)


class Upsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:  # (B, C, H, W) -> (B, C, 2H, 2W)
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class Decoder(nn.Module):
    def __init__(self, cfg: AutoencoderConfig):
        super().__init__()
        levels = len(cfg.ch_mult)
        block_in = cfg.ch * cfg.ch_mult[-1]
        self.conv_in = nn.Conv2d(cfg.z_channels, block_in, 3, padding=1)
        self.mid = nn.Module()
        self.mid.block_1 = ResnetBlock(block_in, block_in)
        self.mid.attn_1 = AttnBlock(block_in)
        self.mid.block_2 = ResnetBlock(block_in, block_in)
        ups = []
        for i_level in reversed(range(levels)):  # built deepest first, stored shallowest first (checkpoint order)
            up = nn.Module()
            block_out = cfg.ch * cfg.ch_mult[i_level]
            blocks = []
            for _ in range(cfg.num_res_blocks + 1):
                blocks.append(ResnetBlock(block_in, block_out))
                block_in = block_out
            up.block = nn.ModuleList(blocks)
            if i_level != 0:
                up.upsample = Upsample(block_in)
            ups.insert(0, up)
        self.up = nn.ModuleList(ups)
        self.norm_out = GroupNorm(block_in)
        self.conv_out = nn.Conv2d(block_in, cfg.out_ch, 3, padding=1)

    def forward(self, z: Tensor) -> Tensor:  # (B, 4, 64, 64) -> (B, 3, 512, 512)
        h = self.conv_in(z)
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(h)))
        for i_level in reversed(range(len(self.up))):
            for block in self.up[i_level].block:
                h = block(h)
            if i_level != 0:
                h = self.up[i_level].upsample(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class AutoencoderDecoder(nn.Module):
    """`z / scale_factor` -> post_quant_conv -> decoder: latents to an image in about [-1, 1]."""

    def __init__(self, cfg: AutoencoderConfig):
        super().__init__()
        self.cfg = cfg
        self.post_quant_conv = nn.Conv2d(cfg.z_channels, cfg.z_channels, 1)
        self.decoder = Decoder(cfg)

    def forward(self, z: Tensor) -> Tensor:  # (B, 4, h, w) -> (B, 3, 8h, 8w)
        z = z.to(self.post_quant_conv.weight.dtype)  # an engine may run in fp16/bf16
        return self.decoder(self.post_quant_conv(z / self.cfg.scale_factor))


def to_uint8(v: Tensor, *, rounding: str = "truncate") -> Tensor:
    """(B, 3, H, W) in ~[-1, 1] -> (B, H, W, 3) uint8. `truncate` is the seed's astype(uint8); `round` is upstream's
    round-half-up (torchvision's save_image adds 0.5 before the cast)."""
    x = torch.clamp(0.5 * (v.float() + 1) * 255, 0, 255)
    if rounding == "round":
        x = torch.clamp(x + 0.5, 0, 255)
    elif rounding != "truncate":
        raise ValueError(f"unknown rounding {rounding!r}; choose from ['round', 'truncate']")
    return x.to(torch.uint8).permute(0, 2, 3, 1)
