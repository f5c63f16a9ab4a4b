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

from priorkit.distill.core.prediction import Prediction, from_x0_eps, to_x0_eps
from priorkit.distill.core.samplers import sample, time_grid
from priorkit.distill.core.samplers.base import DDPM_BETA, DDPM_FIRST_U, NOISE_END_LOG_SNR
from priorkit.distill.core.samplers.ddim import ddim_sample
from priorkit.distill.core.schedule import (
    VE,
    FlowMatching,
    Schedule,
    VPCosine,
    VPDiscrete,
    VPLinear,
    add_noise,
    as_time,
    broadcast_to,
    schedule_from_config,
)
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


# ---- edges of the schedules and conversions (mutation testing: tests/MUTANTS.md) ---------------------------------
# Each test below pins a behaviour that a surviving mutant of schedule.py / prediction.py changed unnoticed.

#: a 4-step discrete schedule: its knots 0, 1/4, ..., 1 are exact in binary, so knot values can be compared exactly
AC4 = [0.9, 0.6, 0.3, 0.1]


def test_as_time_dtype_and_device():
    i = torch.tensor([0, 3])
    assert as_time(i).dtype == torch.float64 and as_time(i).tolist() == [0.0, 3.0]  # integers become float64
    f32 = torch.tensor([0.3], dtype=torch.float32)
    assert as_time(f32).dtype == torch.float32  # floating tensors keep their dtype without ``like``
    like = torch.zeros(2, dtype=torch.float64)
    assert as_time(f32, like).dtype == torch.float64
    t = as_time(0.3, like)  # a Python float is made at like's dtype, not the default float32
    assert t.dtype == torch.float64 and t.shape == () and float(t) == 0.3
    assert as_time(0.3).dtype == torch.get_default_dtype()
    meta = torch.empty(2, device="meta")
    assert as_time(0.3, meta).device.type == "meta" and as_time(f32, meta).device.type == "meta"


def test_broadcast_to_casts_only_floats_and_reshapes_per_sample():
    x = torch.zeros(3, 2, 5, dtype=torch.float64)
    a = torch.tensor([0.1, 0.2, 0.3], dtype=torch.float32)
    b = broadcast_to(a, x)
    assert b.shape == (3, 1, 1) and b.dtype == torch.float64
    assert broadcast_to(torch.tensor([1, 2, 3]), x).dtype == torch.int64  # an integer coefficient is not cast
    half = broadcast_to(torch.tensor([0.5, 1.5]), torch.zeros(2, 4, dtype=torch.int64))  # nor truncated to x's ints
    assert half.dtype == torch.float32 and half.flatten().tolist() == [0.5, 1.5]
    assert broadcast_to(torch.tensor(0.25, dtype=torch.float32), x).shape == ()


def test_t_from_log_snr_clamps_to_the_unit_interval_exactly():
    big = torch.tensor([math.inf, 1e4, -1e4, -math.inf], dtype=torch.float64)
    for schedule in (VE(), VPLinear(), VPCosine(), VPDiscrete(AC4)):
        assert schedule.t_from_log_snr(big).tolist() == [0.0, 0.0, 1.0, 1.0], schedule  # VPLinear: not inf / inf
    # without the clamp, float32 rounding lands VPCosine(s=0.31248...) at 1 + 1.2e-7 at log-SNR -inf (measured), and
    # the default s lands 2.4e-15 below 0 at +inf
    assert VPCosine(s=0.3124867379665375).t_from_log_snr(torch.tensor([-math.inf])).tolist() == [1.0]


def test_schedule_defaults_and_repr():
    assert (VE().sigma_min, VE().sigma_max) == (0.002, 80.0)  # EDM's range
    assert (VPLinear().beta_min, VPLinear().beta_max) == (0.1, 20.0)
    assert (VPCosine().s, VPCosine().t_max) == (0.008, 0.9946)
    assert repr(VE(0.01, 50.0)) == "VE(sigma_min=0.01, sigma_max=50.0)"
    assert repr(FlowMatching()) == "FlowMatching()"
    assert repr(VPDiscrete(AC4)) == "VPDiscrete(num_train_timesteps=4)"


def test_generic_schedule_log_snr():
    """Schedule.log_snr / half_log_snr, used by a schedule that does not override them."""

    class Trig(Schedule):  # alpha = cos(pi t / 2), sigma = sin(pi t / 2): log-SNR = -2 log tan(pi t / 2)
        def alpha(self, t):
            return torch.cos(math.pi / 2 * t)

        def sigma(self, t):
            return torch.sin(math.pi / 2 * t)

        def d_alpha(self, t):
            return -math.pi / 2 * torch.sin(math.pi / 2 * t)

        def d_sigma(self, t):
            return math.pi / 2 * torch.cos(math.pi / 2 * t)

        def t_from_log_snr(self, log_snr):
            return torch.arctan(torch.exp(-0.5 * log_snr)) * 2 / math.pi

        def config(self):
            return {"kind": "trig"}

    t = torch.tensor([0.1, 0.5, 0.8], dtype=torch.float64)
    expected = -2.0 * torch.log(torch.tan(math.pi / 2 * t))
    torch.testing.assert_close(Trig().log_snr(t), expected, rtol=1e-14, atol=1e-14)
    torch.testing.assert_close(Trig().half_log_snr(t), 0.5 * expected, rtol=1e-14, atol=1e-14)
    assert repr(Trig()) == "Trig()"


def test_vp_discrete_validation():
    with pytest.raises(ValueError, match="1-D sequence of at least two values"):
        VPDiscrete([[0.9, 0.5], [0.4, 0.2]])
    with pytest.raises(ValueError, match="1-D sequence of at least two values"):
        VPDiscrete([0.9])
    assert VPDiscrete([0.9, 0.5]).num_train_timesteps == 2  # two values are enough
    for bad in ([0.9, 0.9, 0.5], [0.5, 0.9], [1.0, 0.5], [0.9, 0.5, 0.7]):
        with pytest.raises(ValueError, match="alphas_cumprod must be strictly decreasing"):
            VPDiscrete(bad)


def test_vp_discrete_knots_and_segments():
    """log alpha is linear on [t_k, t_k+1) (right-continuous), exact at the knots, extrapolated linearly outside."""
    s = VPDiscrete(AC4)  # from a list: kept in float64
    assert s.alphas_cumprod.dtype == torch.float64 and s.t_min == 0.25
    la = [0.0] + [0.5 * math.log(v) for v in AC4]
    knots = torch.tensor([0.0, 0.25, 0.5, 0.75, 1.0], dtype=torch.float64)
    assert s.log_alpha(knots).tolist() == la
    slopes = [(la[k + 1] - la[k]) / 0.25 for k in range(4)]
    assert s.d_log_alpha(knots).tolist() == slopes + [slopes[-1]]  # the segment to the right of each knot
    mid = knots[:-1] + 0.125
    f64 = torch.float64
    expected = torch.tensor(la[:-1], dtype=f64) + 0.125 * torch.tensor(slopes, dtype=f64)
    torch.testing.assert_close(s.log_alpha(mid), expected, rtol=1e-15, atol=1e-15)
    out = torch.tensor([-0.125, 1.125], dtype=torch.float64)
    torch.testing.assert_close(s.log_alpha(out), torch.tensor([-0.125 * slopes[0], la[-1] + 0.125 * slopes[-1]],
                                                                dtype=torch.float64), rtol=1e-15, atol=1e-15)
    torch.testing.assert_close(s.d_log_alpha(out), torch.tensor([slopes[0], slopes[-1]], dtype=torch.float64))
    # and back: t from log-SNR between the knots and at them
    t = torch.tensor([0.0, 0.1, 0.25, 0.4, 0.6, 0.9, 1.0], dtype=torch.float64)
    torch.testing.assert_close(s.t_from_log_snr(s.log_snr(t)), t, rtol=1e-14, atol=1e-14)


def test_vp_discrete_keeps_float32():
    """A float32 time gives float32 coefficients (the float64 tables are cast to the time's dtype)."""
    s = VPDiscrete(AC4)
    t32 = torch.tensor([0.1, 0.3, 0.8], dtype=torch.float32)
    for f in (s.log_alpha, s.d_log_alpha, s.alpha, s.sigma):
        assert f(t32).dtype == torch.float32, f
    torch.testing.assert_close(s.log_alpha(t32), s.log_alpha(t32.double()).float())
    lam = s.log_snr(t32)
    assert s.t_from_log_snr(lam).dtype == torch.float32
    torch.testing.assert_close(s.t_from_log_snr(lam), t32, rtol=1e-5, atol=1e-6)


def test_vp_discrete_from_diffusers_config_reads_every_key():
    from diffusers import DDPMScheduler

    configs = [
        {"num_train_timesteps": 50, "beta_schedule": "linear", "beta_start": 0.001, "beta_end": 0.2},
        {"num_train_timesteps": 4, "trained_betas": [0.1, 0.2, 0.3, 0.4]},
        {**DDPM_CONFIGS["scaled_linear"], "rescale_betas_zero_snr": True},
    ]
    for config in configs:
        s = VPDiscrete.from_diffusers_config(config)
        expected = DDPMScheduler(**config).alphas_cumprod.double()
        assert s.num_train_timesteps == len(expected) == config["num_train_timesteps"]
        torch.testing.assert_close(s.alphas_cumprod, expected, rtol=0, atol=0)
    torch.testing.assert_close(VPDiscrete.from_diffusers_config(configs[1]).alphas_cumprod,
                               torch.tensor([0.9, 0.72, 0.504, 0.3024], dtype=torch.float64), rtol=1e-6, atol=0)


def test_schedule_from_config_without_a_kind():
    with pytest.raises(ValueError, match="unknown schedule kind None"):
        schedule_from_config({})


def test_float_times_are_made_at_the_data_dtype():
    """A Python-float t is taken at x's dtype (float64 here), not rounded to float32 first."""
    x0, eps = rand(2, 3, seed=5), rand(2, 3, seed=6)
    t = torch.tensor(0.3, dtype=torch.float64)
    for schedule in (VPCosine(), VPDiscrete.from_diffusers_config(DDPM_CONFIGS["linear"])):
        x_t = add_noise(schedule, x0, t, eps)
        for kind in ("eps", "v", "velocity", "score"):
            value = from_x0_eps(kind, x0, eps, x_t, t, schedule)
            assert from_x0_eps(kind, x0, eps, x_t, 0.3, schedule).equal(value), kind
            assert all(a.equal(b) for a, b in zip(to_x0_eps(kind, value, x_t, 0.3, schedule),
                                                   to_x0_eps(kind, value, x_t, t, schedule), strict=True)), kind
        p = Prediction.from_output("eps", eps, x_t, 0.3, schedule)
        assert p.t.dtype == torch.float64 and float(p.t) == 0.3
        assert p.v.equal(Prediction.from_output("eps", eps, x_t, t, schedule).v)
        t2, x2 = schedule.convert(0.3, x_t, to=VE())
        t2_ref, x2_ref = schedule.convert(t, x_t, to=VE())
        assert t2.dtype == torch.float64 and t2.equal(t2_ref) and x2.equal(x2_ref)


def test_unknown_prediction_kind_is_named():
    x = rand(2, 3)
    with pytest.raises(ValueError, match="unknown prediction kind 'eps2'"):
        to_x0_eps("eps2", x, x, 0.5, FlowMatching())
    with pytest.raises(ValueError, match="unknown prediction kind 'eps2'"):
        from_x0_eps("eps2", x, x, x, 0.5, FlowMatching())


def test_guide_by_value_with_a_scalar_and_a_per_sample_scale():
    schedule, t = VPCosine(), torch.tensor(0.4, dtype=torch.float64)
    x_t = rand(3, 2, seed=7)
    cond = Prediction(rand(3, 2, seed=8), rand(3, 2, seed=9), x_t, t, schedule)
    uncond = Prediction(rand(3, 2, seed=10), rand(3, 2, seed=11), x_t, t, schedule)
    for scale in (3, 2.5, torch.tensor([0.0, 1.0, 4.0], dtype=torch.float32)):
        w = scale[:, None].double() if isinstance(scale, torch.Tensor) else float(scale)
        g = cond.guide(uncond, scale)
        torch.testing.assert_close(g.x0, uncond.x0 + w * (cond.x0 - uncond.x0), rtol=1e-15, atol=1e-15)
        torch.testing.assert_close(g.eps, uncond.eps + w * (cond.eps - uncond.eps), rtol=1e-15, atol=1e-15)
        torch.testing.assert_close(g.v, uncond.v + w * (cond.v - uncond.v), rtol=1e-13, atol=1e-13)
        assert g.x0.dtype == torch.float64 and g.x_t is x_t and g.t is t and g.schedule is schedule
    g = cond.guide(uncond, torch.tensor([0.0, 1.0, 4.0]))
    assert g.x0[0].equal(uncond.x0[0])  # scale 0: the unconditional prediction
    torch.testing.assert_close(g.x0[1], cond.x0[1], rtol=1e-15, atol=1e-15)  # scale 1: the conditional one
