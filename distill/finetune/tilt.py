"""The tilted distribution p*(x) ∝ p(x) exp(r(x) / lambda) that reward fine-tuning targets: exactly for a Gaussian
mixture p (the ground truth the methods are tested against), and for any model by self-normalised importance
resampling of its own samples (:func:`tilt_weights`, :func:`tilted_resample`: what a perfect fine-tuning at this
lambda would sample, estimated from K samples per condition — a reference for the figures, and a sampler at K times
the cost). For a linear or quadratic r every mixture component stays Gaussian:

* r = c . x:  mu_k' = mu_k + S_k c / lambda,  S_k' = S_k,  w_k' ∝ w_k exp(c . mu_k / lambda + c^T S_k c / 2 lambda^2)
* r = -1/2 (x - m)^T Q (x - m):  S_k' = (S_k^-1 + Q / lambda)^-1,  mu_k' = S_k' (S_k^-1 mu_k + Q m / lambda),
  w_k' ∝ w_k N(m; mu_k, S_k + lambda Q^-1) (written with determinants so that a singular Q is allowed).
"""

from __future__ import annotations

import torch
from torch import Tensor

from priorkit.distill.core.gmm import GaussianMixture
from priorkit.distill.finetune.reward import LinearReward, QuadraticReward


def full_covariances(gmm: GaussianMixture) -> Tensor:
    """(K, D, D) covariances of a mixture stored by eigen-decomposition or diagonally."""
    if gmm.eigvecs is None:
        return torch.diag_embed(gmm.eigvals)
    return gmm.eigvecs @ torch.diag_embed(gmm.eigvals) @ gmm.eigvecs.transpose(-1, -2)


def tilted_gmm(gmm: GaussianMixture, reward: LinearReward | QuadraticReward, lam: float) -> GaussianMixture:
    """The mixture p(x) exp(r(x) / lam) / Z, exactly, under ``gmm``'s schedule."""
    if lam <= 0:
        raise ValueError(f"lambda must be > 0; got {lam}")
    mu, cov = gmm.means, full_covariances(gmm)
    logw = gmm.log_weights.clone()
    if isinstance(reward, LinearReward):
        c = reward.direction.to(mu).reshape(-1) / lam
        sc = cov @ c
        new_mu, new_cov = mu + sc, cov
        logw = logw + mu @ c + 0.5 * (sc * c).sum(-1)
    elif isinstance(reward, QuadraticReward):
        q = reward.precision.to(mu) / lam
        m = reward.centre.to(mu).reshape(-1)
        eye = torch.eye(mu.shape[1], dtype=mu.dtype)
        inner = eye + cov @ q  # I + S Q / lambda
        new_cov = torch.linalg.solve(inner, cov)  # (S^-1 + Q)^-1 = (I + S Q)^-1 S
        new_cov = 0.5 * (new_cov + new_cov.transpose(-1, -2))
        new_mu = torch.linalg.solve(inner, (mu + (cov @ q @ m)).unsqueeze(-1)).squeeze(-1)
        d = mu - m
        quad = (d.unsqueeze(-2) @ q @ torch.linalg.solve(inner, d.unsqueeze(-1))).reshape(-1)
        logw = logw - 0.5 * torch.logdet(inner) - 0.5 * quad
    else:
        raise TypeError("the exact tilt is known for LinearReward and QuadraticReward only")
    return GaussianMixture(torch.exp(logw - logw.max()), new_mu, new_cov, schedule=gmm.schedule)


def tilt_weights(rewards: Tensor, lam: float) -> Tensor:
    """Self-normalised importance weights of samples of p towards p exp(r / lam): softmax(r / lam) along the last
    dimension (K samples of one condition per row), in float64."""
    if not lam > 0:
        raise ValueError(f"lambda must be > 0; got {lam}")
    return torch.softmax(rewards.double() / lam, dim=-1)


def effective_sample_size(weights: Tensor) -> Tensor:
    """Kish's effective sample size 1 / sum w^2 of each row of normalised weights (K when uniform, 1 when one sample
    holds all the weight): how many of the K samples the tilted estimate rests on."""
    return 1.0 / weights.double().pow(2).sum(-1)


def tilted_resample(rewards: Tensor, lam: float, n: int, generator: torch.Generator | None = None) -> Tensor:
    """Indices (rows, n) of n of the K samples of each row, drawn in proportion to :func:`tilt_weights` without
    replacement (sampling-importance-resampling: approximate draws from p exp(r / lam) when n is well below the
    effective sample size; n = K returns every sample). Drawn by the Gumbel-top-k trick on r / lam, so weights that
    underflow to 0 at a small lambda still rank (the best reward first)."""
    if not lam > 0:
        raise ValueError(f"lambda must be > 0; got {lam}")
    if not 1 <= n <= rewards.shape[-1]:
        raise ValueError(f"n must lie in [1, {rewards.shape[-1]}] (the samples per row); got {n}")
    u = torch.rand(rewards.shape, generator=generator, dtype=torch.float64).clamp_min(1e-300)
    return (rewards.double() / lam - torch.log(-torch.log(u))).topk(n, dim=-1).indices
