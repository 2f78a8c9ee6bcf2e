"""PyTorch eager: the module run as it is (`eager`), or in fp32 under torch.autocast (`autocast`, the seed's fp16
baseline for the U-ViT)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from engines import BackendUnavailable, register_engine, spec
from engines.faults import Fault, inject
from engines.runtime import cast, finish
from reference import autoencoder as ae


def swap_groupnorm(module: nn.Module, kernel: str) -> nn.Module:
    """Keep the reference GroupNorm layers (`torch`), or take their statistics from our Triton kernels, fused with the
    residual blocks' bias and residual adds (`stats`: engines.fused.swap_stats; channels_last)."""
    if kernel == "stats":
        from engines.fused import swap_stats

        return swap_stats(module)
    return module


ATTENTION = ("math", "sdpa", "triton", "sageattention")
EXPORTABLE = ("math", "sdpa")  # what an ONNX export (onnxruntime, TensorRT) can carry


def set_attention(module: nn.Module, kind: str, kinds: tuple[str, ...] = ATTENTION) -> nn.Module:
    """`math`: the reference's explicit softmax(QK^T)V; `sdpa`: torch's scaled_dot_product_attention, which picks a
    fused kernel (flash, memory-efficient, cuDNN) by shape and dtype; `triton`: our kernels (plugin.attention) reading
    the stacked q/k/v projection in place: CLIP's short-sequence one (with qkv=stacked) and the U-ViT's flash
    attention; the decoder has none; `sageattention`: SageAttention's kernels for the U-ViT (engines.alternatives).
    `kinds`: those a backend can run (an exported graph cannot carry our kernels). An attention that makes an
    approximation of its own (reference.approximations) is left as it is under `math`."""
    if kind not in kinds:
        raise ValueError(f"unknown attention {kind!r}; choose from {list(kinds)}")
    from transformers import CLIPTextModel
    from transformers.models.clip.modeling_clip import CLIPAttention

    from engines.alternatives import SageAttention
    from engines.fused import FlashAttention, StackedQKVAttention
    from reference import uvit as uv

    ours = {"triton": FlashAttention, "sageattention": SageAttention}
    for m in module.modules():
        if isinstance(m, uv.Attention):
            if type(m) not in (uv.Attention, *ours.values()):  # an approximation's reference (its oracle)
                if kind != "math":
                    raise ValueError(
                        f"{type(m).__name__} computes its own attention; attention={kind} would replace it"
                    )
                continue
            if kind == "sageattention" and (why := SageAttention.unsupported(m)):
                raise BackendUnavailable(why)
            m.__class__ = ours.get(kind, uv.Attention)
            m.sdpa = kind == "sdpa"
        elif isinstance(m, ae.AttnBlock):
            if kind not in ("math", "sdpa"):
                raise ValueError(f"attention={kind} has no kernel for the decoder; the decoder takes math or sdpa")
            m.sdpa = kind == "sdpa"
        elif isinstance(m, CLIPTextModel):  # triton takes the causal mask as eager builds it: additive, 4-d
            m.config._attn_implementation = "sdpa" if kind == "sdpa" else "eager"
        elif isinstance(m, StackedQKVAttention):
            m.kernel = kind
        elif isinstance(m, CLIPAttention) and kind == "triton":
            raise ValueError("attention=triton reads CLIP's q, k and v from one projection: add qkv=stacked")
    return module


def libraries(opts: dict) -> dict:
    """The library settings every call of an engine runs under (engines.runtime.precision_settings)."""
    return {"cudnn_benchmark": opts["cudnn_benchmark"]}


def prepare(
    marked: nn.Module, *, precision: str, options: dict, backend: str, fault: Fault | None = None
) -> tuple[nn.Module, dict]:
    """The module transforms the eager and inductor backends share, then the fault if one is asked for; returns the
    module and what was applied, with the approximations that makes ("approximations", reference/approximations.py).
    `options`: an engine spec's (engines.spec, where they were checked), the absent ones at their defaults."""
    from engines import fp8, fused

    opts = {**spec.defaults(backend), **options}
    opts.pop("guidance")  # it chose the module (engines.components)
    fp8_options = {name: opts.pop(name) for name in fp8.OPTIONS}
    module = marked if backend == "autocast" else cast(marked, precision)
    fused.apply(module, opts)
    set_attention(module, opts["attention"])
    if precision == "fp8":
        opts.update(fp8_options, fp8_linears=fp8.swap_linears(module, **fp8_options))
    swap_groupnorm(module, opts["groupnorm"])
    if opts["channels_last"]:
        module = module.to(memory_format=torch.channels_last)
    if fault is not None:
        inject(module.module, fault)
    return module, {**opts, "approximations": approximations(opts, precision=precision, device=_device(marked))}


def approximations(opts: dict, *, precision: str, device: torch.device) -> tuple[str, ...]:
    """What these options compute differently on purpose: cuBLASLt's GELU epilogue is the tanh form (exact on the
    CPU); fp8 rounds the block linears through e4m3 with its scaling, and fp8_gelu=tanh is the tanh form too."""
    made = set()
    if opts["mlp"] == "epilogue" and device.type == "cuda":
        made.add("gelu=tanh")
    if opts["attention"] == "sageattention":
        made.add("attention=int8-blocks")
    if precision == "fp8":
        made.add("fp8=torchao-row" if opts["fp8_kernels"] == "torchao" else f"fp8={opts['fp8_scaling']}")
        made.update(["gelu=tanh"] if opts["fp8_gelu"] == "tanh" else [])
    return tuple(sorted(made))


def _device(module: nn.Module) -> torch.device:
    return next(module.parameters()).device


@register_engine("eager")
def build(marked, *, precision, device, example_inputs, cuda_graph, options, fault=None):
    module, opts = prepare(marked, precision=precision, options=options, backend="eager", fault=fault)
    fn, seconds = finish(
        module, precision=precision, example_inputs=example_inputs, cuda_graph=cuda_graph,
        **libraries(opts),
    )  # fmt: skip
    return fn, seconds, {"backend": "eager", **opts}


@register_engine("autocast")
def build_autocast(marked, *, precision, device, example_inputs, cuda_graph, options, fault=None):
    if precision not in ("fp16", "bf16"):
        raise ValueError("the autocast backend runs fp32 weights under fp16 or bf16 autocast; choose fp16 or bf16")
    module, opts = prepare(marked, precision=precision, options=options, backend="autocast", fault=fault)
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}[precision]

    def run(**inputs: Tensor) -> dict[str, Tensor]:
        with torch.autocast(device.type, dtype=dtype):
            return module(**inputs)

    fn, seconds = finish(
        run, precision=precision, example_inputs=example_inputs, cuda_graph=cuda_graph,
        **libraries(opts),
    )  # fmt: skip
    return fn, seconds, {"backend": "autocast", "autocast_dtype": precision, **opts}
