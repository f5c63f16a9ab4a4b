"""Tiling (inverse/tiling.py): blend weights, exactness on a translation-equivariant prior, big images, channels."""

from __future__ import annotations

import pytest
import torch

from priorkit.distill.core.gmm import GaussianMixture
from priorkit.distill.core.samplers.base import predict_fn
from priorkit.inverse.operators import Blur, Downsampling, Inpainting, box_mask, gaussian_kernel
from priorkit.inverse.pigdm import pigdm, pigdm_guided_x0
from priorkit.inverse.tiling import CropOperator, TiledDenoiser, blend_weights, from_rgb, tile_starts, to_rgb

F64 = torch.float64


pytestmark = pytest.mark.usefixtures("single_thread")


def per_pixel_prior(h: int, w: int) -> GaussianMixture:
    """x0 ~ N(m_c, v_c) independently per pixel (channel-dependent): a translation-equivariant exact denoiser."""
    mean_c = torch.tensor([0.3, -0.2, 0.1], dtype=F64)
    var_c = torch.tensor([0.4, 0.2, 0.3], dtype=F64)
    means = mean_c[:, None, None].expand(3, h, w).reshape(1, -1)
    var = var_c[:, None, None].expand(3, h, w).reshape(1, -1)
    return GaussianMixture(torch.ones(1), means, var, sample_shape=(3, h, w))


@pytest.mark.parametrize("size,tile,overlap", [((40, 56), (16, 16), 6), ((96, 160), (64, 64), 16),
                                              ((64, 64), (64, 64), 16), ((17, 100), (16, 16), 15)])
def test_blend_weights_sum_to_one_and_tiles_cover(size, tile, overlap):
    origins, weights = blend_weights(size, tile, overlap)
    total = torch.zeros(size, dtype=F64)
    cover = torch.zeros(size, dtype=F64)
    for (top, left), w in zip(origins, weights, strict=True):
        total[top:top + tile[0], left:left + tile[1]] += w[0]
        cover[top:top + tile[0], left:left + tile[1]] += 1
    assert torch.allclose(total, torch.ones_like(total), atol=1e-12)
    assert bool((weights > 0).all())
    assert bool((cover >= 1).all())
    for length, t in zip(size, tile, strict=True):
        starts = tile_starts(length, t, overlap)
        assert starts[0] == 0 and starts[-1] == length - t
        assert all(b - a <= t - overlap for a, b in zip(starts, starts[1:], strict=False))


def test_tile_starts_rejects_bad_sizes():
    with pytest.raises(ValueError, match="larger"):
        tile_starts(10, 16, 4)
    with pytest.raises(ValueError, match="overlap"):
        tile_starts(40, 16, 16)


def test_tiling_a_translation_equivariant_prior_is_exact():
    """Per-pixel Gaussian prior: the tiled 16x16 prior equals the full 40x56 prior exactly (prediction, guidance and a
    whole PiGDM run, whose vector-Jacobian products go through the blend)."""
    H, W = 40, 56
    full, tiled = per_pixel_prior(H, W), TiledDenoiser(per_pixel_prior(16, 16), (H, W), overlap=6, max_batch=5)
    assert tiled.sample_shape == (3, H, W) and tiled.num_tiles > 6
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, H, W, generator=g, dtype=F64)
    for t in (0.3, torch.tensor([0.2, 0.7], dtype=F64)):
        a, b = full(x, t), tiled(x, t)
        assert torch.allclose(a.x0, b.x0, atol=1e-12) and torch.allclose(a.eps, b.eps, atol=1e-12)
    op = Blur(gaussian_kernel(1.5).double())
    y = op.A(full.sample(2, g))
    xa, _ = pigdm_guided_x0(predict_fn(full), x, 0.5, op, y, 0.05, full.schedule)
    xb, _ = pigdm_guided_x0(predict_fn(tiled), x, 0.5, op, y, 0.05, tiled.schedule)
    assert torch.allclose(xa, xb, atol=1e-10)
    ra = pigdm(full, op, y, 0.05, steps=8, generator=torch.Generator().manual_seed(1))
    rb = pigdm(tiled, op, y, 0.05, steps=8, generator=torch.Generator().manual_seed(1))
    assert torch.allclose(ra, rb, atol=1e-9)


def test_a_96x160_image_with_a_64x64_prior():
    """96x160 images restored with 64x64 priors (6 tiles): a random non-equivariant Gaussian (runs, finite), and the
    per-pixel prior, where observed pixels of an inpainting problem are matched to the noise level."""
    g = torch.Generator().manual_seed(2)
    op = Inpainting(box_mask(96, 160))
    random_prior = GaussianMixture.random(3 * 64 * 64, 1, generator=g, sample_shape=(3, 64, 64), diagonal=True,
                                          dtype=torch.float32)
    tiled = TiledDenoiser(random_prior, (96, 160), overlap=16)
    assert tiled.num_tiles == 2 * 3
    y = op.A(0.5 * torch.randn(1, 3, 96, 160, generator=g))
    out = pigdm(tiled, op, y, 0.02, steps=5, generator=g)
    assert out.shape == (1, 3, 96, 160) and torch.isfinite(out).all()

    x_true = per_pixel_prior(96, 160).sample(1, g)
    y = op.A(x_true) + 0.02 * op.measured(torch.randn(x_true.shape, generator=g, dtype=F64))
    out = pigdm(TiledDenoiser(per_pixel_prior(64, 64), (96, 160)), op, y, 0.02, steps=20, generator=g)
    keep = op.mask.bool().expand_as(out)
    assert float((out[keep] - x_true[keep]).abs().mean()) < 0.05


def test_channel_layouts_round_trip():
    g = torch.Generator().manual_seed(3)
    grey = torch.rand(2, 1, 5, 7, generator=g)
    rgb, layout = to_rgb(grey)
    assert rgb.shape == (2, 3, 5, 7) and torch.allclose(from_rgb(rgb, layout), grey)
    rgba = torch.rand(1, 4, 5, 7, generator=g)
    rgb, layout = to_rgb(rgba)
    restored = from_rgb(torch.zeros_like(rgb), layout)
    assert restored.shape == (1, 4, 5, 7) and torch.equal(restored[:, 3], rgba[:, 3])
    la = torch.rand(1, 2, 5, 7, generator=g)
    rgb, layout = to_rgb(la)
    assert torch.allclose(from_rgb(rgb, layout), la)
    big = from_rgb(torch.zeros(1, 3, 10, 14), layout)                # e.g. after 2x super-resolution
    assert big.shape == (1, 2, 10, 14)
    with pytest.raises(ValueError, match="channels"):
        to_rgb(torch.rand(1, 5, 4, 4))


def test_crop_operator_is_a_consistent_operator():
    """A' = A o crop: exact adjoint, A' A'^T = A A^T, and pinv/solve inherited."""
    g = torch.Generator().manual_seed(4)
    for op in (Blur(gaussian_kernel(1.0).double()), Downsampling(2, "average"), Inpainting(box_mask(10, 12))):
        crop = CropOperator(op, (10, 12), (16, 16))
        x = torch.randn(2, 3, 16, 16, generator=g, dtype=F64)
        y = torch.randn(crop.A(x).shape, generator=g, dtype=F64)
        assert torch.allclose((crop.A(x) * y).sum(), (x * crop.At(y)).sum())
        assert torch.allclose(crop.AAt(y), crop.A(crop.At(y)))
        z = crop.solve(y, 0.7, 0.1)
        assert torch.allclose(0.49 * crop.AAt(z) + 0.01 * z, y, atol=1e-8)
        assert crop.pinv(y).shape == (2, 3, 16, 16)
        assert crop.ones_response((1, 3, 16, 16), F64).shape == (1, *y.shape[1:])
    with pytest.raises(ValueError, match="smaller"):
        CropOperator(op, (10, 12), (8, 16))


def test_tiled_blend_is_differentiable_and_batches_tiles():
    """The in-place blend passes gradients (gradcheck in float64 through a Gaussian prior, overlapping tiles) and a
    step sends every tile through the network in ceil(tiles / max_batch) calls."""
    inner = GaussianMixture.random(1 * 6 * 6, 2, scale=1.0, spread=0.5, generator=torch.Generator().manual_seed(0),
                                   sample_shape=(1, 6, 6))
    calls = []
    forward = inner.forward

    def counted(x, t, cond=None, *, check=True):
        calls.append(x.shape[0])
        return forward(x, t, cond, check=check)

    inner.forward = counted
    den = TiledDenoiser(inner, (10, 14), overlap=2, max_batch=5)
    x = torch.randn(2, 1, 10, 14, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda v: den(v, 0.4).x0, (x,), eps=1e-6, atol=1e-6)
    calls.clear()
    den(x.detach(), 0.4)
    assert den.num_tiles == 6 and calls == [5, 5, 2]               # 2 images x 6 tiles in 3 calls of <= 5
