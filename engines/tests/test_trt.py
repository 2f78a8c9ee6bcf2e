"""The TensorRT engine. It needs tensorrt and a GPU, neither of which our machines have: these tests skip there,
naming what to install; where both exist they check the engine against eager, mark by mark."""

import pytest
import torch

from engines import build_engine, unavailable
from engines.components import example_inputs
from engines.tests import engine_against_eager

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


def why(precision: str = "fp32", cuda_graph: bool = False) -> str | None:
    return unavailable("trt", device=DEVICE, precision=precision, cuda_graph=cuda_graph)


@pytest.fixture(scope="module")
def models():
    from reference.checkpoints import load_models
    from reference.configs import ModelConfig

    return load_models(ModelConfig.from_name("tiny"), seed=0).to(DEVICE)


@pytest.mark.parametrize("component", ["clip", "uvit", "decoder"])
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_trt_marks_line_up_with_eager(models, component, precision):
    if reason := why(precision):
        pytest.skip(reason)
    engine = engine_against_eager(models, component, device=DEVICE, backend="trt", precision=precision)
    assert engine.seconds["trt_build"] > 0 and engine.meta["norm_compute_precision"] == "fp32"


def test_trt_engine_replays_in_a_cuda_graph(models):
    if reason := why("fp16", cuda_graph=True):
        pytest.skip(reason)
    inputs = example_inputs("decoder", models.config, device=DEVICE)
    plain = build_engine("decoder", models, backend="trt", precision="fp16").output(**inputs)
    graphed = build_engine("decoder", models, backend="trt", precision="fp16", cuda_graph=True)
    torch.testing.assert_close(graphed.output(**inputs), plain)
    assert graphed.seconds["capture"] > 0
