"""The whole 50-call DPM-Solver++ loop as one engine, optionally one CUDA graph with the solver arithmetic inside.

    sampler = build_sampler(models, backend="inductor", precision="fp16", cuda_graph=True, attention="sdpa")
    x_end = sampler.output(x=x, text=text, text_noise=noise.text)   # x (B, X), text (B, 77, T), noise (calls, B, 77, T)

The loop can be captured because nothing in it reads the GPU from the host: the schedule's coefficients are Python
floats and per-call times are slices of one device tensor (reference.dpm_solver.make_plan), and every call's fresh
uncond text noise is drawn before the loop from the image's seeded generator (reference.pipeline.draw_noise), so a
graphed image has exactly the reference's random numbers.
"""

from __future__ import annotations

import time

import torch
from torch import Tensor

from engines import Engine, build_engine
from engines.runtime import finish
from engines.spec import EngineSpec
from reference import dpm_solver
from reference.checkpoints import Models


def sampler_inputs(models: Models, *, calls: int, seed: int = 0, batch: int = 1) -> dict[str, Tensor]:
    """Random inputs of the loop of `batch` images (drawn on the CPU, then on the models' device)."""
    cfg, device = models.config.uvit, next(models.uvit.parameters()).device
    g = torch.Generator().manual_seed(seed)
    inputs = {
        "x": torch.randn(batch, cfg.x_dim, generator=g),
        "text": torch.randn(batch, cfg.num_text_tokens, cfg.text_dim, generator=g),
        "text_noise": torch.randn(calls, batch, cfg.num_text_tokens, cfg.text_dim, generator=g),
    }
    return {k: v.to(device) for k, v in inputs.items()}


def build_sampler(
    models: Models,
    *,
    backend: str = "eager",
    precision: str = "fp32",
    cuda_graph: bool = False,
    plan: dpm_solver.Plan | None = None,
    batch: int = 1,
    **options: object,
) -> Engine:
    """The guided-step engine of `backend`/`precision` (never graphed on its own) run over the whole plan, for
    `batch` images a call."""
    t0 = time.perf_counter()
    plan = plan or dpm_solver.make_plan()
    step = build_engine("uvit", models, backend=backend, precision=precision, batch=batch, **options)
    device = next(models.uvit.parameters()).device
    # each call's values repeated per image: call k's are [k B, k B + B)
    t_model, alpha, sigma = (v.repeat_interleave(batch).to(device) for v in (plan.t_model, plan.alpha, plan.sigma))

    def loop(x: Tensor, text: Tensor, text_noise: Tensor) -> dict[str, Tensor]:
        def data_prediction(x: Tensor, k: int) -> Tensor:
            at = slice(k * batch, k * batch + batch)
            return step.fn(
                x=x, text=text, text_noise=text_noise[k], t_model=t_model[at], alpha=alpha[at], sigma=sigma[at]
            )["output"]

        return {"output": dpm_solver.sample(data_prediction, x, plan)}

    # One warm-up pass before capture, not three: a pass is 50 steps (half a second at full size), and the step
    # engine has already run once, when it was compiled.
    fn, seconds = finish(
        loop,
        precision=precision,
        example_inputs=sampler_inputs(models, calls=plan.calls, batch=batch),
        cuda_graph=cuda_graph,
        warmup=1,
    )
    seconds = {**{f"step_{k}": v for k, v in step.seconds.items()}, **seconds, "build": time.perf_counter() - t0}
    # the U-ViT step's spec, graphed as a whole loop: named as the sampler it is
    name = "sampler" + EngineSpec.of("uvit", step.backend, precision, cuda_graph, **options).id.removeprefix("uvit")
    meta = {**step.meta, "calls": plan.calls, "graph": "whole loop" if cuda_graph else "none"}
    return Engine(name, fn, "sampler", step.backend, precision, cuda_graph, (), seconds, meta)
