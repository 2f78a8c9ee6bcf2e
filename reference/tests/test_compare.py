from __future__ import annotations

import math

import pytest
import torch

from reference.compare import (
    Band,
    RunResult,
    compare_simple,
    end_to_end,
    engine_status,
    errors_against,
    first_failure,
    first_nonfinite,
    mark_stats,
    nondeterministic_marks,
    rel_l2,
    unverifiable,
)

BOUND = 1e-4


def rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def test_identical_tensors_pass_with_zero_error():
    r = mark_stats(rand(4, 5), rand(4, 5), bound=BOUND)
    assert r.passed and bool(r) and r.status == "pass" and r.rel_l2 == 0 and r.max_abs == 0 and r.sqnr_db == math.inf
    assert r.cosine == pytest.approx(1, abs=1e-12)


def test_a_relative_error_is_measured_as_such():
    ref = rand(1000)
    r = mark_stats(ref * (1 + 1e-3), ref, bound=BOUND)
    assert r.rel_l2 == pytest.approx(1e-3, rel=1e-4) and r.sqnr_db == pytest.approx(60, abs=1e-3)
    assert not r.passed and r.status == "fail" and r.bound == BOUND


@pytest.mark.parametrize("factor, passed", [(0.99, True), (1.01, False), (1.5, False), (5.0, False)])
def test_the_verdict_is_the_bound_itself(factor, passed):
    """An error just under its bound passes and just over it fails: a check loosened by any factor fails this."""
    ref = rand(4096)
    noise = rand(4096, seed=1)
    out = ref + noise * (factor * BOUND * ref.norm() / noise.norm())
    assert mark_stats(out, ref, bound=BOUND).passed is passed


def test_a_bound_over_its_cap_never_passes_and_an_error_over_it_still_fails():
    ref = rand(1000)
    within = mark_stats(ref * (1 + 1e-3), ref, bound=0.1, cap=0.05)
    assert within.status == "unverifiable" and not within.passed
    over = mark_stats(ref * 1.2, ref, bound=0.1, cap=0.05)
    assert over.status == "fail"
    assert mark_stats(ref * (1 + 1e-3), ref, bound=math.inf, cap=0.05).status == "unverifiable"


def test_a_bound_must_be_a_positive_error():
    with pytest.raises(ValueError, match="bound nan is not a positive relative L2 error"):
        mark_stats(rand(3), rand(3), bound=math.nan, mark="x")


def test_zeros_in_the_reference_are_guarded():
    ref = torch.tensor([0.0, 1.0])
    r = mark_stats(torch.tensor([1e-3, 1.0]), ref, bound=BOUND, band=Band(atol=1e-5, rtol=1e-3))
    assert math.isfinite(r.max_rel) and r.max_abs == pytest.approx(1e-3)
    assert r.frac_outside == 0.5 and r.min_atol == pytest.approx(1e-3)


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_nan_and_inf_fail_and_are_counted(value):
    out = rand(10)
    out[3] = value
    r = mark_stats(out, rand(10), bound=BOUND)
    assert not r.passed and r.status == "nonfinite" and r.nonfinite == 1 and math.isnan(r.rel_l2)
    assert math.isnan(r.sqnr_db) and r.magnitude == rand(10)[[i for i in range(10) if i != 3]].abs().max()


def test_an_all_zero_reference_is_judged_not_an_error():
    zero = torch.zeros(4)
    assert mark_stats(zero, zero, bound=BOUND).passed
    r = mark_stats(torch.ones(4), zero, bound=BOUND)
    assert not r.passed and r.rel_l2 == math.inf and r.sqnr_db == -math.inf


def test_magnitude_and_headroom_against_the_dtype():
    out = torch.tensor([1.0, -16376.0, 3.0], dtype=torch.float16)  # 65504 / 16376 = 4.0
    r = mark_stats(out, out.double(), bound=BOUND)
    assert r.magnitude == 16376 and r.headroom == pytest.approx(65504 / 16376)
    assert mark_stats(out.float(), out.double(), bound=BOUND).headroom > 1e34


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="mark 'x': run shape \\(2,\\) differs from reference \\(3,\\)"):
        mark_stats(torch.zeros(2), torch.zeros(3), bound=BOUND, mark="x")


def test_large_tensors_use_a_subsample_for_quantiles():
    ref = rand(1 << 25)
    r = mark_stats(ref + 1e-3, ref, bound=BOUND)
    assert r.numel == 1 << 25 and r.p99_abs == pytest.approx(1e-3, rel=1e-3)


def runs():
    ref = {"a": rand(8, seed=1), "b": rand(8, seed=2), "c": rand(8, seed=3), "output": rand(8, seed=4)}
    bad = dict(ref, b=ref["b"] * 1.01, c=ref["c"] * 1.01)
    return RunResult("ref", ref), RunResult("run", bad)


def bounds_of(value, **per_mark):
    return {m: per_mark.get(m, value) for m in ("a", "b", "c", "output")}


def test_first_failure_is_the_first_in_execution_order():
    ref, run = runs()
    results = compare_simple(bounds=bounds_of(BOUND))(run, ref)
    assert list(results) == ["a", "b", "c", "output"] and first_failure(results) == "b"
    assert list(compare_simple(bounds=bounds_of(BOUND), fail_fast=True)(run, ref)) == ["a", "b"]


def test_each_mark_has_its_own_bound_and_cap():
    ref, run = runs()
    results = compare_simple(bounds=bounds_of(BOUND, b=0.1))(run, ref)
    assert first_failure(results) == "c"
    capped = compare_simple(bounds=bounds_of(BOUND, b=0.1), caps={"b": 0.05})(run, ref)
    assert unverifiable(capped) == ["b"] and first_failure(capped) == "c"


def test_a_mark_without_a_bound_is_an_error():
    ref, run = runs()
    with pytest.raises(KeyError, match=r"no bound for marks \['output'\]"):
        compare_simple(bounds={"a": 1, "b": 1, "c": 1})(run, ref)


def test_marks_on_one_side_only_are_an_error():
    ref, run = runs()
    run.outputs.pop("a")
    with pytest.raises(KeyError, match=r"marks present on one side only: \['a'\]"):
        compare_simple(bounds=bounds_of(BOUND))(run, ref)


def test_first_nonfinite_and_nondeterminism():
    ref, run = runs()
    run.outputs["c"][0] = float("inf")
    assert first_nonfinite(run) == "c" and first_nonfinite(ref) is None
    # a non-finite mark fails in its own right, whatever its bound: it is the first failure where nothing else is
    assert first_failure(compare_simple(bounds=bounds_of(1.0))(run, ref)) == "c"
    assert nondeterministic_marks(ref, run) == ["b", "c"]
    again = RunResult("again", {k: v.clone() for k, v in ref.outputs.items()})
    again.outputs["a"][3] = torch.nextafter(again.outputs["a"][3], torch.tensor(math.inf))  # one ulp: not the same
    assert nondeterministic_marks(ref, again) == ["a"]


def test_errors_against_an_oracle_and_round_trip(tmp_path):
    ref, run = runs()
    errors = errors_against(run, ref)
    assert errors["a"] == 0 and errors["b"] == pytest.approx(0.01)
    assert rel_l2(torch.zeros(3), torch.zeros(3)) == 0 and rel_l2(torch.ones(3), torch.zeros(3)) == math.inf
    assert math.isnan(rel_l2(torch.tensor([float("nan")]), torch.ones(1)))
    loaded = RunResult.load(ref.save(tmp_path / "ref.pt"))
    assert loaded.engine_name == "ref" and all(torch.equal(loaded.outputs[k], ref.outputs[k]) for k in ref.outputs)


@pytest.mark.parametrize(
    "error, bound, whole",
    [(0.01, 0.02, "pass"), (0.03, 0.02, "fail"), (0.1, 0.5, "images"), (0.6, 0.5, "fail"), (math.nan, 0.02, "fail")],
)
def test_the_output_end_to_end_passes_fails_or_goes_to_the_images(error, bound, whole):
    assert end_to_end(error, bound, cap=0.05) == whole


def test_an_engine_fails_on_its_output_alone_and_names_the_first_bad_mark_before_it():
    ok, bad, loose = (mark_stats(torch.ones(4) * (1 + e), torch.ones(4), bound=b, cap=0.05)
                      for e, b in ((0.0, 0.01), (0.5, 0.01), (0.0, 0.5)))  # fmt: skip
    assert engine_status({"a": ok, "b": ok}, nonfinite=None, whole="pass") == ("pass", "-")
    assert engine_status({"a": ok, "b": ok}, nonfinite=None, whole="fail") == ("FAIL", "output (end to end)")
    assert engine_status({"a": ok, "b": bad}, nonfinite=None, whole="fail") == ("FAIL", "b")
    assert engine_status({"a": loose, "b": ok}, nonfinite=None, whole="images") == ("unverifiable", "-")
    assert engine_status({"a": ok, "b": bad}, nonfinite="a", whole="pass") == ("NaN/Inf", "a")
