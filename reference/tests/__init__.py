"""Checks the accuracy suite and the fault matrix share."""

from __future__ import annotations

from torch import nn

from engines.components import INPUT, module_by_mark
from reference.approximations import FP8_LINEARS, emulate_linear
from reference.compare import rel_l2
from reference.tolerances import rule_for


def fp8_linears(module: nn.Module) -> list[str]:
    """The mark names of the U-ViT block linears an fp8 engine runs in e4m3."""
    blocks = (".in_blocks.", ".mid_block.", ".out_blocks.")
    return [p for p, m in module_by_mark(module).items()
            if isinstance(m, nn.Linear) and any(b in p for b in blocks) and p.endswith(FP8_LINEARS)]  # fmt: skip


def fp8_marks(paths: list[str]) -> tuple[str, ...]:
    """Each linear's input and output."""
    return tuple(m for p in paths for m in (p + INPUT, p))


def fp8_linear_check(outputs: dict, module: nn.Module, engine, paths: list[str]) -> list[dict]:
    """Each FP8 linear's output against the emulation of the engine's recipe on the input it was given, with the
    fp8 rule's bound (the plain fp16 emulation's error there): rows in `paths` order."""
    layers, rows = module_by_mark(module), []
    scaling_rows = "fp8=row" in engine.approximations
    # fp8_quantize=triton moves the MLP's GELU into fc2's quantisation: fc2's input is then the GELU's
    fc2_gelu = ("tanh" if "gelu=tanh" in engine.approximations else "erf") if engine.meta.get("fp8_quantize") == \
        "triton" else "none"  # fmt: skip
    for path in paths:
        x, y = outputs[path + INPUT], outputs[path]
        kw = dict(rows=scaling_rows, dtype=y.dtype, gelu=fc2_gelu if path.endswith("mlp.fc2") else "none")
        want = emulate_linear(layers[path], x, **kw)
        plain = rel_l2(emulate_linear(layers[path], x, **kw, plain=True), want)
        err, bound = rel_l2(y, want), rule_for("uvit", "fp8").bound(plain)
        rows.append({"linear": path, "rel_l2": err, "bound": bound, "plain": plain, "passed": err <= bound})
    return rows
