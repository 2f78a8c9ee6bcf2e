"""The GPU's SM clock and power draw, sampled by `nvidia-smi --loop-ms` while a benchmark runs: a run that reads slow
because the GPU held a lower clock (power or thermal limits, another tenant's card) says so in its own JSON.

    with ClockSampler(device) as clocks:
        ...timed rounds...
    benchmark.extra_info.update(clocks.summary())
"""

from __future__ import annotations

import shutil
import statistics
import subprocess

import torch

PERIOD_MS = 50


def parse(lines: list[str]) -> list[tuple[float, float]]:
    """`clocks.sm, power.draw` CSV lines (no header, no units) -> (MHz, W) pairs; lines that do not parse are
    dropped (nvidia-smi writes `[N/A]` for a reading it cannot take)."""
    out = []
    for line in lines:
        try:
            mhz, watts = (float(v) for v in line.split(","))
        except ValueError:
            continue
        out.append((mhz, watts))
    return out


class ClockSampler:
    """Samples every PERIOD_MS while the block runs; `summary()` has the median and lowest SM clock and the median
    power, or, where no sample could be taken (a CPU run, no nvidia-smi), `clock_samples=0` and why."""

    def __init__(self, device: torch.device):
        self.device, self.proc, self.samples, self.why = device, None, [], ""

    def __enter__(self) -> ClockSampler:
        if self.device.type != "cuda":
            self.why = "not a CUDA device"
        elif shutil.which("nvidia-smi") is None:
            self.why = "nvidia-smi not found"
        else:
            index = self.device.index if self.device.index is not None else torch.cuda.current_device()
            query = ["nvidia-smi", "-i", str(index), "--query-gpu=clocks.sm,power.draw",
                     "--format=csv,noheader,nounits", f"--loop-ms={PERIOD_MS}"]  # fmt: skip
            self.proc = subprocess.Popen(query, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        return self

    def __exit__(self, *exc) -> None:
        if self.proc is None:
            return
        self.proc.terminate()
        out, _ = self.proc.communicate(timeout=10)
        self.samples = parse(out.splitlines())
        self.why = "" if self.samples else "nvidia-smi returned no readings"

    def summary(self) -> dict[str, object]:
        if not self.samples:
            return {"clock_samples": 0, "clock_note": self.why}
        mhz, watts = zip(*self.samples, strict=True)
        return {
            "clock_samples": len(self.samples), "sm_clock_mhz_p50": statistics.median(mhz),
            "sm_clock_mhz_min": min(mhz), "power_w_p50": statistics.median(watts),
        }  # fmt: skip
