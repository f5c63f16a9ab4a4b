"""What a restoration costs, shown before and while it runs: tiles per image, model passes per tile, a progress bar
counted in tiles, and an estimate of the wall time (tiles x passes x measured seconds per tile) to warn about long runs.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from priorkit.distill.core.denoiser import Condition, Denoiser
from priorkit.distill.core.prediction import Prediction
from priorkit.inverse.dflow import CountingDenoiser
from priorkit.inverse.tasks import (
    DEFAULTS,
    build_operator,
    check_method,
    forward_budget,
    resolve_prior,
    sr_factor,
    tile_overlap,
)
from priorkit.inverse.tiling import tile_starts

__all__ = ["TileCounter", "tile_count", "seconds_per_tile", "estimate_seconds", "warn_if_long", "BACKWARD_COST",
           "LONG_RUN_SECONDS"]

#: a backward pass through the photos UNet costs about twice a forward one (measured: 60 ms forward, 175 ms forward +
#: backward per 64x64 tile in batches of 16, 1 thread): a step of a gradient method costs ~3 forward passes
BACKWARD_COST = 2.0
#: runs estimated longer than this (seconds) are announced before they start
LONG_RUN_SECONDS = 60.0


def tile_count(size: tuple[int, int], tile: tuple[int, int] | None, overlap: int) -> int:
    """Tiles of a (H, W) canvas served by a prior of tile (h, w) (1 when the image fits in one tile or no tile)."""
    if tile is None:
        return 1
    (H, W), (h, w) = size, tile
    H, W = max(H, h), max(W, w)
    ov = min(overlap, h - 1, w - 1)
    return len(tile_starts(H, h, ov)) * len(tile_starts(W, w, ov))


_SPEED: dict[int, float] = {}


@torch.no_grad()
def seconds_per_tile(den: Denoiser, batch: int = 16) -> float:
    """Measured wall seconds of one forward pass of ``den`` on one tile, in a batch of ``batch`` tiles (cached per
    prior: one timed call of about a second on the photos prior). Needs a fixed ``sample_shape``."""
    key = id(den)
    if key not in _SPEED:
        if den.sample_shape is None:
            raise ValueError("the prior has no fixed sample_shape to time")
        x = torch.randn(batch, *den.sample_shape)
        dtype = next((p.dtype for p in den.parameters() if p.is_floating_point()), torch.float32)
        x = x.to(dtype)
        start = time.perf_counter()
        den(x, 0.5)
        _SPEED[key] = (time.perf_counter() - start) / batch
    return _SPEED[key]


class TileCounter(CountingDenoiser):
    """`CountingDenoiser` that advances a tqdm bar by the tiles of every call (unit "tile"; total = tiles x expected
    forward passes when known), so a person sees tiles and steps, not opaque calls.

    Args:
        inner: the (tiled) prior.  tiles: tiles per call (x samples per image).  steps: expected forward passes or
            None.  desc: the bar's label.  show: display the bar.
    """

    def __init__(self, inner: Denoiser, tiles: int, steps: int | None, desc: str, show: bool) -> None:
        super().__init__(inner)
        self.tiles = int(tiles)
        self.bar: Any = tqdm(total=None if steps is None else self.tiles * steps, desc=desc, unit="tile",
                             disable=not show, leave=False)

    def forward(self, x: Tensor, t: Tensor | float, cond: Condition = None, *, check: bool = True) -> Prediction:
        p = super().forward(x, t, cond, check=check)
        self.bar.update(self.tiles)
        return p

    def close(self) -> None:
        self.bar.close()


def estimate_seconds(task: str, method: str, size: tuple[int, int], *, prior: str | Path | Denoiser = "photos",
                     nfe: int | None = None, samples: int = 1, simulate: bool = False,
                     overlap: int = DEFAULTS.overlap, **options: Any) -> tuple[float | None, int, int | None]:
    """(estimated wall seconds or None, tiles per image, forward passes) of restoring one (H, W) input: tiles x
    forward passes x samples x the prior's measured seconds per tile (backward passes at ``BACKWARD_COST``)."""
    spec = check_method(method, task)
    f = 1 if simulate else sr_factor(task)
    H, W = size[0] * f, size[1] * f
    if not spec.needs_prior:
        return 0.0, 0, 0
    den = resolve_prior(prior)
    tile = tuple(den.sample_shape[-2:]) if den.sample_shape is not None else None
    ov = overlap if tile is None else tile_overlap(build_operator(task, 64, 64, mask=torch.ones(64, 64)), tile, overlap)
    tiles = tile_count((H, W), tile, ov)
    steps = forward_budget(spec, nfe, options)
    if steps is None or den.sample_shape is None:
        return None, tiles, steps
    per_pass = 1.0 + (BACKWARD_COST if spec.needs_grad else 0.0)
    return tiles * steps * samples * per_pass * seconds_per_tile(den), tiles, steps


def warn_if_long(paths: list[Path], task: str, method: str, prior: str | Path | Denoiser, nfe: int | None,
                  simulate: bool, options: dict[str, Any], max_pixels: int | None = None) -> None:
    """Print an estimate of the run's wall time on stderr before it starts when it exceeds ``LONG_RUN_SECONDS``
    (images over ``max_pixels``, which the run skips, are not counted)."""
    from PIL import Image

    total, detail, counted = 0.0, "", 0
    for p in paths:
        try:
            with Image.open(p) as im:
                w, h = im.size
        except (OSError, ValueError):
            continue
        if max_pixels is not None and w * h > max_pixels:
            continue
        counted += 1
        opts = {k: v for k, v in options.items() if k != "samples"}
        sec, tiles, steps = estimate_seconds(task, method, (h, w), prior=prior, nfe=nfe, simulate=simulate,
                                             samples=int(options.get("samples", 1)), **opts)
        if sec is None:
            return
        total += sec
        detail = detail or f"{tiles} tiles x {steps} steps for {w}x{h}"
    if total > LONG_RUN_SECONDS:
        took = f"{total:.0f} s" if total < 120 else f"{total / 60:.0f} min"
        tqdm.write(f"note: about {took} estimated for {counted} images ({detail}, "
                   f"{seconds_per_tile(resolve_prior(prior)):.2f} s per tile measured here); a smaller --nfe or a "
                   "method without backward passes (diffpir, pnp_flow) is faster", file=sys.stderr)
