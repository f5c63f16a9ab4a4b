"""Volume rendering of radiance fields with nerfacc (sampling separate from compositing).

``render`` is a pure function of ray tensors and a field (anything with ``query``/``forward``/``density``, see
``gen3d/field.py``). Two sampling paths share the same shading and compositing:

* CPU (and CUDA without an estimator): ``n_samples`` stratified samples per ray between the ray's entry and exit
  of the scene box [-1, 1]^3, batched ``(n_rays, n_samples)`` weights from
  ``nerfacc.render_weight_from_density`` and sums from ``nerfacc.accumulate_along_rays``.
* CUDA with an ``nerfacc.OccGridEstimator``: occupancy-grid ray marching (``estimator.sampling``) and packed
  ``nerfacc.rendering``; keep the grid fresh with :func:`update_estimator` during training.

Colour is composited over the background: ``rgb = sum_i w_i c_i + (1 - opacity) * bg`` (Max 1995 / NeRF eq. 3).
:class:`Renderer` is what the text-to-3D loop holds per particle: both paths behind one call on a list of cameras,
with the estimator made and refreshed only where it is used (CUDA).
Cameras follow ``distill/zoo/cameras.py`` (z up, distance 2.5, fov 40).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import nerfacc
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from priorkit.distill.core.cameras import Camera
from priorkit.gen3d.occupancy import OccupancyGrid

BOX_MIN, BOX_MAX = -1.0, 1.0
SHADINGS = ("albedo", "lambertian", "textureless")
NORMAL_WEIGHT_EPS = 1e-5  # stratified path: samples with smaller weight get no normal (their shading is invisible)
BackgroundLike = nn.Module | Callable[[Tensor], Tensor] | Tensor | float | Sequence[float] | None


@dataclass
class RenderOutput:
    """Rendered quantities for rays of batch shape ``...`` (e.g. (H, W) or (N,)).

    rgb (..., 3): colour composited over the background. opacity (..., 1): accumulated weight sum_i w_i.
    depth (..., 1): expected termination distance given termination, sum_i w_i t_i / opacity (0 for empty rays).
    normal (..., 3) or None: weight-averaged world normal sum_i w_i n_i (not renormalised; zero where empty).
    orientation (..., 1) or None: DreamFusion orientation penalty per ray, sum_i stopgrad(w_i) max(0, n_i . d)^2.
    """

    rgb: Tensor
    opacity: Tensor
    depth: Tensor
    normal: Tensor | None = None
    orientation: Tensor | None = None

    def reshape(self, *shape: int) -> RenderOutput:
        """The same output with batch shape ``shape`` (the channel axis is kept)."""
        def r(t: Tensor | None) -> Tensor | None:
            return None if t is None else t.reshape(*shape, t.shape[-1])
        return RenderOutput(r(self.rgb), r(self.opacity), r(self.depth), r(self.normal), r(self.orientation))


def ray_box_intersection(origins: Tensor, directions: Tensor, box_min: float = BOX_MIN,
                         box_max: float = BOX_MAX) -> tuple[Tensor, Tensor]:
    """Entry and exit distances of rays through the cube [box_min, box_max]^3 (slab method, Kay & Kajiya 1986).

    origins, directions: (N, 3). Returns t_near, t_far: (N,); the ray misses the box where t_far <= t_near.
    """
    eps = max(1e-12, torch.finfo(directions.dtype).tiny)  # 1e-12 is 0 in half precision: 0 / 0 in the gradient
    d = torch.where(directions.abs() < eps, torch.full_like(directions, eps), directions)
    t1, t2 = (box_min - origins) / d, (box_max - origins) / d
    return torch.minimum(t1, t2).amax(dim=-1), torch.maximum(t1, t2).amin(dim=-1)


def query_field(field: nn.Module, x: Tensor, with_normal: bool) -> tuple[Tensor, Tensor, Tensor | None]:
    """Colour (N, 3), density (N,) and outward normal (N, 3) or None of ``field`` at x (N, 3), in x's dtype.

    The field is asked at least in its parameters' precision: half-precision rays render a float32 field, and float64
    rays keep float64 for a field that computes in its input's dtype (an analytic field, a voxel grid that casts its
    samples itself); a float32 MLP given float64 rays raises torch's dtype error, as its layers would."""
    xf = x.to(_field_dtype(field, x))
    if hasattr(field, "query"):
        rgb, sigma, normal = field.query(xf, with_normal=with_normal)
    else:
        rgb, sigma = field(xf)
        normal = field.normal(xf) if with_normal else None
    return rgb.to(x.dtype), sigma.to(x.dtype), None if normal is None else normal.to(x.dtype)


def _field_dtype(field: nn.Module, x: Tensor) -> torch.dtype:
    """x's dtype promoted with the field's first floating-point parameter's (x's own when it has none)."""
    own = next((p.dtype for p in field.parameters() if p.is_floating_point()), x.dtype)
    return torch.promote_types(x.dtype, own)


def shade(albedo: Tensor, normal: Tensor | None, light: Tensor, shading: str, ambient: float) -> Tensor:
    """Per-sample colour (N, 3) from albedo (N, 3), normal (N, 3) and unit light direction (N, 3).

    "albedo": the albedo; "lambertian": albedo * (ambient + (1 - ambient) max(0, n . l)) (DreamFusion eq. 5);
    "textureless": the same with a white albedo.
    """
    if shading == "albedo":
        return albedo
    if shading == "textureless":
        albedo = torch.ones_like(albedo)
    diffuse = (normal * light).sum(-1, keepdim=True).clamp_min(0.0)  # Lambert's cosine law
    return albedo * (ambient + (1.0 - ambient) * diffuse)


def _background_colour(background: BackgroundLike, directions: Tensor) -> Tensor:
    """Background colour (N, 3) for rays with directions (N, 3); None means black (premultiplied output)."""
    n = directions.shape[0]
    if background is None:
        return directions.new_zeros(n, 3)
    if isinstance(background, (int, float)):
        return directions.new_full((n, 3), float(background))
    if isinstance(background, Tensor) or isinstance(background, (tuple, list)):
        bg = torch.as_tensor(background, dtype=directions.dtype, device=directions.device)
        return bg.expand(n, 3) if bg.numel() == 3 else bg.reshape(n, 3)
    return background(directions)


def _light_directions(light_dir: Tensor | Sequence[float] | None, directions: Tensor) -> Tensor:
    """Unit directions towards the light (N, 3): given (3,) or (..., 3), or a headlight (-ray direction)."""
    if light_dir is None:
        return -directions
    light = torch.as_tensor(light_dir, dtype=directions.dtype, device=directions.device)
    light = light.expand(directions.shape[0], 3) if light.numel() == 3 else light.reshape(-1, 3)
    return F.normalize(light, dim=-1, eps=1e-12)


def _render_stratified(field: nn.Module, o: Tensor, d: Tensor, light: Tensor, bg: Tensor, *, near: float, far: float,
                       n_samples: int, shading: str, ambient: float, need_normals: bool, stratified: bool,
                       generator: torch.Generator | None, occupancy: OccupancyGrid | None = None) -> RenderOutput:
    """Batched quadrature on (n_rays, n_samples) bins inside the box; o, d, light, bg (N, 3) -> (N, C) outputs.
    With ``occupancy`` the field is queried only at samples in occupied cells (density 0 elsewhere)."""
    n = o.shape[0]
    t_near, t_far = ray_box_intersection(o, d)
    t_near, t_far = t_near.clamp_min(near), t_far.clamp_max(far)
    idx = (t_far > t_near).nonzero().squeeze(1)  # rays that cross the box; the others stay empty
    out = RenderOutput(o.new_zeros(n, 3), o.new_zeros(n, 1), o.new_zeros(n, 1),
                       o.new_zeros(n, 3) if need_normals else None, o.new_zeros(n, 1) if need_normals else None)
    m = idx.numel()
    if m == 0:
        out.rgb = bg.clone()
        return out
    oh, dh, lh, a, b = o[idx], d[idx], light[idx], t_near[idx], t_far[idx]
    edges = a[:, None] + (b - a)[:, None] * torch.linspace(0.0, 1.0, n_samples + 1, device=o.device, dtype=o.dtype)
    t_starts, t_ends = edges[:, :-1].contiguous(), edges[:, 1:].contiguous()  # (M, S)
    if stratified:  # one uniform sample per bin (stratified sampling, NeRF eq. 2)
        frac = torch.rand(m, n_samples, generator=generator, dtype=o.dtype, device=o.device)
    else:
        frac = torch.full((m, n_samples), 0.5, dtype=o.dtype, device=o.device)
    t_mid = t_starts + frac * (t_ends - t_starts)
    x = (oh[:, None, :] + dh[:, None, :] * t_mid[..., None]).reshape(-1, 3)
    if occupancy is None:
        albedo, sigma, _ = query_field(field, x, False)
    else:  # empty-space skipping: the field at the occupied samples only (gen3d/occupancy.py bounds the rest)
        kept = occupancy.occupied(x).nonzero().squeeze(1)
        albedo, sigma = x.new_zeros(x.shape[0], 3), x.new_zeros(x.shape[0])
        if kept.numel():
            a_kept, s_kept, _ = query_field(field, x[kept], False)
            albedo, sigma = albedo.index_copy(0, kept, a_kept), sigma.index_copy(0, kept, s_kept)
    # w_i = T_i (1 - exp(-sigma_i delta_i)), T_i = exp(-sum_{j<i} sigma_j delta_j) (NeRF eq. 3)
    weights, _, _ = nerfacc.render_weight_from_density(t_starts, t_ends, sigma.reshape(m, n_samples))
    normal = None
    if need_normals:  # normals only where they can matter: the shading of a sample enters the pixel times w_i
        keep = (weights.detach().reshape(-1) > NORMAL_WEIGHT_EPS).nonzero().squeeze(1)
        normal = x.new_zeros(x.shape[0], 3)
        if keep.numel():
            normal = normal.index_copy(0, keep, field.normal(x[keep].to(_field_dtype(field, x))).to(x.dtype))
    colour = shade(albedo, normal, lh[:, None, :].expand(m, n_samples, 3).reshape(-1, 3), shading, ambient)
    rgb = nerfacc.accumulate_along_rays(weights, colour.reshape(m, n_samples, 3))
    opacity = nerfacc.accumulate_along_rays(weights, None)
    depth = nerfacc.accumulate_along_rays(weights, t_mid[..., None]) / opacity.clamp_min(1e-10)
    out.rgb, out.opacity, out.depth = (t.index_copy(0, idx, v) for t, v in
                                       ((out.rgb, rgb), (out.opacity, opacity), (out.depth, depth)))
    if need_normals:
        normal = normal.reshape(m, n_samples, 3)
        out.normal = out.normal.index_copy(0, idx, nerfacc.accumulate_along_rays(weights, normal))
        facing = (normal * dh[:, None, :]).sum(-1, keepdim=True).clamp_min(0.0).square()
        out.orientation = out.orientation.index_copy(0, idx, nerfacc.accumulate_along_rays(weights.detach(), facing))
    out.rgb = out.rgb + (1.0 - out.opacity) * bg  # over operator onto the background
    return out


def _render_occgrid(field: nn.Module, o: Tensor, d: Tensor, light: Tensor, bg: Tensor,
                    estimator: nerfacc.OccGridEstimator, *, near: float, far: float, render_step_size: float,
                    shading: str, ambient: float, need_normals: bool, stratified: bool) -> RenderOutput:
    """Occupancy-grid ray marching and packed compositing (CUDA); o, d, light, bg (N, 3) -> (N, C) outputs."""
    n = o.shape[0]

    def points(t_starts: Tensor, t_ends: Tensor, ray_indices: Tensor) -> Tensor:
        return o[ray_indices] + d[ray_indices] * ((t_starts + t_ends) / 2)[:, None]  # interval midpoints (K, 3)

    def sigma_fn(t_starts: Tensor, t_ends: Tensor, ray_indices: Tensor) -> Tensor:
        x = points(t_starts, t_ends, ray_indices)
        return field.density(x.to(_field_dtype(field, x))).to(x.dtype)  # (K,), used to skip occluded samples

    ray_indices, t_starts, t_ends = estimator.sampling(o, d, sigma_fn=sigma_fn, near_plane=near, far_plane=far,
                                                       render_step_size=render_step_size, stratified=stratified)
    cache: dict[str, Tensor] = {}

    def rgb_sigma_fn(t_starts: Tensor, t_ends: Tensor, ray_indices: Tensor) -> tuple[Tensor, Tensor]:
        albedo, sigma, normal = query_field(field, points(t_starts, t_ends, ray_indices), need_normals)
        if normal is not None:
            cache["normal"] = normal
        return shade(albedo, normal, light[ray_indices], shading, ambient), sigma

    rgb, opacity, depth, extras = nerfacc.rendering(t_starts, t_ends, ray_indices, n_rays=n,
                                                    rgb_sigma_fn=rgb_sigma_fn, render_bkgd=bg)
    out = RenderOutput(rgb, opacity, depth)
    if need_normals:
        out.normal, out.orientation = o.new_zeros(n, 3), o.new_zeros(n, 1)
        if "normal" in cache:
            w, nrm = extras["weights"], cache["normal"]
            out.normal = nerfacc.accumulate_along_rays(w, nrm, ray_indices=ray_indices, n_rays=n)
            facing = (nrm * d[ray_indices]).sum(-1, keepdim=True).clamp_min(0.0).square()
            out.orientation = nerfacc.accumulate_along_rays(w.detach(), facing, ray_indices=ray_indices, n_rays=n)
    return out


def render(field: nn.Module, origins: Tensor, directions: Tensor, *, near: float = 0.0, far: float = 1e4,
           n_samples: int = 64, background: BackgroundLike = None, shading: str = "albedo",
           light_dir: Tensor | Sequence[float] | None = None, ambient: float = 0.1,
           estimator: nerfacc.OccGridEstimator | None = None, generator: torch.Generator | None = None,
           stratified: bool = True, compute_normals: bool = False, render_step_size: float | None = None,
           chunk: int | None = None, occupancy: OccupancyGrid | None = None) -> RenderOutput:
    """Volume-render ``field`` along rays ``origins + t directions`` (both (..., 3), unit directions).

    Args:
        near, far: limits on t, intersected with each ray's span inside [-1, 1]^3 (rays missing the box are empty).
        n_samples: bins per ray on the stratified path (the box span is split evenly).
        background: None (black, i.e. premultiplied colour), a float grey level, a colour (3,) or (..., 3),
            or a callable / :class:`~priorkit.gen3d.field.Background` mapping directions (N, 3) -> (N, 3).
        shading: "albedo", "lambertian" or "textureless" (see :func:`shade`).
        light_dir: unit direction towards a directional light, (3,) or per ray (..., 3); None = headlight.
        ambient: ambient term of the Lambertian shading.
        estimator: an ``OccGridEstimator`` (:func:`make_estimator`); used only when the rays are on CUDA.
        generator: RNG of the stratified jitter, on the rays' device (the estimator path uses the global RNG).
        stratified: jitter the sample inside each bin; False samples bin midpoints (deterministic).
        compute_normals: also return normal and orientation maps when shading is "albedo". On the stratified
            path normals are evaluated only at samples of weight > ``NORMAL_WEIGHT_EPS`` (zero elsewhere).
        render_step_size: marching step of the estimator path (default 2 / n_samples).
        chunk: render at most this many rays at a time (bounds memory, mostly useful under ``torch.no_grad``).
        occupancy: an :class:`~priorkit.gen3d.occupancy.OccupancyGrid` of ``field``: the stratified path skips the
            samples in its empty cells (each ray's optical depth changes by < 1e-3 with the default threshold).

    Returns:
        :class:`RenderOutput` with batch shape ``origins.shape[:-1]``.
    """
    if shading not in SHADINGS:
        raise ValueError(f"unknown shading {shading!r}; use one of {SHADINGS}")
    batch_shape = origins.shape[:-1]
    o, d = origins.reshape(-1, 3), directions.reshape(-1, 3)
    light = _light_directions(light_dir, d)
    bg = _background_colour(background, d)
    need_normals = compute_normals or shading != "albedo"
    use_grid = estimator is not None and o.is_cuda
    step = render_step_size or 2.0 / n_samples
    parts = []
    n = o.shape[0]
    chunk = chunk or max(n, 1)
    for s in range(0, n, chunk):
        sl = slice(s, s + chunk)
        if use_grid:
            part = _render_occgrid(field, o[sl], d[sl], light[sl], bg[sl], estimator, near=near, far=far,
                                   render_step_size=step, shading=shading, ambient=ambient,
                                   need_normals=need_normals, stratified=stratified)
        else:
            part = _render_stratified(field, o[sl], d[sl], light[sl], bg[sl], near=near, far=far, n_samples=n_samples,
                                      shading=shading, ambient=ambient, need_normals=need_normals,
                                      stratified=stratified, generator=generator, occupancy=occupancy)
        parts.append(part)
    out = parts[0] if len(parts) == 1 else RenderOutput(
        *(None if getattr(parts[0], f) is None else torch.cat([getattr(p, f) for p in parts])
          for f in ("rgb", "opacity", "depth", "normal", "orientation")))
    return out.reshape(*batch_shape)


def _field_device(field: nn.Module) -> torch.device:
    for t in list(field.parameters()) + list(field.buffers()):
        return t.device
    return torch.device("cpu")


def render_image(field: nn.Module, camera: Camera, size: int | tuple[int, int], *, jitter: Tensor | None = None,
                 **kw) -> RenderOutput:
    """Render ``field`` seen by ``camera`` (distill/zoo/cameras.py) at ``size`` = H or (H, W).

    ``jitter`` (H, W, 2) offsets the sample inside each pixel; ``kw`` go to :func:`render`.
    Returns a :class:`RenderOutput` of images: rgb (H, W, 3), opacity (H, W, 1), depth (H, W, 1), ...
    """
    h, w = (size, size) if isinstance(size, int) else size
    origins, directions = camera.rays(h, w, jitter=jitter)
    device = _field_device(field)
    return render(field, origins.to(device), directions.to(device), **kw)


@torch.no_grad()
def render_turntable(field: nn.Module, n_frames: int = 36, size: int = 128, elevation: float = 15.0, *,
                     start_azimuth: float = 0.0, background: BackgroundLike = 1.0, n_samples: int = 128,
                     chunk: int = 8192, **kw) -> np.ndarray:
    """Frames of a full turn around the z axis: uint8 array (n_frames, size, size, 3).

    Azimuths ``start_azimuth + 360 i / n_frames``; deterministic bin midpoints; ``kw`` go to :func:`render`
    (e.g. ``shading="lambertian"``).
    """
    kw.setdefault("stratified", False)
    frames = []
    for i in range(n_frames):
        cam = Camera(azimuth=start_azimuth + 360.0 * i / n_frames, elevation=elevation)
        out = render_image(field, cam, size, background=background, n_samples=n_samples, chunk=chunk, **kw)
        frames.append((out.rgb.clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy())
    return np.stack(frames)


def occupancy_fn(field: nn.Module, render_step_size: float) -> Callable[[Tensor], Tensor]:
    """The estimator's occupancy: alpha ~ sigma(x) * step, x (N, 3) -> (N, 1)."""
    def occ_eval_fn(x: Tensor) -> Tensor:
        return (field.density(x) * render_step_size)[:, None]
    return occ_eval_fn


def make_estimator(field: nn.Module | None = None, device: torch.device | str = "cuda", *, resolution: int = 128,
                   levels: int = 1, render_step_size: float = 2.0 / 64, occ_thre: float = 1e-2,
                   init_passes: int = 8) -> nerfacc.OccGridEstimator:
    """An ``OccGridEstimator`` over [-1, 1]^3 on ``device``.

    If ``field`` is given, the grid is filled from it with ``init_passes`` updates over all cells (each pass
    tests one random point per cell; several passes keep thin or partly covered cells occupied).
    """
    estimator = nerfacc.OccGridEstimator(roi_aabb=[BOX_MIN] * 3 + [BOX_MAX] * 3, resolution=resolution,
                                         levels=levels).to(device)
    if field is not None:
        for _ in range(init_passes):
            update_estimator(estimator, field, step=0, render_step_size=render_step_size, occ_thre=occ_thre)
    return estimator


def update_estimator(estimator: nerfacc.OccGridEstimator, field: nn.Module, step: int, *,
                     render_step_size: float = 2.0 / 64, occ_thre: float = 1e-2, n: int = 16,
                     warmup_steps: int = 256) -> None:
    """Refresh the occupancy grid from the field's density every ``n`` steps (EMA of sigma * step)."""
    estimator.train()
    estimator.update_every_n_steps(step, occ_eval_fn=occupancy_fn(field, render_step_size), occ_thre=occ_thre,
                                   n=n, warmup_steps=warmup_steps)


def render_views(field: nn.Module, cameras: Sequence[Camera], size: int, *, background: BackgroundLike,
                 shading: str, lights: Tensor | None, ambient: float, n_samples: int,
                 generator: torch.Generator | None = None, jitter: bool = True,
                 estimator: nerfacc.OccGridEstimator | None = None, compute_normals: bool = False,
                 scene_radius: float | None = None, occupancy: OccupancyGrid | None = None
                 ) -> tuple[Tensor, RenderOutput]:
    """Render ``cameras`` (B of them) at ``size`` in one call: images (B, 3, S, S) in [0, 1] and the RenderOutput
    (batch shape (B, S, S)).

    ``lights`` (B, 3) are directions towards the light per view (None: headlight); ``jitter`` moves each ray
    uniformly inside its pixel (anti-aliasing) and each sample inside its depth bin, drawn from ``generator``
    (False: pixel centres and bin midpoints, a deterministic render); normals and the orientation map are
    computed when shading needs them or ``compute_normals``. ``scene_radius`` limits the samples to the span of
    each ray within that distance of the origin's depth band, [distance - r, distance + r] (None: the whole box).
    ``occupancy``: skip the samples in the grid's empty cells (the stratified path; see :func:`render`).

    Example::

        images, out = render_views(VoxelField(32), random_cameras(4, g), 64, background=1.0, shading="albedo",
                                   lights=None, ambient=0.3, n_samples=64, generator=g)   # (4, 3, 64, 64)
    """
    device = next(iter(list(field.parameters()) + list(field.buffers()))).device
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
    out = render(field, o, d, near=near, far=far, n_samples=n_samples, background=background, shading=shading,
                 light_dir=light, ambient=ambient, generator=generator if device.type == "cpu" else None,
                 estimator=estimator, compute_normals=compute_normals, stratified=jitter, occupancy=occupancy)
    return out.rgb.permute(0, 3, 1, 2), out


class Renderer:
    """Volume rendering of one representation from cameras, nerfacc on CPU and CUDA behind one call.

    On CUDA an ``OccGridEstimator`` is made from the field and refreshed by :meth:`update` (every 16 steps, as
    nerfacc's examples); elsewhere :meth:`update` does nothing and rendering takes ``n_samples`` stratified samples
    per ray, and with ``skip_empty`` (a voxel field) only those in occupied cells of an
    :class:`~priorkit.gen3d.occupancy.OccupancyGrid` rebuilt from the field at every call.
    ``renderer(cameras, size, ...)`` returns images (B, 3, S, S) in [0, 1] and the :class:`RenderOutput` (opacity
    (B, S, S, 1), orientation, ...) for B cameras; see :func:`render_views`.
    """

    def __init__(self, field: nn.Module, *, n_samples: int = 64, scene_radius: float | None = None,
                 ambient: float = 0.1, skip_empty: bool = True) -> None:
        self.field, self.n_samples, self.scene_radius, self.ambient = field, n_samples, scene_radius, ambient
        self.skip_empty = skip_empty
        device = _field_device(field)
        self.estimator = make_estimator(field, device) if device.type == "cuda" else None

    def update(self, step: int) -> None:
        """Refresh the occupancy grid from the field's density (CUDA only)."""
        if self.estimator is not None:
            update_estimator(self.estimator, self.field, step)

    def __call__(self, cameras: Sequence[Camera], size: int, *, background: BackgroundLike, shading: str,
                 lights: Tensor | None, generator: torch.Generator | None = None, jitter: bool = True,
                 compute_normals: bool = False) -> tuple[Tensor, RenderOutput]:
        occupancy = OccupancyGrid.of(self.field) if self.skip_empty and self.estimator is None else None
        return render_views(self.field, cameras, size, background=background, shading=shading, lights=lights,
                            ambient=self.ambient, n_samples=self.n_samples, generator=generator, jitter=jitter,
                            estimator=self.estimator, compute_normals=compute_normals,
                            scene_radius=self.scene_radius, occupancy=occupancy)


__all__ = ["RenderOutput", "Renderer", "make_estimator", "occupancy_fn", "query_field", "ray_box_intersection",
           "render", "render_image", "render_turntable", "render_views", "shade", "update_estimator"]
