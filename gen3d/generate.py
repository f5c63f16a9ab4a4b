"""Text-to-3D: the optimisation loop of DreamFusion (SDS) and ProlificDreamer (VSD) with checkpoints and export.

Per step (Poole et al. 2022, sec. 3-4; Wang et al. 2023, Algorithm 1):

1. draw random cameras (``priorkit.distill.core.cameras.random_cameras``, the prior's convention) for every particle;
2. render every particle field from its cameras (``priorkit.gen3d.renderer``), over a white background; shading is
albedo
   for a warm-up, then randomly albedo / Lambertian / textureless under a random light (DreamFusion sec. 3.1);
3. SDS or VSD loss of the renders under view-dependent prompts ("a red cube, side view"), plus regularisers that
   keep empty space empty and opacity binary (no fog):
   L_reg = l_sparsity mean(o) + l_entropy mean(H(o)) + l_orient mean(orientation) + l_tv TV(grid)
           + l_color_tv TV(colour grid) + l_voxel (k / K) mean_v H(1 - exp(-sigma_v h)),
   with o the ray opacity, H the binary entropy, h the voxel edge and k / K the progress of the run;
4. one Adam step of the fields (lr cosine-decayed, a pure function of the step) and for VSD one AdamW step of
   the LoRA.

Every ``checkpoint_every`` steps the fields, the LoRA and the optimiser states go to ``out/checkpoint``
(safetensors + json); ``resume=True`` continues exactly: the random draws of step k depend only on (seed, k).
At the end each particle is exported (``priorkit.gen3d.export``): mesh.glb / mesh.obj / mesh.ply and turntable.gif.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from priorkit.distill.core.atomic import atomic_open
from priorkit.distill.core.cameras import ELEVATION_RANGE, Camera, random_cameras
from priorkit.distill.core.denoiser import Denoiser
from priorkit.gen3d.field import Background, VoxelField
from priorkit.gen3d.renderer import make_estimator, render, render_image, render_turntable, update_estimator
from priorkit.gen3d.sds import SDS, SDSConfig
from priorkit.gen3d.vsd import VSD, VSDConfig

log = logging.getLogger(__name__)

METHODS = ("sds", "vsd")
SHADING_NAMES = ("albedo", "lambertian", "textureless")
MAX_STEPS = 100_000
RESOLUTION_RANGE = (8, 512)
MAX_PARTICLES = 32
LONGEST_VIEW_SUFFIX = ", overhead view"


@dataclass
class GenerateConfig:
    """Defaults of the text-to-3D loop (chosen with the bundled 32x32 "shapes" prior on a CPU).

    steps / vsd_steps / resolution / lr: optimisation steps of SDS and of VSD (whose four particles and LoRA need
    more to settle, see BENCHMARKS.md), render side in pixels, Adam lr of the voxel logits, decayed
    by a cosine to ``lr_final * lr`` at the end; colour parameters use ``color_lr_scale * lr`` (a slower albedo
    makes the prior's gradient carve geometry instead of painting it, e.g. a torus' hole).
    views: rendered views per step (SDS; VSD renders ``vsd.views_per_particle`` views of each particle).
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
    colour TV, and the voxel-opacity entropy (ramped up linearly over the run; see :func:`voxel_entropy`);
    ``vsd_lambda_color_tv`` is VSD's colour TV (its particles paint speckled albedo that the judge reads as
    shading; see BENCHMARKS.md).
    export_resolution, turntable_*: mesh and GIF export. preview_*: preview images.
    """

    steps: int = 500
    vsd_steps: int = 800
    resolution: int = 32
    views: int = 4
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
    lambda_color_tv: float = 0.0
    vsd_lambda_color_tv: float = 1.0
    export_resolution: int = 128
    turntable_frames: int = 24
    turntable_size: int = 64
    preview_views: int = 4
    preview_size: int = 64
    sds: SDSConfig = field(default_factory=SDSConfig)
    vsd: VSDConfig = field(default_factory=VSDConfig)

    def steps_for(self, method: str) -> int:
        """The default number of optimisation steps of ``method`` ("sds" or "vsd")."""
        return self.vsd_steps if method == "vsd" else self.steps


@dataclass
class Result:
    """What :func:`generate` returns.

    fields: the optimised particle fields; meshes: their exported meshes (None where the density never crossed
    the threshold); turntables: uint8 frames (T, H, W, 3) per particle; paths: written files by kind
    ("glb", "obj", "ply", "gif": one per particle; "previews"; "checkpoint"); history: per-step losses.
    """

    fields: list[nn.Module]
    meshes: list[Any]
    turntables: list[np.ndarray]
    paths: dict[str, list[Path]]
    history: list[dict[str, float]]
    seconds: float


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


# ---------------------------------------------------------------------------------------------------------------------
# rendering
# ---------------------------------------------------------------------------------------------------------------------


def render_views(field_: nn.Module, cameras: list[Camera], size: int, *, background: Any, shading: str,
                 lights: Tensor | None, ambient: float, n_samples: int, generator: torch.Generator | None = None,
                 jitter: bool = True, estimator: Any = None, compute_normals: bool = False,
                 scene_radius: float | None = None) -> tuple[Tensor, Any]:
    """Render ``cameras`` (B of them) at ``size`` in one call: images (B, 3, S, S) in [0, 1] and the RenderOutput.

    ``lights`` (B, 3) are directions towards the light per view (None: headlight); ``jitter`` moves each ray
    uniformly inside its pixel (anti-aliasing) and each sample inside its depth bin, drawn from ``generator``
    (False: pixel centres and bin midpoints, a deterministic render); normals and the orientation map are
    computed when shading needs them or ``compute_normals``. ``scene_radius`` limits the samples to the span of
    each ray within that distance of the origin's depth band, [distance - r, distance + r] (None: the whole box).
    """
    device = next(iter(list(field_.parameters()) + list(field_.buffers()))).device
    origins, dirs = [], []
    for cam in cameras:
        j = torch.rand(size, size, 2, generator=generator) - 0.5 if jitter else None
        o, d = cam.rays(size, size, jitter=j)
        origins.append(o)
        dirs.append(d)
    o, d = torch.stack(origins).to(device), torch.stack(dirs).to(device)  # (B, S, S, 3)
    light = None if lights is None else lights.to(device)[:, None, None, :].expand_as(d)
    near, far = 0.0, 1e4
    if scene_radius is not None:
        dist = [c.distance for c in cameras]
        near, far = max(0.0, min(dist) - scene_radius), max(dist) + scene_radius
    out = render(field_, o, d, near=near, far=far, n_samples=n_samples, background=background, shading=shading,
                 light_dir=light, ambient=ambient, generator=generator if device.type == "cpu" else None,
                 estimator=estimator, compute_normals=compute_normals, stratified=jitter)
    return out.rgb.permute(0, 3, 1, 2), out


def _binary_entropy(o: Tensor) -> Tensor:
    o = o.clamp(1e-5, 1 - 1e-5)
    return -(o * torch.log(o) + (1 - o) * torch.log(1 - o))  # H(o)


def colour_tv(logits: Tensor) -> Tensor:
    """Total variation of a colour grid (C, R, R, R): mean squared difference of neighbours, summed over axes."""
    return sum(logits.diff(dim=d).square().mean() for d in (1, 2, 3))


def lr_factor(step: int, steps: int, final: float) -> float:
    """Cosine decay of the learning rate from 1 at step 0 to ``final`` at the last step."""
    p = step / max(1, steps - 1)
    return final + (1.0 - final) * 0.5 * (1.0 + math.cos(math.pi * p))


def voxel_entropy(field_: nn.Module, n_points: int = 32768, generator: torch.Generator | None = None) -> Tensor:
    """Mean binary entropy of the opacity of one voxel, H(1 - exp(-sigma h)), over the field: () tensor.

    It pushes every voxel to empty or solid (no fog, sharp surfaces), with the switch at sigma = ln 2 / h, the
    level that ``priorkit.gen3d.export`` meshes. VoxelField: exact, over its vertices; other fields: at ``n_points``
    uniform random points of the box.
    """
    h = float(torch.as_tensor(getattr(field_, "voxel_size", torch.full((3,), 2.0 / 63))).float().mean())
    if isinstance(field_, VoxelField):
        from priorkit.gen3d.field import density_activation

        sigma = density_activation(field_.density_logits, field_.activation)
    else:
        device = next(iter(field_.parameters())).device
        x = torch.rand(n_points, 3, generator=generator).to(device) * 2 - 1
        sigma = field_.density(x)
    return _binary_entropy(-torch.expm1(-sigma * h)).mean()  # a = 1 - exp(-sigma h)


def azimuth_span(step: int, steps: int, cfg: GenerateConfig) -> float:
    """Azimuth range of the training cameras at ``step``: ``azimuth_start`` degrees around the front, widened
    linearly to the full circle over the first ``azimuth_warmup`` of the run (threestudio's progressive camera
    range). A shape whose look depends on the camera's azimuth (a cube) settles on one orientation while few
    views constrain it, instead of a rotational average of the orientations each view prefers."""
    end = cfg.azimuth_warmup * steps
    if step >= end:
        return 360.0
    return cfg.azimuth_start + (360.0 - cfg.azimuth_start) * step / end


def _pick_shading(step: int, steps: int, cfg: GenerateConfig, g: torch.Generator) -> str:
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


# ---------------------------------------------------------------------------------------------------------------------
# checkpoints
# ---------------------------------------------------------------------------------------------------------------------


def _optimizer_tensors(opt: torch.optim.Optimizer, prefix: str) -> tuple[dict[str, Tensor], dict[str, Any]]:
    sd = opt.state_dict()
    tensors, scalars = {}, {"param_groups": sd["param_groups"], "state": {}}
    for idx, st in sd["state"].items():
        for k, v in st.items():
            if isinstance(v, Tensor):
                tensors[f"{prefix}.{idx}.{k}"] = v.detach().contiguous()
            else:
                scalars["state"].setdefault(str(idx), {})[k] = v
    return tensors, scalars


def _load_optimizer(opt: torch.optim.Optimizer, tensors: dict[str, Tensor], scalars: dict[str, Any],
                    prefix: str) -> None:
    state: dict[int, dict[str, Any]] = {}
    for key, v in tensors.items():
        if key.startswith(prefix + "."):
            idx, name = key[len(prefix) + 1:].split(".", 1)
            state.setdefault(int(idx), {})[name] = v
    for idx, st in scalars["state"].items():
        state.setdefault(int(idx), {}).update(st)
    opt.load_state_dict({"state": state, "param_groups": scalars["param_groups"]})


def _identity(prompt: str, method: str, seed: int, particles: int, cfg: GenerateConfig) -> dict[str, Any]:
    return {"prompt": prompt, "method": method, "seed": seed, "particles": particles,
            "field_resolution": cfg.field_resolution, "background": cfg.background}


def save_checkpoint(folder: Path, step: int, fields: list[nn.Module], backgrounds: list[Any],
                    opt: torch.optim.Optimizer, vsd: VSD | None, history: list[dict[str, float]],
                    meta: dict[str, Any]) -> Path:
    """Write ``folder/checkpoint/{state.safetensors, state.json}`` atomically (tmp folder, then rename)."""
    from safetensors.torch import save_file

    tensors: dict[str, Tensor] = {}
    for i, (f, bg) in enumerate(zip(fields, backgrounds, strict=True)):
        tensors.update({f"field{i}.{k}": v.detach().contiguous() for k, v in f.state_dict().items()})
        if isinstance(bg, nn.Module):
            tensors.update({f"background{i}.{k}": v.detach().contiguous() for k, v in bg.state_dict().items()})
    opt_t, opt_s = _optimizer_tensors(opt, "opt.fields")
    tensors.update(opt_t)
    info: dict[str, Any] = {"step": step, "history": history, "optimizer": opt_s, "meta": meta}
    if vsd is not None:
        tensors.update({f"lora.{k}": v.contiguous() for k, v in vsd.state_dict().items()})
        lt, ls = _optimizer_tensors(vsd.optimizer, "opt.lora")
        tensors.update(lt)
        info["lora_optimizer"] = ls
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".checkpoint.tmp{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_file({k: v.cpu() for k, v in tensors.items()}, str(tmp / "state.safetensors"))
    (tmp / "state.json").write_text(json.dumps(info))
    final, old = folder / "checkpoint", folder / ".checkpoint.old"
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        final.rename(old)
    tmp.rename(final)
    shutil.rmtree(old, ignore_errors=True)
    return final


def _find_checkpoint(folder: Path) -> Path | None:
    for ck in (folder / "checkpoint", folder / ".checkpoint.old"):  # .old: killed between the two renames
        if (ck / "state.safetensors").is_file() and (ck / "state.json").is_file():
            return ck
    return None


def load_checkpoint(ck: Path, fields: list[nn.Module], backgrounds: list[Any], opt: torch.optim.Optimizer,
                    vsd: VSD | None, meta: dict[str, Any]) -> tuple[int, list[dict[str, float]]]:
    """Restore a checkpoint written by :func:`save_checkpoint`; returns (step, history)."""
    from safetensors.torch import load_file

    from priorkit.distill.score.lora import load_lora_state_dict

    info = json.loads((ck / "state.json").read_text())
    if info["meta"] != meta:
        raise ValueError(f"the checkpoint in {ck} belongs to another run: {info['meta']} != {meta}")
    tensors = load_file(str(ck / "state.safetensors"))
    for i, (f, bg) in enumerate(zip(fields, backgrounds, strict=True)):
        p = f"field{i}."
        f.load_state_dict({k[len(p):]: v for k, v in tensors.items() if k.startswith(p)})
        if isinstance(bg, nn.Module):
            p = f"background{i}."
            bg.load_state_dict({k[len(p):]: v for k, v in tensors.items() if k.startswith(p)})
    _load_optimizer(opt, tensors, info["optimizer"], "opt.fields")
    if vsd is not None:
        load_lora_state_dict(vsd.unet, {k[5:]: v for k, v in tensors.items() if k.startswith("lora.")})
        _load_optimizer(vsd.optimizer, tensors, info["lora_optimizer"], "opt.lora")
    return int(info["step"]), list(info["history"])


# ---------------------------------------------------------------------------------------------------------------------
# export
# ---------------------------------------------------------------------------------------------------------------------


def export_particle(field_: nn.Module, cfg: GenerateConfig, folder: Path | None) -> tuple[Any, np.ndarray,
                                                                                          dict[str, Path]]:
    """Mesh (or None if the field is empty), turntable frames and written paths of one particle."""
    from priorkit.gen3d.export import extract_mesh, save_mesh, save_turntable_gif

    try:
        mesh = extract_mesh(field_, resolution=cfg.export_resolution)
    except ValueError as e:
        log.warning("no mesh for this particle: %s", e)
        mesh = None
    frames = render_turntable(field_, n_frames=cfg.turntable_frames, size=cfg.turntable_size,
                              background=1.0, n_samples=cfg.n_samples, shading="lambertian",
                              light_dir=torch.tensor([0.3, -0.2, 1.0]), ambient=cfg.ambient)
    paths: dict[str, Path] = {}
    if folder is not None:
        if mesh is not None:
            for ext in ("glb", "obj", "ply"):
                paths[ext] = save_mesh(mesh, folder / f"mesh.{ext}")
        paths["gif"] = save_turntable_gif(frames, folder / "turntable.gif")
    return mesh, frames, paths


# ---------------------------------------------------------------------------------------------------------------------
# the loop
# ---------------------------------------------------------------------------------------------------------------------


def _load_prior(prior: str | Path | Denoiser) -> Denoiser:
    if isinstance(prior, Denoiser):
        return prior
    from priorkit.distill.loading import load_denoiser

    return load_denoiser(prior)


def generate(prompt: str, method: str = "sds", prior: str | Path | Denoiser = "shapes", steps: int | None = None,
             seed: int = 0, out: str | Path | None = None, particles: int | None = None,
             resolution: int | None = None, guidance: float | None = None, lr: float | None = None,
             preview_every: int = 0, checkpoint_every: int = 0, resume: bool = False, progress: bool = True,
             config: GenerateConfig | None = None,
             callback: Callable[[int, dict[str, Any]], None] | None = None) -> Result:
    """Text-to-3D with SDS or VSD; see the module docstring for the loop.

    Args:
        prompt: the text, e.g. "a red cube" (the view suffix is added per camera).
        method: "sds" (DreamFusion) or "vsd" (ProlificDreamer).
        prior: a bundled name ("shapes"), a diffusers folder, a hub id, or a loaded text-to-image ``Denoiser``.
        steps, resolution, lr: override ``config`` (defaults in :class:`GenerateConfig`).
        seed: everything random derives from it; the same seed gives the same result.
        out: folder for previews, checkpoints and exports (None: nothing is written).
        particles: fields optimised together (default 1 for SDS, 4 for VSD; SDS particles are independent).
        guidance: CFG scale of the pretrained prior (default ``config.sds/vsd.guidance_scale``).
        preview_every / checkpoint_every: every N steps (0: never; a checkpoint is also written at the end).
        resume: continue from ``out/checkpoint`` (same prompt, method, seed, particles) exactly.
        callback: called after every step with (step, {"loss", "fields", "preview" (uint8 image or None), ...}).

    Raises:
        ValueError: empty or too long prompt, unknown method or prior, steps / resolution / particles / guidance /
            lr out of range, unwritable ``out``, ``resume`` without ``out``, or a checkpoint of another run.
    """
    cfg = config or GenerateConfig()
    steps = cfg.steps_for(method) if steps is None else steps
    resolution = cfg.resolution if resolution is None else resolution
    lr = cfg.lr if lr is None else lr
    particles = (1 if method == "sds" else 4) if particles is None else particles
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
    guide_cfg = cfg.sds if method == "sds" else cfg.vsd
    if guidance is not None:
        guide_cfg = type(guide_cfg)(**{**guide_cfg.__dict__, "guidance_scale": float(guidance)})
    _check_prompt_length(den, prompt, guide_cfg.view_dependent)

    t0 = time.time()
    with torch.random.fork_rng(devices=[]):  # the global RNG (LoRA init, VAE sampling) is seeded and restored
        torch.manual_seed(seed)
        return _run(prompt, method, den, steps, seed, out_dir, particles, resolution, lr, guide_cfg, preview_every,
                    checkpoint_every, resume, progress, cfg, callback, t0)


def _run(prompt: str, method: str, den: Denoiser, steps: int, seed: int, out: Path | None, particles: int,
         resolution: int, lr: float, guide_cfg: SDSConfig | VSDConfig, preview_every: int, checkpoint_every: int,
         resume: bool, progress: bool, cfg: GenerateConfig,
         callback: Callable[[int, dict[str, Any]], None] | None, t0: float) -> Result:
    device = next(den.parameters()).device
    fields = [VoxelField(cfg.field_resolution, blob_density=cfg.blob_density, blob_radius=cfg.blob_radius,
                         activation=cfg.density_activation).to(device) for _ in range(particles)]
    if cfg.background == "white":
        backgrounds: list[Any] = [1.0] * particles
    elif cfg.background == "learned":
        backgrounds = [Background("learned").to(device) for _ in range(particles)]
    else:
        raise ValueError(f"unknown background {cfg.background!r}; use 'white' or 'learned'")
    colour = [p for f in fields for n, p in f.named_parameters() if "color" in n]
    other = [p for f in fields for n, p in f.named_parameters() if "color" not in n]
    other += [p for bg in backgrounds if isinstance(bg, nn.Module) for p in bg.parameters()]
    opt = torch.optim.Adam([{"params": other, "lr_scale": 1.0}, {"params": colour, "lr_scale": cfg.color_lr_scale}],
                           lr=lr, betas=(0.9, 0.99), eps=1e-15)
    guidance = SDS(den, prompt, guide_cfg) if method == "sds" else VSD(den, prompt, guide_cfg)
    vsd = guidance if isinstance(guidance, VSD) else None
    estimators = [make_estimator(f, device) for f in fields] if device.type == "cuda" else [None] * particles
    meta = _identity(prompt, method, seed, particles, cfg)
    paths: dict[str, list[Path]] = {"previews": [], "checkpoint": []}
    start, history = 0, []
    try:
        if resume:
            ck = _find_checkpoint(out)
            if ck is None:
                log.warning("no checkpoint in %s: starting from scratch", out)
            else:
                start, history = load_checkpoint(ck, fields, backgrounds, opt, vsd, meta)
        views = cfg.vsd.views_per_particle if method == "vsd" else cfg.views
        g = torch.Generator()
        bar = tqdm(range(start, steps), desc=f"{method} {prompt!r}", initial=start, total=steps,
                   disable=not progress)
        for step in bar:
            g.manual_seed(seed * 1_000_003 + step)  # step k's draws depend on (seed, k) only: exact resume
            torch.manual_seed(seed * 1_000_003 + step)
            for group in opt.param_groups:  # a pure function of the step: nothing to restore on resume
                group["lr"] = lr * group["lr_scale"] * lr_factor(step, steps, cfg.lr_final)
            entry = _step(step, steps, fields, backgrounds, estimators, guidance, opt, views, resolution, cfg, g)
            history.append(entry)
            bar.set_postfix(loss=f"{entry['loss']:.3g}")
            preview = None
            if out is not None and preview_every and (step + 1) % preview_every == 0:
                preview = preview_image(fields, cfg, backgrounds)
                paths["previews"].append(_save_png(preview, out / "previews" / f"step_{step + 1:06d}.png"))
            if out is not None and ((checkpoint_every and (step + 1) % checkpoint_every == 0) or step + 1 == steps):
                ck = save_checkpoint(out, step + 1, fields, backgrounds, opt, vsd, history, meta)
                paths["checkpoint"] = [ck]
            if callback is not None:
                callback(step + 1, {**entry, "fields": fields, "preview": preview})
        meshes, turntables = [], []
        for key in ("glb", "obj", "ply", "gif"):
            paths[key] = []
        for i, f in enumerate(fields):
            folder = None if out is None else out / (f"particle{i}" if particles > 1 else "asset")
            mesh, frames, written = export_particle(f, cfg, folder)
            meshes.append(mesh)
            turntables.append(frames)
            for k, p in written.items():
                paths[k].append(p)
    finally:
        if vsd is not None:
            vsd.close()
    return Result(fields, meshes, turntables, paths, history, time.time() - t0)


def _step(step: int, steps: int, fields: list[nn.Module], backgrounds: list[Any], estimators: list[Any],
          guidance: SDS | VSD, opt: torch.optim.Optimizer, views: int, resolution: int, cfg: GenerateConfig,
          g: torch.Generator) -> dict[str, float]:
    """One optimisation step of all particles (and the LoRA for VSD); returns its log entry."""
    from priorkit.distill.zoo.shapes import random_lights

    progress = step / max(1, steps - 1)
    shading = _pick_shading(step, steps, cfg, g)
    images, cameras, reg = [], [], torch.zeros(())
    lambda_color_tv = cfg.vsd_lambda_color_tv if isinstance(guidance, VSD) else cfg.lambda_color_tv
    for f, bg, est in zip(fields, backgrounds, estimators, strict=True):
        if est is not None:
            update_estimator(est, f, step)
        cams = random_cameras(views, g, cfg.elevation_range, azimuth_span(step, steps, cfg))
        lights = random_lights(cams, g)
        img, out = render_views(f, cams, resolution, background=bg, shading=shading, lights=lights,
                                ambient=cfg.ambient, n_samples=cfg.n_samples, generator=g, estimator=est,
                                compute_normals=cfg.lambda_orientation > 0, scene_radius=cfg.scene_radius)
        images.append(img)
        cameras += cams
        o = out.opacity
        reg = reg + cfg.lambda_sparsity * o.mean() + cfg.lambda_entropy * _binary_entropy(o).mean()
        if cfg.lambda_orientation and out.orientation is not None:
            reg = reg + cfg.lambda_orientation * out.orientation.mean()
        if cfg.lambda_tv and hasattr(f, "tv_loss"):
            reg = reg + cfg.lambda_tv * f.tv_loss()
        if lambda_color_tv and hasattr(f, "color_logits"):
            reg = reg + lambda_color_tv * colour_tv(f.color_logits)
        if cfg.lambda_voxel_entropy:
            reg = reg + cfg.lambda_voxel_entropy * progress * voxel_entropy(f, generator=g)  # ramped up linearly
    # each particle's guidance weighs as in a run of its own, next to its regularisers
    loss, info = guidance.loss(torch.cat(images), cameras, progress, g, particles=len(fields))
    total = loss + reg
    opt.zero_grad(set_to_none=True)
    total.backward()
    opt.step()
    if isinstance(guidance, VSD):
        guidance.step()
    return {"step": step + 1, "loss": float(loss.detach()), "reg": float(reg.detach()), **info,
            "shading": SHADING_NAMES.index(shading)}


def _save_png(image: np.ndarray, path: Path) -> Path:
    from PIL import Image

    with atomic_open(path, "wb") as fh:
        Image.fromarray(image).save(fh, format="PNG")
    return path


__all__ = ["GenerateConfig", "Result", "export_particle", "generate", "preview_image", "render_views", "validate"]
