"""Fused-layer options: same parameters, same marks, the reference's numbers within what the fusion changes."""

import copy

import pytest
import torch
from torch import nn

from engines import build_engine, fused
from engines.components import component_module, example_inputs
from engines.spec import defaults
from engines.tests import engine_against_eager
from plugin.tests import rerun_under_interpreter
from reference.checkpoints import load_models
from reference.compare import rel_l2
from reference.configs import ModelConfig
from reference.tolerances import rule_for


@pytest.fixture(scope="module")
def models():
    return load_models(ModelConfig.from_name("tiny"), seed=0)


@pytest.mark.parametrize("attention", ["math", "sdpa"])
def test_stacked_qkv_is_clip_with_one_projection(models, attention):
    encoder = copy.deepcopy(models.text_encoder)
    n_params = sum(p.numel() for p in encoder.parameters())
    from engines.eager import set_attention

    set_attention(encoder, attention)
    fused.apply(encoder, {**defaults("eager"), "qkv": "stacked"})
    layers = models.config.clip.layers
    assert sum(isinstance(m, fused.StackedQKVAttention) for m in encoder.modules()) == layers
    assert sum(p.numel() for p in encoder.parameters()) == n_params
    engine_against_eager(models, "clip", device=torch.device("cpu"), attention=attention, qkv="stacked")


def test_triton_attention_is_clip_attention(models, kernel_device):
    """The stacked projection read in place by plugin.attention: every mark of fp32 CLIP within fp32 rounding."""
    dev = torch.device(kernel_device)
    on = models if dev.type == "cpu" else load_models(ModelConfig.from_name("tiny"), seed=0).to(dev)
    engine = engine_against_eager(on, "clip", device=dev, attention="triton", qkv="stacked")
    assert engine.meta["attention"] == "triton"


def test_triton_attention_is_uvit_attention(models, kernel_device):
    """plugin.attention.flash_attention in every U-ViT block: every mark of the fp32 U-ViT within fp32 rounding."""
    dev = torch.device(kernel_device)
    on = models if dev.type == "cpu" else load_models(ModelConfig.from_name("tiny"), seed=0).to(dev)
    engine = engine_against_eager(on, "uvit", device=dev, attention="triton")
    assert engine.meta["attention"] == "triton"
    module = component_module("uvit", models)
    from engines.eager import set_attention

    swapped = set_attention(copy.deepcopy(module), "triton")
    from reference import uvit as uv

    blocks = sum(type(m) is uv.Attention for m in module.modules())
    assert blocks and sum(type(m) is fused.FlashAttention for m in swapped.modules()) == blocks
    assert sum(p.numel() for p in swapped.parameters()) == sum(p.numel() for p in module.parameters())


def test_an_approximations_own_attention_is_kept_or_refused(models):
    """The reference that makes attention=int8-blocks keeps its attention under the default `math`, and refuses
    another kind, which would silently replace the approximation it is there to make."""
    from reference.approximations import Int8BlockAttentionEmulation, approximate

    module = approximate(component_module("uvit", models), ("attention=int8-blocks",))
    engine = build_engine("uvit", models, module=module, precision="fp64")
    assert engine.meta["attention"] == "math"
    with pytest.raises(ValueError, match="Int8BlockAttentionEmulation computes its own attention; attention=sdpa"):
        build_engine("uvit", models, module=module, attention="sdpa")
    from reference import uvit as uv

    blocks = sum(isinstance(m, uv.Block) for m in module.modules())
    assert blocks and sum(type(m) is Int8BlockAttentionEmulation for m in module.modules()) == blocks


def test_triton_attention_through_the_interpreter():
    rerun_under_interpreter(__file__, "triton_attention_is_clip_attention or triton_attention_is_uvit_attention")


@pytest.mark.parametrize(
    "component, options, problem",
    [
        ("clip", {}, "add qkv=stacked"),
        ("decoder", {}, r"attention='triton' is not a choice; choose from \['math', 'sdpa'\]"),
    ],
)
def test_triton_attention_outside_stacked_clip_is_refused(models, component, options, problem):
    with pytest.raises(ValueError, match=problem):
        build_engine(component, models, attention="triton", **options)


def test_epilogue_mlp_keeps_the_parameters_and_on_the_cpu_the_numbers(models):
    engine = engine_against_eager(models, "uvit", device=torch.device("cpu"), mlp="epilogue")
    assert engine.meta["mlp"] == "epilogue"


def test_epilogue_mlp_and_fp8_linears_are_refused_together(models):
    with pytest.raises(ValueError, match="mlp=epilogue runs fc1 as an fp16 cuBLASLt GEMM.*choose one"):
        build_engine("uvit", models, backend="inductor", precision="fp8", mlp="epilogue")


@pytest.mark.parametrize(
    "component, option, value",
    [("uvit", "mlp", "fused"), ("clip", "qkv", "packed"), ("decoder", "upsample", "bilinear"),
     ("decoder", "conv_out", "winograd")],
)  # fmt: skip
def test_unknown_fusions_are_named(models, component, option, value):
    with pytest.raises(ValueError, match=f"{option}='{value}' is not a choice; choose from"):
        build_engine(component, models, **{option: value})


@pytest.mark.gpu
@pytest.mark.parametrize(
    "component, option",
    [
        ("uvit", {"mlp": "epilogue"}),
        ("uvit", {"attention": "triton"}),
        ("clip", {"qkv": "stacked"}),
        ("clip", {"qkv": "stacked", "attention": "triton"}),
        ("decoder", {"upsample": "subpixel", "channels_last": True}),
        ("decoder", {"conv_out": "taps", "channels_last": True}),
        ("decoder", {"groupnorm": "stats", "channels_last": True}),
    ],
)
def test_fusions_stay_within_fp16_error_on_the_gpu(models, component, option):
    models = load_models(ModelConfig.from_name("tiny"), seed=0).to(torch.device("cuda"))
    inputs = example_inputs(component, models.config, device="cuda")
    want = build_engine(component, models).output(**inputs).double()
    plain = build_engine(component, models, precision="fp16", attention="sdpa").output(**inputs).double()
    got = build_engine(component, models, precision="fp16", **{"attention": "sdpa", **option}).output(**inputs).double()
    err, base = ((got - want).norm() / want.norm()).item(), ((plain - want).norm() / want.norm()).item()
    assert err < max(2 * base, 1e-3), (err, base)


@pytest.mark.parametrize("shape", [(2, 8, 6, 6), (1, 16, 5, 7)], ids=["square", "odd"])
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_subpixel_upsample_is_upsample_then_conv(shape, layout):
    from reference import autoencoder as ae

    torch.manual_seed(0)
    ref = ae.Upsample(shape[1]).double()
    sub = copy.deepcopy(ref)
    sub.__class__ = fused.SubpixelUpsample
    sub.fold()
    assert sub.phases.shape == (4 * shape[1], shape[1], 2, 2) and "phases" not in sub.state_dict()
    memory_format = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    x = torch.randn(shape, dtype=torch.float64).contiguous(memory_format=memory_format)
    got = sub(x)
    assert got.is_contiguous(memory_format=memory_format)
    torch.testing.assert_close(got, ref(x), rtol=1e-12, atol=1e-12)


def test_subpixel_upsample_decoder_engine_keeps_the_marks_on_the_cpu(models):
    engine = engine_against_eager(models, "decoder", device=torch.device("cpu"), upsample="subpixel")
    assert engine.meta["upsample"] == "subpixel"
    compiled = engine_against_eager(
        models, "decoder", device=torch.device("cpu"), backend="inductor", upsample="subpixel",
        channels_last=True,
    )  # fmt: skip
    assert compiled.meta["upsample"] == "subpixel"


@pytest.mark.parametrize("shape, out_channels", [((2, 8, 6, 6), 3), ((1, 16, 5, 7), 4)], ids=["rgb", "odd"])
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_tap_conv_is_the_conv(shape, out_channels, layout):
    torch.manual_seed(0)
    ref = nn.Conv2d(shape[1], out_channels, 3, padding=1).double()
    taps = copy.deepcopy(ref)
    taps.__class__ = fused.TapConv
    taps.fold()
    assert taps.taps.shape == (shape[1], 32 if out_channels == 3 else 40) and "taps" not in taps.state_dict()
    memory_format = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    x = torch.randn(shape, dtype=torch.float64).contiguous(memory_format=memory_format)
    got = taps(x)
    assert got.is_contiguous(memory_format=memory_format)
    torch.testing.assert_close(got, ref(x), rtol=1e-12, atol=1e-12)


def test_tap_conv_refuses_other_convs():
    conv = nn.Conv2d(8, 3, 3, padding=0)
    conv.__class__ = fused.TapConv
    with pytest.raises(ValueError, match="TapConv takes a 3x3 conv with padding 1"):
        conv.fold()


def test_tap_conv_decoder_engine_keeps_the_marks_on_the_cpu(models):
    engine = engine_against_eager(models, "decoder", device=torch.device("cpu"), conv_out="taps")
    assert engine.meta["conv_out"] == "taps"
    compiled = engine_against_eager(
        models, "decoder", device=torch.device("cpu"), backend="inductor", conv_out="taps",
        channels_last=True, upsample="subpixel", groupnorm="stats",
    )  # fmt: skip
    assert compiled.meta["conv_out"] == "taps"


def test_stats_groupnorm_decoder_engine_keeps_the_marks_on_the_cpu(models):
    """On the CPU the statistics and the normalisation run in torch; the restructured blocks (convs without their bias,
    the residual add in the statistics pass, statistics handed on) must still give every mark the reference's value."""
    for backend in ("eager", "inductor"):
        engine = engine_against_eager(
            models, "decoder", device=torch.device("cpu"), backend=backend, groupnorm="stats",
            channels_last=True, upsample="subpixel", conv_out="taps",
        )  # fmt: skip
        assert engine.meta["groupnorm"] == "stats"
    inputs = example_inputs("decoder", models.config, device="cpu")
    oracle = build_engine("decoder", models, precision="fp64").output(**inputs)
    plain = build_engine("decoder", models).output(**inputs)
    unmarked = build_engine("decoder", models, groupnorm="stats", channels_last=True)  # SiLU inside the norms
    assert rel_l2(unmarked.output(**inputs), oracle) <= rule_for("decoder", "fp32").bound(rel_l2(plain, oracle))


@pytest.mark.parametrize(
    "options, marks, problem",
    [
        ({"channels_last": True}, ("decoder.up.0.block.1.conv1",), r"\['conv1'\] without their modules"),
        ({"channels_last": True}, ("decoder.up.1.block.0.nin_shortcut",), r"\['nin_shortcut'\]"),
        ({}, (), "add channels_last=True"),
    ],
)
def test_stats_groupnorm_refuses_what_it_cannot_keep(models, options, marks, problem):
    with pytest.raises(ValueError, match=problem):
        build_engine("decoder", models, marks=marks, groupnorm="stats", **options)
