"""What a model's weights make its layers do on one input: the statistics that decide whether a low-precision bug can
hide (reference/init.py targets them; the accuracy report shows them layer by layer).

    stats = measure(module, inputs)        # [{"layer": ..., "statistic": ..., "value": ...}, ...] in module order

Statistics, each a plain float per layer:
    update          ||f(x)|| / ||x||: a residual branch's output against the stream it is added to (post-LN U-ViT:
                    the block input; pre-LN CLIP and the VAE's residual blocks: the residual). Near 0, a block is
                    skipped by any error of its own.
    attn_max_prob   mean over queries and heads of the largest softmax probability; 1/L for a flat softmax, where
                    attention averages every token and swapped heads or a wrong scale change nothing.
    logit_std       standard deviation of the scaled attention logits q.k * scale.
    outlier         largest per-channel RMS of a norm's input over the median one: the outlier features of trained
                    transformers, which set fp16 headroom and FP8 scales.
    gn_mean_spread  largest |mean| / std over a GroupNorm input's groups: where E[x^2] - E[x]^2 cancels.
    max_abs         largest magnitude at a norm's input.
    guidance        ||cond - uncond|| / ||cond|| of the U-ViT's image and CLIP-image outputs in a batched guided step:
                    near 0, guidance scale 7 and scale 0 give the same prediction.
Pure: hooks on a copy's modules, one forward in the module's own dtype; imports nothing of engines.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from reference import autoencoder as ae
from reference import uvit as uv
from reference.pipeline import GuidedStep


def _rel(a: Tensor, b: Tensor) -> float:
    return (a.double().norm() / b.double().norm().clamp_min(1e-300)).item()


def _softmax_stats(q: Tensor, k: Tensor, scale: float, mask: Tensor | None = None) -> dict[str, float]:
    """q, k (B, H, L, D) -> mean largest probability and logit std of softmax(q k^T * scale + mask)."""
    logits = (q.double() @ k.double().transpose(-2, -1)) * scale  # (B, H, Lq, Lk)
    if mask is not None:
        logits = logits + mask.double()
    finite = logits[torch.isfinite(logits) & (logits > -1e30)]
    return {"attn_max_prob": logits.softmax(-1).amax(-1).mean().item(), "logit_std": finite.std().item()}


def _channel_outlier(x: Tensor) -> float:
    """x (..., C) -> max over channels of the RMS over everything else, over the median channel's."""
    rms = x.double().reshape(-1, x.shape[-1]).square().mean(0).sqrt()
    return (rms.max() / rms.median().clamp_min(1e-300)).item()


def _group_mean_spread(x: Tensor, groups: int) -> float:
    """x (N, C, H, W) -> max over (sample, group) of |mean| / std."""
    g = x.double().reshape(x.shape[0], groups, -1)
    return (g.mean(-1).abs() / g.std(-1).clamp_min(1e-300)).max().item()


class _Recorder:
    def __init__(self) -> None:
        self.rows: list[dict] = []
        self.handles: list = []

    def add(self, layer: str, statistic: str, value: float) -> None:
        self.rows.append({"layer": layer, "statistic": statistic, "value": float(value)})

    def hook(self, module: nn.Module, fn) -> None:
        self.handles.append(module.register_forward_hook(fn))

    def close(self) -> None:
        for h in self.handles:
            h.remove()


def _uvit_hooks(rec: _Recorder, name: str, block: uv.Block) -> None:
    def attn(m: uv.Attention, args: tuple, out: Tensor) -> None:
        (x,) = args
        B, L, C = x.shape
        qkv = m.qkv(x).reshape(B, L, 3, m.num_heads, C // m.num_heads).permute(2, 0, 3, 1, 4)  # (3, B, H, L, Dh)
        for key, value in _softmax_stats(qkv[0], qkv[1], m.scale).items():
            rec.add(f"{name}.attn", key, value)
        rec.add(f"{name}.attn", "update", _rel(out, x))

    def mlp(m: uv.Mlp, args: tuple, out: Tensor) -> None:
        rec.add(f"{name}.mlp", "update", _rel(out, args[0]))

    rec.hook(block.attn, attn)
    rec.hook(block.mlp, mlp)


def _norm_hook(rec: _Recorder, name: str, norm: nn.Module) -> None:
    def hook(m: nn.Module, args: tuple, out: Tensor) -> None:
        x = args[0]
        rec.add(name, "max_abs", x.abs().max().item())
        if isinstance(m, nn.GroupNorm):
            rec.add(name, "gn_mean_spread", _group_mean_spread(x, m.num_groups))
        else:
            rec.add(name, "outlier", _channel_outlier(x))

    rec.hook(norm, hook)


def _centered(x: Tensor) -> Tensor:
    """(N, C, H, W) less each channel's mean over the image: a VAE stream's offsets say nothing of its updates."""
    return x - x.mean(dim=(2, 3), keepdim=True)


def _decoder_hooks(rec: _Recorder, name: str, m: nn.Module) -> None:
    if isinstance(m, ae.ResnetBlock):

        def resnet(block: ae.ResnetBlock, args: tuple, out: Tensor) -> None:
            x = args[0]
            residual = x if block.nin_shortcut is None else block.nin_shortcut(x)
            rec.add(name, "update", _rel(_centered(out - residual), _centered(residual)))

        rec.hook(m, resnet)
    elif isinstance(m, ae.AttnBlock):

        def attn(block: ae.AttnBlock, args: tuple, out: Tensor) -> None:
            x = args[0]
            B, C, H, W = x.shape
            h = block.norm(x)
            q = block.q(h).reshape(B, 1, C, H * W).transpose(2, 3)  # (B, 1, HW, C)
            k = block.k(h).reshape(B, 1, C, H * W).transpose(2, 3)
            for key, value in _softmax_stats(q, k, C**-0.5).items():
                rec.add(name, key, value)
            rec.add(name, "update", _rel(_centered(out - x), _centered(x)))

        rec.hook(m, attn)


def _clip_hooks(rec: _Recorder, name: str, layer: nn.Module) -> None:
    def attn(m: nn.Module, args: tuple, kwargs: dict, out: tuple) -> None:
        x = kwargs.get("hidden_states", args[0] if args else None)
        mask = kwargs.get("attention_mask", args[1] if len(args) > 1 else None)
        B, L, C = x.shape
        split = lambda p: p(x).reshape(B, L, m.num_heads, m.head_dim).transpose(1, 2)  # noqa: E731  (B, H, L, Dh)
        for key, value in _softmax_stats(split(m.q_proj), split(m.k_proj), m.scale, mask).items():
            rec.add(f"{name}.self_attn", key, value)

    def whole(m: nn.Module, args: tuple, kwargs: dict, out: object) -> None:
        x = kwargs.get("hidden_states", args[0] if args else None)
        y = out[0] if isinstance(out, tuple) else out
        rec.add(name, "update", _rel(y - x, x))

    rec.handles.append(layer.self_attn.register_forward_hook(attn, with_kwargs=True))
    rec.handles.append(layer.register_forward_hook(whole, with_kwargs=True))


def _guidance_hook(rec: _Recorder, name: str, step: nn.Module) -> None:
    def hook(m: nn.Module, args: tuple, out: tuple) -> None:
        both = torch.cat([o.flatten(1) for o in out[:2]], dim=1)  # (2B, X): image and CLIP-image outputs
        cond, uncond = both.chunk(2)
        rec.add(name, "guidance", _rel(cond - uncond, cond))

    if step.batched:
        rec.hook(step.uvit, hook)


@torch.no_grad()
def measure(module: nn.Module, inputs: dict[str, Tensor]) -> list[dict]:
    """Run `module(**inputs)` once with statistic hooks on its layers; rows in hook-firing order."""
    from transformers.models.clip.modeling_clip import CLIPEncoderLayer

    rec = _Recorder()
    for name, m in module.named_modules():
        if isinstance(m, GuidedStep):
            _guidance_hook(rec, name or "step", m)
        elif isinstance(m, uv.Block):
            _uvit_hooks(rec, name, m)
        elif isinstance(m, (nn.LayerNorm, nn.GroupNorm)):
            _norm_hook(rec, name, m)
        elif isinstance(m, (ae.ResnetBlock, ae.AttnBlock)):
            _decoder_hooks(rec, name, m)
        elif isinstance(m, CLIPEncoderLayer):
            _clip_hooks(rec, name, m)
    try:
        module(**inputs)
    finally:
        rec.close()
    return rec.rows
