"""Timing helpers: a synchronising clock for pytest-benchmark, CUDA events per round, per-stage events and NVTX."""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Callable

import torch

try:  # NVTX ranges only matter under Nsight Systems; without the package the stages simply go unlabelled.
    import nvtx

    _annotate = nvtx.annotate
except ImportError:  # pragma: no cover - nvtx is a declared dependency
    import contextlib

    _annotate = lambda *a, **k: contextlib.nullcontext()  # noqa: E731


def cuda_clock() -> float:
    """pytest-benchmark's timer: wait for the GPU, then read the host clock."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def summary_ms(values: list[float]) -> dict[str, float]:
    return {"p50_ms": statistics.median(values), "p90_ms": percentile(values, 90), "n": len(values)}


class Events:
    """Wraps a callable so that every call is bracketed by CUDA events (host clock on a CPU); ms per call after."""

    def __init__(self, fn: Callable, *, device: torch.device, label: str = ""):
        self.fn, self.device, self.label = fn, device, label
        self.pairs: list[tuple[object, object]] = []

    def __call__(self, *args, **kwargs):
        if self.device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            with _annotate(self.label or "call"):
                out = self.fn(*args, **kwargs)
            end.record()
        else:
            start = time.perf_counter()
            out = self.fn(*args, **kwargs)
            end = time.perf_counter()
        self.pairs.append((start, end))
        return out

    def ms(self, *, skip: int = 0) -> list[float]:
        """Per call, leaving out the first `skip` (warm-up) calls: one slice for both clocks."""
        timed = self.pairs[skip:]
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            return [s.elapsed_time(e) for s, e in timed]
        return [(e - s) * 1e3 for s, e in timed]


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_mib(device: torch.device) -> float:
    return torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else 0.0


def allocated_mib(device: torch.device) -> float:
    return torch.cuda.memory_allocated(device) / 2**20 if device.type == "cuda" else 0.0


def free_memory(device: torch.device) -> None:
    """Hand the memory of closed engines back: their CUDA graphs' pools go once nothing refers to them."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
