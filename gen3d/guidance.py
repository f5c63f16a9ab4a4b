"""What the text-to-3D loop asks of a guidance (SDS, VSD, ...): the :class:`Guidance` protocol and the settings
every method has (:class:`GuidanceConfig`).

The loop never asks which method it runs. Per step it calls ``loss`` on the renders of all particles, backpropagates,
steps the fields' optimiser, then calls ``step`` (a method with its own trainable parts, such as VSD's LoRA, updates
them there). ``state`` / ``load_state`` carry those parts through a checkpoint; ``close`` undoes what the guidance
did to the prior. The gradients themselves are functions of tensors in ``priorkit.distill.score.guidance``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor

from priorkit.distill.core.cameras import Camera


@dataclass
class GuidanceConfig:
    """Settings every guidance method has; each method's config (``SDSConfig``, ``VSDConfig``) extends it.

    Score distillation (times are continuous in [0, 1], t = 0 data, whatever the prior's schedule):
    guidance_scale: CFG scale of the pretrained prior. t_min, t_max: the range of t; with ``anneal`` != "none"
    t_max moves to ``t_max_end`` over the run. weighting: w(t) (:func:`priorkit.distill.score.guidance.weight`).
    view_dependent: append "front/side/back/overhead view" to the prompt per camera. grad_clip: clamp each element
    of the model-space gradient to [-grad_clip, grad_clip] (None: no clamp). camera_input: give a camera-aware prior
    each render's camera (as Zero123 / MVDream are given theirs; None: whenever the prior accepts one,
    :func:`priorkit.distill.core.cameras.accepts_camera`; True with a prior that does not is an error).

    The loop's defaults for this method: steps (optimisation steps), particles (fields optimised together),
    lambda_color_tv (weight of the representation's colour TV regulariser).
    """

    guidance_scale: float = 7.5
    t_min: float = 0.02
    t_max: float = 0.98
    t_max_end: float | None = 0.5
    anneal: str = "sqrt"
    weighting: str = "sigma2"
    view_dependent: bool = True
    grad_clip: float | None = None
    camera_input: bool | None = None
    prior_precision: str = "auto"
    steps: int = 500
    particles: int = 1
    lambda_color_tv: float = 0.0

    def check(self) -> None:
        """Raise ValueError for settings no run can use (the methods' configs add their own); no prior needed."""
        from priorkit.distill.score.guidance import WEIGHTINGS, annealed_range

        if self.guidance_scale <= 0:
            raise ValueError(f"guidance_scale must be > 0; got {self.guidance_scale}")
        annealed_range(self.t_min, self.t_max, self.t_max_end, self.anneal, 0.0)
        if self.weighting not in WEIGHTINGS:
            raise ValueError(f"unknown weighting {self.weighting!r}; use one of {WEIGHTINGS}")


PRECISIONS = ("auto", "float32", "bfloat16")


def native_cpu_bf16() -> bool:
    """Whether this CPU does bf16 arithmetic natively (AVX512-BF16 / AMX), as oneDNN reports it; False when torch
    cannot tell (another architecture, a build without oneDNN)."""
    try:
        return torch.backends.mkldnn.is_available() and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def prior_autocast(precision: str, device: torch.device | str) -> contextlib.AbstractContextManager:
    """The autocast context of a prior's forward at ``precision`` (see ``GuidanceConfig.prior_precision``)."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown prior_precision {precision!r}; use one of {PRECISIONS}")
    device_type = torch.device(device).type
    if precision == "auto":
        precision = "bfloat16" if device_type == "cpu" and native_cpu_bf16() else "float32"
    if precision == "float32":
        return contextlib.nullcontext()
    return torch.autocast(device_type, dtype=torch.bfloat16)


@runtime_checkable
class Guidance(Protocol):
    """A score-distillation method as the loop sees it.

    ``loss(images, cameras, progress, generator, particles)``: images (B, 3, H, W) in [0, 1], the renders of
    ``particles`` particles stacked along B (particle-major), one camera each; ``progress`` in [0, 1]; random draws
    from ``generator``. Returns a scalar whose gradient in ``images`` is the method's update of each particle (as
    large as a run of that particle alone would get), and diagnostics (floats) for the log.
    ``views``: renders of each particle the loop makes per step.
    """

    config: GuidanceConfig

    @property
    def views(self) -> int: ...

    def loss(self, images: Tensor, cameras: Sequence[Camera], progress: float = 0.0,
             generator: torch.Generator | None = None, particles: int = 1) -> tuple[Tensor, dict[str, float]]: ...

    def step(self) -> None:
        """Update the method's own trainable parts after the backward pass (nothing for SDS)."""

    def state(self) -> tuple[dict[str, Tensor], dict[str, Any]]:
        """(tensors, JSON-able info) to checkpoint; names must not collide with the loop's ("field*", "opt.fields")."""

    def load_state(self, tensors: dict[str, Tensor], info: dict[str, Any]) -> None:
        """Restore what :meth:`state` returned (the tensors may hold other entries too)."""

    def close(self) -> None:
        """Undo what the method did to the prior (e.g. remove a LoRA)."""




class NonFiniteGradientError(ValueError):
    """A guidance step whose gradient has no finite value at all (the prior returned NaN / inf everywhere)."""


def finite_gradient(grad: Tensor, name: str) -> tuple[Tensor, int]:
    """(``grad`` with its non-finite values set to zero, how many there were).

    Raises `NonFiniteGradientError` when no value is finite: such a step would silently become a zero update, and
    the run would end in an empty field with nothing said. Partly non-finite steps are counted by the loop (the
    "nonfinite" entry of each step in the history) and reported at the end of the run.
    """
    bad = ~torch.isfinite(grad)
    count = int(bad.sum())
    if count == 0:
        return grad, 0
    if count == grad.numel():
        raise NonFiniteGradientError(f"every value of the {name} gradient is NaN or infinite (the prior's prediction "
                                     "is not finite): check the prior, the guidance scale and the learning rate")
    return torch.where(bad, torch.zeros_like(grad), grad), count


__all__ = ["Guidance", "GuidanceConfig", "NonFiniteGradientError", "finite_gradient"]


def uses_camera(den: object, config: GuidanceConfig) -> bool:
    """Whether the guidance gives ``den`` the render's camera (``config.camera_input``, resolved)."""
    from priorkit.distill.core.cameras import accepts_camera

    accepts = accepts_camera(den)
    if config.camera_input and not accepts:
        raise ValueError("camera_input=True needs a camera-aware prior (such as the shapes prior v2); this prior "
                         "takes no camera")
    return accepts if config.camera_input is None else bool(config.camera_input)

