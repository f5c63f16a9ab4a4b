"""DPM-Solver++(2M): multistep second-order solver in data prediction (Lu et al. 2022, "DPM-Solver++", Alg. 2).

With lambda = log(alpha / sigma) and h = lambda_t - lambda_s, one step is

    x_t = (sigma_t / sigma_s) x_s - alpha_t (e^{-h} - 1) D,
    D = x0_s                                      (first order: the DDIM step)
    D = x0_s + (x0_s - x0_prev) / (2 r),  r = h_prev / h   (second order, multistep)

The step into sigma = 0 (lambda = inf) is first order and lands on alpha_t D exactly.
"""

from __future__ import annotations

import torch
from torch import Tensor

from priorkit.distill.core.samplers.base import PredictFn, steps_bar


def dpm_solver_2m(fn: PredictFn, x: Tensor, times: Tensor, *, lower_order_final: bool = True,
                  progress: bool | None = None) -> Tensor:
    """Integrate from ``times[0]`` to ``times[-1]`` (N+1 times, NFE = N). x: (B, ...).

    ``lower_order_final`` takes a first-order last step when N < 15, as diffusers does (stabler at few steps).
    """
    n = len(times) - 1
    x0_prev, h_prev = None, None
    schedule = None
    for i in steps_bar(n, "dpm-solver++", progress):
        s, t = times[i], times[i + 1]
        p = fn(x, s)
        schedule = schedule or p.schedule
        lam_s, lam_t = schedule.half_log_snr(s), schedule.half_log_snr(t)
        h = lam_t - lam_s
        sigma_s, sigma_t, alpha_t = schedule.sigma(s), schedule.sigma(t), schedule.alpha(t)
        first = (x0_prev is None or float(sigma_t) == 0.0 or (lower_order_final and i == n - 1 and n < 15))
        if first:
            d = p.x0
        else:
            r = (h_prev / h).to(x)
            d = p.x0 + (p.x0 - x0_prev) / (2.0 * r)
        x = (sigma_t / sigma_s).to(x) * x - (alpha_t * torch.expm1(-h)).to(x) * d
        x0_prev, h_prev = p.x0, h
    return x


def nfe(steps: int, clean_end: bool = True) -> int:
    return steps
