"""DDIM in the general schedule x_t = alpha_t x0 + sigma_t eps (Song et al. 2021, "Denoising Diffusion Implicit
Models", eq. 12; with eta = 0 it is DPM-Solver's first-order step, Lu et al. 2022).

One step from t to s < t given the model's pair (x0_hat, eps_hat):

    x_s = alpha_s x0_hat + sqrt(sigma_s^2 - c^2) eps_hat + c z,   c = eta sigma_s sqrt(1 - e^{2 (lambda_t - lambda_s)})

with lambda = log(alpha / sigma); eta = 1 is the DDPM posterior q(x_s | x_t, x0), eta = 0 the deterministic
DDIM / probability-flow ODE step. Used by progressive distillation, the consistency teachers, the few-step
student samplers and the restoration solvers (PiGDM, DPS).
"""

from __future__ import annotations

import torch
from torch import Tensor

from priorkit.distill.core.denoiser import Condition, Denoiser
from priorkit.distill.core.prediction import Prediction
from priorkit.distill.core.samplers.base import steps_bar
from priorkit.distill.core.schedule import Schedule, as_time, broadcast_to


def _time(t: Tensor | float) -> Tensor:
    """A time as a tensor, float64 unless already a floating tensor (its dtype sets the coefficients')."""
    return as_time(t) if isinstance(t, Tensor) else torch.tensor(float(t), dtype=torch.float64)


def _sqrt_pos(v: Tensor) -> Tensor:
    """sqrt(max(0, v)) elementwise, NaN counted as 0 (as Python's ``max(0.0, nan)``)."""
    return torch.sqrt(torch.where(v > 0, v, torch.zeros_like(v)))


def ddim_coefficients(t: Tensor | float, s: Tensor | float, schedule: Schedule,
                      eta: float = 1.0) -> tuple[Tensor, Tensor, Tensor]:
    """(alpha_s, sqrt(sigma_s^2 - c^2), c) of the DDIM(eta) step from t to s: x_s = alpha_s x0 + k eps + c z.

    The step's mean is deterministic in (x0, eps) and its noise std is ``c``: what the reward fine-tuners need
    (log-probabilities of the stochastic sampler for DDPO, Jacobians of its mean for adjoint matching).
    """
    s, t = _time(s), _time(t)
    t = t.to(s)
    a_s, sig_s = schedule.alpha(s), schedule.sigma(s)
    dl = schedule.half_log_snr(t) - schedule.half_log_snr(s)
    c = eta * sig_s * _sqrt_pos(-torch.expm1(2.0 * dl)) if eta > 0 else torch.zeros_like(sig_s)
    return a_s, _sqrt_pos(sig_s**2 - c**2), c


def ddim_step(x0: Tensor, eps: Tensor, t: Tensor | float, s: Tensor | float, schedule: Schedule, eta: float = 0.0,
              generator: torch.Generator | None = None) -> Tensor:
    """One DDIM(eta) step from time t to s < t given (x0, eps), both (B, ...) (module docstring, DDIM eq. 12/16).

    ``t`` and ``s`` are floats, () or (B,) tensors (per-sample times allowed); the coefficients are computed in
    ``s``'s dtype (float64 for Python floats) and applied in ``x0``'s. ``generator`` draws the fresh noise of eta > 0.
    """
    s = _time(s)
    a_s, sig_s = schedule.alpha(s), schedule.sigma(s)
    if sig_s.ndim == 0 and float(sig_s) == 0.0:
        return broadcast_to(a_s, x0) * x0
    if eta <= 0:  # sqrt(max(0, sigma_s^2)): sigma_s itself, and 0 where a schedule's sigma at the clean end is NaN
        return broadcast_to(a_s, x0) * x0 + broadcast_to(_sqrt_pos(sig_s**2), x0) * eps
    # 1 - exp(2 (lambda_t - lambda_s)) = 1 - (alpha_t sigma_s / (alpha_s sigma_t))^2
    _, k, c = ddim_coefficients(t, s, schedule, eta)
    x = broadcast_to(a_s, x0) * x0 + broadcast_to(k, x0) * eps
    if bool((c > 0).any()):
        x = x + broadcast_to(c, x0) * torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
    return x


def ddim_next(pred: Prediction, t_next: Tensor | float) -> Tensor:
    """The deterministic DDIM step of a `Prediction` at (x_t, t) to ``t_next`` (float, () or (B,); in x_t's dtype)."""
    return ddim_step(pred.x0, pred.eps, pred.t, as_time(t_next, pred.x_t), pred.schedule)


@torch.no_grad()
def ddim_sample(den: Denoiser, noise: Tensor, times: Tensor, *, cond: Condition = None,
                progress: bool | None = None) -> Tensor:
    """Deterministic DDIM from ``noise`` (B, ...) at ``times[0]`` along the decreasing ``times`` (N+1,); NFE = N."""
    x = noise
    for i in steps_bar(len(times) - 1, "ddim", progress):
        x = ddim_next(den(x, times[i], cond, check=False), times[i + 1])
    return x


__all__ = ["ddim_coefficients", "ddim_next", "ddim_sample", "ddim_step"]
