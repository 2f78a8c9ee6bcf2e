"""Where an engine's time goes: CUDA kernel times by kind (torch.profiler), against the engine's CUDA-event time.

    python -m bench profile --component uvit --backend inductor --precision fp16 --cuda-graph --option attention=sdpa

The gap between the event time and the sum of kernel times is time the GPU sat idle (launch overhead, host work).
Inductor's Triton kernels also carry the bytes they move (Inductor's own count, kept when the engine is compiled under
`torch._inductor.config.benchmark_kernel`), set against the bandwidth of a device-to-device copy measured alongside:
the memory-bound share of an engine, and how far it is from its floor.
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
    # an Inductor pointwise kernel named after the attention op it feeds (CLIP's causal mask) is not attention
    ("attention", re.compile(r"^(?!triton_poi_).*(flash|fmha|attention|sdpa|softmax)", re.I)),
    ("gemm", re.compile(r"^triton_tem_", re.I)),  # Inductor's GEMM templates (max-autotune)
    (
        "norm / reduction (triton)",
        re.compile(
            r"^triton_(red|per)_|^_(partial_stats|merge_stats|merge_cells|cell_stats|normalize|quantize_rows|"
            r"add_layernorm_quantize)$",
            re.I,
        ),
    ),
    ("pointwise (triton)", re.compile(r"^triton_|^_normalize_rows$", re.I)),
    ("convolution", re.compile(r"conv|fprop|dgrad|implicit|winograd", re.I)),
    ("gemm", re.compile(r"gemm|cutlass|nvjet|xmma|matmul|_mm_|splitk|sm90_", re.I)),
    ("norm / reduction (triton)", re.compile(r"group_norm|layer_norm", re.I)),
    ("copy / memset", re.compile(r"memcpy|memset|copy|cat|fill", re.I)),
)


TOP = 20  # kernels listed by name


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


def triton_bytes() -> dict[str, float]:
    """Bytes read and written per launch of each Triton kernel Inductor has loaded in this process, by kernel name:
    Inductor's count (every buffer once, an in-place one twice), present for kernels compiled with
    `torch._inductor.config.benchmark_kernel` set."""
    from torch._inductor.codecache import PyCodeCache

    found = {}
    for module in list(PyCodeCache.modules):
        for obj in list(vars(module).values()):
            meta = getattr(obj, "inductor_meta", None)
            if isinstance(meta, dict) and meta.get("kernel_num_gb") and meta.get("kernel_name"):
                found[meta["kernel_name"]] = meta["kernel_num_gb"] * 1e9
    return found


def copy_bandwidth(device: torch.device, *, nbytes: int = 1 << 30, repeat: int = 20) -> float:
    """Bytes per second of a device-to-device copy of `nbytes` (read plus write), the median of `repeat` after warm-up:
    the bandwidth memory-bound kernels are held against."""
    from bench.timing import Events

    src = torch.empty(nbytes // 2, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    timed = Events(dst.copy_, device=device, label="copy")
    for _ in range(repeat + 3):
        timed(src)
    return nbytes / (statistics.median(timed.ms(skip=3)) / 1e3)


def with_traffic(kernels: pd.DataFrame, nbytes: dict[str, float]) -> pd.DataFrame:
    """`kernels` with GB per call (NaN where the kernel's bytes are unknown) and the TB/s that makes."""
    out = kernels.copy()
    out["GB"] = out["kernel"].map(nbytes) * out["calls"] / 1e9
    out["TB/s"] = out["GB"] / out["ms"]  # GB per ms is TB per s
    return out


def by_kind(kernels: pd.DataFrame, event_ms: float) -> pd.DataFrame:
    agg = dict(ms=("ms", "sum"), kernels=("kernel", "count"), launches=("calls", "sum"))
    if "GB" in kernels:
        agg["GB"] = ("GB", lambda gb: gb.sum(min_count=1))
    kinds = kernels.groupby("kind").agg(**agg).sort_values("ms", ascending=False)
    idle = pd.DataFrame({"ms": [max(event_ms - kernels["ms"].sum(), 0.0)], "kernels": [0], "launches": [0.0]})
    kinds = pd.concat([kinds, idle.set_axis(["idle (event time - kernel time)"])])
    kinds["share"] = kinds["ms"] / event_ms
    if "GB" in kinds:
        known = kernels[kernels["GB"].notna()].groupby("kind")["ms"].sum()  # the time of the kernels counted
        kinds["TB/s"] = kinds["GB"] / known.reindex(kinds.index)
    return kinds


def traffic_line(kernels: pd.DataFrame, copy_bytes_per_s: float) -> str:
    """One sentence: the counted kernels' traffic, their bandwidth, and the time that traffic takes at copy speed."""
    counted = kernels[kernels["GB"].notna()]
    if counted.empty:
        return "No kernel here carries Inductor's byte count (eager engines, or compiled without benchmark_kernel)."
    gb, ms, copy = counted["GB"].sum(), counted["ms"].sum(), copy_bytes_per_s / 1e12
    rest = kernels["ms"].sum() - ms
    return (
        f"Inductor's Triton kernels move **{gb:.2f} GB** per call in {ms:.3f} ms, {gb / ms:.2f} TB/s; a "
        f"device-to-device copy runs at {copy:.2f} TB/s here, at which the same traffic would take "
        f"**{gb / copy:.3f} ms**. The other kernels take {rest:.3f} ms, so with the same kernels and the Triton "
        f"traffic at copy speed the GPU would be busy **{rest + gb / copy:.3f} ms** per call: this engine's floor "
        f"unless the traffic shrinks or the other kernels get faster. GB: Inductor's count of the buffers each "
        f"kernel reads and writes, each once." + overcounted(counted, copy)
    )


def overcounted(counted: pd.DataFrame, copy_tb_per_s: float) -> str:
    """A sentence for kernels whose count implies more than copy speed: Inductor counts a buffer once per access (each
    slice a gather reads, each input of a concatenation) even where the reads overlap, so their GB, and the floor line
    with them, are upper bounds. Empty when there are none."""
    fast = counted[counted["TB/s"] > copy_tb_per_s]
    if fast.empty:
        return ""
    return (
        f" {len(fast)} kernel(s) would move their count faster than a copy (up to {fast['TB/s'].max():.2f} TB/s, "
        f"{fast['GB'].sum():.2f} GB): Inductor counts a buffer once per access even where reads overlap (a gather's "
        f"slices), so for them the GB, and the floor line with it, are upper bounds."
    )


def to_markdown(title: str, env: dict, result: dict, *, flops: float, nbytes: dict, copy_bytes_per_s: float) -> str:
    from reports.common import env_header

    ms, kernels = result["event_ms"], with_traffic(result["kernels"], nbytes)
    kinds = by_kind(kernels, ms)
    head = kernels.head(TOP).copy()
    head["kernel"] = head["kernel"].str.slice(0, 90)
    return "\n".join(
        [
            env_header(title, env),
            f"CUDA-event time per call: **{ms:.3f} ms** (median); {flops / 1e12:.3f} TFLOP per call, "
            f"{flops / ms / 1e9:.1f} TFLOP/s achieved. Kernel times from torch.profiler (CUPTI), per call.\n",
            "## By kind\n\n" + kinds.to_markdown(floatfmt=".3f") + "\n",
            "## Memory traffic\n\n" + traffic_line(kernels, copy_bytes_per_s) + "\n",
            f"## Top {TOP} kernels\n\n" + head.to_markdown(index=False, floatfmt=".3f") + "\n",
        ]
    )
