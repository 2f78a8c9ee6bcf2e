import pytest
import torch

from reference.clip import load_tokenizer, tokenize

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
