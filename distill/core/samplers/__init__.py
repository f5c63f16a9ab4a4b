"""ODE samplers on the general schedule, and the `sample` front door."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from priorkit.distill.core.denoiser import Condition, Denoiser
from priorkit.distill.core.samplers import dpm_solver, euler, heun
from priorkit.distill.core.samplers.base import is_clean, predict_fn, time_grid

SOLVERS: dict[str, Callable[..., Tensor]] = {
    "euler": euler.euler,
    "heun": heun.heun,
    "dpm++2m": dpm_solver.dpm_solver_2m,
}
_NFE = {"euler": euler.nfe, "heun": heun.nfe, "dpm++2m": dpm_solver.nfe}


def nfe(solver: str, steps: int, clean_end: bool = True) -> int:
    """Model evaluations a solver spends on ``steps`` steps (guidance doubles the batch, not the count)."""
    return _NFE[solver](steps, clean_end)


def sample(denoiser: Denoiser, noise: Tensor, *, steps: int = 25, solver: str = "dpm++2m",
           cond: Condition = None, guidance: float = 1.0, spacing: str | None = None,
           times: Tensor | None = None, t_max: float | None = None, differentiable: bool = False,
           checkpoint: bool = False, progress: bool | None = None, **solver_kwargs) -> Tensor:
    """Solve the probability-flow ODE from ``noise`` to data.

    Args:
        noise: (B, *sample_shape), the state at ``t_max``; for schedules with alpha(t_max) = 1 (VE) this is
            noise scaled by sigma(t_max) already — use :func:`initial_noise` to get it right.
        steps, solver: number of steps and one of "euler", "heun", "dpm++2m"; or "bespoke:PATH", a bespoke
            solver file (`samplers.bespoke`: its own times and NFE, ``steps`` ignored).
        spacing: time grid ("logsnr" for DPM-Solver, "karras" for Heun/Euler by default).
        times: an explicit decreasing grid (overrides steps/spacing).
        differentiable: keep the graph (D-Flow); ``checkpoint`` recomputes each model call in backward.
    Returns: x at the end of the grid, (B, *sample_shape).
    """
    if not torch.isfinite(noise).all():
        raise ValueError("noise contains NaN or inf values")
    if solver.startswith("bespoke:"):  # a solver fitted to one model (samplers.bespoke): its own grid and NFE
        from priorkit.distill.core.samplers.bespoke import load_bespoke

        bespoke = load_bespoke(solver[len("bespoke:"):])
        fn = predict_fn(denoiser, cond, guidance, checkpoint=checkpoint and differentiable)
        with torch.set_grad_enabled(differentiable and torch.is_grad_enabled()):
            return bespoke(fn, noise)
    if solver not in SOLVERS:
        raise ValueError(f"unknown solver {solver!r}; expected one of {sorted(SOLVERS)} or 'bespoke:PATH'")
    if times is None:
        spacing = spacing or ("logsnr" if solver == "dpm++2m" else "karras")
        times = time_grid(denoiser.schedule, steps, spacing, t_max=t_max)
    fn = predict_fn(denoiser, cond, guidance, checkpoint=checkpoint and differentiable)
    with torch.set_grad_enabled(differentiable and torch.is_grad_enabled()):
        return SOLVERS[solver](fn, noise, times, progress=progress, **solver_kwargs)


def initial_noise(denoiser: Denoiser, shape: tuple[int, ...], *, t_max: float | None = None,
                  generator: torch.Generator | None = None, device: torch.device | str | None = None,
                  dtype: torch.dtype = torch.float32) -> Tensor:
    """A draw of x_{t_max} given no data: sqrt(alpha^2 Var[x0] + sigma^2) eps ≈ sigma(t_max) eps.

    Uses sigma(t_max) (alpha(t_max) x0 is negligible at the noise end of every standard schedule).
    """
    schedule = denoiser.schedule
    t = torch.tensor(schedule.t_max if t_max is None else t_max, dtype=torch.float64)
    z = torch.randn(shape, generator=generator, device=device, dtype=dtype)
    return z * float(schedule.sigma(t))


__all__ = ["SOLVERS", "sample", "initial_noise", "time_grid", "predict_fn", "is_clean", "nfe"]
