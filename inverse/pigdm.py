"""PiGDM: pseudoinverse-guided diffusion (Song, Vahdat, Mardani & Kautz 2023, "Pseudoinverse-guided diffusion
models for inverse problems", ICLR), and its flow form (Pokle, Muckley, Chen & Karrer 2024, "Training-free linear
image inverses via flows", TMLR).

Model space, general schedule ``x_t = alpha x0 + sigma eps``; measurement ``y = A x0 + s n`` (s = sigma_y in model
range). PiGDM approximates ``p(x0 | x_t) ≈ N(x0_hat(x_t), r_t^2 I)``, so ``p(y | x_t) ≈ N(A x0_hat,
r_t^2 A A^T + s^2 I)`` and its score is ONE vector-Jacobian product through the denoiser:

    v  = (r_t^2 A A^T + s^2 I)^{-1} (y - A x0_hat)                  measurement-space solve (operator.solve)
    g  = (d x0_hat / d x_t)^T A^T v                                  PiGDM eq. (7): grad_{x_t} log p(y | x_t)
    r_t^2 = c sigma^2 / (alpha^2 c + sigma^2)                        Var[x0 | x_t] for data N(., c I); paper: c = 1
    x0_g = x0_hat + (sigma^2 / alpha) g               Tweedie: E[x0|x_t,y] = (x_t + sigma^2 grad log p(x_t|y)) / alpha
    eps_g = (x_t - alpha x0_g) / sigma = eps_hat - sigma g           the same guided score, read as eps

For Gaussian data with covariance ``c I`` every step of this is exact: ``x0_g = E[x0 | x_t, y]`` (tested against the
dense posterior in :mod:`priorkit.inverse.gaussian`). The paper's Algorithm 1 adds the guidance to the DDIM update
with a
hand-tuned ``sqrt(alpha_t) g`` weight; we apply it where it belongs, to the score (Tweedie form), which is what makes
the Gaussian case exact, and then take the DDIM(eta) step of Song, Meng & Ermon (2021) in the general schedule:

    c_s = eta sigma_s sqrt(1 - exp(2 (lambda_t - lambda_s))),  lambda = log(alpha / sigma)     (DDIM eq. 16)
    x_s = alpha_s x0_g + sqrt(sigma_s^2 - c_s^2) eps_g + c_s z,  z ~ N(0, I)                   (DDIM eq. 12)

``eta = 1`` is ancestral (DDPM) sampling, ``eta = 0`` the probability-flow ODE (DDIM).

Flow form (Pokle et al. 2024, Algorithm 1): the same correction on the velocity of a flow-matching model,
``u_g = u + (alpha' - sigma' alpha / sigma) gamma_t (sigma^2 / alpha) g`` (= u - gamma_t (t / (1 - t)) g for
alpha = 1 - t, sigma = t), with their adaptive weight ``gamma_t = sqrt(alpha / (alpha^2 + sigma^2))``, their
``r_t^2 = sigma^2 / (sigma^2 + alpha^2)``, Euler steps, and a start at t0 = 0.8 (their t' = 0.2 with data at t = 1)
from ``x_t0 = alpha_t0 A^+ y + sigma_t0 eps``. Any `Denoiser` is served as a flow through `ConvertedDenoiser`.

Cost: one model evaluation and one vector-Jacobian product (backward) per step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from priorkit.distill.core.denoiser import Condition, Denoiser
from priorkit.distill.core.prediction import Prediction, from_x0_eps
from priorkit.distill.core.samplers.base import NOISE_END_LOG_SNR, PredictFn, predict_fn, steps_bar
from priorkit.distill.core.schedule import FlowMatching, Schedule, as_time, broadcast_to
from priorkit.inverse.operators import Operator
from priorkit.inverse.solver_common import (  # noqa: F401 - re-exported: the pieces used to live here
    as_flow,
    check_measurement,
    ddim_step,
    initial_state,
    regularised_pinv,
    sampling_times,
    solution_shape,
)

__all__ = [
    "PiGDMDefaults",
    "PiGDMFlowDefaults",
    "pigdm",
    "pigdm_flow",
    "pigdm_guided_x0",
    "ddim_step",
    "sampling_times",
    "as_flow",
    "regularised_pinv",
    "solution_shape",
]


def pigdm_guided_x0(fn: PredictFn, x: Tensor, t: Tensor | float, operator: Operator, y: Tensor, sigma_y: float,
                    schedule: Schedule, *, data_var: float = 1.0, weight: float = 1.0) -> tuple[Tensor, Prediction]:
    """PiGDM's guided clean estimate at one point: ``x0_hat + weight (sigma^2 / alpha) g`` (module docstring).

    Args:
        fn: ``fn(x, t) -> Prediction`` (a denoiser with condition and guidance bound; see ``predict_fn``).
        x: x_t, (B, C, H, W). t: scalar time (alpha(t) > 0).
        operator, y: A and the model-range measurement y (measurement-shaped, batch B or 1).
        sigma_y: model-range noise std s.
        data_var: c in ``r_t^2 = c sigma^2 / (alpha^2 c + sigma^2)``; 1 is the paper's (unit-variance data) choice.
        weight: extra factor on the correction (Pokle et al.'s gamma_t; 1 for PiGDM).
    Returns:
        (x0_g (B, C, H, W), the unguided Prediction at x_t, detached).
    """
    t = as_time(t, x)
    alpha, sigma = schedule.alpha(t), schedule.sigma(t)
    if float(alpha.min()) <= 0:
        raise ValueError("PiGDM guidance needs alpha(t) > 0; start the sampler below the pure-noise end")
    r2 = data_var * sigma**2 / (alpha**2 * data_var + sigma**2)                     # r_t^2
    with torch.enable_grad():
        xg = x.detach().requires_grad_(True)
        pred = fn(xg, t)
        residual = (y - operator.A(pred.x0)).detach()                                # y - A x0_hat
        v = operator.solve(residual, r2.sqrt(), sigma_y)            # (r^2 A A^T + s^2 I)^-1 (y - A x0_hat)
        (g,) = torch.autograd.grad(pred.x0, xg, grad_outputs=operator.At(v))         # (dx0/dx_t)^T A^T v
    scale = broadcast_to(weight * sigma**2 / alpha, x)                               # sigma^2 / alpha (Tweedie)
    detached = Prediction(x0=pred.x0.detach(), eps=pred.eps.detach(), x_t=x, t=pred.t, schedule=schedule)
    return pred.x0.detach() + scale * g, detached



# ----------------------------------------------------------------------------------------------------------------------
# PiGDM (diffusion form)
# ----------------------------------------------------------------------------------------------------------------------


@dataclass
class PiGDMDefaults:
    """Defaults of :func:`pigdm`: 100 steps as in Song et al. 2023's experiments, r_t^2 for unit-variance data (c = 1),
    eta = 1 (ancestral; the smallest bias against the exact Gaussian posterior in tests/test_inverse_solvers.py),
    on the paper's grid: a linear-beta DDPM's uniform steps ("ddpm"; on the bundled cosine prior it restores
    0.1-1.4 dB better than a uniform-t grid, which spends fewer steps at high noise; BENCHMARKS.md).

    ``flow_start``: on a flow-matching prior the grid starts at this flow time (Pokle et al.'s t0 = 0.8) from
    ``alpha A^+ y + sigma z`` instead of at the pure-noise end. There, alpha = e^-5 sigma and the Tweedie weight
    sigma^2 / alpha ~ 150 multiplies the Jacobian of x0_hat = x_t - t u(x_t), a difference of two near-identity
    maps whose relative error is large for a learned velocity: the guided x0 overshoots to |x0| ~ 300 in the first
    step and inpainted holes end saturated (the bundled photos prior's box: 13.8 dB against 21.9 from 0.8)."""

    steps: int = 100
    eta: float = 1.0
    data_var: float = 1.0
    spacing: str = "ddpm"
    flow_start: float = 0.8


def pigdm(denoiser: Denoiser, operator: Operator, y: Tensor, sigma_y: float, *, cond: Condition = None,
          guidance: float = 1.0, steps: int = PiGDMDefaults.steps, eta: float = PiGDMDefaults.eta,
          data_var: float = PiGDMDefaults.data_var, spacing: str = PiGDMDefaults.spacing,
          times: Tensor | None = None, noise: Tensor | None = None, shape: tuple[int, ...] | None = None,
          generator: torch.Generator | None = None, progress: bool | None = None,
          flow_start: float = PiGDMDefaults.flow_start) -> Tensor:
    """Restore ``x`` from ``y = A x + sigma_y n`` by PiGDM on a DDIM(eta) path; model range [-1, 1].

    Args:
        denoiser: any `Denoiser` (its own schedule is used; DDIM and the guidance are written in the general form).
        operator: the degradation A.  y: model-range measurement (B or 1, ...) = ``Measurement.to_model(y_image)``.
        sigma_y: model-range noise std (= 2 x the image-range std; ``Measurement.sigma_model``).
        cond, guidance: condition and classifier-free guidance scale of a conditional prior.
        steps: sampling steps = model evaluations (+ as many vector-Jacobian products).
        eta: DDIM stochasticity (1 = ancestral, 0 = deterministic ODE).
        data_var: c in r_t^2 = c sigma^2 / (alpha^2 c + sigma^2).
        spacing: time grid ("ddpm", "time", "logsnr" or "karras"; see ``priorkit.distill.core.samplers.time_grid``).
        times: an explicit decreasing grid (float64, alpha > 0 at times[0]; overrides steps and spacing).
        noise: optional starting noise (B, C, H, W) ~ N(0, I) (scaled by sigma(t_max) here).
        shape: (B, C, H, W) when the denoiser has no ``sample_shape`` (default: (y.shape[0], *sample_shape)).
        flow_start: a flow-matching prior's start time, from ``alpha A^+ y + sigma z`` (`PiGDMDefaults`); 1 starts
            such a prior at the pure-noise end as any other. Ignored for other priors or with ``times``.
    Returns:
        restored images (B, C, H, W) in model range (not clamped).
    """
    check_measurement(y, sigma_y)
    if eta < 0:
        raise ValueError(f"eta must be >= 0; got {eta}")
    if not 0 < flow_start <= 1:
        raise ValueError(f"flow_start must lie in (0, 1]; got {flow_start}")
    schedule = denoiser.schedule
    warm = times is None and isinstance(schedule, FlowMatching) and flow_start < 1
    if warm:
        times = sampling_times(schedule, steps, spacing, t_max=flow_start)
    times, x = initial_state(denoiser, y, steps, spacing, times, shape, noise, generator)
    if warm:  # x_t0 = alpha A^+ y + sigma z (module docstring of PiGDMDefaults: why not the pure-noise end)
        x = x + float(schedule.alpha(times[0])) * regularised_pinv(operator, y, sigma_y).expand_as(x).to(x)
    fn = predict_fn(denoiser, cond, guidance)
    for i in steps_bar(len(times) - 1, "PiGDM", progress):
        t, s = times[i], times[i + 1]
        x0g, pred = pigdm_guided_x0(fn, x, t, operator, y, sigma_y, schedule, data_var=data_var)
        sig = float(schedule.sigma(t))
        eps_g = (x - float(schedule.alpha(t)) * x0g) / sig                    # eps_hat - sigma g
        x = ddim_step(x0g, eps_g, t, s, schedule, eta, generator)
    return x


# ----------------------------------------------------------------------------------------------------------------------
# PiGDM on a flow (Pokle et al. 2024)
# ----------------------------------------------------------------------------------------------------------------------


@dataclass
class PiGDMFlowDefaults:
    """Defaults of :func:`pigdm_flow` (Pokle et al. 2024: OT path, Euler, start t' = 0.2 from the data side, i.e.
    t0 = 0.8 here, initialised from A^+ y; adaptive gamma_t). 80 steps = a step of 0.01 in t."""

    steps: int = 80
    start: float = 0.8
    init: str = "pinv"
    weighting: str = "adaptive"


def pigdm_flow(denoiser: Denoiser, operator: Operator, y: Tensor, sigma_y: float, *, cond: Condition = None,
               guidance: float = 1.0, steps: int = PiGDMFlowDefaults.steps, start: float = PiGDMFlowDefaults.start,
               init: str = PiGDMFlowDefaults.init, weighting: str = PiGDMFlowDefaults.weighting,
               noise: Tensor | None = None, shape: tuple[int, ...] | None = None,
               generator: torch.Generator | None = None, progress: bool | None = None) -> Tensor:
    """Restore by PiGDM-corrected Euler steps on the flow-matching velocity (Pokle et al. 2024, Algorithm 1).

    Args:
        denoiser: any `Denoiser`, served as a flow (alpha = 1 - t, sigma = t) by `ConvertedDenoiser`.
        operator, y, sigma_y, cond, guidance: as in :func:`pigdm`.
        steps: Euler steps from ``start`` to 0 = model evaluations (+ as many vector-Jacobian products).
        start: flow time t0 to start from (1 = pure noise; the paper's t' = 0.2 is t0 = 0.8 here).
        init: "pinv": ``x_t0 = (1 - t0) x_init + t0 eps`` with x_init = A^T (A A^T + s^2)^{-1} y (A^+ y when
            noiseless); "noise": ``x_t0 = t0 eps``.
        weighting: "adaptive" (gamma_t = sqrt(alpha / (alpha^2 + sigma^2))) or "unit" (gamma_t = 1: the exact Tweedie
            correction, identical to :func:`pigdm` with eta = 0 on the same grid).
        noise: optional eps (B, C, H, W).
    Returns:
        restored images (B, C, H, W) in model range.
    """
    check_measurement(y, sigma_y)
    if weighting not in ("adaptive", "unit"):
        raise ValueError(f"weighting must be 'adaptive' or 'unit'; got {weighting!r}")
    if init not in ("pinv", "noise"):
        raise ValueError(f"init must be 'pinv' or 'noise'; got {init!r}")
    if steps < 1:
        raise ValueError(f"steps must be >= 1; got {steps}")
    flow, t_top = as_flow(denoiser)
    schedule = flow.schedule
    t0 = min(float(start), t_top)
    if not 0 < t0 <= 1:
        raise ValueError(f"start must lie in (0, 1]; got {start}")
    if t0 >= 1.0:  # alpha = 0 at t = 1: start where alpha / sigma = e^-5 (guidance divides by alpha)
        t0 = float(schedule.t_from_log_snr(torch.tensor(NOISE_END_LOG_SNR, dtype=torch.float64)))
    times = torch.linspace(t0, 0.0, steps + 1, dtype=torch.float64)
    shp = solution_shape(denoiser, y, shape if noise is None else tuple(noise.shape))
    eps = noise.to(y) if noise is not None else torch.randn(shp, generator=generator, dtype=y.dtype, device=y.device)
    x = t0 * eps
    if init == "pinv":
        x = x + (1.0 - t0) * regularised_pinv(operator, y, sigma_y).expand(shp)
    fn = predict_fn(flow, cond, guidance)
    for i in steps_bar(steps, "PiGDM-flow", progress):
        t, s = times[i], times[i + 1]
        a, sg = float(schedule.alpha(t)), float(schedule.sigma(t))
        gamma = math.sqrt(a / (a * a + sg * sg)) if weighting == "adaptive" else 1.0
        x0w, _ = pigdm_guided_x0(fn, x, t, operator, y, sigma_y, schedule, data_var=1.0, weight=gamma)
        eps_w = (x - a * x0w) / sg
        u = from_x0_eps("velocity", x0w, eps_w, x, t, schedule)                # u + (a' - s' a / s) gamma (s^2/a) g
        x = x + float(s - t) * u                                               # Euler
    return x

