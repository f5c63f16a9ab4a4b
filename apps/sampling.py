"""Sample grids from any model: the ``priorkit sample`` command and the demo."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from distill.loading import load_denoiser
from distill.samplers import SOLVERS, initial_noise, sample


def to_uint8(images: Tensor) -> np.ndarray:
    """Model-range images (B, C, H, W) in [-1, 1] -> uint8 (B, H, W, C)."""
    x = ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).cpu().numpy()


def grid_image(images: Tensor, ncol: int, scale: int = 1, pad: int = 1) -> Image.Image:
    """Tile images (B, C, H, W) in [-1, 1] into one PIL image, ``ncol`` per row, white padding."""
    arr = to_uint8(images)
    b, h, w, c = arr.shape
    nrow = (b + ncol - 1) // ncol
    canvas = np.full((nrow * (h + pad) + pad, ncol * (w + pad) + pad, c), 255, np.uint8)
    for i in range(b):
        r, k = divmod(i, ncol)
        canvas[pad + r * (h + pad):pad + r * (h + pad) + h, pad + k * (w + pad):pad + k * (w + pad) + w] = arr[i]
    im = Image.fromarray(canvas.squeeze(-1) if c == 1 else canvas)
    return im.resize((im.width * scale, im.height * scale), Image.NEAREST) if scale > 1 else im


def save_atomic(image: Image.Image, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}{path.suffix}")
    image.save(tmp)
    os.replace(tmp, path)
    return path


def sample_grid(model: str, prompts: list[str], *, n: int = 8, steps: int = 25, solver: str = "dpm++2m",
                guidance: float = 3.0, seed: int = 0, out: str | Path = "outputs/samples.png") -> Path:
    """Sample ``n`` images per prompt (one row each) and write a PNG grid; returns its path."""
    if solver not in SOLVERS:
        raise ValueError(f"unknown solver {solver!r}; expected one of {sorted(SOLVERS)}")
    den = load_denoiser(model)
    conditional = getattr(den, "conditional", False)
    if conditional and not prompts:
        raise ValueError(f"model {model!r} is text-conditional: give at least one --prompt")
    if any(not p.strip() for p in prompts):
        raise ValueError("empty prompt")
    rows = prompts if conditional else [None]
    g = torch.Generator().manual_seed(seed)
    images = []
    t0 = time.time()
    for p in rows:
        x = initial_noise(den, (n, *den.sample_shape), generator=g)
        with torch.no_grad():
            y = sample(den, x, steps=steps, solver=solver, cond=[p] if p else None,
                       guidance=guidance if p else 1.0, progress=True)
        images.append(den.decode_images(y) if getattr(den, "latent", False) else y)
    per = (time.time() - t0) / (n * len(rows))
    print(f"{per:.3f} s per sample ({steps} steps, {solver})")
    return save_atomic(grid_image(torch.cat(images), ncol=n, scale=4 if den.sample_shape[-1] <= 32 else 2), Path(out))
