"""TensorRT-LLM: a registered name, so that asking for it says what is missing. The engine itself is issue #5."""

from __future__ import annotations

from engines import BackendUnavailable, register_engine


@register_engine("trtllm")
def build(marked, *, precision, device, example_inputs, cuda_graph, options):
    # build_engine has already checked that tensorrt_llm imports (engines.require).
    raise BackendUnavailable("the TensorRT-LLM engine is not written yet (issue #5); use eager, autocast or inductor")
