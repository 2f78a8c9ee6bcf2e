"""The roundings of the approximations' references (int8 attention, torchao's e4m3 scales), on values whose rounding
is known, and against the library whose recipe they write down where it runs here."""

import pytest
import torch

from reference.approximations import check_approximations, fake_quantize, int8_attention, int8_rows


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
    for tokens in [(1, 1), (4, 2)]:
        assert torch.allclose(int8_attention(qkv, 0.25, tokens), int8_attention(shifted, 0.25, tokens), atol=1e-12)


def test_int8_attention_is_an_approximation_to_declare():
    assert check_approximations(("fp8=row", "attention=int8-blocks")) == ("attention=int8-blocks", "fp8=row")
    with pytest.raises(ValueError, match="unknown approximations \\['attention=fp4'\\]"):
        check_approximations(("attention=fp4",))


def test_int8_blocks_share_a_scale_and_the_last_block_is_shorter():
    """attention=int8-blocks: rows 0-1 share the scale of their block's maximum (2.54 / 127 = 0.02), row 2 is a block
    of its own (scale 1)."""
    x = torch.tensor([[2.54, 0.01], [0.03, -1.0], [127.0, 0.5]])
    got = int8_rows(x, tokens=2)
    assert torch.allclose(got[:2], torch.tensor([[2.54, 0.02], [0.04, -1.0]]), atol=1e-6)
    assert got[2].tolist() == [127.0, 1.0]
    assert torch.equal(int8_rows(x, tokens=1), int8_rows(x))
    with pytest.raises(ValueError, match=r"\['fp8=row', 'fp8=torchao-row'\] are scalings of the same linears"):
        check_approximations(("fp8=row", "fp8=torchao-row"))


def test_torchao_forms_its_scale_in_the_tensors_dtype():
    """fp8=torchao-row: a row of maximum 1 has scale 1/448 in fp32 but 0.0022277832 in bf16, which moves 0.2588 from
    115.9 units (rounded to 112) to 116.2 (rounded to 120)."""
    x = torch.tensor([[1.0, 0.2587890625]], dtype=torch.float64)  # both exact in bf16
    ours, theirs = fake_quantize(x, rows=True), fake_quantize(x, rows=True, scale_dtype=torch.bfloat16)
    assert ours[0, 1].item() == 112 / 448 and theirs[0, 1].item() == 120 * 0.0022277832031250
    assert ours[0, 0].item() == 1.0 and theirs[0, 0].item() == 448 * 0.0022277832031250  # the maximum lands low


def test_torchao_quantisation_is_the_recipe_declared_for_it():
    """The emulation of fp8=torchao-row against torchao's own PerRow quantiser (its Float8Tensor, which runs on a CPU),
    bit for bit, for its bf16 weights and fp16 activations."""
    pytest.importorskip("torchao", reason="pip install 'unidiffuser-bench[alternatives]'")
    from torchao.quantization import PerRow
    from torchao.quantization.quantize_.workflows.float8.float8_tensor import Float8Tensor

    g = torch.Generator().manual_seed(0)
    for dtype in (torch.bfloat16, torch.float16):
        t = (torch.randn(64, 256, generator=g) * 0.02).to(dtype)
        theirs = Float8Tensor.from_hp(t, granularity=PerRow())
        want = theirs.qdata.double() * theirs.scale.double()
        assert torch.equal(fake_quantize(t.double(), rows=True, scale_dtype=dtype), want), dtype
        assert not torch.equal(fake_quantize(t.double(), rows=True), want)  # fp8=row's recipe is another


def test_torchao_operands_are_torchaos_for_an_fp16_engine():
    """e4m3_operands for fp8=torchao-row (what the FP8-linear check and the oracle use) against torchao's quantiser fed
    as the engine feeds it: fp16 activations, and the fp16 weight handed over as bf16."""
    pytest.importorskip("torchao", reason="pip install 'unidiffuser-bench[alternatives]'")
    from torchao.quantization import PerRow
    from torchao.quantization.quantize_.workflows.float8.float8_tensor import Float8Tensor

    from reference.approximations import e4m3_operands

    g = torch.Generator().manual_seed(1)
    x, w = torch.randn(8, 256, generator=g).half(), (torch.randn(64, 256, generator=g) * 0.02).half()
    xq, wq = e4m3_operands(x.double(), w.double(), "fp8=torchao-row")
    for got, hp in ((xq, x), (wq, w.to(torch.bfloat16))):
        theirs = Float8Tensor.from_hp(hp, granularity=PerRow())
        assert torch.equal(got, theirs.qdata.double() * theirs.scale.double())
