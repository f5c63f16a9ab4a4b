"""Noise schedules in one general form: x_t = alpha(t) * x0 + sigma(t) * eps, t in [0, 1].

Every diffusion and flow model is one of these. Two schedules with equal log-SNR at times t and t'
describe the same noisy variable up to a scale (Karras et al. 2022, eq. 4 and appendix C), which is
what :meth:`Schedule.convert` computes.

Conventions:
    * ``t`` is a float tensor of any shape (usually ``()`` or ``(B,)``); outputs have ``t``'s shape.
    * ``log_snr(t) = log(alpha^2 / sigma^2)``; DPM-Solver's lambda is half of it.
    * ``t_min``/``t_max`` bound the times a sampler visits; ``t = 0`` is the data end.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import Any

import torch
from torch import Tensor
from torch.nn import functional as F


def as_time(t: Tensor | float, like: Tensor | None = None) -> Tensor:
    """Return ``t`` as a floating tensor (on ``like``'s device and dtype when given)."""
    if isinstance(t, Tensor):
        t = t if t.is_floating_point() else t.double()
        return t.to(like) if like is not None else t
    dtype = like.dtype if like is not None else torch.get_default_dtype()
    device = like.device if like is not None else None
    return torch.tensor(float(t), dtype=dtype, device=device)


class Schedule(ABC):
    """A noise schedule ``x_t = alpha(t) x0 + sigma(t) eps`` on ``t in [0, 1]``.

    Subclasses give alpha, sigma and their time derivatives in closed form, and invert the log-SNR.
    ``config()`` returns a JSON-able dict from which :func:`schedule_from_config` rebuilds it.
    """

    #: sampling range; ``t_max`` is where pure-noise sampling starts.
    t_min: float = 0.0
    t_max: float = 1.0

    @abstractmethod
    def alpha(self, t: Tensor) -> Tensor: ...

    @abstractmethod
    def sigma(self, t: Tensor) -> Tensor: ...

    @abstractmethod
    def d_alpha(self, t: Tensor) -> Tensor:
        """d alpha / dt."""

    @abstractmethod
    def d_sigma(self, t: Tensor) -> Tensor:
        """d sigma / dt."""

    @abstractmethod
    def t_from_log_snr(self, log_snr: Tensor) -> Tensor:
        """Inverse of :meth:`log_snr` (clamped to [0, 1])."""

    @abstractmethod
    def config(self) -> dict[str, Any]: ...

    def log_snr(self, t: Tensor) -> Tensor:
        return 2.0 * (torch.log(self.alpha(t)) - torch.log(self.sigma(t)))

    def half_log_snr(self, t: Tensor) -> Tensor:
        """DPM-Solver's lambda(t) = log(alpha / sigma)."""
        return 0.5 * self.log_snr(t)

    def convert(self, t: Tensor | float, x: Tensor | None = None, *, to: Schedule) -> tuple[Tensor, Tensor | None]:
        """Map ``(t, x_t)`` under this schedule to ``(t', x'_t')`` under ``to`` with equal SNR.

        ``x'_t' = x_t * sqrt(alpha'^2 + sigma'^2) / sqrt(alpha^2 + sigma^2)``: at equal SNR the two
        variables differ by exactly that scale (Karras et al. 2022). Returns ``(t', x')``
        (``x'`` is None when ``x`` is None).
        """
        t = as_time(t, x)
        t2 = to.t_from_log_snr(self.log_snr(t))
        if x is None:
            return t2, None
        scale = torch.hypot(to.alpha(t2), to.sigma(t2)) / torch.hypot(self.alpha(t), self.sigma(t))
        return t2, x * broadcast_to(scale, x)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.config().items() if k != "kind")
        return f"{type(self).__name__}({args})"


def broadcast_to(a: Tensor, x: Tensor) -> Tensor:
    """Reshape a per-sample coefficient ``a`` of shape ``()`` or ``(B,)`` to broadcast against ``x`` (B, ...)."""
    a = a.to(x.dtype) if a.is_floating_point() and x.is_floating_point() else a
    if a.ndim == 0:
        return a
    return a.reshape(a.shape + (1,) * (x.ndim - a.ndim))


def add_noise(schedule: Schedule, x0: Tensor, t: Tensor, eps: Tensor) -> Tensor:
    """The forward (noising) process x_t = alpha(t) x0 + sigma(t) eps; x0, eps (B, ...), t () or (B,)."""
    return broadcast_to(schedule.alpha(t), x0) * x0 + broadcast_to(schedule.sigma(t), x0) * eps


class FlowMatching(Schedule):
    """Rectified flow / flow matching: alpha = 1 - t, sigma = t (Liu et al. 2022; Lipman et al. 2022)."""

    def alpha(self, t: Tensor) -> Tensor:
        return 1.0 - t

    def sigma(self, t: Tensor) -> Tensor:
        return t

    def d_alpha(self, t: Tensor) -> Tensor:
        return -torch.ones_like(t)

    def d_sigma(self, t: Tensor) -> Tensor:
        return torch.ones_like(t)

    def log_snr(self, t: Tensor) -> Tensor:
        return 2.0 * (torch.log1p(-t) - torch.log(t))

    def t_from_log_snr(self, log_snr: Tensor) -> Tensor:
        return torch.sigmoid(-0.5 * log_snr)

    def config(self) -> dict[str, Any]:
        return {"kind": "flow"}


class _VariancePreserving(Schedule):
    """alpha^2 + sigma^2 = 1, parameterised by log alpha(t)."""

    @abstractmethod
    def log_alpha(self, t: Tensor) -> Tensor: ...

    @abstractmethod
    def d_log_alpha(self, t: Tensor) -> Tensor: ...

    def alpha(self, t: Tensor) -> Tensor:
        return torch.exp(self.log_alpha(t))

    def sigma(self, t: Tensor) -> Tensor:
        return torch.sqrt(-torch.expm1(2.0 * self.log_alpha(t)))

    def d_alpha(self, t: Tensor) -> Tensor:
        return self.alpha(t) * self.d_log_alpha(t)

    def d_sigma(self, t: Tensor) -> Tensor:
        a2 = torch.exp(2.0 * self.log_alpha(t))
        return -a2 * self.d_log_alpha(t) / torch.sqrt(-torch.expm1(2.0 * self.log_alpha(t)))

    def log_snr(self, t: Tensor) -> Tensor:
        la = self.log_alpha(t)
        return 2.0 * la - torch.log(-torch.expm1(2.0 * la))

    @staticmethod
    def _log_alpha_from_log_snr(log_snr: Tensor) -> Tensor:
        # alpha^2 = sigmoid(log_snr)  =>  log alpha = -softplus(-log_snr) / 2
        return -0.5 * F.softplus(-log_snr)


class VPLinear(_VariancePreserving):
    """Continuous VP SDE with linear beta(t) (Song et al. 2021): log alpha = -t^2 (b1 - b0) / 4 - t b0 / 2."""

    t_min = 1e-3

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0) -> None:
        self.beta_min, self.beta_max = float(beta_min), float(beta_max)

    def log_alpha(self, t: Tensor) -> Tensor:
        return -0.25 * t**2 * (self.beta_max - self.beta_min) - 0.5 * t * self.beta_min

    def d_log_alpha(self, t: Tensor) -> Tensor:
        return -0.5 * t * (self.beta_max - self.beta_min) - 0.5 * self.beta_min

    def t_from_log_snr(self, log_snr: Tensor) -> Tensor:
        c = -self._log_alpha_from_log_snr(log_snr)  # a t^2 + b t = c
        a, b = 0.25 * (self.beta_max - self.beta_min), 0.5 * self.beta_min
        t = 2.0 * c / (b + torch.sqrt(b * b + 4.0 * a * c))  # stable root of the quadratic
        t = torch.where(torch.isposinf(c), torch.ones_like(t), t)  # log-SNR -inf (pure noise): inf / inf above
        return t.clamp(0.0, 1.0)

    def config(self) -> dict[str, Any]:
        return {"kind": "vp_linear", "beta_min": self.beta_min, "beta_max": self.beta_max}


class VPCosine(_VariancePreserving):
    """Cosine VP schedule (Nichol & Dhariwal 2021): alpha = cos(pi/2 (t+s)/(1+s)) / cos(pi/2 s/(1+s))."""

    def __init__(self, s: float = 0.008, t_max: float = 0.9946) -> None:
        self.s = float(s)
        self.t_max = float(t_max)  # alpha(1) = 0 exactly; stop where the SNR is tiny but finite
        self._log_f0 = math.log(math.cos(math.pi / 2 * self.s / (1 + self.s)))

    def _angle(self, t: Tensor) -> Tensor:
        return math.pi / 2 * (t + self.s) / (1 + self.s)

    def log_alpha(self, t: Tensor) -> Tensor:
        # clamped: torch.cos and math.cos may round apart by an ulp, and log alpha(0) = +1e-20 made sigma(0) NaN
        return (torch.log(torch.cos(self._angle(t))) - self._log_f0).clamp(max=0.0)

    def d_log_alpha(self, t: Tensor) -> Tensor:
        return -torch.tan(self._angle(t)) * math.pi / (2 * (1 + self.s))

    def t_from_log_snr(self, log_snr: Tensor) -> Tensor:
        la = self._log_alpha_from_log_snr(log_snr) + self._log_f0
        t = torch.arccos(torch.exp(la)) * 2 * (1 + self.s) / math.pi - self.s
        return t.clamp(0.0, 1.0)

    def config(self) -> dict[str, Any]:
        return {"kind": "vp_cosine", "s": self.s, "t_max": self.t_max}


class VPDiscrete(_VariancePreserving):
    """DDPM's discrete schedule made continuous.

    Integer timestep ``i`` (0..N-1) sits at ``t = (i + 1) / N`` and ``t = 0`` is clean data
    (log alpha = 0); log alpha is linear between knots, as in DPM-Solver's discrete-time wrapper
    (Lu et al. 2022, appendix). :meth:`timestep` and :meth:`time` map between the two exactly.
    """

    def __init__(self, alphas_cumprod: Tensor | list[float]) -> None:
        ac = torch.as_tensor(alphas_cumprod, dtype=torch.float64)
        if ac.ndim != 1 or len(ac) < 2:
            raise ValueError("alphas_cumprod must be a 1-D sequence of at least two values")
        self.num_train_timesteps = len(ac)
        log_alpha = 0.5 * torch.log(ac.clamp_min(1e-30))
        self._t = torch.linspace(0.0, 1.0, self.num_train_timesteps + 1, dtype=torch.float64)
        self._la = torch.cat([torch.zeros(1, dtype=torch.float64), log_alpha])
        if not bool((self._la[1:] < self._la[:-1]).all()):
            raise ValueError("alphas_cumprod must be strictly decreasing")
        self.t_min = 1.0 / self.num_train_timesteps
        self.alphas_cumprod = ac

    @classmethod
    def from_diffusers_config(cls, config: dict[str, Any]) -> VPDiscrete:
        """Build from a diffusers DDPM/DDIM/DPM scheduler config (betas computed by diffusers itself)."""
        from diffusers import DDPMScheduler

        keys = ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "trained_betas",
                "rescale_betas_zero_snr")
        scheduler = DDPMScheduler(**{k: config[k] for k in keys if k in config})
        return cls(scheduler.alphas_cumprod)

    def timestep(self, t: Tensor) -> Tensor:
        """Continuous t -> (fractional) diffusers timestep ``t * N - 1``."""
        return t * self.num_train_timesteps - 1.0

    def time(self, timestep: Tensor | float) -> Tensor:
        """Diffusers timestep -> continuous ``t = (timestep + 1) / N``."""
        return (as_time(timestep) + 1.0) / self.num_train_timesteps

    def _segment(self, t: Tensor) -> tuple[Tensor, Tensor]:
        knots = self._t.to(t)
        i = torch.clamp(torch.searchsorted(knots, t.detach().contiguous(), right=True) - 1, 0, len(knots) - 2)
        slope = (self._la.to(t)[i + 1] - self._la.to(t)[i]) / (knots[i + 1] - knots[i])
        return i, slope

    def log_alpha(self, t: Tensor) -> Tensor:
        i, slope = self._segment(t)
        return self._la.to(t)[i] + slope * (t - self._t.to(t)[i])

    def d_log_alpha(self, t: Tensor) -> Tensor:
        return self._segment(t)[1]

    def t_from_log_snr(self, log_snr: Tensor) -> Tensor:
        la = self._log_alpha_from_log_snr(log_snr)
        neg = -self._la.to(la)  # increasing in t
        i = torch.clamp(torch.searchsorted(neg, (-la).detach().contiguous(), right=True) - 1, 0, len(neg) - 2)
        w = ((-la) - neg[i]) / (neg[i + 1] - neg[i])
        return (self._t.to(la)[i] + w * (self._t.to(la)[i + 1] - self._t.to(la)[i])).clamp(0.0, 1.0)

    def config(self) -> dict[str, Any]:
        return {"kind": "vp_discrete", "alphas_cumprod": self.alphas_cumprod.tolist()}

    def __repr__(self) -> str:
        return f"VPDiscrete(num_train_timesteps={self.num_train_timesteps})"


class VE(Schedule):
    """Variance exploding: alpha = 1, sigma = sigma_min (sigma_max / sigma_min)^t (Song et al. 2021).

    EDM (Karras et al. 2022) is this family sampled on Karras' rho-spaced grid (see ``time_grid``).
    """

    def __init__(self, sigma_min: float = 0.002, sigma_max: float = 80.0) -> None:
        self.sigma_min, self.sigma_max = float(sigma_min), float(sigma_max)
        self._log_ratio = math.log(self.sigma_max / self.sigma_min)

    def alpha(self, t: Tensor) -> Tensor:
        return torch.ones_like(t)

    def sigma(self, t: Tensor) -> Tensor:
        return self.sigma_min * torch.exp(t * self._log_ratio)

    def d_alpha(self, t: Tensor) -> Tensor:
        return torch.zeros_like(t)

    def d_sigma(self, t: Tensor) -> Tensor:
        return self.sigma(t) * self._log_ratio

    def log_snr(self, t: Tensor) -> Tensor:
        return -2.0 * (math.log(self.sigma_min) + t * self._log_ratio)

    def t_from_log_snr(self, log_snr: Tensor) -> Tensor:
        return ((-0.5 * log_snr - math.log(self.sigma_min)) / self._log_ratio).clamp(0.0, 1.0)

    def config(self) -> dict[str, Any]:
        return {"kind": "ve", "sigma_min": self.sigma_min, "sigma_max": self.sigma_max}


_KINDS: dict[str, type[Schedule]] = {
    "flow": FlowMatching, "vp_linear": VPLinear, "vp_cosine": VPCosine, "vp_discrete": VPDiscrete, "ve": VE,
}


def schedule_from_config(config: dict[str, Any]) -> Schedule:
    """Inverse of ``Schedule.config()``."""
    config = dict(config)
    kind = config.pop("kind", None)
    if kind not in _KINDS:
        raise ValueError(f"unknown schedule kind {kind!r}; expected one of {sorted(_KINDS)}")
    return _KINDS[kind](**config)
