"""The ONNX export and the onnxruntime engine: every mark named and valued as the eager engine's, fp16 export."""

import importlib.util

import pytest
import torch

from engines import BackendUnavailable, build_engine, unavailable
from engines.components import component_module, default_marks, example_inputs

WHY = unavailable("onnxruntime", device=torch.device("cpu"), precision="fp32", cuda_graph=False)
pytestmark = pytest.mark.skipif(WHY is not None, reason=WHY or "")


@pytest.fixture(scope="module")
def models():
    from reference.checkpoints import load_models
    from reference.configs import ModelConfig

    return load_models(ModelConfig.from_name("tiny"), seed=0)


@pytest.mark.parametrize("component", ["clip", "uvit", "decoder"])
def test_onnx_marks_line_up_with_eager(models, component):
    marks = default_marks(component, component_module(component, models))
    inputs = example_inputs(component, models.config, device="cpu")
    engine = build_engine(component, models, backend="onnx", marks=marks)
    got, want = engine(**inputs), build_engine(component, models, marks=marks)(**inputs)
    assert list(got) == list(want)  # the same names, in execution order
    for name in want:
        a, b = got[name].double(), want[name].double()
        assert a.shape == b.shape and a.dtype == torch.float64
        assert ((a - b).norm() / b.norm()).item() < 1e-5, name
    assert engine.name == f"{component}/onnxruntime/fp32" and engine.seconds["export"] > 0
    assert engine.meta["providers"] == ["CPUExecutionProvider"]


def test_a_perturbed_layer_shows_in_its_onnx_mark(models):
    """The marks carry each layer's own value: perturbing one block moves its mark and not the one before."""
    import copy

    from engines.components import GuidedStep

    step = GuidedStep(copy.deepcopy(models.uvit), batched=True)
    with torch.no_grad():
        step.uvit.in_blocks[1].mlp.fc2.weight.mul_(1.01)
    marks = ("uvit.in_blocks.0", "uvit.in_blocks.1")
    inputs = example_inputs("uvit", models.config, device="cpu")
    clean = build_engine("uvit", models, backend="onnx", marks=marks)(**inputs)
    hurt = build_engine("uvit", models, backend="onnx", marks=marks, module=step)(**inputs)
    assert torch.allclose(clean["uvit.in_blocks.0"], hurt["uvit.in_blocks.0"])
    assert not torch.allclose(clean["uvit.in_blocks.1"], hurt["uvit.in_blocks.1"], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_export_writes_a_valid_static_graph(models, tmp_path, precision):
    """fp16 graphs cannot run on onnxruntime's CPU provider, but they export and check here."""
    import copy

    import onnx

    from engines.components import Marked
    from engines.ort import export
    from engines.runtime import cast

    module = cast(Marked(copy.deepcopy(models.decoder).eval(), ("decoder.mid.attn_1",)), precision)
    inputs = {k: v.to(torch.float16 if precision == "fp16" else v.dtype)
              for k, v in example_inputs("decoder", models.config, device="cpu").items()}  # fmt: skip
    path, names = export(module, inputs, tmp_path / "decoder.onnx")
    graph = onnx.load(str(path))
    onnx.checker.check_model(graph)
    assert names == ["decoder.mid.attn_1", "output"]
    assert [o.name for o in graph.graph.output] == names
    want = onnx.TensorProto.FLOAT16 if precision == "fp16" else onnx.TensorProto.FLOAT
    assert graph.graph.input[0].type.tensor_type.elem_type == want
    assert graph.graph.output[-1].type.tensor_type.elem_type == want
    # the weights are in the engine's precision (a few small fp32 constants remain: GroupNorm computes in fp32)
    sizes = {t: 0 for t in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16)}
    for init in graph.graph.initializer:
        if init.data_type in sizes:
            sizes[init.data_type] += int(torch.tensor(list(init.dims)).prod())
    assert sizes[want] > 0.95 * sum(sizes.values())
    dims = [d.dim_value for d in graph.graph.input[0].type.tensor_type.shape.dim]
    assert dims == list(inputs["z"].shape)  # static shapes


def test_export_dir_keeps_the_graph(models, tmp_path):
    build_engine("clip", models, backend="onnx", export_dir=str(tmp_path))
    assert (tmp_path / "model.onnx").stat().st_size > 1000


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(precision="bf16"), "numpy has no bfloat16"),
        (dict(precision="fp16"), "fp16 ONNX graphs need onnxruntime's CUDAExecutionProvider"),
        (dict(cuda_graph=True), "CUDA graphs need a CUDA device"),
    ],
    ids=["bf16", "fp16", "graph"],
)
def test_what_onnxruntime_cannot_do_here_is_said(models, kwargs, message):
    with pytest.raises(BackendUnavailable, match=message):
        build_engine("clip", models, backend="onnx", **kwargs)


def test_missing_onnxscript_names_the_package(monkeypatch, models):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnxscript" else real(name, *a))
    with pytest.raises(
        BackendUnavailable, match=r"onnxscript is not installed: pip install 'unidiffuser-bench\[onnx\]'"
    ):
        build_engine("clip", models, backend="onnx")


def test_onnx_groupnorm_keeps_fp32_accuracy_where_the_mean_dominates():
    """A decoder-sized group (1M elements) whose mean is large against its spread: the export stays as exact as
    PyTorch's fp32, where the exporter's InstanceNormalization is not."""
    import copy

    from engines.components import Marked
    from engines.ort import centre_groupnorms
    from reference.autoencoder import GroupNorm

    gn = GroupNorm(128).eval()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        gn.weight.copy_(torch.randn(128, generator=g))
        gn.bias.copy_(torch.randn(128, generator=g))
    x = torch.randn(1, 128, 512, 512, generator=g) * 0.05 + 3.0

    class Norm(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.norm = copy.deepcopy(gn)

        def forward(self, z):
            return self.norm(z)

    def ort_error(module) -> float:
        import tempfile
        from pathlib import Path

        import onnxruntime as ort

        from engines.ort import export

        with tempfile.TemporaryDirectory() as d:
            path, names = export(Marked(module, ()), {"z": x}, Path(d) / "gn.onnx")
            out = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(names, {"z": x.numpy()})[0]
        return ((torch.from_numpy(out).double() - want).norm() / want.norm()).item()

    with torch.no_grad():
        want = copy.deepcopy(gn).double()(x.double())
        fp32 = ((gn(x).double() - want).norm() / want.norm()).item()
    assert ort_error(centre_groupnorms(Norm())) < 4 * fp32
    assert ort_error(Norm()) > 4 * fp32  # what the exporter's own GroupNorm gives


def test_our_triton_attention_is_refused_before_export(models):
    with pytest.raises(ValueError, match=r"attention=triton is a Triton kernel, which an export to onnxruntime cannot"):
        build_engine("clip", models, backend="onnx", attention="triton")
