"""The optimisation loop of text-to-3D, for any :class:`~priorkit.gen3d.representation.Representation` and any
:class:`~priorkit.gen3d.guidance.Guidance` (it never asks which it runs).

Per step (Poole et al. 2022, sec. 3-4; Wang et al. 2023, Algorithm 1):

1. draw random cameras (``priorkit.distill.core.cameras.random_cameras``, the prior's convention) for every
   particle, ``guidance.views`` each, all around (by default) or widening from the front (:func:`azimuth_span`);
2. render every particle from its cameras (:class:`~priorkit.gen3d.renderer.Renderer`) over its background;
   shading is albedo for a warm-up, then randomly albedo / Lambertian / textureless under a random light
   (DreamFusion sec. 3.1);
3. the guidance's loss of all renders, plus each particle's regularisers (``priorkit.gen3d.regularisers``);
4. one Adam step of the representations (lr cosine-decayed, a pure function of the step; appearance parameters at
   ``color_lr_scale`` times it), then ``guidance.step()`` (VSD's LoRA).

Step k's random draws depend only on (seed, k), so a resumed run equals the uninterrupted one.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from priorkit.distill.core.atomic import atomic_open
from priorkit.distill.core.cameras import Camera, random_cameras
from priorkit.gen3d.checkpoint import find_checkpoint, load_checkpoint, save_checkpoint
from priorkit.gen3d.config import GenerateConfig
from priorkit.gen3d.field import Background
from priorkit.gen3d.guidance import Guidance
from priorkit.gen3d.regularisers import field_terms, render_terms
from priorkit.gen3d.renderer import Renderer, render_image
from priorkit.gen3d.representation import Representation

log = logging.getLogger(__name__)

SHADING_NAMES = ("albedo", "lambertian", "textureless")


@dataclass
class Result:
    """What :func:`~priorkit.gen3d.generate.generate` returns.

    fields: the optimised particle representations; meshes: their exported meshes (None where there was no surface);
    turntables: uint8 frames (T, H, W, 3) per particle; paths: written files by kind ("glb", "obj", "ply", "gif":
    one per particle; "previews"; "checkpoint"); history: per-step losses; seconds: wall time of the run,
    export_seconds: of its export (meshes, textures, turntables) alone.
    """

    fields: list[nn.Module]
    meshes: list[Any]
    turntables: list[np.ndarray]
    paths: dict[str, list[Path]]
    history: list[dict[str, float]]
    seconds: float
    export_seconds: float = 0.0


def lr_factor(step: int, steps: int, final: float) -> float:
    """Cosine decay of the learning rate from 1 at step 0 to ``final`` at the last step."""
    p = step / max(1, steps - 1)
    return final + (1.0 - final) * 0.5 * (1.0 + math.cos(math.pi * p))


def azimuth_span(step: int, steps: int, cfg: GenerateConfig) -> float:
    """Azimuth range of the training cameras at ``step``: ``azimuth_start`` degrees around the front, widened
    linearly to the full circle over the first ``azimuth_warmup`` of the run (threestudio's progressive camera
    range; the default ``azimuth_start`` 360 turns it off). With a prior that takes no camera a shape whose look
    depends on the azimuth (a cube) settles on one orientation while few views constrain it; with the camera-aware
    default prior the narrow start only leaves the initial blob's depth unseen (``GenerateConfig``)."""
    end = cfg.azimuth_warmup * steps
    if step >= end:
        return 360.0
    return cfg.azimuth_start + (360.0 - cfg.azimuth_start) * step / end


def pick_shading(step: int, steps: int, cfg: GenerateConfig, g: torch.Generator) -> str:
    """Albedo during the warm-up (``albedo_fraction`` of the run), then drawn with ``shading_probs``."""
    if step < cfg.albedo_fraction * steps:
        return "albedo"
    probs = torch.tensor(cfg.shading_probs, dtype=torch.float64)
    return SHADING_NAMES[int(torch.multinomial(probs / probs.sum(), 1, generator=g))]


@torch.no_grad()
def preview_image(fields: list[nn.Module], cfg: GenerateConfig, background: list[Any]) -> np.ndarray:
    """A grid of views (rows: particles, columns: azimuths at 15 degrees elevation), uint8 (H, W, 3)."""
    rows = []
    for f, bg in zip(fields, background, strict=True):
        cams = [Camera(azimuth=-180.0 + 360.0 * k / cfg.preview_views + 45.0, elevation=15.0)
                for k in range(cfg.preview_views)]
        light = torch.tensor([0.3, -0.2, 1.0])
        imgs = [render_image(f, c, cfg.preview_size, background=bg, shading="lambertian", light_dir=light,
                             ambient=cfg.ambient, n_samples=cfg.n_samples, stratified=False,
                             chunk=16384).rgb for c in cams]
        rows.append(torch.cat(imgs, dim=1))
    grid = torch.cat(rows, dim=0).clamp(0, 1)
    return (grid * 255).round().to(torch.uint8).cpu().numpy()


class EmptyFieldError(ValueError):
    """Every particle ended without a surface (its density never crosses the export threshold)."""


def export_particle(field: Representation, cfg: GenerateConfig, folder: Path | None) -> tuple[Any, np.ndarray,
                                                                                              dict[str, Path]]:
    """Mesh (or None if the representation has no surface), turntable frames and written paths of one particle
    (``priorkit.gen3d.asset.export_asset``: a textured GLB / OBJ, a vertex-coloured PLY, a turntable for people)."""
    from priorkit.gen3d.asset import export_asset

    return export_asset(field, cfg, folder)


def run(prompt: str, method: str, guidance_factory: Callable[[], Guidance],
        representation: Callable[[], Representation], device: torch.device, steps: int, seed: int, out: Path | None,
        particles: int, resolution: int, lr: float, preview_every: int, checkpoint_every: int, resume: bool,
        progress: bool, cfg: GenerateConfig, callback: Callable[[int, dict[str, Any]], None] | None,
        t0: float, identity: dict[str, Any] | None = None) -> Result:
    """The loop (see the module docstring) after :func:`~priorkit.gen3d.generate.generate` has checked its inputs.

    ``representation()`` makes one particle (moved to ``device`` here); ``guidance_factory()`` makes the guidance
    after the particles and their optimiser (VSD's LoRA draws its initial weights from the global RNG).
    ``identity``: more settings a checkpoint must match to be resumed (the prior, the guidance scale, ...).
    """
    fields = [representation().to(device) for _ in range(particles)]
    if cfg.background == "white":
        backgrounds: list[Any] = [1.0] * particles
    elif cfg.background == "learned":
        backgrounds = [Background("learned").to(device) for _ in range(particles)]
    else:
        raise ValueError(f"unknown background {cfg.background!r}; use 'white' or 'learned'")
    groups = [f.parameter_groups() for f in fields]
    colour = [p for gr in groups for p in gr.get("appearance", [])]
    other = [p for gr in groups for p in gr.get("geometry", [])]
    other += [p for bg in backgrounds if isinstance(bg, nn.Module) for p in bg.parameters()]
    opt = torch.optim.Adam([{"params": other, "lr_scale": 1.0}, {"params": colour, "lr_scale": cfg.color_lr_scale}],
                           lr=lr, betas=(0.9, 0.99), eps=1e-15)
    guidance = guidance_factory()
    renderers = [Renderer(f, n_samples=cfg.n_samples, scene_radius=cfg.scene_radius, ambient=cfg.ambient,
                          skip_empty=cfg.skip_empty) for f in fields]
    meta = {"prompt": prompt, "method": method, "seed": seed, "particles": particles,
            "field_resolution": cfg.field_resolution, "background": cfg.background,
            "resolution": resolution, "lr": lr, **(identity or {})}  # not steps: a resume may extend a run
    paths: dict[str, list[Path]] = {"previews": [], "checkpoint": []}
    start, history = 0, []
    try:
        if resume:
            ck = find_checkpoint(out)
            if ck is None:
                log.warning("--resume: no checkpoint in %s, starting from scratch", out)
            else:
                start, history = load_checkpoint(ck, fields, backgrounds, opt, guidance, meta)
        g = torch.Generator()
        bar = tqdm(range(start, steps), desc=f"{method} {prompt!r}", initial=start, total=steps,
                   disable=not progress)
        for step in bar:
            g.manual_seed(seed * 1_000_003 + step)  # step k's draws depend on (seed, k) only: exact resume
            torch.manual_seed(seed * 1_000_003 + step)
            for group in opt.param_groups:  # a pure function of the step: nothing to restore on resume
                group["lr"] = lr * group["lr_scale"] * lr_factor(step, steps, cfg.lr_final)
            entry = train_step(step, steps, fields, backgrounds, renderers, guidance, opt, resolution, cfg, g)
            history.append(entry)
            bar.set_postfix(loss=f"{entry['loss']:.3g}")
            preview = None
            if out is not None and preview_every and (step + 1) % preview_every == 0:
                preview = preview_image(fields, cfg, backgrounds)
                paths["previews"].append(_save_png(preview, out / "previews" / f"step_{step + 1:06d}.png"))
            if out is not None and ((checkpoint_every and (step + 1) % checkpoint_every == 0) or step + 1 == steps):
                paths["checkpoint"] = [save_checkpoint(out, step + 1, fields, backgrounds, opt, guidance, history,
                                                       meta)]
            if callback is not None:
                callback(step + 1, {**entry, "fields": fields, "preview": preview})
        nonfinite = [e for e in history if e.get("nonfinite")]
        if nonfinite:  # never silent: counted per step in the history, summed here
            log.warning("%d non-finite %s gradient values set to zero in %d of %d steps (see 'nonfinite' in the "
                        "history)", sum(int(e["nonfinite"]) for e in nonfinite), method.upper(), len(nonfinite),
                        len(history))
        meshes, turntables = [], []
        for key in ("glb", "obj", "ply", "gif", "mtl", "texture"):
            paths[key] = []
        t_export = time.time()
        for i, f in enumerate(fields):
            folder = None if out is None else out / (f"particle{i}" if particles > 1 else "asset")
            mesh, frames, written = export_particle(f, cfg, folder)
            meshes.append(mesh)
            turntables.append(frames)
            for k, p in written.items():
                paths[k].append(p)
        if all(m is None for m in meshes):
            raise EmptyFieldError(f"the field stayed empty after {len(history)} steps, so there is no surface to mesh: "
                                  "try more steps (--resume --steps N continues this run), another seed, or a "
                                  "higher learning rate")
        export_seconds = time.time() - t_export
    finally:
        guidance.close()
    return Result(fields, meshes, turntables, paths, history, time.time() - t0, export_seconds)


def train_step(step: int, steps: int, fields: list[Representation], backgrounds: list[Any],
               renderers: list[Renderer], guidance: Guidance, opt: torch.optim.Optimizer, resolution: int,
               cfg: GenerateConfig, g: torch.Generator) -> dict[str, float]:
    """One optimisation step of all particles (and of the guidance's own parts); returns its log entry."""
    from priorkit.distill.zoo.shapes import random_lights

    progress = step / max(1, steps - 1)
    shading = pick_shading(step, steps, cfg, g)
    images, cameras, reg = [], [], torch.zeros(())
    weights = {"tv": cfg.lambda_tv, "color_tv": guidance.config.lambda_color_tv,
               "voxel_entropy": cfg.lambda_voxel_entropy}
    ramps = {"voxel_entropy": progress}  # the voxel entropy is ramped up linearly over the run
    for f, bg, renderer in zip(fields, backgrounds, renderers, strict=True):
        renderer.update(step)
        cams = random_cameras(guidance.views, g, cfg.elevation_range, azimuth_span(step, steps, cfg))
        lights = random_lights(cams, g)
        k = cfg.supersample  # k x k jittered rays per pixel, box-filtered: the prior sees an anti-aliased render
        img, out = renderer(cams, resolution * k, background=bg, shading=shading, lights=lights, generator=g,
                            compute_normals=cfg.lambda_orientation > 0)
        images.append(torch.nn.functional.avg_pool2d(img, k) if k > 1 else img)
        cameras += cams
        reg = render_terms(reg, out.opacity, out.orientation, sparsity=cfg.lambda_sparsity,
                           entropy=cfg.lambda_entropy, orientation_weight=cfg.lambda_orientation)
        reg = field_terms(reg, f.regularisers(), weights, ramps, g)
    # each particle's guidance weighs as in a run of its own, next to its regularisers
    loss, info = guidance.loss(torch.cat(images), cameras, progress, g, particles=len(fields))
    total = loss + reg
    opt.zero_grad(set_to_none=True)
    total.backward()
    opt.step()
    guidance.step()
    return {"step": step + 1, "loss": float(loss.detach()), "reg": float(reg.detach()), **info,
            "shading": SHADING_NAMES.index(shading)}


def _save_png(image: np.ndarray, path: Path) -> Path:
    from PIL import Image

    with atomic_open(path, "wb") as fh:
        Image.fromarray(image).save(fh, format="PNG")
    return path


__all__ = ["EmptyFieldError", "Result", "SHADING_NAMES", "azimuth_span", "export_particle", "lr_factor",
           "pick_shading", "preview_image",
           "run", "train_step"]
