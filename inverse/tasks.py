"""The restoration tasks (each task's operator on an image size, simulated degradations ``y = A x + sigma_y n``), the
methods that suit a task, the priors they run on and the tile overlap.

Tasks: inpaint_box, inpaint_random, inpaint_mask, deblur_gaussian, deblur_motion, sr2, sr4, sr8. Used by
:mod:`priorkit.inverse.restore` (the front door) and the benchmarks.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from priorkit.distill.core.denoiser import Denoiser
from priorkit.inverse import registry
from priorkit.inverse.operators import (
    Blur,
    Downsampling,
    Inpainting,
    Measurement,
    Operator,
    box_mask,
    gaussian_kernel,
    mask_from_image,
    motion_kernel,
    random_mask,
)
from priorkit.inverse.registry import RestorationMethod, get_method, steps_budget

__all__ = ["TASKS", "TASK_OPERATORS", "RestoreDefaults", "DEFAULTS", "sr_factor", "build_operator", "degrade",
           "check_task", "as_batch", "check_range",
           "resolve_prior", "kernel_size", "tile_overlap", "methods_for_task", "check_method", "forward_budget"]

TASKS: tuple[str, ...] = ("inpaint_box", "inpaint_random", "inpaint_mask", "deblur_gaussian", "deblur_motion",
                          "sr2", "sr4", "sr8")
#: the operator class each task builds (what a registered method must support to run it)
TASK_OPERATORS: dict[str, type[Operator]] = {t: {"in": Inpainting, "de": Blur, "sr": Downsampling}[t[:2]]
                                             for t in TASKS}

@dataclass
class RestoreDefaults:
    """Degradations and tiling of the front door; solver budgets are the registry's (``nfe``)."""

    sigma_y: float = 0.01
    random_missing: float = 0.7
    blur_sigma: float = 2.0
    motion_size: int = 9
    motion_angle: float = 30.0
    sr_kind: str = "bicubic"
    overlap: int = 16
    max_batch: int = 16                  # tiles per model call (TiledDenoiser: the fastest per tile on a CPU)

    @property
    def nfe(self) -> dict[str, int | None]:
        """Default model passes per prior method (D-Flow: total passes; None = the solver's own defaults), read from
        `priorkit.inverse.registry`."""
        return {m.name: m.default_nfe for m in registry.METHODS.values() if m.needs_prior}


DEFAULTS = RestoreDefaults()


# ----------------------------------------------------------------------------------------------------------------------
# Operators and degradations
# ----------------------------------------------------------------------------------------------------------------------


def check_task(task: str) -> None:
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; expected one of {', '.join(TASKS)}")


def sr_factor(task: str) -> int:
    """2, 4 or 8 for "sr2", "sr4", "sr8"; 1 otherwise."""
    return int(task[2:]) if task.startswith("sr") else 1


def build_operator(task: str, H: int, W: int, *, seed: int = 0, mask: Tensor | str | Path | None = None,
                   defaults: RestoreDefaults = DEFAULTS) -> Operator:
    """The operator of ``task`` on (H, W) images (H, W: the clean/high-resolution size).

    inpaint_box: centred box of half the size; inpaint_random: ``random_missing`` of the pixels (seeded);
    inpaint_mask: ``mask`` (tensor (H, W) / (1, 1, H, W) of 0/1, or an image file, white = keep);
    deblur_gaussian: Gaussian kernel, std ``blur_sigma``; deblur_motion: motion streak (``motion_size``,
    ``motion_angle``); both circular. srF: ``sr_kind`` downsampling by F.
    """
    check_task(task)
    if task == "inpaint_box":
        return Inpainting(box_mask(H, W))
    if task == "inpaint_random":
        return Inpainting(random_mask(H, W, defaults.random_missing, torch.Generator().manual_seed(seed)))
    if task == "inpaint_mask":
        if mask is None:
            raise ValueError("task 'inpaint_mask' needs a mask (tensor or image file; white = keep)")
        m = mask_from_image(mask, H, W) if isinstance(mask, (str, Path)) else torch.as_tensor(mask).float()
        if m.ndim == 2:
            m = m[None, None]
        if tuple(m.shape[-2:]) != (H, W):
            raise ValueError(f"mask is {tuple(m.shape[-2:])} but the image is {(H, W)}")
        return Inpainting(m)
    if task == "deblur_gaussian":
        return Blur(gaussian_kernel(defaults.blur_sigma))
    if task == "deblur_motion":
        return Blur(motion_kernel(defaults.motion_size, defaults.motion_angle))
    return Downsampling(sr_factor(task), defaults.sr_kind)


def as_batch(image: Tensor) -> tuple[Tensor, bool]:
    image = torch.as_tensor(image)
    if image.ndim == 3:
        return image[None], True
    if image.ndim != 4:
        raise ValueError(f"expected an image (C, H, W) or a batch (B, C, H, W); got shape {tuple(image.shape)}")
    return image, False


def check_range(image: Tensor) -> None:
    if not image.is_floating_point():
        raise ValueError("images must be float tensors in [0, 1]")
    if not torch.isfinite(image).all():
        raise ValueError("the image contains NaN or inf values")
    if float(image.min()) < -1e-6 or float(image.max()) > 1 + 1e-6:
        raise ValueError(f"images must lie in [0, 1]; got [{float(image.min()):.3g}, {float(image.max()):.3g}]")


def degrade(image: Tensor, task: str, sigma_y: float = DEFAULTS.sigma_y, seed: int = 0, *,
            mask: Tensor | str | Path | None = None) -> tuple[Tensor, Operator]:
    """Simulate ``y = A x + sigma_y n`` on a clean image in [0, 1] ((C, H, W) or (B, C, H, W)).

    Returns the image-range measurement (measurement-shaped, batch kept) and the operator. For srF, H and W must be
    divisible by F.
    """
    x, single = as_batch(image)
    check_range(x)
    if sigma_y < 0:
        raise ValueError(f"sigma_y must be >= 0; got {sigma_y}")
    op = build_operator(task, x.shape[-2], x.shape[-1], seed=seed, mask=mask)
    y = Measurement(op, sigma_y)(x, generator=torch.Generator().manual_seed(seed + 1))
    return (y[0] if single else y), op


@functools.lru_cache(maxsize=4)
def _load_named_prior(name: str) -> Denoiser:
    from priorkit.distill.loading import load_prior

    return load_prior(name).eval()


def resolve_prior(prior: str | Path | Denoiser) -> Denoiser:
    """A `Denoiser` from a bundled name ("photos"), a diffusers folder or hub id, or a `Denoiser` (returned as is)."""
    if isinstance(prior, Denoiser):
        return prior
    return _load_named_prior(str(prior))


def kernel_size(op: Operator) -> int:
    return int(max(op.kernel.shape[-2:])) if isinstance(op, Blur) else 0


def tile_overlap(op: Operator, tile: tuple[int, int], overlap: int) -> int:
    """The tile overlap: ``overlap`` widened past the blur kernel, at most half a tile."""
    return min(max(overlap, kernel_size(op) + 2), min(tile) // 2)


def methods_for_task(task: str) -> tuple[str, ...]:
    """Registered methods that support ``task``'s operator."""
    check_task(task)
    return tuple(m.name for m in registry.METHODS.values() if m.supports(TASK_OPERATORS[task]))


def check_method(method: str, task: str) -> RestorationMethod:
    """The registered method ``method`` if it supports ``task``; ValueError naming the choices otherwise."""
    spec = get_method(method)
    if not spec.supports(TASK_OPERATORS[task]):
        raise ValueError(f"method {method!r} does not support task {task!r}; choose one of "
                         f"{', '.join(methods_for_task(task))}")
    return spec


def model_dtype(den: Denoiser) -> torch.dtype:
    """float64 for float64 analytic priors, else float32 (the solver's working precision)."""
    for t in (*den.parameters(), *den.buffers()):
        if t.is_floating_point():
            return torch.float64 if t.dtype == torch.float64 else torch.float32
    return torch.float32


def default_nfe(spec: RestorationMethod, den: Denoiser, nfe: int | None) -> int | None:
    """``nfe``, or the prior's own ``restore_nfe`` (a few-step student says how many steps it was made for) when
    the user gave none and the method's budget is its step count."""
    hint = getattr(den, "restore_nfe", None)
    return int(hint) if nfe is None and hint and spec.budget is steps_budget else nfe


def forward_budget(spec: RestorationMethod, nfe: int | None, options: dict[str, Any]) -> int | None:
    """Forward passes a run will make (the solver's ``steps``), or None when the method does not say (D-Flow)."""
    steps = spec.solver_options(nfe, options).get("steps") if spec.needs_prior else 0
    return None if steps is None or spec.name == "dflow" else int(steps)
