"""Proof that the suite finds faults: perturb one layer and the comparison must name exactly that layer first.

For each component at an early, a middle and a late layer: a 1e-3 relative error in a weight, a GroupNorm whose
statistics are computed in fp16, and the U-ViT's unpatchify in the conv-weight order (which no mark sits on, so the
final output is the first to fail while `uvit.decoder_pred` still passes). A clean fp32 run must name nothing.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import Tensor, nn

import reference.uvit
from engines import build_engine
from engines.components import component_module, module_by_mark
from reference.compare import RunResult, compare_simple, first_failure
from reference.tolerances import tolerance_for


def perturb_weight(module: nn.Module) -> None:
    """Multiply each weight by (1 +/- 1e-3), signs random: a 1e-3 relative error that LayerNorm cannot undo."""
    g = torch.Generator().manual_seed(0)
    sign = torch.randint(0, 2, module.weight.shape, generator=g).to(module.weight) * 2 - 1
    with torch.no_grad():
        module.weight.mul_(1 + 1e-3 * sign)


class Fp16StatsGroupNorm(nn.GroupNorm):
    """The fault the original work hunted: mean and variance held in fp16 (E[x^2] - E[x]^2 in half precision)."""

    def forward(self, x: Tensor) -> Tensor:
        N, C = x.shape[:2]
        h = x.reshape(N, self.num_groups, -1).half()
        mean = h.mean(-1, keepdim=True)
        var = ((h * h).mean(-1, keepdim=True) - mean * mean).clamp_min(0)
        y = ((h - mean) * torch.rsqrt(var + self.eps)).float().reshape_as(x)
        return y * self.weight[None, :, None, None] + self.bias[None, :, None, None]


def fp16_groupnorm(module: nn.GroupNorm) -> nn.Module:
    faulty = Fp16StatsGroupNorm(module.num_groups, module.num_channels, module.eps)
    faulty.load_state_dict(module.state_dict())
    return faulty


def conv_order_unpatchify(x: Tensor, in_chans: int) -> Tensor:
    """The classic bug: (p1 p2 C) read as (C p1 p2), the conv weight's layout."""
    B, N, P = x.shape
    p, h = int((P // in_chans) ** 0.5), int(N**0.5)
    return x.reshape(B, h, h, in_chans, p, p).permute(0, 3, 1, 4, 2, 5).reshape(B, in_chans, h * p, h * p)


# (component, position, fault, target mark): the target is where the suite must say the run departs.
FAULTS = [
    ("clip", "early", "weight", "clip.encoder.layers.0.self_attn.k_proj"),
    ("clip", "middle", "weight", "clip.encoder.layers.{mid}.mlp.fc1"),
    ("clip", "late", "weight", "encode_prefix"),
    ("uvit", "early", "weight", "uvit.in_blocks.0.mlp.fc1"),
    ("uvit", "middle", "weight", "uvit.mid_block.attn.qkv"),
    ("uvit", "late", "weight", "uvit.out_blocks.{last}.skip_linear"),
    ("uvit", "late", "unpatchify", "output"),
    ("decoder", "early", "weight", "decoder.conv_in"),
    ("decoder", "early", "fp16-groupnorm", "decoder.mid.block_1.norm1"),
    ("decoder", "middle", "fp16-groupnorm", "decoder.up.2.block.1.norm2"),
    ("decoder", "middle", "weight", "decoder.up.1.block.0.nin_shortcut"),
    ("decoder", "late", "fp16-groupnorm", "decoder.norm_out"),
]


def resolve(target: str, models) -> str:
    mid = models.config.clip.layers // 2
    last = models.config.uvit.depth // 2 - 1
    return target.format(mid=mid, last=last)


def run(models, component: str, module: nn.Module, marks: tuple[str, ...], inputs: dict) -> RunResult:
    with build_engine(component, models, module=module, marks=marks) as engine:
        return RunResult(engine.name, engine(**inputs))


@pytest.mark.parametrize("component, position, fault, target", FAULTS, ids=[f"{c}-{p}-{f}" for c, p, f, _ in FAULTS])
def test_fault_is_named_as_the_first_failure(models, reference_runs, monkeypatch, component, position, fault, target):
    target = resolve(target, models)
    ref = reference_runs(component)
    marks = ref.marks + ((target,) if target not in ref.marks and target != "output" else ())
    clean = component_module(component, models)
    compare = compare_simple(tolerance=tolerance_for(component, "fp32")[0], floors=ref.floors)
    reference_run = run(models, component, clean, marks, ref.inputs)

    assert (
        first_failure(compare(run(models, component, copy.deepcopy(clean), marks, ref.inputs), reference_run)) is None
    )

    faulty = copy.deepcopy(clean)
    layers = module_by_mark(faulty)
    if fault == "weight":
        perturb_weight(layers[target])
    elif fault == "fp16-groupnorm":
        parent, _, name = target.rpartition(".")
        setattr(layers[parent], name, fp16_groupnorm(layers[target]))
    else:
        monkeypatch.setattr(reference.uvit, "unpatchify", conv_order_unpatchify)
    results = compare(run(models, component, faulty, marks, ref.inputs), reference_run)
    assert first_failure(results) == target, {m: f"{r.rel_l2:.2e}/{r.bound:.2e}" for m, r in results.items()}
    if fault == "unpatchify":
        assert results["uvit.decoder_pred"].passed


def test_a_nan_is_its_own_verdict(models, reference_runs):
    from reference.compare import first_nonfinite

    ref = reference_runs("decoder")
    faulty = copy.deepcopy(component_module("decoder", models))
    with torch.no_grad():
        module_by_mark(faulty)["decoder.mid.attn_1.q"].bias.fill_(float("nan"))
    results = run(models, "decoder", faulty, ref.marks, ref.inputs)
    assert first_nonfinite(results) == "decoder.mid.attn_1"
    compared = compare_simple(tolerance=tolerance_for("decoder", "fp32")[0])(results, ref.run)
    assert compared["decoder.mid.attn_1"].nonfinite > 0 and not compared["decoder.mid.attn_1"]
