"""The consistency parameterisation f(x_t, t) = c_skip x_t / alpha + c_out F over any backbone `Denoiser`
(Song et al. 2023, "Consistency Models"; written through the noise-to-signal ratio r = sigma / alpha, see
`priorkit.distill.students.consistency` for the derivation). A student architecture of its own: the student
format builds and saves it, the consistency trainers train it.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from priorkit.distill.core.denoiser import Condition, Denoiser
from priorkit.distill.core.schedule import broadcast_to

_R_CAP = 1e6  # noise-to-signal ratios beyond this are treated as this (alpha ~ 0: pure noise)


class ConsistencyModel(Denoiser):
    """f(x_t, t) = c_skip x_t / alpha + c_out F over a backbone ``net`` (any `Denoiser`); served as x0.

    ``net`` keeps its schedule and conditions. As a `Denoiser`, the consistency model's x0 is f; a
    one-step DPM-Solver / DDIM solve from t returns f(x_t, t) exactly.
    """

    def __init__(self, net: Denoiser, sigma_data: float = 0.5, sigma_min: float = 0.002) -> None:
        super().__init__()
        if sigma_data <= 0 or sigma_min < 0:
            raise ValueError("sigma_data must be > 0 and sigma_min >= 0")
        self.net, self.sigma_data, self.sigma_min = net, float(sigma_data), float(sigma_min)
        self.schedule, self.sample_shape = net.schedule, net.sample_shape

    def encode(self, cond: Condition) -> Condition:
        return self.net.encode(cond)

    def null_condition(self, cond: Condition) -> Condition:
        return self.net.null_condition(cond)

    def coefficients(self, r: Tensor) -> tuple[Tensor, Tensor]:
        """(c_skip, c_out) at noise-to-signal ratio r (clamped to [r_min, 1e6])."""
        sd, m = self.sigma_data, self.sigma_min
        r = r.clamp(m, _R_CAP)
        c_skip = sd**2 / ((r - m) ** 2 + sd**2)
        c_out = sd * (r - m) / torch.sqrt(r**2 + sd**2)
        return c_skip, c_out

    def predict_native(self, x: Tensor, t: Tensor, cond: Condition = None) -> tuple[str, Tensor]:
        p = self.net(x, t, cond, check=False)
        t64 = t.double()
        a, s = self.schedule.alpha(t64), self.schedule.sigma(t64)
        ratio = torch.where(a > 0, s / a.clamp_min(1e-300), torch.full_like(a, _R_CAP)).clamp_max(_R_CAP)
        c_skip, c_out = self.coefficients(ratio)
        r = ratio.clamp(self.sigma_min, _R_CAP)
        root = torch.sqrt(r**2 + self.sigma_data**2)
        big_a = c_skip + c_out * r / (self.sigma_data * root)            # f = A x0_hat + B eps_hat
        big_b = ratio * c_skip - c_out * self.sigma_data / root
        return "x0", broadcast_to(big_a, x).to(x.dtype) * p.x0 + broadcast_to(big_b, x).to(x.dtype) * p.eps

    def config_spec(self) -> dict[str, Any]:
        """Its own settings; `priorkit.distill.students.format.student_spec` adds the backbone's as "net"."""
        return {"type": "consistency", "sigma_data": self.sigma_data, "sigma_min": self.sigma_min}

    @classmethod
    def from_spec(cls, spec: dict[str, Any], net: Denoiser) -> ConsistencyModel:
        return cls(net, sigma_data=spec["sigma_data"], sigma_min=spec["sigma_min"])


__all__ = ["ConsistencyModel"]
