"""ONNX: each component exported with torch's exporter (torch.export -> ONNX, static shapes) and run by onnxruntime.

Marks become graph outputs, named as every other engine names them: the exported module is `Marked`, whose forward
returns {mark: tensor, ..., "output": tensor}, so each marked layer's output is an ONNX graph output (what Polygraphy's
"mark all" does, limited to the layers the suite compares). The same .onnx files feed the TensorRT engine (engines.trt).

onnxruntime runs fp32 on its CPU provider; fp16 needs onnxruntime-gpu's CUDA provider (the CPU provider lacks fp16
kernels for most of these operators), and numpy has no bfloat16. Outputs come back as torch tensors on the device the
engine was built for, so the comparator treats this engine like any other.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import tempfile
import time
import warnings
from pathlib import Path

import torch
from torch import Tensor, nn

from engines import BackendUnavailable, register_engine, register_limits
from engines.runtime import cast, check_inputs, swap_children
from engines.spec import defaults

OPSET = 18


class CenteredGroupNorm(nn.Module):
    """GroupNorm written out so that onnxruntime computes it as exactly as PyTorch does, in at least fp32.

    torch's exporter writes GroupNorm as InstanceNormalization, and a plain mean / centred-variance rewrite is fused by
    onnxruntime back into one normalisation kernel; both sum a whole group (up to 8 channels x 512 x 512 = 2M
    elements in the decoder) in one fp32 accumulator, and lose digits where the group's mean is large against its
    spread: the first failing mark of the full-size decoder (decoder.up.0.block.0.norm1, 54x the fp32 floor). Here
    every mean is a cascade of means over one axis at a time (at most 512 terms each), and the mean is corrected by
    the mean of the residuals before the variance is taken."""

    def __init__(self, gn: nn.GroupNorm):
        super().__init__()
        self.num_groups, self.eps, self.weight, self.bias = gn.num_groups, gn.eps, gn.weight, gn.bias

    def forward(self, x: Tensor) -> Tensor:  # (N, C, H, W)
        from reference.uvit import upcast

        N, C, H, W = x.shape
        groups = upcast(x).reshape(N, self.num_groups, C // self.num_groups, H, W)

        def mean(t: Tensor) -> Tensor:  # (N, G, C/G, H, W) -> (N, G, 1, 1, 1)
            return t.mean(-1, keepdim=True).mean(-2, keepdim=True).mean(-3, keepdim=True)

        shifted = groups - mean(groups)
        centred = shifted - mean(shifted)
        y = (centred * torch.rsqrt(mean(centred * centred) + self.eps)).reshape(x.shape)
        return (y * upcast(self.weight)[:, None, None] + upcast(self.bias)[:, None, None]).type_as(x)


def centre_groupnorms(module: nn.Module) -> nn.Module:
    """Swap every GroupNorm for CenteredGroupNorm, keeping the marks on them."""
    swap_children(module, nn.GroupNorm, CenteredGroupNorm)
    return module


def providers(device: torch.device, *, precision: str, cuda_graph: bool) -> list[str]:
    """The onnxruntime providers for this engine, or BackendUnavailable saying what is missing."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    cuda = "CUDAExecutionProvider" in available and device.type == "cuda"
    if precision not in ("fp32", "fp16", "bf16"):
        raise BackendUnavailable(f"ONNX engines are fp32 or fp16, not {precision}")
    if precision == "bf16":
        raise BackendUnavailable("onnxruntime engines take numpy inputs, and numpy has no bfloat16; use fp32 or fp16")
    if precision == "fp16" and not cuda:
        raise BackendUnavailable(
            "fp16 ONNX graphs need onnxruntime's CUDAExecutionProvider on a CUDA device "
            f"(providers here: {available}); pip install onnxruntime-gpu"
        )
    if cuda_graph and not cuda:
        raise BackendUnavailable("ONNX engines capture CUDA graphs through onnxruntime-gpu's CUDA provider only")
    return ["CUDAExecutionProvider", "CPUExecutionProvider"] if cuda else ["CPUExecutionProvider"]


@register_limits("onnxruntime")
def limits(*, device: torch.device, precision: str, cuda_graph: bool) -> None:
    providers(device, precision=precision, cuda_graph=cuda_graph)


def export(module: nn.Module, example_inputs: dict[str, Tensor], path: Path) -> tuple[Path, list[str]]:
    """`module(**example_inputs)` -> {name: tensor} exported to `path` (weights beside it when over 2 GB).

    Returns the path and the output names: the keys of the module's output dict, in order."""
    with torch.no_grad():
        names = list(module(**example_inputs))
    path.parent.mkdir(parents=True, exist_ok=True)
    # the exporter logs a line per torchvision op it skips (torchvision is not installed, nor needed): 12 per export
    registry = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = registry.level
    registry.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the exporter's notes on the same ops, as warnings
            program = torch.onnx.export(
                module, (), kwargs=example_inputs, dynamo=True, opset_version=OPSET,
                input_names=list(example_inputs), output_names=names, verbose=False,
            )  # fmt: skip
            program.save(str(path), external_data=True)
    finally:
        registry.setLevel(level)
    return path, names


@contextlib.contextmanager
def export_marked(marked: nn.Module, example_inputs: dict[str, Tensor], *, fault, export_dir: str, prefix: str):
    """`marked` with `fault` injected, exported to `export_dir`, or to a temporary folder removed on leaving: yields
    the graph's path, its output names and the export's seconds. What the export shares with engines.trt."""
    from engines.faults import inject

    if fault is not None:
        inject(marked.module, fault)
    folder = Path(export_dir) if export_dir else Path(tempfile.mkdtemp(prefix=prefix))
    try:
        t0 = time.perf_counter()
        path, names = export(marked, example_inputs, folder / "model.onnx")
        yield path, names, time.perf_counter() - t0
    finally:
        if not export_dir:
            shutil.rmtree(folder, ignore_errors=True)  # what was built from the graph holds it now


@register_engine("onnxruntime")
def build(marked, *, precision, device, example_inputs, cuda_graph, options, fault=None):
    import onnxruntime as ort

    from engines.eager import EXPORTABLE, set_attention

    opts = {**defaults("onnxruntime"), **options}  # checked by engines.spec
    chosen = providers(device, precision=precision, cuda_graph=cuda_graph)
    module = set_attention(cast(marked, precision), opts["attention"], EXPORTABLE)
    centre_groupnorms(module)  # torch's own export (InstanceNormalization) loses fp32 accuracy: docs/performance.md
    settings = ort.SessionOptions()
    settings.log_severity_level = 3  # warnings about unused initialisers are noise here
    provider_options = [{"enable_cuda_graph": "1"} if cuda_graph else {} for _ in chosen[:-1]] + [{}]
    exporting = export_marked(module, example_inputs, fault=fault, export_dir=opts["export_dir"],
                              prefix="unidiffuser-onnx-")  # fmt: skip
    with exporting as (path, names, exported):
        session = ort.InferenceSession(str(path), settings, providers=chosen, provider_options=provider_options)
    static = {k: v for k, v in example_inputs.items()}
    expected = {i.name for i in session.get_inputs()}
    if expected != set(static):
        raise RuntimeError(f"exported graph takes {sorted(expected)}, not the component's inputs {sorted(static)}")

    def run(**inputs: Tensor) -> dict[str, Tensor]:
        feeds = {k: v.detach().cpu().numpy() for k, v in check_inputs(static, inputs).items()}
        outs = session.run(names, feeds)
        return {n: torch.from_numpy(o).to(device) for n, o in zip(names, outs, strict=True)}

    meta = {"backend": "onnxruntime", "onnxruntime": ort.__version__, "providers": session.get_providers(),
            "opset": OPSET, **opts}  # fmt: skip
    return run, {"export": exported}, meta
