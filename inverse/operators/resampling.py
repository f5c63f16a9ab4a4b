"""Resampling: downsampling by an integer factor for super-resolution, by block mean (A A^T = I / f^2) or antialiased
bicubic (separable, ``D_h x D_w^T``); A^T, A^+, the solve and prox_l2 in closed form for both.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from priorkit.inverse.operators.base import Operator, Scalar, _per_batch, _safe_div

__all__ = ["Downsampling"]


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
    ``prox_l2`` is the base class's, through this closed-form solve (Woodbury), so closed form for both kinds.

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
