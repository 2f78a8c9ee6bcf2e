"""The TensorRT-LLM engine. Its weight map needs no TensorRT and is checked here against the reference modules; the
networks need tensorrt_llm and a GPU, which our machines lack: those tests skip there, naming what to install, and
where both exist they check the engine against eager, mark by mark."""

import pytest
import torch

from engines import BackendUnavailable, build_engine, unavailable
from engines.components import component_module, example_inputs
from engines.tests import engine_against_eager
from engines.trtllm import component_of, weights
from reference.checkpoints import load_models
from reference.configs import ModelConfig
from reference.pipeline import GuidedStep

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


@pytest.fixture(scope="module")
def models():
    return load_models(ModelConfig.from_name("tiny"), seed=0)


@pytest.mark.parametrize("component", ["uvit", "decoder"])
def test_weights_keep_the_reference_names(models, component):
    module = component_module(component, models)
    w = weights(module, "fp16")
    ref = dict(module.named_parameters())
    assert list(w) == list(ref)
    for name, t in w.items():
        norm = ".norm" in name or "norm_out" in name  # every LayerNorm / GroupNorm of these two models
        assert t.dtype == (torch.float32 if norm else torch.float16), name
        assert torch.equal(t, ref[name].detach().to(t.dtype)), name


def test_clip_weights_stack_q_k_v_and_drop_text_model(models):
    module = component_module("clip", models)
    w, ref = weights(module, "bf16"), dict(module.named_parameters())
    assert not any("text_model." in n or "q_proj" in n or "k_proj" in n or "v_proj" in n for n in w)
    assert sum(t.numel() for t in w.values()) == sum(p.numel() for p in ref.values())
    layers = module.clip.config.num_hidden_layers
    assert sum(n.endswith("self_attn.qkv.weight") for n in w) == layers
    attn = [m for n, m in module.named_modules() if n.endswith("layers.0.self_attn")][0]
    stacked = torch.cat([attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight]).to(torch.bfloat16)
    assert torch.equal(w["clip.encoder.layers.0.self_attn.qkv.weight"], stacked)
    assert w["clip.encoder.layers.0.layer_norm1.weight"].dtype == torch.float32
    assert w["clip.embeddings.token_embedding.weight"].dtype == torch.bfloat16


def test_only_the_batched_step_and_the_three_components_have_networks(models):
    assert component_of(component_module("uvit", models)) == "uvit"
    with pytest.raises(ValueError, match="guidance='batched'"):
        component_of(GuidedStep(models.uvit, batched=False))
    with pytest.raises(ValueError, match="no network for Linear"):
        component_of(torch.nn.Linear(2, 2))


def test_missing_package_is_named():
    why = unavailable("trtllm", device=torch.device("cuda"), precision="fp16", cuda_graph=False)
    try:
        import tensorrt_llm  # noqa: F401
    except ImportError:
        assert why and "tensorrt_llm" in why and "pip install" in why
    else:
        assert why is None


def why(precision: str = "fp32", cuda_graph: bool = False) -> str | None:
    return unavailable("trtllm", device=DEVICE, precision=precision, cuda_graph=cuda_graph)


@pytest.mark.parametrize("component", ["clip", "uvit", "decoder"])
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_trtllm_marks_line_up_with_eager(models, component, precision):
    if reason := why(precision):
        pytest.skip(reason)
    models = models.to(DEVICE)
    engine = engine_against_eager(models, component, device=DEVICE, backend="trtllm", precision=precision)
    assert engine.seconds["trtllm_build"] > 0 and engine.meta["norm_precision"] == "fp32"


@pytest.mark.parametrize("groupnorm", ["plugin", "trt"])
def test_trtllm_decoder_groupnorm_kernels_replay_in_a_cuda_graph(models, groupnorm):
    if reason := why("fp16", cuda_graph=True):
        pytest.skip(reason)
    models = models.to(DEVICE)
    inputs = example_inputs("decoder", models.config, device=DEVICE)
    plain = build_engine("decoder", models, backend="trtllm", precision="fp16", groupnorm=groupnorm)
    graphed = build_engine("decoder", models, backend="trtllm", precision="fp16", groupnorm=groupnorm, cuda_graph=True)
    torch.testing.assert_close(graphed.output(**inputs), plain.output(**inputs))


def test_unknown_groupnorm_is_refused(models):
    if reason := why("fp16"):
        pytest.skip(reason)
    with pytest.raises(ValueError, match="unknown groupnorm"):
        build_engine("decoder", models.to(DEVICE), backend="trtllm", precision="fp16", groupnorm="cudnn")


def test_build_without_the_package_says_what_to_install(models):
    if why("fp32") is None:
        pytest.skip("tensorrt_llm is installed here")
    with pytest.raises(BackendUnavailable, match="tensorrt_llm"):
        build_engine("decoder", models, backend="trtllm")
