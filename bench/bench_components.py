"""`pytest bench --benchmark-only`: one component, one engine, one measurement.

Ids read component-backend-precision[-graph][-option=value], so `-k "uvit and fp16"` selects any slice. Engines are
built by a session fixture before timing; build, compile and capture seconds go to extra_info, never into a round.
"""

from __future__ import annotations

import pytest
import torch

from bench.clocks import ClockSampler
from bench.flops import component_flops, flops_by_kind
from bench.timing import Events, cuda_clock, peak_memory_mib, reset_peak_memory, summary_ms
from engines.components import example_inputs


def expected_shape(component: str, cfg) -> tuple[int, ...]:
    u = cfg.uvit
    return {
        "clip": (1, u.num_text_tokens, u.text_dim),
        "uvit": (1, u.x_dim),
        "decoder": (1, cfg.autoencoder.out_ch, cfg.image_size, cfg.image_size),
    }[component]


@pytest.mark.benchmark(timer=cuda_clock, disable_gc=True)
def test_component(benchmark, bench_case, engine_for, model_config, device, rounds):
    component, build = bench_case
    engine = engine_for(component, build)
    inputs = example_inputs(component, model_config, device=device)
    timed = Events(engine.output, device=device, label=engine.name)
    benchmark.group = component
    reset_peak_memory(device)
    with ClockSampler(device) as clocks:
        out = benchmark.pedantic(
            timed, kwargs=inputs, rounds=rounds["component"], warmup_rounds=rounds["component_warmup"], iterations=1
        )
    # --benchmark-disable makes pedantic a single untimed call: the code path runs, nothing is measured
    ms = summary_ms(timed.ms(skip=0 if benchmark.disabled else rounds["component_warmup"]))
    guidance = build.flat().get("guidance", "batched")
    nonfinite = int((~torch.isfinite(out.float())).sum())  # kept with the times: a time of NaN outputs is no result
    flops = component_flops(component, model_config.name, guidance=guidance)
    benchmark.extra_info.update(
        component=component, case=build.id, engine=engine.name, backend=build.backend,
        precision=build.precision,
        cuda_graph=build.cuda_graph, options=",".join(f"{k}={v}" for k, v in build.flat().items()) or "-",
        size=model_config.name, device=str(device), **ms, flops=flops, tflops=flops / ms["p50_ms"] / 1e9,
        flops_by_kind=flops_by_kind(component, model_config.name, guidance=guidance),
        peak_mib=peak_memory_mib(device), **{f"{k}_s": v for k, v in engine.seconds.items()},
        fp32_matmul="ieee" if build.precision == "fp32" else "-", nonfinite_outputs=nonfinite, **clocks.summary(),
    )  # fmt: skip
    assert out.shape == expected_shape(component, model_config)
    assert not nonfinite, f"{engine.name}: {nonfinite} of {out.numel()} output values are NaN/Inf"


@pytest.mark.gpu
@pytest.mark.benchmark(timer=cuda_clock, group="peak")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float8_e4m3fn], ids=["fp16", "bf16", "fp8"])
def test_matmul_peak(benchmark, dtype, rounds):
    """The measured dense matmul rate the reports divide by (PEAK_N^3 on random data, not zeros); fp8: e4m3 operands
    through torch._scaled_mm to an fp16 result, as the FP8 engines' linears."""
    from bench.ceilings import PEAK_N as n

    if dtype.itemsize == 1 and torch.cuda.get_device_capability() < (8, 9):
        pytest.skip("fp8 matmuls need a GPU with FP8 tensor cores (compute capability 8.9 or newer)")
    a, b = (torch.randn(n, n, device="cuda").to(dtype) for _ in range(2))
    matmul = torch.matmul if dtype.itemsize > 1 else _scaled_mm
    timed = Events(matmul, device=torch.device("cuda"), label="matmul")
    with ClockSampler(torch.device("cuda")) as clocks:
        benchmark.pedantic(timed, args=(a, b), rounds=rounds["component"], warmup_rounds=rounds["component_warmup"])
    ms = summary_ms(timed.ms(skip=0 if benchmark.disabled else rounds["component_warmup"]))
    benchmark.extra_info.update(component="matmul-peak", precision=str(dtype).split(".")[-1], **ms,
                                tflops=2 * n**3 / ms["p50_ms"] / 1e9, **clocks.summary())  # fmt: skip


def _scaled_mm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    one = torch.ones((), device=a.device)
    return torch._scaled_mm(a, b.t(), scale_a=one, scale_b=one, out_dtype=torch.float16)  # b.t(): column-major
