"""Facts about the machine, software and weights that every report opens with."""

from __future__ import annotations

import datetime
import os
import platform
import subprocess
from pathlib import Path

import torch

from reference.configs import ModelConfig

ROOT = Path(__file__).resolve().parent.parent


def _run(cmd: list[str]) -> str:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=20, cwd=ROOT).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


COMMIT_ENV = "UNIDIFFUSER_COMMIT"  # the commit of the code, where the tree's .git is not its own


def given_commit() -> str | None:
    """The commit named by UNIDIFFUSER_COMMIT, if any: a copied tree may carry a stale .git (the lent GPU's did)."""
    return os.environ.get(COMMIT_ENV) or None


def git_commit() -> str:
    """UNIDIFFUSER_COMMIT when set, else the checkout's."""
    if given := given_commit():
        return given
    commit = _run(["git", "rev-parse", "--short=12", "HEAD"]) or "unknown"
    dirty = _run(["git", "status", "--porcelain", "--untracked-files=no"])
    return commit + ("+dirty" if dirty else "")


def gpu_info() -> dict[str, str]:
    if not torch.cuda.is_available():
        return {"gpu": "none (CPU)"}
    query = "name,driver_version,clocks.sm,clocks.max.sm,clocks.mem,power.limit"
    fields = _run(["nvidia-smi", f"--query-gpu={query}", "--format=csv,noheader"]).split("\n")[0].split(", ")
    memory = torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory
    info = {
        "gpu": torch.cuda.get_device_name(),
        "cuda": str(torch.version.cuda),
        "gpu_memory": f"{memory / 2**30:.1f} GiB",
    }
    if len(fields) == 6:
        info.update(
            driver=fields[1], sm_clock=fields[2], sm_clock_max=fields[3], mem_clock=fields[4], power_limit=fields[5]
        )
    return info


def environment(*, weights: str, size: str) -> dict[str, str]:
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": git_commit(),
        **gpu_info(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpu": platform.processor() or platform.machine(),
        "size": size,
        "weights": weights,
    }


def gpus(count: int) -> str:
    return "1 CUDA device, cuda:0" if count == 1 else f"{count} CUDA devices, cuda:0 to cuda:{count - 1}"


def resolve(size: str, device: str) -> tuple[ModelConfig, torch.device]:
    """`auto`: the full size on a GPU, the tiny one (same architecture) on a CPU; `cuda:N` picks a GPU."""
    dev = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device)
    if dev.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if not count:
            raise ValueError(f"device {device!r} asked for, but torch sees no CUDA device; use --device cpu")
        if (dev.index or 0) >= count:
            raise ValueError(f"device {device!r} asked for, but torch sees {gpus(count)}; pick one of them")
        if dev.index is not None:
            torch.cuda.set_device(dev)  # CUDA graphs, streams and synchronize() follow the current device
    name = ("full" if dev.type == "cuda" else "tiny") if size == "auto" else size
    return ModelConfig.from_name(name), dev
