"""Where an engine's time goes: CUDA kernel times by kind (torch.profiler), against the engine's CUDA-event time.

    python -m bench profile --component uvit --backend inductor --precision fp16 --cuda-graph --option attention=sdpa

The gap between the event time and the sum of kernel times is time the GPU sat idle (launch overhead, host work).
"""

from __future__ import annotations

import re
import statistics
from collections.abc import Callable

import pandas as pd
import torch

# First match wins. Inductor names a Triton kernel after the ops it fuses, so `triton_poi_fused_convolution_silu` is a
# conv's bias add and a SiLU, not a convolution: Triton kernels are sorted by their prefix before any name pattern.
# Convolutions run as implicit GEMMs, so they are tested before plain GEMMs.
KINDS = (
    ("attention", re.compile(r"flash|fmha|attention|sdpa|softmax", re.I)),
    ("gemm", re.compile(r"^triton_tem_", re.I)),  # Inductor's GEMM templates (max-autotune)
    ("norm / reduction (triton)", re.compile(r"^triton_(red|per)_|^_(partial|merge)_stats$|^_normalize$", re.I)),
    ("pointwise (triton)", re.compile(r"^triton_", re.I)),
    ("convolution", re.compile(r"conv|fprop|dgrad|implicit|winograd", re.I)),
    ("gemm", re.compile(r"gemm|cutlass|nvjet|xmma|matmul|_mm_|splitk|sm90_", re.I)),
    ("norm / reduction (triton)", re.compile(r"group_norm|layer_norm", re.I)),
    ("copy / memset", re.compile(r"memcpy|memset|copy|cat|fill", re.I)),
)


def kind_of(kernel: str) -> str:
    return next((kind for kind, pattern in KINDS if pattern.search(kernel)), "other elementwise")


def profile(fn: Callable[[], object], *, warmup: int = 3, repeat: int = 10) -> dict:
    """Event times of `repeat` calls, then one profiled pass of `repeat` calls; kernel ms are per call."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    events = []
    for _ in range(repeat):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        fn()
        e.record()
        events.append((s, e))
    torch.cuda.synchronize()
    event_ms = statistics.median(s.elapsed_time(e) for s, e in events)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        for _ in range(repeat):
            fn()
        torch.cuda.synchronize()
    rows = [
        {"kernel": k.key, "calls": k.count / repeat, "ms": k.device_time_total / 1e3 / repeat}
        for k in prof.key_averages()
        if k.device_time_total > 0
    ]
    kernels = pd.DataFrame(rows, columns=["kernel", "calls", "ms"]).sort_values("ms", ascending=False)
    kernels["kind"] = kernels["kernel"].map(kind_of)
    return {"event_ms": event_ms, "kernels": kernels}


def by_kind(kernels: pd.DataFrame, event_ms: float) -> pd.DataFrame:
    kinds = kernels.groupby("kind").agg(ms=("ms", "sum"), kernels=("kernel", "count"), launches=("calls", "sum"))
    kinds = kinds.sort_values("ms", ascending=False)
    idle = pd.DataFrame({"ms": [max(event_ms - kernels["ms"].sum(), 0.0)], "kernels": [0], "launches": [0.0]})
    kinds = pd.concat([kinds, idle.set_axis(["idle (event time - kernel time)"])])
    kinds["share"] = kinds["ms"] / event_ms
    return kinds


def to_markdown(title: str, env: dict, result: dict, *, flops: float, top: int = 20) -> str:
    from reports.common import env_header

    ms, kernels = result["event_ms"], result["kernels"]
    kinds = by_kind(kernels, ms)
    head = kernels.head(top).copy()
    head["kernel"] = head["kernel"].str.slice(0, 90)
    return "\n".join(
        [
            env_header(title, env),
            f"CUDA-event time per call: **{ms:.3f} ms** (median); {flops / 1e12:.3f} TFLOP per call, "
            f"{flops / ms / 1e9:.1f} TFLOP/s achieved. Kernel times from torch.profiler (CUPTI), per call.\n",
            "## By kind\n\n" + kinds.to_markdown(floatfmt=".3f") + "\n",
            f"## Top {top} kernels\n\n" + head.to_markdown(index=False, floatfmt=".3f") + "\n",
        ]
    )
