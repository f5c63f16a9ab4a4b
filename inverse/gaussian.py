"""Exact answers for Gaussian priors: the dense posterior that the restoration solvers are tested against.

For x ~ N(mu, S) and linear Gaussian observations ``o = H x + n``, n ~ N(0, N) (Bishop 2006, eqs. 2.113-2.117):

    K      = S H^T (H S H^T + N)^{-1}                     gain
    E[x|o] = mu + K (o - H mu)                            posterior mean
    Cov    = S - K H S                                    posterior covariance

Two uses: ``y = A x + s n`` alone (the restoration posterior), and y together with the noisy state
``x_t = alpha x + sigma eps`` (``E[x0 | x_t, y]``, what a guided sampler's clean estimate should be at one step).
Dense float64 algebra: for D up to a few hundred. Operators become matrices by applying them to the identity basis.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from priorkit.distill.core.gmm import GaussianMixture
from priorkit.inverse.operators import Operator

__all__ = ["operator_matrix", "gaussian_prior", "linear_gaussian_posterior", "exact_posterior",
           "posterior_given_xt"]


def operator_matrix(operator: Operator, image_shape: tuple[int, ...]) -> Tensor:
    """The dense (M, D) float64 matrix of ``operator`` on images of shape (C, H, W): column j = A(e_j).

    M is the number of entries of one measurement (inpainting keeps zeros at missing pixels: zero rows).
    """
    d = math.prod(image_shape)
    if d > 20000:
        raise ValueError(f"{d} unknowns is too many for a dense matrix; use a smaller image")
    basis = torch.eye(d, dtype=torch.float64).reshape(d, *image_shape)
    out = operator.A(basis)
    return out.reshape(d, -1).T.contiguous()


def gaussian_prior(prior: GaussianMixture | tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
    """(mean (D,), covariance (D, D)) in float64 of a one-component `GaussianMixture` or of a (mean, cov) pair."""
    if isinstance(prior, GaussianMixture):
        if prior.num_components != 1:
            raise ValueError(f"the exact posterior needs a Gaussian prior (1 component); got {prior.num_components}")
        lam = prior.eigvals[0].double()
        mean = prior.means[0].double()
        if prior.eigvecs is None:
            return mean, torch.diag(lam)
        u = prior.eigvecs[0].double()
        return mean, (u * lam) @ u.T
    mean, cov = prior
    mean, cov = torch.as_tensor(mean, dtype=torch.float64), torch.as_tensor(cov, dtype=torch.float64)
    if cov.ndim == 1:
        cov = torch.diag(cov)
    if mean.ndim != 1 or cov.shape != (mean.shape[0], mean.shape[0]):
        raise ValueError(f"expected mean (D,) and covariance (D, D); got {tuple(mean.shape)}, {tuple(cov.shape)}")
    return mean, cov


def linear_gaussian_posterior(mean: Tensor, cov: Tensor, H: Tensor, obs: Tensor,
                              noise_var: Tensor | float) -> tuple[Tensor, Tensor]:
    """Posterior of x ~ N(mean, cov) given ``obs = H x + n``, n ~ N(0, diag(noise_var)).

    Args:
        mean (D,), cov (D, D), H (M, D), obs (B, M) or (M,), noise_var: float or (M,).
    Returns:
        posterior means (B, D) (or (D,)) and the posterior covariance (D, D), float64.
    Zero-variance observations are allowed (a pseudo-inverse handles singular H S H^T, e.g. unobserved zero rows).
    """
    H = H.double()
    nv = torch.as_tensor(noise_var, dtype=torch.float64).expand(H.shape[0])
    innovation = H @ cov @ H.T + torch.diag(nv)                                   # H S H^T + N
    gain = cov @ H.T @ torch.linalg.pinv(innovation, hermitian=True)              # K
    o = obs.double()
    post_mean = mean + (o - mean @ H.T) @ gain.T                                  # mu + K (o - H mu)
    post_cov = cov - gain @ H @ cov                                               # S - K H S
    return post_mean, 0.5 * (post_cov + post_cov.T)


def exact_posterior(prior: GaussianMixture | tuple[Tensor, Tensor], operator: Operator, y: Tensor, sigma_y: float,
                    image_shape: tuple[int, ...] | None = None) -> tuple[Tensor, Tensor]:
    """The exact posterior of x given ``y = A x + sigma_y n`` under a Gaussian prior; all in model range.

    Args:
        prior: one-component `GaussianMixture` (its ``sample_shape`` is the image shape) or (mean, cov).
        operator: A. y: (B, ...) measurements. sigma_y: noise std.
        image_shape: (C, H, W), needed when ``prior`` is a (mean, cov) pair.
    Returns:
        posterior means (B, C, H, W) and the posterior covariance (D, D), float64.
    """
    mean, cov = gaussian_prior(prior)
    shape = tuple(prior.sample_shape) if isinstance(prior, GaussianMixture) else tuple(image_shape or ())
    if math.prod(shape) != mean.shape[0]:
        raise ValueError(f"image_shape {shape} does not match a prior of dimension {mean.shape[0]}")
    A = operator_matrix(operator, shape)
    m, c = linear_gaussian_posterior(mean, cov, A, y.reshape(y.shape[0], -1), sigma_y**2)
    return m.reshape(y.shape[0], *shape), c


def posterior_given_xt(prior: GaussianMixture | tuple[Tensor, Tensor], operator: Operator, y: Tensor, sigma_y: float,
                       x_t: Tensor, alpha: float, sigma: float) -> Tensor:
    """``E[x0 | x_t, y]`` for ``x_t = alpha x0 + sigma eps`` and ``y = A x0 + sigma_y n``, Gaussian prior.

    Args:
        x_t: (B, C, H, W); y: (B, ...). Returns (B, C, H, W) float64.
    """
    mean, cov = gaussian_prior(prior)
    shape = tuple(x_t.shape[1:])
    A = operator_matrix(operator, shape)
    d = mean.shape[0]
    H = torch.cat([alpha * torch.eye(d, dtype=torch.float64), A])                # stack [alpha I; A]
    obs = torch.cat([x_t.reshape(x_t.shape[0], -1).double(), y.reshape(y.shape[0], -1).double()], dim=1)
    nv = torch.cat([torch.full((d,), sigma**2, dtype=torch.float64),
                    torch.full((A.shape[0],), sigma_y**2, dtype=torch.float64)])
    m, _ = linear_gaussian_posterior(mean, cov, H, obs, nv)
    return m.reshape(x_t.shape)
