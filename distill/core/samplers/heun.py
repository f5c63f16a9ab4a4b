"""Heun's second-order method (Karras et al. 2022, Algorithm 1) on the general probability-flow ODE."""

from __future__ import annotations

from torch import Tensor

from priorkit.distill.core.samplers.base import PredictFn, is_clean, steps_bar


def heun(fn: PredictFn, x: Tensor, times: Tensor, *, progress: bool | None = None) -> Tensor:
    """Trapezoidal predictor-corrector; the step into sigma = 0 is a plain Euler step.

    x: (B, ...); times: (N+1,). NFE = 2N, or 2N - 1 when the grid ends where sigma = 0.
    """
    schedule = None
    for i in steps_bar(len(times) - 1, "heun", progress):
        s, t = times[i], times[i + 1]
        p = fn(x, s)
        schedule = schedule or p.schedule
        h = (t - s).to(x)
        d1 = p.velocity
        x_euler = x + h * d1
        if is_clean(schedule, t):
            x = x_euler
            continue
        d2 = fn(x_euler, t).velocity
        x = x + 0.5 * h * (d1 + d2)
    return x


def nfe(steps: int, clean_end: bool = True) -> int:
    return 2 * steps - (1 if clean_end else 0)
