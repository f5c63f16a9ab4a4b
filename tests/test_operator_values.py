"""The operators' pieces by value (issue 18: what the first mutation run of inverse/operators/ left unchecked).

* a user's mask: grey levels against the threshold, luma of RGB, every accepted dtype and layout;
* the stroke masks a seed gives are fixed (benchmarks and users reproduce a mask from its seed);
* conjugate gradients against a direct solve, per-sample and whole-tensor, with a start and at the iteration limit;
* the reflect-border blur's exact adjoint for even and non-square kernels on non-square images;
* the adjointness check itself, on an operator whose adjoint is wrong by a known factor.
"""

from __future__ import annotations

import hashlib
import math
import sys
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from priorkit.inverse.operators import Blur, Inpainting, Operator, box_mask, mask_from_image, stroke_mask
from priorkit.inverse.operators.base import conjugate_gradient

F64 = torch.float64


# ---- a user's mask -----------------------------------------------------------------------------------------------
def test_mask_grey_levels_meet_the_threshold_exactly() -> None:
    grey = np.array([[0, 127, 128, 255]], dtype=np.uint8)  # 127/255 < 0.5 <= 128/255
    assert mask_from_image(grey, 1, 4).flatten().tolist() == [0, 0, 1, 1]
    assert mask_from_image(grey, 1, 4, keep="black").flatten().tolist() == [1, 1, 0, 0]
    assert mask_from_image(grey, 1, 4, threshold=0.1).flatten().tolist() == [0, 1, 1, 1]
    exact = np.array([[0.25, 0.5, 0.75]])  # a grey level equal to the threshold counts as white
    assert mask_from_image(exact, 1, 3).flatten().tolist() == [0, 1, 1]
    assert mask_from_image(exact, 1, 3, keep="black").flatten().tolist() == [1, 0, 0]


def test_mask_rgb_uses_itu_601_luma_and_ignores_alpha() -> None:
    # red 0.299, green 0.587, blue 0.114: only green (and white) are >= 0.5; five pixels wide, so that the
    # (C, H, W) layouts below are not read as (H, W, C)
    rgb = np.array([[[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 255], [0, 0, 0]]], dtype=np.uint8)
    want = [0, 1, 0, 1, 0]
    assert mask_from_image(rgb, 1, 5).flatten().tolist() == want
    rgba = np.concatenate([rgb, np.zeros((1, 5, 1), np.uint8)], -1)  # transparent everywhere: alpha is ignored
    assert mask_from_image(rgba, 1, 5).flatten().tolist() == want
    assert mask_from_image(rgb / 255.0, 1, 5).flatten().tolist() == want  # floats in [0, 1]
    assert mask_from_image(np.moveaxis(rgb, -1, 0), 1, 5).flatten().tolist() == want  # (C, H, W)
    assert mask_from_image(torch.from_numpy(np.moveaxis(rgb, -1, 0))[None], 1, 5).flatten().tolist() == want
    assert mask_from_image(Image.fromarray(rgb), 1, 5).flatten().tolist() == want
    red = np.concatenate([rgb, rgb])[..., :1]  # (2, 5, 1): one channel is the grey level itself
    assert mask_from_image(red, 2, 5).flatten().tolist() == [1, 0, 0, 1, 0] * 2


@pytest.mark.parametrize(("values", "want"), [
    (np.array([[0, 1, 1, 0]], dtype=np.int64), [0, 1, 1, 0]),        # integers in {0, 1}: already [0, 1]
    (np.array([[0, 200, 100, 255]], dtype=np.int32), [0, 1, 0, 1]),  # integers up to 255: divided by 255
    (np.array([[False, True, True, False]]), [0, 1, 1, 0]),
    (np.array([[0.0, 0.6, 0.4, 1.0]], dtype=np.float32), [0, 1, 0, 1]),
])
def test_mask_dtypes(values: np.ndarray, want: list[int]) -> None:
    m = mask_from_image(values, 1, 4)
    assert m.shape == (1, 1, 1, 4) and m.dtype == torch.float32 and m.flatten().tolist() == want


def test_mask_refusals_and_the_all_observed_warning() -> None:
    with pytest.raises(ValueError, match=r"integer mask values must lie in \[0, 255\]"):
        mask_from_image(np.array([[-1, 1]]), 1, 2)
    with pytest.raises(ValueError, match=r"integer mask values must lie in \[0, 255\]"):
        mask_from_image(np.array([[0, 256]]), 1, 2)
    with pytest.raises(ValueError, match="finite"):
        mask_from_image(np.array([[0.0, np.nan]]), 1, 2)
    with pytest.raises(ValueError, match="finite"):
        mask_from_image(np.array([[-0.1, 1.0]]), 1, 2)
    with pytest.raises(ValueError, match="cannot interpret mask of shape"):
        mask_from_image(np.ones((2, 5, 5)), 5, 5)
    with pytest.raises(ValueError, match="must be 2-D"):
        mask_from_image(np.ones(5), 1, 5)
    with pytest.raises(ValueError, match="unsupported mask dtype"):
        mask_from_image(np.array([["a", "b"]]), 1, 2)
    with pytest.raises(ValueError, match="keep must be 'white' or 'black'"):
        mask_from_image(np.ones((1, 2)), 1, 2, keep="grey")
    with pytest.warns(UserWarning, match="observes every pixel"):
        assert mask_from_image(np.ones((2, 2)), 2, 2).min() == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        mask_from_image(np.array([[0.0, 1.0]]), 1, 2)  # something to inpaint: no warning


# ---- stroke masks and boxes --------------------------------------------------------------------------------------
#: (missing pixels, sha256 prefix of the mask's bytes) for stroke_mask(64, 48, seed) with the defaults, 2026-12-05
STROKES = {0: (689, "6be0593a"), 7: (166, "f6b4e2fa"), 11: (248, "bcdc637a")}


def _stroke_key(m: torch.Tensor) -> tuple[int, str]:
    missing = int((m == 0).sum())
    return missing, hashlib.sha256(m.to(torch.uint8).numpy().tobytes()).hexdigest()[:8]


@pytest.mark.parametrize("seed", sorted(STROKES))
def test_a_seed_gives_the_same_stroke_mask_in_every_version(seed: int) -> None:
    m = stroke_mask(64, 48, torch.Generator().manual_seed(seed))
    assert _stroke_key(m) == STROKES[seed]


def test_one_straight_stroke_is_a_capsule() -> None:
    # one stroke of one step: every missing pixel lies within the brush radius of one segment, and the area is
    # close to the capsule's 2 r L + pi r^2
    m = stroke_mask(96, 96, torch.Generator().manual_seed(3), n_strokes=1, max_vertices=1, width=(0.1, 0.1))
    missing = int((m == 0).sum())
    r = 0.1 * 96 / 2
    assert math.pi * r * r * 0.8 <= missing <= (2 * r * 0.3 * 96 + math.pi * r * r) * 1.2, missing


def test_box_mask_default_and_refusals() -> None:
    m = box_mask(40, 60)
    rows, cols = (m[0, 0] == 0).nonzero(as_tuple=True)
    assert (int(rows.min()), int(rows.max()) + 1, int(cols.min()), int(cols.max()) + 1) == (10, 30, 15, 45)
    assert m.dtype == torch.float32
    assert int((box_mask(10, 10, (2, 3, 1, 1)) == 0).sum()) == 1  # a 1x1 box is a box
    for box in ((0, 0, 0, 2), (0, 0, 2, 0), (-1, 0, 2, 2), (0, -1, 2, 2), (9, 0, 2, 2), (0, 9, 2, 2)):
        with pytest.raises(ValueError):
            box_mask(10, 10, box)


def test_inpainting_takes_2d_or_4d_masks_of_any_dtype() -> None:
    keep = torch.tensor([[1, 0], [0, 1]])
    for mask in (keep, keep.bool(), keep.double(), keep[None, None]):
        op = Inpainting(mask)
        assert op.A(torch.ones(1, 1, 2, 2)).flatten().tolist() == [1, 0, 0, 1]
    with pytest.raises(ValueError, match=r"mask must be \(H, W\) or \(B, C, H, W\), got shape \(1, 2, 2\)"):
        Inpainting(keep[None])
    with pytest.raises(ValueError, match="mask values must be 0 .missing. or 1 .observed."):
        Inpainting(keep * 0.5)


# ---- conjugate gradients -----------------------------------------------------------------------------------------
def _spd(n: int, seed: int, cond: float = 10.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=F64))
    return q @ torch.diag(torch.logspace(0, math.log10(cond), n, dtype=F64)) @ q.T


def test_conjugate_gradient_solves_each_sample_of_a_batch() -> None:
    mats = torch.stack([_spd(6, 0), _spd(6, 1, cond=100.0)])
    b = torch.randn(2, 6, generator=torch.Generator().manual_seed(2), dtype=F64)
    apply = lambda x: torch.einsum("bij,bj->bi", mats, x)  # noqa: E731
    x = conjugate_gradient(apply, b, tol=1e-12, max_iter=50)
    torch.testing.assert_close(x, torch.linalg.solve(mats, b), rtol=1e-9, atol=1e-10)
    # from a start: the same solution; from the solution itself: no step at all
    torch.testing.assert_close(conjugate_gradient(apply, b, x0=torch.ones_like(b), tol=1e-12), x, rtol=1e-9, atol=1e-10)
    exact = torch.linalg.solve(mats, b)
    assert torch.equal(conjugate_gradient(apply, b, x0=exact.clone(), tol=1e-6), exact)
    # the default tolerance is 1e-6 relative: each sample's residual meets it
    loose = conjugate_gradient(apply, b)
    res = (apply(loose) - b).norm(dim=1) / b.norm(dim=1)
    assert bool((res <= 1e-6).all()) and bool((res > 1e-15).any())


def test_conjugate_gradient_as_one_system_and_at_its_limit() -> None:
    a = _spd(8, 3, cond=1000.0)
    b = torch.randn(2, 4, generator=torch.Generator().manual_seed(4), dtype=F64)  # one system of 8 unknowns
    apply = lambda x: (a @ x.reshape(8)).reshape(2, 4)  # noqa: E731 - mixes the two rows: not per sample
    x = conjugate_gradient(apply, b, tol=1e-12, max_iter=100, batched=False)
    torch.testing.assert_close(x.reshape(8), torch.linalg.solve(a, b.reshape(8)), rtol=1e-8, atol=1e-9)
    with pytest.warns(RuntimeWarning, match=r"conjugate gradients stopped at their iteration limit \(2\).*> tol 1e-12"):
        conjugate_gradient(apply, b, tol=1e-12, max_iter=2, batched=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        conjugate_gradient(apply, b, tol=1e-12, max_iter=100, batched=False)  # converged: no warning


def test_conjugate_gradient_on_a_consistent_singular_system_gives_the_minimum_norm_solution() -> None:
    p = torch.diag(torch.tensor([1.0, 2.0, 0.0], dtype=F64))
    b = torch.tensor([[1.0, 4.0, 0.0]], dtype=F64)
    x = conjugate_gradient(lambda v: v @ p, b, tol=1e-14)
    torch.testing.assert_close(x, torch.tensor([[1.0, 2.0, 0.0]], dtype=F64))


# ---- the reflect-border blur's adjoint for every kernel shape ---------------------------------------------------
@pytest.mark.parametrize("shape", [(4, 2), (2, 3), (3, 4), (5, 3)])
def test_reflect_blur_adjoint_for_even_and_non_square_kernels(shape: tuple[int, int]) -> None:
    g = torch.Generator().manual_seed(sum(shape))
    op = Blur(torch.rand(shape, generator=g, dtype=F64), boundary="reflect")
    x = torch.randn(2, 3, 7, 9, generator=g, dtype=F64)
    y = torch.randn(2, 3, 7, 9, generator=g, dtype=F64)
    lhs, rhs = (op.A(x) * y).sum(), (x * op.At(y)).sum()
    assert abs(float(lhs - rhs)) <= 1e-12 * float(op.A(x).norm() * y.norm())


# ---- the adjointness check ---------------------------------------------------------------------------------------
class TwiceTheAdjoint(Operator):
    """A = diag(d); its At is wrong by a factor 2."""

    def __init__(self, d: torch.Tensor) -> None:
        super().__init__()
        self.d = d

    def A(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.d

    def At(self, y: torch.Tensor) -> torch.Tensor:
        return 2 * y * self.d


def test_adjointness_test_measures_the_relative_gap() -> None:
    d = torch.tensor([1.0, 2.0, 3.0], dtype=F64)
    x = torch.zeros(2, 3, dtype=F64)
    gap = TwiceTheAdjoint(d).adjointness_test(x, torch.Generator().manual_seed(5))
    g = torch.Generator().manual_seed(5)
    u = torch.randn(2, 3, generator=g, dtype=F64)
    v = torch.randn(2, 3, generator=g, dtype=F64)
    au = u * d
    assert math.isclose(gap, float((au * v).sum().abs() / (au.norm() * v.norm())), rel_tol=1e-12)
    assert gap == TwiceTheAdjoint(d).adjointness_test(x, torch.Generator().manual_seed(5))  # the generator's draws


# ---- session 11, second pass: what the re-run left --------------------------------------------------------------
def test_mask_scales_at_their_ends() -> None:
    # uint8 and 0-255 integers: 255 is exactly 1 (white at threshold 1); {0, 1} integers: 1 is 1; 2 is on 0-255
    assert mask_from_image(np.array([[255, 0]], np.uint8), 1, 2, threshold=1.0).flatten().tolist() == [1, 0]
    assert mask_from_image(np.array([[255, 0]], np.int32), 1, 2, threshold=1.0).flatten().tolist() == [1, 0]
    assert mask_from_image(np.array([[1, 0]], np.int64), 1, 2, threshold=0.75).flatten().tolist() == [1, 0]
    with pytest.raises(ValueError, match="observes no pixel"):
        mask_from_image(np.array([[0, 2]], np.int64), 1, 2)  # 2 / 255: dark
    # half-green is dark (0.587 x 128 / 255 = 0.29); RGBA in (C, H, W)
    rgba = np.array([[[0, 128, 0, 255], [255, 255, 255, 0], [0, 255, 0, 9], [0, 0, 0, 0], [9, 9, 9, 9]]], np.uint8)
    assert mask_from_image(rgba, 1, 5).flatten().tolist() == [0, 1, 1, 0, 0]
    assert mask_from_image(np.moveaxis(rgba, -1, 0), 1, 5).flatten().tolist() == [0, 1, 1, 0, 0]


def _skip_under_mutmut() -> None:
    if "mutmut" in sys.modules:  # its trampolines add a frame between the caller and the library
        pytest.skip("stack levels are not the user's under mutmut")


def test_mask_warning_points_at_the_callers_line() -> None:
    _skip_under_mutmut()
    with pytest.warns(UserWarning, match="observes every pixel") as got:
        mask_from_image(np.ones((2, 2)), 2, 2)
    assert got[0].filename == __file__


def test_conjugate_gradient_tolerance_is_relative_to_each_sample() -> None:
    a = _spd(40, 6, cond=1e4)
    mats = torch.stack([a, a])
    b = torch.randn(2, 40, generator=torch.Generator().manual_seed(7), dtype=F64)
    b = b * torch.tensor([[1e6], [1e-6]], dtype=F64)  # two systems of very different scales
    apply = lambda x: torch.einsum("bij,bj->bi", mats, x)  # noqa: E731
    x = conjugate_gradient(apply, b, tol=1e-2, max_iter=500)
    rel = (apply(x) - b).norm(dim=1) / b.norm(dim=1)
    assert bool((rel <= 1e-2).all()), rel  # each sample meets the tolerance on its own scale
    assert bool((rel >= 1e-5).all()), rel  # and stops there: the tolerance is relative, not absolute


def test_conjugate_gradient_default_limit_and_the_reported_residual() -> None:
    d = torch.logspace(0, 8, 300, dtype=F64)  # 300 distinct eigenvalues: more than 200 iterations to converge
    b = torch.ones(1, 300, dtype=F64)
    with pytest.warns(RuntimeWarning, match=r"iteration limit \(200\) with relative residual") as got:
        x = conjugate_gradient(lambda v: v * d, b, tol=1e-14)
    if "mutmut" not in sys.modules:  # its trampolines add a frame between the caller and the library
        assert got[0].filename == __file__
    rel = float((x * d - b).norm() / b.norm())
    reported = float(str(got[0].message).split("relative residual ")[1].split(" ")[0])
    assert 0.3 < reported / rel < 3, (reported, rel)  # printed to one digit


def test_measurement_noise_is_the_generators_draw_in_the_samples_dtype() -> None:
    from priorkit.inverse.operators import Measurement
    from priorkit.inverse.operators.measurement import measurement_to_image_range

    op = Inpainting(torch.tensor([[1.0, 0.0], [1.0, 1.0]]))
    x = torch.full((1, 1, 2, 2), 0.5, dtype=F64)
    y = Measurement(op, 0.1)(x, generator=torch.Generator().manual_seed(3))
    n = torch.randn(y.shape, generator=torch.Generator().manual_seed(3), dtype=F64)
    torch.testing.assert_close(y, op.A(x) + 0.1 * op.measured(n))
    assert y.dtype == F64
    y_m = torch.randn(1, 1, 2, 2, dtype=F64)
    torch.testing.assert_close(Measurement(op, 0.1).to_image(y_m, (1, 1, 2, 2)),
                               measurement_to_image_range(op, y_m, (1, 1, 2, 2)))
