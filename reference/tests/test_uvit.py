import math

import pytest
import torch

from reference.configs import ModelConfig
from reference.init import initialize
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
    initialize(model, "trained-like", torch.Generator().manual_seed(0))
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


def test_upstream_init_is_still_there():
    model = UViT(ModelConfig.from_name("tiny").uvit)
    initialize(model, "upstream", torch.Generator().manual_seed(0))
    assert model.pos_embed_token.abs().sum() == 0
    w = model.in_blocks[0].mlp.fc1.weight
    assert 0.015 < w.std() < 0.025 and w.abs().max() <= 2
    assert model.in_blocks[0].mlp.fc1.bias.abs().sum() == 0
    assert 0.7 < model.token_embedding.weight.std() < 1.3


def test_attention_is_per_head_softmax_of_scaled_products(tiny_uvit):
    """Against torch's own attention, whose default scale is 1/sqrt(head size): a scale over the whole width, or heads
    taken from the wrong slice of qkv, fails this."""
    attn = tiny_uvit.in_blocks[0].attn
    x = torch.randn(2, 9, tiny_uvit.cfg.embed_dim, generator=torch.Generator().manual_seed(0))
    B, L, C = x.shape
    H = tiny_uvit.cfg.num_heads
    with torch.no_grad():
        q, k, v = attn.qkv(x).split(C, dim=-1)  # q rows 0:C, k C:2C, v 2C:3C, each head-major
        heads = lambda t: t.reshape(B, L, H, C // H).transpose(1, 2)  # noqa: E731  (B, H, L, Dh)
        o = torch.nn.functional.scaled_dot_product_attention(heads(q), heads(k), heads(v))
        torch.testing.assert_close(attn(x), attn.proj(o.transpose(1, 2).reshape(B, L, C)))


def test_blocks_are_post_ln_and_out_blocks_take_the_skip_after_x(tiny_uvit):
    """x = norm2(x + attn(x)); x = norm3(x + mlp(x)); an out-block first norm1(skip_linear(cat([x, skip])))."""
    g = torch.Generator().manual_seed(1)
    x, skip = (torch.randn(2, 9, tiny_uvit.cfg.embed_dim, generator=g) for _ in range(2))
    gelu = lambda t: torch.nn.functional.gelu(t, approximate="none")  # noqa: E731  the exact GELU
    for block in (tiny_uvit.in_blocks[0], tiny_uvit.out_blocks[0]):
        with torch.no_grad():
            h = block.norm1(block.skip_linear(torch.cat([x, skip], -1))) if block.skip_linear is not None else x
            h = block.norm2(h + block.attn(h))
            want = block.norm3(h + block.mlp.fc2(gelu(block.mlp.fc1(h))))
            got = block(x, skip) if block.skip_linear is not None else block(x)
        torch.testing.assert_close(got, want)


def test_layernorms_have_the_checkpoints_eps(tiny_uvit):
    """SPEC section 2: eps 1e-5, statistics in fp32."""
    norms = [m for m in tiny_uvit.modules() if isinstance(m, torch.nn.LayerNorm)]
    assert norms and {m.eps for m in norms} == {1e-5}


def test_the_trunk_ends_in_the_final_norm_and_the_heads_read_it(tiny_uvit):
    cfg = tiny_uvit.cfg
    seen = {}
    hook = tiny_uvit.norm.register_forward_hook(lambda m, a, out: seen.update(out=out))
    inp = inputs(cfg)
    with torch.no_grad():
        img, clip_img, _ = tiny_uvit(**inp)
    hook.remove()
    out = seen["out"]
    n_text = cfg.num_text_tokens
    with torch.no_grad():
        torch.testing.assert_close(clip_img, tiny_uvit.clip_img_out(out[:, 3 + n_text : 4 + n_text]))
        want_img = unpatchify(tiny_uvit.decoder_pred(out[:, 4 + n_text :]), cfg.in_chans)
    torch.testing.assert_close(img, want_img)
    # the final norm reads the trunk's output: without it the heads would read the last block's output
    last = {}
    hook = tiny_uvit.out_blocks[-1].register_forward_hook(lambda m, a, o: last.update(out=o))
    with torch.no_grad():
        tiny_uvit(**inp)
        torch.testing.assert_close(tiny_uvit.norm(last["out"]), out)
    hook.remove()
