"""The bound rule itself: a multiplier on the plain engine's error plus a floor, capped; what each precision gets."""

import math

import pytest

from reference.tolerances import CAP, bounds, caps


@pytest.mark.parametrize(
    "component, precision, multiplier, floor",
    [("uvit", "fp32", 2.0, 1e-5), ("clip", "fp16", 3.0, 2.0**-11), ("decoder", "bf16", 3.0, 2.0**-8),
     ("uvit", "fp8", 3.0, 2.0**-11)],
)  # fmt: skip
def test_a_bound_is_the_multiplier_times_the_plain_error_plus_the_floor(component, precision, multiplier, floor):
    plain = {"a": 0.0, "b": 1e-3, "c": float("nan")}
    got = bounds(component, precision, plain)
    assert got["a"] == pytest.approx(floor) and got["b"] == pytest.approx(multiplier * 1e-3 + floor)
    assert math.isinf(got["c"])  # a plain run that came out NaN gives no bound: no verdict, not a pass
    assert set(caps(component, precision, list(plain)).values()) == {CAP} and CAP == 0.05
