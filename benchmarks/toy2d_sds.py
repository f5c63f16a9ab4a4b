"""The 2D toy of score distillation: SDS collapses to modes, VSD samples (ProlificDreamer, Wang et al. 2023, sec. 5).

The "renders" are the particles themselves, x_i in R^2 (g = identity, no renderer), and the prior is an analytic
Gaussian mixture p with its exact denoiser (``priorkit.distill.core.gmm.GaussianMixture``). Both objectives move
every particle
along an expectation over t and eps:

    SDS:  dx_i = -lr E[ w(t) (eps_p(x_t; t) - eps) ]                 (DreamFusion eq. 3; mode seeking)
    VSD:  dx_i = -lr E[ w(t) (eps_p(x_t; t) - eps_q(x_t; t)) ]       (ProlificDreamer eq. 9)

with x_t = alpha_t x_i + sigma_t eps. VSD's LoRA, the model of the particles' own noisy distribution q_t, is here
exact: q is a Gaussian kernel density estimate of the particles, itself a Gaussian mixture whose denoiser is
exact at every t. Since eps = -sigma_t grad log(.), VSD is the Wasserstein gradient flow of E_t KL(q_t || p_t)
and its particles spread to cover p; SDS ignores q and each particle climbs to a mode of the smoothed p.

Run ``python -m benchmarks.toy2d_sds`` for the numbers (mode coverage, energy distance) and a scatter plot.
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import asdict, dataclass

import torch
from torch import Tensor
from tqdm.auto import tqdm

from priorkit.distill.core.gmm import GaussianMixture
from priorkit.distill.core.schedule import Schedule, VPCosine
from priorkit.distill.score.guidance import add_noise, sample_times, weight


@dataclass
class Toy2DConfig:
    """Defaults of the toy: a ring of ``modes`` Gaussians (std ``mode_std``) at ``radius``; ``particles``
    particles started from N(init_mean, init_std^2 I); ``steps`` SGD steps of size ``lr`` averaging
    ``noise_samples`` draws of (t, eps) per particle; KDE bandwidth by Scott's rule times ``bandwidth_scale``."""

    modes: int = 8
    radius: float = 2.0
    mode_std: float = 0.2
    particles: int = 64
    init_mean: tuple[float, float] = (0.6, 0.3)
    init_std: float = 0.3
    steps: int = 200
    lr: float = 1.0
    noise_samples: int = 8
    t_min: float = 0.02
    t_max: float = 0.98
    weighting: str = "sigma2"
    bandwidth_scale: float = 1.0
    seed: int = 0


def ring_mixture(modes: int = 8, radius: float = 2.0, std: float = 0.2,
                 schedule: Schedule | None = None) -> GaussianMixture:
    """Equal-weight isotropic Gaussians (std ``std``) at ``modes`` points evenly spaced on a circle, float64."""
    angles = torch.arange(modes, dtype=torch.float64) * (2 * math.pi / modes)
    means = radius * torch.stack([angles.cos(), angles.sin()], dim=1)
    cov = torch.full((modes, 2), std * std, dtype=torch.float64)
    return GaussianMixture(torch.ones(modes, dtype=torch.float64), means, cov, schedule=schedule or VPCosine())


def kde_mixture(particles: Tensor, schedule: Schedule, bandwidth_scale: float = 1.0) -> GaussianMixture:
    """Gaussian KDE of particles (N, 2) as a mixture: (1/N) sum_i N(x_i, h^2 I), h by Scott's rule N^(-1/6) std."""
    n, d = particles.shape
    std = particles.std(dim=0).mean().clamp_min(1e-3)
    h = bandwidth_scale * std * n ** (-1.0 / (d + 4))  # Scott's rule
    cov = (h * h).expand(n, d).clone()
    return GaussianMixture(torch.ones(n, dtype=particles.dtype), particles.detach(), cov, schedule=schedule)


def distillation_step(x: Tensor, prior: GaussianMixture, method: str, cfg: Toy2DConfig,
                      generator: torch.Generator) -> Tensor:
    """The expected SDS / VSD gradient for particles x (N, 2), averaged over ``noise_samples`` draws: (N, 2)."""
    n, s = x.shape[0], cfg.noise_samples
    xs = x.repeat(s, 1)  # (S N, 2)
    t = sample_times(xs.shape[0], cfg.t_min, cfg.t_max, generator).to(x.dtype)
    eps = torch.randn(xs.shape, generator=generator, dtype=x.dtype)
    x_t = add_noise(prior.schedule, xs, t, eps)
    eps_p = prior(x_t, t, check=False).eps
    if method == "sds":
        ref = eps  # eps_ref = eps (DreamFusion)
    elif method == "vsd":
        ref = kde_mixture(x, prior.schedule, cfg.bandwidth_scale)(x_t, t, check=False).eps  # eps_q (exact "LoRA")
    else:
        raise ValueError(f"unknown method {method!r}; use 'sds' or 'vsd'")
    grad = weight(cfg.weighting, prior.schedule, t)[:, None] * (eps_p - ref)
    return grad.reshape(s, n, -1).mean(0)


def run(method: str, cfg: Toy2DConfig | None = None, prior: GaussianMixture | None = None,
        progress: bool = False) -> Tensor:
    """Optimise particles with SDS or VSD; returns the final particles (N, 2) float64."""
    cfg = cfg or Toy2DConfig()
    prior = prior or ring_mixture(cfg.modes, cfg.radius, cfg.mode_std)
    g = torch.Generator().manual_seed(cfg.seed)
    x = torch.tensor(cfg.init_mean, dtype=torch.float64) + cfg.init_std * torch.randn(
        cfg.particles, 2, generator=g, dtype=torch.float64)
    for _ in tqdm(range(cfg.steps), desc=f"toy2d {method}", disable=not progress):
        x = x - cfg.lr * distillation_step(x, prior, method, cfg, g)  # x <- x - lr E[w (eps_p - eps_ref)]
    return x


def energy_distance(x: Tensor, y: Tensor) -> float:
    """Energy distance 2 E|X - Y| - E|X - X'| - E|Y - Y'| (V-statistics; 0 iff equal laws), x (N, D), y (M, D)."""
    return float(2 * torch.cdist(x, y).mean() - torch.cdist(x, x).mean() - torch.cdist(y, y).mean())


def mode_coverage(x: Tensor, prior: GaussianMixture, radius_std: float = 3.0) -> float:
    """Fraction of mixture components with at least one particle within ``radius_std`` of their std."""
    d = torch.cdist(prior.means.to(x.dtype), x)  # (K, N)
    r = radius_std * prior.eigvals.max(dim=1).values.sqrt()[:, None].to(x.dtype)
    return float((d <= r).any(dim=1).float().mean())


def metrics(x: Tensor, prior: GaussianMixture, n_reference: int = 2000, seed: int = 1) -> dict[str, float]:
    """Coverage, energy distance to ``n_reference`` exact samples, mean distance of particles to the nearest mode
    centre and the particles' spread around it relative to the modes' std."""
    ref = prior.sample(n_reference, torch.Generator().manual_seed(seed)).reshape(n_reference, -1).to(x.dtype)
    d = torch.cdist(x, prior.means.to(x.dtype)).min(dim=1).values  # (N,)
    mode_std = float(prior.eigvals.mean().sqrt())
    return {"coverage": mode_coverage(x, prior), "energy_distance": energy_distance(x, ref),
            "mean_distance_to_mode": float(d.mean()),
            "relative_spread": float(d.pow(2).mean().sqrt()) / (mode_std * math.sqrt(x.shape[1]))}


def compare(cfg: Toy2DConfig | None = None, progress: bool = False) -> dict[str, dict[str, float]]:
    """Run both methods from the same start; {"sds": metrics, "vsd": metrics}."""
    cfg = cfg or Toy2DConfig()
    prior = ring_mixture(cfg.modes, cfg.radius, cfg.mode_std)
    return {m: metrics(run(m, cfg, prior, progress), prior) for m in ("sds", "vsd")}


def _plot(cfg: Toy2DConfig, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    prior = ring_mixture(cfg.modes, cfg.radius, cfg.mode_std)
    ref = prior.sample(2000, torch.Generator().manual_seed(1))
    fig, axes = plt.subplots(1, 2, figsize=(8, 4), dpi=100)
    for ax, m in zip(axes, ("sds", "vsd"), strict=True):
        x = run(m, cfg, prior)
        ax.scatter(ref[:, 0], ref[:, 1], s=2, c="lightgrey", label="prior samples")
        ax.scatter(x[:, 0], x[:, 1], s=8, c="tab:red", label=f"{m.upper()} particles")
        ax.set_aspect("equal")
        ax.set_title(m.upper())
        ax.legend(loc="upper right", fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="SDS vs VSD on a 2D Gaussian mixture")
    parser.add_argument("--steps", type=int, default=Toy2DConfig.steps)
    parser.add_argument("--particles", type=int, default=Toy2DConfig.particles)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--plot", default=None, help="write a scatter plot (PNG) here")
    args = parser.parse_args(argv)
    cfg = Toy2DConfig(steps=args.steps, particles=args.particles, seed=args.seed)
    result = compare(cfg, progress=True)
    print(json.dumps({"config": asdict(cfg), **result}, indent=2))
    if args.plot:
        _plot(cfg, args.plot)


if __name__ == "__main__":
    main()


__all__ = ["Toy2DConfig", "compare", "distillation_step", "energy_distance", "kde_mixture", "metrics", "mode_coverage",
           "ring_mixture", "run"]
