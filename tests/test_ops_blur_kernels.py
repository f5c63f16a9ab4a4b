"""The blur kernels by value: gaussian_kernel's (sigma_y, sigma_x) pair and default size, motion_kernel's angle,
direction and default direction (issue: the mutants of inverse/operators/blurs.py that survived)."""

from __future__ import annotations

import math

import pytest
import torch

from priorkit.inverse.operators import gaussian_kernel, motion_kernel

pytestmark = pytest.mark.usefixtures("single_thread")


def _gauss_1d(sigma: float, size: int) -> torch.Tensor:
    """exp(-t^2 / (2 sigma^2)) on the taps t = -(size // 2) .. size // 2, normalised to sum 1."""
    g = torch.tensor([math.exp(-((t - size // 2) ** 2) / (2 * sigma**2)) for t in range(size)], dtype=torch.float64)
    return g / g.sum()


def test_gaussian_kernel_with_two_sigmas_is_the_outer_product_of_two_1d_gaussians() -> None:
    k = gaussian_kernel((1.0, 2.0))
    assert k.shape == (13, 13)  # default size from the larger sigma: 2 * ceil(3 * 2) + 1
    want = torch.outer(_gauss_1d(1.0, 13), _gauss_1d(2.0, 13))  # rows: sigma_y = 1, columns: sigma_x = 2
    torch.testing.assert_close(k.double(), want, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize(("sigma", "size"), [(2.0, 13), (0.5, 5), ((1.0, 1.2), 9), (1, 7)])
def test_gaussian_kernel_default_size_is_2_ceil_3_sigma_plus_1(sigma: float | tuple[float, float], size: int) -> None:
    k = gaussian_kernel(sigma)
    assert k.shape == (size, size)
    assert math.isclose(float(k.sum()), 1.0, rel_tol=1e-6)


def test_motion_kernel_default_is_a_uniform_horizontal_streak() -> None:
    k = motion_kernel(5, 0.0)  # direction left at its default 0: uniform
    want = torch.zeros(5, 5)
    want[2] = 0.2
    torch.testing.assert_close(k, want, rtol=0, atol=1e-7)


def test_motion_kernel_angle_90_is_a_vertical_streak() -> None:
    k = motion_kernel(5, 90.0)
    want = torch.zeros(5, 5)
    want[:, 2] = 0.2
    torch.testing.assert_close(k, want, rtol=0, atol=1e-6)


def test_motion_kernel_direction_one_is_a_linear_ramp_to_zero_mirrored_by_minus_one() -> None:
    plus, minus = motion_kernel(5, 0.0, 1.0), motion_kernel(5, 0.0, -1.0)
    for k in (plus, minus):
        assert float(k.sum() - k[2].sum()) == 0.0  # only the middle row
        torch.testing.assert_close(k[2].sort().values, torch.tensor([0.0, 0.1, 0.2, 0.3, 0.4]), rtol=0, atol=1e-6)
    torch.testing.assert_close(minus[2], plus[2].flip(0), rtol=0, atol=1e-6)
    assert not torch.equal(plus, minus)
