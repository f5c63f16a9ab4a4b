"""Score Distillation Sampling (Poole et al. 2022, "DreamFusion: Text-to-3D using 2D Diffusion", sec. 3).

For renders x = g(theta) of a field and a frozen text-to-image prior eps_hat:

    grad_theta L_SDS = E_{t, eps}[ w(t) (eps_cfg(x_t; y, t) - eps) dx/dtheta ]        (DreamFusion eq. 3)
    x_t = alpha_t x + sigma_t eps,  eps ~ N(0, I),  t ~ U(t_min, t_max)
    eps_cfg = eps_hat(x_t; null) + s (eps_hat(x_t; y) - eps_hat(x_t; null))          (classifier-free guidance)

with no U-Net Jacobian (the gradient enters through a stop-gradient surrogate). The gradient, the time sampling
and the weighting are functions of tensors in ``priorkit.distill.score.guidance``; this module is the thin
:class:`~priorkit.gen3d.guidance.Guidance` the 3D loop uses. The prompt y gets a view suffix from each camera
("a red cube, side view").
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from priorkit.distill.core.cameras import Camera, camera_input, camera_width
from priorkit.distill.core.denoiser import Condition, Denoiser
from priorkit.distill.score.guidance import (
    GuidedPredictor,
    annealed_range,
    draw_noise,
    sds_gradient,
    surrogate_loss,
    to_model_space,
    view_prompts,
)
from priorkit.gen3d.guidance import GuidanceConfig, finite_gradient, prior_autocast, uses_camera


@dataclass
class SDSConfig(GuidanceConfig):
    """Defaults of SDS (the fields of :class:`~priorkit.gen3d.guidance.GuidanceConfig`, and:)

    guidance_scale: CFG scale s (DreamFusion: 100 with Imagen/SD; the bundled 32x32 camera-aware prior: 20, where
    the v1 prior needed 60 for the cube; lower scales give truer geometry, see BENCHMARKS.md, issue 23).
    warmup_guidance_scale, guidance_warmup: the CFG scale of the first ``guidance_warmup`` of the run (capped at
    ``guidance_scale``; None: no warm-up). It spans the loop's albedo-only warm-up
    (``GenerateConfig.albedo_fraction``): a flat-shaded render is far from the prior's shaded images, and under a
    high CFG the field fakes the missing shading with geometry (the bundled prior grows a foot under a cube).
    final_guidance_scale, guidance_cooldown: the CFG scale goes linearly from ``guidance_scale`` to
    ``final_guidance_scale`` over the last ``guidance_cooldown`` of the run (None: no cool-down). SDS's fixed point
    under a high scale is an exaggerated object (the bundled v2 prior sampled at CFG 60 fills 1.6-5x the true
    silhouette, at CFG 3 1.00x: BENCHMARKS.md, issue 23); a lower scale at the end lets the geometry settle nearer
    the true size once the colour and shape are set.
    steps: optimisation steps; particles: independent fields (1); views: renders of each particle per step;
    lambda_color_tv: weight of the colour TV (0: SDS does not need it).
    """

    guidance_scale: float = 20.0
    steps: int = 360
    particles: int = 1
    lambda_color_tv: float = 0.0
    warmup_guidance_scale: float | None = 20.0
    guidance_warmup: float = 0.2
    final_guidance_scale: float | None = None
    guidance_cooldown: float = 0.4
    views: int = 4

    def check(self) -> None:
        """:meth:`GuidanceConfig.check` and the CFG schedule's own ranges."""
        super().check()
        if self.warmup_guidance_scale is not None and self.warmup_guidance_scale <= 0:
            raise ValueError(f"warmup_guidance_scale must be > 0 or None; got {self.warmup_guidance_scale}")
        if not 0.0 <= self.guidance_warmup <= 1.0:
            raise ValueError(f"guidance_warmup must be in [0, 1]; got {self.guidance_warmup}")
        if self.final_guidance_scale is not None and self.final_guidance_scale <= 0:
            raise ValueError(f"final_guidance_scale must be > 0 or None; got {self.final_guidance_scale}")
        if self.final_guidance_scale is not None and not 0.0 < self.guidance_cooldown <= 1.0 - self.guidance_warmup:
            raise ValueError(f"guidance_cooldown must be in (0, 1 - guidance_warmup]; got {self.guidance_cooldown}")


class SDS:
    """DreamFusion's SDS loss for renders of a field under a frozen prior (a ``priorkit.gen3d.guidance.Guidance``).

    ``loss(images, cameras, progress, generator)`` returns a scalar whose gradient in ``images`` is the SDS
    gradient (through the VAE encoder for latent priors), plus diagnostics. SDS has no state of its own.
    """

    def __init__(self, denoiser: Denoiser, prompt: str, config: SDSConfig | None = None) -> None:
        self.den, self.prompt, self.config = denoiser, prompt, config or SDSConfig()
        c = self.config
        c.check()
        self.camera = uses_camera(denoiser, c)

    @property
    def views(self) -> int:
        """Renders of each particle per step."""
        return self.config.views

    def time_range(self, progress: float) -> tuple[float, float]:
        c = self.config
        return annealed_range(c.t_min, c.t_max, c.t_max_end, c.anneal, progress)

    def guidance_scale(self, progress: float) -> float:
        """The CFG scale at ``progress`` in [0, 1]: the warm-up scale (capped at the main one) early, then the main,
        then (with ``final_guidance_scale``) linearly to the final scale over the last ``guidance_cooldown``."""
        c = self.config
        if c.warmup_guidance_scale is not None and progress < c.guidance_warmup:
            return min(c.warmup_guidance_scale, c.guidance_scale)
        start = 1.0 - c.guidance_cooldown
        if c.final_guidance_scale is not None and progress > start:
            frac = min(1.0, (progress - start) / c.guidance_cooldown)
            return c.guidance_scale + frac * (c.final_guidance_scale - c.guidance_scale)
        return c.guidance_scale

    def condition(self, cameras: Sequence[Camera]) -> Condition:
        """Encoded, view-dependent text condition for these cameras, (B, L, D); with a camera-aware prior
        (``self.camera``) also the cameras as its class input."""
        text = self.den.encode(view_prompts(self.prompt, cameras, self.config.view_dependent))
        if not self.camera:
            return text
        return {"text": text, "class_labels": camera_input(list(cameras), camera_width(self.den)).to(text)}

    def loss(self, images: Tensor, cameras: Sequence[Camera], progress: float = 0.0,
             generator: torch.Generator | None = None, particles: int = 1) -> tuple[Tensor, dict[str, float]]:
        """SDS surrogate loss of renders ``images`` in [0, 1] (B, 3, H, W) seen by ``cameras`` (B of them).

        ``progress`` in [0, 1] drives the t annealing; ``generator`` draws t and eps. ``particles``: independent
        fields whose views are stacked along B (particle-major); each gets the gradient a run of its own would get.
        """
        if images.shape[0] != len(cameras):
            raise ValueError(f"{images.shape[0]} images but {len(cameras)} cameras")
        x = to_model_space(self.den, images)
        lo, hi = self.time_range(progress)
        t, eps = draw_noise(x, lo, hi, generator)
        scale = self.guidance_scale(progress)
        predict = GuidedPredictor(self.den, self.condition(cameras), scale)
        with prior_autocast(self.config.prior_precision, x.device):
            raw = sds_gradient(predict, self.den.schedule, x, t, eps, self.config.weighting)
        grad, nonfinite = finite_gradient(raw.to(x.dtype), "SDS")
        if self.config.grad_clip is not None:
            grad = grad.clamp(-self.config.grad_clip, self.config.grad_clip)
        return surrogate_loss(x, grad, particles), {"grad_norm": float(grad.flatten(1).norm(dim=1).mean()),
                                                    "t_max": hi, "guidance_scale": scale,
                                                    "nonfinite": nonfinite}

    def step(self) -> None:
        """Nothing to update: the prior is frozen."""

    def state(self) -> tuple[dict[str, Tensor], dict[str, Any]]:
        """No state: ({}, {})."""
        return {}, {}

    def load_state(self, tensors: dict[str, Tensor], info: dict[str, Any]) -> None:
        """Nothing to restore."""

    def close(self) -> None:
        """Nothing to undo."""


__all__ = ["SDS", "SDSConfig", "GuidedPredictor", "sds_gradient"]
