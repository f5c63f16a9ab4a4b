"""Pieces shared by the guided restoration solvers (PiGDM, DPS, D-Flow, and the next ones): the measurement check,
the solution's shape, the guided samplers' time grid and starting state, the DDIM(eta) step in the general schedule
(Song, Meng & Ermon 2021), serving any prior as a flow, and the regularised pseudo-inverse used for warm starts.

Model space, general schedule ``x_t = alpha x0 + sigma eps``; measurement ``y = A x0 + s n`` in model range.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from priorkit.distill.core.denoiser import ConvertedDenoiser, Denoiser
from priorkit.distill.core.samplers.base import NOISE_END_LOG_SNR, time_grid
from priorkit.distill.core.samplers.ddim import ddim_step  # the DDIM(eta) step, written once in distill's core
from priorkit.distill.core.schedule import FlowMatching, Schedule
from priorkit.inverse.classical import classical, regularised_pinv  # noqa: F401 - regularised_pinv re-exported
from priorkit.inverse.operators import Operator

__all__ = ["check_measurement", "solution_shape", "sampling_times", "initial_state", "ddim_step", "as_flow",
           "regularised_pinv", "warm_state"]


def solution_shape(denoiser: Denoiser, y: Tensor, shape: tuple[int, ...] | None) -> tuple[int, ...]:
    """(B, *sample_shape) of the images to restore: ``shape`` if given, else B = y.shape[0] and the prior's shape."""
    if shape is not None:
        return tuple(shape)
    if denoiser.sample_shape is None:
        raise ValueError("the denoiser has no fixed sample_shape; pass shape=(B, C, H, W)")
    return (y.shape[0], *denoiser.sample_shape)


def check_measurement(y: Tensor, sigma_y: float) -> None:
    """Raise ValueError unless y (measurement-shaped) is finite and sigma_y is a finite float >= 0."""
    if not torch.isfinite(y).all():
        raise ValueError("the measurement y contains NaN or inf values")
    if not (isinstance(sigma_y, (int, float)) and sigma_y >= 0 and math.isfinite(sigma_y)):
        raise ValueError(f"sigma_y must be a finite float >= 0 (model-range noise std); got {sigma_y!r}")


def sampling_times(schedule: Schedule, steps: int, spacing: str = "time", *, t_max: float | None = None) -> Tensor:
    """``steps + 1`` decreasing times (float64) from the noise end to t = 0 (clean), for guided samplers.

    Guidance divides by alpha, so the grid starts where alpha > 0: at ``t_max`` (default: the schedule's), or, when
    alpha vanishes or nearly so there (flow matching at t = 1; the cosine DDPM's t = 1 where sigma^2 / alpha ~ 2e4
    amplifies any Jacobian error of a learned model), where log-SNR = -10 (alpha / sigma = e^-5). The last step lands on
    t = 0 where sigma = 0. Model evaluations: ``steps`` (none at t = 0).
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1; got {steps}")
    t_max = schedule.t_max if t_max is None else float(t_max)
    if not float(schedule.log_snr(torch.tensor(t_max, dtype=torch.float64))) >= NOISE_END_LOG_SNR:  # sigma^2/alpha
        t_max = float(schedule.t_from_log_snr(torch.tensor(NOISE_END_LOG_SNR, dtype=torch.float64)))
    t_min = schedule.t_min if schedule.t_min > 0 else 1e-3
    return time_grid(schedule, steps, spacing, t_max=t_max, t_min=min(t_min, 0.5 * t_max))


def initial_state(denoiser: Denoiser, y: Tensor, steps: int, spacing: str, times: Tensor | None,
                  shape: tuple[int, ...] | None, noise: Tensor | None, generator: torch.Generator | None
                  ) -> tuple[Tensor, Tensor]:
    """(times, x): the guided samplers' grid (:func:`sampling_times` unless given) and x = sigma(t_0) z."""
    schedule = denoiser.schedule
    times = sampling_times(schedule, steps, spacing) if times is None else times.double()
    shp = solution_shape(denoiser, y, shape if noise is None else tuple(noise.shape))
    z = noise if noise is not None else torch.randn(shp, generator=generator, dtype=y.dtype, device=y.device)
    return times, float(schedule.sigma(times[0])) * z.to(y)


def as_flow(denoiser: Denoiser) -> tuple[Denoiser, float]:
    """The denoiser under flow matching (alpha = 1 - t, sigma = t) and the time where its sampling should start.

    A flow model is returned as is (start t = 1); any other is wrapped in `ConvertedDenoiser` and starts at the flow
    time whose SNR equals the SNR at its own ``t_max`` (t = 1 when that SNR is zero).
    """
    if isinstance(denoiser.schedule, FlowMatching):
        return denoiser, 1.0
    flow = FlowMatching()
    inner = denoiser.schedule
    lam = inner.log_snr(torch.tensor(inner.t_max, dtype=torch.float64))
    start = 1.0 if not torch.isfinite(lam) else float(flow.t_from_log_snr(lam))
    return ConvertedDenoiser(denoiser, flow), start




def warm_state(denoiser: Denoiser, operator: Operator, y: Tensor, sigma_y: float, steps: int, spacing: str,
               t_start: float, shape: tuple[int, ...] | None, noise: Tensor | None,
               generator: torch.Generator | None) -> tuple[Tensor, Tensor]:
    """(times, x): a warm start (Chung, Sim & Ye 2022, "Come-Closer-Diffuse-Faster"): ``steps`` steps from
    ``t_start`` down, from x = alpha(t_start) x_init + sigma(t_start) z, x_init the classical restoration of ``y``
    (:func:`priorkit.inverse.classical.classical`: bicubic, Wiener, biharmonic; else the regularised pseudo-inverse)."""
    schedule = denoiser.schedule
    if not schedule.t_min < t_start <= schedule.t_max:
        raise ValueError(f"warm_start must lie in ({schedule.t_min}, {schedule.t_max}]; got {t_start}")
    times = sampling_times(schedule, steps, spacing, t_max=t_start)
    shp = solution_shape(denoiser, y, shape if noise is None else tuple(noise.shape))
    init = classical(None, operator, y, sigma_y).to(y).expand(shp)
    z = noise if noise is not None else torch.randn(shp, generator=generator, dtype=y.dtype, device=y.device)
    t0 = times[0]
    return times, float(schedule.alpha(t0)) * init + float(schedule.sigma(t0)) * z.to(y)

