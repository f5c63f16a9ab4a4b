"""A fine-tuned model as a frozen base denoiser plus a trainable residual of the score (for vectors: 2D targets).

eps_ft(x, t) = eps_base(x, t) - sigma(t) delta(x, t), i.e. score_ft = score_base + delta: the residual is exactly the
quantity reward fine-tuning changes (for a tilt, delta = grad log h). The residual's last layer starts at zero, so
the fine-tuned model starts as the base model.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from priorkit.distill.core.denoiser import Condition, Denoiser, WrappedDenoiser
from priorkit.distill.core.prediction import Prediction
from priorkit.distill.core.schedule import broadcast_to
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
