import re

import pytest
import torch

from reference.autoencoder import AutoencoderDecoder
from reference.clip import TextEncoder
from reference.configs import SIZES, ModelConfig
from reference.uvit import UViT


def count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.fixture(scope="module")
def full_on_meta():
    cfg = ModelConfig.from_name("full")
    with torch.device("meta"):
        return cfg, UViT(cfg.uvit), AutoencoderDecoder(cfg.autoencoder), TextEncoder.from_config(cfg.clip, text_dim=64)


def test_uvit_full_size_matches_the_checkpoint(full_on_meta):
    _, uvit, _, _ = full_on_meta
    assert count(uvit) == 952_509_520
    assert len(uvit.state_dict()) == 418


def test_vae_decoder_full_size_matches_the_checkpoint(full_on_meta):
    _, _, decoder, _ = full_on_meta
    assert count(decoder.decoder) == 49_490_179
    assert count(decoder.post_quant_conv) == 4 * 4 + 4


def test_clip_text_full_size_matches_the_checkpoint(full_on_meta):
    _, _, _, text = full_on_meta
    assert count(text.clip) == 123_060_480
    assert tuple(text.encode_prefix.weight.shape) == (64, 768)


def test_token_count_and_image_size():
    cfg = ModelConfig.from_name("full")
    assert cfg.uvit.num_tokens == 1105
    assert cfg.uvit.x_dim == 16896
    assert cfg.image_size == 512
    assert ModelConfig.from_name("tiny").image_size == 128


def test_unknown_size_is_rejected_with_choices():
    with pytest.raises(ValueError, match=r"unknown size 'ful'; choose from \['full', 'tiny'\]"):
        ModelConfig.from_name("ful")


def key_pattern(module: torch.nn.Module) -> set[str]:
    return {re.sub(r"_blocks\.\d+\.", "_blocks.N.", k) for k in module.state_dict()}


@pytest.mark.parametrize("name", sorted(SIZES))
def test_sizes_share_key_names(name):
    """Every size keeps full's checkpoint key layout (fewer U-ViT blocks at most): loaders and marks carry over."""
    full, other = ModelConfig.from_name("full"), ModelConfig.from_name(name)
    with torch.device("meta"):
        assert key_pattern(UViT(other.uvit)) == key_pattern(UViT(full.uvit))
        assert (
            AutoencoderDecoder(other.autoencoder).state_dict().keys()
            == AutoencoderDecoder(full.autoencoder).state_dict().keys()
        )
