"""The operator base class, conjugate gradients and composition of operators.

Every operator is a linear map ``A`` from images ``x`` of shape ``(B, C, H, W)`` to measurements ``y`` and knows

* ``A(x)``                the forward map,
* ``At(y)``               the exact adjoint ``A^T``,
* ``pinv(y)``             the Moore-Penrose pseudo-inverse ``A^+`` (thresholded where ``A`` is ill-conditioned),
* ``solve(b, r, s)``      the solution ``z`` of ``(r^2 A A^T + s^2 I) z = b`` in measurement space,
* ``prox_l2(z, y, gamma)`` argmin_x ||A x - y||^2 / 2 + ||x - z||^2 / (2 gamma),

in closed form where ``A`` diagonalises (pixels, blocks, Fourier, separable matrices), by conjugate gradients
otherwise (``solve_cg``, ``pinv_cg``, ``prox_l2_cg`` are the generic paths, available on every operator), and
composes: ``A * B`` is x -> A(B(x)).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

__all__ = ["Operator", "ComposedOperator", "Scalar", "conjugate_gradient"]

Scalar = float | Tensor


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
    else:  # no break: the iteration limit was reached; say how far from the tolerance (never a silent fallback)
        if bool((rs > stop).any()):
            rel = float((rs / torch.clamp(dot(b, b), min=torch.finfo(rs.dtype).tiny)).max().sqrt())
            warnings.warn(f"conjugate gradients stopped at their iteration limit ({max_iter}) with relative residual "
                          f"{rel:.0e} > tol {tol:g}: raise cg_max_iter or cg_tol of the operator", RuntimeWarning,
                          stacklevel=2)
    return x


class Operator(nn.Module):
    """A linear degradation ``A``: images (B, C, H, W) -> measurements (shape set by the subclass).

    Subclasses implement ``A`` and ``At``; ``pinv`` and ``solve`` default to conjugate gradients and are overridden
    by closed forms where they exist; ``prox_l2`` follows from ``solve`` (closed form whenever ``solve`` is).
    ``A * B`` is the composition ``x -> A(B(x))`` (deepinv's convention), itself an `Operator`.

    Args:
        cg_tol: relative residual tolerance of the CG fallbacks.
        cg_max_iter: iteration cap of the CG fallbacks.
    """

    def __init__(self, cg_tol: float = 1e-6, cg_max_iter: int = 200) -> None:
        super().__init__()
        self.cg_tol = cg_tol
        self.cg_max_iter = cg_max_iter

    def A(self, x: Tensor) -> Tensor:
        """Forward map: x (B, C, H, W) -> y. Abstract: every operator family defines it."""
        raise NotImplementedError(f"{type(self).__name__} must define A (the forward map)")

    def At(self, y: Tensor) -> Tensor:
        """Adjoint map: y -> A^T y (B, C, H, W). Abstract: every operator family defines it."""
        raise NotImplementedError(f"{type(self).__name__} must define At (the adjoint map)")

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

    def prox_l2(self, z: Tensor, y: Tensor, gamma: Scalar) -> Tensor:
        """argmin_x ||A x - y||^2 / 2 + ||x - z||^2 / (2 gamma): z, x (B, C, H, W); y measurement-shaped; gamma > 0
        a float or (B,) tensor.

        The normal equations (A^T A + I / gamma) x = A^T y + z / gamma, rewritten by the matrix inversion lemma into
        the measurement-space solve:  x = z + gamma A^T (gamma A A^T + I)^{-1} (y - A z)  (Woodbury). Closed form
        wherever ``solve`` is (pixels, blocks, Fourier, separable matrices), conjugate gradients otherwise.
        """
        gamma = torch.as_tensor(gamma, dtype=z.dtype, device=z.device)
        g = _per_batch(gamma, z)
        if bool((g <= 0).any()):
            raise ValueError("prox_l2 needs gamma > 0")
        return z + g * self.At(self.solve(y - self.A(z), gamma.sqrt(), 1.0))

    def prox_l2_cg(self, z: Tensor, y: Tensor, gamma: Scalar) -> Tensor:
        """``prox_l2`` by CG on the image-space normal equations (A^T A + I / gamma) x = A^T y + z / gamma (generic
        path, any operator; started at z); shapes as in ``prox_l2``."""
        inv = 1.0 / _per_batch(gamma, z)
        return conjugate_gradient(lambda v: self.At(self.A(v)) + inv * v, self.At(y) + inv * z, x0=z,
                                  tol=self.cg_tol, max_iter=self.cg_max_iter)

    def adjointness_test(self, x: Tensor, generator: torch.Generator | None = None) -> float:
        """Relative gap |<A u, v> - <u, A^T v>| / (||A u|| ||v||) for random u shaped like x (B, C, H, W) and random v
        shaped like A u; ~1e-16 in float64 for an exact adjoint (deepinv's ``adjointness_test``)."""
        u = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
        Au = self.A(u)
        v = torch.randn(Au.shape, generator=generator, dtype=x.dtype, device=x.device)
        gap = ((Au * v).sum() - (u * self.At(v)).sum()).abs()
        return float(gap / (Au.norm() * v.norm()).clamp_min(torch.finfo(x.dtype).tiny))

    def __mul__(self, other: Operator) -> ComposedOperator:
        """``A * B``: the operator x -> A(B(x)) (deepinv's composition order)."""
        if not isinstance(other, Operator):
            return NotImplemented
        return ComposedOperator(self, other)


class ComposedOperator(Operator):
    """``A = outer o inner``: x (B, C, H, W) -> outer.A(inner.A(x)); built by ``outer * inner``.

    ``A^T = inner^T o outer^T`` is exact; A^+, the (r^2 A A^T + s^2 I) solve and ``prox_l2`` go by conjugate gradients
    (the product of two closed forms is in general not diagonal in one basis). Only the outer operator decides which
    measurement entries are observed. CG settings: the tighter tolerance and the larger cap of the two.

    Args:
        outer: applied last (e.g. Downsampling).  inner: applied first, on images (e.g. Blur).
    """

    def __init__(self, outer: Operator, inner: Operator) -> None:
        super().__init__(min(outer.cg_tol, inner.cg_tol), max(outer.cg_max_iter, inner.cg_max_iter))
        self.outer, self.inner = outer, inner

    def A(self, x: Tensor) -> Tensor:
        """y = outer(inner(x)); x (B, C, H, W), y shaped as outer's measurements."""
        return self.outer.A(self.inner.A(x))

    def At(self, y: Tensor) -> Tensor:
        """A^T y = inner^T(outer^T(y)), shape (B, C, H, W)."""
        return self.inner.At(self.outer.At(y))

    def measured(self, y: Tensor) -> Tensor:
        """The outer operator's observed entries."""
        return self.outer.measured(y)
