"""Blurs: convolution with a kernel, circular (diagonal in Fourier: A^T, A^+, the solve and prox_l2 in closed form) or
with a reflected border (exact adjoint; A^+, the solve and prox_l2 by conjugate gradients); Gaussian and motion kernels.

Blur is a true convolution ``y[i] = sum_m k[m] x[i - m + c]`` with centre ``c = (kh // 2, kw // 2)``, as in deepinv's
``BlurFFT`` and ``conv2d``.
"""

from __future__ import annotations

import math

import kornia
import torch
import torch.nn.functional as F
from torch import Tensor

from priorkit.inverse.operators.base import Operator, Scalar, _per_batch

__all__ = ["Blur", "gaussian_kernel", "motion_kernel"]


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

    def prox_l2(self, z: Tensor, y: Tensor, gamma: Scalar) -> Tensor:
        """argmin_x ||k * x - y||^2 / 2 + ||x - z||^2 / (2 gamma); z, y, x (B, C, H, W), gamma > 0 float or (B,).

        circular -> per frequency X = (conj(K) Y + Z / gamma) / (|K|^2 + 1 / gamma); reflect -> the base class
        (Woodbury with the CG solve)."""
        if self.boundary != "circular":
            return super().prox_l2(z, y, gamma)
        g = _per_batch(gamma, z)
        if bool((g <= 0).any()):
            raise ValueError("prox_l2 needs gamma > 0")
        K = self._otf(z)
        num = K.conj() * torch.fft.rfft2(y) + torch.fft.rfft2(z) / g
        return torch.fft.irfft2(num / (K.abs() ** 2 + 1 / g), s=z.shape[-2:])
