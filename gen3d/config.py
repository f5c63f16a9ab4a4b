"""Settings of text-to-3D: :class:`GenerateConfig` for the loop, with each method's own config inside it, and
:data:`GUIDANCES`, the one registry of methods (name -> Guidance class; a new method is a class, a config and an
entry here).
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable
from dataclasses import InitVar, dataclass, field
from typing import Any

from priorkit.distill.core.cameras import ELEVATION_RANGE
from priorkit.gen3d.field import VoxelField
from priorkit.gen3d.guidance import Guidance, GuidanceConfig
from priorkit.gen3d.sds import SDS, SDSConfig
from priorkit.gen3d.vsd import VSD, VSDConfig

GUIDANCES: dict[str, Callable[..., Guidance]] = {"sds": SDS, "vsd": VSD}  # name -> class(denoiser, prompt, config)
METHODS = tuple(GUIDANCES)

# GenerateConfig fields that moved into the methods' configs: old name -> (method, field)
MOVED_FIELDS = {"steps": ("sds", "steps"), "views": ("sds", "views"), "lambda_color_tv": ("sds", "lambda_color_tv"),
                "vsd_steps": ("vsd", "steps"), "vsd_lambda_color_tv": ("vsd", "lambda_color_tv")}


@dataclass
class GenerateConfig:
    """Defaults of the text-to-3D loop (chosen with the bundled 32x32 "shapes" prior on a CPU).

    supersample: each training view is rendered at ``supersample`` x ``resolution`` and box-filtered down, so the
    prior sees an anti-aliased image (the shapes world's renders are); 1, the default, renders one jittered ray per
    pixel. 2 brings the benchmark's silhouette oracle's cube / cylinder / torus extents from 0.072 / 0.048 / 0.26 to
    0.058 / 0.042 / 0.19 but SDS's by only 0.002-0.024, at 1.6-1.8x the time (BENCHMARKS.md, issue 23, session 26).
    resolution / lr: render side in pixels, Adam lr of the voxel logits, decayed by a cosine to ``lr_final * lr``
    at the end; appearance parameters use ``color_lr_scale * lr`` (a slower albedo makes the prior's gradient carve
    geometry instead of painting it, e.g. a torus' hole).
    field_resolution, blob_density, blob_radius, density_activation: the VoxelField, its initial density blob and
    its activation ("exp": logits are log-densities, so carving and growing take few steps; or "softplus"). The
    blob is about the object's size, not larger (0.45; the shapes world's objects reach 0.4-0.5 from the centre):
    the loop grows a surface out to the silhouette readily, where each new layer is seen against the background, but
    carves opaque material back slowly if at all (removing the outer layer of an opaque region shows the same colour,
    so its gradient is ~0). Radius 0.6 left SDS's cone a bell and, under the benchmark's silhouette oracle with the
    azimuth curriculum, a cube's face 0.09 out (BENCHMARKS.md, issue 23, session 25).
    n_samples: samples per ray (48: a spacing of 0.042, finer than the 0.051 voxel), at depths within
    ``scene_radius`` of the camera distance (None: the whole box
    [-1, 1]^3; every shape of the shapes world lies within 0.75 of the origin). skip_empty: on CPU, query the field
    only at samples in occupied cells of its own voxels (``priorkit.gen3d.occupancy``: a bound, < 1e-3 opacity).
    azimuth_start, azimuth_warmup: camera azimuths start within ``azimuth_start`` degrees around the front and
    widen to the full circle over the first ``azimuth_warmup`` of the steps (see ``priorkit.gen3d.loop.azimuth_span``;
    360, the default: all around from the first step. A narrow start leaves the blob's depth behind the front unseen
    while it is still opaque; it was chosen in round 1 with a prior that takes no camera, where it settled a cube's
    orientation).
    albedo_fraction: share of the run with albedo-only shading (warm-up); shading_probs: probabilities of
    (albedo, lambertian, textureless) after it, under the shapes world's random lights; ambient: Lambertian term.
    background: "white" (the bundled prior's) or "learned".
    lambda_*: regulariser weights: ray opacity mean (sparsity) and binary entropy, orientation, TV of the grid,
    and the voxel-opacity entropy (ramped up linearly over the run; ``priorkit.gen3d.regularisers``).
    export_resolution, turntable_*: mesh and GIF export. preview_*: preview images.
    texture: export a UV-textured asset (``priorkit.gen3d.texture``: the marching-cubes mesh decimated to ``faces``
    triangles, xatlas charts, the albedo baked into a ``texture_size`` image) as mesh.glb and mesh.obj + .mtl + .png,
    with the full-resolution vertex-coloured mesh as mesh.ply; False: vertex colours in all three (the old export).
    The turntable is drawn from the exported mesh at ``turntable_size`` (``priorkit.gen3d.preview``), for people,
    whatever the size the prior scores.
    sds, vsd: each method's settings, with its default steps, particles, views and colour TV weight
    (:class:`~priorkit.gen3d.sds.SDSConfig`, :class:`~priorkit.gen3d.vsd.VSDConfig`).

    The old top-level names ``steps``, ``views``, ``lambda_color_tv`` (now ``sds.*``), ``vsd_steps`` and
    ``vsd_lambda_color_tv`` (now ``vsd.steps``, ``vsd.lambda_color_tv``) still work, with a DeprecationWarning.
    """

    resolution: int = 32
    supersample: int = 1
    lr: float = 0.4
    lr_final: float = 0.1
    color_lr_scale: float = 0.1
    field_resolution: int = 40
    blob_density: float = 20.0
    blob_radius: float = 0.45
    density_activation: str = "exp"
    n_samples: int = 48
    scene_radius: float | None = 1.0
    skip_empty: bool = True
    elevation_range: tuple[float, float] = ELEVATION_RANGE
    azimuth_start: float = 360.0
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
    texture: bool = True
    faces: int = 4000
    texture_size: int = 512
    turntable_frames: int = 24
    turntable_size: int = 256
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
        k = self.supersample
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= 4:
            raise ValueError(f"supersample must be an integer in [1, 4]; got {self.supersample!r}")
        for name, value in zip(MOVED_FIELDS, moved, strict=True):
            if value is not None:
                method, attr = MOVED_FIELDS[name]
                _warn_moved(name, stacklevel=4)  # the caller of __init__
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


def _warn_moved(name: str, stacklevel: int = 3) -> None:
    method, attr = MOVED_FIELDS[name]
    warnings.warn(f"GenerateConfig.{name} is deprecated: use GenerateConfig.{method}.{attr}", DeprecationWarning,
                  stacklevel=stacklevel)


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


__all__ = ["GUIDANCES", "METHODS", "MOVED_FIELDS", "GenerateConfig"]
