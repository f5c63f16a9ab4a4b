"""The helpers of score distillation by value (written against the survivors of a mutation run of
distill/score/guidance.py, tests/MUTANTS.md): the time draw, the noise draw, the prior's image size and the renders'
way into its space."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from priorkit.distill.score.guidance import draw_noise, image_size, sample_times, to_model_space


def test_sample_times_is_uniform_on_the_range_from_the_generator() -> None:
    t = sample_times(5, 0.2, 0.7, torch.Generator().manual_seed(3))
    u = torch.rand(5, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    assert t.dtype == torch.float64 and t.shape == (5,)
    torch.testing.assert_close(t, 0.2 + 0.5 * u, rtol=0, atol=0)
    on = sample_times(5, 0.2, 0.7, torch.Generator().manual_seed(3), device="cpu")
    torch.testing.assert_close(on, t, rtol=0, atol=0)
    assert sample_times(3, 0.4, 0.4).eq(0.4).all()  # lo = hi is allowed
    assert sample_times(3, 0.0, 1.0).min() >= 0.0  # the closed range [0, 1] is allowed
    for lo, hi in ((-0.1, 0.5), (0.2, 1.1), (0.6, 0.5)):
        with pytest.raises(ValueError, match=r"0 <= lo <= hi <= 1; got \["):
            sample_times(2, lo, hi)


def test_draw_noise_draws_times_then_noise_from_one_generator_in_x_dtype() -> None:
    x = torch.zeros(3, 2, 4, 4, dtype=torch.float32)
    t, eps = draw_noise(x, 0.1, 0.9, torch.Generator().manual_seed(5))
    g = torch.Generator().manual_seed(5)
    t_ref = sample_times(3, 0.1, 0.9, g)
    eps_ref = torch.randn(x.shape, generator=g, dtype=torch.float32)
    assert t.dtype == eps.dtype == torch.float32 and t.shape == (3,) and eps.shape == x.shape
    torch.testing.assert_close(t, t_ref.float(), rtol=0, atol=0)
    torch.testing.assert_close(eps, eps_ref, rtol=0, atol=0)
    t64, eps64 = draw_noise(x.double(), 0.1, 0.9, torch.Generator().manual_seed(5))  # drawn in x's dtype
    assert t64.dtype == eps64.dtype == torch.float64
    g = torch.Generator().manual_seed(5)
    sample_times(3, 0.1, 0.9, g)
    torch.testing.assert_close(eps64, torch.randn(x.shape, generator=g, dtype=torch.float64), rtol=0, atol=0)


def fake_prior(side: int = 8, vae_blocks: int | None = None, latent: bool = False) -> SimpleNamespace:
    vae = None if vae_blocks is None else SimpleNamespace(config=SimpleNamespace(block_out_channels=[1] * vae_blocks))
    return SimpleNamespace(sample_shape=(3, side, side), vae=vae, latent=latent,
                           encode_images=lambda x: x[:, :, ::2, ::2] * 10.0)


def test_image_size_is_the_sample_side_times_the_vae_factor() -> None:
    assert image_size(fake_prior(8)) == 8
    assert image_size(fake_prior(8, vae_blocks=4)) == 64  # 3 downsamplings: 2^3
    assert image_size(fake_prior(8, vae_blocks=1)) == 8
    assert image_size(SimpleNamespace(sample_shape=(3, 6, 8))) == 8  # the width (last axis)
    with pytest.raises(ValueError, match="does not declare a sample shape"):
        image_size(SimpleNamespace(sample_shape=None))


def test_to_model_space_resizes_maps_to_minus_one_one_and_encodes_latent_priors() -> None:
    img = torch.rand(2, 3, 8, 8)
    torch.testing.assert_close(to_model_space(fake_prior(8), img), img * 2 - 1, rtol=0, atol=0)
    big = torch.rand(2, 3, 32, 32)
    down = F.interpolate(big, size=(8, 8), mode="bilinear", align_corners=False, antialias=True) * 2 - 1
    torch.testing.assert_close(to_model_space(fake_prior(8), big), down, rtol=0, atol=0)
    small = torch.rand(1, 3, 4, 4)
    up = F.interpolate(small, size=(8, 8), mode="bilinear", align_corners=False, antialias=False) * 2 - 1
    torch.testing.assert_close(to_model_space(fake_prior(8), small), up, rtol=0, atol=0)
    wide = torch.rand(1, 3, 8, 16)  # width > side only: antialiased (by the width), as a wide render needs
    ref = F.interpolate(wide, size=(8, 8), mode="bilinear", align_corners=False, antialias=True) * 2 - 1
    torch.testing.assert_close(to_model_space(fake_prior(8), wide), ref, rtol=0, atol=0)
    tall = torch.rand(1, 3, 16, 8)  # width = side: no antialiasing
    ref = F.interpolate(tall, size=(8, 8), mode="bilinear", align_corners=False, antialias=False) * 2 - 1
    torch.testing.assert_close(to_model_space(fake_prior(8), tall), ref, rtol=0, atol=0)
    no_flag = SimpleNamespace(sample_shape=(3, 8, 8), vae=None, encode_images=lambda x: x * 0)
    torch.testing.assert_close(to_model_space(no_flag, img), img * 2 - 1)  # not declared latent: not encoded
    # a latent prior: resized to the VAE's image size, then encoded; a pixel prior with an encoder is not encoded
    lat = to_model_space(fake_prior(4, vae_blocks=2, latent=True), img)
    torch.testing.assert_close(lat, (img * 2 - 1)[:, :, ::2, ::2] * 10.0, rtol=0, atol=0)
    assert to_model_space(fake_prior(8, latent=False), img).shape == img.shape
    x = torch.rand(2, 3, 8, 8, requires_grad=True)
    to_model_space(fake_prior(4), x).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0  # differentiable
    for bad in (torch.rand(3, 8, 8), torch.rand(1, 4, 8, 8)):
        with pytest.raises(ValueError, match=r"renders must be \(B, 3, H, W\); got"):
            to_model_space(fake_prior(8), bad)
