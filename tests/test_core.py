"""The core of distill/: schedules, prediction conversions, the exact GMM denoiser, samplers, loading."""

from __future__ import annotations

import json
import math

import pytest
import torch

from benchmarks.reference_ode import reference_solve
from priorkit.distill.core.denoiser import ConvertedDenoiser, Denoiser
from priorkit.distill.core.gmm import GaussianMixture
from priorkit.distill.core.prediction import KINDS, Prediction, from_x0_eps, to_x0_eps
from priorkit.distill.core.samplers import nfe, sample, time_grid
from priorkit.distill.core.schedule import VE, FlowMatching, VPCosine, VPDiscrete, VPLinear, schedule_from_config

torch.set_num_threads(1)
SD_CONFIG = {"num_train_timesteps": 1000, "beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012}


def schedules():
    return [FlowMatching(), VPLinear(), VPCosine(), VE(), VPDiscrete.from_diffusers_config(SD_CONFIG),
            VPDiscrete.from_diffusers_config({"num_train_timesteps": 1000, "beta_schedule": "squaredcos_cap_v2"})]


SCHEDULE_IDS = ["flow", "vp_linear", "vp_cosine", "ve", "ddpm_scaled_linear", "ddpm_cosine"]


# ---- schedules -----------------------------------------------------------------------------------
@pytest.mark.parametrize("schedule", schedules(), ids=SCHEDULE_IDS)
def test_schedule_derivatives_and_log_snr_inverse(schedule):
    t = torch.linspace(0.02, 0.97, 41, dtype=torch.float64)
    h = 1e-6
    for f, df in ((schedule.alpha, schedule.d_alpha), (schedule.sigma, schedule.d_sigma)):
        fd = (f(t + h) - f(t - h)) / (2 * h)
        if isinstance(schedule, VPDiscrete):  # piecewise linear log-alpha: compare away from knots
            t_mid = (torch.floor(t * 1000) + 0.5) / 1000
            fd, d = (f(t_mid + h) - f(t_mid - h)) / (2 * h), df(t_mid)
        else:
            d = df(t)
        torch.testing.assert_close(d, fd, rtol=1e-5, atol=1e-7)
    lam = schedule.log_snr(t)
    torch.testing.assert_close(schedule.t_from_log_snr(lam), t, rtol=1e-9, atol=1e-9)
    assert bool((lam[1:] < lam[:-1]).all()), "log-SNR must decrease with t"


def test_vp_discrete_maps_diffusers_timesteps_exactly():
    from diffusers import DDPMScheduler

    s = VPDiscrete.from_diffusers_config(SD_CONFIG)
    ac = DDPMScheduler(**SD_CONFIG).alphas_cumprod.double()
    i = torch.arange(1000, dtype=torch.float64)
    t = s.time(i)
    torch.testing.assert_close(t, (i + 1) / 1000)
    torch.testing.assert_close(s.timestep(t), i)
    torch.testing.assert_close(s.alpha(t) ** 2, ac, rtol=1e-12, atol=0)
    torch.testing.assert_close(s.sigma(t) ** 2, 1 - ac, rtol=1e-12, atol=0)
    assert float(s.sigma(torch.tensor(0.0, dtype=torch.float64))) == 0.0


@pytest.mark.parametrize("src", schedules(), ids=SCHEDULE_IDS)
def test_convert_matches_snr_and_scale(src):
    dst = VPLinear()
    t = torch.tensor([0.1, 0.4, 0.7], dtype=torch.float64)
    x0 = torch.randn(3, 5, dtype=torch.float64)
    eps = torch.randn(3, 5, dtype=torch.float64)
    x = src.alpha(t)[:, None] * x0 + src.sigma(t)[:, None] * eps
    t2, x2 = src.convert(t, x, to=dst)
    torch.testing.assert_close(dst.log_snr(t2), src.log_snr(t), rtol=1e-9, atol=1e-9)
    # same x0 and eps, now under the other schedule
    torch.testing.assert_close(x2, dst.alpha(t2)[:, None] * x0 + dst.sigma(t2)[:, None] * eps, rtol=1e-9, atol=1e-9)


def test_schedule_config_round_trip():
    for s in schedules():
        s2 = schedule_from_config(json.loads(json.dumps(s.config())))
        t = torch.linspace(0.05, 0.95, 7, dtype=torch.float64)
        torch.testing.assert_close(s2.alpha(t), s.alpha(t))
        torch.testing.assert_close(s2.sigma(t), s.sigma(t))
    with pytest.raises(ValueError, match="unknown schedule"):
        schedule_from_config({"kind": "nope"})


# ---- predictions ---------------------------------------------------------------------------------
@pytest.mark.parametrize("schedule", schedules(), ids=SCHEDULE_IDS)
@pytest.mark.parametrize("kind", KINDS)
def test_prediction_conversions_round_trip(schedule, kind):
    g = torch.Generator().manual_seed(0)
    t = torch.tensor([0.05, 0.3, 0.6, 0.9], dtype=torch.float64)
    x0 = torch.randn(4, 3, 8, 8, generator=g, dtype=torch.float64)
    eps = torch.randn(4, 3, 8, 8, generator=g, dtype=torch.float64)
    x_t = schedule.alpha(t).reshape(-1, 1, 1, 1) * x0 + schedule.sigma(t).reshape(-1, 1, 1, 1) * eps
    value = from_x0_eps(kind, x0, eps, x_t, t, schedule)
    x0_back, eps_back = to_x0_eps(kind, value, x_t, t, schedule)
    torch.testing.assert_close(x0_back, x0, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(eps_back, eps, rtol=1e-9, atol=1e-9)
    p = Prediction.from_output(kind, value, x_t, t, schedule)
    for other in KINDS:  # every target read from any other is the exact one
        torch.testing.assert_close(p.as_kind(other), from_x0_eps(other, x0, eps, x_t, t, schedule),
                                   rtol=1e-8, atol=1e-8)


def test_flow_velocity_is_eps_minus_x0_and_score_is_tweedie():
    s = FlowMatching()
    x0, eps = torch.randn(2, 4, dtype=torch.float64), torch.randn(2, 4, dtype=torch.float64)
    t = torch.tensor(0.3, dtype=torch.float64)
    x_t = (1 - t) * x0 + t * eps
    p = Prediction(x0=x0, eps=eps, x_t=x_t, t=t, schedule=s)
    torch.testing.assert_close(p.velocity, eps - x0)
    torch.testing.assert_close(p.score, -eps / t)


# ---- the exact GMM denoiser ----------------------------------------------------------------------
def test_gmm_posterior_mean_matches_importance_weighted_monte_carlo():
    g = torch.Generator().manual_seed(3)
    gmm = GaussianMixture.random(3, 3, generator=g, schedule=VPLinear())
    t = torch.tensor(0.45, dtype=torch.float64)
    a, s = float(gmm.schedule.alpha(t)), float(gmm.schedule.sigma(t))
    x_t = a * gmm.sample(1, generator=g) + s * torch.randn(1, 3, generator=g, dtype=torch.float64)
    exact = gmm(x_t, t).x0[0]
    x0 = gmm.sample(400_000, generator=g)
    logw = -0.5 * ((x_t - a * x0) ** 2).sum(-1) / s**2        # p(x_t | x0) up to a constant
    w = torch.softmax(logw, 0)
    mc = (w[:, None] * x0).sum(0)
    # standard error of a self-normalised importance-sampling estimate (delta method)
    se = torch.sqrt((w[:, None] ** 2 * (x0 - mc) ** 2).sum(0))
    assert bool(((mc - exact).abs() < 4 * se + 1e-12).all()), (mc, exact, se)
    assert float(se.max()) < 0.05  # the check is not vacuous


def test_gmm_full_and_diagonal_covariances_agree_and_sample_correctly():
    g = torch.Generator().manual_seed(0)
    var = torch.rand(2, 4, generator=g, dtype=torch.float64) + 0.1
    means = torch.randn(2, 4, generator=g, dtype=torch.float64)
    diag = GaussianMixture(torch.tensor([0.3, 0.7]), means, var)
    full = GaussianMixture(torch.tensor([0.3, 0.7]), means, torch.diag_embed(var))
    x = torch.randn(16, 4, generator=g, dtype=torch.float64)
    torch.testing.assert_close(diag(x, 0.4).x0, full(x, 0.4).x0)
    samples = full.sample(200_000, generator=g)
    mean = 0.3 * means[0] + 0.7 * means[1]
    torch.testing.assert_close(samples.mean(0), mean, atol=0.02, rtol=0)
    torch.testing.assert_close(full.log_prob(x), diag.log_prob(x))


def test_gmm_log_prob_score_matches_denoiser_score():
    gmm = GaussianMixture.random(2, 3, generator=torch.Generator().manual_seed(1), schedule=VPCosine())
    x = torch.randn(8, 2, dtype=torch.float64, requires_grad=True)
    t = torch.tensor(0.35, dtype=torch.float64)
    (grad,) = torch.autograd.grad(gmm.log_prob(x, t).sum(), x)
    torch.testing.assert_close(gmm(x.detach(), t).score, grad, rtol=1e-8, atol=1e-8)  # Tweedie's formula


class EpsView(Denoiser):
    """Serve a denoiser as a pure epsilon-prediction model (what a DDPM UNet returns)."""

    def __init__(self, inner: Denoiser) -> None:
        super().__init__()
        self.inner, self.schedule, self.sample_shape = inner, inner.schedule, inner.sample_shape

    def predict_native(self, x, t, cond=None):
        return "eps", self.inner(x, t, check=False).eps


def test_schedule_conversion_is_exact_end_to_end():
    """A GMM served as a DDPM eps-model, converted to flow matching, integrates like the native flow GMM."""
    base = GaussianMixture.random(2, 4, generator=torch.Generator().manual_seed(2))
    vp_eps = EpsView(base.with_schedule(VPDiscrete.from_diffusers_config(SD_CONFIG)))
    as_flow = ConvertedDenoiser(vp_eps, FlowMatching())
    native = base.with_schedule(FlowMatching())
    x = torch.randn(32, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    t_max = 0.9  # log-SNR -4.4: inside the DDPM schedule's range (its noisiest is -5.4)
    for solver in ("euler", "heun", "dpm++2m"):
        a = sample(as_flow, x, steps=12, solver=solver, t_max=t_max)
        b = sample(native, x, steps=12, solver=solver, t_max=t_max)
        torch.testing.assert_close(a, b, rtol=1e-7, atol=1e-7)


def test_a_vp_linear_model_served_as_flow_matching_is_finite_at_the_noise_end():
    """Flow matching's t = 1 is log-SNR -inf, which VPLinear's inverse maps back to its own t = 1 (its quadratic
    root was inf / inf = NaN there, so every sample from t = 1 was NaN); the whole path matches the native flow GMM
    from t = 1 where both are pure noise (measured 2.6e-4 apart, mostly the step errors of two paths; 8x margin)."""
    base = GaussianMixture.random(2, 4, generator=torch.Generator().manual_seed(3))
    as_flow = ConvertedDenoiser(EpsView(base.with_schedule(VPLinear())), FlowMatching())
    x = torch.randn(16, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    assert torch.isfinite(as_flow(x, 1.0).x0).all()
    a = sample(as_flow, x, steps=12, solver="dpm++2m")
    b = sample(base.with_schedule(FlowMatching()), x, steps=12, solver="dpm++2m")
    assert torch.isfinite(a).all() and float((a - b).norm(dim=-1).mean()) < 2e-3


# ---- samplers ------------------------------------------------------------------------------------
def _errors(den, x, t0, solver, steps_list, ref):
    return [float((sample(den, x, steps=n, solver=solver, spacing="time", t_max=t0) - ref).norm(dim=-1).mean())
            for n in steps_list]


@pytest.mark.parametrize("schedule", [FlowMatching(), VPLinear()], ids=["flow", "vp_linear"])
def test_convergence_orders_against_scipy_reference(schedule):
    gmm = GaussianMixture.random(2, 4, generator=torch.Generator().manual_seed(1), schedule=schedule)
    x = torch.randn(64, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    t0 = 0.99
    ref = reference_solve(gmm, x, t0)
    steps = [16, 32, 64]
    euler = _errors(gmm, x, t0, "euler", steps, ref)
    heun = _errors(gmm, x, t0, "heun", steps, ref)
    for e in (euler, heun):
        assert e[0] > e[1] > e[2]
    euler_rates = [math.log2(euler[i] / euler[i + 1]) for i in range(2)]
    heun_rates = [math.log2(heun[i] / heun[i + 1]) for i in range(2)]
    assert all(0.8 < r < 1.3 for r in euler_rates), euler_rates  # first order
    assert all(1.7 < r < 2.4 for r in heun_rates), heun_rates    # second order


def test_dpm_solver_matches_diffusers():
    """Peer check: DPM-Solver++(2M) equals diffusers' DPMSolverMultistepScheduler on the same model and noise."""
    from diffusers import DPMSolverMultistepScheduler

    from benchmarks.diffusers_samplers import diffusers_solve

    schedule = VPDiscrete.from_diffusers_config(SD_CONFIG)
    gmm = GaussianMixture.random(2, 4, generator=torch.Generator().manual_seed(1), schedule=schedule)
    x = torch.randn(64, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    ref = reference_solve(gmm, x, 1.0)
    for steps in (10, 20):
        scheduler = DPMSolverMultistepScheduler(**SD_CONFIG)
        theirs = diffusers_solve(gmm, scheduler, x, steps)
        times = torch.cat([schedule.time(scheduler.timesteps.double()), torch.zeros(1, dtype=torch.float64)])
        ours = sample(gmm, x, times=times, solver="dpm++2m")
        # measured 9.5e-8 (10 steps) and 1.4e-7 (20 steps): diffusers' float32 coefficients; margin 7x
        assert float((ours - theirs).norm() / theirs.norm()) < 1e-6
        assert float((ours - ref).norm(dim=1).mean()) <= float((theirs - ref).norm(dim=1).mean()) * 1.0001


def test_time_grids():
    for s in schedules():
        for spacing in ("time", "logsnr", "karras", "ddpm"):
            g = time_grid(s, 7, spacing)
            assert g.shape == (8,) and float(g[0]) == s.t_max and float(g[-1]) == 0.0
            assert bool((g[1:] < g[:-1]).all()), (s, spacing, g)
    with pytest.raises(ValueError):
        time_grid(FlowMatching(), 0)
    assert nfe("heun", 10) == 19 and nfe("dpm++2m", 10) == 10


def test_ddpm_grid_is_the_linear_beta_models_uniform_grid():
    # timesteps 999, 888, ..., 0 of 1000 (u = (k + 1) / 1000), then the clean end
    uniform = torch.cat([torch.linspace(1.0, 1e-3, 10, dtype=torch.float64), torch.zeros(1, dtype=torch.float64)])
    assert torch.allclose(time_grid(VPLinear(), 10, "ddpm"), uniform, atol=1e-9)
    # on another schedule whose noise end lies beyond u = 1: the same noise levels (log-SNR) inside the grid
    flow = FlowMatching()
    g = time_grid(flow, 10, "ddpm")
    assert float(g[0]) == flow.t_max and float(g[-1]) == 0.0
    assert torch.allclose(flow.log_snr(g[1:-1]), VPLinear().log_snr(uniform[1:-1]), atol=1e-6)


def test_differentiable_sampling_with_checkpointing_gives_the_same_gradient():
    gmm = GaussianMixture.random(4, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    z = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    grads = []
    for ck in (False, True):
        out = sample(gmm, z, steps=5, solver="euler", spacing="time", t_max=0.99, differentiable=True, checkpoint=ck)
        (g,) = torch.autograd.grad(out.pow(2).sum(), z)
        grads.append(g)
    torch.testing.assert_close(grads[0], grads[1])
    assert float(grads[0].abs().sum()) > 0
    assert not sample(gmm, z, steps=3).requires_grad  # not differentiable by default


def test_classifier_free_guidance_is_linear_in_every_target():
    class Cond(Denoiser):
        schedule = FlowMatching()

        def predict_native(self, x, t, cond=None):
            shift = 0.0 if cond is None else cond
            return "velocity", x + shift

        def null_condition(self, cond):
            return torch.zeros_like(cond)

    den = Cond()
    x = torch.randn(4, 3, dtype=torch.float64)
    c = torch.full((4, 3), 2.0, dtype=torch.float64)
    p = den.guided(x, 0.5, c, 3.0)
    torch.testing.assert_close(p.velocity, x + 3.0 * 2.0)
    torch.testing.assert_close(den.guided(x, 0.5, c, 1.0).velocity, x + 2.0)


# ---- bad input -----------------------------------------------------------------------------------
def test_bad_inputs_raise_clear_errors():
    gmm = GaussianMixture.random(2, 2, generator=torch.Generator().manual_seed(0))
    x = torch.randn(3, 2, dtype=torch.float64)
    with pytest.raises(ValueError, match="NaN"):
        gmm(torch.full((3, 2), float("nan"), dtype=torch.float64), 0.5)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        gmm(x, 1.5)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        gmm(x, torch.tensor([-0.1, 0.2, 0.3]))
    with pytest.raises(ValueError, match="shape"):
        gmm(x, torch.tensor([0.1, 0.2]))
    with pytest.raises(ValueError, match="NaN"):
        sample(gmm, torch.full((3, 2), float("inf"), dtype=torch.float64))
    with pytest.raises(ValueError, match="unknown solver"):
        sample(gmm, x, solver="rk4")


def test_gmm_samples_have_the_mixture_moments() -> None:
    """Exact samples (full covariances, rotated per component) match the mixture's mean and covariance."""
    g = torch.Generator().manual_seed(0)
    gmm = GaussianMixture.random(5, 3, generator=g)
    x = gmm.sample(200_000, generator=g)
    w, mu = gmm.log_weights.exp(), gmm.means
    cov_k = (gmm.eigvecs * gmm.eigvals[:, None, :]) @ gmm.eigvecs.transpose(1, 2)
    mean = (w[:, None] * mu).sum(0)
    cov = sum(w[k] * (cov_k[k] + torch.outer(mu[k] - mean, mu[k] - mean)) for k in range(3))
    scale = float(cov.diagonal().max())
    assert torch.allclose(x.mean(0), mean, atol=0.02 * scale ** 0.5)
    assert torch.allclose(torch.cov(x.T), cov, atol=0.02 * scale)
