"""What a denoiser predicts, and the exact conversions between the five usual targets.

Under ``x_t = alpha x0 + sigma eps`` every target is affine in (x0, eps) given x_t:

    eps-prediction   eps
    x0-prediction    x0                               ("sample" in diffusers)
    v-prediction     v = alpha eps - sigma x0         (Salimans & Ho 2022; general-schedule form)
    flow velocity    u = alpha' x0 + sigma' eps       (dx_t/dt, the probability-flow ODE drift)
    score            s = -eps / sigma                 (grad log p_t(x_t), Tweedie / Vincent 2011)

so each converts to (x0, eps) by solving a 2x2 linear system, and back.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from torch import Tensor

from priorkit.distill.core.schedule import Schedule, as_time, broadcast_to

Kind = Literal["eps", "x0", "v", "velocity", "score"]
KINDS: tuple[str, ...] = ("eps", "x0", "v", "velocity", "score")

#: diffusers' ``prediction_type`` names -> ours
DIFFUSERS_KINDS: dict[str, str] = {"epsilon": "eps", "sample": "x0", "v_prediction": "v", "flow": "velocity"}


def _coefficients(schedule: Schedule, t: Tensor, x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    t = as_time(t, x)
    return tuple(broadcast_to(f(t), x) for f in (schedule.alpha, schedule.sigma, schedule.d_alpha, schedule.d_sigma))


def to_x0_eps(kind: str, value: Tensor, x_t: Tensor, t: Tensor | float, schedule: Schedule) -> tuple[Tensor, Tensor]:
    """Convert a prediction of ``kind`` at ``(x_t, t)`` to the pair ``(x0, eps)``. Shapes: all (B, ...)."""
    a, s, da, ds = _coefficients(schedule, t, x_t)
    if kind == "eps":
        return (x_t - s * value) / a, value
    if kind == "x0":
        return value, (x_t - a * value) / s
    if kind == "v":
        n = a * a + s * s
        return (a * x_t - s * value) / n, (s * x_t + a * value) / n
    if kind == "velocity":
        det = a * ds - s * da
        return (ds * x_t - s * value) / det, (a * value - da * x_t) / det
    if kind == "score":
        eps = -s * value
        return (x_t - s * eps) / a, eps
    raise ValueError(f"unknown prediction kind {kind!r}; expected one of {KINDS}")


def from_x0_eps(kind: str, x0: Tensor, eps: Tensor, x_t: Tensor, t: Tensor | float, schedule: Schedule) -> Tensor:
    """Inverse of :func:`to_x0_eps`: the ``kind`` target built from ``(x0, eps)``."""
    a, s, da, ds = _coefficients(schedule, t, x_t)
    if kind == "eps":
        return eps
    if kind == "x0":
        return x0
    if kind == "v":
        return a * eps - s * x0
    if kind == "velocity":
        return da * x0 + ds * eps
    if kind == "score":
        return -eps / s
    raise ValueError(f"unknown prediction kind {kind!r}; expected one of {KINDS}")


@dataclass
class Prediction:
    """A denoiser's answer at ``(x_t, t)``, readable as any target.

    Holds ``x0`` and ``eps`` (shape (B, ...)), the point ``x_t`` it was made at, ``t`` (() or (B,)) and
    the ``schedule``; ``v``, ``velocity`` and ``score`` are computed on access.
    """

    x0: Tensor
    eps: Tensor
    x_t: Tensor
    t: Tensor
    schedule: Schedule

    @classmethod
    def from_output(cls, kind: str, value: Tensor, x_t: Tensor, t: Tensor | float, schedule: Schedule) -> Prediction:
        t = as_time(t, x_t)
        x0, eps = to_x0_eps(kind, value, x_t, t, schedule)
        return cls(x0=x0, eps=eps, x_t=x_t, t=t, schedule=schedule)

    def as_kind(self, kind: str) -> Tensor:
        return from_x0_eps(kind, self.x0, self.eps, self.x_t, self.t, self.schedule)

    @property
    def v(self) -> Tensor:
        return self.as_kind("v")

    @property
    def velocity(self) -> Tensor:
        return self.as_kind("velocity")

    @property
    def score(self) -> Tensor:
        return self.as_kind("score")

    def guide(self, uncond: Prediction, scale: float | Tensor) -> Prediction:
        """Classifier-free guidance ``uncond + scale (self - uncond)`` (Ho & Salimans 2022).

        Exact for every target at once: all are affine in (x0, eps) at fixed ``(x_t, t)``.
        """
        w = broadcast_to(scale, self.x0) if isinstance(scale, Tensor) else float(scale)
        return Prediction(
            x0=uncond.x0 + w * (self.x0 - uncond.x0),
            eps=uncond.eps + w * (self.eps - uncond.eps),
            x_t=self.x_t, t=self.t, schedule=self.schedule,
        )
