"""Noise schedule and singlestep DPM-Solver++ ("fast", time_uniform), as UniDiffuser samples (SPEC section 4).

The solver is split in two: `make_plan` computes every scalar of the schedule (50 calls by default, any count of at
least 1) once, in fp32 on the CPU with upstream's order of operations (thu-ml/unidiffuser dpm_solver_pp.py,
`DPM_Solver.sample(method='fast')`), and `sample` runs the loop with those scalars. The loop therefore never reads a
device value back to the host, so a whole-loop CUDA graph is possible.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

N_TRAIN = 1000  # discrete training steps; the network sees t_model = 1000 * t
STEPS = 50  # configs/sample_unidiffuser_v1.py: sample.sample_steps, the model calls of one image


def sd_betas(n: int = N_TRAIN, start: float = 0.00085, end: float = 0.012) -> Tensor:
    """Stable Diffusion's "scaled linear" betas: linspace of square roots in float64, squared, then float32."""
    return (torch.linspace(start**0.5, end**0.5, n, dtype=torch.float64) ** 2).float()


def interp(x: Tensor, xp: Tensor, yp: Tensor) -> Tensor:
    """Piecewise-linear y(x) through knots (xp increasing), extended linearly past both ends. x: (n,) -> (n,)."""
    k = torch.searchsorted(xp, x).clamp(1, xp.numel() - 1)  # right knot of the segment
    x0, x1, y0, y1 = xp[k - 1], xp[k], yp[k - 1], yp[k]
    return y0 + (x - x0) * (y1 - y0) / (x1 - x0)


class NoiseScheduleVP:
    """Discrete VP schedule: log alpha piecewise linear in t over the knots t_i = (i + 1) / N."""

    def __init__(self, betas: Tensor):
        self.log_alpha = 0.5 * torch.log(1 - betas).cumsum(dim=0)  # (N,) decreasing
        self.t = torch.linspace(1.0 / betas.numel(), 1.0, betas.numel())  # (N,) increasing

    def log_alpha_at(self, t: Tensor) -> Tensor:
        return interp(t.reshape(-1), self.t, self.log_alpha)

    def alpha(self, t: Tensor) -> Tensor:
        return torch.exp(self.log_alpha_at(t))

    def sigma(self, t: Tensor) -> Tensor:
        return torch.sqrt(1.0 - torch.exp(2.0 * self.log_alpha_at(t)))

    def lambda_(self, t: Tensor) -> Tensor:  # half log-SNR
        la = self.log_alpha_at(t)
        return la - 0.5 * torch.log(1.0 - torch.exp(2.0 * la))

    def inverse_lambda(self, lam: Tensor) -> Tensor:
        log_alpha = -0.5 * torch.logaddexp(torch.zeros(1), -2.0 * lam)
        return interp(log_alpha.reshape(-1), self.log_alpha.flip(0), self.t.flip(0))


def check_steps(steps: object) -> int:
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a whole number of model calls, at least 1; got {steps!r}")
    return steps


def fast_orders(steps: int) -> list[int]:
    """DPM-Solver-fast with order 3: 50 calls -> [3] * 16 + [2]; upstream's last update is of order 1 or 2 where
    `steps` is not 2 more than a multiple of 3 (25 calls -> [3] * 8 + [1], 3 -> [2, 1], 1 -> [1])."""
    K = check_steps(steps) // 3 + 1
    return {0: [3] * (K - 2) + [2, 1], 1: [3] * (K - 1) + [1], 2: [3] * (K - 1) + [2]}[steps % 3]


@dataclass(frozen=True)
class Update:
    """One singlestep update of order 1, 2 or 3; each coefficient is an exact fp32 value held as a Python float.

    x1 = a1 x - b1 D_s;  x2 = a2 x - b2 D_s + c2 (D_1 - D_s);  x_t = a x - b D_s + c (D_last - D_s)
    Order 1 (DPM-Solver++'s first-order update) is x_t = a x - b D_s alone.
    """

    order: int
    a: float
    b: float
    c: float = 0.0
    a1: float = 0.0
    b1: float = 0.0
    a2: float = 0.0
    b2: float = 0.0
    c2: float = 0.0


@dataclass(frozen=True)
class Plan:
    updates: tuple[Update, ...]
    t_model: Tensor  # (calls,) network time 1000 * t of each model call
    alpha: Tensor  # (calls,) alpha_t of each call, for D = (x - sigma eps) / alpha
    sigma: Tensor  # (calls,)

    @property
    def calls(self) -> int:
        return self.t_model.numel()


def make_plan(
    *, steps: int = STEPS, t_start: float = 1.0, t_end: float = 1.0 / N_TRAIN, betas: Tensor | None = None
) -> Plan:
    ns = NoiseScheduleVP(sd_betas() if betas is None else betas)
    ts = torch.linspace(t_start, t_end, check_steps(steps) + 1)  # (steps + 1,) time_uniform grid
    f = lambda v: float(v.reshape(()))  # noqa: E731  exact: an fp32 value is a double
    updates, call_t = [], []
    i = 0
    for order in fast_orders(steps):
        s, t = ts[i : i + 1], ts[i + order : i + order + 1]
        lam_s, lam_t = ns.lambda_(s), ns.lambda_(t)
        h = lam_t - lam_s
        sig_s, sig_t, al_t = ns.sigma(s), ns.sigma(t), torch.exp(ns.log_alpha_at(t))
        phi_1 = torch.expm1(-h)
        if order == 1:
            updates.append(Update(order=1, a=f(sig_t / sig_s), b=f(al_t * phi_1)))
            call_t.append(s)
            i += 1
            continue
        r1 = (ns.lambda_(ts[i + 1 : i + 2]) - lam_s) / h
        s1 = ns.inverse_lambda(lam_s + r1 * h)
        sig_s1, al_s1 = ns.sigma(s1), torch.exp(ns.log_alpha_at(s1))
        phi_11 = torch.expm1(-r1 * h)
        common = dict(order=order, a1=f(sig_s1 / sig_s), b1=f(al_s1 * phi_11), a=f(sig_t / sig_s), b=f(al_t * phi_1))
        if order == 3:
            r2 = (ns.lambda_(ts[i + 2 : i + 3]) - lam_s) / h
            s2 = ns.inverse_lambda(lam_s + r2 * h)
            sig_s2, al_s2 = ns.sigma(s2), torch.exp(ns.log_alpha_at(s2))
            phi_12 = torch.expm1(-r2 * h)
            phi_22 = torch.expm1(-r2 * h) / (r2 * h) + 1.0
            phi_2 = phi_1 / h + 1.0
            u = Update(
                **common,
                c=f((1.0 / r2) * (al_t * phi_2)),
                a2=f(sig_s2 / sig_s),
                b2=f(al_s2 * phi_12),
                c2=f(r2 / r1 * (al_s2 * phi_22)),
            )
            call_t += [s, s1, s2]
        else:
            u = Update(**common, c=-f((0.5 / r1) * (al_t * phi_1)))  # upstream subtracts this term
            call_t += [s, s1]
        updates.append(u)
        i += order
    t = torch.cat(call_t)  # (calls,)
    return Plan(tuple(updates), t_model=t * N_TRAIN, alpha=ns.alpha(t), sigma=ns.sigma(t))


DataPrediction = Callable[[Tensor, int], Tensor]  # (x, call index) -> D(x, t_call)


def sample(data_prediction: DataPrediction, x: Tensor, plan: Plan) -> Tensor:
    """Run the plan from x at t=1: x (B, X) -> x at t_end. `data_prediction` gets the call index 0..calls-1."""
    k = 0
    for u in plan.updates:
        d_s = data_prediction(x, k)
        if u.order == 1:
            x, k = u.a * x - u.b * d_s, k + 1
            continue
        x1 = u.a1 * x - u.b1 * d_s
        d_last = data_prediction(x1, k + 1)
        if u.order == 3:
            x2 = u.a2 * x - u.b2 * d_s + u.c2 * (d_last - d_s)
            d_last = data_prediction(x2, k + 2)
        x = u.a * x - u.b * d_s + u.c * (d_last - d_s)
        k += u.order
    return x
