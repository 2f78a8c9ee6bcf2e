"""Every accuracy bound, in one table, and the rule that turns it into a bound for each mark.

TorchBench's rule (torch._dynamo.utils.same): an engine at a precision may be at most MULTIPLIER times as far from
the fp64 oracle as a plain implementation at that precision is, plus a small floor:

    bound(mark) = multiplier * plain(mark) + floor          plain(mark) = rel L2(plain run, oracle) at the mark

The oracle is the reference in fp64, making the engine's declared approximations (reference/approximations.py),
recomputed at each mark from the values the run being judged holds at the marks before it (anchored: reference/
tests/References), so that plain(mark) is the rounding added between two marks, not all that came before; the
output is judged end to end too, with the plain run's end-to-end error there.
The plain implementation is that same module cast to the precision and run eagerly, the reference's own code: what
straightforward code at the precision reaches at that mark, on these weights and inputs. So a bound is argued from
the precision itself, layer by layer, and moves with depth and weights as rounding does; no bound is scaled from
another precision's.

    precision  plain run                           multiplier  floor
    fp32       the fp32 reference                  2           1e-5
    fp16       the reference cast to fp16          3           2^-11: one rounding of fp16
    bf16       the reference cast to bf16          3           2^-8
    fp8        fp16, its block linears' inputs     3           2^-11: the activations are fp16; e4m3's own rounding
               and weights rounded through e4m3                is in the oracle
               (the engine's FP8 recipe)

Multipliers are TorchBench's (2 for fp32, 3 where it checks fp16/bf16/AMP: "to avoid false alarms"). So is fp32's
floor, its tol / 10 with fp32's tol 1e-4: fp32 errors are set by the order of long sums, which differs from kernel to
kernel, and the plain code is at times far luckier than the engine. Measured: a GroupNorm over groups whose mean is 15
times their spread (the trained-like decoder) errs 3.5e-6 in Inductor's CPU kernel against ATen's 3.4e-7, ten times;
a decoder that folds its upsampling into other weights (upsample=subpixel) 2.06 times the plain error at one mark.
For the lower precisions the floor is one rounding: their errors are set by the values stored at that precision,
which an engine shares with the plain code, and the floor covers an engine that rounds once more. The measured ratio
of engine to plain error per mark is in reports/accuracy.md ("worst engine/plain").

CAP: no bound may exceed a relative L2 error of 0.05 at any mark. Above it a check would pass an output 5% wrong,
wider than the smallest fault the fault matrix must catch where it is injected (reports/accuracy.md, fault matrix);
a bound above it is an error of the table, never a pass: the mark is "unverifiable" at that precision (reference/
compare.py), and an engine with such marks is not reported as passing. An error over the bound still fails.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

UNIT_ROUNDOFF = {"fp64": 2.0**-53, "fp32": 2.0**-24, "fp16": 2.0**-11, "bf16": 2.0**-8}
CAP = 0.05


@dataclass(frozen=True)
class Rule:
    multiplier: float
    floor: float
    plain: str  # the precision the plain implementation runs at
    cap: float = CAP

    def bound(self, plain_error: float) -> float:
        """inf where the plain run did not come out finite: no bound, so no verdict (above any cap)."""
        return self.multiplier * plain_error + self.floor if math.isfinite(plain_error) else math.inf


# component -> precision -> mark -> Rule; "" entries are the defaults.
TOLERANCES: dict[str, dict[str, dict[str, Rule]]] = {
    "": {
        "fp32": {"": Rule(2.0, 1e-5, plain="fp32")},
        "fp16": {"": Rule(3.0, UNIT_ROUNDOFF["fp16"], plain="fp16")},
        "bf16": {"": Rule(3.0, UNIT_ROUNDOFF["bf16"], plain="bf16")},
        "fp8": {"": Rule(3.0, UNIT_ROUNDOFF["fp16"], plain="fp16")},
    },
}
PRECISIONS = tuple(TOLERANCES[""])


def rule_for(component: str, precision: str, mark: str = "") -> Rule:
    if precision not in PRECISIONS:
        raise ValueError(f"no tolerance for precision {precision!r}; choose from {list(PRECISIONS)}")
    table = {**TOLERANCES[""][precision], **TOLERANCES.get(component, {}).get(precision, {})}
    return table.get(mark, table[""])


def bounds(component: str, precision: str, plain_errors: dict[str, float]) -> dict[str, float]:
    """Each mark's bound from the plain implementation's error there."""
    return {mark: rule_for(component, precision, mark).bound(plain) for mark, plain in plain_errors.items()}


def caps(component: str, precision: str, marks: list[str]) -> dict[str, float]:
    return {mark: rule_for(component, precision, mark).cap for mark in marks}


# Image verdicts (bench/quality.py): a recipe's images over the 40 (prompt, seed) pairs of the original protocol against
# the strict-fp32 reference's. PD's limits come from the contest (SPEC section 7): an image above 12 failed, and the
# seed's accepted fp16 engine averaged 6.883 with real weights, so a mean limit must sit above that. The others from the
# clean engines' spread measured so far (H100, upstream-init weights, quality-h100-seed.json, in the history before the
# H200 snapshot): the fast fp16 recipe at PSNR >= 59.1 dB, SSIM 0.9999, latents 0.0016; the fast-fp8 one, the least
# exact recipe that is correct, at PSNR 32.6-33.5 dB, SSIM 0.986-0.988, latents 0.111-0.118. The limits leave it a
# margin (7 dB, SSIM 0.19, latents 2x) and fail an engine whose images are a different picture (PSNR 25 dB is a mean
# pixel error of about 10 of 255). Measured since at the trained-like weights (H200, reports/pd.md): the fast fp16
# recipe at PSNR >= 37.6 dB, SSIM 0.995, latents 0.066, PD <= 2.0; fast-fp8 at PD <= 7.7 but PSNR 22.3 dB and latents
# 0.42, failing. The limits stay as argued before that run: loosened after a failure, they would be fitted to pass it.
# The fp16 clean spread is far inside them; only the fp8 recipe's approximation is not.
#   metric                 aggregate over the images  passes when
IMAGE_THRESHOLDS: dict[str, tuple[str, str, float]] = {
    "pd": ("max", "<=", 12.0),  # the contest's rule, image by image
    "pd_mean": ("mean", "<=", 8.0),  # above the seed's accepted 6.883, below the per-image limit
    "psnr_db": ("min", ">=", 25.0),
    "ssim": ("min", ">=", 0.80),
    "latents_rel_l2": ("max", "<=", 0.25),
}
