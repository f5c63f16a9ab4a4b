"""The classical restorations (bicubic, Wiener, biharmonic) as a method and as the warm start of DiffPIR."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from priorkit.distill.core.gmm import GaussianMixture
from priorkit.distill.core.schedule import FlowMatching
from priorkit.inverse.classical import classical
from priorkit.inverse.diffpir import diffpir
from priorkit.inverse.operators import Blur, Downsampling, Inpainting, random_mask
from priorkit.inverse.operators.blurs import gaussian_kernel
from priorkit.inverse.solver_common import warm_state


def ramp(h: int = 16, w: int = 16) -> torch.Tensor:
    """A smooth image in [-1, 1]: a linear ramp per channel (biharmonic inpainting restores it exactly)."""
    yy, xx = torch.meshgrid(torch.linspace(-0.8, 0.8, h), torch.linspace(-0.8, 0.8, w), indexing="ij")
    return torch.stack([xx, yy, 0.5 * (xx + yy)])[None].double()


def test_classical_is_bicubic_wiener_or_biharmonic_by_operator() -> None:
    x = ramp()
    down = Downsampling(2)
    y = down.A(x)
    expected = F.interpolate((y + 1) / 2, scale_factor=2, mode="bicubic", align_corners=False).clamp(0, 1) * 2 - 1
    torch.testing.assert_close(classical(None, down, y, 0.0), expected)
    mask = random_mask(16, 16, 0.5, torch.Generator().manual_seed(0))
    inp = Inpainting(mask)
    filled = classical(None, inp, inp.A(x), 0.0)
    err = (filled - x).abs()
    assert float(err.mean()) < 0.01 and float(err[..., 3:-3, 3:-3].max()) < 0.03  # a plane, refilled (edges looser)
    assert float((inp.A(x) - x).abs().mean()) > 0.1  # the holes were real
    blur = Blur(gaussian_kernel(1.0, 7))
    k = 2 * torch.pi * torch.arange(16, dtype=torch.float64) / 16
    periodic = (0.5 * torch.sin(3 * k)[None, :] * torch.cos(2 * k)[:, None]).expand(1, 3, 16, 16)  # circular blur
    x = periodic
    yb = blur.A(x)
    assert (classical(None, blur, yb, 0.01) - x).abs().mean() < 0.5 * (yb - x).abs().mean()  # Wiener undoes blur


def test_warm_state_starts_at_t0_from_the_noised_classical_estimate() -> None:
    den = GaussianMixture(torch.ones(1, dtype=torch.float64), torch.zeros(1, 3 * 16 * 16, dtype=torch.float64),
                          torch.ones(1, 3 * 16 * 16, dtype=torch.float64), schedule=FlowMatching(),
                          sample_shape=(3, 16, 16))
    op = Downsampling(2)
    y = op.A(ramp())
    z = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    times, x = warm_state(den, op, y, 0.01, 5, "time", 0.7, None, z, None)
    assert float(times[0]) == pytest.approx(0.7) and len(times) == 6
    torch.testing.assert_close(x, 0.3 * classical(None, op, y, 0.01) + 0.7 * z)  # flow: alpha = 1 - t, sigma = t
    with pytest.raises(ValueError, match="warm_start"):
        diffpir(den, op, y, 0.01, warm_start=1.5)
