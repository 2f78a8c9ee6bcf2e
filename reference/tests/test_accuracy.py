"""`pytest reference`: every engine of this machine's matrix against the strict-fp32 reference, mark by mark.

One test per engine (ids like `uvit-inductor-fp16-graph`). Each names the first mark that leaves its tolerance
(reference/tolerances.py); every mark's statistics go to results/accuracy-*.json and, with --accuracy-report, to
the markdown report and its error-by-depth plot.
"""

from __future__ import annotations

import pytest

from engines import BackendUnavailable, build_engine
from reference.compare import RunResult, compare_simple, first_failure, first_nonfinite
from reference.tolerances import tolerance_for


def test_engine_matches_reference(engine_spec, models, reference_runs, accuracy_log):
    spec = engine_spec
    ref = reference_runs(spec.component)
    if ref.nondeterministic:
        pytest.fail(f"reference_nondeterministic: two fp32 reference runs differ at {ref.nondeterministic[:5]}")
    try:
        engine = build_engine(
            spec.component, models, backend=spec.backend, precision=spec.precision, cuda_graph=spec.cuda_graph,
            marks=ref.marks, **dict(spec.options),
        )  # fmt: skip
    except BackendUnavailable as e:
        pytest.skip(str(e))
    with engine:
        run = RunResult(engine.name, engine(**ref.inputs), meta={"seconds": engine.seconds})
    tolerance, per_mark = tolerance_for(spec.component, spec.precision)
    results = compare_simple(tolerance=tolerance, per_mark=per_mark, floors=ref.floors)(run, ref.run)
    accuracy_log.add([
        {
            "engine": engine.name, "component": spec.component, "backend": spec.backend, "precision": spec.precision,
            "cuda_graph": spec.cuda_graph, "options": ",".join(f"{k}={v}" for k, v in spec.options) or "-",
            "order": i, "floor": ref.floors[mark], **r.as_dict(),
        }
        for i, (mark, r) in enumerate(results.items())
    ])  # fmt: skip

    nonfinite = first_nonfinite(run)
    assert nonfinite is None, f"{engine.name}: NaN/Inf first appears at mark {nonfinite!r}"
    first = first_failure(results)
    assert first is None, (
        f"{engine.name}: first mark outside tolerance is {first!r}: rel_l2 {results[first].rel_l2:.3g} > "
        f"bound {results[first].bound:.3g} (floor {ref.floors[first]:.3g})"
    )
