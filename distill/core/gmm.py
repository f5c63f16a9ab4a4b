"""Analytic Gaussian-mixture priors: the exact denoiser that tests and benchmarks compare against.

If x0 ~ sum_k pi_k N(mu_k, S_k) and x_t = alpha x0 + sigma eps, then x_t ~ sum_k pi_k N(alpha mu_k, C_k)
with C_k = alpha^2 S_k + sigma^2 I, and the posterior mean is (Bishop 2006, eq. 2.116 per component)

    E[x0 | x_t] = sum_k w_k(x_t) [mu_k + alpha S_k C_k^{-1} (x_t - alpha mu_k)],
    w_k(x_t) ∝ pi_k N(x_t; alpha mu_k, C_k).

With S_k = U_k diag(l_k) U_k^T every C_k is diagonal in the basis U_k, so one evaluation costs a
matrix product per component and works in any dimension (2 or 3072).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from priorkit.distill.core.denoiser import Condition, Denoiser
from priorkit.distill.core.schedule import FlowMatching, Schedule, broadcast_to


class GaussianMixture(Denoiser):
    """Exact denoiser of a Gaussian mixture in ``dim`` dimensions under any schedule.

    Args:
        weights: (K,) mixture weights (normalised here).
        means: (K, D).
        covariances: (K, D, D) full, (K, D) diagonal, or None with ``eigvecs``/``eigvals`` given.
        eigvecs, eigvals: (K, D, D) orthonormal columns and (K, D) variances, an alternative to full covariances.
        schedule: the schedule under which the noisy variable is served.
        sample_shape: how one sample is shaped outside (e.g. (3, 32, 32)); flattened to D inside.
    """

    def __init__(self, weights: Tensor, means: Tensor, covariances: Tensor | None = None, *,
                 eigvecs: Tensor | None = None, eigvals: Tensor | None = None,
                 schedule: Schedule | None = None, sample_shape: tuple[int, ...] | None = None) -> None:
        super().__init__()
        means = torch.as_tensor(means)
        dtype = means.dtype if means.is_floating_point() else torch.get_default_dtype()
        k, d = means.shape
        self.schedule = schedule or FlowMatching()
        self.sample_shape = tuple(sample_shape) if sample_shape is not None else (d,)
        if math.prod(self.sample_shape) != d:
            raise ValueError(f"sample_shape {self.sample_shape} does not hold {d} values")
        if covariances is not None:
            covariances = torch.as_tensor(covariances, dtype=dtype)
            if covariances.shape == (k, d):
                eigvals, eigvecs = covariances, None
            elif covariances.shape == (k, d, d):
                eigvals, eigvecs = torch.linalg.eigh(covariances)
            else:
                raise ValueError(f"covariances must be (K, D) or (K, D, D) with K={k}, D={d}; "
                                 f"got {tuple(covariances.shape)}")
        if eigvals is None:
            raise ValueError("give covariances, or eigvecs and eigvals")
        w = torch.as_tensor(weights, dtype=dtype)
        if w.shape != (k,) or bool((w < 0).any()):
            raise ValueError("weights must be K non-negative numbers")
        self.register_buffer("log_weights", torch.log(w / w.sum()))
        self.register_buffer("means", means.to(dtype))
        self.register_buffer("eigvals", torch.as_tensor(eigvals, dtype=dtype).clamp_min(0.0))
        self.register_buffer("eigvecs", None if eigvecs is None else torch.as_tensor(eigvecs, dtype=dtype))

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    @property
    def num_components(self) -> int:
        return self.means.shape[0]

    # ---- the exact posterior --------------------------------------------------------------------
    def _rotate(self, k: int, r: Tensor) -> Tensor:
        return r if self.eigvecs is None else r @ self.eigvecs[k]

    def _unrotate(self, k: int, z: Tensor) -> Tensor:
        return z if self.eigvecs is None else z @ self.eigvecs[k].T

    def posterior(self, x: Tensor, alpha: Tensor, sigma: Tensor) -> tuple[Tensor, Tensor]:
        """Responsibilities (B, K) and posterior mean E[x0 | x_t] (B, D) for flat ``x`` (B, D).

        ``alpha``, ``sigma``: (B, 1) or scalars.
        """
        logits, means = [], []
        for k in range(self.num_components):
            z = self._rotate(k, x - alpha * self.means[k])              # coordinates in S_k's eigenbasis
            var = alpha**2 * self.eigvals[k] + sigma**2                   # eigenvalues of C_k
            logits.append(self.log_weights[k] - 0.5 * ((z * z / var).sum(-1) + torch.log(var).expand_as(z).sum(-1)))
            means.append(self.means[k] + self._unrotate(k, alpha * self.eigvals[k] / var * z))
        w = torch.softmax(torch.stack(logits, dim=-1), dim=-1)
        return w, torch.einsum("bk,kbd->bd", w, torch.stack(means))

    def predict_native(self, x: Tensor, t: Tensor, cond: Condition = None) -> tuple[str, Tensor]:
        flat = x.reshape(x.shape[0], -1).to(self.means.dtype)
        tt = t.to(self.means.dtype)
        a = broadcast_to(self.schedule.alpha(tt), flat)
        s = broadcast_to(self.schedule.sigma(tt), flat)
        x0 = self.posterior(flat, a, s)[1]
        return "x0", x0.to(x.dtype).reshape(x.shape)

    # ---- the distribution itself ----------------------------------------------------------------
    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """n exact samples of x0, shaped (n, *sample_shape)."""
        dtype, device = self.means.dtype, self.means.device
        comp = torch.multinomial(self.log_weights.exp(), n, replacement=True, generator=generator)
        z = torch.randn(n, self.dim, generator=generator, dtype=dtype, device=device) * self.eigvals[comp].sqrt()
        if self.eigvecs is not None:  # rotate each component's rows by its eigenbasis (no (n, D, D) gather)
            rotated = torch.empty_like(z)
            for k in comp.unique().tolist():
                rows = comp == k
                rotated[rows] = z[rows] @ self.eigvecs[k].T
            z = rotated
        return (self.means[comp] + z).reshape(n, *self.sample_shape)

    def log_prob(self, x: Tensor, t: Tensor | float = 0.0) -> Tensor:
        """log p_t(x_t) of the noisy marginal at time t (t = 0: the data density). x (B, *sample_shape)."""
        flat = x.reshape(x.shape[0], -1).to(self.means.dtype)
        tt = torch.as_tensor(t, dtype=self.means.dtype)
        a, s = self.schedule.alpha(tt), self.schedule.sigma(tt)
        out = []
        for k in range(self.num_components):
            z = self._rotate(k, flat - a * self.means[k])
            var = a**2 * self.eigvals[k] + s**2
            out.append(self.log_weights[k] - 0.5 * ((z * z / var).sum(-1) + torch.log(var).sum()
                                                    + self.dim * math.log(2 * math.pi)))
        return torch.logsumexp(torch.stack(out, -1), -1)

    def with_schedule(self, schedule: Schedule) -> GaussianMixture:
        """The same mixture served natively under another schedule."""
        g = GaussianMixture(self.log_weights.exp(), self.means, eigvecs=self.eigvecs, eigvals=self.eigvals,
                            schedule=schedule, sample_shape=self.sample_shape)
        return g

    @classmethod
    def random(cls, dim: int, components: int, *, scale: float = 1.0, spread: float = 2.0,
               generator: torch.Generator | None = None, dtype: torch.dtype = torch.float64,
               schedule: Schedule | None = None, sample_shape: tuple[int, ...] | None = None,
               diagonal: bool = False) -> GaussianMixture:
        """A random mixture: means ~ N(0, spread^2 / D... ) scaled so the data has norm ~ sqrt(D) * scale,
        covariances with random eigenbases and a decaying spectrum (like images)."""
        g = generator
        means = spread * scale * torch.randn(components, dim, generator=g, dtype=dtype) / math.sqrt(2.0)
        spectrum = (scale**2) * 0.5 / (1.0 + torch.arange(dim, dtype=dtype) / max(1, dim // 16)) ** 1.5
        eigvals = spectrum * torch.exp(0.3 * torch.randn(components, dim, generator=g, dtype=dtype))
        eigvecs = None
        if not diagonal:
            eigvecs = torch.linalg.qr(torch.randn(components, dim, dim, generator=g, dtype=dtype))[0]
        w = torch.rand(components, generator=g, dtype=dtype) + 0.5
        return cls(w, means, eigvecs=eigvecs, eigvals=eigvals, schedule=schedule, sample_shape=sample_shape)
