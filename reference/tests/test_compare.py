from __future__ import annotations

import math

import pytest
import torch

from reference.compare import (
    RunResult,
    Tolerance,
    compare_simple,
    first_failure,
    first_nonfinite,
    floors_against,
    mark_stats,
    nondeterministic_marks,
)

TOL = Tolerance(rel_l2=1e-4, k=8)


def rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def test_identical_tensors_pass_with_zero_error():
    r = mark_stats(rand(4, 5), rand(4, 5), tolerance=TOL)
    assert r.passed and bool(r) and r.rel_l2 == 0 and r.max_abs == 0 and r.sqnr_db == math.inf
    assert r.cosine == pytest.approx(1, abs=1e-12)


def test_a_relative_error_is_measured_as_such():
    ref = rand(1000)
    r = mark_stats(ref * (1 + 1e-3), ref, tolerance=TOL)
    assert r.rel_l2 == pytest.approx(1e-3, rel=1e-4) and r.sqnr_db == pytest.approx(60, abs=1e-3)
    assert not r.passed and r.bound == TOL.rel_l2


def test_the_bound_follows_the_floor():
    ref = rand(1000)
    r = mark_stats(ref * (1 + 1e-3), ref, tolerance=TOL, floor=2e-4)
    assert r.bound == pytest.approx(8 * 2e-4) and r.passed


def test_zeros_in_the_reference_are_guarded():
    ref = torch.tensor([0.0, 1.0])
    r = mark_stats(torch.tensor([1e-3, 1.0]), ref, tolerance=TOL)
    assert math.isfinite(r.max_rel) and r.max_abs == pytest.approx(1e-3)
    assert r.frac_outside == 0.5 and r.min_atol == pytest.approx(1e-3)


def test_nan_fails_and_is_counted():
    out = rand(10)
    out[3] = float("nan")
    r = mark_stats(out, rand(10), tolerance=TOL)
    assert not r.passed and r.nonfinite == 1 and math.isnan(r.rel_l2)


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="mark 'x': run shape \\(2,\\) differs from reference \\(3,\\)"):
        mark_stats(torch.zeros(2), torch.zeros(3), tolerance=TOL, mark="x")


def test_large_tensors_use_a_subsample_for_quantiles():
    ref = rand(1 << 25)
    r = mark_stats(ref + 1e-3, ref, tolerance=TOL)
    assert r.numel == 1 << 25 and r.p99_abs == pytest.approx(1e-3, rel=1e-3)


def runs():
    ref = {"a": rand(8, seed=1), "b": rand(8, seed=2), "c": rand(8, seed=3), "output": rand(8, seed=4)}
    bad = dict(ref, b=ref["b"] * 1.01, c=ref["c"] * 1.01)
    return RunResult("ref", ref), RunResult("run", bad)


def test_first_failure_is_the_first_in_execution_order():
    ref, run = runs()
    results = compare_simple(tolerance=TOL)(run, ref)
    assert list(results) == ["a", "b", "c", "output"] and first_failure(results) == "b"
    assert list(compare_simple(tolerance=TOL, fail_fast=True)(run, ref)) == ["a", "b"]


def test_per_mark_tolerances_override_the_default():
    ref, run = runs()
    results = compare_simple(tolerance=TOL, per_mark={"b": Tolerance(rel_l2=0.1)})(run, ref)
    assert first_failure(results) == "c"


def test_marks_on_one_side_only_are_an_error():
    ref, run = runs()
    run.outputs.pop("a")
    with pytest.raises(KeyError, match=r"marks present on one side only: \['a'\]"):
        compare_simple(tolerance=TOL)(run, ref)


def test_first_nonfinite_and_nondeterminism():
    ref, run = runs()
    run.outputs["c"][0] = float("inf")
    assert first_nonfinite(run) == "c" and first_nonfinite(ref) is None
    assert nondeterministic_marks(ref, run) == ["b", "c"]


def test_floors_and_round_trip(tmp_path):
    ref, run = runs()
    floors = floors_against(run, ref)
    assert floors["a"] == 0 and floors["b"] == pytest.approx(0.01)
    loaded = RunResult.load(ref.save(tmp_path / "ref.pt"))
    assert loaded.engine_name == "ref" and all(torch.equal(loaded.outputs[k], ref.outputs[k]) for k in ref.outputs)
