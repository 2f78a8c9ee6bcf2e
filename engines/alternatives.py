"""What a user would pick instead of our kernels, taken from its library and put behind the same options, the same
accuracy suite and the same image verdicts as ours:

    attention=sageattention   the U-ViT's attention by SageAttention 1.0.6's Triton kernels (`sageattn`): the keys
                              less their mean over the tokens, q and k rounded to int8 with one scale per block of
                              128 query or 64 key tokens, the int8 product in int32, P V in fp16. The engine declares
                              approximation `attention=int8-blocks` (reference.approximations), written from that
                              recipe, so that the suite judges the kernel, not the recipe. It fails there: 1.0.6
                              scores the last block's missing keys 0, not minus infinity, so at the U-ViT's 1105 tokens
                              47 phantom keys share each softmax (engines/tests/test_alternatives.py shows it).
    fp8_kernels=torchao       the U-ViT block linears by torchao's float8 inference
                              (Float8DynamicActivationFloat8WeightConfig; fp8_scaling=row is its PerRow granularity,
                              fp8_accumulate=fast its default use_fast_accum), judged by the FP8 linears' emulation as
                              our own are, with the recipe it computes (approximation `fp8=torchao-row`: weights
                              rounded to bf16, which its PerRow requires, and scales formed in the tensors' dtypes).

Both run on a CUDA GPU only. Neither library is a dependency: an engine that asks for one names what to install.
"""

from __future__ import annotations

import importlib.util

import torch
from torch import Tensor, nn

from reference import uvit as uv

_HOW = "pip install 'unidiffuser-bench[alternatives]'"
# (option, value) -> the module it imports
REQUIRES = {("attention", "sageattention"): "sageattention", ("fp8_kernels", "torchao"): "torchao"}


def missing(options: dict[str, object], device: torch.device) -> str | None:
    """Why the engine's library options cannot run here, or None."""
    for (option, value), module in REQUIRES.items():
        if options.get(option) != value:
            continue
        if device.type != "cuda":
            return f"{option}={value} runs {module}'s CUDA kernels; this engine would run on {device.type}"
        if importlib.util.find_spec(module) is None:
            return f"{option}={value} needs {module}, which is not installed: {_HOW}"
    return None


@torch.library.custom_op("unidiffuser::sageattn", mutates_args=())
def sageattn(q: Tensor, k: Tensor, v: Tensor, scale: float) -> Tensor:
    """(B, L, H, D) q, k, v -> (B, L, H, D), opaque to the compiler: the library subtracts the key mean from `k` in
    place, which a copy keeps from the caller's tensor."""
    from sageattention.core import sageattn as kernel

    return kernel(q, k.clone(), v, tensor_layout="NHD", is_causal=False, sm_scale=scale, smooth_k=True)


@sageattn.register_fake
def _(q: Tensor, k: Tensor, v: Tensor, scale: float) -> Tensor:
    return torch.empty_like(q, memory_format=torch.contiguous_format)


class SageAttention(uv.Attention):
    """`attention=sageattention`: q, k and v read from the stacked projection as strided views (NHD)."""

    HEADS = (64, 96, 128)  # the head sizes sageattn has kernels for

    @classmethod
    def unsupported(cls, attention: uv.Attention) -> str | None:
        """Why the library cannot run `attention`'s heads, or None."""
        head = attention.qkv.in_features // attention.num_heads
        if head not in cls.HEADS:
            return (f"attention=sageattention has kernels for heads of {list(cls.HEADS)} dims; this U-ViT's have "
                    f"{head} (the tiny configuration: use the full one)")  # fmt: skip
        return None

    def forward(self, x: Tensor) -> Tensor:  # (B, L, C) -> (B, L, C)
        B, L, C = x.shape
        q, k, v = self.qkv(x).view(B, L, 3, self.num_heads, C // self.num_heads).unbind(2)
        return self.proj(sageattn(q, k, v, self.scale).reshape(B, L, C))


def torchao_linears(module: nn.Module, paths: tuple[str, ...], *, fast: bool) -> int:
    """torchao's float8 weights and dynamic activations, a scale per row, for the linears at `paths` of every U-ViT
    block; how many. torchao's own Inductor settings stay off: an engine changes no process-wide state."""
    from torchao.float8.inference import Float8MMConfig
    from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, PerRow, quantize_

    from reference.approximations import TORCHAO_WEIGHTS

    config = Float8DynamicActivationFloat8WeightConfig(
        granularity=PerRow(), mm_config=Float8MMConfig(use_fast_accum=fast), set_inductor_config=False
    )
    swapped = 0
    for block in [m for m in module.modules() if isinstance(m, uv.Block)]:
        mine = [fqn for fqn, m in block.named_modules() if isinstance(m, nn.Linear) and fqn in paths]
        for fqn in mine:  # torchao 0.18's PerRow asserts bf16 weights; the output keeps the activations' dtype
            linear = block.get_submodule(fqn)
            linear.weight = nn.Parameter(linear.weight.to(TORCHAO_WEIGHTS), requires_grad=False)
        quantize_(block, config, filter_fn=lambda m, fqn, mine=mine: fqn in mine)
        swapped += len(mine)
    return swapped
