"""What every ODE sampler shares: time grids, the model call, and the progress bar.

The probability-flow ODE of ``x_t = alpha x0 + sigma eps`` is ``dx/dt = alpha' x0_hat + sigma' eps_hat``
(the ``velocity`` of a `Prediction`); samplers integrate it from ``times[0]`` (noise) to ``times[-1]``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint as _checkpoint
from tqdm.auto import tqdm

from priorkit.distill.core.denoiser import Condition, Denoiser
from priorkit.distill.core.prediction import Prediction
from priorkit.distill.core.schedule import Schedule, as_time

PredictFn = Callable[[Tensor, Tensor], Prediction]

#: where log-SNR spacing starts when log-SNR(t_max) is -inf (alpha = 0, e.g. flow matching at t = 1);
#: about the noise end of the cosine and Stable Diffusion schedules
NOISE_END_LOG_SNR = -10.0


def is_clean(schedule: Schedule, t: Tensor | float) -> bool:
    """True where sigma(t) = 0, i.e. t is the data end of the schedule."""
    return float(schedule.sigma(as_time(t).double())) == 0.0


def time_grid(schedule: Schedule, steps: int, spacing: str = "logsnr", *, t_max: float | None = None,
              t_min: float | None = None, end: float | None = 0.0, rho: float = 7.0) -> Tensor:
    """``steps + 1`` decreasing times (float64) from ``t_max`` to ``end`` (default 0, the data end).

    spacing: "time" (uniform in t), "logsnr" (uniform in log-SNR; Lu et al. 2022), "karras"
    (uniform in (sigma/alpha)^(1/rho); Karras et al. 2022, eq. 5) or "ddpm" (see :func:`ddpm_grid`). For
    "logsnr" and "karras", when sigma(end) = 0 (log-SNR infinite) the spaced part stops at ``t_min`` and one last
    step goes to ``end``.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1; got {steps}")
    t_max = schedule.t_max if t_max is None else t_max
    t_min = schedule.t_min if t_min is None else t_min
    end = t_min if end is None else end
    if spacing == "time":  # uniform in t, straight to the end
        return torch.linspace(t_max, end, steps + 1, dtype=torch.float64)
    if spacing == "ddpm":
        return ddpm_grid(schedule, steps, t_max=t_max, end=end)
    if spacing not in ("logsnr", "karras"):
        raise ValueError(f"unknown spacing {spacing!r}; expected 'time', 'logsnr', 'karras' or 'ddpm'")
    f64 = lambda v: torch.as_tensor(v, dtype=torch.float64)  # noqa: E731
    final_clean = not torch.isfinite(schedule.log_snr(f64(end)))  # sigma(end) = 0: log-SNR is +inf there
    if final_clean and steps == 1:
        return f64([t_max, end])
    lo = max(t_min, end) if final_clean else end
    if not torch.isfinite(schedule.log_snr(f64(lo))):
        lo = 1e-3  # a finite log-SNR to space against
    n = steps if final_clean else steps + 1
    hi_t, lo_t = f64(t_max), f64(lo)
    if not torch.isfinite(schedule.log_snr(hi_t)):  # alpha(t_max) = 0, e.g. flow matching at t = 1
        hi_t = schedule.t_from_log_snr(f64(NOISE_END_LOG_SNR))
    lam_hi, lam_lo = float(schedule.log_snr(hi_t)), float(schedule.log_snr(lo_t))
    ramp = torch.linspace(0, 1, n, dtype=torch.float64)
    if spacing == "logsnr":
        lam = lam_hi + ramp * (lam_lo - lam_hi)
    else:  # Karras: uniform in (sigma/alpha)^(1/rho), sigma/alpha = exp(-log_snr / 2)
        s_hi, s_lo = math.exp(-0.5 * lam_hi), math.exp(-0.5 * lam_lo)
        lam = -2.0 * rho * torch.log(s_hi ** (1 / rho) + ramp * (s_lo ** (1 / rho) - s_hi ** (1 / rho)))
    grid = schedule.t_from_log_snr(lam)
    grid[0], grid[-1] = t_max, lo  # exact ends despite round trips through log-SNR
    if final_clean:
        grid = torch.cat([grid, f64([end])])
    return grid


#: the linear-beta DDPM (Ho et al. 2020) in continuous time: beta(u) = 0.1 + 19.9 u, u in [0, 1]
DDPM_BETA = (0.1, 20.0)
DDPM_FIRST_U = 1e-3  # its first timestep (of 1000)


def ddpm_grid(schedule: Schedule, steps: int, *, t_max: float | None = None, end: float = 0.0) -> Tensor:
    """``steps + 1`` times at the noise levels of a 1000-step linear-beta DDPM's strided grid, on any schedule.

    The classic DDPM/DDIM sampling grid (timesteps 999, ..., 0 taken with a uniform stride, as the PiGDM and DPS
    papers sample with ADM models) carried over by log-SNR: in the continuous model, timestep k is u = (k + 1) /
    1000 and ``log-SNR(u) = -log(exp(B(u)) - 1)`` with ``B(u) = b0 u + (b1 - b0) u^2 / 2``. The ``steps`` model
    evaluations run uniformly in u from ``t_max`` (or u = 1, whichever is less noisy) to u = 1/1000 (DDPM's first
    timestep); the last step goes to ``end``. It spends more steps at high noise than a uniform-t cosine grid.
    """
    f64 = lambda v: torch.as_tensor(v, dtype=torch.float64)  # noqa: E731
    b0, b1 = DDPM_BETA
    a = 0.5 * (b1 - b0)

    def u_of(lam: float) -> float:  # B(u) = log(1 + e^-lam), solved for u >= 0
        big_b = math.log1p(math.exp(-lam)) if lam > -30 else -lam
        return min(1.0, (-b0 + math.sqrt(b0 * b0 + 4.0 * a * big_b)) / (2.0 * a))

    t_max = schedule.t_max if t_max is None else t_max
    lam_hi = float(schedule.log_snr(f64(t_max)))
    u_hi = u_of(lam_hi) if math.isfinite(lam_hi) else 1.0
    lam_end = float(schedule.log_snr(f64(end)))
    u_lo = max(u_of(lam_end) if math.isfinite(lam_end) else 0.0, DDPM_FIRST_U)
    if steps == 1 or u_lo >= u_hi:
        return torch.linspace(t_max, end, steps + 1, dtype=torch.float64)
    u = torch.linspace(u_hi, u_lo, steps, dtype=torch.float64)[1:]
    lam = -torch.log(torch.expm1(b0 * u + a * u * u))
    inner = schedule.t_from_log_snr(lam).clamp(min(end, t_max), t_max)
    return torch.cat([f64([t_max]), inner, f64([end])])


def predict_fn(denoiser: Denoiser, cond: Condition = None, guidance: float = 1.0, *,
               checkpoint: bool = False) -> PredictFn:
    """Bind condition and guidance: ``fn(x, t) -> Prediction``.

    With ``checkpoint``, the model's activations are recomputed in the backward pass instead of stored
    (gradient checkpointing), so differentiating through a whole ODE solve costs memory per step only
    for x (D-Flow).
    """
    encoded = denoiser.encode(cond)

    def call(x: Tensor, t: Tensor) -> Prediction:
        c = encoded
        if isinstance(c, Tensor) and c.shape[0] == 1 and x.shape[0] > 1:
            c = c.expand(x.shape[0], *c.shape[1:])
        if guidance == 1.0 or c is None:
            return denoiser(x, t, c, check=False)
        return denoiser.guided(x, t, c, guidance, check=False)

    if not checkpoint:
        return call

    def checkpointed(x: Tensor, t: Tensor) -> Prediction:
        x0, eps = _checkpoint(lambda y: _pair(call(y, t)), x, use_reentrant=False)
        return Prediction(x0=x0, eps=eps, x_t=x, t=as_time(t, x), schedule=denoiser.schedule)

    return checkpointed


def _pair(p: Prediction) -> tuple[Tensor, Tensor]:
    return p.x0, p.eps


def steps_bar(n: int, desc: str, progress: bool | None) -> Iterable[int]:
    """range(n) with a tqdm bar; ``progress=None`` shows it for runs of 50 steps or more."""
    show = n >= 50 if progress is None else progress
    return tqdm(range(n), desc=desc, disable=not show, leave=False)
