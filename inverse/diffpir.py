"""DiffPIR: denoising diffusion models for plug-and-play image restoration (Zhu, Zhang, Liang, Cao, Wen, Timofte & Van
Gool 2023, "Denoising Diffusion Models for Plug-and-Play Image Restoration", CVPRW), Algorithm 1, written in the
general schedule ``x_t = alpha x0 + sigma eps`` so that it runs on flow-matching and DDPM priors alike.

Each step alternates the prior's denoiser with the data term's proximal map, which every operator has in closed form
(masks, circular blur, downsampling: `Operator.prox_l2`), so no step backpropagates through the network:

    x0_d  = x0_hat(x_t)                                          the prior's denoiser at noise sigma_bar = sigma / alpha
    x0_p  = argmin_x ||y - A x||^2 / 2 + ||x - x0_d||^2 / (2 gamma),  gamma = sigma_bar^2 / (lambda s^2)    (eq. 13)
    eps_p = (x_t - alpha x0_p) / sigma                           the effective noise of the corrected estimate (eq. 15)
    x_s   = alpha_s x0_p + sigma_s (sqrt(1 - zeta) eps_p + sqrt(zeta) z),  z ~ N(0, I)                         (eq. 16)

(the paper's rho_t = lambda s^2 / sigma_bar^2 is 1 / gamma; s = sigma_y in model range). ``sigma_bar^2 / lambda``
plays the part of Var[x0 | x_t]; with ``data_var = c`` it is the exact ``c sigma^2 / (alpha^2 c + sigma^2)`` of data
N(., c I) divided by lambda, and with lambda = 1 the data step then returns exactly E[x0 | x_t, y] for such data
(tested against the dense posterior in tests/test_inverse_solvers.py).

Cost: one model evaluation per step, no backward pass.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from priorkit.distill.core.denoiser import Condition, Denoiser
from priorkit.distill.core.samplers.base import predict_fn, steps_bar
from priorkit.distill.core.schedule import Schedule
from priorkit.inverse.operators import Inpainting, Operator
from priorkit.inverse.solver_common import check_measurement, initial_state, warm_state

__all__ = ["DiffPIRDefaults", "auto_warm_start", "diffpir", "diffpir_data_step", "scattered_holes", "MIN_SIGMA_Y"]

#: the noise std assumed for a noiseless measurement (model range): gamma stays finite
MIN_SIGMA_Y = 1e-3


def diffpir_data_step(x0: Tensor, t: Tensor | float, operator: Operator, y: Tensor, sigma_y: float,
                      schedule: Schedule, *, lam: float = 1.0, data_var: float | None = None) -> Tensor:
    """DiffPIR's data subproblem at time t: ``prox_l2(x0, y, gamma)`` with gamma = r_t^2 / (lambda s^2).

    Args:
        x0: the denoiser's clean estimate (B, C, H, W).  t: scalar time with alpha(t) > 0.
        operator, y, sigma_y: A, the model-range measurement (batch B or 1) and its noise std s (floored at
            ``MIN_SIGMA_Y``).
        lam: the paper's lambda (larger = trust the prior more).
        data_var: None = the paper's r_t^2 = sigma^2 / alpha^2; c = the exact posterior variance of N(., c I) data.
    Returns:
        x0_p (B, C, H, W).
    """
    tt = torch.as_tensor(t, dtype=torch.float64)
    a, s = float(schedule.alpha(tt)), float(schedule.sigma(tt))
    if a <= 0:
        raise ValueError("DiffPIR's data step needs alpha(t) > 0; start the sampler below the pure-noise end")
    r2 = s * s / (a * a) if data_var is None else data_var * s * s / (a * a * data_var + s * s)
    gamma = r2 / (lam * max(sigma_y, MIN_SIGMA_Y) ** 2)
    return operator.prox_l2(x0, y, gamma)


#: an inpainting mask's holes are scattered when this share of the missing pixels lies within SCATTER_RADIUS pixels
#: (a (2r+1)^2 window) of an observed one: 80%-random masks give ~1.0, a right-half box 0.09 (64 px) or 0.05 (128 px)
SCATTERED_SHARE, SCATTER_RADIUS = 0.9, 3
#: warm starts of ``warm_start="auto"``: scattered holes / everything else (BENCHMARKS.md, "DiffPIR's warm start")
WARM_START_SCATTERED, WARM_START_OTHER = 0.3, 0.7


def scattered_holes(mask: Tensor) -> bool:
    """Whether nearly every missing pixel of ``mask`` ((H, W) or (..., C, H, W), 1 = observed) has an observed pixel
    within ``SCATTER_RADIUS`` px (``SCATTERED_SHARE`` of them): the case where the classical fill already holds the
    image. A pixel counts as observed only where every channel is (the biharmonic fill's view of a per-channel mask);
    a batch of masks is judged as one."""
    m = mask.detach().float()
    observed = m.reshape(1, 1, *m.shape) if m.ndim == 2 else m.amin(dim=-3).reshape(-1, 1, *m.shape[-2:])
    missing = observed == 0
    if not missing.any():
        return True
    r = SCATTER_RADIUS
    near = torch.nn.functional.max_pool2d(observed, 2 * r + 1, stride=1, padding=r) > 0
    return float((near & missing).sum()) / float(missing.sum()) >= SCATTERED_SHARE


def auto_warm_start(operator: Operator) -> float:
    """DiffPIR's warm start t0 for this measurement (``warm_start="auto"``): ``WARM_START_SCATTERED`` for an
    inpainting whose holes are scattered (:func:`scattered_holes`), else ``WARM_START_OTHER``. Measured on training
    photographs and held-out shapes renders (BENCHMARKS.md, "DiffPIR's warm start"): on 80%-random inpainting t0 =
    0.3 beats 0.7 with both priors (photos 30.1 vs 28.2 dB, shapes 31.9 vs 30.9 dB); on a large hole (the right half)
    0.7 is far better (shapes 29.0 vs 22.5 dB); on SR and deblurring the two are within 0.2 dB and 0.7, with which
    the held-out figures were measured, is kept. An operator wrapped for a canvas larger than the image (images
    smaller than a tile: ``CropOperator``) gets 0.7, since its classical start is the pseudo-inverse, holes at 0.
    Stroke masks are judged by the same rule but were not measured."""
    if isinstance(operator, Inpainting) and scattered_holes(operator.mask):
        return WARM_START_SCATTERED
    return WARM_START_OTHER


@dataclass
class DiffPIRDefaults:
    """Defaults of :func:`diffpir`: lambda = 1 (Zhu et al. 2023 use lambda in [1, 10]) on the DDPM papers' strided grid
    carried over by log-SNR ("ddpm"), 20 steps (the paper's fast setting, NFE = 20), and zeta = 1 (fresh noise
    every step; the paper's ablation spans [0, 1]): measured on held-out shapes renders at 20 NFE, zeta = 1 restores
    0.5-9 dB better than 0.3 (inpainting most: half box 28.7 vs 19.7 dB, sr4 32.0 vs 31.4 dB). Warm start from the
    classical restoration (Chung et al. 2022) at a t0 chosen by the measurement (:func:`auto_warm_start`: 0.3 for
    scattered holes, 0.7 otherwise), measured on training photographs and held-out shapes renders (BENCHMARKS.md,
    round 3): 0.7 is better than a cold start on all four tasks with both bundled priors (shapes 80%-random
    inpainting 21.6 -> 30.9 dB; photos SR x4 30.58 -> 30.89, box 15.7 -> 18.6), and 0.3 better still on random
    inpainting while it loses 6 dB on the shapes' half box."""

    steps: int = 20
    lam: float = 1.0
    zeta: float = 1.0
    spacing: str = "ddpm"
    data_var: float | None = None
    warm_start: float | str | None = "auto"


def diffpir(denoiser: Denoiser, operator: Operator, y: Tensor, sigma_y: float, *, cond: Condition = None,
            guidance: float = 1.0, steps: int = DiffPIRDefaults.steps, lam: float = DiffPIRDefaults.lam,
            zeta: float = DiffPIRDefaults.zeta, spacing: str = DiffPIRDefaults.spacing,
            data_var: float | None = DiffPIRDefaults.data_var,
            warm_start: float | str | None = DiffPIRDefaults.warm_start,
            times: Tensor | None = None,
            noise: Tensor | None = None, shape: tuple[int, ...] | None = None,
            generator: torch.Generator | None = None, progress: bool | None = None) -> Tensor:
    """Restore ``x`` from ``y = A x + sigma_y n`` by DiffPIR (module docstring); model range [-1, 1].

    Args:
        denoiser: any `Denoiser` (sampled under its own schedule: flow matching, VP/DDPM, VE).
        operator: the degradation A (its ``prox_l2`` is used: closed form for masks, circular blur, downsampling).
        y: model-range measurement (B or 1, ...).  sigma_y: model-range noise std.
        cond, guidance: condition and classifier-free guidance scale of a conditional prior.
        steps: model evaluations (no backward passes).
        lam: lambda of rho_t = lambda s^2 / sigma_bar^2.  zeta: fresh-noise share of each step (0 = deterministic).
        spacing, times, noise, shape: as in :func:`priorkit.inverse.pigdm.pigdm`.
        data_var: see :func:`diffpir_data_step`.
        warm_start: None = start from noise at the grid's noise end; a time t0 = start the ``steps`` steps at t0
            from the forward-noised classical restoration (`priorkit.inverse.solver_common.warm_state`); "auto" =
            t0 by the measurement (:func:`auto_warm_start`).
    Returns:
        restored images (B, C, H, W) in model range (not clamped).
    """
    check_measurement(y, sigma_y)
    if not 0.0 <= zeta <= 1.0:
        raise ValueError(f"zeta must lie in [0, 1]; got {zeta}")
    if not lam > 0:
        raise ValueError(f"lam must be > 0; got {lam}")
    if isinstance(warm_start, str):
        if warm_start != "auto":
            raise ValueError(f"warm_start must be a time, None or 'auto'; got {warm_start!r}")
        warm_start = auto_warm_start(operator)
    schedule = denoiser.schedule
    if warm_start is not None and times is None:
        times, x = warm_state(denoiser, operator, y, sigma_y, steps, spacing, warm_start, shape, noise, generator)
    else:
        times, x = initial_state(denoiser, y, steps, spacing, times, shape, noise, generator)
    fn = predict_fn(denoiser, cond, guidance)
    keep, fresh = math.sqrt(1.0 - zeta), math.sqrt(zeta)
    for i in steps_bar(len(times) - 1, "DiffPIR", progress):
        t, s = times[i], times[i + 1]
        pred = fn(x, t)
        x0 = diffpir_data_step(pred.x0, t, operator, y, sigma_y, schedule, lam=lam, data_var=data_var)
        a_s, sig_s = float(schedule.alpha(s)), float(schedule.sigma(s))
        if sig_s == 0.0:
            x = a_s * x0
            continue
        eps = (x - float(schedule.alpha(t)) * x0) / float(schedule.sigma(t))
        z = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device) if zeta > 0 else 0.0
        x = a_s * x0 + sig_s * (keep * eps + fresh * z)
    return x
