"""The short-sequence Triton attention against fp64 attention: on the GPU directly; on a CPU through the interpreter."""

from __future__ import annotations

import pytest
import torch

from plugin.tests import INTERPRETING, compile_for_hopper, rerun_under_interpreter

# (B, L, H, D): CLIP's layer, a batch with odd lengths, the longest sequence, the smallest head
SHAPES = [(1, 77, 12, 64), (3, 33, 4, 64), (2, 256, 2, 32), (2, 5, 3, 16)]
TOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}  # relative L2, a few output roundings


def causal(L: int, dtype: torch.dtype, batch: int) -> torch.Tensor:
    """Hugging Face's additive causal mask: 0 on and below the diagonal, the dtype's lowest value above it."""
    upper = torch.ones(L, L, dtype=torch.bool).triu(1)
    return torch.zeros(batch, 1, L, L, dtype=dtype).masked_fill(upper, torch.finfo(dtype).min)


def reference(qkv: torch.Tensor, mask: torch.Tensor | None, scale: float) -> torch.Tensor:
    q, k, v = qkv.double().permute(2, 0, 3, 1, 4).unbind(0)  # (B, H, L, D)
    s = q @ k.transpose(-2, -1) * scale
    if mask is not None:
        s = s + mask.double().clamp(min=-1e30)
    o = s.softmax(-1) @ v
    return o.transpose(1, 2).flatten(2)  # (B, L, H * D)


@pytest.mark.parametrize("mask", ["causal", "causal-per-sample", "none"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32], ids=["fp16", "bf16", "fp32"])
@pytest.mark.parametrize("shape", SHAPES, ids=["x".join(map(str, s)) for s in SHAPES])
def test_matches_fp64_attention(kernel_device, shape, dtype, mask):
    from plugin.attention import short_attention

    if INTERPRETING and dtype == torch.bfloat16:  # checked with triton 3.9: a 16x16 bf16 tl.dot is off by 1e10
        pytest.skip("Triton's interpreter multiplies bf16 tiles wrongly (numpy has no bf16); bf16 runs on the GPU")
    B, L, H, D = shape
    g = torch.Generator().manual_seed(L * 1000 + H)
    # a projection's output, then a view: the kernel reads q, k and v with their strides
    qkv = (torch.randn(B, L, 3 * H * D, generator=g) * 2).to(kernel_device, dtype).view(B, L, 3, H, D)
    m = {"causal": causal(L, dtype, 1), "causal-per-sample": causal(L, dtype, B), "none": None}[mask]
    m = m.to(kernel_device) if m is not None else None
    got = short_attention(qkv, m, D**-0.5)
    want = reference(qkv.cpu(), m.cpu() if m is not None else None, D**-0.5)
    assert got.shape == (B, L, H * D) and got.dtype == dtype
    rel = ((got.cpu().double() - want).norm() / want.norm()).item()
    assert rel < TOL[dtype], rel


# (B, L, H, D): the U-ViT's length (18 query and key blocks, the last of 17), whole blocks only, one partial block,
# the largest head
FLASH_SHAPES = [(2, 1105, 1, 64), (1, 128, 2, 32), (2, 5, 3, 16), (1, 77, 2, 128)]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32], ids=["fp16", "bf16", "fp32"])
@pytest.mark.parametrize("shape", FLASH_SHAPES, ids=["x".join(map(str, s)) for s in FLASH_SHAPES])
def test_flash_matches_fp64_attention(kernel_device, shape, dtype):
    """Read from a longer buffer whose tokens past L are NaN: a key or value past the end must not be read."""
    from plugin.attention import flash_attention

    if INTERPRETING and dtype == torch.bfloat16:
        pytest.skip("Triton's interpreter multiplies bf16 tiles wrongly (numpy has no bf16); bf16 runs on the GPU")
    B, L, H, D = shape
    g = torch.Generator().manual_seed(L * 1000 + H)
    buffer = torch.full((B, L + 7, 3 * H * D), float("nan"))
    buffer[:, :L] = torch.randn(B, L, 3 * H * D, generator=g) * 2
    qkv = buffer.to(kernel_device, dtype).view(B, L + 7, 3, H, D)[:, :L]
    got = flash_attention(qkv, D**-0.5)
    want = reference(qkv.cpu(), None, D**-0.5)
    assert got.shape == (B, L, H * D) and got.dtype == dtype
    rel = ((got.cpu().double() - want).norm() / want.norm()).item()
    assert rel < TOL[dtype], rel


@pytest.mark.skipif(INTERPRETING, reason="the interpreter's kernels are Python; this compiles the real ones")
@pytest.mark.parametrize("dtype", ["fp16", "fp32"])
def test_flash_compiles_for_hopper(dtype):
    """What the GPU runs, compiled here: the interpreter tests above cannot see a kernel the compiler refuses."""
    from plugin.attention import FLASH, _flash

    pointers = dict(qkv_ptr=f"*{dtype}", o_ptr=f"*{dtype}")
    ints = dict.fromkeys(["L", "H", "s_qb", "s_ql", "s_qt", "s_qh", "s_ob", "s_ol", "s_oh"], "i32")
    tiles = {k: v for k, v in FLASH.items() if k.startswith("BLOCK")}
    compile_for_hopper(
        _flash, {**pointers, **ints, "qk_scale": "fp32"},
        dict(DOT="ieee" if dtype == "fp32" else "tf32", D=64, **tiles),
        num_warps=FLASH["num_warps"], num_stages=FLASH["num_stages"],
    )  # fmt: skip


def test_bad_inputs_are_named(kernel_device):
    from plugin.attention import flash_attention, short_attention

    ok = torch.zeros(1, 8, 3, 2, 16, device=kernel_device)
    with pytest.raises(ValueError, match=r"expects stacked q/k/v of shape \(B, L, 3, H, D\)"):
        short_attention(torch.zeros(1, 8, 2, 16, device=kernel_device), None, 1.0)
    with pytest.raises(ValueError, match="at most 256 tokens"):
        short_attention(torch.zeros(1, 300, 3, 2, 16, device=kernel_device), None, 1.0)
    with pytest.raises(ValueError, match="power of two of at least 16, got 24"):
        short_attention(torch.zeros(1, 8, 3, 2, 24, device=kernel_device), None, 1.0)
    with pytest.raises(ValueError, match=r"attention mask must be \(B or 1, 1, 8, 8\)"):
        short_attention(ok, torch.zeros(1, 8, 8, device=kernel_device), 1.0)
    with pytest.raises(ValueError, match="flash_attention needs a head size .* at most 128, got 256"):
        flash_attention(torch.zeros(1, 8, 3, 1, 256, device=kernel_device), 1.0)
    with pytest.raises(ValueError, match="flash_attention needs the head dimension contiguous"):
        flash_attention(torch.zeros(1, 8, 3, 16, 2, device=kernel_device).transpose(-1, -2), 1.0)


def test_a_fully_masked_key_gets_no_weight(kernel_device):
    """Masking the last key of every query: the output must not depend on its value."""
    from plugin.attention import short_attention

    g = torch.Generator().manual_seed(0)
    qkv = torch.randn(1, 20, 3, 2, 16, generator=g).to(kernel_device)
    mask = torch.zeros(1, 1, 20, 20)
    mask[..., -1] = torch.finfo(torch.float32).min
    a = short_attention(qkv, mask.to(kernel_device), 0.25)
    qkv[:, -1, 2] += 100.0  # the last token's value
    torch.testing.assert_close(short_attention(qkv, mask.to(kernel_device), 0.25), a)


@pytest.mark.gpu
@pytest.mark.parametrize("kernel", ["short", "flash"])
def test_works_inside_torch_compile_and_cuda_graphs(kernel):
    from plugin.attention import flash_attention, short_attention

    if INTERPRETING:
        pytest.skip("compile and graphs need the GPU kernels, not the interpreter")
    if kernel == "short":
        qkv = torch.randn(1, 77, 3, 12, 64, device="cuda", dtype=torch.float16)
        mask = causal(77, torch.float16, 1).cuda()
        op = lambda t: short_attention(t, mask, 0.125)  # noqa: E731
    else:
        qkv = torch.randn(2, 1105, 3, 24, 64, device="cuda", dtype=torch.float16)
        op = lambda t: flash_attention(t, 0.125)  # noqa: E731
    expect = op(qkv)
    torch.testing.assert_close(torch.compile(op, fullgraph=True)(qkv), expect)
    static = qkv.clone()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        op(static)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = op(static)
    static.copy_(qkv * -1)
    graph.replay()
    torch.testing.assert_close(out, op(qkv * -1))


def test_kernels_through_the_interpreter():
    rerun_under_interpreter(__file__)
