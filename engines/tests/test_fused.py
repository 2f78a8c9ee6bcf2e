"""Fused-layer options: same parameters, same marks, the reference's numbers within what the fusion changes."""

import copy

import pytest
import torch

from engines import build_engine, fused
from engines.components import example_inputs
from engines.tests import engine_against_eager
from reference.checkpoints import load_models
from reference.configs import ModelConfig


@pytest.fixture(scope="module")
def models():
    return load_models(ModelConfig.from_name("tiny"), seed=0)


@pytest.mark.parametrize("attention", ["math", "sdpa"])
def test_stacked_qkv_is_clip_with_one_projection(models, attention):
    encoder = copy.deepcopy(models.text_encoder)
    n_params = sum(p.numel() for p in encoder.parameters())
    from engines.eager import set_attention

    set_attention(encoder, attention)
    fused.apply(encoder, mlp="reference", qkv="stacked")
    layers = models.config.clip.layers
    assert sum(isinstance(m, fused.StackedQKVAttention) for m in encoder.modules()) == layers
    assert sum(p.numel() for p in encoder.parameters()) == n_params
    engine_against_eager(models, "clip", bound=1e-6, device=torch.device("cpu"), attention=attention, qkv="stacked")


def test_epilogue_mlp_keeps_the_parameters_and_on_the_cpu_the_numbers(models):
    engine = engine_against_eager(models, "uvit", bound=1e-6, device=torch.device("cpu"), mlp="epilogue")
    assert engine.meta["mlp"] == "epilogue"


@pytest.mark.parametrize("option, value", [("mlp", "fused"), ("qkv", "packed")])
def test_unknown_fusions_are_named(models, option, value):
    with pytest.raises(ValueError, match=f"unknown {option} '{value}'; choose from"):
        build_engine("clip", models, **{option: value})


@pytest.mark.gpu
@pytest.mark.parametrize("component, option", [("uvit", {"mlp": "epilogue"}), ("clip", {"qkv": "stacked"})])
def test_fusions_stay_within_fp16_error_on_the_gpu(models, component, option):
    models = load_models(ModelConfig.from_name("tiny"), seed=0).to(torch.device("cuda"))
    inputs = example_inputs(component, models.config, device="cuda")
    want = build_engine(component, models).output(**inputs).double()
    plain = build_engine(component, models, precision="fp16", attention="sdpa").output(**inputs).double()
    got = build_engine(component, models, precision="fp16", attention="sdpa", **option).output(**inputs).double()
    err, base = ((got - want).norm() / want.norm()).item(), ((plain - want).norm() / want.norm()).item()
    assert err < max(2 * base, 1e-3), (err, base)
