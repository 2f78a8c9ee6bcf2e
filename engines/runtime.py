"""What every backend shares: the dtype cast, the precision settings a call runs under, and CUDA-graph capture."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager as ContextManager

import torch
from torch import Tensor, nn

from reference.pipeline import strict_fp32

Fn = Callable[..., dict[str, Tensor]]


def cast(module: nn.Module, precision: str) -> nn.Module:
    from engines.registry import DTYPES

    return module.to(DTYPES[precision])


@contextlib.contextmanager
def precision_settings(precision: str, *, cudnn_benchmark: bool = False) -> Iterator[None]:
    """fp32 engines run in strict IEEE fp32 (no TF32), like the reference they are compared with. `cudnn_benchmark`
    lets cuDNN time its convolution algorithms on first use of a shape and keep the fastest (off in the reference:
    its choice may change the summation order between runs). Set around each call and restored after it: two engines
    built one after the other behave as each does alone."""
    saved = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = cudnn_benchmark or saved
    try:
        with strict_fp32() if precision == "fp32" else contextlib.nullcontext():
            yield
    finally:
        torch.backends.cudnn.benchmark = saved


@contextlib.contextmanager
def environ(name: str, value: str | None) -> Iterator[None]:
    """os.environ[name] = value while the block runs (None: left alone), then what it was. Not mock.patch.dict, which
    rewrites the whole environment on exit: an engine call that is not graphed pays this on every call."""
    if value is None:
        yield
        return
    saved = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = saved


def under(precision: str, fn: Fn, *, cudnn_benchmark: bool = False, around: Callable[[], ContextManager] = None) -> Fn:
    """`fn` run without autograd under its precision settings and, if given, the context `around()` makes (a backend's
    own settings, engines.inductor)."""

    def run(**inputs: Tensor) -> dict[str, Tensor]:
        with torch.no_grad(), precision_settings(precision, cudnn_benchmark=cudnn_benchmark):
            with around() if around is not None else contextlib.nullcontext():
                return fn(**inputs)

    return run


def check_inputs(static: dict[str, Tensor], inputs: dict[str, Tensor]) -> dict[str, Tensor]:
    """The inputs in the dtypes the engine was built for. Shapes must match; a floating input may come in another
    floating dtype (an fp16 CLIP feeding an fp32-input U-ViT step), as eager modules accept it, and is cast."""
    if inputs.keys() != static.keys():
        raise ValueError(f"inputs {sorted(inputs)} differ from the engine's {sorted(static)}")
    out = {}
    for k, v in inputs.items():
        want = static[k]
        if v.shape != want.shape or (
            v.dtype != want.dtype and not (v.is_floating_point() and want.is_floating_point())
        ):
            raise ValueError(
                f"input {k!r} is {tuple(v.shape)} {v.dtype}; this engine was built for {tuple(want.shape)} {want.dtype}"
            )
        out[k] = v.to(want.dtype)
    return out


class Graphed:
    """Capture `fn` once on static input buffers and replay it: warm-up on a side stream, capture, replay.

    Inputs are copied into the static buffers, and outputs are cloned out of the graph's memory, so a caller never
    holds a tensor that the next replay overwrites. `fn` is kept: the graph reads its weights and buffers by address,
    and were the module freed, the allocator would hand that memory out again (seen on the H100: garbage and NaN from
    the second replay on, and an out-of-range embedding index when CLIP's position ids were overwritten).
    """

    def __init__(self, fn: Fn, example_inputs: dict[str, Tensor], *, warmup: int = 3):
        self.fn = fn
        self.static_in = {k: v.clone() for k, v in example_inputs.items()}
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(warmup):
                fn(**self.static_in)
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.static_out = fn(**self.static_in)
        torch.cuda.synchronize()

    def __call__(self, **inputs: Tensor) -> dict[str, Tensor]:
        for k, v in check_inputs(self.static_in, inputs).items():
            self.static_in[k].copy_(v)
        self.graph.replay()
        return {k: v.clone() for k, v in self.static_out.items()}


def finish(
    fn: Fn,
    *,
    precision: str,
    example_inputs: dict[str, Tensor],
    cuda_graph: bool,
    cudnn_benchmark: bool = False,
    around: Callable[[], ContextManager] | None = None,
    warmup: int = 3,
) -> tuple[Fn, dict[str, float]]:
    """Wrap `fn` in its settings (`under`) and, if asked, a CUDA graph captured after `warmup` side-stream calls;
    returns it with the capture seconds."""
    fn = under(precision, fn, cudnn_benchmark=cudnn_benchmark, around=around)
    if not cuda_graph:
        return fn, {}
    t0 = time.perf_counter()
    graphed = Graphed(fn, example_inputs, warmup=warmup)
    return graphed, {"capture": time.perf_counter() - t0}


def swap_children(module: nn.Module, kind: type | tuple[type, ...], make: Callable[[nn.Module], nn.Module]) -> int:
    """Replace every submodule of type `kind` by `make(it)`; a mark (forward hook or pre-hook) on a replaced layer stays
    on it.
    Returns how many were replaced."""
    swapped = 0
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, kind):
                new = make(child)
                new._forward_hooks, new._forward_pre_hooks = child._forward_hooks, child._forward_pre_hooks
                setattr(parent, name, new)
                swapped += 1
    return swapped
