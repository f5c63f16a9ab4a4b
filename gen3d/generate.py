"""Text-to-3D: DreamFusion (SDS) and ProlificDreamer (VSD) from a prompt to meshes, with checkpoints and export.

:func:`generate` checks its inputs, loads the prior, and runs the loop of ``priorkit.gen3d.loop`` on a
representation (``priorkit.gen3d.representation``; a :class:`~priorkit.gen3d.field.VoxelField` by default) under a
guidance (``priorkit.gen3d.guidance``: :class:`~priorkit.gen3d.sds.SDS` or :class:`~priorkit.gen3d.vsd.VSD`, one
entry each in :data:`GUIDANCES`). The loop's settings are in :class:`GenerateConfig`; each method's (its score
distillation, default steps, particles, views and colour TV weight) in its own config, ``GenerateConfig.sds`` and
``GenerateConfig.vsd``.

Every ``checkpoint_every`` steps the fields, the guidance's state and the optimiser states go to ``out/checkpoint``
(``priorkit.gen3d.checkpoint``); ``resume=True`` continues exactly: the random draws of step k depend only on
(seed, k). At the end each particle is exported: mesh.glb / mesh.obj / mesh.ply and turntable.gif.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
import warnings
from collections.abc import Callable
from dataclasses import InitVar, dataclass, field
from pathlib import Path
from typing import Any

import torch

from priorkit.distill.core.cameras import ELEVATION_RANGE
from priorkit.distill.core.denoiser import Denoiser
from priorkit.gen3d.field import VoxelField
from priorkit.gen3d.guidance import Guidance, GuidanceConfig
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
from priorkit.gen3d.sds import SDS, SDSConfig
from priorkit.gen3d.vsd import VSD, VSDConfig

GUIDANCES: dict[str, Callable[..., Guidance]] = {"sds": SDS, "vsd": VSD}  # name -> class(denoiser, prompt, config)
METHODS = tuple(GUIDANCES)
MAX_STEPS = 100_000
RESOLUTION_RANGE = (8, 512)
MAX_PARTICLES = 32
LONGEST_VIEW_SUFFIX = ", overhead view"

# GenerateConfig fields that moved into the methods' configs: old name -> (method, field)
MOVED_FIELDS = {"steps": ("sds", "steps"), "views": ("sds", "views"), "lambda_color_tv": ("sds", "lambda_color_tv"),
                "vsd_steps": ("vsd", "steps"), "vsd_lambda_color_tv": ("vsd", "lambda_color_tv")}


@dataclass
class GenerateConfig:
    """Defaults of the text-to-3D loop (chosen with the bundled 32x32 "shapes" prior on a CPU).

    resolution / lr: render side in pixels, Adam lr of the voxel logits, decayed by a cosine to ``lr_final * lr``
    at the end; appearance parameters use ``color_lr_scale * lr`` (a slower albedo makes the prior's gradient carve
    geometry instead of painting it, e.g. a torus' hole).
    field_resolution, blob_density, blob_radius, density_activation: the VoxelField, its initial density blob and
    its activation ("exp": logits are log-densities, so carving and growing take few steps; or "softplus").
    n_samples: samples per ray, at depths within ``scene_radius`` of the camera distance (None: the whole box
    [-1, 1]^3; every shape of the shapes world lies within 0.75 of the origin).
    azimuth_start, azimuth_warmup: camera azimuths start within ``azimuth_start`` degrees around the front and
    widen to the full circle over the first ``azimuth_warmup`` of the steps (see :func:`azimuth_span`).
    albedo_fraction: share of the run with albedo-only shading (warm-up); shading_probs: probabilities of
    (albedo, lambertian, textureless) after it, under the shapes world's random lights; ambient: Lambertian term.
    background: "white" (the bundled prior's) or "learned".
    lambda_*: regulariser weights: ray opacity mean (sparsity) and binary entropy, orientation, TV of the grid,
    and the voxel-opacity entropy (ramped up linearly over the run; ``priorkit.gen3d.regularisers``).
    export_resolution, turntable_*: mesh and GIF export. preview_*: preview images.
    sds, vsd: each method's settings, with its default steps, particles, views and colour TV weight
    (:class:`~priorkit.gen3d.sds.SDSConfig`, :class:`~priorkit.gen3d.vsd.VSDConfig`).

    The old top-level names ``steps``, ``views``, ``lambda_color_tv`` (now ``sds.*``), ``vsd_steps`` and
    ``vsd_lambda_color_tv`` (now ``vsd.steps``, ``vsd.lambda_color_tv``) still work, with a DeprecationWarning.
    """

    resolution: int = 32
    lr: float = 0.4
    lr_final: float = 0.1
    color_lr_scale: float = 0.1
    field_resolution: int = 40
    blob_density: float = 20.0
    blob_radius: float = 0.6
    density_activation: str = "exp"
    n_samples: int = 64
    scene_radius: float | None = 1.0
    elevation_range: tuple[float, float] = ELEVATION_RANGE
    azimuth_start: float = 30.0
    azimuth_warmup: float = 0.6
    albedo_fraction: float = 0.2
    shading_probs: tuple[float, float, float] = (0.3, 0.7, 0.0)
    ambient: float = 0.3
    background: str = "white"
    lambda_sparsity: float = 2.0
    lambda_entropy: float = 2.0
    lambda_orientation: float = 0.0
    lambda_tv: float = 0.0
    lambda_voxel_entropy: float = 10.0
    export_resolution: int = 128
    turntable_frames: int = 24
    turntable_size: int = 64
    preview_views: int = 4
    preview_size: int = 64
    sds: SDSConfig = field(default_factory=SDSConfig)
    vsd: VSDConfig = field(default_factory=VSDConfig)
    steps: InitVar[int | None] = None
    views: InitVar[int | None] = None
    lambda_color_tv: InitVar[float | None] = None
    vsd_steps: InitVar[int | None] = None
    vsd_lambda_color_tv: InitVar[float | None] = None

    def __post_init__(self, *moved: Any) -> None:
        for name, value in zip(MOVED_FIELDS, moved, strict=True):
            if value is not None:
                method, attr = MOVED_FIELDS[name]
                _warn_moved(name)
                setattr(self, method, dataclasses.replace(getattr(self, method), **{attr: value}))

    def method_config(self, method: str) -> GuidanceConfig:
        """The settings of ``method`` ("sds" or "vsd")."""
        if method not in GUIDANCES:
            raise ValueError(f"unknown method {method!r}; use one of {METHODS}")
        return getattr(self, method)

    def steps_for(self, method: str) -> int:
        """The default number of optimisation steps of ``method`` ("sds" or "vsd")."""
        return self.method_config(method).steps

    def voxel_field(self) -> VoxelField:
        """A new particle: the VoxelField of these settings (``field_resolution``, the blob, the activation)."""
        return VoxelField(self.field_resolution, blob_density=self.blob_density, blob_radius=self.blob_radius,
                          activation=self.density_activation)


def _warn_moved(name: str) -> None:
    method, attr = MOVED_FIELDS[name]
    warnings.warn(f"GenerateConfig.{name} is deprecated: use GenerateConfig.{method}.{attr}", DeprecationWarning,
                  stacklevel=3)


def _moved_property(name: str) -> property:
    method, attr = MOVED_FIELDS[name]

    def get(self: GenerateConfig) -> Any:
        _warn_moved(name)
        return getattr(getattr(self, method), attr)

    def set_(self: GenerateConfig, value: Any) -> None:
        _warn_moved(name)
        setattr(getattr(self, method), attr, value)

    return property(get, set_, doc=f"Deprecated: ``{method}.{attr}``.")


for _name in MOVED_FIELDS:  # read and write access by the old names (the __init__ keywords are the InitVars above)
    setattr(GenerateConfig, _name, _moved_property(_name))


# ---------------------------------------------------------------------------------------------------------------------
# validation
# ---------------------------------------------------------------------------------------------------------------------


def _check_prior_name(prior: str | Path) -> None:
    from priorkit.distill.core.loading import BUNDLED

    s = str(prior)
    if s in BUNDLED or Path(s).expanduser().is_dir():
        return
    hub_like = s.count("/") == 1 and not s.startswith((".", "/", "~")) and all(s.split("/"))
    if not hub_like:
        raise ValueError(f"unknown prior {s!r}: use a bundled prior ({', '.join(sorted(BUNDLED))}), a diffusers "
                         "folder or a hub id")


def _check_out(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".write_test{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise ValueError(f"output folder {out} is not writable: {e}") from e


def _check_prompt_length(den: Denoiser, prompt: str, view_dependent: bool) -> None:
    encoder = getattr(den, "text_encoder", None)
    tokenizer = getattr(encoder, "tokenizer", None)
    if tokenizer is None:
        return
    limit = getattr(encoder, "max_length", None) or getattr(tokenizer, "model_max_length", None)
    text = prompt + (LONGEST_VIEW_SUFFIX if view_dependent else "")
    n = len(tokenizer(text)["input_ids"])
    if limit is not None and n > int(limit):
        raise ValueError(f"prompt too long: {n} tokens with the view suffix, the text encoder takes at most {limit}")


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
    if guidance is not None and not (0 < guidance <= 1000 and math.isfinite(guidance)):
        raise ValueError(f"guidance must be in (0, 1000]; got {guidance!r}")
    if not (lr > 0 and math.isfinite(lr)):
        raise ValueError(f"lr must be a positive number; got {lr!r}")


def _load_prior(prior: str | Path | Denoiser) -> Denoiser:
    if isinstance(prior, Denoiser):
        return prior
    from priorkit.distill.core.loading import load_denoiser

    return load_denoiser(prior)


# ---------------------------------------------------------------------------------------------------------------------
# the entry point
# ---------------------------------------------------------------------------------------------------------------------


def generate(prompt: str, method: str = "sds", prior: str | Path | Denoiser = "shapes", steps: int | None = None,
             seed: int = 0, out: str | Path | None = None, particles: int | None = None,
             resolution: int | None = None, guidance: float | None = None, lr: float | None = None,
             preview_every: int = 0, checkpoint_every: int = 0, resume: bool = False, progress: bool = True,
             config: GenerateConfig | None = None,
             callback: Callable[[int, dict[str, Any]], None] | None = None,
             representation: Callable[[], Representation] | None = None) -> Result:
    """Text-to-3D with SDS or VSD; see ``priorkit.gen3d.loop`` for the loop.

    Args:
        prompt: the text, e.g. "a red cube" (the view suffix is added per camera).
        method: "sds" (DreamFusion) or "vsd" (ProlificDreamer), a key of :data:`GUIDANCES`.
        prior: a bundled name ("shapes"), a diffusers folder, a hub id, or a loaded text-to-image ``Denoiser``.
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
    if resume and out is None:
        raise ValueError("resume=True needs an output folder (out=...)")
    if not isinstance(prior, Denoiser):
        _check_prior_name(prior)
    out_dir = Path(out).expanduser() if out is not None else None
    if out_dir is not None:
        _check_out(out_dir)
    den = _load_prior(prior)
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
                   resolution, lr, preview_every, checkpoint_every, resume, progress, cfg, callback, t0)


__all__ = ["GUIDANCES", "METHODS", "GenerateConfig", "Result", "azimuth_span", "colour_tv", "export_particle",
           "generate", "lr_factor", "pick_shading", "preview_image", "render_views", "validate", "voxel_entropy"]
