"""What a run will hold in memory, estimated before it starts, against what the device has free.

The models are built on the meta device (no memory, no weights) and run once with hooks that count the elements of
every marked layer's output, so the estimate follows the configuration and the marks as they are, not a table.

    need = estimate(cfg, judged=("decoder",))   # bytes: the accuracy suite judging the decoder
    check_fits(need, device, what="pytest reference --size full -k decoder")
"""

from __future__ import annotations

import functools
import os

import torch

from reference.configs import ModelConfig

GIB = 2**30
# The interpreter with torch, transformers and Inductor imported: a tiny run's resident size before any model.
BASELINE_BYTES = int(0.8 * GIB)
# Per parameter of a judged component: the oracle's fp64 copy and the anchored oracle's (reference.tests.References).
JUDGED_PARAM_BYTES = 16
# Per element of a marked output the suite holds: the fp64 oracle's and the anchored oracle's (8 + 8), the plain runs'
# and the engine runs' (4 each at fp32, 2 at bf16), and what the comparison makes on the way. Calibrated on the tiny
# decoder (11.9 M marked elements; the suite's peak resident size was 1.41 GB on the CPU, 0.6 GB over the baseline).
MARK_BYTES = 48
# One image through the pipeline: the largest activation and the few alive beside it, fp32.
ACTIVATION_COPIES = 6


@functools.cache
def _shapes(size: str) -> dict[str, tuple[int, int, int]]:
    """component -> (parameters, elements of its marked outputs, elements of its largest activation)."""
    from bench.flops import meta_models

    cfg = ModelConfig.from_name(size)
    with torch.device("meta"):
        models = meta_models(cfg)
    return {c: _count(c, models) for c in ("clip", "uvit", "decoder")}


def _count(component: str, models) -> tuple[int, int, int]:
    from engines.components import component_module, default_marks, example_inputs, module_by_mark

    module = component_module(component, models)
    marked, counts = set(default_marks(component, module)), {"marked": 0, "largest": 0}

    def hook(name: str):
        def count(_module, _args, output) -> None:
            first = output[0] if isinstance(output, (tuple, list)) else output
            n = first.numel() if isinstance(first, torch.Tensor) else 0
            counts["marked"] += n if name in marked else 0
            counts["largest"] = max(counts["largest"], n)

        return count

    hooks = [m.register_forward_hook(hook(n)) for n, m in module_by_mark(module).items()]
    inputs = {k: v.to("meta") for k, v in example_inputs(component, models.config, device="cpu").items()}
    with torch.no_grad():
        module(**inputs)
    for h in hooks:
        h.remove()
    return sum(p.numel() for p in module.parameters()), counts["marked"], counts["largest"]


def estimate(cfg: ModelConfig, *, judged: tuple[str, ...] = ()) -> int:
    """Bytes a run of size `cfg` holds at its peak: the fp32 models, one image's activations, and for each component
    the accuracy suite judges (`judged`), its oracles and the marked outputs of its runs."""
    shapes = _shapes(cfg.name)
    need = BASELINE_BYTES + sum(4 * p for p, _, _ in shapes.values())
    need += ACTIVATION_COPIES * 4 * max(big for _, _, big in shapes.values())
    for c in judged:
        params, marks, _ = shapes[c]
        need += JUDGED_PARAM_BYTES * params + MARK_BYTES * marks
    return need


def available(device: torch.device) -> int:
    """Bytes free now: the GPU's free memory, or the CPU's MemAvailable (Linux; elsewhere free physical pages)."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def check_fits(need: int, device: torch.device, *, what: str, budget: int | None = None, fix: str) -> None:
    """Refuse, before any work, a run estimated to need more than the device has free (or than `budget`)."""
    free = available(device) if budget is None else budget
    if need > free:
        has = f"{free / GIB:.1f} GiB is free" if budget is None else f"the budget is {free / GIB:.1f} GiB"
        raise MemoryError(f"{what} needs about {need / GIB:.1f} GiB on the {device.type} and {has}; {fix}")
