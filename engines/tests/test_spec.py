"""engines.spec: the one place an engine's options are checked, formatted and parsed."""

from __future__ import annotations

import pytest

from engines.recipes import LADDER, engine_specs
from engines.spec import EngineSpec, Fp8Options, SpecError


@pytest.mark.parametrize("spec", engine_specs(), ids=lambda s: s.id)
def test_every_recipe_engine_id_parses_back_to_its_spec(spec):
    assert EngineSpec.parse(spec.id) == spec and EngineSpec.parse(spec.id).id == spec.id


def test_ids_are_canonical_whatever_order_or_defaults_are_given_in():
    a = EngineSpec.of("decoder", "inductor", "fp16", True, upsample="subpixel", channels_last=True, groupnorm="torch")
    b = EngineSpec.parse("decoder/inductor/fp16/graph+upsample=subpixel,channels_last=True")
    assert a == b and a.id == "decoder/inductor/fp16/graph+channels_last=True,upsample=subpixel"
    assert EngineSpec.parse("decoder/eager/fp32+uint8=1").extras == (("uint8", "1"),)


def test_the_fast_fp8_recipe_is_typed():
    uvit = next(r for r in LADDER if r.name == "fast-fp8").builds["uvit"]
    assert uvit.options.fp8 == Fp8Options("row", "fast", "triton", "tanh", "triton")
    assert uvit.settings.persistent_rows == 8192 and uvit.options.attention == "triton"
    # options sorted by name, as every committed result names this engine
    assert uvit.id == (
        "uvit/inductor/fp8/graph+attention=triton,fp8_accumulate=fast,fp8_gelu=tanh,fp8_layernorm=triton,"
        "fp8_quantize=triton,fp8_scaling=row,persistent_rows=8192"
    )


@pytest.mark.parametrize(
    "args, options, message",
    [
        (("decoder",), {"qkv": "stacked"}, "option 'qkv' does not apply to decoder on eager; it takes"),
        (("uvit", "onnxruntime"), {"mlp": "epilogue"}, r"\['mlp'\] do not apply to onnxruntime"),
        (
            ("uvit", "trt"),
            {"attention": "triton"},
            "attention=triton is a Triton kernel, which an export to trt cannot",
        ),
        (("clip",), {"attention": "triton"}, "add qkv=stacked"),
        (("decoder",), {"groupnorm": "stats"}, "add channels_last=True"),
        (("uvit", "inductor", "fp8"), {"fp8_quantize": "triton"}, "add fp8_scaling=row"),
        (("uvit", "inductor", "fp8"), {"fp8_layernorm": "triton", "fp8_scaling": "row"}, "add fp8_quantize=triton"),
        (("uvit", "inductor", "fp8"), {"mlp": "epilogue"}, "choose one"),
        (
            ("clip",),
            {"attention": "sageattention"},
            r"attention='sageattention' is not a choice; choose from \['math', 'sdpa', 'triton'\]",
        ),
        (("uvit", "onnxruntime"), {"attention": "int8"}, r"attention='int8' is not a choice"),
        (("uvit",), {"long_skip": "split"}, "option 'long_skip' does not apply to uvit on eager"),
        (("decoder", "inductor", "fp8"), {}, "fp8 applies to the U-ViT's block linears"),
        (("uvit", "trt"), {"attention": "sageattention"}, "attention=sageattention is a Triton kernel, which an exp"),
        (("decoder",), {"attention": "sageattention"}, r"attention='sageattention' is not a choice"),
        (
            ("uvit", "inductor", "fp8"),
            {"fp8_kernels": "torchao", "fp8_scaling": "row", "fp8_quantize": "triton"},
            r"fp8_kernels=torchao runs torchao's linears, not our kernels: leave \['fp8_quantize=triton'\] out",
        ),
        (("uvit", "inductor", "fp8"), {"fp8_kernels": "torchao"}, "torchao's per-row recipe .*: add fp8_scaling=row"),
        (("uvit", "inductor", "fp16"), {"fp8_kernels": "torchao"}, "the fp8_\\* options apply to the U-ViT at pre"),
        (("decoder", "trtllm"), {"groupnorm": "layer"}, r"groupnorm='layer' is not a choice; choose from \['plugin'"),
        (("uvit", "trtllm"), {"groupnorm": "trt"}, "groupnorm applies to the decoder"),
        (("decoder",), {"channels_last": "yes"}, "channels_last is True or False, not 'yes'"),
        (("uvit", "inductor"), {"mode": "reduce-overhead"}, "mode='reduce-overhead' is not a choice"),
        (("uvit", "inductor"), {"persistent_rows": -1}, "persistent_rows is a row length .*, not -1"),
    ],
)
def test_specs_that_do_not_exist_are_refused_naming_the_choices(args, options, message):
    with pytest.raises(SpecError, match=message):
        EngineSpec.of(*args, **options)


@pytest.mark.parametrize(
    "text, message",
    [("uvit/inductor", "not an engine id"), ("uvit/inductor/fp16/graphs", "not an engine id"),
     ("uvit/inductor/fp16+attention", "options are key=value"),
     ("uvit/inductor/fp16+groupnorm=split", "does not apply")],
)  # fmt: skip
def test_ids_that_do_not_parse_say_why(text, message):
    with pytest.raises(SpecError, match=message):
        EngineSpec.parse(text)
