"""Checks the accuracy suite and the fault matrix share."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from engines import build_engine
from engines.components import INPUT, component_module, default_marks, example_inputs, module_by_mark
from reference.approximations import FP8_LINEARS, approximate, emulate_linear
from reference.compare import MarkResult, RunResult, compare_simple, errors_against, nondeterministic_marks, rel_l2
from reference.tolerances import bounds, caps, rule_for


def fp8_linears(module: nn.Module) -> list[str]:
    """The mark names of the U-ViT block linears an fp8 engine runs in e4m3."""
    blocks = (".in_blocks.", ".mid_block.", ".out_blocks.")
    return [p for p, m in module_by_mark(module).items()
            if isinstance(m, nn.Linear) and any(b in p for b in blocks) and p.endswith(FP8_LINEARS)]  # fmt: skip


def fp8_marks(paths: list[str]) -> tuple[str, ...]:
    """Each linear's input and output."""
    return tuple(m for p in paths for m in (p + INPUT, p))


FAST_ROWS = 256  # rows of each FP8 linear checked against fp8_accumulate=fast's emulation


def fp8_linear_check(outputs: dict, module: nn.Module, engine, paths: list[str]) -> list[dict]:
    """Each FP8 linear's output against the emulation of the engine's recipe on the input it was given, summed as
    the engine's fp8_accumulate sums it, with the fp8 rule's bound (the plain fp16 emulation's error there): rows in
    `paths` order."""
    layers, rows = module_by_mark(module), []
    scaling = next(a for a in engine.approximations if a.startswith("fp8="))
    # fp8_quantize=triton moves the MLP's GELU into fc2's quantisation: fc2's input is then the GELU's
    fc2_gelu = ("tanh" if "gelu=tanh" in engine.approximations else "erf") if engine.meta.get("fp8_quantize") == \
        "triton" else "none"  # fmt: skip
    accumulate = engine.meta.get("fp8_accumulate", "exact")
    for path in paths:
        x, y = outputs[path + INPUT], outputs[path]
        if accumulate == "fast":  # emulated MMA by MMA, slowly: every k-th token, rows in each 128-row GEMM tile
            stride = -(-x[..., 0].numel() // FAST_ROWS)
            x, y = x.flatten(0, -2)[::stride], y.flatten(0, -2)[::stride]
        kw = dict(scaling=scaling, dtype=y.dtype, gelu=fc2_gelu if path.endswith("mlp.fc2") else "none")
        want = emulate_linear(layers[path], x, **kw, accumulate=accumulate)
        # the bound is fp16 rounding's, measured against an exact sum: not widened by the fast sum it judges
        exact = want if accumulate == "exact" else emulate_linear(layers[path], x, **kw)
        plain = rel_l2(emulate_linear(layers[path], x, **kw, plain=True), exact)
        err, bound = rel_l2(y, want), rule_for("uvit", "fp8").bound(plain)
        rows.append({"linear": path, "rel_l2": err, "bound": bound, "plain": plain, "passed": err <= bound})
    return rows


@dataclass
class References:
    """What every engine of a component is judged against: the reference making the engine's declared
    approximations, in fp64 (the oracle), and the plain runs that set the bounds (reference/tolerances.py).

        ref = References.make("uvit", models, ("fp8=row", "gelu=tanh"), device=device)
        ref.judge(run, "fp8")       # {mark: MarkResult}: each mark against the oracle recomputed from run's own values
        ref.end_to_end(run, "fp8")  # the output against the oracle run from the inputs alone

    Marks are judged anchored: the oracle recomputes each mark from the run's own values at the marks before it, so
    a mark's error is what the engine adds between two marks, not what it carried in. Rounding then does not pile up
    with depth (at bf16 and fp8 it would pass the cap within a few blocks and verify nothing after), and the first
    failing mark is the layer where the engine goes wrong, whatever it did upstream. The output is judged end to end
    as well: errors each within their bound can still add up.
    """

    component: str
    approximations: tuple[str, ...]
    module: nn.Module  # the reference component making `approximations`
    marks: tuple[str, ...]
    inputs: dict[str, Tensor]
    oracle: RunResult  # the module in fp64
    models: object
    plain: dict[str, RunResult] = field(default_factory=dict)  # by the precision it ran at
    nondeterministic: list[str] = field(default_factory=list)  # marks where two fp32 runs differ
    _module64: nn.Module | None = None
    _local_plain: dict[str, dict[str, float]] = field(default_factory=dict)

    @classmethod
    def make(cls, component: str, models, approximations: tuple[str, ...] = (), *, device) -> References:
        module = approximate(component_module(component, models), tuple(sorted(approximations)))
        marks = default_marks(component, module)
        inputs = example_inputs(component, models.config, device=device)
        with build_engine(component, models, module=module, marks=marks, precision="fp64") as oracle:
            run = RunResult(oracle.name, oracle(**inputs))
        return cls(component, tuple(sorted(approximations)), module, marks, inputs, run, models)

    def plain_run(self, precision: str) -> RunResult:
        """The module cast to the rule's plain precision and run eagerly (fp32: the strict-fp32 reference, run twice:
        it must repeat itself bit for bit before any engine is blamed)."""
        at = rule_for(self.component, precision).plain
        if at not in self.plain:
            with build_engine(self.component, self.models, module=self.module, precision=at, marks=self.marks) as e:
                self.plain[at] = RunResult(e.name, e(**self.inputs))
                if at == "fp32":
                    self.nondeterministic = nondeterministic_marks(self.plain[at], RunResult(e.name, e(**self.inputs)))
        return self.plain[at]

    def plain_errors(self, precision: str) -> dict[str, float]:
        """Per mark, the plain run's error end to end: what rounding at the precision piles up to there."""
        return errors_against(self.plain_run(precision), self.oracle)

    def local_plain_errors(self, precision: str) -> dict[str, float]:
        """Per mark, the plain run's error anchored: what rounding at the precision adds between two marks."""
        at = rule_for(self.component, precision).plain
        if at not in self._local_plain:
            plain = self.plain_run(precision)
            self._local_plain[at] = errors_against(plain, self.anchored(plain))
        return self._local_plain[at]

    def anchored(self, run: RunResult) -> RunResult:
        """The oracle recomputed from `run`'s values: each marked layer's output computed in fp64 from what the run
        holds at the marks before it, then replaced by the run's own value for the layers after it."""
        if self._module64 is None:
            self._module64 = copy.deepcopy(self.module).double().eval().requires_grad_(False)
        by_mark, computed = module_by_mark(self._module64), {}

        def substitute(mark: str):
            def hook(module: nn.Module, args: tuple, out: object) -> object:
                first = out[0] if isinstance(out, tuple) else out
                if mark in computed:
                    raise RuntimeError(f"{mark} ran twice in one call: anchoring needs each marked layer once")
                computed[mark] = first
                held = run.outputs[mark].to(first.device, torch.float64, copy=True).reshape(first.shape)
                return (held, *out[1:]) if isinstance(out, tuple) else held

            return hook

        anchors = [m for m in run.outputs if m != "output" and not m.endswith(INPUT)]
        handles = [by_mark[m].register_forward_hook(substitute(m)) for m in anchors]
        try:
            with torch.no_grad():
                output = self._module64(**{k: v.double() if v.is_floating_point() else v
                                          for k, v in self.inputs.items()})  # fmt: skip
        finally:
            for h in handles:
                h.remove()
        return RunResult(f"{self.oracle.engine_name} anchored on {run.engine_name}", {**computed, "output": output})

    def judge(self, run: RunResult, precision: str) -> dict[str, MarkResult]:
        """Each mark of `run`, anchored, within `precision`'s bound from the plain run's anchored error there."""
        limits = bounds(self.component, precision, self.local_plain_errors(precision))
        compare = compare_simple(bounds=limits, caps=caps(self.component, precision, list(limits)))
        return compare(run, self.anchored(run))

    def end_to_end(self, run: RunResult, precision: str) -> tuple[float, float]:
        """The run's output error against the oracle run from the inputs, and its bound (from the plain run's)."""
        bound = bounds(self.component, precision, self.plain_errors(precision))["output"]
        return rel_l2(run.outputs["output"], self.oracle.outputs["output"]), bound
