"""The int8 rounding of `attention=int8`'s reference, on values whose rounding is known."""

import pytest
import torch

from reference.approximations import check_approximations, int8_attention, int8_rows


def test_int8_rows_round_half_away_from_zero_with_a_scale_per_row():
    x = torch.tensor([[127.0, 0.5, -0.5, 1.5, -63.5], [2.54, 0.0, 0.01, -0.0099, 1.0]])
    got = int8_rows(x)
    assert got[0].tolist() == [127.0, 1.0, -1.0, 2.0, -64.0]  # scale 1: halves go away from zero
    assert torch.allclose(got[1], torch.tensor([2.54, 0.0, 0.02, -0.0, 1.0]), atol=1e-6)  # scale 0.02
    assert torch.equal(int8_rows(torch.zeros(2, 3)), torch.zeros(2, 3))  # no division by a zero scale


def test_int8_attention_ignores_what_every_key_shares():
    """Smoothing: a vector added to every key changes no score's softmax; without it the rounding would see it."""
    g = torch.Generator().manual_seed(0)
    qkv = torch.randn(1, 9, 3, 2, 16, generator=g, dtype=torch.float64)
    shifted = qkv.clone()
    shifted[:, :, 1] += 50 * torch.randn(1, 1, 2, 16, generator=g, dtype=torch.float64)
    assert torch.allclose(int8_attention(qkv, 0.25), int8_attention(shifted, 0.25), rtol=0, atol=1e-12)


def test_int8_attention_is_an_approximation_to_declare():
    assert check_approximations(("attention=int8", "fp8=row")) == ("attention=int8", "fp8=row")
    with pytest.raises(ValueError, match="unknown approximations \\['attention=fp4'\\]"):
        check_approximations(("attention=fp4",))
