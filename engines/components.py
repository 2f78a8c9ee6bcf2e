"""The three components as the seed's engines cut them, their example inputs, and their marks.

    clip     TextEncoder: CLIP text tower with encode_prefix inlined      input_ids (B, 77) -> (B, 77, 64)
    uvit     GuidedStep(batched=True): one guided step, batch-2 U-ViT     x, text, text_noise, t_model, alpha, sigma
                                                                       -> D
    decoder  AutoencoderDecoder: post_quant_conv + VAE decoder            z (B, 4, 64, 64) -> (B, 3, 512, 512)

A mark is named by its module path inside the component (`uvit.in_blocks.3`, `decoder.up.1.block.0.norm1`), so every
engine uses the same names. Hugging Face moved CLIP's layers from `clip.text_model.*` to `clip.*`; names drop
`text_model.` so that marks do not depend on the transformers version.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from engines.spec import COMPONENTS
from reference import autoencoder as ae
from reference import uvit as uv
from reference.checkpoints import Models
from reference.clip import load_tokenizer, tokenize
from reference.configs import ModelConfig
from reference.dpm_solver import make_plan
from reference.pipeline import GuidedStep

EXAMPLE_PROMPT = "A dog adventuring under the sea"  # prompts.tsv row 0
EXAMPLE_CALL = 25  # a middle solver call: t_model ~ 500


def check_component(component: str) -> str:
    if component not in COMPONENTS:
        raise ValueError(f"unknown component {component!r}; choose from {list(COMPONENTS)}")
    return component


GUIDANCE = ("batched", "two-calls")  # one batch-2 U-ViT call per step (the seed's engines), or upstream's two


def component_module(component: str, models: Models, *, guidance: str = "batched") -> nn.Module:
    """The reference module an engine is built from (shared with `models`: engines copy it before changing it)."""
    check_component(component)
    if guidance not in GUIDANCE:
        raise ValueError(f"unknown guidance {guidance!r}; choose from {list(GUIDANCE)}")
    if component == "clip":
        return models.text_encoder
    if component == "uvit":
        return GuidedStep(models.uvit, batched=guidance == "batched")
    return models.decoder


def example_inputs(
    component: str, cfg: ModelConfig, *, device: torch.device | str, seed: int = 0, batch: int = 1
) -> dict[str, Tensor]:
    """Realistic inputs of `batch` images, drawn on the CPU so that every device sees the same numbers."""
    check_component(component)
    g = torch.Generator().manual_seed(seed)
    if component == "clip":
        inputs = {
            "input_ids": tokenize(load_tokenizer(), [EXAMPLE_PROMPT] * batch, max_tokens=cfg.uvit.num_text_tokens)
        }
    elif component == "uvit":
        u, plan, k = cfg.uvit, make_plan(), EXAMPLE_CALL
        text_shape = (batch, u.num_text_tokens, u.text_dim)
        inputs = {
            "x": torch.randn(batch, u.x_dim, generator=g),
            "text": torch.randn(text_shape, generator=g),
            "text_noise": torch.randn(text_shape, generator=g),
            **{name: getattr(plan, name)[k : k + 1].repeat(batch) for name in ("t_model", "alpha", "sigma")},
        }
    else:
        u = cfg.uvit
        inputs = {"z": torch.randn(batch, u.in_chans, u.img_size, u.img_size, generator=g)}
    return {k: v.to(device) for k, v in inputs.items()}


def mark_name(path: str) -> str:
    return path.replace("clip.text_model.", "clip.")


def module_by_mark(module: nn.Module) -> dict[str, nn.Module]:
    return {mark_name(n): m for n, m in module.named_modules() if n}


# Layers worth a row in the accuracy report: every block, every normalisation, and the ends of each model.
_MARK_KINDS = (uv.Block, uv.PatchEmbed, ae.ResnetBlock, ae.AttnBlock, ae.Upsample, nn.LayerNorm, nn.GroupNorm)
_MARK_ENDS = {
    "clip": ("clip.embeddings", "clip.final_layer_norm", "encode_prefix"),
    "uvit": ("uvit.decoder_pred", "uvit.clip_img_out"),
    "decoder": ("post_quant_conv", "decoder.conv_in", "decoder.conv_out"),
}


def default_marks(component: str, module: nn.Module) -> tuple[str, ...]:
    """Blocks, norms and the first/last layers, in module order (execution order may differ; results use the latter)."""
    layer_kinds = _MARK_KINDS + _clip_layer_kinds()
    return tuple(
        name
        for name, m in module_by_mark(module).items()
        if isinstance(m, layer_kinds) or name in _MARK_ENDS[check_component(component)]
    )


def _clip_layer_kinds() -> tuple[type, ...]:
    from transformers.models.clip.modeling_clip import CLIPEncoderLayer

    return (CLIPEncoderLayer,)


def repeated_layers(module: nn.Module) -> list[nn.Module]:
    """The layers a component repeats (the U-ViT's blocks, CLIP's encoder layers), in module order: what
    `compile=regional` compiles one by one."""
    kinds = (uv.Block, *_clip_layer_kinds())
    return [m for m in module.modules() if isinstance(m, kinds)]


INPUT = ":in"  # a mark named "<path>:in" records the input of the layer at <path>, not its output


def check_marks(component: str, module: nn.Module, marks: tuple[str, ...]) -> tuple[str, ...]:
    known = module_by_mark(module)
    unknown = [m for m in marks if m.removesuffix(INPUT) not in known]
    if unknown:
        sample = list(known)[:6]
        raise ValueError(
            f"unknown marks {unknown} for component {component!r}; marks are module paths such as {sample} "
            f"({len(known)} in all: engines.components.module_by_mark lists them)"
        )
    if "output" in marks:
        raise ValueError("'output' is the name of the final output and cannot be a mark")
    return tuple(marks)


class Marked(nn.Module):
    """Runs `module` and returns {mark: tensor, ..., "output": tensor} with marks in execution order.

    Forward hooks record the outputs (pre-hooks the inputs, for "<path>:in" marks); torch.compile traces them, and
    CUDA-graph capture turns them into static outputs, so every backend returns the same dictionary. A module's output
    tuple is marked by its first tensor; an input already quantised by the layer before (engines.fp8.Quantized) by
    its dequantised values, in fp32.
    """

    def __init__(self, module: nn.Module, marks: tuple[str, ...]):
        super().__init__()
        self.module, self.marks = module, marks
        # The hooks hold the store, never this module: a hook holding `self` ties the module and its copy of the
        # weights into a reference cycle that only the collector frees, whenever it next runs; the accuracy suites
        # build dozens of marked engines, and a full-size fp64 U-ViT is 8 GB.
        self._store: dict[str, Tensor] = {}
        by_mark = module_by_mark(module)
        self._handles = [
            by_mark[m.removesuffix(INPUT)].register_forward_pre_hook(_input_recorder(self._store, m))
            if m.endswith(INPUT)
            else by_mark[m].register_forward_hook(_recorder(self._store, m))
            for m in marks
        ]

    def forward(self, **inputs: Tensor) -> dict[str, Tensor]:
        self._store.clear()
        out = self.module(**inputs)
        return {**self._store, "output": out}


def _record(store: dict[str, Tensor], mark: str, value: object) -> None:
    value = value[0] if isinstance(value, (tuple, list)) and not hasattr(value, "scale") else value
    if hasattr(value, "scale"):  # a Quantized (q, scale, dtype): what the layer multiplies by, exactly
        value = value.q.float() * value.scale
    # A module run twice per call (two-call guidance: cond, then uncond) is marked by both outputs stacked on the
    # batch axis, the layout of the batched reference.
    store[mark] = torch.cat([store[mark], value]) if mark in store else value


def _recorder(store: dict[str, Tensor], mark: str):
    def record(module: nn.Module, args: tuple, out: object) -> None:
        _record(store, mark, out)

    return record


def _input_recorder(store: dict[str, Tensor], mark: str):
    def record(module: nn.Module, args: tuple) -> None:
        _record(store, mark, args[0])

    return record


class DecodeToImage(nn.Module):
    """The decoder with the uint8 post-processing folded in: z -> (B, H, W, 3) uint8."""

    def __init__(self, decoder: nn.Module, *, rounding: str = "truncate"):
        super().__init__()
        self.decoder, self.rounding = decoder, rounding

    def forward(self, z: Tensor) -> Tensor:
        return ae.to_uint8(self.decoder(z), rounding=self.rounding)
