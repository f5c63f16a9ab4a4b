"""Tests for inverse/operators/: adjoints, pseudo-inverses, solves, prox_l2, composition, masks, value ranges, deepinv
peer check."""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import sys
import types
from collections.abc import Callable

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from priorkit.inverse.gaussian import operator_matrix
from priorkit.inverse.operators import (
    Blur,
    ComposedOperator,
    Downsampling,
    Inpainting,
    Measurement,
    Operator,
    box_mask,
    conjugate_gradient,
    gaussian_kernel,
    half_mask,
    mask_from_image,
    measurement_to_image_range,
    motion_kernel,
    noise_in_model_range,
    random_mask,
    stroke_mask,
    to_image_range,
    to_model_range,
)
from priorkit.inverse.tiling import CropOperator

B, C, H, W = 2, 3, 32, 32
F64 = torch.float64


pytestmark = pytest.mark.usefixtures("single_thread")


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _rand(*shape: int, seed: int = 0, dtype: torch.dtype = F64) -> torch.Tensor:
    return torch.randn(*shape, generator=_gen(seed), dtype=dtype)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


def _mild_kernel() -> torch.Tensor:
    """Well-conditioned blur (|K| >= 0.4): CG on the reflect operator converges to machine precision."""
    k = 0.6 * gaussian_kernel(1.5, 7).double()
    k[3, 3] += 0.4
    return k


def _even_kernel() -> torch.Tensor:
    """Asymmetric 4x4 (even size) normalised kernel: exercises the centre convention."""
    k = torch.rand(4, 4, generator=_gen(5), dtype=F64) + 0.1
    return k / k.sum()


# name -> factory; every operator and boundary the module offers
OPS: dict[str, Callable[[], Operator]] = {
    "inpaint-random": lambda: Inpainting(random_mask(H, W, 0.7, _gen(1))),
    "inpaint-per-sample": lambda: Inpainting(torch.rand(B, C, H, W, generator=_gen(2)) < 0.5),
    "blur-circ-gauss": lambda: Blur(gaussian_kernel(2.0)),
    "blur-circ-motion": lambda: Blur(motion_kernel(9, 30.0, 0.5)),
    "blur-circ-even": lambda: Blur(_even_kernel()),
    "blur-circ-per-sample": lambda: Blur(torch.stack([gaussian_kernel(1.0, 7), motion_kernel(7, 60.0)])),
    "blur-refl-gauss": lambda: Blur(gaussian_kernel(2.0), "reflect"),
    "blur-refl-motion": lambda: Blur(motion_kernel(9, 30.0, 0.5), "reflect"),
    "blur-refl-even": lambda: Blur(_even_kernel(), "reflect"),
    "blur-refl-per-sample": lambda: Blur(torch.stack([gaussian_kernel(1.0, 7), motion_kernel(7, 60.0)]), "reflect"),
    "blur-refl-mild": lambda: Blur(_mild_kernel(), "reflect"),
    "avg-x2": lambda: Downsampling(2),
    "avg-x4": lambda: Downsampling(4),
    "avg-x8": lambda: Downsampling(8),
    "bicubic-x2": lambda: Downsampling(2, "bicubic"),
    "bicubic-x4": lambda: Downsampling(4, "bicubic"),
    "bicubic-x8": lambda: Downsampling(8, "bicubic"),
}
CLOSED_FORM = [n for n in OPS if not n.startswith("blur-refl")]
CG_ONLY = [n for n in OPS if n.startswith("blur-refl")]


# ----------------------------------------------------------------------------------------------------------------------
# Linear-algebra identities
# ----------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(OPS))
def test_adjoint_identity(name: str) -> None:
    # <A x, y> = <x, A^T y>
    op = OPS[name]()
    x = _rand(B, C, H, W, seed=1)
    Ax = op.A(x)
    y = _rand(*Ax.shape, seed=2)
    lhs, rhs = (Ax * y).sum(), (x * op.At(y)).sum()
    assert abs(lhs - rhs) <= 1e-12 * Ax.norm() * y.norm()


@pytest.mark.parametrize("name", ["inpaint-random", "blur-circ-motion", "blur-refl-even", "avg-x4", "bicubic-x4"])
def test_float32_keeps_dtype_and_adjoint(name: str) -> None:
    op = OPS[name]()
    x = _rand(B, C, H, W, seed=1, dtype=torch.float32)
    Ax = op.A(x)
    y = _rand(*Ax.shape, seed=2, dtype=torch.float32)
    z = op.solve(y, 1.0, 0.1)
    assert Ax.dtype == op.At(y).dtype == op.pinv(y).dtype == z.dtype == torch.float32
    assert abs((Ax * y).sum() - (x * op.At(y)).sum()) <= 1e-5 * Ax.norm() * y.norm()


@pytest.mark.parametrize("name", list(OPS))
def test_pinv_reproduces_measurement(name: str) -> None:
    # A A^+ A x = A x
    op = OPS[name]()
    if name == "blur-refl-mild":
        op.cg_tol = 1e-12
    x = _rand(B, C, H, W, seed=3)
    Ax = op.A(x)
    err = _rel(op.A(op.pinv(Ax)), Ax)
    if name.startswith("blur-circ"):
        assert err < 1e-5, err  # frequencies with |K| < 1e-5 max|K| are dropped (thresholded Moore-Penrose)
    elif name in CLOSED_FORM or name == "blur-refl-mild":
        assert err < 1e-9, err
    else:
        assert err < 1e-2, err  # CG on the normal equations of an ill-conditioned blur: 200 iterations leave ~1e-3


@pytest.mark.parametrize("name", [n for n in CLOSED_FORM if not n.startswith("blur")])
def test_pinv_is_moore_penrose(name: str) -> None:
    # A^+ A A^+ = A^+ (with A A^+ A = A above)
    op = OPS[name]()
    y = _rand(*op.A(_rand(B, C, H, W)).shape, seed=4)
    p = op.pinv(y)
    assert _rel(op.pinv(op.A(p)), p) < 1e-12


@pytest.mark.parametrize("name", CLOSED_FORM)
def test_closed_form_solve_matches_cg(name: str) -> None:
    # closed form vs the generic CG path for (r^2 A A^T + s^2 I) z = b, per-sample r
    op = OPS[name]()
    op.cg_tol, op.cg_max_iter = 1e-12, 1000
    b = _rand(*op.A(_rand(B, C, H, W)).shape, seed=6)
    r, s = torch.tensor([0.7, 1.3], dtype=F64), 0.1
    z = op.solve(b, r, s)
    assert _rel(z, op.solve_cg(b, r, s)) < 1e-8
    residual = r.view(-1, 1, 1, 1) ** 2 * op.AAt(z) + s**2 * z - b
    assert residual.norm() < 1e-10 * b.norm()


@pytest.mark.parametrize("name", CG_ONLY)
def test_cg_solve_satisfies_system(name: str) -> None:
    op = OPS[name]()
    b = _rand(*op.A(_rand(B, C, H, W)).shape, seed=7)
    r, s = torch.tensor([1.0, 0.5], dtype=F64), torch.tensor([0.1, 0.2], dtype=F64)
    z = op.solve(b, r, s)
    residual = r.view(-1, 1, 1, 1) ** 2 * op.AAt(z) + s.view(-1, 1, 1, 1) ** 2 * z - b
    assert residual.norm() <= 1e-6 * b.norm()


def test_inpainting_solve_with_zero_s_is_pseudo_inverse() -> None:
    op = Inpainting(box_mask(H, W))
    b = _rand(B, C, H, W, seed=8)
    z = op.solve(b, 2.0, 0.0)
    assert torch.allclose(z, op.mask * b / 4) and torch.isfinite(z).all()


@pytest.mark.parametrize("batched", [True, False])
def test_conjugate_gradient_matches_dense_solve(batched: bool) -> None:
    n = 20
    M = _rand(B, n, n, seed=9)
    S = M @ M.transpose(1, 2) + n * torch.eye(n, dtype=F64)  # SPD, one system per sample
    b = _rand(B, n, seed=10)
    ref = torch.linalg.solve(S, b)
    if batched:
        apply = lambda v: (S @ v[..., None])[..., 0]  # noqa: E731
    else:  # one coupled system: block-diagonal S seen as a single (B * n) system
        apply = lambda v: (S @ v.view(B, n, 1)).view(1, B * n)  # noqa: E731
        b, ref = b.reshape(1, B * n), ref.reshape(1, B * n)
    assert _rel(conjugate_gradient(apply, b, tol=1e-12, max_iter=200), ref) < 1e-10
    x0 = ref + 1e-3 * _rand(*ref.shape, seed=11)
    assert _rel(conjugate_gradient(apply, b, x0, tol=1e-12, max_iter=200), ref) < 1e-10


# ----------------------------------------------------------------------------------------------------------------------
# Conventions of the forward maps
# ----------------------------------------------------------------------------------------------------------------------


def test_blur_is_true_convolution_centred_at_k_over_2() -> None:
    k = _even_kernel()
    x = torch.zeros(1, 1, H, W, dtype=F64)
    x[..., 10, 12] = 1
    for boundary in ("circular", "reflect"):
        y = Blur(k, boundary).A(x)
        # impulse response = kernel placed with its (2, 2) entry on the impulse
        assert torch.allclose(y[0, 0, 8:12, 10:14], k, atol=1e-12)
        assert abs(y.sum() - 1) < 1e-12


def test_blur_boundaries_agree_in_the_interior() -> None:
    x = _rand(B, C, H, W, seed=12)
    k = motion_kernel(9, 30.0, 0.5)
    yc, yr = Blur(k).A(x), Blur(k, "reflect").A(x)
    assert torch.allclose(yc[..., 4:-4, 4:-4], yr[..., 4:-4, 4:-4], atol=1e-6)
    assert not torch.allclose(yc, yr, atol=1e-3)


def test_downsampling_forward_definitions() -> None:
    x = _rand(B, C, H, W, seed=13)
    for f in (2, 4, 8):
        assert torch.allclose(Downsampling(f).A(x), F.avg_pool2d(x, f), atol=1e-14)
        ref = F.interpolate(x, size=(H // f, W // f), mode="bicubic", antialias=True, align_corners=False)
        assert torch.allclose(Downsampling(f, "bicubic").A(x), ref, atol=1e-12)
        assert torch.allclose(
            Downsampling(f).pinv(Downsampling(f).A(x)), F.interpolate(F.avg_pool2d(x, f), scale_factor=f)
        )
    x_rect = _rand(1, 1, 16, 40, seed=14)
    ref = F.interpolate(x_rect, size=(4, 10), mode="bicubic", antialias=True)
    assert torch.allclose(Downsampling(4, "bicubic").A(x_rect), ref, atol=1e-12)


def test_operator_validation_errors() -> None:
    with pytest.raises(ValueError, match="divisible"):
        Downsampling(4).A(torch.zeros(1, 1, 30, 32))
    with pytest.raises(ValueError):
        Downsampling(2, "lanczos")
    with pytest.raises(ValueError):
        Blur(gaussian_kernel(1.0), "zeros")
    with pytest.raises(ValueError, match="larger"):
        Blur(torch.ones(9, 9) / 81).A(torch.zeros(1, 1, 8, 8))
    with pytest.raises(ValueError, match="0 .missing. or 1"):
        Inpainting(torch.full((1, 1, 4, 4), 0.5))
    with pytest.raises(ValueError, match="shape"):
        Inpainting(box_mask(H, W)).solve(torch.zeros(B, C, H, W), torch.ones(3), 0.1)


# ----------------------------------------------------------------------------------------------------------------------
# Masks
# ----------------------------------------------------------------------------------------------------------------------


def _is_binary(m: torch.Tensor) -> bool:
    return bool(((m == 0) | (m == 1)).all())


def test_box_and_half_masks() -> None:
    m = box_mask(H, W, (2, 3, 10, 5))
    assert m.shape == (1, 1, H, W) and m.dtype == torch.float32 and _is_binary(m)
    assert m.sum() == H * W - 50 and m[0, 0, 2:12, 3:8].sum() == 0
    assert box_mask(H, W).mean() == 0.75
    for side in ("left", "right", "top", "bottom"):
        assert half_mask(H, W, side).mean() == 0.5
    assert half_mask(H, W, "right")[0, 0, :, W // 2 :].sum() == 0
    with pytest.raises(ValueError):
        box_mask(H, W, (30, 0, 5, 5))
    with pytest.raises(ValueError):
        half_mask(H, W, "middle")


def test_random_mask_fraction_and_determinism() -> None:
    m = random_mask(H, W, 0.8, _gen(3))
    assert m.shape == (1, 1, H, W) and _is_binary(m)
    assert (1 - m).sum() == round(0.8 * H * W)
    assert torch.equal(m, random_mask(H, W, 0.8, _gen(3)))
    assert not torch.equal(m, random_mask(H, W, 0.8, _gen(4)))
    assert random_mask(H, W, 0.0).min() == 1 and random_mask(H, W, 1.0).max() == 0
    with pytest.raises(ValueError):
        random_mask(H, W, 1.5)


def test_stroke_mask() -> None:
    m = stroke_mask(64, 48, _gen(7))
    assert m.shape == (1, 1, 64, 48) and _is_binary(m)
    assert 0.0 < 1 - m.mean() < 0.9
    assert torch.equal(m, stroke_mask(64, 48, _gen(7)))
    assert not torch.equal(m, stroke_mask(64, 48, _gen(8)))
    # wider brushes and more strokes remove more pixels
    thin = 1 - stroke_mask(64, 64, _gen(1), n_strokes=3, width=(0.02, 0.02)).mean()
    thick = 1 - stroke_mask(64, 64, _gen(1), n_strokes=3, width=(0.1, 0.1)).mean()
    assert thick > thin > 0


def test_mask_from_image_convention(tmp_path) -> None:
    grey = np.zeros((H, W), dtype=np.uint8)
    grey[:, : W // 2] = 255  # left half white = observed
    path = tmp_path / "mask.png"
    Image.fromarray(grey).save(path)
    m = mask_from_image(path, H, W)
    assert m.shape == (1, 1, H, W) and m.dtype == torch.float32
    assert torch.equal(m, half_mask(H, W, "right"))
    assert torch.equal(mask_from_image(str(path), H, W, keep="black"), half_mask(H, W, "left"))
    rgb = tmp_path / "mask_rgb.png"
    Image.fromarray(np.stack([grey] * 3, -1)).convert("RGBA").save(rgb)
    assert torch.equal(mask_from_image(rgb, H, W), m)
    assert torch.equal(mask_from_image(grey > 0, H, W), m)
    assert torch.equal(mask_from_image(grey.astype(np.float64) / 255, H, W), m)
    assert torch.equal(mask_from_image(torch.from_numpy(grey)[None, None], H, W), m)
    assert torch.equal(mask_from_image(Image.open(path), H, W), m)


def test_mask_from_image_errors(tmp_path) -> None:
    with pytest.raises(ValueError, match="is 16x32 but the image is 32x32"):
        mask_from_image(np.ones((16, 32), dtype=np.uint8) * 255, H, W)
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    with pytest.raises(ValueError, match="cannot read"):
        mask_from_image(bad, H, W)
    with pytest.raises(ValueError, match="cannot read"):
        mask_from_image(tmp_path / "missing.png", H, W)
    with pytest.raises(ValueError, match="observes no pixel"):
        mask_from_image(np.zeros((H, W), dtype=np.uint8), H, W)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        mask_from_image(np.full((H, W), 2.0), H, W)
    with pytest.raises(ValueError):
        mask_from_image(np.ones((H, W)), H, W, keep="grey")
    with pytest.raises(ValueError):
        mask_from_image(np.ones((5, H, W)), H, W)
    with pytest.warns(UserWarning, match="every pixel"):
        mask_from_image(np.ones((H, W)), H, W)


# ----------------------------------------------------------------------------------------------------------------------
# prox_l2 and composition, against dense matrices
# ----------------------------------------------------------------------------------------------------------------------

SMALL = (2, 2, 16, 16)  # (B, C, H, W): dense matrices of 512 x 512


def _small_kernel() -> torch.Tensor:
    return gaussian_kernel(1.0, 5).double()


# every operator family, its CG paths, and compositions; parameters shared by the batch (dense matrix per image)
DENSE: dict[str, Callable[[], Operator]] = {
    "inpaint-random": lambda: Inpainting(random_mask(16, 16, 0.6, _gen(40))),
    "inpaint-box": lambda: Inpainting(box_mask(16, 16)),
    "blur-circ-gauss": lambda: Blur(_small_kernel()),
    "blur-circ-motion": lambda: Blur(motion_kernel(5, 30.0, 0.5).double()),
    "blur-refl-gauss": lambda: Blur(_small_kernel(), "reflect"),
    "avg-x2": lambda: Downsampling(2),
    "avg-x4": lambda: Downsampling(4),
    "bicubic-x2": lambda: Downsampling(2, "bicubic"),
    "bicubic-x4": lambda: Downsampling(4, "bicubic"),
    "avg-x2*blur-circ": lambda: Downsampling(2) * Blur(_small_kernel()),
    "bicubic-x4*blur-refl": lambda: Downsampling(4, "bicubic") * Blur(_small_kernel(), "reflect"),
    "inpaint*blur-motion": lambda: Inpainting(random_mask(16, 16, 0.5, _gen(41))) * Blur(motion_kernel(5, 60.0)),
    "blur*blur*avg-x1": lambda: Blur(_small_kernel()) * Blur(motion_kernel(5, 30.0), "reflect") * Downsampling(1),
    "crop-canvas(bicubic-x2)": lambda: CropOperator(Downsampling(2, "bicubic"), (12, 10), (16, 16)),  # tiling's
}
COMPOSED = [n for n in DENSE if "*" in n]


def _dense(name: str) -> tuple[Operator, torch.Tensor]:
    """The operator (CG paths tightened to near machine precision) and its dense (M, D) float64 matrix."""
    op = DENSE[name]()
    for m in op.modules():
        if isinstance(m, Operator):
            m.cg_tol, m.cg_max_iter = 1e-13, 3000
    return op, operator_matrix(op, SMALL[1:])


@pytest.mark.parametrize("gamma", [0.5, torch.tensor([0.05, 3.0], dtype=F64)], ids=["float", "per-sample"])
@pytest.mark.parametrize("name", list(DENSE))
def test_prox_l2_matches_dense_solve(name: str, gamma) -> None:
    # argmin_x ||A x - y||^2 / 2 + ||x - z||^2 / (2 gamma)  <=>  (A^T A + I / gamma) x = A^T y + z / gamma
    op, M = _dense(name)
    z = _rand(*SMALL, seed=42)
    y = _rand(*op.A(z).shape, seed=43)
    x = op.prox_l2(z, y, gamma)
    assert x.shape == z.shape and x.dtype == F64
    g = torch.as_tensor(gamma, dtype=F64).expand(SMALL[0])
    eye = torch.eye(M.shape[1], dtype=F64)
    for b in range(SMALL[0]):
        ref = torch.linalg.solve(M.T @ M + eye / g[b], M.T @ y[b].flatten() + z[b].flatten() / g[b])
        assert _rel(x[b].flatten(), ref) < 1e-9, name
    assert _rel(op.prox_l2_cg(z, y, gamma), x) < 1e-8  # the generic image-space CG path agrees


def test_prox_l2_limits_and_validation() -> None:
    op = Blur(_small_kernel())
    z = _rand(*SMALL, seed=44)
    y = op.A(_rand(*SMALL, seed=45))
    assert _rel(op.prox_l2(z, y, 1e-9), z) < 1e-8                               # gamma -> 0: stay at z
    far = op.prox_l2(z, y, 1e9)                                                  # gamma -> inf: fit the data
    assert _rel(op.A(far), y) < 1e-4  # 1 / (gamma |K|^2 + 1) left at the weakest frequencies
    for o in (op, Inpainting(box_mask(16, 16)), Downsampling(2)):
        with pytest.raises(ValueError, match="gamma"):
            o.prox_l2(z, o.A(z), 0.0)


@pytest.mark.parametrize("name", COMPOSED)
def test_composition_adjoint_and_matrix(name: str) -> None:
    # <A x, y> = <x, A^T y>, and the matrix of outer * inner is the product of theirs
    op, M = _dense(name)
    assert isinstance(op, ComposedOperator)
    x = _rand(*SMALL, seed=46)
    Ax = op.A(x)
    y = _rand(*Ax.shape, seed=47)
    assert abs((Ax * y).sum() - (x * op.At(y)).sum()) <= 1e-12 * Ax.norm() * y.norm()
    assert op.adjointness_test(x, _gen(48)) < 1e-12
    inner_shape = op.inner.A(x[:1]).shape[1:]
    assert torch.allclose(M, operator_matrix(op.outer, inner_shape) @ operator_matrix(op.inner, SMALL[1:]),
                          atol=1e-12)
    assert torch.allclose(op(x), Ax)


@pytest.mark.parametrize("name", COMPOSED)
def test_composition_solve_and_pinv_match_dense(name: str) -> None:
    # (r^2 A A^T + s^2 I) z = b by CG against the dense solve, per-sample r and s; A^+ against the dense pinv
    op, M = _dense(name)
    b = _rand(*op.A(_rand(*SMALL)).shape, seed=49)
    r, s = torch.tensor([0.7, 1.3], dtype=F64), torch.tensor([0.3, 0.1], dtype=F64)
    z = op.solve(b, r, s)
    eye = torch.eye(M.shape[0], dtype=F64)
    for i in range(SMALL[0]):
        ref = torch.linalg.solve(r[i] ** 2 * M @ M.T + s[i] ** 2 * eye, b[i].flatten())
        assert _rel(z[i].flatten(), ref) < 1e-9
    if name.startswith("avg"):  # well conditioned: CG on the normal equations reaches the Moore-Penrose solution
        p = op.pinv(b)
        for i in range(SMALL[0]):
            assert _rel(p[i].flatten(), torch.linalg.pinv(M) @ b[i].flatten()) < 1e-8


def test_composition_is_an_operator() -> None:
    blur, down, mask = Blur(_small_kernel()), Downsampling(2), Inpainting(random_mask(8, 8, 0.5, _gen(50)))
    op = mask * down * blur                                          # x -> mask(down(blur(x)))
    x = _rand(*SMALL, seed=51)
    assert torch.allclose(op.A(x), mask.A(down.A(blur.A(x))))
    y = Measurement(op, 0.1)(x, generator=_gen(52))
    assert (y[..., mask.mask[0, 0] == 0] == 0).all()                 # the outer mask decides what is observed
    assert torch.equal(op.ones_response(SMALL, F64), mask.A(down.A(blur.A(torch.ones(SMALL, dtype=F64)))))
    assert len(list(op.buffers())) == 2                              # kernel and mask move with .to()
    with pytest.raises(TypeError):
        blur * 2.0  # noqa: B018


@pytest.mark.parametrize("name", list(OPS))
def test_adjointness_test_method(name: str) -> None:
    assert OPS[name]().adjointness_test(_rand(B, C, H, W), _gen(53)) < 1e-12


# ----------------------------------------------------------------------------------------------------------------------
# Value ranges and measurement noise
# ----------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["inpaint-random", "blur-circ-gauss", "blur-refl-motion", "avg-x2", "bicubic-x2"])
def test_model_range_measurement_convention(name: str) -> None:
    op, sigma_y = OPS[name](), 0.05
    x = torch.rand(8, C, H, W, generator=_gen(20), dtype=F64)  # image range [0, 1]
    meas = Measurement(op, sigma_y)
    y = meas(x, generator=_gen(21))
    y_m = meas.to_model(y, x.shape)
    residual = y_m - op.A(to_model_range(x))  # = 2 sigma_y n on the observed entries
    observed = op.measured(torch.ones_like(residual)).bool()
    res = residual[observed]
    assert abs(res.std().item() / noise_in_model_range(sigma_y) - 1) < 0.05
    assert abs(res.mean().item()) < 0.01 and meas.sigma_model == 2 * sigma_y
    assert (residual[~observed] == 0).all()
    # noiseless: exact, and the conversions invert each other
    y0 = Measurement(op, 0.0)(x)
    assert torch.allclose(Measurement(op).to_model(y0, x.shape), op.A(to_model_range(x)), atol=1e-12)
    assert torch.allclose(measurement_to_image_range(op, meas.to_model(y, x.shape), x.shape), y, atol=1e-12)
    assert torch.allclose(to_image_range(to_model_range(x)), x)


def test_inpainting_ones_response_is_mask() -> None:
    op = Inpainting(random_mask(H, W, 0.5, _gen(0)))
    assert torch.equal(op.ones_response((B, C, H, W)), op.mask.expand(B, C, H, W))


# ----------------------------------------------------------------------------------------------------------------------
# Peer check against deepinv 0.5.0
# ----------------------------------------------------------------------------------------------------------------------


class _TorchvisionStub(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Serves empty ``torchvision*`` modules. deepinv/__init__ imports torchvision although deepinv.physics does not
    use it; PyPI's torchvision 0.28.0 (the one for torch 2.13.0) is a CUDA build whose ops fail to load beside the
    CPU torch ("operator torchvision::nms does not exist"), so it cannot be installed here."""

    class _Module(types.ModuleType):
        def __getattr__(self, name: str):
            if name.startswith("__"):
                raise AttributeError(name)
            return type(name, (), {"__init__": lambda self, *a, **k: None})

    def find_spec(self, fullname, path, target=None):
        if fullname.split(".")[0] == "torchvision":
            return importlib.machinery.ModuleSpec(fullname, self, is_package=True)
        return None

    def create_module(self, spec):
        module = self._Module(spec.name)
        module.__path__ = []
        return module

    def exec_module(self, module) -> None:
        pass


@pytest.fixture(scope="module")
def dp():
    """deepinv.physics; with a real torchvision if it imports, else with a temporary torchvision stub."""
    if importlib.util.find_spec("deepinv") is None:
        pytest.skip("deepinv not installed (pip install --no-deps deepinv==0.5.0 einops natsort h5py)")
    try:
        import deepinv.physics as physics

        return physics
    except Exception:  # noqa: BLE001 - torchvision missing or broken (CUDA wheel beside CPU torch)
        for mod in [m for m in sys.modules if m.split(".")[0] in ("deepinv", "torchvision")]:
            del sys.modules[mod]
    stub = _TorchvisionStub()
    sys.meta_path.insert(0, stub)
    try:
        import deepinv.physics as physics
    except Exception as e:  # noqa: BLE001
        pytest.skip(f"deepinv.physics does not import even with a torchvision stub: {e!r}")
    finally:
        sys.meta_path.remove(stub)
        for mod in [m for m in sys.modules if m.split(".")[0] == "torchvision"]:
            del sys.modules[mod]
    if not physics.__name__.startswith("deepinv"):  # pragma: no cover
        pytest.skip("unexpected deepinv")
    return physics


PEER_KERNELS = {
    "gauss": lambda: gaussian_kernel(2.0),
    "motion": lambda: motion_kernel(9, 30.0, 0.5),
    "even": _even_kernel,
}


@pytest.mark.parametrize("kname", list(PEER_KERNELS))
def test_peer_blur(dp, kname: str) -> None:
    # deepinv filters are (1, 1, kh, kw) true convolutions centred at (kh // 2, kw // 2), like ours.
    # BlurFFT = our circular Blur; its A_dagger zeroes |K| <= 1e-5 (absolute), ours |K| < 1e-5 max|K| (max|K| = 1 here).
    # deepinv Blur(padding="reflect") = our reflect Blur (same asymmetric padding for even kernels).
    k = PEER_KERNELS[kname]().double()
    x, y = _rand(B, C, H, W, seed=30), _rand(B, C, H, W, seed=31)
    ours, peer = Blur(k), dp.BlurFFT(img_size=(C, H, W), filter=k[None, None])
    assert _rel(ours.A(x), peer.A(x)) < 1e-12
    assert _rel(ours.At(y), peer.A_adjoint(y)) < 1e-12
    assert _rel(ours.pinv(y), peer.A_dagger(y)) < 1e-10
    ours, peer = Blur(k, "reflect"), dp.Blur(filter=k[None, None], padding="reflect")
    assert _rel(ours.A(x), peer.A(x)) < 1e-12
    assert _rel(ours.At(y), peer.A_adjoint(y)) < 1e-12


@pytest.mark.parametrize("f", [2, 4, 8])
def test_peer_downsampling(dp, f: int) -> None:
    # deepinv Downsampling(filter=None) is plain decimation x[::f, ::f]; our block mean is deepinv's filtered
    # downsampling with the (2f-1)^2 filter that is 1/f^2 on its top-left f x f corner (circular padding),
    # because deepinv convolves (centre f-1) before decimating.  A_dagger is deepinv's CG (tol 1e-4 by default).
    box = torch.zeros(2 * f - 1, 2 * f - 1, dtype=F64)
    box[:f, :f] = 1 / f**2
    peer = dp.Downsampling(img_size=(C, H, W), filter=box[None, None], factor=f, padding="circular")
    ours = Downsampling(f)
    x, y = _rand(B, C, H, W, seed=32), _rand(B, C, H // f, W // f, seed=33)
    assert _rel(ours.A(x), peer.A(x)) < 1e-12
    assert _rel(ours.At(y), peer.A_adjoint(y)) < 1e-12
    assert _rel(ours.pinv(y), peer.A_dagger(y)) < 1e-4
    # bicubic: deepinv's filter="bicubic" is a different (circular, non-renormalised) filter; its MATLAB imresize
    # (same Keys a=-0.5 kernel stretched by f, but symmetric padding instead of border renormalisation) agrees with
    # torch's antialiased bicubic away from the two outermost low-res pixels on each side.
    x = _rand(1, C, 16 * f, 16 * f, seed=34)
    ym, yo = dp.DownsamplingMatlab(factor=f).A(x), Downsampling(f, "bicubic").A(x)
    assert _rel(yo[..., 2:-2, 2:-2], ym[..., 2:-2, 2:-2]) < 1e-12


def test_peer_inpainting(dp) -> None:
    # deepinv masks are (C, H, W) (batch added internally); ours (1, C, H, W); A = A^T = A^+ = masking in both
    mask = (torch.rand(C, H, W, generator=_gen(35)) < 0.5).double()
    ours, peer = Inpainting(mask[None]), dp.Inpainting(img_size=(C, H, W), mask=mask)
    x = _rand(B, C, H, W, seed=36)
    for a, b in ((ours.A(x), peer.A(x)), (ours.At(x), peer.A_adjoint(x)), (ours.pinv(x), peer.A_dagger(x))):
        assert torch.equal(a, b)
