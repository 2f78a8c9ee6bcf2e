"""The two weight initialisations, and the statistics the trained-like one is made for (reference/activations.py)."""

from __future__ import annotations

import pytest
import torch

from engines.components import component_module, example_inputs
from reference.activations import measure
from reference.checkpoints import load_models
from reference.configs import ModelConfig
from reference.init import INITS, initialize

TINY = ModelConfig.from_name("tiny")


@pytest.fixture(scope="module")
def stats():
    models = load_models(TINY, seed=0)
    out = {}
    for c in ("clip", "uvit", "decoder"):
        rows = measure(component_module(c, models), example_inputs(c, TINY, device="cpu"))
        for r in rows:
            out.setdefault((c, r["statistic"]), []).append(r["value"])
    return out


def test_trained_like_is_the_default_and_both_are_named():
    assert INITS[0] == "trained-like" and set(INITS) == {"trained-like", "upstream"}
    assert load_models(TINY, seed=0).weights == "random (trained-like init, seed 0)"
    assert load_models(TINY, seed=0, init="upstream").weights == "random (upstream init, seed 0)"
    with pytest.raises(ValueError, match=r"unknown weight initialisation 'xavier'; choose from \['trained-like'"):
        load_models(TINY, init="xavier")
    with pytest.raises(ValueError, match="no initialisation for Linear"):
        initialize(torch.nn.Linear(2, 2), "upstream", torch.Generator())


def test_a_seed_gives_the_same_weights_and_another_seed_others():
    a, b, c = (load_models(TINY, seed=s).uvit.state_dict() for s in (0, 0, 1))
    assert all(torch.equal(a[k], b[k]) for k in a) and not all(torch.equal(a[k], c[k]) for k in a)


@pytest.mark.parametrize(
    "component, statistic, low, high",
    [
        ("uvit", "update", 0.3, 1.0),  # every block's branches a sizeable part of the stream
        ("uvit", "attn_max_prob", 3 / 146, 1.0),  # peaked: tiny has 146 tokens
        ("uvit", "guidance", 0.05, 1.0),  # guidance decides the prediction
        ("decoder", "gn_mean_spread", 10.0, 100.0),  # where fp16 GroupNorm statistics cancel (the max over norms)
        ("clip", "attn_max_prob", 0.1, 1.0),
    ],
)
def test_trained_like_weights_make_every_layer_matter(stats, component, statistic, low, high):
    values = stats[(component, statistic)]
    top = max(values) if statistic == "gn_mean_spread" else min(values)
    assert low <= top and max(values) <= high, values


def test_upstream_weights_leave_attention_flat_and_guidance_idle():
    """What the trained-like init exists for: at upstream's, a U-ViT softmax is about uniform over the 146 tokens."""
    models = load_models(TINY, seed=0, init="upstream")
    rows = measure(component_module("uvit", models), example_inputs("uvit", TINY, device="cpu"))
    flat = [r["value"] for r in rows if r["statistic"] == "attn_max_prob"]
    assert max(flat) < 2 / 146
    assert next(r["value"] for r in rows if r["statistic"] == "guidance") < 0.01


def test_statistics_measure_what_they_say():
    """A U-ViT whose q and k weights are zero attends uniformly: max probability 1/L, logits of zero spread."""
    models = load_models(TINY, seed=0)
    step = component_module("uvit", models)
    with torch.no_grad():
        for block in [*step.uvit.in_blocks, step.uvit.mid_block, *step.uvit.out_blocks]:
            block.attn.qkv.weight[: 2 * TINY.uvit.embed_dim] = 0
    rows = measure(step, example_inputs("uvit", TINY, device="cpu"))
    probs = [r["value"] for r in rows if r["statistic"] == "attn_max_prob"]
    assert probs == pytest.approx([1 / TINY.uvit.num_tokens] * len(probs))
