"""FLOPs per component, counted by torch's FlopCounterMode on the meta device (no memory, no GPU).

At full size: U-ViT forward 2.33 TFLOP (a guided step is two forwards; of the step's 4.66, 4.19 in the linears and 0.47
in attention), decoder 2.51, CLIP 0.013 (SPEC section 6).
"""

from __future__ import annotations

import copy
import functools

import torch
from torch.utils.flop_counter import FlopCounterMode

from engines.components import component_module, example_inputs

# what each counted op is in these models: the reference's attention is explicit (q @ k^T, then @ v: batched matmuls)
KINDS = {"aten.mm": "linear", "aten.addmm": "linear", "aten.bmm": "attention", "aten.convolution": "convolution"}


@functools.cache
def _count(component: str, size: str, guidance: str) -> dict[str, int]:
    from reference.configs import ModelConfig

    cfg = ModelConfig.from_name(size)
    with torch.device("meta"):
        models = meta_models(cfg)
    module = copy.deepcopy(component_module(component, models, guidance=guidance))
    inputs = {k: v.to("meta") for k, v in example_inputs(component, cfg, device="cpu").items()}
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        module(**inputs)
    by_kind: dict[str, int] = {}
    for op, flops in counter.get_flop_counts()["Global"].items():
        kind = KINDS.get(str(op), "other")
        by_kind[kind] = by_kind.get(kind, 0) + flops
    return by_kind


def meta_models(cfg):
    from reference.autoencoder import AutoencoderDecoder
    from reference.checkpoints import Models
    from reference.clip import TextEncoder
    from reference.uvit import UViT

    te = TextEncoder.from_config(cfg.clip, text_dim=cfg.uvit.text_dim)
    return Models(cfg, te, UViT(cfg.uvit), AutoencoderDecoder(cfg.autoencoder), weights="meta")


def component_flops(component: str, size: str, *, guidance: str = "batched") -> int:
    """FLOPs of one call of the component (the U-ViT component is one guided step: two forwards)."""
    return sum(_count(component, size, guidance).values())


def flops_by_kind(component: str, size: str, *, guidance: str = "batched") -> dict[str, int]:
    """The same FLOPs by kind of op: linear, attention, convolution (an FP8 engine runs only its linears in FP8)."""
    return dict(sorted(_count(component, size, guidance).items()))


def pipeline_flops(size: str, *, calls: int = 50) -> int:
    return component_flops("clip", size) + calls * component_flops("uvit", size) + component_flops("decoder", size)
