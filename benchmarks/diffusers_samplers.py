"""Run a diffusers scheduler (DPM-Solver++, Euler, Heun, ...) on a priorkit `Denoiser`.

The standard diffusers sampling loop with the denoiser served as an epsilon model at the scheduler's
integer timesteps (``t = (timestep + 1) / N`` on a `VPDiscrete` schedule built from the same config), so
priorkit's solvers and diffusers' can be compared on the same model and noise.
"""

from __future__ import annotations

import torch
from torch import Tensor

from priorkit.distill.core.denoiser import Denoiser
from priorkit.distill.core.schedule import VPDiscrete


def vp_discrete_times(timesteps: Tensor, schedule: VPDiscrete) -> Tensor:
    """diffusers' integer timesteps -> priorkit's continuous times (float64)."""
    return schedule.time(timesteps.double())


@torch.no_grad()
def diffusers_solve(den: Denoiser, scheduler, noise: Tensor, steps: int) -> Tensor:  # noqa: ANN001 (any scheduler)
    """Sample with ``scheduler`` from ``noise`` (B, ...) (the VP-space x_T) in ``steps`` steps.

    ``den.schedule`` must be the `VPDiscrete` schedule of ``scheduler.config`` (checked).
    """
    schedule = den.schedule
    if not isinstance(schedule, VPDiscrete) or schedule.num_train_timesteps != scheduler.config.num_train_timesteps:
        raise ValueError("the denoiser must be served on the scheduler's own VPDiscrete schedule")
    scheduler.set_timesteps(steps)
    x = noise * scheduler.init_noise_sigma
    for ts in scheduler.timesteps:
        model_in = scheduler.scale_model_input(x, ts)
        t = schedule.time(ts.double().reshape(()))
        eps = den(model_in, t.to(model_in.dtype), check=False).eps
        x = scheduler.step(eps, ts, x).prev_sample
    return x
