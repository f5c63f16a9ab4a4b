"""Sample grids from any model: the ``priorkit sample`` command and the demo.

Students trained by distill/ (a folder with ``priorkit.json`` saying ``"kind": "student"``, or the ``--out`` folder
of a ``priorkit distill`` run) are sampled with their own sampler
(`priorkit.distill.students.runner.sample_student`); a 2D
student (sample_shape (2,)) gives a scatter plot instead of an image grid.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from priorkit.distill.core.atomic import atomic_open
from priorkit.distill.core.samplers import SOLVERS, initial_noise, sample
from priorkit.distill.loading import load_denoiser


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
    """Save a PIL image atomically, in the format its suffix names (.png, .gif, ...)."""
    fmt = Image.registered_extensions().get(Path(path).suffix.lower())
    if fmt is None:
        raise ValueError(f"unknown image format for {Path(path).name!r}")
    with atomic_open(path, "wb") as fh:
        image.save(fh, format=fmt)
    return Path(path)


def student_folder(model: str | Path) -> Path | None:
    """The student folder ``model`` names: a bundled student ("shapes-cd", "shapes-dmd2"), a student folder itself,
    or a ``priorkit distill`` output folder (its ``distill.json`` names the final student); None for anything else
    (bundled priors, diffusers folders)."""
    from priorkit.distill.core.loading import BUNDLED, BUNDLED_DIR
    from priorkit.distill.students.format import is_student_folder

    if str(model) in BUNDLED and is_student_folder(BUNDLED_DIR / str(model)):
        return BUNDLED_DIR / str(model)  # sampled with its own sampler, not as a prior
    path = Path(model).expanduser()
    if not path.is_dir():
        return None
    if is_student_folder(path):
        return path
    run = path / "distill.json"
    if not run.is_file():
        return None
    try:
        folder = Path(json.loads(run.read_text())["student"])
    except (json.JSONDecodeError, KeyError, TypeError):
        folder = None
    if folder is not None and is_student_folder(folder):
        return folder
    from priorkit.distill.students.runner import (
        final_folder,  # the path in distill.json may be relative to another cwd
    )

    try:
        return final_folder("", path)
    except FileNotFoundError:
        return None


def scatter_image(points: Tensor, title: str = "", size: float = 4.0) -> Image.Image:
    """A scatter plot of 2D points (N, 2) as a PIL image (matplotlib, Agg backend)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    xy = points.detach().double().cpu().numpy()
    fig, ax = plt.subplots(figsize=(size, size), dpi=100)
    try:
        ax.scatter(xy[:, 0], xy[:, 1], s=3, alpha=0.5, linewidths=0)
        ax.set_aspect("equal", adjustable="datalim")
        ax.set_title(title, fontsize=9)
        fig.tight_layout()
        fig.canvas.draw()
        image = Image.fromarray(np.asarray(fig.canvas.buffer_rgba())[..., :3].copy())
    finally:
        plt.close(fig)
    return image


def check_finite_samples(x: torch.Tensor, model: str | Path) -> None:
    """FloatingPointError when samples hold NaN or inf (a diverged or damaged model): never written as a black
    grid."""
    bad = int((~torch.isfinite(x)).sum())
    if bad:
        raise FloatingPointError(f"the samples of {str(model)!r} hold NaN or inf ({bad} of {x.numel()} values): "
                                 "nothing written; the model's weights may be damaged or diverged")


def sample_student_grid(folder: str | Path, prompts: list[str], *, n: int | None = None, steps: int | None = None,
                        guidance: float | None = None, label: int | None = None, seed: int = 0,
                        out: str | Path = "outputs/samples.png") -> Path:
    """Sample a distilled student with its own sampler and write a PNG; returns its path.

    Image students: ``n`` (default 8) images per prompt (one row each; text students need at least one prompt),
    decoded through the VAE of ``vae_from`` for latent students. 2D students: a scatter plot of ``n`` (default
    2000) points.
    ``steps``: the student's sampler steps (default: what it was made for); ``guidance``: the weight w of a
    guidance-distilled student (ignored by the others, whose teacher's guidance is built in); ``label``: the
    class of a class-conditional 2D student.
    """
    from priorkit.distill.students.format import read_meta
    from priorkit.distill.students.runner import sample_student

    folder = Path(folder)
    meta = read_meta(folder)
    spec = json.loads((folder / "config.json").read_text())
    shape = tuple(spec.get("sample_shape") or ())
    text = bool(meta.get("text_encoder"))
    if text and not prompts:
        raise ValueError(f"student {str(folder)!r} is text-conditional: give at least one --prompt")
    if not text and prompts:
        raise ValueError(f"student {str(folder)!r} takes no prompt")
    if any(not p.strip() for p in prompts):
        raise ValueError("empty prompt")
    if steps is not None and steps < 1:
        raise ValueError(f"steps must be >= 1; got {steps}")
    points = len(shape) == 1 and shape[0] == 2
    n = n if n is not None else (2000 if points else 8)
    if n < 1:
        raise ValueError(f"n must be >= 1; got {n}")
    w = guidance if meta.get("guidance") == "distilled" else None
    rows = list(prompts) if text else [None]
    prompt = [p for p in rows for _ in range(n)] if text else None
    t0 = time.time()
    x = sample_student(folder, n * len(rows), steps=steps, prompt=prompt, label=label, w=w, seed=seed)
    k = steps or int(meta.get("steps", 1))
    plural = "s" if k != 1 else ""
    print(f"{(time.time() - t0) / (n * len(rows)):.4f} s per sample ({k} step{plural}, {meta.get('method')} student)")
    out = Path(out)
    if points:
        check_finite_samples(x, folder)
        title = f"{meta.get('method', 'student')}, {k} step{plural}, n={x.shape[0]}"
        return save_atomic(scatter_image(x, title), out)
    if len(shape) != 3:
        raise ValueError(f"cannot draw samples of shape {shape}: expected images (C, H, W) or 2D points")
    if meta.get("vae_from"):
        with torch.no_grad():
            x = load_denoiser(meta["vae_from"]).decode_images(x)
    check_finite_samples(x, folder)
    return save_atomic(grid_image(x, ncol=n, scale=4 if x.shape[-1] <= 32 else 2), out)


def sample_grid(model: str, prompts: list[str], *, n: int = 8, steps: int = 25, solver: str = "dpm++2m",
                guidance: float = 3.0, seed: int = 0, out: str | Path = "outputs/samples.png") -> Path:
    """Sample ``n`` images per prompt (one row each) and write a PNG grid; returns its path.

    A student folder (see :func:`student_folder`) is sampled with its own sampler by :func:`sample_student_grid`.
    """
    folder = student_folder(model)
    if folder is not None:
        return sample_student_grid(folder, prompts, n=n, steps=steps, guidance=guidance, seed=seed, out=out)
    if solver not in SOLVERS:
        raise ValueError(f"unknown solver {solver!r}; expected one of {sorted(SOLVERS)}")
    den = load_denoiser(model)
    conditional = getattr(den, "conditional", False)
    if conditional and not prompts:
        raise ValueError(f"model {model!r} is text-conditional: give at least one --prompt")
    if not conditional and prompts:
        raise ValueError(f"model {model!r} is unconditional: it takes no --prompt")
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
    check_finite_samples(torch.cat(images), model)
    return save_atomic(grid_image(torch.cat(images), ncol=n, scale=4 if den.sample_shape[-1] <= 32 else 2), Path(out))
