"""Named recipes: how each component is built, one EngineSpec per component; the ladder is their ordered list.

The first two reproduce the seed's PyTorch columns: the strict-fp32 reference (U-ViT guidance as two calls, like
upstream) and the "FP16 baseline" (U-ViT under fp16 autocast, CLIP and decoder in fp32). The seed's TensorRT columns
become the best engine we can run here, Inductor; `fast` is the fastest accurate configuration measured, `fast-fp8` the
same with FP8 U-ViT block linears and our U-ViT attention, `fast-bf16` with a bf16 U-ViT; `torchao-fp8` and
`sageattention` put what a user would pick instead (torchao's float8 linears, SageAttention's attention) in place of
ours in `fast`. What each fast option bought, and what was dropped, is docs/performance.md. Imports no torch.
"""

from __future__ import annotations

from dataclasses import dataclass

from engines.spec import COMPONENTS, EngineSpec

# The fast recipes' options per component: CLIP's q/k/v as one GEMM read in place by our short-sequence attention; the
# decoder channels_last with our GroupNorm statistics and its upsamplings and last conv rewritten (engines/fused.py);
# per precision, the U-ViT's attention, fused fc1 epilogue (fp16) or FP8 recipe, and persistent LayerNorm rows.
FAST_OPTIONS = {
    "clip": {"qkv": "stacked", "attention": "triton"},
    "uvit": {},
    "decoder": {"groupnorm": "stats", "channels_last": True, "upsample": "subpixel", "conv_out": "taps"},
}
PRECISION_OPTIONS = {
    ("uvit", "fp16"): {"attention": "sdpa", "mlp": "epilogue", "persistent_rows": 2048},
    ("uvit", "fp8"): {"attention": "triton", "persistent_rows": 8192, "fp8_accumulate": "fast", "fp8_scaling": "row",
                      "fp8_quantize": "triton", "fp8_gelu": "tanh", "fp8_layernorm": "triton"},
}  # fmt: skip


def fast_options(component: str, precision: str) -> dict[str, object]:
    return {**FAST_OPTIONS[component], **PRECISION_OPTIONS.get((component, precision), {})}


def fast(component: str, precision: str) -> EngineSpec:
    return EngineSpec.of(component, "inductor", precision, True, **fast_options(component, precision))


@dataclass(frozen=True)
class Recipe:
    name: str
    label: str  # the column of the speed-up table
    builds: dict[str, EngineSpec]  # component -> its engine
    loop: bool = False  # the 50 U-ViT calls and the solver as one CUDA graph (engines.sampler), from builds["uvit"]


def _all(backend: str, precision: str, cuda_graph: bool = False) -> dict[str, EngineSpec]:
    return {c: EngineSpec.of(c, backend, precision, cuda_graph) for c in COMPONENTS}


def _fast_but(component: str, precision: str, **changes: object) -> dict[str, EngineSpec]:
    """`fast`'s engines with `component` at `precision` and its options changed (None: back to the default)."""
    options = {**fast_options(component, "fp16"), **changes}
    changed = EngineSpec.of(
        component, "inductor", precision, True, **{k: v for k, v in options.items() if v is not None}
    )
    return {c: changed if c == component else fast(c, "fp16") for c in COMPONENTS}


LADDER: list[Recipe] = [
    Recipe("pytorch-fp32", "PyTorch-FP32 (reference)", {
        "clip": EngineSpec.of("clip"),
        "uvit": EngineSpec.of("uvit", guidance="two-calls"),
        "decoder": EngineSpec.of("decoder"),
    }),
    Recipe("pytorch-fp16-baseline", "PyTorch-FP16 baseline (U-ViT autocast)", {
        "clip": EngineSpec.of("clip"),
        "uvit": EngineSpec.of("uvit", "autocast", "fp16", guidance="two-calls"),
        "decoder": EngineSpec.of("decoder"),
    }),
    Recipe("inductor-fp32-graph", "Inductor-FP32 + CUDA graph", _all("inductor", "fp32", True)),
    Recipe("inductor-fp16", "Inductor-FP16", _all("inductor", "fp16")),
    Recipe("inductor-fp16-graph", "Inductor-FP16 + CUDA graph", _all("inductor", "fp16", True)),
    Recipe("eager-fp16-graph", "Eager-FP16 + CUDA graph", _all("eager", "fp16", True)),
    Recipe("fast", "Inductor-FP16 + SDPA + whole-loop graph", {c: fast(c, "fp16") for c in COMPONENTS}, loop=True),
    Recipe("fast-fp8", "the same with FP8 U-ViT block linears (per-row scales) and our U-ViT attention",
           {c: fast(c, "fp8" if c == "uvit" else "fp16") for c in COMPONENTS}, loop=True),
    # bf16's GEMMs run a few percent faster than fp16's on Hopper; whether its images pass is the question
    Recipe("fast-bf16", "`fast` with a bf16 U-ViT", _fast_but("uvit", "bf16"), loop=True),
    # what a user would pick instead of our kernels (engines.alternatives), each in place of one of ours in `fast`
    Recipe("torchao-fp8", "`fast` with torchao's float8 U-ViT block linears (per-row scales) instead of the epilogue",
           _fast_but("uvit", "fp8", mlp=None, fp8_scaling="row", fp8_accumulate="fast", fp8_kernels="torchao"),
           loop=True),
    Recipe("sageattention", "`fast` with SageAttention 1.0.6's U-ViT attention",
           _fast_but("uvit", "fp16", attention="sageattention"), loop=True),
]  # fmt: skip
BASELINE = "pytorch-fp16-baseline"  # speed-ups are against this column, as in the seed's table


def recipe(name: str) -> Recipe:
    by_name = {r.name: r for r in LADDER}
    if name not in by_name:
        raise ValueError(f"unknown recipe {name!r}; choose from {list(by_name)}")
    return by_name[name]


def ladder_position(name: str) -> int:
    """Where a recipe's column stands in the speed-up table; any other name after all of them. Reports list recipes
    in this order, whatever order their inputs came in."""
    names = [r.name for r in LADDER]
    return names.index(name) if name in names else len(names)


def engine_specs() -> list[EngineSpec]:
    """Every engine of the ladder's recipes, once each, in ladder order: what the accuracy suite judges with
    `--engine-set ladder` (under a recipe's `loop`, the U-ViT step the loop runs)."""
    return list({spec: None for r in LADDER for spec in r.builds.values()})
