"""The engine matrix a test run covers: what the machine supports, narrowed by the command-line options."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
import torch

from engines import check_backend
from engines.components import COMPONENTS

AUTO = "auto"
# The fast rung's options per component, each measured on the H100 (reports/profile-*.md): CLIP's three q/k/v GEMMs as
# one, read in place by our short-sequence Triton attention (0.444 ms per call; 0.51 with explicit attention, 0.53 with
# SDPA, 0.62 unstacked with SDPA); fused attention in the U-ViT (SDPA 9.0 vs 28.8 ms per step explicit; which one:
# below); the decoder channels_last with its GroupNorm statistics split for Inductor and the explicit mid-block
# attention (5.81 ms; 6.46 with earlier statistics cells; 6.68 with SDPA, whose only kernel for 512-wide heads is
# the memory-efficient one; 7.18 with the Triton GroupNorm).
# The U-ViT's LayerNorm rows of 1536 read whole (persistent) and, in fp16, fc1 + bias + GELU as one cuBLASLt GEMM (tanh
# GELU). An A/B on the H100, interleaved, per step: fp16 10.04 ms, 9.60 with the epilogue, 9.78 with Inductor's
# multi_kernel (which compiles the persistent and the looped kernel and times them on each process's first call),
# 9.31 with both (U-ViT output rel L2 against fp32 0.0044 with the epilogue, 0.0046 without). Then, with the
# epilogue: multi_kernel 9.50, persistent_rows=2048 9.34 (the choice made at compile time: engines.reductions), neither
# 9.66; compile 26.7 s, 16.1 and 17.3. fp8: multi_kernel 8.32, persistent_rows=2048 8.71, neither 9.00 (multi_kernel
# also makes fc1's GELU + row maximum over rows of 6144 persistent). On the decoder multi_kernel measured neutral,
# 6.25 vs 6.30 ms.
# The U-ViT's attention (A/B, interleaved, with the options below): our Triton flash attention against
# cuDNN's through SDPA, fp16 9.46 vs 9.47 ms per step (profiled: attention 1.63 vs 1.71 ms, the GEMMs 0.15 ms slower,
# 9.11 vs 9.14 per call), fp8 8.38 vs 8.56. So fp8 takes ours and fp16 keeps SDPA. Then, fp8 with ours: multi_kernel
# 8.19 ms, persistent_rows=8192 8.14 (rows of 6144 too: fc1's GELU + row maximum), 2048 8.61; compile 57.3, 39.5,
# 44.9 s. fp8 takes 8192, and no rung needs multi_kernel, whose marked fp8 engine failed to load from Inductor's FX
# graph cache in both accuracy runs of the fp8 U-ViT with our attention (README, "Known problems").
# The decoder's upsamplings as 2x2 convs on the small image (upsample=subpixel, round 10 A/B, interleaved): 6.21 ->
# 5.58 ms, compile 33 -> 25 s, output rel L2 against fp32 0.0018 -> 0.0019. Its last conv as a GEMM over taps and a
# shifted sum (conv_out=taps, round 11 A/B, interleaved, with the Triton merge of groupnorm=split): 5.46 -> 5.41 ms.
# The decoder's GroupNorms in our kernels with the residual blocks rebuilt around them (groupnorm=stats,
# A/B in one process, interleaved, against groupnorm=split): 5.53 -> 5.05 ms, compile 29.7 -> 7.7 s, output rel L2
# against fp32 0.0018 -> 0.0022; four builds benchmarked 4.86-5.03 ms.
FAST_OPTIONS = {
    "clip": (("qkv", "stacked"), ("attention", "triton")),
    "uvit": (),
    "decoder": (("groupnorm", "stats"), ("channels_last", True), ("upsample", "subpixel"), ("conv_out", "taps")),
}
PRECISION_OPTIONS = {
    ("uvit", "fp16"): (("attention", "sdpa"), ("mlp", "epilogue"), ("persistent_rows", 2048)),
    ("uvit", "fp8"): (
        ("attention", "triton"),
        ("persistent_rows", 8192),
        ("fp8_accumulate", "fast"),
        ("fp8_scaling", "row"),
        ("fp8_quantize", "triton"),
        ("fp8_gelu", "tanh"),
        ("fp8_layernorm", "triton"),
    ),
}


def fast_options(component: str, precision: str) -> tuple[tuple[str, object], ...]:
    return FAST_OPTIONS[component] + PRECISION_OPTIONS.get((component, precision), ())


@dataclass(frozen=True)
class EngineSpec:
    component: str
    backend: str
    precision: str
    cuda_graph: bool
    options: tuple[tuple[str, object], ...] = ()

    @property
    def id(self) -> str:  # uvit-inductor-fp16-graph
        parts = [self.component, self.backend, self.precision] + (["graph"] if self.cuda_graph else [])
        return "-".join(parts + [f"{k}={v}" for k, v in self.options])


@dataclass
class Matrix:
    device: torch.device
    size: str
    backends: list[str]
    precisions: list[str]
    graphs: list[bool]
    components: list[str] = field(default_factory=lambda: list(COMPONENTS))

    def specs(self) -> list[EngineSpec]:
        out = []
        for c in self.components:
            for b in self.backends:
                for p in self.precisions:
                    if b == "autocast" and (p == "fp32" or c != "uvit"):  # the seed's baseline: U-ViT only
                        continue
                    if p == "fp8" and (c != "uvit" or b not in ("eager", "inductor")):  # engines.fp8
                        continue
                    for g in self.graphs:
                        out.append(EngineSpec(c, b, p, g))
                        if c == "uvit" and (b, p) in (("eager", "fp32"), ("autocast", "fp16")):  # the seed's baselines
                            out.append(EngineSpec(c, b, p, g, (("guidance", "two-calls"),)))
                        if self.device.type != "cuda" or p == "fp32" or b not in ("eager", "inductor"):
                            continue
                        if c == "decoder":  # each GroupNorm rewrite's effect on its own
                            out += [EngineSpec(c, b, p, g, (("groupnorm", k),)) for k in ("triton", "split")]
                            out.append(EngineSpec(c, b, p, g, (("groupnorm", "stats"), ("channels_last", True))))
                        if b == "inductor":  # the fast rung's builds (bench.ladder), per layer
                            out.append(EngineSpec(c, b, p, g, fast_options(c, p)))
        return out


def device_from_config(config: pytest.Config) -> torch.device:
    opt = config.getoption("--device")[0]
    if opt == AUTO:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if opt == "cuda" and not torch.cuda.is_available():
        raise pytest.UsageError("--device cuda but torch sees no CUDA device")
    return torch.device(opt)


def matrix(config: pytest.Config) -> Matrix:
    device = device_from_config(config)
    gpu = device.type == "cuda"
    pick = lambda opt, gpu_default, cpu_default: (  # noqa: E731
        (gpu_default if gpu else cpu_default) if config.getoption(opt) == [AUTO] else config.getoption(opt)
    )
    graphs = pick("--cuda-graphs", ["both"], ["off"])[0]
    return Matrix(
        device=device,
        size=pick("--size", ["full"], ["tiny"])[0],
        backends=[
            check_backend(b)
            for b in pick(
                "--backends",
                ["eager", "autocast", "inductor", "onnxruntime", "trt", "trtllm"],
                ["eager", "inductor", "onnxruntime"],
            )
        ],
        precisions=pick("--precisions", ["fp32", "fp16", "bf16"], ["fp32", "bf16"]),
        graphs={"off": [False], "on": [True], "both": [False, True]}[graphs],
    )
