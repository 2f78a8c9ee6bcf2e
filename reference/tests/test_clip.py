import pytest
import torch

from reference.clip import load_tokenizer, tokenize
from reference.init import initialize

BOS, EOS = 49406, 49407


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer()


def test_known_prompt_ids(tokenizer):
    # OpenAI CLIP's ids for this prompt (a=320, photo=1125, of=539, cat=2368)
    ids = tokenize(tokenizer, ["a photo of a cat"])
    assert ids.shape == (1, 77)
    assert ids[0, :7].tolist() == [BOS, 320, 1125, 539, 320, 2368, EOS]
    assert ids[0, 7:].eq(EOS).all()


def test_case_and_whitespace_are_normalised(tokenizer):
    assert torch.equal(tokenize(tokenizer, ["A  Photo of a CAT"]), tokenize(tokenizer, ["a photo of a cat"]))


def test_truncation_keeps_bos_and_eos(tokenizer):
    ids = tokenize(tokenizer, [" ".join(["dog"] * 200)])
    assert ids.shape == (1, 77)
    assert ids[0, 0] == BOS and ids[0, -1] == EOS
    assert ids[0, 1:-1].eq(ids[0, 1]).all() and ids[0, 1] != EOS


def test_empty_prompt_is_bos_then_eos_padding(tokenizer):
    ids = tokenize(tokenizer, [""])
    assert ids[0].tolist() == [BOS] + [EOS] * 76


def test_vocabulary_is_complete(tokenizer):
    assert len(tokenizer) == 49408
    assert tokenizer.convert_tokens_to_ids(["<|startoftext|>", "<|endoftext|>"]) == [BOS, EOS]


@pytest.mark.parametrize("attention", ["eager", "sdpa"])
def test_text_encoder_equals_the_hugging_face_forward(attention):
    """Our forward (own causal mask, no pooling) gives transformers' last_hidden_state: exactly with eager attention,
    to fp32 rounding with SDPA."""
    from reference.clip import TextEncoder
    from reference.configs import ModelConfig

    cfg = ModelConfig.from_name("tiny")
    enc = TextEncoder.from_config(cfg.clip, text_dim=cfg.uvit.text_dim).eval()
    initialize(enc, "trained-like", torch.Generator().manual_seed(0))
    enc.clip.config._attn_implementation = attention
    ids = torch.randint(0, cfg.clip.vocab_size, (2, cfg.clip.max_tokens), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours = enc(ids)
        theirs = enc.encode_prefix(enc.clip(input_ids=ids).last_hidden_state)
    if attention == "eager":
        assert torch.equal(ours, theirs)
    else:
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)
