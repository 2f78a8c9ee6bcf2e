"""Layer-wise comparison in Polygraphy's shape: run results, a compare function, and verdicts, as separate values.

Pure: tensors in, results out. It imports no model and no engine.

    ref, run = RunResult("uvit/eager/fp32", ref_outputs), RunResult("uvit/inductor/fp16", outputs)
    results = compare_simple(tolerance=Tolerance(rel_l2=1e-2, k=64))(run, ref)   # {mark: MarkResult}, run's order
    first_failure(results)                                                       # "uvit.in_blocks.7" or None
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import Tensor


@dataclass
class RunResult:
    """One engine's outputs for one set of inputs: {mark: tensor, ..., "output": tensor} in execution order."""

    engine_name: str
    outputs: dict[str, Tensor]
    meta: dict = field(default_factory=dict)

    def save(self, path: Path) -> Path:
        cpu = {k: v.detach().cpu() for k, v in self.outputs.items()}
        torch.save({"engine_name": self.engine_name, "outputs": cpu, "meta": self.meta}, path)
        return Path(path)

    @classmethod
    def load(cls, path: Path) -> RunResult:
        d = torch.load(path, map_location="cpu", weights_only=True)
        return cls(d["engine_name"], d["outputs"], d.get("meta", {}))


@dataclass(frozen=True)
class Tolerance:
    """A mark passes when its relative L2 error is at most max(rel_l2, k * floor), where floor is the fp32
    reference's own relative L2 error against an fp64 run at that mark. atol/rtol only define the elementwise band
    behind the `frac_outside` statistic; they do not decide the verdict."""

    rel_l2: float
    k: float = 0.0
    atol: float = 1e-5
    rtol: float = 1e-3


@dataclass(frozen=True)
class MarkResult:
    mark: str
    passed: bool
    bound: float  # the rel_l2 this mark had to stay under
    rel_l2: float
    cosine: float
    sqnr_db: float
    max_abs: float
    mean_abs: float
    median_abs: float
    p99_abs: float
    max_rel: float
    mean_rel: float
    frac_outside: float  # share of elements outside atol + rtol * |ref|
    min_atol: float  # smallest atol that would put every element inside the band at this rtol
    nonfinite: int  # NaN/Inf count in the run's tensor
    numel: int

    def __bool__(self) -> bool:
        return self.passed

    def as_dict(self) -> dict:
        return asdict(self)


_SAMPLE = 1 << 24  # quantiles on at most this many elements (torch.quantile's limit)


def mark_stats(out: Tensor, ref: Tensor, *, tolerance: Tolerance, floor: float = 0.0, mark: str = "") -> MarkResult:
    """All statistics of one mark, in fp64. A shape mismatch is an error; a non-finite value fails the mark."""
    if out.shape != ref.shape:
        raise ValueError(f"mark {mark!r}: run shape {tuple(out.shape)} differs from reference {tuple(ref.shape)}")
    a, b = out.detach().double().flatten(), ref.detach().double().flatten()
    nonfinite = int((~torch.isfinite(a)).sum())
    diff = (a - b).abs()
    ref_norm, run_norm, err_norm = b.norm().item(), a.norm().item(), (a - b).norm().item()
    rel_l2 = err_norm / ref_norm if ref_norm > 0 else (0.0 if err_norm == 0 else math.inf)
    cosine = (a @ b).item() / (run_norm * ref_norm) if run_norm > 0 and ref_norm > 0 else float(run_norm == ref_norm)
    sqnr = 10 * math.log10(ref_norm**2 / err_norm**2) if err_norm > 0 else math.inf
    rel = diff / b.abs().clamp_min(torch.finfo(torch.float64).tiny)  # zeros in the reference are guarded
    sample = diff[:: -(-diff.numel() // _SAMPLE)] if diff.numel() else diff  # a strided subsample, for quantiles
    band = tolerance.atol + tolerance.rtol * b.abs()
    bound = max(tolerance.rel_l2, tolerance.k * floor)
    finite = nonfinite == 0
    return MarkResult(
        mark=mark,
        passed=finite and rel_l2 <= bound,
        bound=bound,
        rel_l2=rel_l2 if finite else math.nan,
        cosine=cosine if finite else math.nan,
        sqnr_db=sqnr if finite else math.nan,
        max_abs=diff.max().item() if diff.numel() else 0.0,
        mean_abs=diff.mean().item() if diff.numel() else 0.0,
        median_abs=sample.median().item() if diff.numel() else 0.0,
        p99_abs=torch.quantile(sample, 0.99).item() if diff.numel() else 0.0,
        max_rel=rel.max().item() if diff.numel() else 0.0,
        mean_rel=rel.mean().item() if diff.numel() else 0.0,
        frac_outside=(diff > band).double().mean().item() if diff.numel() else 0.0,
        min_atol=(diff - tolerance.rtol * b.abs()).clamp_min(0).max().item() if diff.numel() else 0.0,
        nonfinite=nonfinite,
        numel=diff.numel(),
    )


Compare = Callable[[RunResult, RunResult], dict[str, MarkResult]]


def compare_simple(
    *,
    tolerance: Tolerance,
    per_mark: dict[str, Tolerance] | None = None,
    floors: dict[str, float] | None = None,
    fail_fast: bool = False,
) -> Compare:
    """A compare function: (run, reference) -> {mark: MarkResult} in the run's execution order.

    Marks missing from either side are an error. `fail_fast` stops after the first failing mark.
    """
    per_mark, floors = dict(per_mark or {}), dict(floors or {})

    def compare(run: RunResult, ref: RunResult) -> dict[str, MarkResult]:
        missing = [m for m in run.outputs if m not in ref.outputs] + [m for m in ref.outputs if m not in run.outputs]
        if missing:
            raise KeyError(f"{run.engine_name} vs {ref.engine_name}: marks present on one side only: {missing}")
        results = {}
        for mark, out in run.outputs.items():
            tol = per_mark.get(mark, tolerance)
            results[mark] = mark_stats(out, ref.outputs[mark], tolerance=tol, floor=floors.get(mark, 0.0), mark=mark)
            if fail_fast and not results[mark]:
                break
        return results

    return compare


def first_failure(results: dict[str, MarkResult]) -> str | None:
    """The first failing mark in execution order: where the run departs from the reference."""
    return next((m for m, r in results.items() if not r), None)


def first_nonfinite(run: RunResult) -> str | None:
    """The first mark holding NaN or Inf: its own verdict, checked before any tolerance."""
    return next((m for m, t in run.outputs.items() if t.is_floating_point() and not torch.isfinite(t).all()), None)


def nondeterministic_marks(a: RunResult, b: RunResult) -> list[str]:
    """Marks where two runs of the same engine on the same inputs are not bit-identical."""
    return [m for m in a.outputs if m not in b.outputs or not torch.equal(a.outputs[m], b.outputs[m])]


def floors_against(ref: RunResult, ref64: RunResult) -> dict[str, float]:
    """Per mark, the fp32 reference's own relative L2 error against an fp64 run: its rounding noise floor."""
    floors = {}
    for mark, t in ref.outputs.items():
        a, b = t.double(), ref64.outputs[mark].double()
        bn = b.norm().item()
        floors[mark] = (a - b).norm().item() / bn if bn > 0 else 0.0
    return floors
