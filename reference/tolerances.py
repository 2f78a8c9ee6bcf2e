"""Every accuracy tolerance, in one table: component x precision, with per-mark overrides ("" is the default key).

The rule (reference/compare.py, `Tolerance`): a mark passes when its relative L2 error against the strict-fp32
reference is at most max(rel_l2, k * floor), where floor is the fp32 reference's own relative L2 error against an
fp64 run of the same component at that mark. The floor grows with depth, so deep layers get room that shallow ones
do not, and a precision may be as far from fp32 as fp32 is from fp64, scaled by the ratio of unit roundoffs:

    precision  unit roundoff u  rel_l2 = 4u   k = S * u / u_fp32
    fp32       2^-24            2.4e-7        S = 8: another fp32 implementation (Inductor's reduction order,
                                              two-call guidance) measured at up to 1.9x the floor (H100, full
                                              size) and 4.1x (CPU, tiny)
    fp16       2^-11            2.0e-3        S = 2: measured up to 0.67 * u_fp16/u_fp32 * floor (H100)
    bf16       2^-8             1.6e-2        S = 2: measured up to 0.68 * u_bf16/u_fp32 * floor (H100; 0.69 CPU)
    fp8        2^-4 (e4m3)      0.25          S = 2, the rule unchanged; only the U-ViT's block linears are e4m3.
                                              The bound is loose by construction (at least 25%): an fp8 engine's
                                              verdict is its pixel metrics against fp32 and fp16 (reports/pd.md).

Measured on 52 engines at full size on an H100 (reports/accuracy.md): the worst mark used 0.23 (fp32), 0.30
(fp16) and 0.30 (bf16) of its bound; every fault of reference/tests/test_fault_injection.py exceeds it.

`reports/accuracy.md` lists the measured floor, the bound and the ratio of every mark, so a change of these numbers
can be argued from data.
"""

from __future__ import annotations

from reference.compare import Tolerance

UNIT_ROUNDOFF = {"fp64": 2.0**-53, "fp32": 2.0**-24, "fp16": 2.0**-11, "bf16": 2.0**-8, "fp8": 2.0**-4}
SAFETY = {"fp64": 8.0, "fp32": 8.0, "fp16": 2.0, "bf16": 2.0, "fp8": 2.0}


def _rule(precision: str) -> Tolerance:
    u = UNIT_ROUNDOFF[precision]
    return Tolerance(rel_l2=4 * u, k=SAFETY[precision] * u / UNIT_ROUNDOFF["fp32"], atol=1e-5, rtol=64 * u)


# component -> precision -> mark -> Tolerance; "" entries are the defaults.
TOLERANCES: dict[str, dict[str, dict[str, Tolerance]]] = {
    "": {p: {"": _rule(p)} for p in UNIT_ROUNDOFF},
}


def tolerance_for(component: str, precision: str) -> tuple[Tolerance, dict[str, Tolerance]]:
    """The default tolerance for (component, precision) and its per-mark overrides."""
    if precision not in UNIT_ROUNDOFF:
        raise ValueError(f"no tolerance for precision {precision!r}; choose from {list(UNIT_ROUNDOFF)}")
    table = {**TOLERANCES[""].get(precision, {}), **TOLERANCES.get(component, {}).get(precision, {})}
    default = table.pop("")
    return default, table
