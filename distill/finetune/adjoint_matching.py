"""Adjoint matching (Domingo-Enrich, Drozdzal, Karrer & Chen 2024, "Adjoint Matching: Fine-tuning Flow and
Diffusion Generative Models with Memoryless Stochastic Optimal Control", Algorithm 1), on the general schedule.

Each iteration: sample trajectories of the memoryless sampler with the current fine-tuned model (no gradients),
solve the lean adjoint backwards with the frozen base model from a_N = -grad r(x_N) / lambda, and regress the
fine-tuned model's score residual on it:

    L = E_i || (score_ft - score_base)(x_i, t_i) + a_i ||^2,   score = -eps / sigma,

whose minimiser is score_ft - score_base = -E[a_i | x_i] = grad log h: the fine-tuned model then samples
p*(x) ∝ p(x) exp(r(x) / lambda) exactly (up to the sampler's discretisation). Any positive weight per time keeps
that minimiser; the paper regresses the control u = g (score_ft - score_base), i.e. weights g(t)^2, which is singular
at both ends of a flow-matching schedule, so here the weight is 1 in score units on the memoryless grid's times
(uniform in log-SNR by default; ``weighting="score"``), or sigma_t^2 (``"eps"``: the denoising loss's units, which
weigh the low-noise times, where the adjoint is close to the raw reward gradient, far less).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from priorkit.distill.core.denoiser import Condition, Denoiser
from priorkit.distill.core.samplers import initial_noise
from priorkit.distill.core.schedule import broadcast_to
from priorkit.distill.finetune.memoryless import (
    check_spacing,
    lean_adjoint,
    memoryless_times,
    reward_gradient,
    trajectory,
)
from priorkit.distill.finetune.reward import Reward

WEIGHTINGS = ("score", "eps")  # the regression's weight per time (regression_loss)


def check_weighting(weighting: str) -> None:
    """Refuse a weighting that is not one of :data:`WEIGHTINGS` (one-line ValueError)."""
    if weighting not in WEIGHTINGS:
        raise ValueError(f"unknown weighting {weighting!r}; expected one of {', '.join(WEIGHTINGS)}")


@dataclass
class AdjointMatchingConfig:
    """Defaults of adjoint matching."""

    lam: float = 1.0  # reward temperature: target p(x) exp(r(x) / lam)
    steps: int = 40  # memoryless sampler steps
    batch: int = 256
    time_samples: int = 20  # states of each trajectory regressed on per iteration (random subset; all if >= steps)
    spacing: str = "logsnr"  # the memoryless grid's spacing (memoryless_times): "logsnr", "time" or "karras"
    weighting: str = "score"  # the regression's weight per time: "score" (1) or "eps" (sigma_t^2; see the module doc)

    def __post_init__(self) -> None:
        check_spacing(self.spacing)
        check_weighting(self.weighting)


def adjoint_targets(finetuned: Denoiser, base: Denoiser, reward: Reward, cfg: AdjointMatchingConfig,
                    generator: torch.Generator, cond: Condition = None, dtype: torch.dtype = torch.float32
                    ) -> tuple[Tensor, list[Tensor], list[Tensor], Tensor]:
    """Fresh trajectories of the fine-tuned memoryless sampler and their lean adjoints under the base model:
    (times (N+1,), states x_0..x_N, adjoints a_0..a_N, rewards r(x_N) (B,))."""
    times = memoryless_times(base, cfg.steps, spacing=cfg.spacing)
    x = initial_noise(base, (cfg.batch, *base.sample_shape), t_max=float(times[0]), generator=generator, dtype=dtype)
    states = trajectory(finetuned, x, times, cond, generator)
    r, grad = reward_gradient(reward, states[-1], cond)
    return times, states, lean_adjoint(base, states, times, -grad / cfg.lam, cond), r


def regression_loss(finetuned: Denoiser, base: Denoiser, times: Tensor, states: list[Tensor], adj: list[Tensor],
                    pick: list[int], cond: Condition = None, weighting: str = "score") -> Tensor:
    """mean over the states ``pick`` of w(t_i) || (score_ft - score_base)(x_i, t_i) + a_i ||^2 (the module's loss),
    w = 1 (``weighting="score"``) or sigma_t^2 (``"eps"``: || (eps_ft - eps_base) - sigma_t a_i ||^2)."""
    check_weighting(weighting)
    loss = torch.zeros((), dtype=torch.float32)
    for i in pick:
        t, xi = times[i], states[i]
        with torch.no_grad():
            eps_base = base(xi, t.to(xi.dtype), cond, check=False).eps
        eps_ft = finetuned(xi, t.to(xi.dtype), cond, check=False).eps
        sigma = broadcast_to(base.schedule.sigma(t), xi).to(xi)
        residual = -(eps_ft - eps_base) / sigma  # score_ft - score_base
        weight = float(base.schedule.sigma(t)) ** 2 if weighting == "eps" else 1.0
        loss = loss + weight * (residual + adj[i]).pow(2).flatten(1).sum(1).mean().float()
    return loss / len(pick)


def adjoint_matching_loss(finetuned: Denoiser, base: Denoiser, reward: Reward, cfg: AdjointMatchingConfig,
                          generator: torch.Generator, cond: Condition = None, dtype: torch.dtype = torch.float32
                          ) -> tuple[Tensor, Tensor]:
    """One adjoint-matching loss on fresh trajectories; returns (loss, rewards (B,) of the trajectories' ends)."""
    times, states, adj, r = adjoint_targets(finetuned, base, reward, cfg, generator, cond, dtype)
    n = len(times) - 1
    pick = torch.randperm(n, generator=generator)[: min(cfg.time_samples, n)].tolist()
    return regression_loss(finetuned, base, times, states, adj, pick, cond, cfg.weighting), r
