"""Conventions checked against diffusers' own code, and time grids checked by value against their formulas.

priorkit's bundled priors were trained with priorkit's own conventions, so a convention flipped consistently in
both directions (v = alpha eps - sigma x0 written with the other sign, say) passes every round-trip test and
every test on the bundled models. These tests compare with an independent implementation instead: diffusers'
``add_noise``, ``get_velocity``, ``scale_noise`` and a scheduler step's ``pred_original_sample``, on a small
random UNet saved as a diffusers folder and loaded through ``load_denoiser``.

Tolerances are the measured error times a stated margin (measured on this machine, CPU, torch 2.13, diffusers
0.42.1): see each ``TOL_*`` constant.
"""

from __future__ import annotations

import json
import math

import pytest
import torch

from priorkit.distill.core.prediction import from_x0_eps, to_x0_eps
from priorkit.distill.core.samplers import sample, time_grid
from priorkit.distill.core.samplers.base import DDPM_BETA, DDPM_FIRST_U, NOISE_END_LOG_SNR
from priorkit.distill.core.samplers.ddim import ddim_sample
from priorkit.distill.core.schedule import VE, FlowMatching, VPCosine, VPDiscrete, VPLinear, add_noise
from priorkit.distill.loading import load_denoiser

torch.set_num_threads(1)

#: float64 formulas against diffusers' float64 arithmetic: measured 1.3e-16 relative; margin ~80x
TOL_F64 = 1e-14
#: float32 model outputs through diffusers' float32 arithmetic vs ours: measured <= 5.3e-7 relative for one step,
#: 1.4e-6 for a 6-step DDIM solve; margin 7x
TOL_F32 = 1e-5
#: VPCosine (continuous) vs diffusers' "squaredcos_cap_v2" alphas_cumprod (betas stored in float32): measured
#: 1.4e-7 relative (norm), 5.6e-7 elementwise, on k < 950; margin ~4-14x
TOL_COSINE = 2e-6

DDPM_CONFIGS = {
    "linear": {"num_train_timesteps": 1000, "beta_schedule": "linear", "beta_start": 0.0001, "beta_end": 0.02},
    "scaled_linear": {"num_train_timesteps": 1000, "beta_schedule": "scaled_linear", "beta_start": 0.00085,
                      "beta_end": 0.012},
    "squaredcos_cap_v2": {"num_train_timesteps": 1000, "beta_schedule": "squaredcos_cap_v2"},
}
PREDICTIONS = {"epsilon": "eps", "sample": "x0", "v_prediction": "v"}
TIMESTEPS = torch.tensor([0, 1, 37, 250, 500, 777, 998, 999])


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def rand(*shape: int, seed: int = 0, dtype=torch.float64) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


# ---- schedules and predictions against diffusers' formulas ---------------------------------------------------
@pytest.mark.parametrize("betas", list(DDPM_CONFIGS))
def test_add_noise_and_get_velocity_match_diffusers(betas):
    from diffusers import DDPMScheduler

    scheduler = DDPMScheduler(**DDPM_CONFIGS[betas])
    scheduler.alphas_cumprod = scheduler.alphas_cumprod.double()  # compare formulas, not float32 rounding
    schedule = VPDiscrete(scheduler.alphas_cumprod)
    x0, eps = rand(len(TIMESTEPS), 3, 4, 4, seed=1), rand(len(TIMESTEPS), 3, 4, 4, seed=2)
    t = schedule.time(TIMESTEPS.double())  # diffusers timestep k <-> t = (k + 1) / N
    x_t = add_noise(schedule, x0, t, eps)
    assert rel(x_t, scheduler.add_noise(x0, eps, TIMESTEPS)) < TOL_F64
    v = scheduler.get_velocity(x0, eps, TIMESTEPS)
    assert rel(from_x0_eps("v", x0, eps, x_t, t, schedule), v) < TOL_F64
    # and back: (x_t, v) -> (x0, eps) solves the same convention
    x0_back, eps_back = to_x0_eps("v", v, x_t, t, schedule)
    assert rel(x0_back, x0) < TOL_F64 and rel(eps_back, eps) < TOL_F64


def test_vp_cosine_is_diffusers_squaredcos_schedule():
    """VPCosine's alpha^2 at t = (k + 1) / N is diffusers' squaredcos_cap_v2 alphas_cumprod (before beta clipping)."""
    from diffusers import DDPMScheduler

    ac = DDPMScheduler(**DDPM_CONFIGS["squaredcos_cap_v2"]).alphas_cumprod.double()
    k = torch.arange(950)
    ours = VPCosine(t_max=1.0).alpha((k + 1).double() / 1000) ** 2
    assert rel(ours, ac[k]) < TOL_COSINE
    assert float(((ours - ac[k]).abs() / ac[k]).max()) < 2e-6


def test_vp_schedules_are_clean_at_zero():
    """alpha(0) = 1, sigma(0) = 0 exactly in float64 (VPCosine's log alpha(0) once rounded to +1e-20: sigma NaN)."""
    zero = torch.zeros(1, dtype=torch.float64)
    for schedule in (VPCosine(), VPLinear(), VPDiscrete.from_diffusers_config(DDPM_CONFIGS["squaredcos_cap_v2"])):
        assert float(schedule.alpha(zero)) == 1.0 and float(schedule.sigma(zero)) == 0.0, schedule
        assert float(schedule.log_snr(zero)) == math.inf, schedule


def test_vp_linear_and_ve_by_formula():
    t = torch.linspace(0, 1, 101, dtype=torch.float64)
    b0, b1 = 0.1, 20.0
    vp = VPLinear(b0, b1)
    alpha = torch.exp(-0.25 * t**2 * (b1 - b0) - 0.5 * t * b0)
    torch.testing.assert_close(vp.alpha(t), alpha, rtol=1e-14, atol=0)
    torch.testing.assert_close(vp.sigma(t[1:]), torch.sqrt(1 - alpha[1:] ** 2), rtol=1e-12, atol=0)
    ve = VE(0.002, 80.0)
    torch.testing.assert_close(ve.sigma(t), 0.002 * (80.0 / 0.002) ** t, rtol=1e-13, atol=0)
    torch.testing.assert_close(ve.alpha(t), torch.ones_like(t), rtol=0, atol=0)
    # the continuous VP-linear SDE is the limit of DDPM's 1000 linear betas (1e-4 .. 0.02): close, not equal
    from diffusers import DDPMScheduler

    ac = DDPMScheduler(**DDPM_CONFIGS["linear"]).alphas_cumprod.double()
    k = torch.arange(1000)
    assert float((vp.alpha((k + 1).double() / 1000) ** 2 - ac).abs().max()) < 2e-3


def test_flow_matching_matches_flow_match_euler_scale_noise():
    from diffusers import FlowMatchEulerDiscreteScheduler

    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=1.0)
    scheduler.set_timesteps(7)
    x0, eps = rand(1, 3, 4, 4, seed=3), rand(1, 3, 4, 4, seed=4)
    for timestep, sigma in zip(scheduler.timesteps, scheduler.sigmas[:-1], strict=True):
        theirs = scheduler.scale_noise(x0.float(), timestep[None], eps.float()).double()
        ours = add_noise(FlowMatching(), x0, torch.tensor(float(sigma), dtype=torch.float64), eps)
        assert rel(ours, theirs) < TOL_F32
        # velocity eps - x0 is what a flow model predicts: dx_t/dt
        x_t = ours
        assert rel(from_x0_eps("velocity", x0, eps, x_t, torch.tensor(float(sigma)).double(), FlowMatching()),
                   eps - x0) < TOL_F64


# ---- a random UNet saved as a diffusers folder, through load_denoiser -------------------------------------------
def tiny_unet():
    from diffusers import UNet2DModel

    torch.manual_seed(0)
    return UNet2DModel(sample_size=8, in_channels=3, out_channels=3, layers_per_block=1, block_out_channels=(8, 16),
                       down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
                       norm_num_groups=4).eval()


def saved(tmp_path, scheduler_config):
    unet = tiny_unet()
    unet.save_pretrained(str(tmp_path), safe_serialization=True)
    (tmp_path / "scheduler_config.json").write_text(json.dumps(scheduler_config))
    return unet, load_denoiser(tmp_path)


@pytest.mark.parametrize("betas", list(DDPM_CONFIGS))
@pytest.mark.parametrize("prediction", list(PREDICTIONS))
def test_loaded_unet_x0_is_the_scheduler_steps_pred_original_sample(tmp_path, prediction, betas):
    from diffusers import DDIMScheduler, DDPMScheduler

    config = {"_class_name": "DDPMScheduler", **DDPM_CONFIGS[betas], "prediction_type": prediction,
              "clip_sample": False}
    unet, den = saved(tmp_path, config)
    assert den.kind == PREDICTIONS[prediction]
    ddpm, ddim = DDPMScheduler(**config), DDIMScheduler(**config)
    ddim.set_timesteps(1000)  # every training timestep is on its grid
    x0, eps = rand(1, 3, 8, 8, seed=5, dtype=torch.float32), rand(1, 3, 8, 8, seed=6, dtype=torch.float32)
    for k in (10, 400, 900):
        timestep = torch.tensor([k])
        x_t = ddpm.add_noise(x0, eps, timestep)
        with torch.no_grad():
            out = unet(x_t, timestep).sample  # the raw network, called as diffusers calls it
            pred = den(x_t, den.schedule.time(float(k)).float())
        theirs = ddpm.step(out, k, x_t, generator=torch.Generator().manual_seed(0)).pred_original_sample
        assert rel(pred.x0, theirs) < TOL_F32, (k, rel(pred.x0, theirs))
        assert rel(pred.x0, ddim.step(out, k, x_t).pred_original_sample) < TOL_F32
        assert rel(pred.as_kind(PREDICTIONS[prediction]), out) < TOL_F32  # the native output unchanged
        if prediction == "epsilon":
            assert rel(pred.eps, out) < TOL_F32
        if prediction == "v_prediction":  # eps from v by diffusers' v = sqrt(a) eps - sqrt(1 - a) x0
            a = ddpm.alphas_cumprod[k]  # eps = sigma x_t + alpha v
            assert rel(pred.eps, (1 - a).sqrt() * x_t + a.sqrt() * out) < TOL_F32


@pytest.mark.parametrize("prediction", list(PREDICTIONS))
def test_ddim_sampler_matches_diffusers_ddim_on_a_loaded_unet(tmp_path, prediction):
    from diffusers import DDIMScheduler

    config = {"_class_name": "DDIMScheduler", **DDPM_CONFIGS["scaled_linear"], "prediction_type": prediction,
              "clip_sample": False, "set_alpha_to_one": True, "timestep_spacing": "leading", "steps_offset": 1}
    unet, den = saved(tmp_path, config)
    scheduler = DDIMScheduler(**config)
    scheduler.set_timesteps(6)
    x = rand(2, 3, 8, 8, seed=7, dtype=torch.float32)
    theirs = x.clone()
    with torch.no_grad():
        for k in scheduler.timesteps:
            theirs = scheduler.step(unet(theirs, k).sample, k, theirs).prev_sample
        times = torch.cat([den.schedule.time(scheduler.timesteps.double()), torch.zeros(1, dtype=torch.float64)])
        ours = ddim_sample(den, x, times)
    assert rel(ours, theirs) < TOL_F32, rel(ours, theirs)


def test_flow_model_matches_flow_match_euler_scheduler(tmp_path):
    from diffusers import FlowMatchEulerDiscreteScheduler

    config = {"_class_name": "FlowMatchEulerDiscreteScheduler", "num_train_timesteps": 1000, "shift": 1.0}
    unet, den = saved(tmp_path, config)
    assert isinstance(den.schedule, FlowMatching) and den.kind == "velocity"
    scheduler = FlowMatchEulerDiscreteScheduler(**config)
    scheduler.set_timesteps(5)
    x = rand(2, 3, 8, 8, seed=8, dtype=torch.float32)
    theirs = x.clone()
    with torch.no_grad():
        for k in scheduler.timesteps:
            theirs = scheduler.step(unet(theirs, k).sample, k, theirs).prev_sample
        ours = sample(den, x, times=scheduler.sigmas.double(), solver="euler")  # t = sigma, timestep = t N
        # x0 of a velocity model: x_t - t u (x_t = (1 - t) x0 + t eps, u = eps - x0)
        t = float(scheduler.sigmas[1])
        u = unet(x, scheduler.timesteps[1]).sample
        pred = den(x, torch.tensor(t))
    assert rel(ours, theirs) < TOL_F32, rel(ours, theirs)
    assert rel(pred.velocity, u) < TOL_F32
    assert rel(pred.x0, x - t * u) < TOL_F32


# ---- time grids by value ------------------------------------------------------------------------------------------
def test_karras_grid_is_edm_sigmas():
    """VE on Karras spacing is EDM's grid: diffusers' EDMEulerScheduler sigmas, and eq. 5 of Karras et al. 2022."""
    from diffusers import EDMEulerScheduler

    for steps in (4, 17):
        ve = VE(0.002, 80.0)
        grid = time_grid(ve, steps, "karras")
        edm = EDMEulerScheduler(sigma_min=0.002, sigma_max=80.0, rho=7.0)
        edm.set_timesteps(steps + 1)
        assert rel(ve.sigma(grid), edm.sigmas[:-1].double()) < TOL_F32
        ramp = torch.linspace(0, 1, steps + 1, dtype=torch.float64)
        formula = (80.0 ** (1 / 7) + ramp * (0.002 ** (1 / 7) - 80.0 ** (1 / 7))) ** 7
        torch.testing.assert_close(ve.sigma(grid), formula, rtol=1e-12, atol=0)
    # rho changes it (and rho = 1 is uniform in sigma / alpha)
    ve = VE(0.01, 10.0)
    grid = time_grid(ve, 5, "karras", rho=1.0)
    torch.testing.assert_close(ve.sigma(grid), torch.linspace(10.0, 0.01, 6, dtype=torch.float64), rtol=1e-12, atol=0)


@pytest.mark.parametrize("schedule", [VPCosine(), FlowMatching(), VPLinear()], ids=["vp_cosine", "flow", "vp_linear"])
def test_logsnr_and_karras_grids_by_value_with_a_clean_end(schedule):
    """With sigma(0) = 0 the spaced part runs from t_max to t_min (or 1e-3), then one step to 0."""
    f64 = lambda v: torch.tensor(v, dtype=torch.float64)  # noqa: E731
    steps = 8
    hi = f64(schedule.t_max)
    if not math.isfinite(float(schedule.log_snr(hi))):
        hi = schedule.t_from_log_snr(f64(NOISE_END_LOG_SNR))
    lo = schedule.t_min if schedule.t_min > 0 else 1e-3
    lam_hi, lam_lo = float(schedule.log_snr(hi)), float(schedule.log_snr(f64(lo)))
    ramp = torch.linspace(0, 1, steps, dtype=torch.float64)

    grid = time_grid(schedule, steps, "logsnr")
    assert grid.shape == (steps + 1,) and float(grid[0]) == schedule.t_max and float(grid[-2]) == lo
    assert float(grid[-1]) == 0.0
    lam = schedule.log_snr(grid[1:-2])
    torch.testing.assert_close(lam, lam_hi + ramp[1:-1] * (lam_lo - lam_hi), rtol=1e-9, atol=1e-9)

    rho = 7.0
    grid = time_grid(schedule, steps, "karras", rho=rho)
    s_hi, s_lo = math.exp(-0.5 * lam_hi), math.exp(-0.5 * lam_lo)
    ratio = (s_hi ** (1 / rho) + ramp * (s_lo ** (1 / rho) - s_hi ** (1 / rho))) ** rho  # sigma / alpha, eq. 5
    got = schedule.sigma(grid[1:-2]) / schedule.alpha(grid[1:-2])
    torch.testing.assert_close(got, ratio[1:-1], rtol=1e-9, atol=0)
    assert float(grid[0]) == schedule.t_max and float(grid[-2]) == lo and float(grid[-1]) == 0.0


def test_logsnr_grid_without_a_clean_end_is_uniform_in_log_snr():
    ve = VE(0.002, 80.0)
    grid = time_grid(ve, 6, "logsnr")
    lam = ve.log_snr(grid)
    torch.testing.assert_close(lam, torch.linspace(float(lam[0]), float(lam[-1]), 7, dtype=torch.float64),
                               rtol=1e-12, atol=1e-12)
    assert float(ve.sigma(grid[0])) == pytest.approx(80.0, rel=1e-12)
    assert float(ve.sigma(grid[-1])) == pytest.approx(0.002, rel=1e-12)


@pytest.mark.parametrize("schedule", [VPCosine(), FlowMatching(), VE(0.002, 80.0)], ids=["vp_cosine", "flow", "ve"])
def test_ddpm_grid_by_value(schedule):
    """The DDPM-strided grid: u uniform from u(t_max) to 1/1000, at log-SNR -log(exp(b0 u + (b1 - b0) u^2 / 2) - 1)."""
    b0, b1 = DDPM_BETA
    steps = 10
    grid = time_grid(schedule, steps, "ddpm")
    assert grid.shape == (steps + 1,) and float(grid[0]) == schedule.t_max and float(grid[-1]) == 0.0
    lam_hi = float(schedule.log_snr(torch.tensor(schedule.t_max, dtype=torch.float64)))
    big_b = math.log1p(math.exp(-lam_hi)) if math.isfinite(lam_hi) else math.inf
    u_hi = min(1.0, (-b0 + math.sqrt(b0 * b0 + 2.0 * (b1 - b0) * big_b)) / (b1 - b0)) if big_b < math.inf else 1.0
    u = torch.linspace(u_hi, DDPM_FIRST_U, steps, dtype=torch.float64)[1:]
    lam = -torch.log(torch.expm1(b0 * u + 0.5 * (b1 - b0) * u * u))
    torch.testing.assert_close(schedule.log_snr(grid[1:-1]), lam, rtol=1e-9, atol=1e-9)


def test_ddpm_grid_is_ddims_linspace_timesteps():
    """On DDPM's own discrete linear betas, the grid sits at DDIM's 'linspace' timesteps 999, 888, ..., 0 (up to the
    continuous-vs-discrete beta difference: measured 2.6e-3 in t, 2.6 timesteps; tested at 5e-3, far below the
    stride 0.111)."""
    from diffusers import DDIMScheduler

    schedule = VPDiscrete.from_diffusers_config(DDPM_CONFIGS["linear"])
    ddim = DDIMScheduler(**DDPM_CONFIGS["linear"], timestep_spacing="linspace")
    ddim.set_timesteps(10)
    grid = time_grid(schedule, 10, "ddpm")
    expected = schedule.time(ddim.timesteps.double())
    assert float((grid[:-1] - expected).abs().max()) < 5e-3
    assert float(grid[-1]) == 0.0
