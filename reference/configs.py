"""Model configurations: the one place that holds the numbers of each named size.

`full` is UniDiffuser-v1 as published (../shared/SPEC.md sections 2 and 5); `tiny` keeps the topology, token layout
and checkpoint key names with small widths so that a whole 50-step image takes seconds on a CPU.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class CLIPConfig:
    # ViT-L/14 text tower, as in openai/clip-vit-large-patch14's config.json.
    vocab_size: int = 49408
    width: int = 768
    layers: int = 12
    heads: int = 12
    mlp: int = 3072
    max_tokens: int = 77
    bos_token_id: int = 49406
    eos_token_id: int = 49407  # also the pad token


@dataclass(frozen=True)
class UViTConfig:
    img_size: int = 64  # latent side
    in_chans: int = 4
    patch_size: int = 2
    embed_dim: int = 1536
    depth: int = 30  # 15 in-blocks + mid + 15 out-blocks (upstream counts depth // 2 per side)
    num_heads: int = 24
    mlp_ratio: int = 4
    text_dim: int = 64
    num_text_tokens: int = 77
    clip_img_dim: int = 512
    ln_eps: float = 1e-5

    @property
    def num_patches(self) -> int:
        return (self.img_size // self.patch_size) ** 2

    @property
    def num_tokens(self) -> int:  # with the data-type token: 1105 at full size
        return 1 + 1 + 1 + self.num_text_tokens + 1 + self.num_patches

    @property
    def x_dim(self) -> int:  # packed (z, clip_img) sampler state: 16896 at full size
        return self.in_chans * self.img_size**2 + self.clip_img_dim


@dataclass(frozen=True)
class AutoencoderConfig:
    ch: int = 128
    ch_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2
    z_channels: int = 4
    out_ch: int = 3
    scale_factor: float = 0.18215  # SD KL-f8 latent scale


@dataclass(frozen=True)
class ModelConfig:
    """Every part of the t2i pipeline at one size."""

    name: str
    clip: CLIPConfig = field(default_factory=CLIPConfig)
    uvit: UViTConfig = field(default_factory=UViTConfig)
    autoencoder: AutoencoderConfig = field(default_factory=AutoencoderConfig)

    @property
    def image_size(self) -> int:  # the VAE upsamples by 2 ** (levels - 1) = 8
        return self.uvit.img_size * 2 ** (len(self.autoencoder.ch_mult) - 1)

    @classmethod
    def from_name(cls, name: str) -> ModelConfig:
        if name not in SIZES:
            raise ValueError(f"unknown size {name!r}; choose from {sorted(SIZES)}")
        return SIZES[name]


SIZES: dict[str, ModelConfig] = {
    "full": ModelConfig("full"),
    "tiny": ModelConfig(
        "tiny",
        clip=CLIPConfig(width=64, layers=2, heads=2, mlp=128),
        uvit=UViTConfig(img_size=16, embed_dim=64, depth=4, num_heads=4, text_dim=16, clip_img_dim=32),
        # GroupNorm(32) needs channels divisible by 32, hence ch=32.
        autoencoder=AutoencoderConfig(ch=32),
    ),
}
