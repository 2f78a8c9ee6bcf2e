"""U-ViT noise network of UniDiffuser-v1 (`uvit_multi_post_ln_v1`), plain fp32 PyTorch.

Facts from ../shared/SPEC.md section 2. Attribute names equal the keys of `uvit_v1.pth`, so
`load_state_dict(strict=True)` needs no key map.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from reference.configs import UViTConfig


def timestep_embedding(t: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """Raw sinusoid, cos first, always fp32 (timesteps are fractional, e.g. 980.02)."""
    half = dim // 2
    # made on t's device: a host-to-device copy here would break CUDA-graph capture
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]  # (B, half)
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)  # (B, dim)


def unpatchify(x: Tensor, in_chans: int) -> Tensor:
    """(B, h*w, p*p*C) -> (B, C, h*p, w*p); C varies fastest inside a patch, unlike the conv weight layout."""
    B, N, P = x.shape
    p = int(math.isqrt(P // in_chans))
    h = w = int(math.isqrt(N))
    if h * w != N or p * p * in_chans != P:
        raise ValueError(f"cannot unpatchify {tuple(x.shape)} into {in_chans} channels")
    x = x.reshape(B, h, w, p, p, in_chans)  # B h w p1 p2 C
    x = x.permute(0, 5, 1, 3, 2, 4)  # B C h p1 w p2
    return x.reshape(B, in_chans, h * p, w * p)


def upcast(x: Tensor) -> Tensor:
    """fp16/bf16 -> fp32; fp32 and fp64 unchanged (an fp64 run of the reference must stay fp64)."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


class LayerNorm(nn.LayerNorm):
    """Computes in at least fp32 and casts back, whatever dtype the engine runs in."""

    def forward(self, x: Tensor) -> Tensor:
        return F.layer_norm(upcast(x), self.normalized_shape, upcast(self.weight), upcast(self.bias), self.eps).type_as(
            x
        )


class Attention(nn.Module):
    sdpa = False  # engines may switch to PyTorch's fused attention kernels; the reference stays explicit

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        B, L, C = x.shape
        qkv = self.qkv(x).reshape(B, L, 3, self.num_heads, C // self.num_heads)  # B L K H D
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, H, L, D)
        if self.sdpa:
            x = F.scaled_dot_product_attention(q, k, v, scale=self.scale)  # (B, H, L, D)
        else:
            attn = (q @ k.transpose(-2, -1)) * self.scale  # (B, H, L, L)
            x = attn.softmax(dim=-1) @ v  # (B, H, L, D)
        return self.proj(x.transpose(1, 2).reshape(B, L, C))  # (B, L, C)


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()  # exact erf
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """Post-LN block; out-blocks (skip=True) first fuse the long skip through `skip_linear` + `norm1`."""

    def __init__(self, cfg: UViTConfig, *, skip: bool = False):
        super().__init__()
        D = cfg.embed_dim
        self.norm1 = LayerNorm(D, eps=cfg.ln_eps) if skip else None
        self.norm2 = LayerNorm(D, eps=cfg.ln_eps)
        self.attn = Attention(D, cfg.num_heads)
        self.norm3 = LayerNorm(D, eps=cfg.ln_eps)
        self.mlp = Mlp(D, D * cfg.mlp_ratio)
        self.skip_linear = nn.Linear(2 * D, D) if skip else None

    def forward(self, x: Tensor, skip: Tensor | None = None) -> Tensor:  # (B, L, D)
        if self.skip_linear is not None:
            x = self.norm1(self.skip_linear(torch.cat([x, skip], dim=-1)))
        x = self.norm2(x + self.attn(x))
        return self.norm3(x + self.mlp(x))


class PatchEmbed(nn.Module):
    def __init__(self, cfg: UViTConfig):
        super().__init__()
        self.proj = nn.Conv2d(cfg.in_chans, cfg.embed_dim, cfg.patch_size, stride=cfg.patch_size)

    def forward(self, x: Tensor) -> Tensor:  # (B, C, H, W) -> (B, H*W/p^2, D), row-major patches
        return self.proj(x).flatten(2).transpose(1, 2)


class UViT(nn.Module):
    def __init__(self, cfg: UViTConfig):
        super().__init__()
        self.cfg = cfg
        D = cfg.embed_dim
        self.patch_embed = PatchEmbed(cfg)
        self.text_embed = nn.Linear(cfg.text_dim, D)
        self.text_out = nn.Linear(D, cfg.text_dim)
        self.clip_img_embed = nn.Linear(cfg.clip_img_dim, D)
        self.clip_img_out = nn.Linear(D, cfg.clip_img_dim)
        # No slot for the data-type token here: it is spliced in as `pos_embed_token` (SPEC section 2).
        self.pos_embed = nn.Parameter(torch.zeros(1, cfg.num_tokens - 1, D))
        self.in_blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.depth // 2))
        self.mid_block = Block(cfg)
        self.out_blocks = nn.ModuleList(Block(cfg, skip=True) for _ in range(cfg.depth // 2))
        self.norm = LayerNorm(D, eps=cfg.ln_eps)
        self.decoder_pred = nn.Linear(D, cfg.patch_size**2 * cfg.in_chans)
        self.token_embedding = nn.Embedding(2, D)
        self.pos_embed_token = nn.Parameter(torch.zeros(1, 1, D))

    def forward(
        self, img: Tensor, clip_img: Tensor, text: Tensor, t_img: Tensor, t_text: Tensor, data_type: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        # img (B, 4, 64, 64), clip_img (B, 1, 512), text (B, 77, 64), t_img/t_text (B,) float, data_type (B,) int
        cfg, dt = self.cfg, self.pos_embed.dtype
        img, clip_img, text = img.to(dt), clip_img.to(dt), text.to(dt)  # an engine may run in fp16/bf16
        img = self.patch_embed(img)  # (B, 1024, D)
        t_img_token = timestep_embedding(t_img, cfg.embed_dim).to(dt)[:, None]  # (B, 1, D)
        t_text_token = timestep_embedding(t_text, cfg.embed_dim).to(dt)[:, None]  # (B, 1, D)
        text = self.text_embed(text)  # (B, 77, D)
        clip_img = self.clip_img_embed(clip_img)  # (B, 1, D)
        token_embed = self.token_embedding(data_type)[:, None]  # (B, 1, D)
        x = torch.cat((t_img_token, t_text_token, token_embed, text, clip_img, img), dim=1)  # (B, 1105, D)
        pos = self.pos_embed
        x = x + torch.cat([pos[:, :2], self.pos_embed_token, pos[:, 2:]], dim=1)
        x = self.norm(self.blocks(x))

        n_text, n_img = cfg.num_text_tokens, cfg.num_patches
        _, _, _, text_out, clip_img_out, img_out = x.split((1, 1, 1, n_text, 1, n_img), dim=1)
        img_out = unpatchify(self.decoder_pred(img_out), cfg.in_chans)  # (B, 4, 64, 64)
        return img_out, self.clip_img_out(clip_img_out), self.text_out(text_out)

    def blocks(self, x: Tensor) -> Tensor:  # (B, L, D) -> (B, L, D)
        """The trunk: in-blocks, mid block, out-blocks, each out-block taking the output of its mirror in-block."""
        skips = []
        for blk in self.in_blocks:
            x = blk(x)
            skips.append(x)
        x = self.mid_block(x)
        for blk in self.out_blocks:
            x = blk(x, skips.pop())
        return x
