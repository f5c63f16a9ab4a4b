"""Classical restorations, one per operator family: bicubic upsampling (downsampling), Wiener deconvolution (blur),
biharmonic inpainting (masks); the regularised pseudo-inverse for any other operator.

They are the baselines every prior method is compared with (``benchmarks.inverse``), a restoration method of their
own (``--method classical``: no prior, instant), and the warm start of the prior methods (Chung, Sim & Ye 2022,
"Come-Closer-Diffuse-Faster": start the reverse process at an intermediate time from the forward-noised classical
estimate, so fewer steps are spent on what the measurement already says).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from priorkit.distill.core.denoiser import Condition, Denoiser
from priorkit.inverse.operators import Blur, Downsampling, Inpainting, Operator

__all__ = ["WIENER_BALANCE_PER_VAR", "bicubic_upsample", "wiener_deblur", "biharmonic_inpaint", "classical_image",
           "classical", "regularised_pinv"]

#: Wiener balance = 50 sigma_y^2 in image range (0.005 at sigma_y = 0.01), tuned on a training photo
WIENER_BALANCE_PER_VAR = 50.0


def bicubic_upsample(y: Tensor, factor: int) -> Tensor:
    """(B, C, h, w) -> (B, C, h f, w f) by bicubic interpolation (torch, align_corners=False), clamped to [0, 1]."""
    return F.interpolate(y, scale_factor=factor, mode="bicubic", align_corners=False).clamp(0.0, 1.0)


def wiener_deblur(y: Tensor, kernel: Tensor, balance: float) -> Tensor:
    """Wiener deconvolution (skimage.restoration.wiener: Laplacian regulariser, circular boundary) per channel.

    y (B, C, H, W) blurred by the true convolution with ``kernel`` ((kh, kw) or (1 or B, kh, kw)) centred at
    (kh // 2, kw // 2) — the convention of priorkit.inverse.operators.Blur and skimage's. Returns (B, C, H, W) in [0,
    1].
    """
    from skimage.restoration import wiener

    psf = kernel.detach().double().cpu().numpy().reshape(-1, *kernel.shape[-2:])      # (1 or B, kh, kw)
    arr = y.detach().double().cpu().numpy()
    out = np.stack([np.stack([wiener(im[c], psf[i % len(psf)], balance, clip=False) for c in range(im.shape[0])])
                    for i, im in enumerate(arr)])
    return torch.from_numpy(out).to(y.dtype).clamp(0.0, 1.0)


def biharmonic_inpaint(y: Tensor, mask: Tensor) -> Tensor:
    """Biharmonic inpainting (skimage.restoration.inpaint_biharmonic) of y (B, C, H, W) where ``mask`` is 0.

    mask: (1 or B, 1 or C, H, W) of 0 (missing) / 1 (observed), as priorkit.inverse.operators.Inpainting holds it; a
    pixel is
    filled when any channel is missing. Returns (B, C, H, W) in [0, 1].
    """
    from skimage.restoration import inpaint_biharmonic

    arr = y.detach().double().cpu().numpy()
    missing = (mask.detach().expand(y.shape) == 0).any(dim=1).cpu().numpy()   # (B, H, W)
    out = np.stack([inpaint_biharmonic(im.transpose(1, 2, 0), missing[i], channel_axis=-1).transpose(2, 0, 1)
                    for i, im in enumerate(arr)])
    return torch.from_numpy(np.ascontiguousarray(out)).to(y.dtype).clamp(0.0, 1.0)


def classical_image(op: Operator, y: Tensor, sigma_y: float) -> Tensor:
    """The classical restoration for ``op``: bicubic (Downsampling), Wiener (Blur), biharmonic (Inpainting)."""
    if isinstance(op, Downsampling):
        return bicubic_upsample(y, op.factor)
    if isinstance(op, Blur):
        return wiener_deblur(y, op.kernel, max(1e-4, WIENER_BALANCE_PER_VAR * sigma_y**2))
    if isinstance(op, Inpainting):
        return biharmonic_inpaint(y, op.mask)
    raise ValueError(f"no classical baseline for {type(op).__name__}")


def regularised_pinv(operator: Operator, y: Tensor, s: float = 0.0) -> Tensor:
    """``A^T (A A^T + s^2 I)^{-1} y``: A^+ y for s = 0, the Wiener/Tikhonov estimate for s > 0 (no noise blow-up)."""
    if s <= 0:
        return operator.pinv(y)
    return operator.At(operator.solve(y, 1.0, s))


def classical(denoiser: Denoiser | None, operator: Operator, y: Tensor, sigma_y: float, *, cond: Condition = None,
              guidance: float = 1.0, shape: tuple[int, ...] | None = None, generator: torch.Generator | None = None,
              progress: bool | None = None) -> Tensor:
    """The registry's "classical" method: :func:`classical_image` in model range ([-1, 1]; no prior, no steps).
    Operators without a classical method get the regularised pseudo-inverse ``A^T (A A^T + s^2 I)^-1 y``."""
    if isinstance(operator, (Downsampling, Blur, Inpainting)):
        return classical_image(operator, (y + 1.0) / 2.0, sigma_y / 2.0) * 2.0 - 1.0
    return regularised_pinv(operator, y, sigma_y)

