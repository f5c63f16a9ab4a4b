"""The samplers' pieces by value (issue 18: what the first mutation run of distill/core/samplers/ left unchecked).

* DDIM(eta > 0) is the DDPM posterior q(x_s | x_t, x0) exactly (Song et al. 2021, eq. 16 with eta = 1), and
  its noise is the generator's draw;
* ``predict_fn`` binds a condition (broadcast from one row), classifier-free guidance and checkpointing, checked
  against an analytic conditional Gaussian prior whose posterior mean is known in closed form;
* the solvers keep the sample's dtype on float64 grids, DPM-Solver++(2M) drops to first order on the last step
  only below 15 steps (as diffusers does), each names itself on its progress bar;
* the DDPM-strided grid at its edges (one step, an unreachable noise end, a start cleaner than DDPM's first step).
"""

from __future__ import annotations

import math

import pytest
import torch

from priorkit.distill.core.denoiser import Denoiser
from priorkit.distill.core.samplers import dpm_solver, euler, heun, nfe, predict_fn, time_grid
from priorkit.distill.core.samplers.base import DDPM_BETA, ddpm_grid, steps_bar
from priorkit.distill.core.samplers.ddim import _time, ddim_coefficients, ddim_next, ddim_step
from priorkit.distill.core.schedule import VE, FlowMatching, VPCosine, VPLinear

F64 = torch.float64


class GaussianPrior(Denoiser):
    """x0 ~ N(mu(c), s^2 I) with mu(c) = c[:, 0, :] (token 0 of a (B, L, D) condition; 0 without one).

    E[x0 | x_t] = mu + alpha s^2 / (alpha^2 s^2 + sigma^2) (x_t - alpha mu), exactly.
    """

    def __init__(self, schedule, s: float = 0.7) -> None:  # noqa: ANN001
        super().__init__()
        self.schedule, self.s2 = schedule, s * s

    def predict_native(self, x, t, cond=None):  # noqa: ANN001, ANN201
        return "x0", self.posterior_mean(x, t, cond)

    def posterior_mean(self, x, t, cond):  # noqa: ANN001, ANN201
        if cond is not None and cond.shape[0] != x.shape[0]:
            raise ValueError(f"{cond.shape[0]} conditions for {x.shape[0]} samples")
        mu = torch.zeros_like(x) if cond is None else cond[:, 0, :].to(x)
        a = self.schedule.alpha(t).to(x).reshape(-1, 1)
        sig = self.schedule.sigma(t).to(x).reshape(-1, 1)
        return mu + a * self.s2 / (a * a * self.s2 + sig * sig) * (x - a * mu)

    def null_condition(self, cond):  # noqa: ANN001, ANN201
        return torch.zeros_like(cond)


class Counting(GaussianPrior):
    """Counts its model calls (a checkpointed call runs again in backward)."""

    calls = 0

    def predict_native(self, x, t, cond=None):  # noqa: ANN001, ANN201
        type(self).calls += 1
        return super().predict_native(x, t, cond)


# ---- DDIM(eta) ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("schedule", [VPCosine(), VPLinear(), FlowMatching(), VE()], ids=lambda s: type(s).__name__)
def test_ddim_eta_one_is_the_ddpm_posterior(schedule) -> None:  # noqa: ANN001
    t, s = 0.7, 0.4
    a_t, sig_t = float(schedule.alpha(torch.tensor(t, dtype=F64))), float(schedule.sigma(torch.tensor(t, dtype=F64)))
    a_s, sig_s = float(schedule.alpha(torch.tensor(s, dtype=F64))), float(schedule.sigma(torch.tensor(s, dtype=F64)))
    a_ts = a_t / a_s                                  # x_t = a_ts x_s + sig_ts z
    var_ts = sig_t**2 - a_ts**2 * sig_s**2
    post_var = sig_s**2 * var_ts / sig_t**2           # Var[x_s | x_t, x0]
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(3, generator=g, dtype=F64).expand(200_000, 3).clone()
    eps = torch.randn(3, generator=g, dtype=F64).expand(200_000, 3).clone()
    x_t = a_t * x0 + sig_t * eps
    post_mean = a_ts * sig_s**2 / sig_t**2 * x_t + a_s * var_ts / sig_t**2 * x0
    xs = ddim_step(x0, eps, t, s, schedule, eta=1.0, generator=torch.Generator().manual_seed(1))
    se = math.sqrt(post_var / xs.shape[0])
    assert (xs.mean(0) - post_mean[0]).abs().max() < 5 * se + 1e-12
    assert abs(float(xs.var(0).mean()) / post_var - 1) < 0.02
    # the coefficients themselves, and the noise is exactly the generator's next draw
    a, k, c = ddim_coefficients(t, s, schedule, eta=1.0)
    assert math.isclose(float(a), a_s, rel_tol=1e-12) and math.isclose(float(c) ** 2, post_var, rel_tol=1e-9)
    assert math.isclose(float(k) ** 2 + float(c) ** 2, sig_s**2, rel_tol=1e-9)
    z = torch.randn(x0[:4].shape, generator=torch.Generator().manual_seed(5), dtype=F64)
    got = ddim_step(x0[:4], eps[:4], t, s, schedule, eta=1.0, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(got, a_s * x0[:4] + float(k) * eps[:4] + float(c) * z, rtol=1e-12, atol=1e-12)


def test_ddim_coefficients_interpolate_with_eta_and_accept_per_sample_times() -> None:
    sch = FlowMatching()  # sigma(0) = 0 exactly
    t, s = torch.tensor([0.9, 0.6, 0.5]), torch.tensor([0.5, 0.3, 0.0])
    a, k, c = ddim_coefficients(t, s, sch, eta=0.5)
    full = ddim_coefficients(t, s, sch, eta=1.0)[2]
    torch.testing.assert_close(c, 0.5 * full)
    torch.testing.assert_close(k * k + c * c, sch.sigma(s) ** 2, atol=1e-6, rtol=1e-5)
    assert float(c[2]) == 0.0 and float(k[2]) == 0.0 and float(a[2]) == 1.0  # into the clean end: no noise
    a0, k0, c0 = ddim_coefficients(0.9, 0.5, sch, eta=0.0)
    assert float(c0) == 0.0 and k0.dtype == F64 and math.isclose(float(k0), float(sch.sigma(torch.tensor(0.5))),
                                                                   rel_tol=1e-6)
    torch.testing.assert_close(ddim_coefficients(0.9, 0.5, sch), ddim_coefficients(0.9, 0.5, sch, eta=1.0))  # DDPM
    assert _time(0.3).dtype == F64 and float(_time(0.3)) == 0.3
    assert _time(torch.tensor(0.3)).dtype == torch.float32


def test_ddim_step_with_eta_between_zero_and_one_and_into_the_clean_end() -> None:
    sch = FlowMatching()
    g = torch.Generator().manual_seed(2)
    x0, eps = torch.randn(4, 2, generator=g), torch.randn(4, 2, generator=g)
    a, k, c = ddim_coefficients(0.8, 0.5, sch, eta=0.5)
    z = torch.randn(4, 2, generator=torch.Generator().manual_seed(3))
    got = ddim_step(x0, eps, 0.8, 0.5, sch, eta=0.5, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(got, float(a) * x0 + float(k) * eps + float(c) * z)
    assert got.dtype == torch.float32
    torch.testing.assert_close(ddim_step(x0, eps, 0.8, 0.0, sch, eta=1.0), x0)  # sigma = 0: x0, no draw
    per_sample = ddim_step(x0, eps, torch.full((4,), 0.8), torch.tensor([0.5, 0.5, 0.2, 0.2]), sch)
    torch.testing.assert_close(per_sample[2:], ddim_step(x0[2:], eps[2:], 0.8, 0.2, sch))
    p = GaussianPrior(sch)(x0, 0.8)
    torch.testing.assert_close(ddim_next(p, 0.5), ddim_step(p.x0, p.eps, 0.8, 0.5, sch))


# ---- predict_fn ---------------------------------------------------------------------------------------------------
def test_predict_fn_binds_a_broadcast_condition_guidance_and_checkpointing() -> None:
    sch = VPCosine()
    den = GaussianPrior(sch)
    g = torch.Generator().manual_seed(4)
    x, t = torch.randn(5, 3, generator=g, dtype=F64), torch.tensor(0.6, dtype=F64)
    cond = torch.randn(1, 2, 3, generator=g, dtype=F64)  # one prompt's states for the whole batch
    for b in (1, 2):  # one condition row for a batch of one, of two
        torch.testing.assert_close(predict_fn(den, cond)(x[:b], t).x0,
                                   den.posterior_mean(x[:b], t.reshape(1), cond.expand(b, 2, 3)))
    narrow = torch.randn(4, 1, generator=g, dtype=F64)  # one feature per sample: the batch is dim 0, not dim 1
    torch.testing.assert_close(predict_fn(den, cond[:, :, :1])(narrow, t).x0,
                               den.posterior_mean(narrow, t.reshape(1), cond[:, :, :1].expand(4, 2, 1)))
    exact_c = den.posterior_mean(x, t.reshape(1), cond.expand(5, 2, 3))
    exact_u = den.posterior_mean(x, t.reshape(1), None)
    torch.testing.assert_close(predict_fn(den, cond)(x, t).x0, exact_c)
    torch.testing.assert_close(predict_fn(den, cond, 3.0)(x, t).x0, exact_u + 3.0 * (exact_c - exact_u))
    torch.testing.assert_close(predict_fn(den, None, 3.0)(x, t).x0, exact_u)  # nothing to guide towards
    rows = torch.randn(5, 2, 3, generator=g, dtype=F64)  # one condition per row is used as given
    torch.testing.assert_close(predict_fn(den, rows)(x, t).x0, den.posterior_mean(x, t.reshape(1), rows))
    # checkpointing recomputes in backward: same values, same gradients
    xa, xb = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    pa, pb = predict_fn(den, cond, 2.0)(xa, t), predict_fn(den, cond, 2.0, checkpoint=True)(xb, t)
    torch.testing.assert_close(pa.x0, pb.x0)
    torch.testing.assert_close(pa.eps, pb.eps)
    (pa.x0.square().sum() + pa.eps.sum()).backward()
    (pb.x0.square().sum() + pb.eps.sum()).backward()
    torch.testing.assert_close(xa.grad, xb.grad)
    assert pb.t.dtype == pa.t.dtype and torch.equal(pb.t, pa.t)
    # float32 samples on a float64 time: the prediction's time is the sample's dtype, with or without checkpointing
    x32 = x.float().requires_grad_(True)
    assert predict_fn(den, cond, 2.0, checkpoint=True)(x32, t).t.dtype == torch.float32
    # checkpointing is off by default; on, the model runs again in the backward pass (and only then)
    counting = Counting(sch)
    for fn, backward_calls in ((predict_fn(counting, cond), 0), (predict_fn(counting, cond, checkpoint=True), 1)):
        xc = x.clone().requires_grad_(True)
        Counting.calls = 0
        out = fn(xc, t).x0.sum()
        assert Counting.calls == 1
        out.backward()
        assert Counting.calls == 1 + backward_calls


# ---- the solvers ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("solver", [euler.euler, heun.heun, dpm_solver.dpm_solver_2m], ids=lambda f: f.__name__)
def test_solvers_keep_the_samples_dtype_on_float64_grids(solver) -> None:  # noqa: ANN001
    den = GaussianPrior(VPCosine())
    x = torch.randn(4, 3, generator=torch.Generator().manual_seed(6))
    times = time_grid(den.schedule, 6, "logsnr")
    assert times.dtype == F64
    out = solver(predict_fn(den), x, times)
    assert out.dtype == torch.float32
    ref = solver(predict_fn(den), x.double(), times)
    torch.testing.assert_close(out.double(), ref, atol=1e-4, rtol=1e-4)


def _dpm_2m_reference(den: GaussianPrior, x: torch.Tensor, times: torch.Tensor,
                      second_order_last: bool) -> torch.Tensor:
    """DPM-Solver++(2M), Lu et al. 2022 Alg. 2, written out: first step first order, then multistep."""
    sch = den.schedule
    lam = [float(sch.half_log_snr(t)) for t in times]
    prev = None
    for i in range(len(times) - 1):
        s, t = times[i], times[i + 1]
        x0 = den.posterior_mean(x, s.reshape(1), None)
        h = lam[i + 1] - lam[i]
        last = i == len(times) - 2
        if prev is None or (last and not second_order_last):
            d = x0
        else:
            r = (lam[i] - lam[i - 1]) / h
            d = (1 + 1 / (2 * r)) * x0 - 1 / (2 * r) * prev
        x = float(sch.sigma(t) / sch.sigma(s)) * x - float(sch.alpha(t)) * math.expm1(-h) * d
        prev = x0
    return x


@pytest.mark.parametrize("steps", [14, 15])
def test_dpm_solver_lower_order_final_below_15_steps_only(steps: int) -> None:
    den = GaussianPrior(VPCosine())
    x = torch.randn(3, 2, generator=torch.Generator().manual_seed(7), dtype=F64)
    times = time_grid(den.schedule, steps, "logsnr", end=0.01)  # no clean end: the rule alone decides
    got = dpm_solver.dpm_solver_2m(predict_fn(den), x, times)
    torch.testing.assert_close(got, _dpm_2m_reference(den, x, times, second_order_last=steps >= 15))
    other = _dpm_2m_reference(den, x, times, second_order_last=steps < 15)
    assert (got - other).abs().max() > 1e-9


def test_nfe_of_each_solver() -> None:
    assert nfe("euler", 7) == 7 and nfe("dpm++2m", 7) == 7 and nfe("dpm++2m", 7, clean_end=False) == 7
    assert nfe("heun", 7) == 13 and nfe("heun", 7, clean_end=False) == 14
    assert euler.nfe(3, clean_end=False) == 3 and heun.nfe(7) == 13  # by default the grid ends clean


@pytest.mark.parametrize(("solver", "name"), [(euler.euler, "euler"), (heun.heun, "heun"),
                                              (dpm_solver.dpm_solver_2m, "dpm-solver++")])
def test_each_solver_names_itself_on_its_progress_bar(solver, name: str, capsys) -> None:  # noqa: ANN001
    den = GaussianPrior(VPCosine())
    x = torch.zeros(1, 1)
    solver(predict_fn(den), x, time_grid(den.schedule, 3, end=0.01), progress=True)
    err = capsys.readouterr().err
    assert f"{name}: " in err and "0/3" in err and not err.endswith("\n")  # named, then cleared (leave=False)
    solver(predict_fn(den), x, time_grid(den.schedule, 3, end=0.01))  # None: short runs show no bar
    assert capsys.readouterr().err == ""


def test_steps_bar_shows_from_50_steps_unless_told(capsys) -> None:
    for n, progress, shown in ((49, None, False), (50, None, True), (3, True, True), (80, False, False)):
        assert list(steps_bar(n, "solve", progress)) == list(range(n))
        err = capsys.readouterr().err
        assert ("solve:   0%|" in err and f"0/{n}" in err) is shown, (n, progress, err)
        assert not err.endswith("\n")  # a finished bar is cleared, not left on the terminal


# ---- grids at their edges ----------------------------------------------------------------------------------------
def test_time_grid_edges() -> None:
    sch = VPCosine()
    assert torch.equal(time_grid(sch, 1), torch.tensor([sch.t_max, 0.0], dtype=F64))
    with pytest.raises(ValueError, match="steps must be >= 1; got 0"):
        time_grid(sch, 0)
    with pytest.raises(ValueError, match="unknown spacing 'cosine'"):
        time_grid(sch, 4, "cosine")
    # end=None stops at t_min; a grid with a finite end is spaced all the way to it
    g = time_grid(sch, 4, "logsnr", t_min=0.05, end=None)
    assert len(g) == 5 and float(g[-1]) == 0.05
    assert float(time_grid(sch, 4, "logsnr", t_min=0.05, end=0.01)[-1]) == 0.01  # a noisy end below t_min: kept
    lam = sch.log_snr(time_grid(sch, 4, "logsnr", end=0.2))
    torch.testing.assert_close(lam.diff(), lam.diff()[:1].expand(4), rtol=1e-9, atol=1e-9)
    # with a clean end, the spaced part stops at t_min and one step goes to 0; two steps still end there
    g2 = time_grid(sch, 2, "logsnr", t_min=0.1)
    assert g2.tolist()[1:] == [0.1, 0.0]
    assert torch.equal(time_grid(sch, 3, "ddpm", t_max=0.8), ddpm_grid(sch, 3, t_max=0.8))
    assert torch.equal(time_grid(sch, 3, "ddpm", end=0.05), ddpm_grid(sch, 3, end=0.05))


def test_ddpm_grid_edges() -> None:
    sch = VPCosine()
    assert torch.equal(ddpm_grid(sch, 1), torch.tensor([sch.t_max, 0.0], dtype=F64))
    assert torch.equal(ddpm_grid(sch, 4), ddpm_grid(sch, 4, t_max=sch.t_max))
    # a start cleaner than DDPM's first timestep: nothing to stride over, uniform in t
    # an end noisier than DDPM's first timestep: the strided part ends at the end's own noise level
    late = ddpm_grid(sch, 3, end=0.3)
    assert math.isclose(float(late[-2]), 0.3, rel_tol=1e-6) and float(late[-1]) == 0.3
    b0, b1 = DDPM_BETA

    def u_of(lam: float) -> float:  # B(u) = b0 u + (b1 - b0) u^2 / 2 = log(1 + e^-lam), solved for u
        return (-b0 + math.sqrt(b0 * b0 + 2 * (b1 - b0) * math.log1p(math.exp(-lam)))) / (b1 - b0)

    u_mid = 0.5 * (u_of(float(sch.log_snr(torch.tensor(sch.t_max, dtype=F64)))) + u_of(float(sch.log_snr(late[-2]))))
    lam_mid = -math.log(math.expm1(b0 * u_mid + 0.5 * (b1 - b0) * u_mid**2))
    assert math.isclose(float(sch.log_snr(late[1])), lam_mid, rel_tol=1e-6)
    tiny = ddpm_grid(sch, 3, t_max=1e-4)
    torch.testing.assert_close(tiny, torch.linspace(1e-4, 0.0, 4, dtype=F64))
    # two steps: t_max, DDPM's first timestep's noise level, the end
    lam_first = -math.log(math.expm1(b0 * 1e-3 + 0.5 * (b1 - b0) * 1e-6))
    two = ddpm_grid(sch, 2)
    assert len(two) == 3 and math.isclose(float(sch.log_snr(two[1])), lam_first, rel_tol=1e-6)
    # a noise end far past DDPM's (log-SNR -41): the strided part starts at DDPM's last timestep, u = 1
    ve = VE(sigma_max=1e9)
    grid = ddpm_grid(ve, 3)
    u = torch.tensor([1.0, 0.5005], dtype=F64)
    lam = -torch.log(torch.expm1(b0 * u + 0.5 * (b1 - b0) * u * u))
    assert math.isclose(float(ve.log_snr(grid[1])), float(lam[1]), rel_tol=1e-6)
