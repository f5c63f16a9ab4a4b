"""Images in and out of the web app: examples, the editor's value (image and painted mask), resizing, plots."""

from __future__ import annotations

import functools
import math
from typing import Any

import gradio as gr
import numpy as np
import torch
from torch import Tensor

from priorkit.apps.web_common import UserInputError

SHAPES_EXAMPLE = "shapes: a red cube"
NO_EXAMPLE = "(your image)"


def _to_uint8(image: Tensor) -> np.ndarray:
    """(3, H, W) in [0, 1] -> uint8 (H, W, 3)."""
    return (image.detach().clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255 + 0.5).astype(np.uint8)


def _enlarge(image: np.ndarray, min_height: int) -> np.ndarray:
    """Repeat pixels (nearest neighbour) by the smallest integer factor that makes (H, W, 3) at least ``min_height``."""
    k = max(1, math.ceil(min_height / max(1, image.shape[0])))
    return image.repeat(k, axis=0).repeat(k, axis=1) if k > 1 else image


def _figure_to_array(fig: Any) -> np.ndarray:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def example_names() -> tuple[str, ...]:
    from priorkit.distill.zoo.photos import HELD_OUT

    return (NO_EXAMPLE, *HELD_OUT, SHAPES_EXAMPLE)


@functools.lru_cache(maxsize=8)
def example_image(name: str) -> Tensor:
    """A clean example (3, H, W) in [0, 1]: a held-out photo, or a 32x32 shapes-world render of a red cube."""
    if name == SHAPES_EXAMPLE:
        from priorkit.distill.core.cameras import Camera
        from priorkit.distill.zoo.shapes import render

        return render(["cube"], ["red"], [Camera(azimuth=30.0, elevation=20.0)], size=32,
                      lights=torch.tensor([0.3, -0.2, 1.0]))[0]
    from priorkit.distill.zoo.photos import HELD_OUT, load_photo

    if name not in HELD_OUT:
        raise UserInputError(f"unknown example {name!r}")
    return load_photo(name)


def _as_array(value: Any) -> np.ndarray | None:
    """An editor image (numpy array or PIL image, as Gradio preprocesses uploads) as a numpy array."""
    if value is None:
        return None
    if isinstance(value, np.ndarray):
        return value
    from PIL import Image

    if isinstance(value, Image.Image):
        return np.asarray(value)
    raise UserInputError("unsupported image value")


def editor_image(value: Any, max_side: int) -> tuple[Tensor, Tensor | None]:
    """(image (3, H, W) in [0, 1], painted (H, W) in [0, 1] or None) from an ImageEditor value.

    The background is the image (transparent pixels over white); the union of the painted layers' alpha is the
    painted region (resized to the image when the canvas differs). Raises `UserInputError` for missing or
    oversized images.
    """
    if isinstance(value, dict):
        background, layers = _as_array(value.get("background")), value.get("layers") or []
        if background is None:
            background = _as_array(value.get("composite"))
    else:
        background, layers = _as_array(value), []
    if background is None:
        raise UserInputError("upload an image or pick an example first")
    if background.ndim == 2:
        background = background[..., None].repeat(3, axis=-1)
    h, w = background.shape[:2]
    if max(h, w) > max_side:
        raise UserInputError(f"the image is {w}x{h}; the app takes images up to {max_side} pixels per side")
    if min(h, w) < 4:
        raise UserInputError(f"the image is {w}x{h}; it is too small")
    arr = background.astype(np.float32) / 255.0
    if arr.shape[-1] == 4:
        arr = arr[..., :3] * arr[..., 3:] + (1.0 - arr[..., 3:])  # over white
    image = torch.from_numpy(np.ascontiguousarray(arr[..., :3].transpose(2, 0, 1))).float()
    painted = None
    for layer in layers:
        a = _as_array(layer)
        if a is None or a.ndim != 3 or a.shape[-1] != 4:
            continue
        alpha = torch.from_numpy(a[..., 3].astype(np.float32) / 255.0)
        if tuple(alpha.shape) != (h, w):
            alpha = torch.nn.functional.interpolate(alpha[None, None], size=(h, w), mode="bilinear")[0, 0]
        painted = alpha if painted is None else torch.maximum(painted, alpha)
    return image, painted


def fit_side(image: Tensor, painted: Tensor | None, side: int) -> tuple[Tensor, Tensor | None]:
    """Resize (antialiased) so the longer side is at most ``side``; the painted map follows (bilinear)."""
    h, w = image.shape[-2:]
    if max(h, w) <= side:
        return image, painted
    s = side / max(h, w)
    size = (max(1, round(h * s)), max(1, round(w * s)))
    image = torch.nn.functional.interpolate(image[None], size=size, mode="bilinear", antialias=True)[0].clamp(0, 1)
    if painted is not None:
        painted = torch.nn.functional.interpolate(painted[None, None], size=size, mode="bilinear")[0, 0]
    return image, painted


def scatter_plot(samples: Tensor, truth: Tensor, title: str) -> np.ndarray:
    """A scatter plot (uint8 (H, W, 3)) of 2D samples (N, 2) over exact samples (M, 2)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5, 5), dpi=80)
    ax = fig.add_subplot()
    t, s = truth.double().numpy(), samples.detach().double().numpy()
    ax.scatter(t[:, 0], t[:, 1], s=2, c="0.7", label="exact samples")
    ax.scatter(s[:, 0], s[:, 1], s=3, c="tab:red", label="generated")
    ax.set_xlim(-3.2, 3.2)
    ax.set_ylim(-3.2, 3.2)
    ax.set_aspect("equal")
    ax.legend(loc="upper right", fontsize=8)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return _figure_to_array(fig)


def unreadable_image_message(err: BaseException) -> str:
    """Why an uploaded file cannot be used, in words that name no server path."""
    from PIL import Image, UnidentifiedImageError

    if isinstance(err, Image.DecompressionBombError):
        return f"the uploaded image has too many pixels (more than {2 * (Image.MAX_IMAGE_PIXELS or 0):,})"
    if isinstance(err, UnidentifiedImageError):
        return "the uploaded file is not an image this server reads (PNG, JPEG, WebP, GIF, BMP or TIFF)"
    if isinstance(err, MemoryError):
        return "the uploaded image is too large to decode"
    return "the uploaded image is damaged or truncated and cannot be decoded"


def safe_image_editor(**kwargs: Any) -> Any:
    """A `gr.ImageEditor` whose decoding failures reach the page as one readable sentence.

    Gradio's own message for a file PIL cannot open ("Could not preprocess input component ...") names the
    server's temporary upload path; this one says what is wrong with the file and nothing about the server.
    (The instance's ``preprocess`` is wrapped: a subclass of a Gradio component would make Gradio write a .pyi
    stub next to this module.)
    """
    editor = gr.ImageEditor(**kwargs)
    decode = editor.preprocess

    def preprocess(payload: Any) -> Any:
        try:
            return decode(payload)
        except (OSError, ValueError, SyntaxError, MemoryError) as err:  # PIL raises all of these for bad files
            raise gr.Error(unreadable_image_message(err), print_exception=False) from None

    editor.preprocess = preprocess
    return editor
