"""The engine matrix a test run covers: what the machine supports, narrowed by the command-line options."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
import torch

from engines import check_backend
from engines.recipes import fast_options
from engines.spec import COMPONENTS, EngineSpec

AUTO = "auto"


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
                        out.append(EngineSpec.of(c, b, p, g))
                        if c == "uvit" and (b, p) in (("eager", "fp32"), ("autocast", "fp16")):  # the seed's baselines
                            out.append(EngineSpec.of(c, b, p, g, guidance="two-calls"))
                        if self.device.type != "cuda" or p == "fp32" or b not in ("eager", "inductor"):
                            continue
                        if c == "decoder":  # the GroupNorm rewrite's effect on its own
                            out.append(EngineSpec.of(c, b, p, g, groupnorm="stats", channels_last=True))
                        if b == "inductor":  # the fast recipes' builds, per layer
                            out.append(EngineSpec.of(c, b, p, g, **fast_options(c, p)))
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
