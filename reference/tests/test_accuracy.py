"""`pytest reference`: every engine of this machine's matrix against the fp64 oracle, mark by mark.

One test per engine and property (ids like `uvit/inductor/fp16/graph`): its marks within their bounds
(reference/tolerances.py) against the oracle making the engine's declared approximations, each mark recomputed from
the engine's own values before it (References.judge), with the first mark that leaves its bound named, and its
output end to end; its marks not perturbing what it computes; for fp8, each FP8 linear against its emulation on
the input it received. Every mark's statistics go to results/accuracy-*.json and, with --accuracy-report, to the
markdown report and its plots.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest
import torch

from engines import BackendUnavailable, build_engine
from engines.faults import FaultDoesNotApply
from reference.compare import (
    RunResult,
    end_to_end,
    engine_status,
    errors_against,
    first_failure,
    first_nonfinite,
    rel_l2,
    unverifiable,
)
from reference.tests import fp8_linear_check, fp8_linears, fp8_marks
from reference.tolerances import rule_for


@dataclass
class EngineRuns:
    spec: object
    name: str
    approximations: tuple[str, ...]
    first: RunResult  # every mark of the first call
    second_output: torch.Tensor  # the final output of a second call on the same inputs


@pytest.fixture(scope="session")
def build(models, pytestconfig):
    """(spec, **kw) -> the engine, with `--fault` injected where it is given for the spec's component."""
    component, fault = pytestconfig.getoption("--fault") or (None, None)

    def make(spec, **kw):
        try:
            return build_engine(spec.component, models, **spec.kwargs(), **kw,
                                **({"fault": fault} if spec.component == component else {}))  # fmt: skip
        except FaultDoesNotApply as e:
            pytest.skip(f"--fault {fault.label} does not apply to {spec.id}: {e}")

    return make


@pytest.fixture(scope="session")
def engine_runs(build, references):
    """spec -> its marked engine's two runs; one spec held at a time (tests are grouped by engine: conftest)."""
    held: dict[object, EngineRuns] = {}

    def get(spec) -> EngineRuns:
        if spec not in held:
            held.clear()
            marks = references(spec.component).marks
            try:
                engine = build(spec, marks=marks)
            except BackendUnavailable as e:
                pytest.skip(str(e))
            inputs = references(spec.component).inputs
            with engine:
                first = RunResult(engine.name, engine(**inputs), meta={"seconds": engine.seconds})
                second = engine(**inputs)["output"]
            held[spec] = EngineRuns(spec, engine.name, engine.approximations, first, second)
        return held[spec]

    return get


def test_engine_matches_reference(engine_spec, references, engine_runs, accuracy_log, activation_stats):
    spec = engine_spec
    activation_stats(spec.component)
    runs = engine_runs(spec)
    ref = references(spec.component, runs.approximations)
    if references(spec.component).plain_run("fp32") and references(spec.component).nondeterministic:
        pytest.fail(f"reference_nondeterministic: two fp32 reference runs differ at "
                    f"{references(spec.component).nondeterministic[:5]}")  # fmt: skip
    results, plain = ref.judge(runs.first, spec.precision), ref.local_plain_errors(spec.precision)
    carried, carried_plain = errors_against(runs.first, ref.oracle), ref.plain_errors(spec.precision)
    rows = [
        {
            "engine": runs.name, "component": spec.component, "backend": spec.backend, "precision": spec.precision,
            "cuda_graph": spec.cuda_graph, "options": ",".join(f"{k}={v}" for k, v in spec.flat().items()) or "-",
            "approximations": ",".join(runs.approximations) or "-", "order": i, "plain": plain[mark],
            "plain_precision": rule_for(spec.component, spec.precision).plain, "status": r.status, **r.as_dict(),
            "end_to_end": carried[mark], "plain_end_to_end": carried_plain[mark],
        }
        for i, (mark, r) in enumerate(results.items())
    ]  # fmt: skip
    accuracy_log.add(rows)
    nonfinite, first, over = first_nonfinite(runs.first), first_failure(results), unverifiable(results)
    output, output_bound = ref.end_to_end(runs.first, spec.precision)
    whole = end_to_end(output, output_bound, rule_for(spec.component, spec.precision).cap)
    status, named = engine_status(results, nonfinite=nonfinite, whole=whole)
    accuracy_log.add([{
        "engine": runs.name, "component": spec.component, "precision": spec.precision,
        "approximations": ",".join(runs.approximations) or "-", "status": status, "first_failing_mark": named,
        "unverifiable_marks": len(over), "first_unverifiable_mark": over[0] if over else "-",
        "output_rel_l2": output, "output_bound": output_bound, "end_to_end": whole,
        "worst_ratio": max((r.rel_l2 / p for r, p in zip(results.values(), plain.values(), strict=True) if p > 0),
                           default=math.nan),
        "run_to_run": rel_l2(runs.second_output, runs.first.outputs["output"]),
    }], table="engines")  # fmt: skip

    assert nonfinite is None, f"{runs.name}: NaN/Inf first appears at mark {nonfinite!r}"
    assert first is None, (
        f"{runs.name}: first mark outside its bound is {first!r}: rel_l2 {results[first].rel_l2:.3g} > bound "
        f"{results[first].bound:.3g} (plain {spec.precision} error there {plain[first]:.3g}; both anchored on the "
        f"values the run brought to it)"
    )
    assert whole != "fail", (
        f"{runs.name}: every mark within its bound, but the output is {output:.3g} from the oracle end to end, over "
        f"its bound {output_bound:.3g}"
    )
    if over:
        pytest.skip(
            f"{runs.name}: within bounds at every mark, but {len(over)} marks cannot be verified at "
            f"{spec.precision}: their bounds exceed the cap {results[over[0]].cap:g} (first: {over[0]}, bound "
            f"{results[over[0]].bound:.3g}; the plain {spec.precision} error there is {plain[over[0]]:.3g})"
        )


def test_marks_do_not_perturb(engine_spec, build, references, engine_runs, accuracy_log):
    """The engine built without marks computes what the marked one did, to its own run-to-run noise or below the
    precision's floor (the finest difference any bound resolves). Marking can change what a compiler fuses or which
    kernels it picks: at fp16 two such programs round differently (by about the precision's own error), and then
    the marked engine's verdict does not carry over; the timed build is judged itself, at its output, against the
    bound of that mark. The report shows both numbers per engine."""
    spec = engine_spec
    runs = engine_runs(spec)
    with build(spec) as unmarked:
        output = unmarked(**references(spec.component).inputs)["output"]
    marked = runs.first.outputs["output"]
    noise, moved = rel_l2(runs.second_output, marked), rel_l2(output, marked)
    floor = rule_for(spec.component, spec.precision).floor
    ref = references(spec.component, runs.approximations)
    timed, bound = ref.end_to_end(RunResult(runs.name, {"output": output}), spec.precision)
    same = moved <= max(noise, floor)
    accuracy_log.add([{"engine": runs.name, "run_to_run": noise, "marks_moved_output": moved, "floor": floor,
                       "same_program": same, "timed_output_rel_l2": timed, "output_bound": bound}],
                     table="perturbation")  # fmt: skip
    assert same or timed <= bound, (
        f"{runs.name}: marking moved the output by {moved:.3g}, over its run-to-run noise {noise:.3g} and the "
        f"{spec.precision} floor {floor:.3g}, and the unmarked build's output is {timed:.3g} from the oracle, over "
        f"the output's bound {bound:.3g}: the engine timed fails where the marked one was judged"
    )
    if not same and bound > rule_for(spec.component, spec.precision).cap:
        pytest.skip(
            f"{runs.name}: marking moved the output by {moved:.3g}, and the output's bound end to end "
            f"({bound:.3g}) is over the cap: the unmarked build is judged by the image verdict alone"
        )


def test_fp8_linears_match_their_emulation(engine_spec, build, references, accuracy_log):
    """Each FP8 linear against the emulation of its recipe (reference/approximations.py) on the very input it was
    given: as tight as its fp16 output allows. Whole-network marks cannot be this tight at fp8: a rounding difference
    anywhere flips some e4m3 roundings after it, and the flips cascade to about one e4m3 step within a few linears."""
    spec = engine_spec
    if spec.precision != "fp8":
        pytest.skip("no FP8 linears: the engine is not fp8")
    ref = references(spec.component)
    paths = fp8_linears(ref.module)
    try:
        engine = build(spec, marks=fp8_marks(paths))
    except BackendUnavailable as e:
        pytest.skip(str(e))
    with engine:
        rows = fp8_linear_check(engine(**ref.inputs), ref.module, engine, paths)
    accuracy_log.add([{"engine": engine.name, **r} for r in rows], table="fp8_linears")
    failing = [r for r in rows if not r["passed"]]
    assert not failing, f"{engine.name}: first FP8 linear off its emulation: {failing[0]}"
