"""Ceilings: the fastest each kind of kernel runs on this GPU at the guided U-ViT step's own shapes, and the step time
those rates leave room for.

    python -m bench ceilings

A step's compute-bound work is its linears and its attention; the rest (LayerNorms, residual adds, the long skips'
concatenation) only moves memory. Each linear shape is timed alone with cuBLAS, bias included, as the engines call it.
Each attention kernel we can run is timed at the step's shape and at the head-dim-64 shapes of the FlashAttention-3
paper (16k tokens, 32 heads), for which the paper publishes FlashAttention-3's rate: a kernel that cannot be installed
here, set beside the ones that can at the shape it was published for. A time is the median over REPEAT replays of a
CUDA graph of CALLS calls, divided by CALLS, so that launch gaps are not counted as the kernel's.
"""

from __future__ import annotations

import functools
import statistics
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

CALLS, REPEAT = 20, 15
PEAK_N = 8192  # the dense fp16 matmul every report divides by: PEAK_N^3 on random data
# FlashAttention-3 (Shah et al. 2024, arXiv:2407.08608), forward, head dim 64, no causal mask, H100 80GB SXM5, as read
# from the paper's figure, TFLOP/s; its shapes hold 16k tokens and 2048 = heads * head dim.
PUBLISHED_FA3 = {(16, 32, 1024, 64): 392.0, (8, 32, 2048, 64): 460.0}


def step_shapes(size: str) -> tuple[Counter, Counter]:
    """(M, K, N, bias) of every linear call and (B, H, L, D) of every attention call in one guided step, counted by
    running it on the meta device (no memory, no GPU)."""
    from bench.flops import meta_models
    from engines.components import component_module, example_inputs
    from reference import uvit as uv
    from reference.configs import ModelConfig

    cfg = ModelConfig.from_name(size)
    with torch.device("meta"):
        step = component_module("uvit", meta_models(cfg))
    linears, attention = Counter(), Counter()

    def on_linear(m: nn.Linear, args: tuple, _out) -> None:
        x = args[0]  # (..., K)
        linears[(x.numel() // x.shape[-1], m.in_features, m.out_features, m.bias is not None)] += 1

    def on_attention(m: uv.Attention, args: tuple, _out) -> None:
        B, L, C = args[0].shape
        attention[(B, m.num_heads, L, C // m.num_heads)] += 1

    hooks = [m.register_forward_hook(on_linear) for m in step.modules() if isinstance(m, nn.Linear)]
    hooks += [m.register_forward_hook(on_attention) for m in step.modules() if isinstance(m, uv.Attention)]
    inputs = {k: v.to("meta") for k, v in example_inputs("uvit", cfg, device="cpu").items()}
    try:
        with torch.no_grad():
            step(**inputs)
    finally:
        for h in hooks:
            h.remove()
    return linears, attention


def graph_us(fn: Callable[[], object], *, calls: int = CALLS, repeat: int = REPEAT) -> float:
    """Microseconds per call of `fn`, from CUDA-event times of a graph of `calls` calls (median of `repeat`)."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up off the capture stream, as torch.cuda.graphs asks
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(calls):
            fn()
    for _ in range(3):
        graph.replay()
    times = []
    for _ in range(repeat):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1e3 / calls)
    return statistics.median(times)


def attention_kernels() -> dict[str, Callable]:
    """Each attention kernel we can run, as fn(qkv (B, L, 3, H, D)) -> output."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from plugin.attention import flash_attention

    def sdpa(backend: SDPBackend) -> Callable:
        def run(qkv):
            q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, H, L, D)
            with sdpa_kernel(backend):
                return F.scaled_dot_product_attention(q, k, v)

        return run

    return {
        "cuDNN (SDPA)": sdpa(SDPBackend.CUDNN_ATTENTION),
        "flash (SDPA)": sdpa(SDPBackend.FLASH_ATTENTION),
        "ours (plugin.attention)": lambda qkv: flash_attention(qkv, qkv.shape[-1] ** -0.5),
    }


def measure(size: str = "full") -> dict[str, pd.DataFrame | float]:
    """Time every linear shape and attention kernel of the step on the GPU, fp16, random data."""
    from bench.profile import copy_bandwidth

    if not torch.cuda.is_available():
        raise ValueError("ceilings time CUDA kernels; torch sees no CUDA device")
    dev, half = torch.device("cuda"), torch.float16
    g = torch.Generator(device=dev).manual_seed(0)
    randn = lambda *shape: torch.randn(*shape, generator=g, device=dev, dtype=half)  # noqa: E731
    linears, attention = step_shapes(size)
    rows = []
    for (M, K, N, bias), calls in sorted(linears.items()):
        x, w, b = randn(M, K), randn(N, K) * K**-0.5, randn(N) if bias else None
        us = graph_us(functools.partial(F.linear, x, w, b))
        rows.append({"M": M, "K": K, "N": N, "bias": bias, "calls": calls, "us": us, "flop": 2 * M * K * N})
    gemms = pd.DataFrame(rows)
    rows = []
    for (B, H, L, D), calls in {**attention, **dict.fromkeys(PUBLISHED_FA3, 0)}.items():
        qkv, shape, flop = randn(B, L, 3, H, D), f"{B}x{H}x{L}x{D}", 4 * B * H * L * L * D
        for kernel, fn in attention_kernels().items():
            us = graph_us(functools.partial(fn, qkv))
            rows.append({"shape": shape, "calls": calls, "kernel": kernel, "us": us, "flop": flop})
        if (B, H, L, D) in PUBLISHED_FA3:
            us = flop / PUBLISHED_FA3[(B, H, L, D)] / 1e6  # the time the published rate implies
            rows.append({"shape": shape, "calls": 0, "kernel": "FlashAttention-3 (published)", "us": us, "flop": flop})
    kernels = pd.DataFrame(rows)
    a, b = randn(PEAK_N, PEAK_N), randn(PEAK_N, PEAK_N)
    peak = 2 * PEAK_N**3 / graph_us(functools.partial(torch.matmul, a, b), calls=5, repeat=10) * 1e6
    return {"linears": gemms, "attention": kernels, "peak": peak, "copy": copy_bandwidth(dev)}


def flop_per_s(rows: pd.DataFrame) -> pd.Series:
    return rows["flop"] / rows["us"] * 1e6


def room(m: dict, target_ms: float) -> pd.DataFrame:
    """The step's compute-bound milliseconds under three assumptions, each more generous than the one before, and what
    the target leaves for the memory-bound rest: in ms, and in GB moved at the copy bandwidth."""
    lin, att = m["linears"], m["attention"]
    in_step = att[att["calls"] > 0]
    per_shape = in_step.groupby("shape").agg(calls=("calls", "first"), flop=("flop", "first"), us=("us", "min"))
    att_flop = (per_shape["calls"] * per_shape["flop"]).sum()
    best_rate = flop_per_s(att).max()  # over every shape and kernel
    # the fastest matmul rate seen: a long PEAK_N^3 burst can run at a lower clock than a short GEMM of the step
    matmul_rate = max(m["peak"], flop_per_s(lin).max())
    linears_ms = (lin["calls"] * lin["us"]).sum() / 1e3
    linears_at_best = (lin["calls"] * lin["flop"]).sum() / matmul_rate * 1e3
    attention_ms, attention_at_best = (per_shape["calls"] * per_shape["us"]).sum() / 1e3, att_flop / best_rate * 1e3
    out = pd.DataFrame(
        [
            ("linears and attention at the step's shapes, the fastest kernel of each", linears_ms, attention_ms),
            ("the attention at the fastest rate any attention row above reaches", linears_ms, attention_at_best),
            ("also every linear at the fastest matmul rate measured here", linears_at_best, attention_at_best),
        ],
        columns=["assuming", "linears_ms", "attention_ms"],
    ).set_index("assuming")
    out["compute_ms"] = out["linears_ms"] + out["attention_ms"]
    out["left_ms"] = target_ms - out["compute_ms"]
    out["left_GB_at_copy_speed"] = out["left_ms"].clip(lower=0) / 1e3 * m["copy"] / 1e9
    return out


def to_markdown(env: dict, m: dict, target_ms: float) -> str:
    from reports.common import env_header

    r = room(m, target_ms)
    best = r.iloc[-1]
    lin = m["linears"].assign(
        **{"TFLOP/s": lambda d: flop_per_s(d) / 1e12, "ms_per_step": lambda d: d["calls"] * d["us"] / 1e3}
    )
    att = m["attention"].assign(**{"TFLOP/s": lambda d: flop_per_s(d) / 1e12})
    return "\n".join(
        [
            env_header("Kernel ceilings at the guided U-ViT step's shapes", env),
            __doc__.split("\n\n", 2)[2].strip().replace("REPEAT", str(REPEAT)).replace("CALLS", str(CALLS)) + "\n",
            f"Dense fp16 matmul, {PEAK_N}^3: **{m['peak'] / 1e12:.0f} TFLOP/s**. Device-to-device copy: "
            f"**{m['copy'] / 1e12:.2f} TB/s**.\n",
            "## Linears (cuBLAS, fp16)\n\nM = tokens of both guidance halves; calls per step.\n\n"
            + lin.drop(columns="flop").to_markdown(index=False, floatfmt=".2f")
            + "\n",
            "## Attention (fp16, batch x heads x tokens x head dim)\n\ncalls: per step (0: a shape of the "
            "FlashAttention-3 paper, for comparison).\n\n"
            + att.drop(columns="flop").to_markdown(index=False, floatfmt=".2f")
            + "\n",
            f"## What a {target_ms:g} ms step leaves\n\nThe step's compute-bound work alone, and the time the target "
            "leaves for everything else (LayerNorms, residual adds, the long skips), as milliseconds and as the bytes "
            "a copy moves in them: set it against the memory-traffic line of the step's profile "
            "(`python -m bench profile --component uvit ...`).\n\n" + r.to_markdown(floatfmt=".3f") + "\n",
            f"Most generous row: the compute alone takes **{best['compute_ms']:.3f} ms**, and a {target_ms:g} ms step "
            f"leaves **{max(best['left_ms'], 0):.3f} ms** ({best['left_GB_at_copy_speed']:.2f} GB at copy speed) for "
            "everything else.\n",
        ]
    )


def write_report(*, size: str = "full", out: Path, overwrite: bool = False) -> Path:
    from bench.environment import environment
    from reports.common import check_writable
    from reports.speedup import TARGETS

    out = check_writable(Path(out), overwrite=overwrite)
    m = measure(size)
    out.write_text(
        to_markdown(
            environment(weights="random (seed 0): kernels on random data", size=size), m, TARGETS[("fast", "uvit")]
        )
    )
    return out
