"""A fine-tuned model as a frozen base denoiser plus a trainable residual of the score (for vectors: 2D targets).

eps_ft(x, t) = eps_base(x, t) - sigma(t) delta(x, t), i.e. score_ft = score_base + delta: the residual is exactly the
quantity reward fine-tuning changes (for a tilt, delta = grad log h). The residual's last layer starts at zero, so
the fine-tuned model starts as the base model.

Two residual networks: :class:`ScoreResidual` (an MLP of x and t giving the vector) and :class:`FourierResidual`
(of Fourier features of the scaled x and of the log-SNR: a vector network, the gradient of a scalar network, or their
sum). On the 2D tilt benchmark's ring the Fourier features are what lets the network hold the residual's jumps where
the components separate; fitted to the exact residual, the gradient form is closer still, but in adjoint matching on
the benchmark's 40-step grid the vector form measures best at lambda 1 and is no better than the plain MLP at lambda
0.5 (BENCHMARKS.md, "Adjoint matching with a residual network that can hold the tilt", session 27).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from priorkit.distill.core.denoiser import Condition, Denoiser, WrappedDenoiser
from priorkit.distill.core.prediction import Prediction
from priorkit.distill.core.schedule import Schedule, broadcast_to
from priorkit.distill.zoo.toy import fourier_embedding


class ScoreResidual(nn.Module):
    """delta(x, t): an MLP of x (B, D) and a sinusoidal embedding of t -> (B, D); zero at initialisation."""

    def __init__(self, dim: int, hidden: int = 128, depth: int = 3, embed_dim: int = 32) -> None:
        super().__init__()
        self.embed_dim = embed_dim
        layers: list[nn.Module] = [nn.Linear(dim + embed_dim, hidden), nn.SiLU()]
        for _ in range(depth - 1):
            layers += [nn.Linear(hidden, hidden), nn.SiLU()]
        self.net = nn.Sequential(*layers)
        self.out = nn.Linear(hidden, dim)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        w = self.out.weight
        emb = fourier_embedding(t.reshape(-1).expand(x.shape[0]), self.embed_dim, scale=100.0).to(w.dtype)
        return self.out(self.net(torch.cat([x.to(w.dtype), emb], dim=-1))).to(x.dtype)


def _mlp(width: int, hidden: int, depth: int, out: int) -> nn.Sequential:
    """SiLU MLP whose last layer starts at zero."""
    layers: list[nn.Module] = [nn.Linear(width, hidden), nn.SiLU()]
    for _ in range(depth - 1):
        layers += [nn.Linear(hidden, hidden), nn.SiLU()]
    last = nn.Linear(hidden, out)
    nn.init.zeros_(last.weight)
    nn.init.zeros_(last.bias)
    return nn.Sequential(*layers, last)


class FourierResidual(nn.Module):
    """delta(x, t) = grad_x phi(x, t) and / or v(x, t) (``parts``), from Fourier features of c_in(t) x (octaves
    pi 2^k / 4, c_in = 1 / sqrt(alpha^2 data_std^2 + sigma^2): the input at unit size at every noise level) and of
    the log-SNR.

    ``parts``: "vector" (the default: v only, an MLP giving the vector), "gradient" (phi only: a scalar MLP, delta a
    gradient field as the tilt's residual grad log h is) or "both" (two MLPs, the sum). Zero at initialisation; the
    gradient keeps its graph (differentiable in the parameters) whenever grad mode is on."""

    PARTS = ("gradient", "vector", "both")

    def __init__(self, schedule: Schedule, dim: int, *, parts: str = "vector", hidden: int = 128, depth: int = 3,
                 octaves: int = 6, data_std: float = 1.0, time_frequencies: int = 8) -> None:
        super().__init__()
        if parts not in self.PARTS:
            raise ValueError(f"parts must be one of {', '.join(self.PARTS)}; got {parts!r}")
        if data_std <= 0 or octaves < 0 or time_frequencies < 0:
            raise ValueError(f"need data_std > 0, octaves >= 0, time_frequencies >= 0; got {data_std}, {octaves}, "
                             f"{time_frequencies}")
        self.schedule, self.data_std = schedule, data_std
        self.octaves, self.time_frequencies = octaves, time_frequencies
        width = dim * (1 + 2 * octaves) + 1 + 2 * time_frequencies
        self.phi = _mlp(width, hidden, depth, 1) if parts in ("gradient", "both") else None
        self.vector = _mlp(width, hidden, depth, dim) if parts in ("vector", "both") else None

    def features(self, x: Tensor, t: Tensor) -> Tensor:
        """(B, D) -> (B, D (1 + 2 octaves) + 1 + 2 time_frequencies)."""
        t = t.reshape(-1).to(torch.float64).expand(x.shape[0])
        a, s = self.schedule.alpha(t), self.schedule.sigma(t)
        xin = x * (1.0 / torch.sqrt(a**2 * self.data_std**2 + s**2)).to(x.dtype)[:, None]
        parts = [xin]
        if self.octaves:
            freqs = math.pi / 4 * 2.0 ** torch.arange(self.octaves, dtype=x.dtype, device=x.device)
            arg = (xin[:, :, None] * freqs).flatten(1)
            parts += [torch.sin(arg), torch.cos(arg)]
        lam = (self.schedule.log_snr(t) / 8).to(x.dtype)[:, None]
        k = torch.arange(1, self.time_frequencies + 1, dtype=x.dtype, device=x.device)
        return torch.cat(parts + [lam, torch.sin(lam * k), torch.cos(lam * k)], dim=-1)

    def potential(self, x: Tensor, t: Tensor) -> Tensor:
        """phi(x, t) (B,) (zero without a gradient part)."""
        if self.phi is None:
            return torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
        return self.phi(self.features(x.to(self.phi[0].weight.dtype), t)).squeeze(-1)

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        keep_graph = torch.is_grad_enabled()
        dtype = (self.phi if self.phi is not None else self.vector)[0].weight.dtype
        if self.phi is None:
            return self.vector(self.features(x.to(dtype), t)).to(x.dtype)
        with torch.enable_grad():  # the features once, shared by both parts
            xx = x if x.requires_grad else x.detach().requires_grad_(True)
            f = self.features(xx.to(dtype), t)
            (grad,) = torch.autograd.grad(self.phi(f).sum(), xx, create_graph=keep_graph)
        out = grad.to(x.dtype)
        if self.vector is not None:
            with torch.set_grad_enabled(keep_graph):
                out = out + self.vector(f if keep_graph else f.detach()).to(x.dtype)
        return out


class ResidualDenoiser(WrappedDenoiser):
    """``base`` (frozen) with a trainable score residual: the fine-tuned model of the 2D exactness tests."""

    def __init__(self, base: Denoiser, residual: nn.Module) -> None:
        super().__init__(base)
        base.requires_grad_(False)
        self.residual = residual

    def forward(self, x: Tensor, t: Tensor | float, cond: Condition = None, *, check: bool = True) -> Prediction:
        pred = self.inner(x, t, cond, check=check)
        sigma = broadcast_to(self.schedule.sigma(pred.t), x)
        eps = pred.eps - sigma * self.residual(x, pred.t)
        return Prediction.from_output("eps", eps, x, pred.t, self.schedule)
