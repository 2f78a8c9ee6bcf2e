"""torch.compile with Inductor. Compile time is paid by the first call, timed here and kept out of run times."""

from __future__ import annotations

import contextlib
import time

import torch

from engines import BackendUnavailable, register_engine
from engines.components import repeated_layers
from engines.eager import libraries, prepare
from engines.runtime import finish, under

RECOMPILE_LIMIT = 512


@register_engine("inductor")
def build(marked, *, precision, device, example_inputs, cuda_graph, options, fault=None):
    module, opts = prepare(marked, precision=precision, options=options, backend="inductor", fault=fault)
    rows = opts["persistent_rows"]
    # Inductor's settings go in torch.compile's options, not only in a config patch around the call: dynamo reuses a
    # graph compiled for an equal module under equal options, so an engine whose settings lived only in a patch was
    # served the graph of the engine built before it (seen: persistent_rows=2048 after 0 compiled nothing).
    # persistent_rows: which reductions read their rows whole, chosen when compiling (engines.reductions).
    from torch._inductor import config as inductor_config
    from torch._inductor import list_mode_options

    # emulate_precision_casts: a fused kernel rounds each intermediate to the engine's dtype where eager code would
    # store it, instead of keeping it in fp32 registers; otherwise whether a value is rounded depends on what gets
    # fused, and marking a layer (which stores its output) moved a bf16 U-ViT's output by 0.7% (tiny, CPU).
    settings = {**list_mode_options(opts["mode"]), "emulate_precision_casts": True}
    if rows:
        if not hasattr(inductor_config, "inductor_choices_class"):
            raise BackendUnavailable(f"persistent_rows needs torch._inductor.config.inductor_choices_class, which "
                                     f"torch {torch.__version__} does not have")  # fmt: skip
        from engines import reductions

        settings["inductor_choices_class"] = reductions.Rows(rows)

    def around() -> contextlib.ExitStack:
        """What this engine's compiles and calls run under, set for each and restored after (a guard that fails at
        a call recompiles there). Every engine compiles the same forward code object with its own guards; without
        room for them (recompile_limit), dynamo would silently fall back to eager after 8 engines; past any of its
        limits (the 256 entries of all code objects together too) it raises here instead, for an engine that ran
        eagerly would be timed and judged as compiled. Marks are forward hooks, and by default dynamo does not guard
        on hooks, so an engine with marks could reuse the graph of an engine without them (seen: a marked CLIP
        returned no marks)."""
        stack = contextlib.ExitStack()
        stack.enter_context(_limits_said())  # outermost: it sees the error after the settings are restored
        limit = max(torch._dynamo.config.recompile_limit, RECOMPILE_LIMIT)
        stack.enter_context(torch._dynamo.config.patch(recompile_limit=limit, fail_on_recompile_limit_hit=True,
                                                       skip_nnmodule_hook_guards=False))  # fmt: skip
        stack.enter_context(inductor_config.patch(settings))
        if rows:
            stack.enter_context(reductions.installed())
        return stack

    if opts["compile"] == "regional":
        # Dynamo traces one layer of each kind and serves the others from that compile (their weights are inputs of
        # the graph): a build traces two U-ViT blocks instead of 29, at the cost of fusions across layers; the rest
        # runs eagerly, inside the CUDA graph where there is one. Marks inside a layer make each layer a compile.
        for layer in repeated_layers(module):
            layer.compile(backend="inductor", options=settings, dynamic=False)
        compiled = module
    else:
        compiled = torch.compile(module, backend="inductor", options=settings, dynamic=False)
    t0 = time.perf_counter()
    library = libraries(opts)
    under(precision, compiled, around=around, **library)(**example_inputs)  # the first call compiles
    if device.type == "cuda":
        torch.cuda.synchronize()
    compile_seconds = time.perf_counter() - t0
    fn, seconds = finish(
        compiled, precision=precision, example_inputs=example_inputs, cuda_graph=cuda_graph, around=around, **library
    )
    meta = {"backend": "inductor", "torch": torch.__version__, "recompile_limit": RECOMPILE_LIMIT, **opts}
    return fn, {"compile": compile_seconds, **seconds}, meta


@contextlib.contextmanager
def _limits_said():
    """dynamo's recompile limit, reached at a build or at a call that recompiles, as what it means for this engine
    and what to do."""
    try:
        yield
    except torch._dynamo.exc.FailOnRecompileLimitHit as e:
        config = torch._dynamo.config
        raise RuntimeError(
            f"this process has compiled so many engines that dynamo reached its recompile limits (recompile_limit "
            f"{max(config.recompile_limit, RECOMPILE_LIMIT)} per code object, accumulated_recompile_limit "
            f"{config.accumulated_recompile_limit} in all): this engine would have run eagerly. Build it in a new "
            f"process, or call torch._dynamo.reset() between engines"
        ) from e
