"""Linear degradation operators for training-free restoration with diffusion priors.

Every operator is a linear map ``A`` from images ``x`` of shape ``(B, C, H, W)`` to measurements ``y`` and knows

* ``A(x)``          the forward map,
* ``At(y)``         the exact adjoint ``A^T``,
* ``pinv(y)``       the Moore-Penrose pseudo-inverse ``A^+`` (thresholded where ``A`` is ill-conditioned),
* ``solve(b, r, s)`` the solution ``z`` of ``(r^2 A A^T + s^2 I) z = b`` in measurement space,

in closed form where ``A`` diagonalises (pixels, blocks, Fourier, separable matrices), by conjugate gradients
otherwise.  ``solve_cg`` and ``pinv_cg`` are the generic conjugate-gradient paths, available on every operator.

Conventions
-----------
* Images handled by :class:`Measurement` are in the ``[0, 1]`` range; priors work in ``[-1, 1]``
  (``x_m = 2 x - 1``).  Since ``A`` is linear, ``A(x_m) = 2 A(x) - A(1)``, so a measurement ``y = A(x) + sigma_y n``
  becomes ``y_m = 2 y - A(1) = A(x_m) + 2 sigma_y n`` in model range: same operator, noise ``2 sigma_y``.
  For inpainting ``A(1)`` is the mask.
* Blur is a true convolution ``y[i] = sum_m k[m] x[i - m + c]`` with centre ``c = (kh // 2, kw // 2)``, as in
  deepinv's ``BlurFFT`` and ``conv2d``.
* Inpainting keeps ``y`` in the full image shape with zeros at missing pixels (``A`` self-adjoint, ``A^+ = A``).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import kornia
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "Operator",
    "Inpainting",
    "Blur",
    "Downsampling",
    "Measurement",
    "conjugate_gradient",
    "box_mask",
    "half_mask",
    "random_mask",
    "stroke_mask",
    "mask_from_image",
    "gaussian_kernel",
    "motion_kernel",
    "to_model_range",
    "to_image_range",
    "noise_in_model_range",
    "measurement_to_model_range",
    "measurement_to_image_range",
]

Scalar = float | Tensor


# ----------------------------------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------------------------------


def _bdot(a: Tensor, b: Tensor) -> Tensor:
    """Per-sample inner product over all but the batch dimension, shape (B, 1, ..., 1)."""
    return (a * b).flatten(1).sum(1).view(-1, *([1] * (a.ndim - 1)))


def _per_batch(v: Scalar, ref: Tensor) -> Tensor:
    """Float, 0-d or (B,) tensor -> tensor broadcastable against ``ref`` (B, ...)."""
    v = torch.as_tensor(v, dtype=ref.dtype, device=ref.device)
    if v.ndim == 0:
        return v
    if v.ndim == 1 and v.shape[0] in (1, ref.shape[0]):
        return v.view(-1, *([1] * (ref.ndim - 1)))
    raise ValueError(f"expected a float or a tensor of shape ({ref.shape[0]},), got shape {tuple(v.shape)}")


def _safe_div(a: Tensor, d: Tensor) -> Tensor:
    """a / d with 0 where d == 0 (pseudo-inverse of a diagonal)."""
    return torch.where(d > 0, a / torch.where(d > 0, d, torch.ones_like(d)), torch.zeros_like(a))


def conjugate_gradient(
    apply: Callable[[Tensor], Tensor],
    b: Tensor,
    x0: Tensor | None = None,
    tol: float = 1e-6,
    max_iter: int = 200,
    batched: bool = True,
) -> Tensor:
    """Solve ``apply(x) = b`` for a symmetric positive (semi-)definite linear ``apply`` by conjugate gradients.

    Args:
        apply: the linear map, tensor -> tensor of the same shape as ``b``.
        b: right-hand side, shape (B, ...).
        x0: initial guess, shape of ``b`` (zeros if None; zeros keep the iterates in range(apply), giving the
            minimum-norm solution of a consistent singular system).
        tol: stop when ``||b - apply(x)|| <= tol * ||b||`` (per sample if ``batched``).
        max_iter: maximum number of iterations.
        batched: if True, dim 0 indexes independent systems (``apply`` must act on each sample separately) and
            every sample gets its own step sizes; if False, the whole tensor is one system.

    Returns:
        x: shape of ``b``.
    """
    # Hestenes-Stiefel CG: x += alpha p, r -= alpha A p, p = r + beta p
    dot = _bdot if batched else (lambda u, v: (u * v).sum())
    x = torch.zeros_like(b) if x0 is None else x0.clone()
    r = b - apply(x) if x0 is not None else b.clone()
    p = r.clone()
    rs = dot(r, r)
    stop = (tol**2) * dot(b, b)
    for _ in range(max_iter):
        active = rs > stop
        if not bool(active.any()):
            break
        Ap = apply(p)
        pAp = dot(p, Ap)
        ok = active & (pAp > 0)
        alpha = torch.where(ok, rs / torch.where(ok, pAp, torch.ones_like(pAp)), torch.zeros_like(pAp))
        x = x + alpha * p
        r = r - alpha * Ap
        rs_new = dot(r, r)
        beta = torch.where(ok, rs_new / torch.where(ok, rs, torch.ones_like(rs)), torch.zeros_like(rs))
        p = r + beta * p
        rs = torch.where(ok, rs_new, rs)
    return x


# ----------------------------------------------------------------------------------------------------------------------
# Base class
# ----------------------------------------------------------------------------------------------------------------------


class Operator(nn.Module):
    """A linear degradation ``A``: images (B, C, H, W) -> measurements (shape set by the subclass).

    Subclasses implement ``A`` and ``At``; ``pinv`` and ``solve`` default to conjugate gradients and are overridden
    by closed forms where they exist.

    Args:
        cg_tol: relative residual tolerance of the CG fallbacks.
        cg_max_iter: iteration cap of the CG fallbacks.
    """

    def __init__(self, cg_tol: float = 1e-6, cg_max_iter: int = 200) -> None:
        super().__init__()
        self.cg_tol = cg_tol
        self.cg_max_iter = cg_max_iter

    def A(self, x: Tensor) -> Tensor:
        """Forward map: x (B, C, H, W) -> y."""
        raise NotImplementedError

    def At(self, y: Tensor) -> Tensor:
        """Adjoint map: y -> A^T y (B, C, H, W)."""
        raise NotImplementedError

    def forward(self, x: Tensor) -> Tensor:
        """Same as ``A(x)``."""
        return self.A(x)

    def AAt(self, y: Tensor) -> Tensor:
        """Gram operator in measurement space: y -> A A^T y."""
        return self.A(self.At(y))

    def pinv(self, y: Tensor) -> Tensor:
        """Pseudo-inverse A^+ y (B, C, H, W); default: CG on the normal equations (see ``pinv_cg``)."""
        return self.pinv_cg(y)

    def solve(self, b: Tensor, r: Scalar, s: Scalar) -> Tensor:
        """z with (r^2 A A^T + s^2 I) z = b; b, z measurement-shaped; r, s floats or (B,) tensors. Default: CG."""
        return self.solve_cg(b, r, s)

    def pinv_cg(self, y: Tensor) -> Tensor:
        """Minimum-norm least squares A^+ y by CG on A^T A x = A^T y started at 0 (iterates stay in range(A^T))."""
        return conjugate_gradient(lambda v: self.At(self.A(v)), self.At(y), tol=self.cg_tol, max_iter=self.cg_max_iter)

    def solve_cg(self, b: Tensor, r: Scalar, s: Scalar) -> Tensor:
        """(r^2 A A^T + s^2 I) z = b by CG (generic path, any operator); shapes as in ``solve``."""
        r2, s2 = _per_batch(r, b) ** 2, _per_batch(s, b) ** 2
        return conjugate_gradient(lambda z: r2 * self.AAt(z) + s2 * z, b, tol=self.cg_tol, max_iter=self.cg_max_iter)

    def measured(self, y: Tensor) -> Tensor:
        """Zero the entries of a measurement-shaped tensor that are not observed (identity except for inpainting)."""
        return y

    def ones_response(self, image_shape: Sequence[int], dtype: torch.dtype = torch.float32, device=None) -> Tensor:
        """A(1): the measurement of a constant-one image of shape ``image_shape`` (B, C, H, W)."""
        return self.A(torch.ones(tuple(image_shape), dtype=dtype, device=device))


# ----------------------------------------------------------------------------------------------------------------------
# Inpainting and masks
# ----------------------------------------------------------------------------------------------------------------------


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
        # ITU-R 601 luma for RGB, identity for one channel
        arr = arr[..., 0] if arr.shape[-1] == 1 else arr @ np.array([0.299, 0.587, 0.114])
    if arr.ndim != 2:
        raise ValueError(f"mask must be 2-D (H, W) or an image with channels, got shape {arr.shape}")

    if arr.dtype == np.bool_:
        grey = arr.astype(np.float64)
    elif arr.dtype == np.uint8:
        grey = arr.astype(np.float64) / 255.0
    elif np.issubdtype(arr.dtype, np.integer):
        if arr.min() < 0 or arr.max() > 255:
            raise ValueError("integer mask values must lie in [0, 255]")
        grey = arr.astype(np.float64) / (1.0 if arr.max() <= 1 else 255.0)
    elif np.issubdtype(arr.dtype, np.floating):
        grey = arr.astype(np.float64)
        if not np.isfinite(grey).all() or grey.min() < 0 or grey.max() > 1:
            raise ValueError("float mask values must be finite and lie in [0, 1]")
    else:
        raise ValueError(f"unsupported mask dtype {arr.dtype}")

    if grey.shape != (H, W):
        raise ValueError(f"mask is {grey.shape[0]}x{grey.shape[1]} but the image is {H}x{W}; resize it first")
    observed = grey >= threshold if keep == "white" else grey < threshold
    if not observed.any():
        raise ValueError(f"mask observes no pixel (convention: keep={keep!r} pixels are observed)")
    if observed.all():
        warnings.warn("mask observes every pixel: nothing to inpaint", stacklevel=2)
    return _mask_tensor(torch.from_numpy(observed))


# ----------------------------------------------------------------------------------------------------------------------
# Blur
# ----------------------------------------------------------------------------------------------------------------------


def gaussian_kernel(sigma: float | tuple[float, float], size: int | None = None) -> Tensor:
    """Normalised Gaussian kernel via ``kornia.filters.get_gaussian_kernel2d``.

    Args:
        sigma: standard deviation (or (sigma_y, sigma_x)) in pixels.
        size: odd kernel size; default ``2 * ceil(3 * max(sigma)) + 1``.

    Returns:
        (size, size) float32 kernel summing to 1.
    """
    sy, sx = (sigma, sigma) if isinstance(sigma, int | float) else sigma
    if size is None:
        size = 2 * math.ceil(3 * max(sy, sx)) + 1
    return kornia.filters.get_gaussian_kernel2d((size, size), (float(sy), float(sx)))[0]


def motion_kernel(size: int, angle: float, direction: float = 0.0) -> Tensor:
    """Linear motion-blur kernel via ``kornia.filters.get_motion_kernel2d``.

    Args:
        size: odd kernel size (length of the streak).
        angle: streak angle in degrees, counter-clockwise as displayed.
        direction: in [-1, 1]; 0 = uniform streak, +-1 = linearly weighted towards one end (kornia's convention).

    Returns:
        (size, size) float32 kernel summing to 1.
    """
    return kornia.filters.get_motion_kernel2d(size, float(angle), float(direction))[0]


def _reflect_index(n: int, front: int, rear: int, device) -> Tensor:
    """Source index of every entry of a reflect-padded axis of length n (torch 'reflect': no edge repeat)."""
    i = torch.arange(-front, n + rear, device=device)
    i = torch.where(i < 0, -i, i)
    return torch.where(i >= n, 2 * (n - 1) - i, i)


class Blur(Operator):
    """Convolution ``y = k * x`` with the same kernel on every channel; y has the image shape (B, C, H, W).

    ``boundary="circular"``: periodic convolution, diagonal in Fourier (closed-form A^T, A^+, solve).
    ``boundary="reflect"``: ``kornia.filters.filter2d(x, k, border_type="reflect", behaviour="conv")`` (torch
    'reflect', edge not repeated); exact adjoint = transposed convolution on the padded grid (in Fourier) with the
    reflected border folded back; A^+ and solve by CG.

    Args:
        kernel: (kh, kw) or (Bk, kh, kw) kernel, Bk in {1, B}; need not be normalised.
        boundary: "circular" or "reflect".
        pinv_tol: circular pinv drops frequencies with |K(w)| < pinv_tol * max |K| (thresholded Moore-Penrose).
    """

    def __init__(self, kernel: Tensor, boundary: str = "circular", pinv_tol: float = 1e-5, **cg) -> None:
        super().__init__(**cg)
        kernel = torch.as_tensor(kernel)
        if kernel.ndim == 2:
            kernel = kernel[None]
        if kernel.ndim != 3 or not kernel.is_floating_point():
            raise ValueError(f"kernel must be a float tensor (k, k) or (B, k, k), got {tuple(kernel.shape)}")
        if boundary not in ("circular", "reflect"):
            raise ValueError(f"boundary must be 'circular' or 'reflect', got {boundary!r}")
        self.boundary = boundary
        self.pinv_tol = pinv_tol
        self.register_buffer("kernel", kernel)

    def _k(self, x: Tensor) -> Tensor:
        return self.kernel.to(dtype=x.dtype, device=x.device)

    # -- circular: K(w) = FFT of the kernel zero-padded to (H, W) and rolled so that its centre sits at (0, 0)
    def _otf(self, like: Tensor, size: tuple[int, int] | None = None) -> Tensor:
        """Transfer function on a (H, W) grid (default: like's size), complex (Bk, 1, H, W // 2 + 1)."""
        H, W = like.shape[-2:] if size is None else size
        k = self._k(like)
        kh, kw = k.shape[-2:]
        if kh > H or kw > W:
            raise ValueError(f"kernel {kh}x{kw} larger than image {H}x{W}")
        k = F.pad(k, (0, W - kw, 0, H - kh)).roll((-(kh // 2), -(kw // 2)), dims=(-2, -1))
        return torch.fft.rfft2(k)[:, None]

    def _fourier(self, x: Tensor, mult: Tensor) -> Tensor:
        return torch.fft.irfft2(torch.fft.rfft2(x) * mult, s=x.shape[-2:])

    # -- reflect
    def _pads(self) -> tuple[int, int, int, int]:
        """(top, bottom, left, right) padding used by kornia filter2d 'same'."""
        kh, kw = self.kernel.shape[-2:]
        return (kh - 1) // 2, kh - 1 - (kh - 1) // 2, (kw - 1) // 2, kw - 1 - (kw - 1) // 2

    def A(self, x: Tensor) -> Tensor:
        """y = k * x, shape (B, C, H, W)."""
        if self.boundary == "circular":
            return self._fourier(x, self._otf(x))
        return kornia.filters.filter2d(x, self._k(x), border_type="reflect", behaviour="conv")

    def At(self, y: Tensor) -> Tensor:
        """A^T y (B, C, H, W): circular -> multiply by conj(K); reflect -> transposed conv, fold the border back."""
        if self.boundary == "circular":
            return self._fourier(y, self._otf(y).conj())
        # reflect A = crop o C o P (P: reflect pad, C: circular conv on the padded grid, which never wraps around
        # for the kept pixels); A^T = P^T o C^T o crop^T, with C^T done in Fourier on the padded grid
        H, W = y.shape[-2:]
        top, bottom, left, right = self._pads()
        u = F.pad(y, (left, right, top, bottom))
        u = self._fourier(u, self._otf(u).conj())
        # P^T: each padded entry adds back onto the pixel it was copied from
        u = u.new_zeros(*u.shape[:-2], H, u.shape[-1]).index_add(-2, _reflect_index(H, top, bottom, u.device), u)
        return u.new_zeros(*u.shape[:-2], H, W).index_add(-1, _reflect_index(W, left, right, u.device), u)

    def pinv(self, y: Tensor) -> Tensor:
        """A^+ y: circular -> conj(K) / |K|^2 on |K| >= tol * max|K|, else 0; reflect -> CG on normal equations."""
        if self.boundary != "circular":
            return self.pinv_cg(y)
        K = self._otf(y)
        mag = K.abs()
        keep = mag >= self.pinv_tol * mag.flatten(1).amax(1).view(-1, 1, 1, 1)
        inv = torch.where(keep, 1 / torch.where(keep, K, torch.ones_like(K)), torch.zeros_like(K))
        return self._fourier(y, inv)

    def solve(self, b: Tensor, r: Scalar, s: Scalar) -> Tensor:
        """(r^2 A A^T + s^2) z = b: circular -> divide by r^2 |K|^2 + s^2 in Fourier (0 where it vanishes)."""
        if self.boundary != "circular":
            return self.solve_cg(b, r, s)
        d = _per_batch(r, b) ** 2 * self._otf(b).abs() ** 2 + _per_batch(s, b) ** 2
        Bf = torch.fft.rfft2(b)
        zf = torch.where(d > 0, Bf / torch.where(d > 0, d, torch.ones_like(d)), torch.zeros_like(Bf))
        return torch.fft.irfft2(zf, s=b.shape[-2:])


# ----------------------------------------------------------------------------------------------------------------------
# Downsampling
# ----------------------------------------------------------------------------------------------------------------------


def _bicubic_matrix(n: int, factor: int) -> Tensor:
    """(n // factor, n) float64 matrix of torch's antialiased bicubic 1-D downsampling (rows = output pixels)."""
    eye = torch.eye(n, dtype=torch.float64).view(n, 1, 1, n)
    out = F.interpolate(eye, size=(1, n // factor), mode="bicubic", antialias=True, align_corners=False)
    return out.view(n, n // factor).T.contiguous()


class Downsampling(Operator):
    """Downsampling by an integer ``factor``: (B, C, H, W) -> (B, C, H / factor, W / factor).

    ``kind="average"``: block mean (``avg_pool2d``); A A^T = I / f^2, so A^T = nearest upsampling / f^2,
    A^+ = f^2 A^T = nearest upsampling and solve are closed form.
    ``kind="bicubic"``: ``F.interpolate(x, size=(H/f, W/f), mode="bicubic", antialias=True, align_corners=False)``
    (Keys a = -0.5 kernel stretched by f, PIL-like, weights renormalised at borders).  It is separable, so it is
    applied as ``D_h x D_w^T`` with the 1-D matrices read off torch's implementation: the adjoint ``D_h^T y D_w``
    is exact, ``A^+ = D_h^+ y D_w^{+T}`` and solve (eigendecomposition of D D^T per axis) are closed form too.

    Args:
        factor: integer downsampling factor (2, 4, 8, ...); H and W must be divisible by it.
        kind: "average" or "bicubic".
    """

    def __init__(self, factor: int, kind: str = "average", **cg) -> None:
        super().__init__(**cg)
        if int(factor) != factor or factor < 1:
            raise ValueError(f"factor must be a positive integer, got {factor}")
        if kind not in ("average", "bicubic"):
            raise ValueError(f"kind must be 'average' or 'bicubic', got {kind!r}")
        self.factor = int(factor)
        self.kind = kind
        self._cache: dict = {}

    def _check(self, x: Tensor) -> None:
        H, W = x.shape[-2:]
        if H % self.factor or W % self.factor:
            raise ValueError(f"image size {H}x{W} is not divisible by factor {self.factor}")

    def _mats(self, n: int, like: Tensor) -> dict[str, Tensor]:
        """Per-axis matrices for a high-res axis of length n: D, pinv(D), eig of D D^T (cast to like's dtype)."""
        key = (n, like.dtype, like.device)
        if key not in self._cache:
            D = _bicubic_matrix(n, self.factor)
            lam, U = torch.linalg.eigh(D @ D.T)
            mats = {"D": D, "P": torch.linalg.pinv(D), "lam": lam, "U": U}
            self._cache[key] = {k: v.to(dtype=like.dtype, device=like.device) for k, v in mats.items()}
        return self._cache[key]

    def A(self, x: Tensor) -> Tensor:
        """y = block mean or bicubic downsampling of x, shape (B, C, H / f, W / f)."""
        self._check(x)
        if self.kind == "average":
            return F.avg_pool2d(x, self.factor)
        return self._mats(x.shape[-2], x)["D"] @ x @ self._mats(x.shape[-1], x)["D"].T

    def At(self, y: Tensor) -> Tensor:
        """A^T y, shape (B, C, H, W): nearest upsampling / f^2 (average) or D_h^T y D_w (bicubic)."""
        f = self.factor
        if self.kind == "average":
            return y.repeat_interleave(f, -2).repeat_interleave(f, -1) / f**2
        return self._mats(y.shape[-2] * f, y)["D"].T @ y @ self._mats(y.shape[-1] * f, y)["D"]

    def pinv(self, y: Tensor) -> Tensor:
        """A^+ y = A^T (A A^T)^-1 y: nearest upsampling (average) or D_h^+ y D_w^{+T} (bicubic)."""
        f = self.factor
        if self.kind == "average":
            return y.repeat_interleave(f, -2).repeat_interleave(f, -1)
        return self._mats(y.shape[-2] * f, y)["P"] @ y @ self._mats(y.shape[-1] * f, y)["P"].T

    def solve(self, b: Tensor, r: Scalar, s: Scalar) -> Tensor:
        """(r^2 A A^T + s^2) z = b: scalar (average) or diagonal in the eigenbasis U_h (x) U_w of D D^T (bicubic)."""
        r2, s2 = _per_batch(r, b) ** 2, _per_batch(s, b) ** 2
        if self.kind == "average":
            return _safe_div(b, (r2 / self.factor**2 + s2).expand_as(b))
        mh, mw = self._mats(b.shape[-2] * self.factor, b), self._mats(b.shape[-1] * self.factor, b)
        c = mh["U"].T @ b @ mw["U"]
        c = _safe_div(c, (r2 * mh["lam"][:, None] * mw["lam"][None, :] + s2).expand_as(c))
        return mh["U"] @ c @ mw["U"].T


# ----------------------------------------------------------------------------------------------------------------------
# Measurements, noise and value ranges
# ----------------------------------------------------------------------------------------------------------------------


def to_model_range(x: Tensor) -> Tensor:
    """[0, 1] image -> [-1, 1] model range: x_m = 2 x - 1."""
    return 2 * x - 1


def to_image_range(x: Tensor) -> Tensor:
    """[-1, 1] model range -> [0, 1] image: x = (x_m + 1) / 2."""
    return (x + 1) / 2


def noise_in_model_range(sigma_y: Scalar) -> Scalar:
    """Noise std in model range for std ``sigma_y`` in image range: 2 sigma_y."""
    return 2 * sigma_y


def measurement_to_model_range(op: Operator, y: Tensor, image_shape: Sequence[int]) -> Tensor:
    """y_m = 2 y - A(1), so that y_m = A(2 x - 1) + 2 sigma_y n when y = A(x) + sigma_y n.

    Args:
        op: the operator.
        y: measurement in image range (measurement-shaped).
        image_shape: (B, C, H, W) shape of the images ``op`` acts on (needed for A(1)).
    """
    return 2 * y - op.ones_response(image_shape, y.dtype, y.device)


def measurement_to_image_range(op: Operator, y_m: Tensor, image_shape: Sequence[int]) -> Tensor:
    """Inverse of ``measurement_to_model_range``: y = (y_m + A(1)) / 2."""
    return (y_m + op.ones_response(image_shape, y_m.dtype, y_m.device)) / 2


class Measurement:
    """Noisy measurement model ``y = A(x) + sigma_y n`` with x in [0, 1] and sigma_y stated in [0, 1] units.

    A solver in the [-1, 1] model range uses the same operator with ``to_model(y)`` = 2 y - A(1) and noise
    std ``sigma_model`` = 2 sigma_y.  Noise is only added where the operator observes (``op.measured``), so
    inpainting measurements stay zero at missing pixels.

    Args:
        op: the degradation operator.
        sigma_y: Gaussian noise std in image range.
    """

    def __init__(self, op: Operator, sigma_y: float = 0.0) -> None:
        self.op = op
        self.sigma_y = sigma_y

    @property
    def sigma_model(self) -> float:
        """Noise std of ``to_model(y)`` in model range: 2 sigma_y."""
        return noise_in_model_range(self.sigma_y)

    def __call__(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Measure an image x (B, C, H, W) in [0, 1]: y = A(x) + sigma_y n (n standard normal, observed entries)."""
        y = self.op.A(x)
        n = torch.randn(y.shape, generator=generator, dtype=y.dtype, device=y.device)
        return y + self.sigma_y * self.op.measured(n)

    def to_model(self, y: Tensor, image_shape: Sequence[int]) -> Tensor:
        """Image-range measurement -> model-range measurement: 2 y - A(1)."""
        return measurement_to_model_range(self.op, y, image_shape)

    def to_image(self, y_m: Tensor, image_shape: Sequence[int]) -> Tensor:
        """Model-range measurement -> image-range measurement: (y_m + A(1)) / 2."""
        return measurement_to_image_range(self.op, y_m, image_shape)
