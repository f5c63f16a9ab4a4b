"""Euler's method on the probability-flow ODE (first order; Song et al. 2021)."""

from __future__ import annotations

from torch import Tensor

from priorkit.distill.core.samplers.base import PredictFn, steps_bar


def euler(fn: PredictFn, x: Tensor, times: Tensor, *, progress: bool | None = None) -> Tensor:
    """Integrate dx/dt = velocity from ``times[0]`` to ``times[-1]``. x: (B, ...); times: (N+1,). NFE = N."""
    for i in steps_bar(len(times) - 1, "euler", progress):
        s, t = times[i], times[i + 1]
        x = x + (t - s).to(x) * fn(x, s).velocity
    return x


def nfe(steps: int, clean_end: bool = True) -> int:
    return steps
