"""Layer-wise comparison in Polygraphy's shape: run results, a compare function, and verdicts, as separate values.

Pure: tensors in, results out. It imports no model and no engine.

    oracle, run = RunResult("uvit/eager/fp64", oracle_outputs), RunResult("uvit/inductor/fp16", outputs)
    results = compare_simple(bounds={"uvit.in_blocks.0": 1e-3, ..., "output": 4e-3})(run, oracle)  # run's order
    first_failure(results)                                                     # "uvit.in_blocks.7" or None

The bound of each mark comes from reference/tolerances.py; what is compared against (an fp64 oracle, or one making
the engine's declared approximations) from the accuracy suite.
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
class Band:
    """The elementwise band |run - ref| <= atol + rtol * |ref| behind the `frac_outside` and `min_atol` statistics;
    it does not decide the verdict (the relative L2 error against the mark's bound does)."""

    atol: float = 1e-5
    rtol: float = 1e-3


@dataclass(frozen=True)
class MarkResult:
    mark: str
    passed: bool  # status == "pass"
    bound: float  # the rel_l2 this mark had to stay under
    cap: float  # the largest bound that verifies anything (reference/tolerances.py); a bound above it cannot pass
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
    magnitude: float  # the run's largest finite |value| at this mark
    headroom: float  # the largest finite value of the run's dtype over `magnitude`: how far from overflow

    def __bool__(self) -> bool:
        return self.passed

    @property
    def status(self) -> str:
        """nonfinite, fail (over its bound), unverifiable (within a bound over the cap: no verdict), or pass."""
        if self.nonfinite:
            return "nonfinite"
        if not self.rel_l2 <= self.bound:
            return "fail"
        return "pass" if self.bound <= self.cap else "unverifiable"

    def as_dict(self) -> dict:
        return asdict(self)


_SAMPLE = 1 << 24  # quantiles on at most this many elements (torch.quantile's limit)


def mark_stats(
    out: Tensor, ref: Tensor, *, bound: float, cap: float = math.inf, band: Band = Band(), mark: str = ""
) -> MarkResult:
    """All statistics of one mark, in fp64. A shape mismatch is an error; a non-finite value fails the mark; a mark
    within a bound over `cap` does not pass (status "unverifiable")."""
    if out.shape != ref.shape:
        raise ValueError(f"mark {mark!r}: run shape {tuple(out.shape)} differs from reference {tuple(ref.shape)}")
    if not bound > 0:
        raise ValueError(f"mark {mark!r}: bound {bound!r} is not a positive relative L2 error")
    a, b = out.detach().double().flatten(), ref.detach().double().flatten()
    finite_mask = torch.isfinite(a)
    nonfinite = int((~finite_mask).sum())
    diff = (a - b).abs()
    ref_norm, run_norm, err_norm = b.norm().item(), a.norm().item(), (a - b).norm().item()
    rel_l2 = err_norm / ref_norm if ref_norm > 0 else (0.0 if err_norm == 0 else math.inf)
    cosine = (a @ b).item() / (run_norm * ref_norm) if run_norm > 0 and ref_norm > 0 else float(run_norm == ref_norm)
    rel = diff / b.abs().clamp_min(torch.finfo(torch.float64).tiny)  # zeros in the reference are guarded
    sample = diff[:: -(-diff.numel() // _SAMPLE)] if diff.numel() else diff  # a strided subsample, for quantiles
    limits = band.atol + band.rtol * b.abs()
    finite = nonfinite == 0
    magnitude = a[finite_mask].abs().max().item() if finite_mask.any() else 0.0
    top = torch.finfo(out.dtype).max if out.is_floating_point() else math.inf
    return MarkResult(
        mark=mark,
        passed=finite and rel_l2 <= bound <= cap,
        bound=bound,
        cap=cap,
        rel_l2=rel_l2 if finite else math.nan,
        cosine=cosine if finite else math.nan,
        sqnr_db=_sqnr_db(ref_norm, err_norm) if finite else math.nan,
        max_abs=diff.max().item() if diff.numel() else 0.0,
        mean_abs=diff.mean().item() if diff.numel() else 0.0,
        median_abs=sample.median().item() if diff.numel() else 0.0,
        p99_abs=torch.quantile(sample, 0.99).item() if diff.numel() else 0.0,
        max_rel=rel.max().item() if diff.numel() else 0.0,
        mean_rel=rel.mean().item() if diff.numel() else 0.0,
        frac_outside=(diff > limits).double().mean().item() if diff.numel() else 0.0,
        min_atol=(diff - band.rtol * b.abs()).clamp_min(0).max().item() if diff.numel() else 0.0,
        nonfinite=nonfinite,
        numel=diff.numel(),
        magnitude=magnitude,
        headroom=top / magnitude if magnitude > 0 else math.inf,
    )


def _sqnr_db(ref_norm: float, err_norm: float) -> float:
    """Signal to error in dB: inf for no error, -inf for an error over a reference of zeros."""
    if err_norm == 0:
        return math.inf
    return 20 * math.log10(ref_norm / err_norm) if ref_norm > 0 else -math.inf


Compare = Callable[[RunResult, RunResult], dict[str, MarkResult]]


def compare_simple(
    *, bounds: dict[str, float], caps: dict[str, float] | None = None, band: Band = Band(), fail_fast: bool = False
) -> Compare:
    """A compare function: (run, reference) -> {mark: MarkResult} in the run's execution order.

    Every mark needs a bound (a mark without one is an error: a table that does not cover a mark is no verdict).
    Marks missing from either side are an error. `fail_fast` stops after the first failing mark.
    """
    bounds, caps = dict(bounds), dict(caps or {})

    def compare(run: RunResult, ref: RunResult) -> dict[str, MarkResult]:
        missing = [m for m in run.outputs if m not in ref.outputs] + [m for m in ref.outputs if m not in run.outputs]
        if missing:
            raise KeyError(f"{run.engine_name} vs {ref.engine_name}: marks present on one side only: {missing}")
        unbounded = [m for m in run.outputs if m not in bounds]
        if unbounded:
            raise KeyError(f"{run.engine_name}: no bound for marks {unbounded} (reference/tolerances.py)")
        results = {}
        for mark, out in run.outputs.items():
            cap = caps.get(mark, math.inf)
            results[mark] = mark_stats(out, ref.outputs[mark], bound=bounds[mark], cap=cap, band=band, mark=mark)
            if fail_fast and results[mark].status in ("fail", "nonfinite"):
                break
        return results

    return compare


def first_failure(results: dict[str, MarkResult]) -> str | None:
    """The first failing mark in execution order (over its bound, or not finite): where the run departs."""
    return next((m for m, r in results.items() if r.status in ("fail", "nonfinite")), None)


def unverifiable(results: dict[str, MarkResult]) -> list[str]:
    """Marks that stayed within a bound over the cap: this comparison says nothing of them."""
    return [m for m, r in results.items() if r.status == "unverifiable"]


def end_to_end(error: float, bound: float, cap: float) -> str:
    """The output's verdict against the oracle run from the inputs alone: "pass", "fail", or "images" where it is
    within a bound over the cap (no verdict here: the image verdict judges what the errors add up to)."""
    if not error <= bound:
        return "fail"
    return "pass" if bound <= cap else "images"


def engine_status(results: dict[str, MarkResult], *, nonfinite: str | None, whole: str) -> tuple[str, str]:
    """An engine's verdict from its marks and its output end to end, and the mark it names: the first non-finite
    one, else the first over its bound, else the output where only it fails."""
    first = first_failure(results)
    if nonfinite:
        return "NaN/Inf", nonfinite
    if first or whole == "fail":
        return "FAIL", first or "output (end to end)"
    return ("unverifiable" if unverifiable(results) else "pass"), "-"


def first_nonfinite(run: RunResult) -> str | None:
    """The first mark holding NaN or Inf: its own verdict, checked before any tolerance."""
    return next((m for m, t in run.outputs.items() if t.is_floating_point() and not torch.isfinite(t).all()), None)


def nondeterministic_marks(a: RunResult, b: RunResult) -> list[str]:
    """Marks where two runs of the same engine on the same inputs are not bit-identical."""
    return [m for m in a.outputs if m not in b.outputs or not torch.equal(a.outputs[m], b.outputs[m])]


def rel_l2(a: Tensor, b: Tensor) -> float:
    """||a - b|| / ||b|| in fp64 (0 when both are zero, inf when only b is); NaN when a holds NaN or Inf."""
    a, b = a.detach().double(), b.detach().double()
    if not torch.isfinite(a).all():
        return math.nan
    bn, en = b.norm().item(), (a - b).norm().item()
    return en / bn if bn > 0 else (0.0 if en == 0 else math.inf)


def errors_against(run: RunResult, oracle: RunResult) -> dict[str, float]:
    """Per mark, the run's relative L2 error against the oracle: the fp32 reference's own rounding against fp64 (its
    noise floor), or a plain implementation's at a lower precision (reference/tolerances.py)."""
    return {mark: rel_l2(t, oracle.outputs[mark]) for mark, t in run.outputs.items()}
