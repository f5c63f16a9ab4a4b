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

from distill.denoiser import Condition, Denoiser
from distill.prediction import Prediction
from distill.schedule import Schedule, as_time

PredictFn = Callable[[Tensor, Tensor], Prediction]

#: where log-SNR spacing starts when log-SNR(t_max) is -inf (alpha = 0, e.g. flow matching at t = 1);
#: about the noise end of the cosine and Stable Diffusion schedules
NOISE_END_LOG_SNR = -10.0


def is_clean(schedule: Schedule, t: Tensor | float) -> bool:
    """True where sigma(t) = 0, i.e. t is the data end of the schedule."""
    return float(schedule.sigma(as_time(t).double())) == 0.0


def time_grid(schedule: Schedule, steps: int, spacing: str = "logsnr", *, t_max: float | None = None,
              t_min: float | None = None, end: float | None = 0.0, rho: float = 7.0) -> Tensor:
    """``steps + 1`` decreasing times (float64) from ``t_max`` to the data end.

    spacing: "time" (uniform in t), "logsnr" (uniform in log-SNR; Lu et al. 2022) or "karras"
    (uniform in (sigma/alpha)^(1/rho); Karras et al. 2022, eq. 5). When ``end`` is a time where
    sigma = 0 (log-SNR infinite), the spaced part stops at ``t_min`` and a last step goes to ``end``.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1; got {steps}")
    t_max = schedule.t_max if t_max is None else t_max
    t_min = schedule.t_min if t_min is None else t_min
    t_lo = end if end is not None else t_min
    final_clean = end is not None and is_clean(schedule, end)
    n = steps if final_clean else steps + 1
    lo = t_min if final_clean else t_lo
    if final_clean and steps == 1:
        return torch.tensor([t_max, end], dtype=torch.float64)
    if spacing != "time" and not torch.isfinite(schedule.log_snr(torch.tensor(lo, dtype=torch.float64))):
        lo = 1e-3  # a finite log-SNR to space against
    hi_t, lo_t = torch.tensor(t_max, dtype=torch.float64), torch.tensor(lo, dtype=torch.float64)
    if spacing != "time" and not torch.isfinite(schedule.log_snr(hi_t)):
        hi_t = schedule.t_from_log_snr(torch.tensor(NOISE_END_LOG_SNR, dtype=torch.float64))
    if spacing == "time":
        grid = torch.linspace(t_max, lo, n, dtype=torch.float64)
    elif spacing == "logsnr":
        lam = torch.linspace(float(schedule.log_snr(hi_t)), float(schedule.log_snr(lo_t)), n, dtype=torch.float64)
        grid = schedule.t_from_log_snr(lam)
    elif spacing == "karras":
        # noise-to-signal ratio sigma/alpha = exp(-log_snr / 2)
        s_hi, s_lo = (math.exp(-0.5 * float(schedule.log_snr(v))) for v in (hi_t, lo_t))
        ramp = torch.linspace(0, 1, n, dtype=torch.float64)
        s = (s_hi ** (1 / rho) + ramp * (s_lo ** (1 / rho) - s_hi ** (1 / rho))) ** rho
        grid = schedule.t_from_log_snr(-2.0 * torch.log(s))
    else:
        raise ValueError(f"unknown spacing {spacing!r}; expected 'time', 'logsnr' or 'karras'")
    grid[0] = t_max  # exact ends despite round trips through log-SNR
    grid[-1] = lo
    if final_clean:
        grid = torch.cat([grid, torch.tensor([end], dtype=torch.float64)])
    return grid


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
