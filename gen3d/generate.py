"""Text-to-3D: DreamFusion (SDS) and ProlificDreamer (VSD) from a prompt to meshes, with checkpoints and export.

:func:`generate` checks its inputs, loads the prior, and runs the loop of ``priorkit.gen3d.loop`` on a
representation (``priorkit.gen3d.representation``; a :class:`~priorkit.gen3d.field.VoxelField` by default) under a
guidance (``priorkit.gen3d.guidance``: :class:`~priorkit.gen3d.sds.SDS` or :class:`~priorkit.gen3d.vsd.VSD`, one
entry each in ``priorkit.gen3d.config.GUIDANCES``). The loop's settings are in :class:`GenerateConfig`
(``priorkit.gen3d.config``); each method's (its score
distillation, default steps, particles, views and colour TV weight) in its own config, ``GenerateConfig.sds`` and
``GenerateConfig.vsd``.

Every ``checkpoint_every`` steps the fields, the guidance's state and the optimiser states go to ``out/checkpoint``
(``priorkit.gen3d.checkpoint``); ``resume=True`` continues exactly: the random draws of step k depend only on
(seed, k). At the end each particle is exported: mesh.glb / mesh.obj / mesh.ply and turntable.gif.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from priorkit.distill.core.denoiser import Denoiser
from priorkit.gen3d.config import GUIDANCES, METHODS, GenerateConfig
from priorkit.gen3d.loop import (
    Result,
    azimuth_span,
    export_particle,
    lr_factor,
    pick_shading,
    preview_image,
    run,
)
from priorkit.gen3d.regularisers import colour_tv, voxel_entropy
from priorkit.gen3d.renderer import render_views
from priorkit.gen3d.representation import Representation

MAX_STEPS = 100_000
RESOLUTION_RANGE = (8, 512)
MAX_PARTICLES = 32
LONGEST_VIEW_SUFFIX = ", overhead view"


# ---------------------------------------------------------------------------------------------------------------------
# validation
# ---------------------------------------------------------------------------------------------------------------------


TEXT_PRIORS = ("shapes-v2", "shapes")  # the bundled text-to-image priors (the other bundled models are not)


def _check_prior_name(prior: str | Path) -> None:
    from priorkit.distill.core.loading import BUNDLED, bundled_path, folder_kind

    s = str(prior)
    path = bundled_path(s) if s in BUNDLED else Path(s).expanduser()
    if path.is_dir():
        if folder_kind(path) == "student":
            raise ValueError(f"{s!r} is a distilled student (a few-step sampler), not a prior text to 3D can score "
                             f"renders with: use {' or '.join(TEXT_PRIORS)}, a diffusers folder or a hub id")
        return
    hub_like = s.count("/") == 1 and not s.startswith((".", "/", "~")) and all(s.split("/"))
    if not hub_like:
        raise ValueError(f"unknown prior {s!r}: use a bundled text-to-image prior ({', '.join(TEXT_PRIORS)}), a "
                         "diffusers folder or a hub id")


def _check_out(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".write_test{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise ValueError(f"output folder {out} is not writable: {e}") from e


def _check_prompt_length(den: Denoiser, prompt: str, view_dependent: bool) -> None:
    """The text encoder's own limit (MiniLM: 512 word pieces), the view suffix included (as `priorkit sample`)."""
    from priorkit.distill.core.text import check_prompts

    check_prompts(getattr(den, "text_encoder", None), [prompt], LONGEST_VIEW_SUFFIX if view_dependent else "")


def validate(prompt: str, method: str, steps: int, resolution: int, particles: int, guidance: float | None,
             lr: float) -> None:
    """Raise ValueError for inputs :func:`generate` cannot run with (before any work is done)."""
    if not isinstance(prompt, str) or not prompt.strip():
        raise ValueError("prompt must be a non-empty string")
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; use one of {METHODS}")
    if not isinstance(steps, int) or not 1 <= steps <= MAX_STEPS:
        raise ValueError(f"steps must be an integer in [1, {MAX_STEPS}]; got {steps!r}")
    lo, hi = RESOLUTION_RANGE
    if not isinstance(resolution, int) or not lo <= resolution <= hi:
        raise ValueError(f"resolution must be an integer in [{lo}, {hi}]; got {resolution!r}")
    if not isinstance(particles, int) or not 1 <= particles <= MAX_PARTICLES:
        raise ValueError(f"particles must be an integer in [1, {MAX_PARTICLES}]; got {particles!r}")
    if guidance is not None and not (isinstance(guidance, numbers.Real) and math.isfinite(guidance)
                                     and 0 < guidance <= 1000):
        raise ValueError(f"guidance must be a number in (0, 1000]; got {guidance!r}")
    if not (isinstance(lr, numbers.Real) and math.isfinite(lr) and lr > 0):
        raise ValueError(f"lr must be a positive number; got {lr!r}")


def _load_prior(prior: str | Path | Denoiser) -> Denoiser:
    if isinstance(prior, Denoiser):
        return prior
    from priorkit.distill.core.loading import load_denoiser

    return load_denoiser(prior)


# ---------------------------------------------------------------------------------------------------------------------
# the entry point
# ---------------------------------------------------------------------------------------------------------------------


#: the prior text-to-3D starts from: the camera-aware shapes prior v2 (every SDS bar on 7 prompts x 3 seeds at the
#: defaults; the v1 prior "shapes" needs CFG 60 for the cube: SDSConfig(guidance_scale=60) with it)
DEFAULT_PRIOR = "shapes-v2"


def generate(prompt: str, method: str = "sds", prior: str | Path | Denoiser = DEFAULT_PRIOR, steps: int | None = None,
             seed: int = 0, out: str | Path | None = None, particles: int | None = None,
             resolution: int | None = None, guidance: float | None = None, lr: float | None = None,
             preview_every: int = 0, checkpoint_every: int = 0, resume: bool = False, progress: bool = True,
             config: GenerateConfig | None = None,
             callback: Callable[[int, dict[str, Any]], None] | None = None,
             representation: Callable[[], Representation] | None = None,
             prior_name: str | None = None) -> Result:
    """Text-to-3D with SDS or VSD; see ``priorkit.gen3d.loop`` for the loop.

    Args:
        prompt: the text, e.g. "a red cube" (the view suffix is added per camera).
        method: "sds" (DreamFusion) or "vsd" (ProlificDreamer), a key of :data:`GUIDANCES`.
        prior: a bundled name (default "shapes-v2", the camera-aware prior), a diffusers folder, a hub id, or a
            loaded text-to-image ``Denoiser``.
        steps, resolution, lr: override ``config`` (defaults in :class:`GenerateConfig` and the method's config).
        seed: everything random derives from it; the same seed gives the same result.
        out: folder for previews, checkpoints and exports (None: nothing is written).
        particles: fields optimised together (default: the method's, 1 for SDS, 4 for VSD; SDS particles are
            independent).
        guidance: CFG scale of the pretrained prior (default ``config.sds/vsd.guidance_scale``).
        preview_every / checkpoint_every: every N steps (0: never; a checkpoint is also written at the end).
        resume: continue from ``out/checkpoint`` (same prompt, method, seed, particles) exactly.
        callback: called after every step with (step, {"loss", "fields", "preview" (uint8 image or None), ...}).
        representation: makes one particle (a :class:`~priorkit.gen3d.representation.Representation`); default
            ``config.voxel_field``.
        prior_name: the name a resume checks the prior by when ``prior`` is a loaded Denoiser (default: its class).

    Raises:
        ValueError: empty or too long prompt, unknown method or prior, steps / resolution / particles / guidance /
            lr out of range, unwritable ``out``, ``resume`` without ``out``, or a checkpoint of another run.
    """
    cfg = config or GenerateConfig()
    guide_cfg = cfg.method_config(method) if method in GUIDANCES else cfg.sds  # an unknown method fails in validate
    steps = guide_cfg.steps if steps is None else steps
    resolution = cfg.resolution if resolution is None else resolution
    lr = cfg.lr if lr is None else lr
    particles = guide_cfg.particles if particles is None else particles
    validate(prompt, method, steps, resolution, particles, guidance, lr)
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise ValueError(f"seed must be a whole number; got {seed!r}")
    seed = int(seed)
    if preview_every < 0 or checkpoint_every < 0:
        raise ValueError("preview_every and checkpoint_every must be >= 0 (0: never / only at the end)")
    if resume and out is None:
        raise ValueError("resume=True needs an output folder (out=...)")
    if not isinstance(prior, Denoiser):
        _check_prior_name(prior)
    out_dir = Path(out).expanduser() if out is not None else None
    if out_dir is not None:
        _check_out(out_dir)
    den = _load_prior(prior)
    if getattr(den, "is_student", False):  # set by the student loader
        raise ValueError("the prior is a distilled student (a few-step sampler), not a prior text to 3D can score "
                         f"renders with: use {' or '.join(TEXT_PRIORS)}")
    if not getattr(den, "conditional", False) or getattr(den, "text_encoder", None) is None:
        raise ValueError("the prior is not a text-to-image model (it has no text encoder)")
    if guidance is not None:
        guide_cfg = dataclasses.replace(guide_cfg, guidance_scale=float(guidance))
    _check_prompt_length(den, prompt, guide_cfg.view_dependent)

    t0 = time.time()
    with torch.random.fork_rng(devices=[]):  # the global RNG (LoRA init, VAE sampling) is seeded and restored
        torch.manual_seed(seed)
        return run(prompt, method, lambda: GUIDANCES[method](den, prompt, guide_cfg),
                   representation or cfg.voxel_field, next(den.parameters()).device, steps, seed, out_dir, particles,
                   resolution, lr, preview_every, checkpoint_every, resume, progress, cfg, callback, t0,
                   identity={"prior": prior_name or (str(prior) if isinstance(prior, (str, Path))
                                                     else type(prior).__name__),
                             "guidance_scale": guide_cfg.guidance_scale})


__all__ = ["DEFAULT_PRIOR", "GUIDANCES", "METHODS", "GenerateConfig", "Result", "azimuth_span", "colour_tv",
           "export_particle", "generate", "lr_factor", "pick_shading", "preview_image", "render_views", "validate",
           "voxel_entropy"]
