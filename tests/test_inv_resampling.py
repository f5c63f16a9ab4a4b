"""Downsampling by value (what a mutation run of resampling.py left unchecked): its refusals and their words, its
device, and that every map acts on the LAST two axes (an unbatched (C, H, W) image, here non-square, is resampled
as an image: the block means / torch's antialiased bicubic, the exact adjoint, a right inverse, the solve)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from priorkit.inverse.operators import Downsampling

F64 = torch.float64


def test_downsampling_refuses_non_integer_or_non_positive_factors_and_unknown_kinds() -> None:
    for factor in (2.5, 0, -2):
        with pytest.raises(ValueError, match=f"factor must be a positive integer, got {factor}"):
            Downsampling(factor)
    with pytest.raises(ValueError, match="kind must be 'average' or 'bicubic', got 'nearest'"):
        Downsampling(2, "nearest")
    assert Downsampling(2.0).factor == 2  # an integral float is an integer factor


def _image(seed: int, *shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=F64)


@pytest.mark.parametrize("kind", ["average", "bicubic"])
def test_an_unbatched_non_square_image_is_resampled_on_its_last_two_axes(kind: str) -> None:
    op = Downsampling(2, kind)
    x = _image(0, 3, 8, 12)                                      # (C, H, W): 8 x 12 -> 4 x 6
    y = _image(1, 3, 4, 6)
    Ax = op.A(x)
    if kind == "average":                                        # the mean of each 2 x 2 block
        want = x.reshape(3, 4, 2, 6, 2).mean(dim=(2, 4))
    else:                                                        # the class's definition: torch's interpolation
        want = F.interpolate(x[None], size=(4, 6), mode="bicubic", antialias=True, align_corners=False)[0]
    torch.testing.assert_close(Ax, want, rtol=1e-12, atol=1e-12)
    Aty = op.At(y)
    assert Aty.shape == (3, 8, 12)
    assert abs(float((Ax * y).sum() - (x * Aty).sum())) < 1e-12       # <A x, y> = <x, A^T y>
    if kind == "average":                                        # A^T = nearest upsampling / 4
        torch.testing.assert_close(Aty, torch.kron(y, torch.ones(2, 2, dtype=F64)) / 4, rtol=0, atol=1e-15)
    p = op.pinv(y)
    assert p.shape == (3, 8, 12)
    torch.testing.assert_close(op.A(p), y, rtol=1e-10, atol=1e-10)   # A A^+ = I: D has full row rank
    z = op.solve(y, 0.7, 0.3)                                    # (0.49 A A^T + 0.09) z = y
    assert z.shape == (3, 4, 6)
    torch.testing.assert_close(0.49 * op.A(op.At(z)) + 0.09 * z, y, rtol=1e-10, atol=1e-10)


def test_bicubic_solve_stays_on_the_inputs_device() -> None:
    """The per-axis matrices are moved to the measurement's device (torch's shape-only "meta" device here)."""
    op = Downsampling(2, "bicubic")
    y = torch.ones(1, 1, 4, 6, device="meta")
    for out in (op.solve(y, 1.0, 0.1), op.A(torch.ones(1, 1, 8, 12, device="meta")), op.At(y), op.pinv(y)):
        assert out.device.type == "meta"
