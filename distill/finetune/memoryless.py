"""The memoryless sampler and the lean adjoint along its trajectories (Domingo-Enrich et al. 2024, "Adjoint
Matching", sections 3-4), on the general schedule x_t = alpha_t x0 + sigma_t eps.

The memoryless noise schedule is the reverse SDE of the forward noising process, dx = [f x - g^2 score] dt + g dw
with f = alpha'/alpha and g^2 = 2 sigma^2 (log sigma/alpha)': at the noise end alpha = 0, so the sampler's start is
independent of its end and fine-tuning towards p(x) exp(r(x)/lambda) needs no value-function bias. Its exact
Gaussian discretisation is the DDIM step with eta = 1 (the DDPM posterior):

    x_s = mean(x_t) + c z,   mean(x_t) = alpha_s x0_hat(x_t) + sqrt(sigma_s^2 - c^2) eps_hat(x_t).

The lean adjoint of a trajectory x_0..x_N (times t_0 > ... > t_N) is the discrete adjoint of the base model's
step means, a_N = -grad r(x_N) / lambda, a_i = (d mean_i / d x_i)^T a_{i+1}; its conditional expectation given
x_i is -grad log h(x_i, t_i) with h = E[exp(r(x_N)/lambda) | x_i] the tilt's likelihood ratio, i.e. the score
residual that turns the base model into the fine-tuned one.
"""

from __future__ import annotations

import torch
from torch import Tensor

from priorkit.distill.core.denoiser import Condition, Denoiser
from priorkit.distill.core.samplers.base import NOISE_END_LOG_SNR, time_grid
from priorkit.distill.core.samplers.ddim import ddim_coefficients
from priorkit.distill.core.schedule import Schedule, broadcast_to

SPACINGS = ("logsnr", "time", "karras")  # the memoryless grids (time_grid's spacings)


def check_spacing(spacing: str) -> None:
    """Refuse a memoryless grid spacing that is not one of :data:`SPACINGS` (one-line ValueError)."""
    if spacing not in SPACINGS:
        raise ValueError(f"unknown memoryless spacing {spacing!r}; expected one of {', '.join(SPACINGS)}")


def memoryless_times(den: Denoiser, steps: int, t_end: float = 1e-3, spacing: str = "logsnr") -> Tensor:
    """``steps + 1`` decreasing times (float64) from the schedule's noise end to ``t_end`` > 0, uniform in log-SNR
    or in ``spacing`` ("time", "karras": :func:`time_grid`'s); the last state keeps a little noise: its reward is read
    there (sigma(t_end) is negligible)."""
    check_spacing(spacing)
    return time_grid(den.schedule, steps, spacing, t_max=start_time(den.schedule), end=t_end)


def start_time(schedule: Schedule) -> float:
    """The schedule's noise end, or where alpha = 0 there (flow matching at t = 1) the time of log-SNR
    ``NOISE_END_LOG_SNR``: a fine-tuned model's x0 is undefined at alpha = 0."""
    t_max = torch.tensor(schedule.t_max, dtype=torch.float64)
    if float(schedule.alpha(t_max)) <= 0.0:
        t_max = schedule.t_from_log_snr(torch.tensor(NOISE_END_LOG_SNR, dtype=torch.float64))
    return float(t_max)


def step_mean(den: Denoiser, x: Tensor, t: Tensor, s: Tensor, cond: Condition = None) -> tuple[Tensor, Tensor]:
    """The eta = 1 DDIM step of ``den`` from t to s: (mean (B, ...), noise std c ()); differentiable in ``x``."""
    pred = den(x, t.to(x.dtype) if t.is_floating_point() else t, cond, check=False)
    a_s, k, c = ddim_coefficients(t, s, den.schedule, eta=1.0)
    return broadcast_to(a_s, x).to(x) * pred.x0 + broadcast_to(k, x).to(x) * pred.eps, c


@torch.no_grad()
def trajectory(den: Denoiser, x: Tensor, times: Tensor, cond: Condition = None,
               generator: torch.Generator | None = None) -> list[Tensor]:
    """States x_0 (= ``x`` at times[0]) .. x_N of the memoryless sampler of ``den`` (no gradients)."""
    states = [x]
    for i in range(len(times) - 1):
        mean, c = step_mean(den, states[-1], times[i], times[i + 1], cond)
        states.append(mean + float(c) * torch.randn(mean.shape, generator=generator, dtype=mean.dtype))
    return states


def lean_adjoint(base: Denoiser, states: list[Tensor], times: Tensor, terminal: Tensor,
                 cond: Condition = None) -> list[Tensor]:
    """a_0 .. a_N along ``states`` with a_N = ``terminal`` (usually -grad r / lambda) and
    a_i = (d mean_i / d x_i)^T a_{i+1} for the base model's step means (vector-Jacobian products)."""
    adj = [terminal.detach()]
    for i in range(len(times) - 2, -1, -1):
        x = states[i].detach().requires_grad_(True)
        with torch.enable_grad():
            mean, _ = step_mean(base, x, times[i], times[i + 1], cond)
            (vjp,) = torch.autograd.grad(mean, x, grad_outputs=adj[-1])
        adj.append(vjp.detach())
    return adj[::-1]


def reward_gradient(reward, x: Tensor, cond: Condition = None) -> tuple[Tensor, Tensor]:  # noqa: ANN001
    """(r(x) (B,), grad_x r(x) (B, ...)) without keeping the graph."""
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        r = reward(x, cond)
        (g,) = torch.autograd.grad(r.sum(), x)
    return r.detach(), g.detach()
