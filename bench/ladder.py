"""The ablation ladder: the columns of the seed's speed-up table, in order, in one place; and a rung's engines.

Each rung says how each component is built. The first two reproduce the seed's PyTorch columns: the strict-fp32
reference (U-ViT guidance as two calls, like upstream) and the "FP16 baseline" (U-ViT under fp16 autocast, CLIP and
decoder in fp32). The seed's TensorRT columns become the best engine we can run here, Inductor; `fast` is the
fastest accurate configuration measured (reports/speedup.md), `fast-fp8` the same with FP8 U-ViT block linears and our
U-ViT attention.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from bench.matrix import EngineSpec, fast_options


@dataclass(frozen=True)
class Build:
    backend: str
    precision: str
    cuda_graph: bool = False
    options: tuple[tuple[str, object], ...] = ()

    def case_id(self, component: str) -> str:
        """The benchmark id of this build of `component`: uvit-inductor-fp16-graph[-option=value]."""
        parts = [component, self.backend, self.precision] + (["graph"] if self.cuda_graph else [])
        return "-".join(parts + [f"{k}={v}" for k, v in self.options])

    @property
    def kwargs(self) -> dict:
        return {
            "backend": self.backend,
            "precision": self.precision,
            "cuda_graph": self.cuda_graph,
            **dict(self.options),
        }


@dataclass(frozen=True)
class Rung:
    name: str
    label: str
    builds: dict[str, Build] = field(default_factory=dict)  # component -> Build
    loop: bool = False  # the 50 U-ViT calls and the solver as one CUDA graph (engines.sampler), from builds["uvit"]


def _all(build: Build) -> dict[str, Build]:
    return {"clip": build, "uvit": build, "decoder": build}


TWO_CALLS = (("guidance", "two-calls"),)
LADDER: list[Rung] = [
    Rung("pytorch-fp32", "PyTorch-FP32 (reference)", {
        "clip": Build("eager", "fp32"),
        "uvit": Build("eager", "fp32", options=TWO_CALLS),
        "decoder": Build("eager", "fp32"),
    }),
    Rung("pytorch-fp16-baseline", "PyTorch-FP16 baseline (U-ViT autocast)", {
        "clip": Build("eager", "fp32"),
        "uvit": Build("autocast", "fp16", options=TWO_CALLS),
        "decoder": Build("eager", "fp32"),
    }),
    Rung("inductor-fp32-graph", "Inductor-FP32 + CUDA graph", _all(Build("inductor", "fp32", True))),
    Rung("inductor-fp16", "Inductor-FP16", _all(Build("inductor", "fp16"))),
    Rung("inductor-fp16-graph", "Inductor-FP16 + CUDA graph", _all(Build("inductor", "fp16", True))),
    Rung("eager-fp16-graph", "Eager-FP16 + CUDA graph", _all(Build("eager", "fp16", True))),
    # issue 6: bench.matrix.fast_options per component, the 50-call solver loop as one graph
    Rung("fast", "Inductor-FP16 + SDPA + whole-loop graph",
         {c: Build("inductor", "fp16", True, fast_options(c, "fp16")) for c in ("clip", "uvit", "decoder")}, loop=True),
    Rung("fast-fp8", "the same with FP8 U-ViT block linears (per-row scales) and our U-ViT attention",
         {c: Build("inductor", p, True, fast_options(c, p))
          for c, p in (("clip", "fp16"), ("uvit", "fp8"), ("decoder", "fp16"))}, loop=True),
]  # fmt: skip
BASELINE = "pytorch-fp16-baseline"  # speed-ups are against this column, as in the seed's table


def engine_specs() -> list[EngineSpec]:
    """Every engine of the ladder's rungs, once each, in ladder order: what the accuracy suite judges with
    `--engine-set ladder` (under a rung's `loop`, the U-ViT step the loop runs)."""
    seen = {
        EngineSpec(c, b.backend, b.precision, b.cuda_graph, b.options): None
        for r in LADDER
        for c, b in r.builds.items()
    }
    return list(seen)


def build(component: str, spec: Build, models) -> object:
    """The engine `spec` describes for `component`; "sampler" is the whole solver loop around that U-ViT step."""
    from engines import build_engine
    from engines.sampler import build_sampler

    if component == "sampler":
        return build_sampler(models, **spec.kwargs)
    return build_engine(component, models, **spec.kwargs)


def rung_engines(rung: Rung, get: Callable[[str, Build], object]) -> dict[str, object]:
    """The engines of a pipeline on this rung, from `get(component, build)`; under `loop`, "uvit" is the sampler."""
    engines = {c: get(c, b) for c, b in rung.builds.items() if not (rung.loop and c == "uvit")}
    if rung.loop:
        engines["uvit"] = get("sampler", rung.builds["uvit"])
    return engines


def stages(rung: Rung, engines: dict[str, Callable]) -> dict[str, Callable]:
    """Pipeline keyword arguments for these engines (or wrappers of them)."""
    return {
        "clip": engines["clip"],
        "decoder": engines["decoder"],
        ("sampler" if rung.loop else "step"): engines["uvit"],
    }


def rung(name: str) -> Rung:
    by_name = {r.name: r for r in LADDER}
    if name not in by_name:
        raise ValueError(f"unknown ladder rung {name!r}; choose from {list(by_name)}")
    return by_name[name]
