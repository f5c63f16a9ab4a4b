"""Masks: inpainting ``A x = m * x`` (diagonal in pixels, so A^T, A^+, the solve and prox_l2 are closed form) and the
masks it uses: a box, a half, uniformly random pixels, free-form brush strokes (DeepFill-v2 style), a user's image.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from priorkit.inverse.operators.base import Operator, Scalar, _per_batch, _safe_div

__all__ = ["Inpainting", "box_mask", "half_mask", "random_mask", "stroke_mask", "mask_from_image"]


class Inpainting(Operator):
    """Masking ``A x = m * x`` with ``m`` in {0, 1} (1 = observed); y keeps the image shape, zeros where missing.

    Args:
        mask: (1 or B, 1 or C, H, W) or (H, W) tensor of 0/1 values (bool or float).
    """

    def __init__(self, mask: Tensor, **cg) -> None:
        super().__init__(**cg)
        mask = torch.as_tensor(mask)
        if mask.ndim == 2:
            mask = mask[None, None]
        if mask.ndim != 4:
            raise ValueError(f"mask must be (H, W) or (B, C, H, W), got shape {tuple(mask.shape)}")
        mask = mask.float() if not mask.is_floating_point() else mask
        if not bool(((mask == 0) | (mask == 1)).all()):
            raise ValueError("mask values must be 0 (missing) or 1 (observed)")
        self.register_buffer("mask", mask)

    def _m(self, x: Tensor) -> Tensor:
        return self.mask.to(dtype=x.dtype, device=x.device)

    def A(self, x: Tensor) -> Tensor:
        """y = m * x, shape (B, C, H, W)."""
        return self._m(x) * x

    def At(self, y: Tensor) -> Tensor:
        """A^T = A (diagonal)."""
        return self._m(y) * y

    def pinv(self, y: Tensor) -> Tensor:
        """A^+ = A for a 0/1 diagonal."""
        return self._m(y) * y

    def solve(self, b: Tensor, r: Scalar, s: Scalar) -> Tensor:
        """z = b / (r^2 m + s^2), 0 where the denominator vanishes (s = 0 at missing pixels)."""
        d = _per_batch(r, b) ** 2 * self._m(b) + _per_batch(s, b) ** 2
        return _safe_div(b, d.expand_as(b))

    def prox_l2(self, z: Tensor, y: Tensor, gamma: Scalar) -> Tensor:
        """argmin_x ||m x - y||^2 / 2 + ||x - z||^2 / (2 gamma) per pixel: x = (z + gamma m y) / (1 + gamma m);
        z, x (B, C, H, W), y (B, C, H, W) zero where missing, gamma > 0 float or (B,)."""
        g = _per_batch(gamma, z)
        if bool((g <= 0).any()):
            raise ValueError("prox_l2 needs gamma > 0")
        m = self._m(z)
        return (z + g * m * y) / (1 + g * m)

    def measured(self, y: Tensor) -> Tensor:
        """Zero the missing pixels."""
        return self._m(y) * y


def _mask_tensor(keep: Tensor) -> Tensor:
    """(H, W) bool of kept pixels -> (1, 1, H, W) float32 mask."""
    return keep.to(torch.float32)[None, None]


def box_mask(H: int, W: int, box: tuple[int, int, int, int] | None = None) -> Tensor:
    """Mask with one missing rectangle.

    Args:
        H, W: image size.
        box: (top, left, height, width) of the missing region; default: centred box of size (H // 2, W // 2).

    Returns:
        (1, 1, H, W) float32 mask, 1 = observed, 0 = missing.
    """
    if box is None:
        box = (H // 4, W // 4, H // 2, W // 2)
    top, left, h, w = box
    if h <= 0 or w <= 0 or top < 0 or left < 0 or top + h > H or left + w > W:
        raise ValueError(f"box {box} (top, left, height, width) does not fit in a {H}x{W} image")
    keep = torch.ones(H, W, dtype=torch.bool)
    keep[top : top + h, left : left + w] = False
    return _mask_tensor(keep)


def half_mask(H: int, W: int, side: str = "right") -> Tensor:
    """Mask missing one half of the image (``side`` in left/right/top/bottom); returns (1, 1, H, W) float32."""
    boxes = {
        "left": (0, 0, H, W // 2),
        "right": (0, W - W // 2, H, W // 2),
        "top": (0, 0, H // 2, W),
        "bottom": (H - H // 2, 0, H // 2, W),
    }
    if side not in boxes:
        raise ValueError(f"side must be one of {sorted(boxes)}, got {side!r}")
    return box_mask(H, W, boxes[side])


def random_mask(H: int, W: int, missing: float = 0.8, generator: torch.Generator | None = None) -> Tensor:
    """Mask with exactly ``round(missing * H * W)`` pixels missing, chosen uniformly without replacement.

    Args:
        H, W: image size.
        missing: fraction of missing pixels in [0, 1].
        generator: CPU torch.Generator for reproducibility.

    Returns:
        (1, 1, H, W) float32 mask, 1 = observed, 0 = missing.
    """
    if not 0.0 <= missing <= 1.0:
        raise ValueError(f"missing must be in [0, 1], got {missing}")
    n_missing = round(missing * H * W)
    keep = torch.ones(H * W, dtype=torch.bool)
    keep[torch.randperm(H * W, generator=generator)[:n_missing]] = False
    return _mask_tensor(keep.view(H, W))


def stroke_mask(
    H: int,
    W: int,
    generator: torch.Generator | None = None,
    n_strokes: int | tuple[int, int] = (2, 6),
    max_vertices: int = 12,
    max_step: float = 0.3,
    width: tuple[float, float] = (0.04, 0.12),
) -> Tensor:
    """Free-form brush-stroke mask: random walks drawn as thick polylines (DeepFill-v2 style).

    Each stroke starts at a uniform point, takes 1..``max_vertices`` steps of length up to ``max_step * min(H, W)``
    with a turning angle of at most 90 degrees per step, and is drawn with a width drawn uniformly in
    ``width * min(H, W)`` (at least 1 pixel).

    Args:
        H, W: image size.
        generator: CPU torch.Generator for reproducibility.
        n_strokes: number of strokes, or an inclusive (min, max) range to draw it from.
        max_vertices: maximum number of steps per stroke.
        max_step: maximum step length as a fraction of min(H, W).
        width: (min, max) brush width as a fraction of min(H, W).

    Returns:
        (1, 1, H, W) float32 mask, 1 = observed, 0 = stroke (missing).
    """

    def uniform(lo: float, hi: float) -> float:
        return lo + (hi - lo) * torch.rand((), generator=generator).item()

    def randint(lo: int, hi: int) -> int:  # inclusive
        return int(torch.randint(lo, hi + 1, (), generator=generator))

    lo, hi = (n_strokes, n_strokes) if isinstance(n_strokes, int) else n_strokes
    size = min(H, W)
    yy, xx = torch.meshgrid(torch.arange(H, dtype=torch.float32), torch.arange(W, dtype=torch.float32), indexing="ij")
    missing = torch.zeros(H, W, dtype=torch.bool)
    for _ in range(randint(lo, hi)):
        p = torch.tensor([uniform(0, H - 1), uniform(0, W - 1)])
        angle = uniform(0, 2 * math.pi)
        radius = max(0.5, uniform(*width) * size / 2)
        for _ in range(randint(1, max_vertices)):
            angle += uniform(-math.pi / 2, math.pi / 2)
            step = uniform(0.1, 1.0) * max_step * size
            q = p + step * torch.tensor([math.sin(angle), math.cos(angle)])
            q = q.clamp(min=torch.zeros(2), max=torch.tensor([H - 1.0, W - 1.0]))
            # distance from each pixel to segment [p, q]: project, clamp to [0, 1], measure
            d = q - p
            t = ((yy - p[0]) * d[0] + (xx - p[1]) * d[1]) / d.dot(d).clamp_min(1e-12)
            t = t.clamp(0, 1)
            dist2 = (yy - p[0] - t * d[0]) ** 2 + (xx - p[1] - t * d[1]) ** 2
            missing |= dist2 <= radius**2
            p = q
    return _mask_tensor(~missing)


def _unit_grey(arr: np.ndarray) -> np.ndarray:
    """Mask values on a [0, 1] scale (float64): bool -> {0, 1}, uint8 / 255, other integers in [0, 1] as they are
    or up to 255 / 255, floats in [0, 1] as they are."""
    if arr.dtype == np.bool_:
        return arr.astype(np.float64)
    if arr.dtype == np.uint8:
        return arr.astype(np.float64) / 255.0
    if np.issubdtype(arr.dtype, np.integer):
        if arr.min() < 0 or arr.max() > 255:
            raise ValueError("integer mask values must lie in [0, 255]")
        return arr.astype(np.float64) / (1.0 if arr.max() <= 1 else 255.0)
    if np.issubdtype(arr.dtype, np.floating):
        grey = arr.astype(np.float64)
        if not np.isfinite(grey).all() or grey.min() < 0 or grey.max() > 1:
            raise ValueError("float mask values must be finite and lie in [0, 1]")
        return grey
    raise ValueError(f"unsupported mask dtype {arr.dtype}")


def mask_from_image(
    source: str | Path | np.ndarray | Tensor,
    H: int,
    W: int,
    keep: str = "white",
    threshold: float = 0.5,
) -> Tensor:
    """Load a user's mask (file path, PIL image, numpy array or tensor) and validate it.

    Convention: with ``keep="white"`` (default) pixels whose grey value is ``>= threshold`` (on a [0, 1] scale)
    are observed and darker pixels are to be inpainted; ``keep="black"`` inverts this.  Grey levels are the
    luminance of RGB inputs (alpha ignored); uint8 is divided by 255, bool maps to {0, 1}, floats must lie in
    [0, 1].  The mask must already be ``H x W`` (it is never resized silently).

    Args:
        source: path to an image file, PIL image, array/tensor of shape (H, W), (H, W, C), (C, H, W) or with leading
            singleton dims.
        H, W: expected image size.
        keep: "white" or "black": which colour marks observed pixels.
        threshold: grey level separating the two classes.

    Returns:
        (1, 1, H, W) float32 mask, 1 = observed, 0 = missing.

    Raises:
        ValueError: unreadable file, unsupported shape/dtype/values, wrong size, or a mask that observes nothing.
    """
    from PIL import Image, UnidentifiedImageError

    if keep not in ("white", "black"):
        raise ValueError(f"keep must be 'white' or 'black', got {keep!r}")
    if isinstance(source, str | Path):
        try:
            with Image.open(source) as im:
                source = np.asarray(im.convert("L"))
        except (OSError, UnidentifiedImageError, ValueError) as e:
            raise ValueError(f"cannot read mask image {str(source)!r}: {e}") from e
    elif isinstance(source, Image.Image):
        source = np.asarray(source.convert("L"))
    arr = source.detach().cpu().numpy() if isinstance(source, Tensor) else np.asarray(source)

    while arr.ndim > 2 and arr.shape[0] == 1 and not (arr.ndim == 3 and arr.shape[-1] in (3, 4)):
        arr = arr[0]
    if arr.ndim == 3:
        if arr.shape[-1] in (1, 3, 4):
            arr = arr[..., :3]
        elif arr.shape[0] in (3, 4):
            arr = np.moveaxis(arr[:3], 0, -1)
        else:
            raise ValueError(f"cannot interpret mask of shape {arr.shape} as an image")
    if arr.ndim not in (2, 3):
        raise ValueError(f"mask must be 2-D (H, W) or an image with channels, got shape {arr.shape}")
    grey = _unit_grey(arr)
    if grey.ndim == 3:  # ITU-R 601 luma of RGB (on the [0, 1] scale), identity for one channel
        grey = grey[..., 0] if grey.shape[-1] == 1 else grey @ np.array([0.299, 0.587, 0.114])

    if grey.shape != (H, W):
        raise ValueError(f"mask is {grey.shape[0]}x{grey.shape[1]} but the image is {H}x{W}; resize it first")
    observed = grey >= threshold if keep == "white" else grey < threshold
    if not observed.any():
        raise ValueError(f"mask observes no pixel (convention: keep={keep!r} pixels are observed)")
    if observed.all():
        warnings.warn("mask observes every pixel: nothing to inpaint", stacklevel=2)
    return _mask_tensor(torch.from_numpy(observed))
