import math

import pytest
import torch

from reference.configs import ModelConfig
from reference.uvit import UViT, timestep_embedding, unpatchify


def test_timestep_embedding_is_cos_first_fp32():
    t = torch.tensor([980.02, 0.0])
    emb = timestep_embedding(t, 8)
    freqs = [math.exp(-math.log(10000) * i / 4) for i in range(4)]
    expected = [math.cos(980.02 * f) for f in freqs] + [math.sin(980.02 * f) for f in freqs]
    assert emb.dtype == torch.float32
    torch.testing.assert_close(emb[0], torch.tensor(expected), atol=1e-4, rtol=0)
    torch.testing.assert_close(emb[1], torch.tensor([1.0] * 4 + [0.0] * 4))


def test_unpatchify_puts_channels_fastest_inside_a_patch():
    # token (row, col), feature (p1, p2, c): value encodes every index so a wrong layout cannot pass
    h = w = 3
    p, C = 2, 4
    x = torch.zeros(1, h * w, p * p * C)
    for r in range(h):
        for col in range(w):
            for p1 in range(p):
                for p2 in range(p):
                    for c in range(C):
                        x[0, r * w + col, (p1 * p + p2) * C + c] = 1000 * c + 100 * r + 10 * col + 2 * p1 + p2
    img = unpatchify(x, C)
    assert img.shape == (1, C, h * p, w * p)
    for c in range(C):
        for Y in range(h * p):
            for X in range(w * p):
                r, p1, col, p2 = Y // p, Y % p, X // p, X % p
                assert img[0, c, Y, X] == 1000 * c + 100 * r + 10 * col + 2 * p1 + p2


def test_unpatchify_rejects_a_wrong_shape():
    with pytest.raises(ValueError, match="cannot unpatchify"):
        unpatchify(torch.zeros(1, 10, 16), 4)


@pytest.fixture(scope="module")
def tiny_uvit():
    cfg = ModelConfig.from_name("tiny").uvit
    model = UViT(cfg).eval()
    model.init_weights(torch.Generator().manual_seed(0))
    return model


def inputs(cfg, B=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return dict(
        img=torch.randn(B, cfg.in_chans, cfg.img_size, cfg.img_size, generator=g),
        clip_img=torch.randn(B, 1, cfg.clip_img_dim, generator=g),
        text=torch.randn(B, cfg.num_text_tokens, cfg.text_dim, generator=g),
        t_img=torch.tensor([980.02, 10.0])[:B],
        t_text=torch.zeros(B),
        data_type=torch.ones(B, dtype=torch.long),
    )


def test_token_order_and_position_splice(tiny_uvit):
    """Record the sequence entering block 0 and check each segment against its embedding."""
    cfg = tiny_uvit.cfg
    seen = {}
    hook = tiny_uvit.in_blocks[0].register_forward_pre_hook(lambda m, a: seen.update(x=a[0]))
    inp = inputs(cfg)
    with torch.no_grad():
        tiny_uvit(**inp)
    hook.remove()
    x = seen["x"]
    assert x.shape == (2, cfg.num_tokens, cfg.embed_dim)
    pos = torch.cat([tiny_uvit.pos_embed[:, :2], tiny_uvit.pos_embed_token, tiny_uvit.pos_embed[:, 2:]], 1)[0]
    D = cfg.embed_dim
    with torch.no_grad():
        expect = [
            timestep_embedding(inp["t_img"], D)[:, None],
            timestep_embedding(inp["t_text"], D)[:, None],
            tiny_uvit.token_embedding(inp["data_type"])[:, None],
            tiny_uvit.text_embed(inp["text"]),
            tiny_uvit.clip_img_embed(inp["clip_img"]),
            tiny_uvit.patch_embed.proj(inp["img"]).flatten(2).transpose(1, 2),
        ]
    torch.testing.assert_close(x, torch.cat(expect, 1) + pos)


def test_outputs_have_the_input_shapes(tiny_uvit):
    cfg = tiny_uvit.cfg
    inp = inputs(cfg)
    with torch.no_grad():
        img, clip_img, text = tiny_uvit(**inp)
    assert img.shape == inp["img"].shape and clip_img.shape == inp["clip_img"].shape and text.shape == inp["text"].shape


def test_long_skips_are_last_in_first_out(tiny_uvit):
    """out_blocks[0] must receive the output of the last in-block."""
    got, sent = {}, {}
    h1 = tiny_uvit.in_blocks[-1].register_forward_hook(lambda m, a, out: sent.update(last=out))
    h2 = tiny_uvit.out_blocks[0].register_forward_pre_hook(lambda m, a: got.update(skip=a[1]))
    with torch.no_grad():
        tiny_uvit(**inputs(tiny_uvit.cfg))
    h1.remove(), h2.remove()
    assert torch.equal(got["skip"], sent["last"])


def test_init_follows_upstream(tiny_uvit):
    assert tiny_uvit.pos_embed_token.abs().sum() == 0
    w = tiny_uvit.in_blocks[0].mlp.fc1.weight
    assert 0.015 < w.std() < 0.025 and w.abs().max() <= 2
    assert tiny_uvit.in_blocks[0].mlp.fc1.bias.abs().sum() == 0
    assert 0.7 < tiny_uvit.token_embedding.weight.std() < 1.3
