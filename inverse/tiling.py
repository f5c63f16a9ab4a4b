"""Any image size from a fixed-size prior: overlapping tiles advanced in lockstep (MultiDiffusion, Bar-Tal, Yariv,
Lipman & Dekel 2023; the weighted blending of StableSR, Wang et al. 2023).

At every call the full-size state x_t (B, C, H, W) is cut into overlapping tiles of the prior's size, the prior
predicts (x0, eps) on each tile, and the predictions are blended into one full-size prediction with smooth weights
that sum to one at every pixel:

    x0(x_t) = sum_i P_i^T (w_i * x0_i(P_i x_t)),   sum_i P_i^T w_i = 1           (MultiDiffusion eq. 5, weighted)

(P_i crops tile i). The blend is linear, so ``alpha x0 + sigma eps = x_t`` still holds, the wrapper is a `Denoiser`
of the full image, and every solver (PiGDM, DPS, D-Flow) runs unchanged on large images; their vector-Jacobian
products flow back through the blend. The operator A always acts on the full image, so a blur never sees a tile seam;
the tile overlap (default 16 px, and wider than the blur kernel when restoring) keeps the prior's edge effects away.

Weights: 1 inside a tile, raised-cosine ramps across the overlaps with neighbours, no ramp on the image border.

Also here: channel adapters (greyscale <-> RGB, RGBA with the alpha kept aside) and `CropOperator`, which lets a
prior larger than the image restore it (the extra canvas is unobserved and cropped away).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.nn import functional as F

from priorkit.distill.core.denoiser import Condition, Denoiser, WrappedDenoiser, check_inputs
from priorkit.distill.core.prediction import Prediction
from priorkit.distill.core.schedule import as_time
from priorkit.inverse.operators import Operator, Scalar

__all__ = ["TiledDenoiser", "tile_starts", "blend_weights", "ChannelLayout", "to_rgb", "from_rgb", "CropOperator"]


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of tiles of size ``tile`` covering ``[0, length)`` with at least ``overlap`` shared pixels.

    Evenly spread: n = ceil((length - overlap) / (tile - overlap)) tiles, the first at 0 and the last at length - tile.
    """
    if tile > length:
        raise ValueError(f"tile {tile} is larger than the image side {length}")
    if not 0 <= overlap < tile:
        raise ValueError(f"overlap must lie in [0, tile); got {overlap} for tile {tile}")
    if tile == length:
        return [0]
    n = math.ceil((length - overlap) / (tile - overlap))
    n = max(n, 2)
    return [round(i * (length - tile) / (n - 1)) for i in range(n)]


def _ramp_1d(length: int, tile: int, starts: list[int]) -> Tensor:
    """(n, tile) float64 1-D window per tile: raised-cosine ramps over the overlap with each neighbour."""
    out = torch.ones(len(starts), tile, dtype=torch.float64)
    for i, s in enumerate(starts):
        if i > 0:  # overlap with the previous tile: [s, prev_end)
            ov = starts[i - 1] + tile - s
            if ov > 0:
                k = torch.arange(ov, dtype=torch.float64)
                out[i, :ov] = 0.5 - 0.5 * torch.cos(math.pi * (k + 0.5) / ov)
        if i < len(starts) - 1:  # overlap with the next tile: [next_start, s + tile)
            ov = s + tile - starts[i + 1]
            if ov > 0:
                k = torch.arange(ov, dtype=torch.float64)
                out[i, tile - ov:] = 0.5 + 0.5 * torch.cos(math.pi * (k + 0.5) / ov)
    return out


def blend_weights(size: tuple[int, int], tile: tuple[int, int], overlap: int) -> tuple[list[tuple[int, int]], Tensor]:
    """Tile origins and their normalised blend weights.

    Returns:
        origins: [(top, left)] of the n tiles; weights: (n, 1, h, w) float64 with ``sum_i P_i^T w_i = 1``.
    """
    (H, W), (h, w) = size, tile
    ys, xs = tile_starts(H, h, overlap), tile_starts(W, w, overlap)
    wy, wx = _ramp_1d(H, h, ys), _ramp_1d(W, w, xs)
    origins, windows = [], []
    for i, top in enumerate(ys):
        for j, left in enumerate(xs):
            origins.append((top, left))
            windows.append(wy[i][:, None] * wx[j][None, :])
    windows = torch.stack(windows)[:, None]                                          # (n, 1, h, w)
    total = torch.zeros(1, 1, H, W, dtype=torch.float64)
    for (top, left), win in zip(origins, windows, strict=True):
        total[..., top:top + h, left:left + w] += win
    normalised = torch.stack([win / total[0, :, top:top + h, left:left + w]
                              for (top, left), win in zip(origins, windows, strict=True)])
    return origins, normalised


class TiledDenoiser(WrappedDenoiser):
    """Serve a fixed-size prior on (B, C, H, W) images by blending overlapping tile predictions (module docstring).

    Args:
        inner: the prior; its ``sample_shape`` (C, h, w) sets the tile (or give ``tile``).
        size: (H, W) of the full image, each >= the tile side.
        overlap: minimum overlap between neighbouring tiles, pixels (also the width of the blend ramps).
        max_batch: tiles per model call. Every tile of every sample of a step goes through the network in
            ceil(B n_tiles / max_batch) calls; 16 is what a CPU runs fastest (the bundled photos UNet, 64x64 tiles,
            1 thread: 8-16 tiles per call are the cheapest per tile, 32 1.2x and 64 1.5x slower per tile: the
            activations outgrow the caches), and far below what memory allows.
        tile: (h, w) when the inner prior has no fixed sample_shape.
    """

    def __init__(self, inner: Denoiser, size: tuple[int, int], *, overlap: int = 16, max_batch: int = 16,
                 tile: tuple[int, int] | None = None) -> None:
        super().__init__(inner)
        if tile is None:
            if inner.sample_shape is None or len(inner.sample_shape) != 3:
                raise ValueError("the inner prior has no (C, h, w) sample_shape; pass tile=(h, w)")
            tile = tuple(inner.sample_shape[-2:])
        channels = inner.sample_shape[0] if inner.sample_shape is not None else None
        H, W = int(size[0]), int(size[1])
        self.tile, self.size, self.max_batch = (int(tile[0]), int(tile[1])), (H, W), max(1, int(max_batch))
        self.overlap = min(int(overlap), self.tile[0] - 1, self.tile[1] - 1)
        self.sample_shape = (channels, H, W) if channels is not None else None
        self.origins, weights = blend_weights((H, W), self.tile, self.overlap)
        self.register_buffer("weights", weights, persistent=False)

    @property
    def num_tiles(self) -> int:
        return len(self.origins)

    def _tiles(self, x: Tensor) -> Tensor:
        """(B, C, H, W) -> (B * n, C, h, w), tile-major within each sample."""
        h, w = self.tile
        return torch.stack([x[..., top:top + h, left:left + w] for top, left in self.origins], dim=1).flatten(0, 1)

    def _blend(self, tiles: Tensor, like: Tensor) -> Tensor:
        """(B * n, C, h, w) predictions -> (B, C, H, W) weighted sum (weights already normalised)."""
        h, w = self.tile
        tiles = tiles.unflatten(0, (like.shape[0], self.num_tiles)) * self.weights.to(tiles)[None]
        out = like.new_zeros(like.shape, dtype=tiles.dtype)
        for i, (top, left) in enumerate(self.origins):  # in place on the tile's window (autograd: CopySlices); the
            out[..., top:top + h, left:left + w] += tiles[:, i]  # former full-size F.pad per tile took 10.7 s per
        return out                                              # blend of 441 tiles at 1024x1024, this 0.1 s

    def forward(self, x: Tensor, t: Tensor | float, cond: Condition = None, *, check: bool = True) -> Prediction:
        """Blended prediction for x (B, C, H, W) with (H, W) = ``size``; t scalar or (B,)."""
        t = as_time(t, x)
        if check:
            check_inputs(x, t)
        if tuple(x.shape[-2:]) != self.size:
            raise ValueError(f"TiledDenoiser was built for {self.size}; got an image of {tuple(x.shape[-2:])}")
        n = self.num_tiles
        tiles = self._tiles(x)
        tt = t.repeat_interleave(n) if t.ndim == 1 and t.shape[0] > 1 else t
        c = self.encode(cond)
        if isinstance(c, Tensor) and c.shape[0] == x.shape[0] and x.shape[0] > 1:
            c = c.repeat_interleave(n, dim=0)
        x0s, epss = [], []
        for k in range(0, tiles.shape[0], self.max_batch):
            sl = slice(k, k + self.max_batch)
            tk = tt[sl] if tt.ndim == 1 and tt.shape[0] > 1 else tt
            ck = c[sl] if isinstance(c, Tensor) and c.shape[0] == tiles.shape[0] else c
            p = self.inner(tiles[sl], tk, ck, check=False)
            x0s.append(p.x0)
            epss.append(p.eps)
        x0 = self._blend(torch.cat(x0s), x)
        eps = self._blend(torch.cat(epss), x)
        return Prediction(x0=x0, eps=eps, x_t=x, t=t, schedule=self.schedule)


# ----------------------------------------------------------------------------------------------------------------------
# Channels
# ----------------------------------------------------------------------------------------------------------------------


@dataclass
class ChannelLayout:
    """How an image's channels map to the prior's RGB: ``channels`` in {1, 2, 3, 4}; ``alpha`` (B, 1, H, W) or None."""

    channels: int
    alpha: Tensor | None = None


def to_rgb(image: Tensor) -> tuple[Tensor, ChannelLayout]:
    """(B, C, H, W) with C = 1 (grey), 2 (grey + alpha), 3 (RGB) or 4 (RGBA) -> (B, 3, H, W) RGB and its layout.

    Grey is replicated to three channels; alpha is kept aside untouched.
    """
    if image.ndim != 4:
        raise ValueError(f"expected a (B, C, H, W) image; got shape {tuple(image.shape)}")
    c = image.shape[1]
    if c == 1:
        return image.expand(-1, 3, -1, -1).contiguous(), ChannelLayout(1)
    if c == 2:
        return image[:, :1].expand(-1, 3, -1, -1).contiguous(), ChannelLayout(2, image[:, 1:2].clone())
    if c == 3:
        return image, ChannelLayout(3)
    if c == 4:
        return image[:, :3], ChannelLayout(4, image[:, 3:4].clone())
    raise ValueError(f"unsupported number of channels {c}: expected 1 (grey), 2 (grey+alpha), 3 (RGB) or 4 (RGBA)")


def from_rgb(rgb: Tensor, layout: ChannelLayout) -> Tensor:
    """Inverse of :func:`to_rgb`: average back to grey, re-attach the alpha channel unchanged."""
    grey = rgb.mean(1, keepdim=True) if layout.channels in (1, 2) else rgb
    if layout.alpha is None:
        return grey
    alpha = layout.alpha
    if alpha.shape[-2:] != grey.shape[-2:]:  # e.g. super-resolution: upsample alpha to the output size
        alpha = F.interpolate(alpha, size=grey.shape[-2:], mode="bilinear", align_corners=False).clamp(0, 1)
    return torch.cat([grey, alpha.to(grey)], dim=1)


# ----------------------------------------------------------------------------------------------------------------------
# A canvas larger than the image
# ----------------------------------------------------------------------------------------------------------------------


class CropOperator(Operator):
    """``A' = A o C`` with C the crop of a (h', w') canvas to its top-left (h, w) image (the rest unobserved).

    C C^T = I, so A' A'^T = A A^T: ``solve`` is the inner operator's; ``A'^T = C^T A^T`` and ``A'^+ = C^T A^+``
    (zero padding).

    Args:
        op: the operator on (h, w) images.  image_size: (h, w).  canvas_size: (h', w') >= (h, w).
    """

    def __init__(self, op: Operator, image_size: tuple[int, int], canvas_size: tuple[int, int]) -> None:
        super().__init__(op.cg_tol, op.cg_max_iter)
        if canvas_size[0] < image_size[0] or canvas_size[1] < image_size[1]:
            raise ValueError(f"canvas {canvas_size} is smaller than the image {image_size}")
        self.op, self.image_size, self.canvas_size = op, tuple(image_size), tuple(canvas_size)

    def _pad(self, x: Tensor) -> Tensor:
        (h, w), (H, W) = self.image_size, self.canvas_size
        return F.pad(x, (0, W - w, 0, H - h))

    def A(self, x: Tensor) -> Tensor:
        h, w = self.image_size
        return self.op.A(x[..., :h, :w])

    def At(self, y: Tensor) -> Tensor:
        return self._pad(self.op.At(y))

    def AAt(self, y: Tensor) -> Tensor:
        return self.op.AAt(y)

    def pinv(self, y: Tensor) -> Tensor:
        return self._pad(self.op.pinv(y))

    def solve(self, b: Tensor, r: Scalar, s: Scalar) -> Tensor:
        return self.op.solve(b, r, s)

    def measured(self, y: Tensor) -> Tensor:
        return self.op.measured(y)

    def ones_response(self, image_shape: Sequence[int], dtype: torch.dtype = torch.float32, device=None) -> Tensor:
        shape = (*tuple(image_shape)[:-2], *self.image_size)
        return self.op.ones_response(shape, dtype, device)
