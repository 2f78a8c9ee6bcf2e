"""Seeded random weights, in two flavours (`INITS`), for when no official checkpoint is given.

`upstream`      the initialisation the models are trained from (UniDiffuser's U-ViT: trunc_normal(.02); CLIP:
                Hugging Face's `_init_weights`; the VAE: PyTorch's default conv init). Faithful, but numerically
                idle: a U-ViT block barely changes its input and its softmax is flat, so a swapped head, a wrong
                attention scale or guidance switched off moves the U-ViT's output by 1e-4 to 1e-3, inside fp16 noise.
`trained-like`  the same architecture with weights scaled so that every layer matters as it does in a trained
                network (the default). reference/activations.py measures the statistics below on every accuracy run,
                and reports/accuracy.md shows them layer by layer.

Targets of `trained-like`, and why:
    update 0.3-1        a residual branch's output against its stream, ||f(x)|| / ||x||: trained ViTs and GPT-2 keep
                        each branch a sizeable part of the stream (UPDATE_GAIN); near 0 a layer's bugs vanish.
    attn_max_prob       peaked attention, as trained heads are: logits of standard deviation LOGIT_STD, and k's weights
      >= 3/L, median    sharing QK_SHARED of q's, so that part of every head's attention goes to related tokens. A flat
      >= 30/L           softmax (1/L) averages all tokens and hides head order and scale. Peaked random attention
                        without that share copies tokens into each other until the stream holds one token (measured:
                        within 10 blocks); logits much wider make the network chaotic, a rounding error doubling per
                        block, which no trained U-ViT does (fp16 images would be noise).
    outlier >= 8        a few residual channels (OUTLIER_FRACTION) that hold OUTLIER_SHARE of the stream's energy,
                        10x or more the RMS of the median channel at full size, nearly constant across tokens: the
                        outlier features of trained transformers (Dettmers et al. 2022, LLM.int8(); Sun et al. 2024,
                        massive activations), which set fp16 headroom and FP8 per-token scales. The norms' biases
                        make them, sized so that a chain of post-LN norms holds them steady; the layers reading the
                        stream give them zero weight, as trained heads learn to (read, their constant would add the
                        same vector to every token). Other norm gains N(1, 0.25^2), biases N(0, 0.05^2).
    gn_mean_spread >= 10
                        in some of the VAE decoder's GroupNorm inputs, |group mean| / group std: one group in
                        OFFSET_EVERY gets an offset of OFFSET_SIZE times its spread through the conv biases. Where the
                        mean is large against the spread, E[x^2] - E[x]^2 in fp16 cancels: the bug the original
                        TensorRT work hunted.
    guidance 0.05-0.3   ||cond - uncond|| / ||cond|| at the U-ViT's outputs, so that classifier-free guidance (x7)
                        decides the prediction as in the trained model (upstream's init: 0.003).
Scales are set analytically from these targets (variance propagation), not fitted to data, so the weights of a seed
are the same on every machine. fc2's rows sum to zero: GELU's positive mean would add the same vector to every token.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from reference import autoencoder as ae
from reference import uvit as uv

INITS = ("trained-like", "upstream")  # first: the default

LOGIT_STD = 2.5  # attention logits q.k * scale
QK_SHARED = 0.5  # k's weights share this much of q's: part of every head's attention goes to related tokens
UPDATE_GAIN = 0.7  # residual branch output RMS over its stream's RMS
ATTN_CONCENTRATION = 0.7  # RMS of a peaked attention's weighted average of unit-RMS values (measured, full size)
GELU_RMS = 0.65  # RMS of GELU(z), z ~ N(0, 1) (also quick_gelu, to 2%)
SILU_RMS = 0.6  # RMS of SiLU(z), z ~ N(0, 1) plus the GroupNorm's bias
OUTLIER_FRACTION, OUTLIER_SHARE = 1 / 512, 0.25
GAIN_STD, BIAS_STD = 0.25, 0.05
OFFSET_EVERY, OFFSET_SIZE = 8, 12.0


def check_init(name: str) -> str:
    if name not in INITS:
        raise ValueError(f"unknown weight initialisation {name!r}; choose from {list(INITS)}")
    return name


@torch.no_grad()
def initialize(module: nn.Module, name: str, generator: torch.Generator) -> None:
    """Fill every parameter of `module` (a TextEncoder, UViT or AutoencoderDecoder) from `generator`."""
    from reference.clip import TextEncoder

    init = {"upstream": _Upstream, "trained-like": _TrainedLike}[check_init(name)](generator)
    if isinstance(module, uv.UViT):
        init.uvit(module)
    elif isinstance(module, ae.AutoencoderDecoder):
        init.decoder(module)
    elif isinstance(module, TextEncoder):
        init.clip(module)
    else:
        kinds = "a TextEncoder, UViT or AutoencoderDecoder"
        raise ValueError(f"no initialisation for {type(module).__name__}; give {kinds}")


class _Draws:
    def __init__(self, generator: torch.Generator):
        self.g = generator

    def normal(self, p: Tensor, std: float, mean: float = 0.0) -> None:
        p.copy_(torch.randn(p.shape, generator=self.g) * std + mean)

    def uniform(self, p: Tensor, bound: float) -> None:
        p.copy_(torch.rand(p.shape, generator=self.g) * 2 * bound - bound)

    def trunc_normal(self, p: Tensor, std: float) -> None:
        """timm's trunc_normal_(std, a=-2, b=2): inverse-CDF sampling of N(0, std) truncated to [-2, 2]."""
        lo, hi = (1 + math.erf(-2 / std / math.sqrt(2))) / 2, (1 + math.erf(2 / std / math.sqrt(2))) / 2
        u = torch.rand(p.shape, generator=self.g) * (hi - lo) + lo
        p.copy_((torch.erfinv(2 * u - 1) * std * math.sqrt(2)).clamp(-2, 2))

    def conv_default(self, conv: nn.Conv2d) -> None:
        """PyTorch's default conv init: kaiming_uniform(a=sqrt(5)) and its bias bound."""
        bound = 1 / math.sqrt(conv.weight[0].numel())
        self.uniform(conv.weight, bound)
        self.uniform(conv.bias, bound)


class _Upstream(_Draws):
    def uvit(self, m: uv.UViT) -> None:
        """trunc_normal(.02) on pos_embed and Linear weights, zero biases, LayerNorm 1/0, token_embedding N(0, 1),
        pos_embed_token 0; the patch conv keeps PyTorch's default init."""
        self.trunc_normal(m.pos_embed, 0.02)
        for mod in m.modules():
            if isinstance(mod, nn.Linear):
                self.trunc_normal(mod.weight, 0.02)
                nn.init.zeros_(mod.bias) if mod.bias is not None else None
            elif isinstance(mod, nn.LayerNorm):
                nn.init.ones_(mod.weight)
                nn.init.zeros_(mod.bias)
        self.conv_default(m.patch_embed.proj)
        self.normal(m.token_embedding.weight, 1.0)
        m.pos_embed_token.zero_()

    def decoder(self, m: ae.AutoencoderDecoder) -> None:
        """PyTorch's default conv init; GroupNorm 1/0."""
        for mod in m.modules():
            if isinstance(mod, nn.Conv2d):
                self.conv_default(mod)
            elif isinstance(mod, nn.GroupNorm):
                nn.init.ones_(mod.weight)
                nn.init.zeros_(mod.bias)

    def clip(self, m) -> None:
        """CLIP's own init (Hugging Face `_init_weights`, factor 1) and PyTorch's Linear init for encode_prefix."""
        from reference.clip import text_tower

        w, n = m.clip.config.hidden_size, m.clip.config.num_hidden_layers
        tower = text_tower(m.clip)
        self.normal(tower.embeddings.token_embedding.weight, 0.02)
        self.normal(tower.embeddings.position_embedding.weight, 0.02)
        for layer in tower.encoder.layers:
            a, mlp = layer.self_attn, layer.mlp
            for proj in (a.q_proj, a.k_proj, a.v_proj):
                self.normal(proj.weight, w**-0.5 * (2 * n) ** -0.5)
            self.normal(a.out_proj.weight, w**-0.5)
            self.normal(mlp.fc1.weight, (2 * w) ** -0.5)
            self.normal(mlp.fc2.weight, w**-0.5 * (2 * n) ** -0.5)
        for mod in m.clip.modules():
            if isinstance(mod, nn.Linear):
                mod.bias.zero_()
            elif isinstance(mod, nn.LayerNorm):
                mod.weight.fill_(1.0)
                mod.bias.zero_()
        bound = 1 / m.encode_prefix.in_features**0.5
        self.uniform(m.encode_prefix.weight, bound)
        self.uniform(m.encode_prefix.bias, bound)


class _TrainedLike(_Draws):
    """Each layer's scale follows from the RMS of what it reads (`r`, tracked through the model in order)."""

    def outliers(self, width: int) -> Tensor:
        """The outlier channels of a model's residual stream: the same channels in every norm, as in trained nets."""
        k = max(1, round(width * OUTLIER_FRACTION))
        self.signs = torch.randint(0, 2, (k,), generator=self.g) * 2 - 1  # each outlier keeps its sign throughout
        return torch.randperm(width, generator=self.g)[:k]

    def norm(self, norm: nn.Module, outliers: Tensor | None) -> float:
        """Gains N(1, GAIN_STD^2), biases N(0, BIAS_STD^2); returns the RMS of the norm's output outside the outlier
        channels, the part that varies from token to token (the outliers add a nearly constant vector to what reads
        them).

        The outlier channels of a post-LN stream get gain 1 and a bias b of fixed sign per channel. A norm reads the
        outlier of size o that the norm before wrote, divided by the row's standard deviation: sqrt(1 + k o^2 / C)
        for k outliers in C channels, times sqrt(1 + UPDATE_GAIN^2) for the branch added in between; it adds b. So
        o = G holds steady for b = G (1 - 1 / that), with G = sqrt(share * C / k) for outliers holding
        OUTLIER_SHARE of the energy."""
        self.normal(norm.weight, GAIN_STD, mean=1.0)
        self.normal(norm.bias, BIAS_STD)
        regular = torch.ones(norm.weight.numel(), dtype=torch.bool)
        share = 0.0
        if outliers is not None:
            C, k = norm.weight.numel(), len(outliers)
            G = math.sqrt(OUTLIER_SHARE * C / k)
            signs = (self.signs[: len(outliers)]).to(norm.bias.dtype)
            norm.weight[outliers] = 1.0
            norm.bias[outliers] = G * (1 - 1 / math.sqrt((1 + k * G**2 / C) * (1 + UPDATE_GAIN**2))) * signs
            regular[outliers] = False
            share = OUTLIER_SHARE
        return math.sqrt((norm.weight.square() + norm.bias.square())[regular].mean().item() * (1 - share))

    def linear(self, lin: nn.Linear, *, r_in: float, r_out: float = 1.0, bias: float = 0.02) -> None:
        """Weights N(0, s^2) so that an input of RMS r_in gives an output of RMS r_out."""
        self.normal(lin.weight, r_out / (r_in * math.sqrt(lin.in_features)))
        if lin.bias is not None:
            self.normal(lin.bias, bias * r_out)

    def attention_update(self, qkv: list[nn.Module], out: nn.Module, *, width: int, r_h: float, r: float) -> float:
        """A residual attention branch (q, k, v projections with small biases) on a stream of RMS `r` whose norm
        gives `r_h`; returns the stream's RMS after the branch is added."""
        q, k, v = qkv
        self.attention([q.weight, k.weight], v.weight, out, width=width, r_in=r_h, r_out=UPDATE_GAIN * r)
        for proj in qkv:
            self.normal(proj.bias, 0.02)
        return math.sqrt(r**2 * (1 + UPDATE_GAIN**2))

    def attention(self, qk: list[Tensor], v: Tensor, out: nn.Module, *, width: int, r_in: float, r_out: float) -> None:
        """q and k weights for logits of standard deviation LOGIT_STD, whatever the head size: with q = x Wq and
        k = x Wk (entries N(0, s^2)), q.k * head^-0.5 over a head has standard deviation width * r_in^2 * s^2; k then
        shares QK_SHARED of q's weights. v keeps unit RMS; the output projection scales the attention's average to
        r_out."""
        s = math.sqrt(LOGIT_STD / (width * r_in**2))
        q, k = qk
        self.normal(q, s)
        self.normal(k, s)
        k.mul_(math.sqrt(1 - QK_SHARED**2)).add_(q, alpha=QK_SHARED)
        self.normal(v, 1 / (r_in * math.sqrt(width)))
        fan_in = out.weight[0].numel()
        self.normal(out.weight, r_out / (ATTN_CONCENTRATION * math.sqrt(fan_in)))
        if out.bias is not None:
            self.normal(out.bias, 0.02 * r_out)

    def uvit(self, m: uv.UViT) -> None:
        D = m.cfg.embed_dim
        patch = m.patch_embed.proj
        self.normal(patch.weight, 1 / math.sqrt(patch.weight[0].numel()))  # latents of unit RMS -> tokens of unit RMS
        self.normal(patch.bias, 0.02)
        self.linear(m.text_embed, r_in=1.0)
        self.linear(m.clip_img_embed, r_in=1.0)
        self.normal(m.token_embedding.weight, 1.0)
        self.normal(m.pos_embed, 0.2)
        self.normal(m.pos_embed_token, 0.2)
        # the outliers enter with the position embedding, every token's, and the norms hold them (`norm`)
        outliers = self.outliers(D)
        G = math.sqrt(OUTLIER_SHARE * D / len(outliers))
        m.pos_embed[..., outliers] += G * self.signs
        m.pos_embed_token[..., outliers] += G * self.signs
        r = 1.0  # the first block reads the embeddings
        for block in [*m.in_blocks, m.mid_block, *m.out_blocks]:
            if block.skip_linear is not None:
                self.linear(block.skip_linear, r_in=r)  # cat([x, skip]): both of RMS r
                w = block.skip_linear.weight  # (D, 2D): the outlier channels pass through, the mean of x's and skip's
                w[outliers] = 0.0
                w[:, outliers], w[:, D + outliers] = 0.0, 0.0
                w[outliers, outliers], w[outliers, D + outliers] = 0.5, 0.5
                r = self.norm(block.norm1, outliers)
            a = block.attn
            qkv = a.qkv.weight.view(3, D, D)  # q rows, k rows, v rows
            self.attention([qkv[0], qkv[1]], qkv[2], a.proj, width=D, r_in=r, r_out=UPDATE_GAIN * r)
            a.qkv.weight[:, outliers] = 0.0
            r = self.norm(block.norm2, outliers)
            self.linear(block.mlp.fc1, r_in=r, bias=0.1)
            block.mlp.fc1.weight[:, outliers] = 0.0
            self.linear(block.mlp.fc2, r_in=GELU_RMS, r_out=UPDATE_GAIN * r)
            block.mlp.fc2.weight.sub_(block.mlp.fc2.weight.mean(dim=1, keepdim=True))
            r = self.norm(block.norm3, outliers)
        r = self.norm(m.norm, None)  # the heads predict noise of unit RMS
        for head in (m.decoder_pred, m.clip_img_out, m.text_out):
            self.linear(head, r_in=r)
            head.weight[:, outliers] = 0.0

    def group_offsets(self, conv: nn.Conv2d, r_out: float, *, large: bool = True) -> None:
        """Conv bias: per-channel noise plus an offset per GroupNorm group (32), one group in OFFSET_EVERY of
        OFFSET_SIZE * r_out if `large`, the others N(0, (r_out / 2)^2). The residual stream keeps the offsets of the
        conv that starts it (conv_in, the upsamplings); its blocks' own biases are small, or the offsets would add up
        block after block."""
        C, G = conv.out_channels, 32
        offsets = torch.randn(G, generator=self.g) * r_out / 2
        big = (torch.rand(G, generator=self.g) < 1 / OFFSET_EVERY) & large
        signs = torch.randint(0, 2, (G,), generator=self.g) * 2 - 1
        offsets = torch.where(big, signs * OFFSET_SIZE * r_out, offsets)
        conv.bias.copy_(offsets.repeat_interleave(C // G) + torch.randn(C, generator=self.g) * 0.1 * r_out)

    def conv(self, conv: nn.Conv2d, *, r_in: float, r_out: float = 1.0) -> None:
        self.normal(conv.weight, r_out / (r_in * math.sqrt(conv.weight[0].numel())))

    def decoder(self, m: ae.AutoencoderDecoder) -> None:
        d = m.decoder
        self.conv(m.post_quant_conv, r_in=1 / m.cfg.scale_factor)  # latents of unit RMS, divided by the scale
        self.normal(m.post_quant_conv.bias, 0.02)
        self.conv(d.conv_in, r_in=1.0)
        self.group_offsets(d.conv_in, 1.0)
        r = 1.0  # the residual stream's RMS (without the offsets, which every GroupNorm removes)
        blocks = [d.mid.block_1, d.mid.attn_1, d.mid.block_2]
        for i_level in reversed(range(len(d.up))):
            blocks += list(d.up[i_level].block) + ([d.up[i_level].upsample] if i_level != 0 else [])
        for b in blocks:
            if isinstance(b, ae.ResnetBlock):
                self.norm(b.norm1, None)
                self.conv(b.conv1, r_in=SILU_RMS)
                self.group_offsets(b.conv1, 1.0)
                self.norm(b.norm2, None)
                self.conv(b.conv2, r_in=SILU_RMS, r_out=UPDATE_GAIN * r)
                self.group_offsets(b.conv2, UPDATE_GAIN * r, large=False)
                if b.nin_shortcut is not None:
                    self.conv(b.nin_shortcut, r_in=r)
                    self.group_offsets(b.nin_shortcut, 1.0, large=False)
                    r = 1.0
                r = math.sqrt(r**2 * (1 + UPDATE_GAIN**2))
            elif isinstance(b, ae.AttnBlock):
                C = b.q.out_channels
                r_h = self.norm(b.norm, None)
                r = self.attention_update([b.q, b.k, b.v], b.proj_out, width=C, r_h=r_h, r=r)
            else:  # Upsample
                self.conv(b.conv, r_in=r, r_out=r)
                self.group_offsets(b.conv, r)
        self.norm(d.norm_out, None)
        self.conv(d.conv_out, r_in=SILU_RMS, r_out=0.5)  # an image of RMS 0.5 in about [-1, 1]
        self.normal(d.conv_out.bias, 0.05)

    def clip(self, m) -> None:
        from reference.clip import text_tower

        tower = text_tower(m.clip)
        W = m.clip.config.hidden_size
        self.normal(tower.embeddings.token_embedding.weight, 1.0)
        self.normal(tower.embeddings.position_embedding.weight, 0.3)
        # pre-LN: the stream grows by each branch, and the outliers are written into it (by the position embedding,
        # then the branches' biases), keeping their share; the norms normalise them like any channel
        outliers = self.outliers(W)
        G = math.sqrt(OUTLIER_SHARE * W / len(outliers))
        tower.embeddings.position_embedding.weight[:, outliers] += G * self.signs
        r = 1.0
        for layer in tower.encoder.layers:
            a, mlp = layer.self_attn, layer.mlp
            r_h = self.norm(layer.layer_norm1, None)
            grown = self.attention_update([a.q_proj, a.k_proj, a.v_proj], a.out_proj, width=W, r_h=r_h, r=r)
            a.out_proj.bias[outliers] += G * (grown - r) * self.signs
            r = grown
            r_h = self.norm(layer.layer_norm2, None)
            self.linear(mlp.fc1, r_in=r_h, bias=0.1)
            self.linear(mlp.fc2, r_in=GELU_RMS, r_out=UPDATE_GAIN * r)
            grown = math.sqrt(r**2 * (1 + UPDATE_GAIN**2))
            mlp.fc2.bias[outliers] += G * (grown - r) * self.signs
            r = grown
        r = self.norm(tower.final_layer_norm, None)
        self.linear(m.encode_prefix, r_in=r)
