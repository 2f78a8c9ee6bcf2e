"""The roundings of the approximations' references (int8 attention, torchao's e4m3 scales, Hopper's fast FP8
accumulation), on values whose rounding is known, and against the library or hardware whose recipe they write down
where it runs here."""

import pytest
import torch
import torch.nn.functional as F

from reference.approximations import (
    check_approximations,
    e4m3_operands,
    emulate_linear,
    fake_quantize,
    fast_accumulation_matmul,
    int8_attention,
    int8_rows,
)
from reference.compare import rel_l2


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

    g = torch.Generator().manual_seed(1)
    x, w = torch.randn(8, 256, generator=g).half(), (torch.randn(64, 256, generator=g) * 0.02).half()
    operands = e4m3_operands(x.double(), w.double(), "fp8=torchao-row")
    for (codes, scale), hp in zip(operands, (x, w.to(torch.bfloat16)), strict=True):
        theirs = Float8Tensor.from_hp(hp, granularity=PerRow())
        assert torch.equal(codes, theirs.qdata.double()) and torch.equal(scale, theirs.scale.double())


def _fast(a: list[float], b: list[float] | None = None) -> float:
    """One output of fast_accumulation_matmul: the row of codes `a` against `b` (default ones)."""
    a = torch.tensor([a], dtype=torch.float64)
    b = torch.ones_like(a) if b is None else torch.tensor([b], dtype=torch.float64)
    return fast_accumulation_matmul(a, b).item()


def test_fast_accumulation_truncates_terms_below_the_largest():
    """fp8_accumulate=fast: 448's 14-bit window holds multiples of 2^-5, so 2^-5 stays, while 2^-6 and 1.5 * 2^-6
    are lost, toward zero either side; so is the last of 14 significant bits that 1.875 + 2^-14 would need in the
    accumulator. An fp32 accumulator keeps them all."""
    assert _fast([448.0, 2.0**-5]) == 448.0 + 2.0**-5
    for small in (2.0**-6, 1.5 * 2.0**-6, -1.5 * 2.0**-6):
        assert _fast([448.0, small]) == 448.0
    assert _fast([0.9375, 0.9375, 2.0**-9], [1.0, 1.0, 2.0**-5]) == 1.875
    assert _fast([-0.9375, -0.9375, -(2.0**-9)], [1.0, 1.0, 2.0**-5]) == -1.875
    assert _fast([0.9375, 0.9375, 2.0**-9], [1.0, 1.0, 2.0**-4]) == 1.875 + 2.0**-13  # 14 bits: kept


def test_fast_accumulation_adds_32_products_at_a_time():
    """32 terms of 2^-6 sum exactly to 0.5 in one MMA, which the next one's window around 448 keeps; summed with the
    448 in one MMA, each of them would be lost."""
    assert _fast([2.0**-6] * 32 + [448.0]) == 448.5
    assert _fast([2.0**-6] * 31 + [448.0]) == 448.0


@pytest.mark.gpu
def test_fast_accumulation_is_what_hopper_computes():
    """fast_accumulation_matmul against torch._scaled_mm with use_fast_accum on the GPU at fc2's K and N (measured on
    an H200: 3.5e-5, most outputs bit for bit), where an exact sum is 1.9e-3 away. Not at any shape: at 64 x 256
    outputs the model was as far as an exact sum (1.4e-3), cuBLAS summing them another way there (split K, likely)."""
    if torch.cuda.get_device_capability() < (9, 0):
        pytest.skip("fp8_accumulate=fast is Hopper's: needs compute capability 9.0 or later")
    g = torch.Generator(device="cuda").manual_seed(0)
    x = F.gelu(torch.randn(256, 6144, device="cuda", generator=g) * 2)  # fc2's input: a GELU's output
    w = torch.randn(1536, 6144, device="cuda", generator=g) * 0.02
    a, b = (t.mul(448 / t.abs().amax()).to(torch.float8_e4m3fn) for t in (x, w))
    one = torch.ones((), device="cuda")
    fast = torch._scaled_mm(a, b.T, one, one, out_dtype=torch.float32, use_fast_accum=True).double()
    want, exact = fast_accumulation_matmul(a.double(), b.double()), a.double() @ b.double().T
    assert rel_l2(fast, want) < 1e-4 < rel_l2(fast, exact)
    assert (fast == want.float().double()).double().mean() > 0.5


def test_fast_accumulation_is_the_emulated_linears_sum():
    """emulate_linear with accumulate="fast" (the FP8-linear check of an engine built with fp8_accumulate=fast): the
    e4m3 codes summed by fast_accumulation_matmul, then scaled, then the bias; over long rows, not the exact sum."""
    g = torch.Generator().manual_seed(0)
    linear = torch.nn.Linear(4096, 8).double()
    x = torch.randn(2, 3, 4096, generator=g, dtype=torch.float64).abs()  # positive: the sum grows, its window too
    (xc, xs), (wc, ws) = e4m3_operands(x, linear.weight.detach().half().double(), "fp8=row")  # as the engine holds it
    want = (fast_accumulation_matmul(xc.flatten(0, 1), wc) * xs.flatten(0, 1) * ws.T).unflatten(0, (2, 3))
    got = emulate_linear(linear, x, scaling="fp8=row", dtype=torch.float16, accumulate="fast")
    assert torch.equal(got, want + linear.bias.detach())
    assert rel_l2(emulate_linear(linear, x, scaling="fp8=row", dtype=torch.float16), got) > 1e-4


def test_the_fp8_linear_check_bounds_a_fast_sum_by_fp16_rounding():
    """An engine built with fp8_accumulate=fast is judged against the fast sum, with the bound fp16 rounding sets
    against an exact sum: the same bound as an `exact` engine's, not one widened by the fast sum's own error. Then
    output scaled 0.4% off fails, which that wider bound (3x of plain rounding and the fast sum's 2e-3 together) would
    pass. The engine here is its declarations alone (FP8 engines run on a GPU); its outputs are the emulation's."""
    from types import SimpleNamespace

    from engines.components import INPUT
    from reference.tests import fp8_linear_check

    g = torch.Generator().manual_seed(0)
    module = torch.nn.ModuleDict({"fc2": torch.nn.Linear(6144, 256)})
    with torch.no_grad():
        module.fc2.weight.normal_(0, 0.02, generator=g)
    # fc2's input, a GELU's output, K = 6144; (batch, tokens) past FAST_ROWS rows, so that every other row is judged
    x = F.gelu(torch.randn(2, 150, 6144, generator=g) * 2).half()
    fast = emulate_linear(module.fc2, x, scaling="fp8=row", dtype=torch.float16, accumulate="fast").half()

    def check(x: torch.Tensor, y: torch.Tensor, accumulate: str) -> dict:
        engine = SimpleNamespace(approximations=("fp8=row",), meta={"fp8_accumulate": accumulate})
        return fp8_linear_check({"fc2" + INPUT: x, "fc2": y}, module, engine, ["fc2"])[0]

    right = check(x, fast, "fast")
    exact = check(x.flatten(0, 1)[::2], fast.flatten(0, 1)[::2], "exact")  # the rows the fast check judges
    assert right["passed"] and right["rel_l2"] < right["bound"] / 5
    assert right["bound"] == exact["bound"]  # fp16 rounding's, whatever the sum
    assert exact["rel_l2"] > 1e-3  # the fast sum's own error, which the wider bound would have taken in
    assert not check(x, fast * 1.004, "fast")["passed"]
