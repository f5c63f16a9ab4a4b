"""The camera convention of the shapes world, shared by gen3d.

World: right-handed, z up, objects centred at the origin. A camera sits on a sphere of radius
``distance`` (2.5) at ``azimuth`` (degrees, from +x towards +y) and ``elevation`` (degrees above the
xy-plane), looks at the origin, has a vertical field of view ``fov`` (40 degrees) and square pixels.
Image rows go top to bottom, columns left to right; pixel centres sit at half-integers.

View phrases (DreamFusion style): "front view" for |azimuth| <= 45, "side view" for 45 < |azimuth| < 135,
"back view" otherwise, and "overhead view" whenever elevation >= 45 (it overrides the others).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

DISTANCE = 2.5
FOV_DEGREES = 40.0
ELEVATION_RANGE = (-10.0, 60.0)
OVERHEAD_ELEVATION = 45.0


@dataclass(frozen=True)
class Camera:
    """A look-at camera of the shapes world. Angles in degrees."""

    azimuth: float
    elevation: float
    distance: float = DISTANCE
    fov: float = FOV_DEGREES

    @property
    def eye(self) -> Tensor:
        a, e = math.radians(self.azimuth), math.radians(self.elevation)
        return self.distance * torch.tensor([math.cos(e) * math.cos(a), math.cos(e) * math.sin(a), math.sin(e)])

    def rotation(self) -> Tensor:
        """Camera-to-world rotation (3, 3): columns are right, up, forward (towards the origin)."""
        forward = -self.eye / self.eye.norm()
        world_up = torch.tensor([0.0, 0.0, 1.0])
        right = torch.linalg.cross(forward, world_up)
        if right.norm() < 1e-6:  # looking straight down or up
            right = torch.tensor([0.0, -1.0, 0.0]) if forward[2] < 0 else torch.tensor([0.0, 1.0, 0.0])
        right = right / right.norm()
        up = torch.linalg.cross(right, forward)
        return torch.stack([right, up, forward], dim=1)

    def rays(self, height: int, width: int | None = None, *, jitter: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """World-space rays through pixel centres.

        Returns ``origins`` and unit ``directions``, each (H, W, 3). ``jitter`` (H, W, 2) in pixels
        offsets the sample inside each pixel (for anti-aliasing).
        """
        width = width or height
        focal = 0.5 * height / math.tan(math.radians(self.fov) / 2)
        j, i = torch.meshgrid(torch.arange(height, dtype=torch.float32), torch.arange(width, dtype=torch.float32),
                              indexing="ij")
        u, v = i + 0.5, j + 0.5
        if jitter is not None:
            u, v = u + jitter[..., 0], v + jitter[..., 1]
        x = (u - 0.5 * width) / focal
        y = -(v - 0.5 * height) / focal
        d_cam = torch.stack([x, y, torch.ones_like(x)], dim=-1)
        d = d_cam @ self.rotation().T
        d = d / d.norm(dim=-1, keepdim=True)
        return self.eye.expand_as(d).clone(), d

    @property
    def view(self) -> str:
        return view_phrase(self.azimuth, self.elevation)


def view_phrase(azimuth: float, elevation: float) -> str:
    """DreamFusion's view-dependent prompt suffix for a camera at (azimuth, elevation)."""
    if elevation >= OVERHEAD_ELEVATION:
        return "overhead view"
    a = (azimuth + 180.0) % 360.0 - 180.0
    if abs(a) <= 45.0:
        return "front view"
    if abs(a) < 135.0:
        return "side view"
    return "back view"


def random_cameras(n: int, generator: torch.Generator | None = None,
                   elevation_range: tuple[float, float] = ELEVATION_RANGE,
                   azimuth_span: float = 360.0) -> list[Camera]:
    """``n`` cameras with azimuth uniform in [-span / 2, span / 2] (default: all around) and elevation uniform in
    ``elevation_range``."""
    if not 0.0 < azimuth_span <= 360.0:
        raise ValueError(f"azimuth_span must be in (0, 360]; got {azimuth_span}")
    u = torch.rand(n, 2, generator=generator, dtype=torch.float64)
    lo, hi = elevation_range
    return [Camera(azimuth=float(azimuth_span * (a - 0.5)), elevation=float(lo + (hi - lo) * e)) for a, e in u]


# ---- the camera as a prior's input (camera-aware priors: the shapes prior v2, as Zero123 / MVDream take theirs) --
#: harmonics of the azimuth in the camera input. A cube shows its yaw only modulo 90 degrees (and the shapes world's
#: other shapes not at all), so the image depends on cos(4 az), which an MLP cannot build from sin/cos az alone
#: (measured: the first prior v2 shrank its sin/cos az weights 7x and ignored the camera); the 4th harmonic makes it
#: a linear read-out, as Fourier input features do for the 2D students (distill/zoo/toy.py, MLPConfig).
AZIMUTH_HARMONICS: tuple[int, ...] = (1, 2, 4)
#: width of the camera input: sin / cos of each azimuth harmonic, sin / cos elevation, and a flag (1: camera given,
#: all 0: not given)
DIRECTION_FEATURES = 2 * len(AZIMUTH_HARMONICS) + 3
#: the first prior v2's input (sin / cos az, sin / cos el, flag): still read by :func:`camera_width`
LEGACY_DIRECTION_FEATURES = 5
_HARMONICS_OF_WIDTH = {DIRECTION_FEATURES: AZIMUTH_HARMONICS, LEGACY_DIRECTION_FEATURES: (1,)}


def direction_features(azimuth: Tensor, elevation: Tensor, given: Tensor | None = None,
                       width: int = DIRECTION_FEATURES) -> Tensor:
    """(B,) degrees -> (B, width): sin / cos of k * azimuth for each harmonic k, sin / cos elevation, and a 1 (rows
    where ``given`` is False: zeros). ``width`` 5 gives the first prior v2's input (k = 1 only)."""
    if width not in _HARMONICS_OF_WIDTH:
        raise ValueError(f"camera input width {width}: expected one of {sorted(_HARMONICS_OF_WIDTH)}")
    az, el = torch.deg2rad(azimuth.float()), torch.deg2rad(elevation.float())
    cols = [f for k in _HARMONICS_OF_WIDTH[width] for f in ((k * az).sin(), (k * az).cos())]
    feats = torch.stack([*cols, el.sin(), el.cos(), torch.ones_like(az)], dim=-1)
    if given is not None:
        feats = feats * given.reshape(-1, 1).to(feats)
    return feats


def camera_width(den: object) -> int | None:
    """The width of a prior's camera input, or None when it takes no camera: a diffusers UNet with a projection
    class embedding of :data:`DIRECTION_FEATURES` (or the legacy 5) inputs, as ``priorkit train-prior shapes
    --world v2`` builds it."""
    config = getattr(getattr(den, "unet", None), "config", None)
    if config is None or config.get("class_embed_type") != "projection":
        return None
    width = config.get("projection_class_embeddings_input_dim")
    return width if width in _HARMONICS_OF_WIDTH else None


def accepts_camera(den: object) -> bool:
    """Whether a prior takes the camera as its class input (:func:`camera_width` is not None)."""
    return camera_width(den) is not None


def camera_input(cameras: list[Camera] | tuple[Camera, ...], width: int = DIRECTION_FEATURES) -> Tensor:
    """The camera input (B, width) of a camera-aware prior for these cameras."""
    az = torch.tensor([c.azimuth for c in cameras], dtype=torch.float32)
    el = torch.tensor([c.elevation for c in cameras], dtype=torch.float32)
    return direction_features(az, el, width=width)
