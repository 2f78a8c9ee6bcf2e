"""TensorRT 10: the component's ONNX graph (engines.ort, marks as graph outputs) parsed and built by TensorRT.

Written against the TensorRT 10.13 Python API (Builder, OnnxParser, IBuilderConfig, Runtime, ICudaEngine's named I/O
tensors, IExecutionContext.execute_async_v3); TensorRT cannot be installed on our machines, so this engine is not
exercised here (README). Precision is TensorRT's: an fp32 graph built with the FP16 (or BF16) flag, TF32 cleared for
fp32 engines so they match the strict-fp32 reference, and every normalisation layer kept in fp32 through its
compute precision: the seed's fp16 decoder went wrong in exactly those layers (GroupNorm statistics in fp16).
The engine runs on torch's current stream with torch-allocated buffers, so engines.runtime.Graphed captures it.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
from torch import Tensor

from engines import BackendUnavailable, register_engine, register_limits
from engines.runtime import check_inputs, finish
from engines.spec import defaults


@register_limits("trt")
def limits(*, device: torch.device, precision: str, cuda_graph: bool) -> None:
    if device.type != "cuda":
        raise BackendUnavailable(f"TensorRT engines run on a CUDA device; this one would run on {device.type}")
    if precision not in ("fp32", "fp16", "bf16"):
        raise BackendUnavailable(f"TensorRT engines here are fp32, fp16 or bf16, not {precision}")


def _torch_dtype(trt, dtype) -> torch.dtype:
    table = {trt.float32: torch.float32, trt.float16: torch.float16, trt.bfloat16: torch.bfloat16,
             trt.int64: torch.int64, trt.int32: torch.int32, trt.int8: torch.int8, trt.bool: torch.bool}  # fmt: skip
    return table[dtype]


def build_network(trt, path: Path, *, precision: str, workspace_gib: float, logger):
    """Parse the ONNX file and build a serialized engine (IHostMemory)."""
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # explicit batch is the only mode in TensorRT 10
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(path)):  # reads external weights beside the file
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT could not parse {path}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * (1 << 30)))
    if precision == "fp32":
        config.clear_flag(trt.BuilderFlag.TF32)
    else:
        config.set_flag(trt.BuilderFlag.FP16 if precision == "fp16" else trt.BuilderFlag.BF16)
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        if layer.type == trt.LayerType.NORMALIZATION:
            layer.__class__ = trt.INormalizationLayer  # the Python binding hands out the base class
            layer.compute_precision = trt.float32
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError(f"TensorRT failed to build an engine from {path} (see its log above)")
    return serialized


@register_engine("trt")
def build(marked, *, precision, device, example_inputs, cuda_graph, options, fault=None):
    import tensorrt as trt

    from engines.eager import EXPORTABLE, set_attention
    from engines.ort import export_marked

    opts = {**defaults("trt"), **options}  # checked by engines.spec
    # fp32 weights: TensorRT chooses the lower precision itself
    module = set_attention(marked, opts["attention"], EXPORTABLE)
    logger = trt.Logger(trt.Logger.WARNING)
    exporting = export_marked(module, example_inputs, fault=fault, export_dir=opts["export_dir"],
                              prefix="unidiffuser-trt-")  # fmt: skip
    with exporting as (path, names, exported):
        t0 = time.perf_counter()
        serialized = build_network(
            trt, path, precision=precision, workspace_gib=float(opts["workspace_gib"]), logger=logger
        )
        built = time.perf_counter() - t0
    engine = trt.Runtime(logger).deserialize_cuda_engine(serialized)
    context = engine.create_execution_context()
    io = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
    inputs_io = [n for n in io if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
    if set(inputs_io) != set(example_inputs):
        raise RuntimeError(f"TensorRT engine takes {sorted(inputs_io)}, not the component's {sorted(example_inputs)}")
    shapes = {n: (tuple(engine.get_tensor_shape(n)), _torch_dtype(trt, engine.get_tensor_dtype(n))) for n in names}
    static = dict(example_inputs)

    def run(**inputs: Tensor) -> dict[str, Tensor]:
        inputs = check_inputs(static, inputs)
        feeds = {n: inputs[n].contiguous() for n in inputs_io}  # held until the launch below is enqueued
        outs = {n: torch.empty(shape, dtype=dtype, device=device) for n, (shape, dtype) in shapes.items()}
        for n, t in {**feeds, **outs}.items():
            context.set_tensor_address(n, t.data_ptr())
        if not context.execute_async_v3(torch.cuda.current_stream().cuda_stream):
            raise RuntimeError("TensorRT execute_async_v3 failed (see its log)")
        return outs

    fn, seconds = finish(run, precision=precision, example_inputs=example_inputs, cuda_graph=cuda_graph)
    meta = {"backend": "trt", "tensorrt": trt.__version__, "norm_compute_precision": "fp32", **opts}
    return fn, {"export": exported, "trt_build": built, **seconds}, meta
