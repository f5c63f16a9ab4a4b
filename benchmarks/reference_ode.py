"""A high-accuracy reference solution of the probability-flow ODE (scipy, tight tolerances).

Any schedule's ODE becomes the same smooth ODE in ``y = x / alpha`` and ``s = log(sigma / alpha)``
(Karras et al. 2022, eq. 4 with alpha = 1):  dy/ds = y - x0_hat(y, sigma = e^s). It is integrated with
DOP853 from the starting SNR down to ``sigma_end``, where one last x0_hat lands on the data
(error O(sigma_end^2) for a smooth density).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from priorkit.distill.core.denoiser import ConvertedDenoiser, Denoiser
from priorkit.distill.core.schedule import VE, as_time


def reference_solve(den: Denoiser, x: Tensor, t_start: float, *, sigma_end: float = 1e-6, rtol: float = 1e-10,
                    atol: float = 1e-10) -> Tensor:
    """The ODE endpoint at t = 0 from ``x`` (B, ...) at ``t_start`` under ``den.schedule``; float64."""
    from scipy.integrate import solve_ivp

    schedule = den.schedule
    t0 = as_time(t_start).double()
    alpha, sigma = float(schedule.alpha(t0)), float(schedule.sigma(t0))
    if alpha <= 0:
        raise ValueError("the reference solve needs alpha(t_start) > 0")
    ve = VE(sigma_min=sigma_end, sigma_max=max(sigma / alpha, 2 * sigma_end))
    served = ConvertedDenoiser(den, ve)
    shape = x.shape
    y0 = (x.double() / alpha).reshape(-1).cpu().numpy()

    def rhs(s: float, y: np.ndarray) -> np.ndarray:
        sig = torch.tensor(math.exp(s), dtype=torch.float64)
        t = ve.t_from_log_snr(-2.0 * torch.log(sig))
        yt = torch.from_numpy(y).reshape(shape)
        with torch.no_grad():
            x0 = served(yt, t, check=False).x0.double()
        return (yt - x0).reshape(-1).numpy()

    sol = solve_ivp(rhs, (math.log(sigma / alpha), math.log(sigma_end)), y0, method="DOP853", rtol=rtol, atol=atol)
    if not sol.success:
        raise RuntimeError(f"reference ODE solve failed: {sol.message}")
    y_end = torch.from_numpy(sol.y[:, -1]).reshape(shape)
    with torch.no_grad():
        return served(y_end, torch.zeros((), dtype=torch.float64), check=False).x0.double()
