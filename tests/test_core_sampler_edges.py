"""distill/core/samplers at their edges, by value (the core group's mutation survivors, tests/MUTANTS.md):

* DDIM: the coefficients in s's dtype, a non-positive eta, a step into sigma_s = 1, a float time for a float64
  prediction, a step that needs no noise leaves the caller's generator alone;
* the DDPM-strided grid: a noise end with log-SNR below -709, two ends both noisier than DDPM's last timestep, the
  inner times inside [end, t_max] despite rounding;
* ``predict_fn``: guidance 2, unchecked model calls; ``sample``'s defaults (25 steps, no checkpointing);
* float16 samples: the solvers' step arithmetic runs in the sample's dtype (coefficients rounded to it first).
"""

from __future__ import annotations

import math

import torch

from priorkit.distill.core.denoiser import Denoiser
from priorkit.distill.core.prediction import Prediction
from priorkit.distill.core.samplers import dpm_solver, heun, predict_fn, sample
from priorkit.distill.core.samplers.base import ddpm_grid
from priorkit.distill.core.samplers.ddim import ddim_coefficients, ddim_next, ddim_step
from priorkit.distill.core.schedule import VE, FlowMatching, VPCosine, VPLinear

F64, F16 = torch.float64, torch.float16


def _cos_alpha(t: float, s: float = 0.008) -> float:
    """VPCosine's alpha (Nichol & Dhariwal 2021), by hand."""
    return math.cos(math.pi / 2 * (t + s) / (1 + s)) / math.cos(math.pi / 2 * s / (1 + s))


class _Gauss(Denoiser):
    """x0 ~ N(c, 0.49 I) (c the condition, 0 without one): E[x0 | x_t] = c + a 0.49 / (a^2 0.49 + s^2) (x_t - a c).
    Counts its calls."""

    conditional = True

    def __init__(self, schedule=None) -> None:  # noqa: ANN001
        super().__init__()
        self.schedule = schedule or VPCosine()
        self.calls = 0

    def null_condition(self, cond):  # noqa: ANN001, ANN201
        return torch.zeros_like(cond)

    def mean(self, x, t, cond):  # noqa: ANN001, ANN201
        mu = torch.zeros_like(x) if cond is None else cond.to(x)
        a = self.schedule.alpha(t).to(x).reshape(-1, 1)
        s = self.schedule.sigma(t).to(x).reshape(-1, 1)
        return mu + a * 0.49 / (a * a * 0.49 + s * s) * (x - a * mu)

    def predict_native(self, x, t, cond=None):  # noqa: ANN001, ANN201
        self.calls += 1
        return "x0", self.mean(x, t, cond)


# ---- DDIM ------------------------------------------------------------------------------------------------------------
def test_ddim_coefficients_are_in_the_dtype_of_s():
    """t in float64, s in float32: (alpha_s, k, c) are float32 numbers; c = eta sigma_s sqrt(1 - (a_t s_s / a_s s_t)^2),
    k = sqrt(sigma_s^2 - c^2)."""
    sch = VPCosine()
    a_s, k, c = ddim_coefficients(torch.tensor(0.7, dtype=F64), torch.tensor(0.4, dtype=torch.float32), sch, 1.0)
    assert a_s.dtype == k.dtype == c.dtype == torch.float32
    at, as_ = _cos_alpha(0.7), _cos_alpha(0.4)
    st, ss = math.sqrt(1 - at * at), math.sqrt(1 - as_ * as_)
    want_c = ss * math.sqrt(1 - (at * ss / (as_ * st)) ** 2)
    assert math.isclose(float(c), want_c, rel_tol=1e-5) and math.isclose(float(k), math.sqrt(ss**2 - want_c**2),
                                                                         rel_tol=1e-5)


def test_ddim_coefficients_of_a_negative_eta_are_the_deterministic_ones():
    """eta <= 0 is the deterministic DDIM step (as ddim_step treats it): c = 0 and k = sigma_s."""
    sch = VPCosine()
    a_s, k, c = ddim_coefficients(0.7, 0.4, sch, -0.5)
    assert float(c) == 0.0
    assert math.isclose(float(k), math.sqrt(1 - _cos_alpha(0.4) ** 2), rel_tol=1e-12)
    assert math.isclose(float(a_s), _cos_alpha(0.4), rel_tol=1e-12)


def test_ddim_step_into_a_time_with_sigma_1_keeps_the_noise_term():
    """VE(sigma_min=1): sigma(0) = 1, alpha = 1, so the deterministic step to s = 0 is x0 + eps (only sigma_s = 0 drops
    eps)."""
    ve = VE(sigma_min=1.0, sigma_max=80.0)
    x0, eps = torch.tensor([[1.0, 2.0]], dtype=F64), torch.tensor([[0.25, -3.0]], dtype=F64)
    assert ddim_step(x0, eps, 0.5, 0.0, ve).tolist() == [[1.25, -1.0]]


def test_ddim_step_that_needs_no_noise_leaves_the_generator_alone():
    """Per-sample times all landing on the clean end: c = 0 everywhere, so eta = 1 draws nothing from the caller's
    generator (its next draw is the fresh generator's first one)."""
    sch = VPCosine()
    x0, eps = torch.tensor([[1.0, 2.0], [3.0, 4.0]], dtype=F64), torch.ones(2, 2, dtype=F64)
    g = torch.Generator().manual_seed(7)
    out = ddim_step(x0, eps, torch.tensor([0.5, 0.6], dtype=F64), torch.zeros(2, dtype=F64), sch, eta=1.0,
                    generator=g)
    assert out.tolist() == x0.tolist()  # alpha(0) = 1, sigma(0) = 0
    assert torch.equal(torch.randn(3, generator=g), torch.randn(3, generator=torch.Generator().manual_seed(7)))


def test_ddim_next_of_a_float64_prediction_at_a_float_time_is_float64_exact():
    """t_next = 0.3 (a Python float) is made at x_t's dtype: alpha(0.3) x0 + sigma(0.3) eps to float64 precision."""
    sch = VPCosine()
    x = torch.tensor([[0.5, -1.0]], dtype=F64)
    pred = Prediction(x0=torch.tensor([[1.0, 2.0]], dtype=F64), eps=torch.tensor([[-1.0, 0.5]], dtype=F64), x_t=x,
                      t=torch.tensor(0.7, dtype=F64), schedule=sch)
    a = _cos_alpha(0.3)
    want = torch.tensor([[a * 1.0 - math.sqrt(1 - a * a), a * 2.0 + 0.5 * math.sqrt(1 - a * a)]], dtype=F64)
    torch.testing.assert_close(ddim_next(pred, 0.3), want, rtol=1e-14, atol=0)


# ---- the DDPM-strided grid -------------------------------------------------------------------------------------------
def _ddpm_log_snr(u: torch.Tensor) -> torch.Tensor:
    """log-SNR of the linear-beta DDPM at u: -log(exp(B(u)) - 1), B(u) = 0.1 u + 19.9 u^2 / 2 (ddpm_grid's doc)."""
    return -torch.log(torch.expm1(0.1 * u + 9.95 * u * u))


def test_ddpm_grid_of_a_schedule_whose_noise_end_has_log_snr_below_minus_709():
    """VPLinear(0.1, 2000): log-SNR(1) = -1000 (exp(1000) overflows a float). Its noise end is past DDPM's, so the
    strided part runs over u = 1, 0.5005, 0.001: the inner times have DDPM's log-SNR at u = 0.5005 and 0.001."""
    sch = VPLinear(0.1, 2000.0)
    grid = ddpm_grid(sch, 3)
    assert grid[0].item() == 1.0 and grid[-1].item() == 0.0 and len(grid) == 4
    torch.testing.assert_close(sch.log_snr(grid[1:3]), _ddpm_log_snr(torch.tensor([0.5005, 0.001], dtype=F64)),
                               rtol=1e-9, atol=0)


def test_ddpm_grid_between_two_times_noisier_than_ddpm_is_uniform_in_t():
    """Flow matching from t = 1 to 0.999 (log-SNR -inf and -13.8, both past DDPM's last timestep, u = 1): no strided
    part fits, so the steps are uniform in t (none of zero length)."""
    grid = ddpm_grid(FlowMatching(), 3, t_max=1.0, end=0.999)
    torch.testing.assert_close(grid, torch.linspace(1.0, 0.999, 4, dtype=F64), rtol=0, atol=0)


def test_ddpm_grid_stays_inside_end_and_t_max_despite_rounding():
    """Round trips through the log-SNR land 1.6e-15 below a noisy end (VPCosine, end 0.005) and 5.6e-17 above a
    t_max within 1e-15 of the end (found by search): the grid never leaves [end, t_max] and never goes back up."""
    sch = VPCosine()
    for kwargs, steps in (({"end": 0.005}, 2), ({"t_max": 0.4219917832739322, "end": 0.42199178327393116}, 50)):
        grid = ddpm_grid(sch, steps, **kwargs)
        t_max = kwargs.get("t_max", sch.t_max)
        assert float(grid[0]) == t_max and float(grid[-1]) == kwargs["end"]
        assert bool((grid <= t_max).all()) and bool((grid >= kwargs["end"]).all())
        assert bool((grid.diff() <= 0).all())


# ---- predict_fn and sample -------------------------------------------------------------------------------------------
def test_predict_fn_with_guidance_2_is_classifier_free_guidance():
    den = _Gauss()
    x, t = torch.tensor([[0.5, -1.0], [2.0, 0.0]], dtype=F64), torch.tensor(0.6, dtype=F64)
    cond = torch.tensor([[1.0, -1.0], [0.5, 0.5]], dtype=F64)
    cond_mean, uncond_mean = den.mean(x, t, cond), den.mean(x, t, None)
    torch.testing.assert_close(predict_fn(den, cond, 2.0)(x, t).x0, uncond_mean + 2.0 * (cond_mean - uncond_mean))


def test_predict_fn_calls_the_model_unchecked():
    """The samplers' model calls are not re-checked (``sample`` checks its noise once): a NaN state gives a NaN
    prediction in its row, with and without guidance, instead of an error."""
    den = _Gauss()
    x, t = torch.tensor([[0.5, -1.0], [math.nan, 0.0]], dtype=F64), torch.tensor(0.6, dtype=F64)
    cond = torch.tensor([[1.0, -1.0], [0.5, 0.5]], dtype=F64)
    for fn in (predict_fn(den), predict_fn(den, cond, 3.0)):
        x0 = fn(x, t).x0
        assert bool(torch.isnan(x0[1, 0])) and bool(torch.isfinite(x0[0]).all())


def test_sample_defaults_to_25_steps_and_no_checkpointing():
    """DPM-Solver++(2M) spends one model call per step: 25 by default. differentiable=True without checkpoint keeps
    the activations: backward runs no model call again."""
    den = _Gauss()
    noise = torch.randn(2, 2, dtype=F64, generator=torch.Generator().manual_seed(0)).requires_grad_(True)
    with torch.no_grad():
        sample(den, noise)
    assert den.calls == 25
    den.calls = 0
    out = sample(den, noise, steps=3, differentiable=True)
    assert den.calls == 3
    out.sum().backward()
    assert den.calls == 3 and noise.grad is not None


# ---- float16 samples -------------------------------------------------------------------------------------------------
def _constant_fn(x0s: list[torch.Tensor], eps: torch.Tensor, schedule) -> callable:  # noqa: ANN001
    """A prediction function giving x0s[k] at its k-th call (the last one after that) and a fixed eps."""
    calls = []

    def fn(x: torch.Tensor, t: torch.Tensor) -> Prediction:
        calls.append(t)
        return Prediction(x0=x0s[min(len(calls) - 1, len(x0s) - 1)], eps=eps, x_t=x, t=t, schedule=schedule)

    return fn


def test_heun_on_float16_rounds_its_step_to_float16_first():
    """A step of 5e-5 (float16 subnormal range) from t = 0.5 with velocity c (flow matching: x0 = 0, eps = c): Heun's
    x + h/2 (d1 + d2) evaluated in float16, h rounded to float16 first."""
    c = torch.tensor([0.5, 1.0, 0.75, 0.3], dtype=F16)
    x = torch.zeros(4, dtype=F16)
    times = torch.tensor([0.5, 0.5 - 5e-5], dtype=F64)
    out = heun.heun(_constant_fn([torch.zeros_like(x)], c, FlowMatching()), x, times)
    h16 = (times[1] - times[0]).to(F16)
    assert out.dtype == F16 and torch.equal(out, x + 0.5 * h16 * (c + c))


def test_dpm_solver_2m_on_float16_applies_its_step_ratio_in_float16():
    """Two DPM-Solver++(2M) steps (second order on the second, lower_order_final off) with given x0 predictions
    (Lu et al. 2022, Alg. 2), every coefficient rounded to float16 and combined in float16."""
    sch = VPCosine()
    g = torch.Generator().manual_seed(3)
    x = torch.randn(64, generator=g).to(F16)
    x0a, x0b = torch.randn(64, generator=g).to(F16), torch.randn(64, generator=g).to(F16)
    times = torch.tensor([0.9, 0.55, 0.3], dtype=F64)
    out = dpm_solver.dpm_solver_2m(_constant_fn([x0a, x0b], torch.zeros_like(x), sch), x, times,
                                   lower_order_final=False)
    lam = [0.5 * math.log(_cos_alpha(t) ** 2 / (1 - _cos_alpha(t) ** 2)) for t in times.tolist()]
    sig = [math.sqrt(1 - _cos_alpha(t) ** 2) for t in times.tolist()]
    h1, h2 = lam[1] - lam[0], lam[2] - lam[1]
    half = lambda v: torch.tensor(v, dtype=F64).to(F16)  # noqa: E731
    x1 = half(sig[1] / sig[0]) * x - half(_cos_alpha(0.55) * math.expm1(-h1)) * x0a
    d = x0b + (x0b - x0a) / (2.0 * half(h1 / h2))
    want = half(sig[2] / sig[1]) * x1 - half(_cos_alpha(0.3) * math.expm1(-h2)) * d
    assert out.dtype == F16
    torch.testing.assert_close(out, want, rtol=0, atol=0)
