"""The three components as TensorRT-LLM networks (tensorrt_llm.Module), for engines.trtllm. Imports tensorrt_llm.

Written against TensorRT-LLM 1.2's network API (functional ops, layers.Linear/Conv2d/Embedding, Parameter,
Module.register_network_output) on TensorRT 10.13. Attribute paths equal the reference's module paths (CLIP without
`text_model.`), so a reference parameter and a mark keep their names here; engines.trtllm.weights maps the values.
Networks are strongly typed, as TensorRT-LLM 1.x builds them: every tensor has the dtype it is given here, which is
how LayerNorm and GroupNorm compute in fp32 inside an fp16 engine (the seed's fp16 decoder failed in those layers).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import tensorrt as trt
import torch
from tensorrt_llm import functional as F
from tensorrt_llm._common import default_trtnet
from tensorrt_llm._utils import convert_to_torch_tensor, torch_to_numpy, trt_dtype_to_torch
from tensorrt_llm.layers import Conv2d, Embedding, Linear
from tensorrt_llm.module import Module, ModuleList
from tensorrt_llm.parameter import Parameter
from tensorrt_llm.python_plugin import PluginBase, SymTensor, trtllm_plugin

from reference.dpm_solver import N_TRAIN
from reference.pipeline import DATA_TYPE_T2I, GUIDANCE_SCALE

F32 = trt.float32


def const(value: float | torch.Tensor, dtype: trt.DataType, shape: Sequence[int] = (1,)) -> F.Tensor:
    """A constant of `dtype` (strongly typed networks do not promote; bf16 goes through torch, numpy lacks it)."""
    t = torch.as_tensor(value, dtype=torch.float64).to(trt_dtype_to_torch(dtype)).expand(*shape).contiguous()
    return F.constant(torch_to_numpy(t))


def erf(x: F.Tensor) -> F.Tensor:
    layer = default_trtnet().add_unary(x.trt_tensor, trt.UnaryOperation.ERF)
    return F._create_tensor(layer.get_output(0), layer)


def gelu_erf(x: F.Tensor) -> F.Tensor:
    """Exact GELU, as nn.GELU(); tensorrt_llm.functional.gelu is the tanh approximation."""
    return x * const(0.5, x.dtype) * (const(1.0, x.dtype) + erf(x * const(1 / math.sqrt(2), x.dtype)))


class Recorded:
    """Every module records its output in execution order; the builder marks those the caller asked for."""

    executed: list[tuple[Module, F.Tensor]] = []

    def out(self, y: F.Tensor) -> F.Tensor:
        Recorded.executed.append((self, y))
        return y


class MLinear(Linear, Recorded):
    def forward(self, x):
        return self.out(super().forward(x))


class MConv2d(Conv2d, Recorded):
    def forward(self, x):
        return self.out(super().forward(x))


class LayerNorm(Module, Recorded):
    """Statistics and affine in fp32 whatever the engine's dtype; output cast back."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight, self.bias = Parameter(shape=(dim,), dtype=F32), Parameter(shape=(dim,), dtype=F32)
        self.dim, self.eps = dim, eps

    def forward(self, x):
        y = F.layer_norm(F.cast(x, F32), (self.dim,), self.weight.value, self.bias.value, self.eps)
        return self.out(F.cast(y, x.dtype))


@trtllm_plugin("UnidiffuserGroupNorm")
class GroupNormPlugin(PluginBase):
    """plugin/groupnorm.py's Triton kernels as a TensorRT-LLM Python plugin (x, weight, bias) -> y, in x's dtype."""

    def __init__(self, num_groups: int, eps: float, silu: bool):
        super().__init__()
        self.num_groups, self.eps, self.silu = num_groups, eps, silu

    def shape_dtype_inference(self, inputs: Sequence[SymTensor]) -> SymTensor:
        return SymTensor(inputs[0].dtype, inputs[0].shape)

    def forward(self, inputs, outputs):
        from plugin.groupnorm import group_norm_into

        x, w, b = (convert_to_torch_tensor(t) for t in inputs)
        group_norm_into(convert_to_torch_tensor(outputs[0]), x, w, b, self.num_groups, self.eps, self.silu)


class GroupNorm(Module, Recorded):
    """GroupNorm(32, eps 1e-6) with fp32 statistics: our Triton plugin, or TensorRT's normalisation layer on an fp32
    copy (`kernel="trt"`)."""

    def __init__(self, channels: int, kernel: str):
        super().__init__()
        self.weight, self.bias = Parameter(shape=(channels,), dtype=F32), Parameter(shape=(channels,), dtype=F32)
        self.kernel = kernel

    def forward(self, x):
        if self.kernel == "plugin":
            return self.out(GroupNormPlugin(32, 1e-6, False)(x, self.weight.value, self.bias.value))
        y = F.group_norm(F.cast(x, F32), 32, self.weight.value, self.bias.value, 1e-6)
        return self.out(F.cast(y, x.dtype))


def attention(q, k, v, scale: float, mask=None):
    """softmax(q k^T * scale + mask) v on (B, H, L, Dh): explicit, as the seed wrote it; TensorRT fuses the pattern."""
    s = F.matmul(q, k, transb=True) * const(scale, q.dtype)
    s = s + mask if mask is not None else s
    return F.matmul(F.softmax(s, dim=-1), v)


def heads(x, B: int, L: int, H: int, i: int, n: int):
    """The i-th of n stacked projections in x (B, L, n*H*Dh), as (B, H, L, Dh)."""
    dh = x.shape[-1] // (n * H)
    return F.slice(x, [0, 0, i * H * dh], [B, L, H * dh]).view([B, L, H, dh]).permute([0, 2, 1, 3])


# ---- CLIP text tower + encode_prefix ------------------------------------------------------------------------------


class CLIPAttention(Module):
    def __init__(self, width: int, num_heads: int, dtype):
        super().__init__()
        self.qkv = Linear(width, 3 * width, dtype=dtype)  # q_proj, k_proj, v_proj stacked (engines.trtllm.weights)
        self.out_proj = Linear(width, width, dtype=dtype)
        self.num_heads = num_heads

    def forward(self, x, mask):
        B, L, C = x.shape
        qkv = self.qkv(x)
        q, k, v = (heads(qkv, B, L, self.num_heads, i, 3) for i in range(3))
        o = attention(q, k, v, (C // self.num_heads) ** -0.5, mask)
        return self.out_proj(o.permute([0, 2, 1, 3]).view([B, L, C]))


class CLIPMLP(Module):
    def __init__(self, width: int, hidden: int, dtype):
        super().__init__()
        self.fc1, self.fc2 = Linear(width, hidden, dtype=dtype), Linear(hidden, width, dtype=dtype)

    def forward(self, x):
        h = self.fc1(x)
        return self.fc2(h * F.sigmoid(h * const(1.702, h.dtype)))  # quick_gelu


class CLIPEncoderLayer(Module, Recorded):
    def __init__(self, cfg, dtype):
        super().__init__()
        self.layer_norm1, self.layer_norm2 = LayerNorm(cfg.width, 1e-5), LayerNorm(cfg.width, 1e-5)
        self.self_attn = CLIPAttention(cfg.width, cfg.heads, dtype)
        self.mlp = CLIPMLP(cfg.width, cfg.mlp, dtype)

    def forward(self, x, mask):
        x = x + self.self_attn(self.layer_norm1(x), mask)
        return self.out(x + self.mlp(self.layer_norm2(x)))


class CLIPEmbeddings(Module, Recorded):
    def __init__(self, cfg, dtype):
        super().__init__()
        self.token_embedding = Embedding(cfg.vocab_size, cfg.width, dtype=dtype)
        self.position_embedding = Embedding(cfg.max_tokens, cfg.width, dtype=dtype)

    def forward(self, input_ids):
        B, L = input_ids.shape
        positions = F.slice(self.position_embedding.weight.value, [0, 0], [L, self.position_embedding.weight.shape[1]])
        return self.out(self.token_embedding(input_ids) + positions.view([1, L, -1]))


class CLIPEncoder(Module):
    def __init__(self, cfg, dtype):
        super().__init__()
        self.layers = ModuleList([CLIPEncoderLayer(cfg, dtype) for _ in range(cfg.layers)])


class CLIPTower(Module):
    def __init__(self, cfg, dtype):
        super().__init__()
        self.embeddings, self.encoder = CLIPEmbeddings(cfg, dtype), CLIPEncoder(cfg, dtype)
        self.final_layer_norm = LayerNorm(cfg.width, 1e-5)


class TextEncoder(Module):
    """input_ids (B, 77) int32 -> (B, 77, text_dim), in the engine's dtype."""

    def __init__(self, cfg, *, dtype):
        super().__init__()
        self.clip = CLIPTower(cfg.clip, dtype)
        self.encode_prefix = MLinear(cfg.clip.width, cfg.uvit.text_dim, dtype=dtype)
        self.dtype = dtype

    def forward(self, input_ids):
        L = input_ids.shape[1]
        x = self.clip.embeddings(input_ids)
        lowest = torch.finfo(trt_dtype_to_torch(self.dtype)).min  # the reference's causal mask, in its dtype
        mask = const(torch.full((L, L), lowest, dtype=torch.float64).triu(1), self.dtype, (1, 1, L, L))
        for layer in self.clip.encoder.layers:
            x = layer(x, mask)
        return self.encode_prefix(self.clip.final_layer_norm(x))


# ---- U-ViT: one guided step ---------------------------------------------------------------------------------------


class UViTAttention(Module):
    def __init__(self, dim: int, num_heads: int, dtype):
        super().__init__()
        self.qkv, self.proj = Linear(dim, 3 * dim, bias=False, dtype=dtype), Linear(dim, dim, dtype=dtype)
        self.num_heads = num_heads

    def forward(self, x):
        B, L, C = x.shape
        qkv = self.qkv(x)  # (B, L, 3C): [q | k | v], heads inside each, as the reference's reshape(B, L, 3, H, Dh)
        q, k, v = (heads(qkv, B, L, self.num_heads, i, 3) for i in range(3))
        o = attention(q, k, v, (C // self.num_heads) ** -0.5)
        return self.proj(o.permute([0, 2, 1, 3]).view([B, L, C]))


class Mlp(Module):
    def __init__(self, dim: int, hidden: int, dtype):
        super().__init__()
        self.fc1, self.fc2 = Linear(dim, hidden, dtype=dtype), Linear(hidden, dim, dtype=dtype)

    def forward(self, x):
        return self.fc2(gelu_erf(self.fc1(x)))


class Block(Module, Recorded):
    def __init__(self, cfg, dtype, *, skip: bool = False):
        super().__init__()
        D = cfg.embed_dim
        if skip:
            self.norm1, self.skip_linear = LayerNorm(D, cfg.ln_eps), Linear(2 * D, D, dtype=dtype)
        self.norm2, self.norm3 = LayerNorm(D, cfg.ln_eps), LayerNorm(D, cfg.ln_eps)
        self.attn, self.mlp = UViTAttention(D, cfg.num_heads, dtype), Mlp(D, D * cfg.mlp_ratio, dtype)
        self.skip = skip

    def forward(self, x, skip=None):
        if self.skip:
            x = self.norm1(self.skip_linear(F.concat([x, skip], dim=2)))
        x = self.norm2(x + self.attn(x))
        return self.out(self.norm3(x + self.mlp(x)))


class PatchEmbed(Module, Recorded):
    def __init__(self, cfg, dtype):
        super().__init__()
        p = (cfg.patch_size, cfg.patch_size)
        self.proj = Conv2d(cfg.in_chans, cfg.embed_dim, p, stride=p, dtype=dtype)

    def forward(self, x):  # (B, C, H, W) -> (B, H*W/p^2, D)
        y = self.proj(x)
        B, D, h, w = y.shape
        return self.out(y.view([B, D, h * w]).transpose(1, 2))


def timestep_embedding(t, dim: int):
    """(B,) fp32 -> (B, dim) fp32: cos then sin, as reference.uvit.timestep_embedding."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32) / half)
    args = t.view([t.shape[0], 1]) * F.constant(torch_to_numpy(freqs.view(1, half)))
    return F.concat([F.cos(args), F.sin(args)], dim=1)


class UViT(Module):
    def __init__(self, cfg, dtype):
        super().__init__()
        D = cfg.embed_dim
        self.patch_embed = PatchEmbed(cfg, dtype)
        self.text_embed, self.text_out = Linear(cfg.text_dim, D, dtype=dtype), Linear(D, cfg.text_dim, dtype=dtype)
        self.clip_img_embed = Linear(cfg.clip_img_dim, D, dtype=dtype)
        self.clip_img_out = MLinear(D, cfg.clip_img_dim, dtype=dtype)
        self.pos_embed = Parameter(shape=(1, cfg.num_tokens - 1, D), dtype=dtype)
        self.in_blocks = ModuleList([Block(cfg, dtype) for _ in range(cfg.depth // 2)])
        self.mid_block = Block(cfg, dtype)
        self.out_blocks = ModuleList([Block(cfg, dtype, skip=True) for _ in range(cfg.depth // 2)])
        self.norm = LayerNorm(D, cfg.ln_eps)
        self.decoder_pred = MLinear(D, cfg.patch_size**2 * cfg.in_chans, dtype=dtype)
        self.token_embedding = Embedding(2, D, dtype=dtype)
        self.pos_embed_token = Parameter(shape=(1, 1, D), dtype=dtype)
        self.cfg, self.dtype = cfg, dtype

    def forward(self, img, clip_img, text, t_img, t_text, data_type):
        cfg, dt, D = self.cfg, self.dtype, self.cfg.embed_dim
        B = img.shape[0]
        tokens = [
            F.cast(timestep_embedding(t_img, D), dt).view([B, 1, D]),
            F.cast(timestep_embedding(t_text, D), dt).view([B, 1, D]),
            self.token_embedding(data_type).view([B, 1, D]),
            self.text_embed(text),
            self.clip_img_embed(clip_img),
            self.patch_embed(img),
        ]
        x = F.concat(tokens, dim=1)  # (B, 1105, D)
        pos, n = self.pos_embed.value, cfg.num_tokens - 1
        x = x + F.concat([F.slice(pos, [0, 0, 0], [1, 2, D]), self.pos_embed_token.value,
                          F.slice(pos, [0, 2, 0], [1, n - 2, D])], dim=1)  # fmt: skip
        skips = []
        for blk in self.in_blocks:
            x = blk(x)
            skips.append(x)
        x = self.mid_block(x)
        for blk in self.out_blocks:
            x = blk(x, skips.pop())
        x = self.norm(x)
        n_text, n_img, L = cfg.num_text_tokens, cfg.num_patches, cfg.num_tokens
        clip_out = self.clip_img_out(F.slice(x, [0, 3 + n_text, 0], [B, 1, D]))  # (B, 1, clip_img_dim)
        img_out = self.decoder_pred(F.slice(x, [0, L - n_img, 0], [B, n_img, D]))  # (B, h*w, p*p*C)
        return unpatchify(img_out, cfg), clip_out


def unpatchify(x, cfg):
    """(B, h*w, p*p*C) -> (B, C, h*p, w*p), as reference.uvit.unpatchify."""
    B, p, C = x.shape[0], cfg.patch_size, cfg.in_chans
    h = cfg.img_size // p
    x = x.view([B, h, h, p, p, C]).permute([0, 5, 1, 3, 2, 4])
    return x.view([B, C, h * p, h * p])


class GuidedStep(Module):
    """reference.pipeline.GuidedStep(batched=True): D = (x - sigma eps) / alpha, eps = cond + s (cond - uncond),
    cond and uncond from one batch-2 U-ViT call. Inputs fp32 like the reference; output fp32."""

    def __init__(self, cfg, *, dtype):
        super().__init__()
        self.uvit = UViT(cfg.uvit, dtype)
        self.cfg, self.dtype = cfg.uvit, dtype

    def forward(self, x, text, text_noise, t_model, alpha, sigma):
        cfg, dt = self.cfg, self.dtype
        B, X = x.shape
        Z = cfg.in_chans * cfg.img_size**2
        z = F.slice(x, [0, 0], [B, Z]).view([B, cfg.in_chans, cfg.img_size, cfg.img_size])
        clip_img = F.slice(x, [0, Z], [B, cfg.clip_img_dim]).view([B, 1, cfg.clip_img_dim])
        two = lambda a, b: F.cast(F.concat([a, b], dim=0), dt)  # noqa: E731
        t_text = F.concat([const(0.0, F32, (B,)), const(float(N_TRAIN), F32, (B,))], dim=0)
        data_type = F.constant(np.full((2 * B,), DATA_TYPE_T2I, dtype=np.int32))
        img_out, clip_out = self.uvit(two(z, z), two(clip_img, clip_img), two(text, text_noise),
                                      F.concat([t_model, t_model], dim=0), t_text, data_type)  # fmt: skip
        out = F.cast(F.concat([img_out.view([2 * B, Z]), clip_out.view([2 * B, cfg.clip_img_dim])], dim=1), F32)
        cond, uncond = F.slice(out, [0, 0], [B, X]), F.slice(out, [B, 0], [B, X])
        eps = cond + const(GUIDANCE_SCALE, F32) * (cond - uncond)
        return (x - sigma.view([B, 1]) * eps) / alpha.view([B, 1])


# ---- VAE decoder --------------------------------------------------------------------------------------------------


def silu(x):
    return x * F.sigmoid(x)


class ResnetBlock(Module, Recorded):
    def __init__(self, cin: int, cout: int, dtype, gn: str):
        super().__init__()
        self.norm1, self.norm2 = GroupNorm(cin, gn), GroupNorm(cout, gn)
        self.conv1 = Conv2d(cin, cout, (3, 3), padding=(1, 1), dtype=dtype)
        self.conv2 = Conv2d(cout, cout, (3, 3), padding=(1, 1), dtype=dtype)
        if cin != cout:
            self.nin_shortcut = Conv2d(cin, cout, (1, 1), dtype=dtype)
        self.shortcut = cin != cout

    def forward(self, x):
        h = self.conv2(silu(self.norm2(self.conv1(silu(self.norm1(x))))))
        return self.out((self.nin_shortcut(x) if self.shortcut else x) + h)


class AttnBlock(Module, Recorded):
    def __init__(self, c: int, dtype, gn: str):
        super().__init__()
        self.norm = GroupNorm(c, gn)
        self.q, self.k, self.v, self.proj_out = (Conv2d(c, c, (1, 1), dtype=dtype) for _ in range(4))

    def forward(self, x):
        B, C, H, W = x.shape
        h = self.norm(x)
        q, k, v = (m(h).view([B, 1, C, H * W]).transpose(2, 3) for m in (self.q, self.k, self.v))  # (B, 1, HW, C)
        o = attention(q, k, v, C**-0.5)  # one head over all positions
        return self.out(x + self.proj_out(o.transpose(2, 3).view([B, C, H, W])))


class Upsample(Module, Recorded):
    def __init__(self, c: int, dtype):
        super().__init__()
        self.conv = Conv2d(c, c, (3, 3), padding=(1, 1), dtype=dtype)

    def forward(self, x):
        return self.out(self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest")))


class Level(Module):
    def __init__(self, blocks, upsample):
        super().__init__()
        self.block = ModuleList(blocks)
        if upsample is not None:
            self.upsample = upsample


class Mid(Module):
    def __init__(self, c: int, dtype, gn: str):
        super().__init__()
        self.block_1, self.block_2 = ResnetBlock(c, c, dtype, gn), ResnetBlock(c, c, dtype, gn)
        self.attn_1 = AttnBlock(c, dtype, gn)


class Decoder(Module):
    def __init__(self, cfg, dtype, gn: str):
        super().__init__()
        levels, block_in = len(cfg.ch_mult), cfg.ch * cfg.ch_mult[-1]
        self.conv_in = MConv2d(cfg.z_channels, block_in, (3, 3), padding=(1, 1), dtype=dtype)
        self.mid = Mid(block_in, dtype, gn)
        ups = []
        for i in reversed(range(levels)):
            block_out, blocks = cfg.ch * cfg.ch_mult[i], []
            for _ in range(cfg.num_res_blocks + 1):
                blocks.append(ResnetBlock(block_in, block_out, dtype, gn))
                block_in = block_out
            ups.insert(0, Level(blocks, Upsample(block_in, dtype) if i != 0 else None))
        self.up = ModuleList(ups)
        self.norm_out = GroupNorm(block_in, gn)
        self.conv_out = MConv2d(block_in, cfg.out_ch, (3, 3), padding=(1, 1), dtype=dtype)

    def forward(self, h):
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(self.conv_in(h))))
        for i in reversed(range(len(self.up))):
            for block in self.up[i].block:
                h = block(h)
            if i != 0:
                h = self.up[i].upsample(h)
        return self.conv_out(silu(self.norm_out(h)))


class AutoencoderDecoder(Module):
    """z (B, 4, 64, 64) fp32 -> image (B, 3, 512, 512) in the engine's dtype."""

    def __init__(self, cfg, *, dtype, groupnorm: str = "plugin"):
        super().__init__()
        a = cfg.autoencoder
        self.post_quant_conv = MConv2d(a.z_channels, a.z_channels, (1, 1), dtype=dtype)
        self.decoder = Decoder(a, dtype, groupnorm)
        self.scale, self.dtype = a.scale_factor, dtype

    def forward(self, z):
        return self.decoder(self.post_quant_conv(F.cast(z / const(self.scale, F32), self.dtype)))


NETWORKS = {"clip": TextEncoder, "uvit": GuidedStep, "decoder": AutoencoderDecoder}
