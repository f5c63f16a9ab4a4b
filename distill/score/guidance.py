"""What SDS and VSD share: renders -> model space, time sampling with annealing, w(t), the surrogate loss.

Score distillation (Poole et al. 2022, DreamFusion; Wang et al. 2023, ProlificDreamer) pushes a differentiable
image x = g(theta) along a gradient that skips the denoiser's Jacobian:

    grad_theta L = E_{t, eps}[ w(t) (eps_hat(x_t; y, t) - eps_ref) dx/dtheta ],   x_t = alpha_t x + sigma_t eps

with eps_ref = eps (SDS) or the noise prediction of the current renders' own distribution (VSD). Both are
implemented as the stop-gradient surrogate ``0.5 || x - sg(x - g) ||^2`` whose gradient in x is exactly ``g``.
Everything is written in the general schedule x_t = alpha(t) x0 + sigma(t) eps of ``priorkit.distill.core.schedule``.

The pieces are functions of tensors, so that anything that distils a score can use them without gen3d: a
distillation trainer (DMD is VSD on images: a generator's samples instead of renders, the same two gradients) or
the 3D loop's ``priorkit.gen3d.sds.SDS`` / ``priorkit.gen3d.vsd.VSD``. A Denoiser and a condition become the
``predict`` callable of :func:`sds_gradient` / :func:`vsd_gradient` through :class:`GuidedPredictor`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from priorkit.distill.core.cameras import Camera, view_phrase
from priorkit.distill.core.denoiser import Condition, Denoiser
from priorkit.distill.core.prediction import Prediction, from_x0_eps
from priorkit.distill.core.schedule import Schedule, add_noise

WEIGHTINGS = ("sigma2", "uniform", "snr_sqrt")
ANNEALING = ("none", "linear", "sqrt")


def annealed_range(t_min: float, t_max: float, t_max_end: float | None, anneal: str,
                   progress: float) -> tuple[float, float]:
    """The time range [t_min, t_max(progress)] at ``progress`` in [0, 1] of the optimisation.

    "none": fixed; "linear": t_max -> t_max_end linearly; "sqrt": t_max -> t_max_end as sqrt(progress)
    (fast at first, as in DreamTime / threestudio's annealing of t_max). Every setting is checked at every call,
    so a constructor calling it at progress 0 refuses a bad t_max_end before the run rather than late in it.
    """
    if anneal not in ANNEALING:
        raise ValueError(f"unknown annealing {anneal!r}; use one of {ANNEALING}")
    if not 0.0 <= t_min <= t_max <= 1.0:
        raise ValueError(f"the time range must satisfy 0 <= t_min <= t_max <= 1; got t_min={t_min}, t_max={t_max}")
    if t_max_end is not None and not 0.0 <= t_max_end <= 1.0:
        raise ValueError(f"t_max_end must lie in [0, 1] or be None; got {t_max_end}")
    if anneal == "none" or t_max_end is None:
        return t_min, t_max
    p = min(max(float(progress), 0.0), 1.0)
    frac = p if anneal == "linear" else math.sqrt(p)
    return t_min, max(t_min, t_max + frac * (t_max_end - t_max))


def sample_times(n: int, lo: float, hi: float, generator: torch.Generator | None = None,
                 device: torch.device | str | None = None) -> Tensor:
    """``n`` times uniform on [lo, hi] (float64, (n,)): t ~ U(t_min, t_max) as in DreamFusion."""
    if not 0.0 <= lo <= hi <= 1.0:
        raise ValueError(f"time range must satisfy 0 <= lo <= hi <= 1; got [{lo}, {hi}]")
    u = torch.rand(n, generator=generator, dtype=torch.float64)
    return (lo + (hi - lo) * u).to(device) if device is not None else lo + (hi - lo) * u


def weight(kind: str, schedule: Schedule, t: Tensor) -> Tensor:
    """Per-sample weight w(t), (B,), depending on t only through the SNR (so it is schedule-free).

    "sigma2": w = sigma^2 / (alpha^2 + sigma^2) = 1 / (1 + SNR)   (DreamFusion's sigma_t^2 = 1 - alpha_bar_t)
    "uniform": w = 1
    "snr_sqrt": w = sigma / sqrt(alpha^2 + sigma^2)              (the sqrt of "sigma2", flatter at low noise)
    """
    if kind == "uniform":
        return torch.ones_like(t)
    a, s = schedule.alpha(t), schedule.sigma(t)
    if kind == "sigma2":
        return s * s / (a * a + s * s)  # w(t) = 1 / (1 + alpha^2 / sigma^2)
    if kind == "snr_sqrt":
        return s / torch.sqrt(a * a + s * s)
    raise ValueError(f"unknown weighting {kind!r}; use one of {WEIGHTINGS}")


def draw_noise(x: Tensor, lo: float, hi: float, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """Times t ~ U(lo, hi) (B,) and noise eps ~ N(0, I) like ``x`` (B, ...), drawn in that order from ``generator``
    on the CPU and moved to ``x``'s device and dtype."""
    t = sample_times(x.shape[0], lo, hi, generator).to(x.device, x.dtype)
    eps = torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x.device)
    return t, eps


class GuidedPredictor:
    """(x_t, t) -> classifier-free guided Prediction of ``den`` for a fixed encoded condition (one batched call).

    ``cond``: an encoded condition, (B, L, D) text embeddings for a text-to-image prior (None: unconditional);
    ``scale``: the CFG scale s in eps_null + s (eps_cond - eps_null).
    """

    def __init__(self, den: Denoiser, cond: Condition, scale: float) -> None:
        self.den, self.cond, self.scale, self.schedule = den, cond, float(scale), den.schedule

    def __call__(self, x_t: Tensor, t: Tensor) -> Prediction:
        return self.den.guided(x_t, t.to(x_t.dtype), self.cond, self.scale, check=False)


def sds_gradient(predict: Callable[[Tensor, Tensor], Prediction], schedule: Schedule, x: Tensor, t: Tensor,
                 eps: Tensor, weighting: str = "sigma2") -> Tensor:
    """The SDS gradient in model space: w(t) (eps_hat(x_t, t) - eps), (B, ...)  (DreamFusion eq. 3).

    Args:
        predict: (x_t, t) -> Prediction of the (guided) prior, which works under ``schedule``
            (e.g. ``GuidedPredictor(den, cond, scale)``).
        x: clean samples (B, ...) in model space; t: (B,) times; eps: (B, ...) the noise that makes x_t.
    """
    x_t = add_noise(schedule, x.detach(), t, eps)  # x_t = alpha_t x + sigma_t eps
    with torch.no_grad():
        eps_hat = predict(x_t, t).eps
    w = weight(weighting, schedule, t).to(x.dtype)
    return w.reshape(-1, *([1] * (x.ndim - 1))) * (eps_hat - eps)  # w(t) (eps_hat - eps)


def vsd_gradient(pretrained: Callable[[Tensor, Tensor], Prediction], particle: Callable[[Tensor, Tensor], Prediction],
                 schedule: Schedule, x: Tensor, t: Tensor, eps: Tensor, weighting: str = "sigma2") -> Tensor:
    """The VSD gradient in model space: w(t) (eps_pre(x_t, t) - eps_phi(x_t, t)), (B, ...)  (ProlificDreamer eq. 9).

    Args:
        pretrained: (x_t, t) -> guided Prediction of the prior; particle: (x_t, t) -> Prediction of the score of
            the current samples' distribution (the LoRA of ``priorkit.distill.score.lora``; DMD's "fake" score);
            both under ``schedule``.
        x: samples in model space (B, ...); t: (B,); eps: (B, ...).
    """
    x_t = add_noise(schedule, x.detach(), t, eps)  # x_t = alpha_t x + sigma_t eps
    with torch.no_grad():
        eps_pre = pretrained(x_t, t).eps
        eps_phi = particle(x_t, t).eps
    w = weight(weighting, schedule, t).to(x.dtype)
    return w.reshape(-1, *([1] * (x.ndim - 1))) * (eps_pre - eps_phi)  # w(t) (eps_pre - eps_phi)


def diffusion_loss(den: Denoiser, x0: Tensor, t: Tensor, eps: Tensor, cond: Condition) -> Tensor:
    """|| f(x_t; cond, t) - target_kind(x0, eps) ||^2 (mean) in the model's own prediction kind (eps, x0 or v): the
    loss that keeps the tracked score on the current samples (ProlificDreamer eq. 10). x0, eps (B, ...), t (B,);
    ``cond`` is encoded by ``den.encode``."""
    x_t = add_noise(den.schedule, x0, t, eps)
    kind, out = den.predict_native(x_t, t, den.encode(cond))
    return (out - from_x0_eps(kind, x0, eps, x_t, t, den.schedule)).pow(2).mean()


def surrogate_loss(x: Tensor, grad: Tensor, particles: int = 1) -> Tensor:
    """0.5 || x - sg(x - grad) ||^2 summed per sample and averaged over each particle's views: d loss / dx =
    grad / views, with views = B / particles.

    x, grad: (B, ...), the renders of ``particles`` particles stacked along B. Each particle gets the gradient one
    SDS run of its own would get, whatever the number of particles (so the regularisers, added per particle,
    keep their weight). The denoiser's Jacobian never enters: grad is a constant of the graph.
    """
    if particles < 1 or x.shape[0] % particles:
        raise ValueError(f"{x.shape[0]} renders cannot be split evenly between {particles} particles")
    target = (x - grad).detach()
    return 0.5 * (x - target).pow(2).sum() / (x.shape[0] // particles)


def image_size(den: Denoiser) -> int:
    """Side of the images the prior expects: the sample side for pixel models, times the VAE factor for latents."""
    shape = den.sample_shape
    if shape is None:
        raise ValueError("the denoiser does not declare a sample shape")
    side = shape[-1]
    vae = getattr(den, "vae", None)
    if vae is not None:
        side *= 2 ** (len(vae.config.block_out_channels) - 1)
    return int(side)


def to_model_space(den: Denoiser, images: Tensor) -> Tensor:
    """Renders in [0, 1] (B, 3, H, W) -> samples of the prior's space (B, C, h, w), differentiably.

    Pixel priors: resized (bilinear, antialiased) to the prior's resolution and mapped to [-1, 1].
    Latent priors: the same at the VAE's image size, then encoded with ``DiffusersDenoiser.encode_images``.
    """
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"renders must be (B, 3, H, W); got {tuple(images.shape)}")
    side = image_size(den)
    if images.shape[-2:] != (side, side):
        images = F.interpolate(images, size=(side, side), mode="bilinear", align_corners=False,
                               antialias=images.shape[-1] > side)
    x = images * 2.0 - 1.0
    encode = getattr(den, "encode_images", None)
    if encode is not None and getattr(den, "latent", False):
        x = encode(x)
    return x


def view_prompts(prompt: str, cameras: Sequence[Camera], view_dependent: bool = True) -> list[str]:
    """One prompt per camera, with DreamFusion's view suffix: "a red cube" -> "a red cube, side view"."""
    if not view_dependent:
        return [prompt] * len(cameras)
    return [f"{prompt}, {view_phrase(c.azimuth, c.elevation)}" for c in cameras]


__all__ = ["ANNEALING", "WEIGHTINGS", "GuidedPredictor", "add_noise", "annealed_range", "diffusion_loss", "draw_noise",
           "image_size", "sample_times", "sds_gradient", "surrogate_loss", "to_model_space", "view_prompts",
           "vsd_gradient", "weight"]
