"""Building an engine: validate its spec (engines.spec), prepare the component (copy, dtype, marks) and hand it to the
backend module registered for it with `@register_engine(name)`. Nothing here changes reference/.
"""

from __future__ import annotations

import copy
import functools
import importlib
import importlib.util
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from engines import spec
from engines.components import COMPONENTS, DecodeToImage, Marked, check_marks, component_module
from engines.spec import EngineSpec, SpecError
from reference.checkpoints import Models

if TYPE_CHECKING:
    from engines.faults import Fault

# fp64 exists to measure the fp32 reference's own rounding error (the accuracy suite's noise floor). fp8 is an fp16
# engine whose U-ViT block linears run in float8 e4m3 (engines.fp8); the dtype here is that of everything else.
DTYPES = {
    "fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16, "fp8": torch.float16, "fp64": torch.float64
}  # fmt: skip
BACKEND_MODULES = ("eager", "inductor", "ort", "trt", "trtllm")  # imported on first use of the registry


class BackendUnavailable(RuntimeError):
    """A backend that cannot run on this machine; the message says what to install. Tests turn it into a skip."""


_NVIDIA = "from NVIDIA's index (pypi.nvidia.com)"
_ONNX = "pip install 'unidiffuser-bench[onnx]'"
# backend -> the Python modules it needs, each with how to install it
REQUIRES = {
    "onnxruntime": (("onnxruntime", _ONNX), ("onnxscript", _ONNX + " (torch's ONNX exporter needs it)")),
    "trt": (("tensorrt", f"pip install 'unidiffuser-bench[trt]' {_NVIDIA}"), ("onnxscript", _ONNX)),
    "trtllm": (("tensorrt_llm", f"pip install 'unidiffuser-bench[trtllm]' {_NVIDIA}"),),
}


def require(backend: str) -> None:
    """Raise BackendUnavailable, naming what to install, when one of the backend's packages is missing."""
    for module, how in REQUIRES.get(backend, ()):
        if importlib.util.find_spec(module) is None:
            raise BackendUnavailable(f"{module} is not installed: {how}")


def check_supported(
    backend: str, *, device: torch.device, precision: str, cuda_graph: bool, options: dict | None = None
) -> None:
    """Raise BackendUnavailable when this machine cannot build the engine: a missing package, the device, what the
    backend itself cannot do (its registered limits), or an option's library (engines.alternatives)."""
    from engines.alternatives import missing

    require(backend)
    check_device_support(device, precision=precision, cuda_graph=cuda_graph)
    if backend in LIMITS:
        LIMITS[backend](device=device, precision=precision, cuda_graph=cuda_graph)
    if why := missing(options or {}, device):
        raise BackendUnavailable(why)


def unavailable(
    backend: str, *, device: torch.device, precision: str, cuda_graph: bool, options: dict | None = None
) -> str | None:
    """Why this engine cannot be built here, or None: what a test reports as its skip reason."""
    try:
        check_supported(check_backend(backend), device=device, precision=precision, cuda_graph=cuda_graph,
                        options=options)  # fmt: skip
    except BackendUnavailable as e:
        return str(e)
    return None


@dataclass
class Engine:
    name: str  # component/backend/precision[/graph][+options], e.g. "uvit/inductor/fp16/graph"
    fn: Callable[..., dict[str, Tensor]]
    component: str
    backend: str
    precision: str
    cuda_graph: bool
    marks: tuple[str, ...]
    seconds: dict[str, float] = field(default_factory=dict)  # build, compile, capture: never part of a run time
    meta: dict[str, object] = field(default_factory=dict)  # backend settings, recorded in reports
    # what the engine computes differently from the reference on purpose (reference/approximations.py); the accuracy
    # suite compares it with a reference that does the same, and the image verdicts judge the approximation
    approximations: tuple[str, ...] = ()

    def __call__(self, **inputs: Tensor) -> dict[str, Tensor]:
        return self.fn(**inputs)

    def output(self, **inputs: Tensor) -> Tensor:
        return self.fn(**inputs)["output"]

    def close(self) -> None:
        self.fn = _closed

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _closed(**inputs: Tensor) -> dict[str, Tensor]:
    raise RuntimeError("this engine was closed; build a new one")


# name -> build(module, *, precision, device, example_inputs, cuda_graph, options, fault) -> (callable, seconds, meta)
ENGINES: dict[str, Callable] = {}
# name -> limits(*, device, precision, cuda_graph): raises BackendUnavailable for what this backend cannot do here
LIMITS: dict[str, Callable] = {}


def register_engine(name: str) -> Callable[[Callable], Callable]:
    def register(build: Callable) -> Callable:
        ENGINES[name] = build
        return build

    return register


def register_limits(name: str) -> Callable[[Callable], Callable]:
    def register(limits: Callable) -> Callable:
        LIMITS[name] = limits
        return limits

    return register


def backends() -> list[str]:
    for mod in BACKEND_MODULES:
        importlib.import_module(f"engines.{mod}")
    return sorted(ENGINES)


def check_backend(backend: str) -> str:
    name = spec.check_backend(backend)
    if name not in backends():
        raise SpecError(f"backend {name!r} has no engine module; registered: {backends()}")
    return name


def check_device_support(device: torch.device, *, precision: str, cuda_graph: bool) -> None:
    if cuda_graph and device.type != "cuda":
        raise BackendUnavailable(f"CUDA graphs need a CUDA device; this engine would run on {device.type}")
    if precision == "fp8" and device.type == "cuda" and torch.cuda.get_device_capability(device) < (8, 9):
        raise BackendUnavailable("fp8 engines need a GPU with FP8 tensor cores (compute capability 8.9 or newer)")
    if precision == "fp8" and device.type == "cpu" and not _cpu_scaled_mm():
        raise BackendUnavailable(f"fp8 engines on the CPU need torch._scaled_mm's CPU kernel (torch 2.13 has it; "
                                 f"this is torch {torch.__version__})")  # fmt: skip


@functools.cache
def _cpu_scaled_mm() -> bool:
    a = torch.ones(16, 16).to(torch.float8_e4m3fn)
    try:
        torch._scaled_mm(a, a.t(), scale_a=torch.ones(()), scale_b=torch.ones(()), out_dtype=torch.float16)
    except (RuntimeError, NotImplementedError):
        return False
    return True


def build_engine(
    component: str,
    models: Models,
    *,
    backend: str = "eager",
    precision: str = "fp32",
    cuda_graph: bool = False,
    marks: tuple[str, ...] = (),
    device: torch.device | str | None = None,
    postprocess: bool = False,
    module: nn.Module | None = None,
    fault: Fault | None = None,
    batch: int = 1,
    **options: object,
) -> Engine:
    """Build `component` of `models` (on their device unless `device` is given).

    `options` are the engine spec's, flat (engines.spec: e.g. attention="sdpa", guidance="two-calls",
    groupnorm="stats", channels_last=True, persistent_rows=2048); one that does not apply is a SpecError.
    `module` replaces the reference component (the accuracy suite passes one making declared approximations);
    `fault` is injected into the engine's module after the backend's transforms (engines.faults: the fault matrix);
    `postprocess` folds the uint8 conversion into the decoder; `batch` is the number of images a call takes (a
    graphed or compiled engine runs that batch alone).
    """
    from engines.components import example_inputs

    extras = (("uint8", "1"),) * postprocess + ((("fault", fault.label),) if fault else ())
    spec = EngineSpec.of(component, check_backend(backend), precision, cuda_graph, extras, **options)
    guidance = getattr(spec.options, "guidance", "batched")
    source = module if module is not None else component_module(component, models, guidance=guidance)
    device = torch.device(device) if device is not None else next(source.parameters()).device
    check_supported(spec.backend, device=device, precision=precision, cuda_graph=cuda_graph, options=spec.flat())
    marks = check_marks(component, source, tuple(marks))
    if postprocess and (component != "decoder" or marks or fault):
        raise ValueError("postprocess folds uint8 conversion into an unmarked, unfaulted decoder only")

    t0 = time.perf_counter()
    work = copy.deepcopy(source).to(device).eval().requires_grad_(False)
    work = DecodeToImage(work) if postprocess else work
    marked = Marked(work, marks)
    inputs = example_inputs(component, models.config, device=device, batch=check_batch(batch))
    backend_options = {k: v for k, v in spec.flat().items() if k != "guidance"}  # guidance chose the module above
    fn, seconds, meta = ENGINES[spec.backend](
        marked, precision=precision, device=device, example_inputs=inputs, cuda_graph=cuda_graph,
        options=backend_options, fault=fault,
    )  # fmt: skip
    seconds = {"build": time.perf_counter() - t0, **seconds}
    approximations = tuple(meta.pop("approximations", ()))
    meta = {**meta, "batch": batch} if batch != 1 else meta
    return Engine(spec.id, fn, component, spec.backend, precision, cuda_graph, marks, seconds, meta, approximations)


def check_batch(batch: object) -> int:
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise ValueError(f"batch is the number of images per call, a whole number of at least 1; got {batch!r}")
    return batch


__all__ = ["COMPONENTS", "ENGINES", "DTYPES", "BackendUnavailable", "Engine", "build_engine", "register_engine"]
