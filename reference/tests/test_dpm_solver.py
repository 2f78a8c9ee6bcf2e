import hashlib

import numpy as np
import pytest
import torch

from reference import dpm_solver as ds


@pytest.fixture(scope="module")
def schedule():
    return ds.NoiseScheduleVP(ds.sd_betas())


@pytest.mark.parametrize(
    "t, alpha, sigma, lam",
    [(1.0, 0.068265, 0.997667, -2.68202), (0.5, 0.526943, 0.849900, -0.47803), (0.001, 0.999575, 0.029155, 3.53470)],
    ids=["t=1", "t=0.5", "t=0.001"],
)
def test_schedule_check_values(schedule, t, alpha, sigma, lam):
    tt = torch.tensor([t])
    assert schedule.alpha(tt).item() == pytest.approx(alpha, abs=2e-6)
    assert schedule.sigma(tt).item() == pytest.approx(sigma, abs=2e-6)
    assert schedule.lambda_(tt).item() == pytest.approx(lam, abs=2e-5)


def test_inverse_lambda_inverts_lambda(schedule):
    t = torch.linspace(0.002, 0.999, 97)
    torch.testing.assert_close(schedule.inverse_lambda(schedule.lambda_(t)), t, atol=2e-5, rtol=0)


def test_interp_matches_numpy_inside_and_extends_linearly():
    xp, yp = torch.tensor([0.0, 1.0, 3.0]), torch.tensor([0.0, 2.0, 3.0])
    x = torch.tensor([-1.0, 0.0, 0.5, 1.0, 2.0, 3.0, 5.0])
    got = ds.interp(x, xp, yp)
    inside = np.interp(x.numpy()[1:6], xp.numpy(), yp.numpy())
    np.testing.assert_allclose(got.numpy()[1:6], inside, rtol=0, atol=1e-6)
    assert got[0].item() == pytest.approx(-2.0) and got[-1].item() == pytest.approx(4.0)


def test_fast_orders_for_50_calls():
    assert ds.fast_orders(50) == [3] * 16 + [2]


@pytest.mark.parametrize(
    "steps, orders", [(1, [1]), (2, [2]), (3, [2, 1]), (4, [3, 1]), (20, [3] * 6 + [2]), (25, [3] * 8 + [1])]
)
def test_fast_orders_take_any_step_count_as_upstream_does(steps, orders):
    assert ds.fast_orders(steps) == orders
    assert sum(orders) == steps == ds.make_plan(steps=steps).calls


@pytest.mark.parametrize("steps", [0, -3, 2.5, True, "50"])
def test_a_step_count_that_is_not_a_whole_number_from_1_is_refused(steps):
    with pytest.raises(ValueError, match="steps must be a whole number of model calls, at least 1"):
        ds.make_plan(steps=steps)


def plan_digest(plan: ds.Plan) -> str:
    h = hashlib.sha256()
    for u in plan.updates:
        h.update(repr([u.order, u.a1, u.b1, u.a, u.b, u.c, u.a2, u.b2, u.c2]).encode())
    for t in (plan.t_model, plan.alpha, plan.sigma):
        h.update(t.numpy().tobytes())
    return h.hexdigest()


def test_the_50_step_plan_is_bit_for_bit_the_one_every_committed_result_was_made_with():
    """Every coefficient and time of the 50-call plan, as computed before other step counts were supported (822abcd):
    the reference's images and every report rest on these exact numbers."""
    assert plan_digest(ds.make_plan()) == "460ecdb527f6bf4dfc9404bb828eaba82c0e1d073b12e8d8eadcdd0c66af10a3"


def test_plan_model_times_are_the_50_grid_times():
    plan = ds.make_plan()
    assert plan.calls == 50
    grid = 1000 - 19.98 * torch.arange(50, dtype=torch.float64)
    # s1, s2 come from inverse_lambda: within 5e-5 of the grid in t, i.e. 0.05 in model time
    assert (plan.t_model.double() - grid).abs().max() < 0.05
    assert plan.t_model[0] == 1000.0


@pytest.mark.parametrize("steps", [50, 25, 20, 4, 3, 2, 1])
def test_sampler_matches_a_float64_transcription_of_the_formulas(steps):
    """Run the plan on a linear 'model' and check it against SPEC's formulas evaluated in float64 (order 1:
    DPM-Solver++'s first-order update, x_t = sigma_t / sigma_s x - alpha_t expm1(-h) D_s)."""
    ns = ds.NoiseScheduleVP(ds.sd_betas().double())
    ns.t = ns.t.double()
    plan = ds.make_plan(steps=steps)
    x0 = torch.randn(3, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    data = lambda x, k: 0.3 * x + 0.1 * float(plan.t_model[k]) / 1000  # noqa: E731  any smooth D works

    ts = torch.linspace(1.0, 0.001, steps + 1, dtype=torch.float64)
    lam, sig, alp = ns.lambda_, ns.sigma, ns.alpha
    x, i, k = x0.clone(), 0, 0
    for order in ds.fast_orders(steps):
        s, t = ts[i : i + 1], ts[i + order : i + order + 1]
        h = lam(t) - lam(s)
        if order == 1:
            x = sig(t) / sig(s) * x - alp(t) * torch.expm1(-h) * data(x, k)
            i, k = i + 1, k + 1
            continue
        r1 = (lam(ts[i + 1 : i + 2]) - lam(s)) / h
        s1 = ns.inverse_lambda(lam(s) + r1 * h)
        d_s = data(x, k)
        x1 = sig(s1) / sig(s) * x - alp(s1) * torch.expm1(-r1 * h) * d_s
        d_1 = data(x1, k + 1)
        if order == 3:
            r2 = (lam(ts[i + 2 : i + 3]) - lam(s)) / h
            s2 = ns.inverse_lambda(lam(s) + r2 * h)
            phi22 = torch.expm1(-r2 * h) / (r2 * h) + 1
            x2 = sig(s2) / sig(s) * x - alp(s2) * torch.expm1(-r2 * h) * d_s + r2 / r1 * alp(s2) * phi22 * (d_1 - d_s)
            d_2 = data(x2, k + 2)
            phi2 = torch.expm1(-h) / h + 1
            x = sig(t) / sig(s) * x - alp(t) * torch.expm1(-h) * d_s + (1 / r2) * alp(t) * phi2 * (d_2 - d_s)
        else:
            phi1 = torch.expm1(-h)
            x = sig(t) / sig(s) * x - alp(t) * phi1 * d_s - (0.5 / r1) * alp(t) * phi1 * (d_1 - d_s)
        i, k = i + order, k + order
    got = ds.sample(lambda x, k: data(x, k).float(), x0.float(), plan)
    torch.testing.assert_close(got.double(), x, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("steps", [50, 25, 1])
def test_sampler_calls_the_model_once_per_step_in_order(steps):
    seen = []
    ds.sample(lambda x, k: seen.append(k) or x, torch.zeros(1, 2), ds.make_plan(steps=steps))
    assert seen == list(range(steps))


def test_plan_coefficients_of_each_call_are_the_schedule_at_its_time(schedule):
    """D = (x - sigma eps) / alpha at each call uses alpha and sigma of that call's own time: the first call is at t=1
    (SPEC's check values), every call's alpha^2 + sigma^2 = 1."""
    plan = ds.make_plan()
    t = plan.t_model / ds.N_TRAIN
    torch.testing.assert_close(plan.alpha, schedule.alpha(t), rtol=0, atol=1e-6)
    torch.testing.assert_close(plan.sigma, schedule.sigma(t), rtol=0, atol=1e-6)
    assert plan.alpha[0].item() == pytest.approx(0.068265, abs=2e-6)
    assert plan.sigma[0].item() == pytest.approx(0.997667, abs=2e-6)
    torch.testing.assert_close(plan.alpha**2 + plan.sigma**2, torch.ones(plan.calls), rtol=0, atol=1e-5)
