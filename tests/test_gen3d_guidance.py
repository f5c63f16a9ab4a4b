"""Tests of gen3d's score distillation: SDS and VSD gradients against exact priors, the LoRA, the 2D toy."""

from __future__ import annotations

import contextlib
import math

import pytest
import torch
from torch import nn

from benchmarks.toy2d_sds import Toy2DConfig, compare, energy_distance, ring_mixture
from priorkit.distill.core.cameras import Camera, random_cameras
from priorkit.distill.core.diffusers_adapter import DiffusersDenoiser
from priorkit.distill.core.gmm import GaussianMixture
from priorkit.distill.core.schedule import FlowMatching, VPCosine
from priorkit.distill.score.guidance import (
    annealed_range,
    sample_times,
    surrogate_loss,
    to_model_space,
    view_prompts,
    weight,
)
from priorkit.distill.score.lora import (
    LoRAConfig,
    attach_lora,
    camera_features,
    detach_lora,
    lora_named_parameters,
    pretrained_branch,
)
from priorkit.gen3d.sds import SDS, GuidedPredictor, SDSConfig, sds_gradient
from priorkit.gen3d.vsd import VSD, VSDConfig, vsd_gradient

torch.set_num_threads(1)

TARGETS = ("to_q", "to_k", "to_v", "to_out.0")


# ---------------------------------------------------------------------------------------------------------------------
# fixtures: a tiny text-conditional UNet with a deterministic toy text encoder
# ---------------------------------------------------------------------------------------------------------------------


class HashText(nn.Module):
    """Prompts -> fixed pseudo-random states (B, 4, 8) (a stand-in text encoder; same prompt, same states)."""

    def forward(self, prompts: list[str]) -> torch.Tensor:
        out = []
        for p in prompts:
            g = torch.Generator().manual_seed(sum(ord(c) * (i + 1) for i, c in enumerate(p)) % (2**31))
            out.append(torch.randn(4, 8, generator=g))
        return torch.stack(out)


def tiny_unet():
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    return UNet2DConditionModel(sample_size=8, in_channels=3, out_channels=3, layers_per_block=1,
                                block_out_channels=(16, 32), down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=8,
                                attention_head_dim=8, norm_num_groups=8).eval()


SCHEDULER = {"_class_name": "DDPMScheduler", "num_train_timesteps": 1000, "beta_schedule": "squaredcos_cap_v2",
             "prediction_type": "v_prediction"}


@pytest.fixture()
def tiny_prior() -> DiffusersDenoiser:
    return DiffusersDenoiser(tiny_unet(), SCHEDULER, text_encoder=HashText())


def base_name(name: str) -> str:
    """peft renames a wrapped layer's weight 'x.to_q.weight' -> 'x.to_q.base_layer.weight'."""
    return name.replace(".base_layer.", ".")


# ---------------------------------------------------------------------------------------------------------------------
# shared pieces
# ---------------------------------------------------------------------------------------------------------------------


def test_surrogate_loss_gradient_is_the_given_gradient():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(3, 2, 4, 4, generator=gen, dtype=torch.float64).requires_grad_(True)
    g = torch.randn(3, 2, 4, 4, generator=gen, dtype=torch.float64)
    (dx,) = torch.autograd.grad(surrogate_loss(x, g), x)
    torch.testing.assert_close(dx, g / 3, rtol=0, atol=1e-14)  # x - (x - g) = g up to float64 rounding


def test_surrogate_loss_gives_each_particle_the_gradient_of_a_run_of_its_own():
    """4 particles x 2 views: every render gets grad / 2, as with one particle and its 2 views (the regularisers,
    added per particle, keep their weight against the guidance whatever the number of particles)."""
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(8, 3, 4, 4, generator=gen, dtype=torch.float64).requires_grad_(True)
    g = torch.randn(8, 3, 4, 4, generator=gen, dtype=torch.float64)
    (dx,) = torch.autograd.grad(surrogate_loss(x, g, particles=4), x)
    torch.testing.assert_close(dx, g / 2, rtol=0, atol=1e-14)
    (dx1,) = torch.autograd.grad(surrogate_loss(x[:2], g[:2]), x)
    torch.testing.assert_close(dx[:2], dx1[:2], rtol=0, atol=1e-14)
    with pytest.raises(ValueError, match="particles"):
        surrogate_loss(x, g, particles=3)


def test_sigma2_weight_is_dreamfusion_and_schedule_free():
    vp = VPCosine()
    t = torch.linspace(0.05, 0.95, 7, dtype=torch.float64)
    torch.testing.assert_close(weight("sigma2", vp, t), vp.sigma(t) ** 2)  # VP: sigma_t^2 = 1 - alpha_bar_t
    t_fm, _ = vp.convert(t, to=FlowMatching())  # the same SNR under flow matching gets the same weight
    torch.testing.assert_close(weight("sigma2", FlowMatching(), t_fm), weight("sigma2", vp, t))
    torch.testing.assert_close(weight("uniform", vp, t), torch.ones_like(t))
    with pytest.raises(ValueError, match="weighting"):
        weight("nope", vp, t)


def test_time_annealing_endpoints_and_range():
    assert annealed_range(0.02, 0.98, 0.5, "none", 0.7) == (0.02, 0.98)
    assert annealed_range(0.02, 0.98, 0.5, "linear", 0.0) == (0.02, 0.98)
    assert annealed_range(0.02, 0.98, 0.5, "linear", 1.0) == pytest.approx((0.02, 0.5))
    assert annealed_range(0.02, 0.98, 0.5, "linear", 0.5)[1] == pytest.approx(0.74)
    assert annealed_range(0.02, 0.98, 0.5, "sqrt", 0.25)[1] == pytest.approx(0.74)
    t = sample_times(1000, 0.1, 0.3, torch.Generator().manual_seed(0))
    assert float(t.min()) >= 0.1 and float(t.max()) <= 0.3 and abs(float(t.mean()) - 0.2) < 0.01
    with pytest.raises(ValueError):
        sample_times(3, 0.5, 0.2)


def test_view_prompts_follow_the_camera_convention():
    cams = [Camera(0.0, 10.0), Camera(90.0, 10.0), Camera(180.0, 0.0), Camera(30.0, 60.0)]
    assert view_prompts("a red cube", cams) == ["a red cube, front view", "a red cube, side view",
                                                "a red cube, back view", "a red cube, overhead view"]
    assert view_prompts("a red cube", cams, view_dependent=False) == ["a red cube"] * 4


def test_pixel_renders_go_to_the_prior_range_and_size(tiny_prior):
    img = torch.rand(2, 3, 8, 8)
    torch.testing.assert_close(to_model_space(tiny_prior, img), img * 2 - 1)
    assert to_model_space(tiny_prior, torch.rand(2, 3, 16, 16)).shape == (2, 3, 8, 8)


# ---------------------------------------------------------------------------------------------------------------------
# SDS / VSD gradients against an exact prior
# ---------------------------------------------------------------------------------------------------------------------


def _gmm() -> GaussianMixture:
    means = torch.tensor([[1.0, -0.5, 0.3], [-1.0, 0.8, -0.2]], dtype=torch.float64)
    cov = torch.tensor([[0.2, 0.1, 0.3], [0.15, 0.25, 0.1]], dtype=torch.float64)
    return GaussianMixture(torch.tensor([0.4, 0.6], dtype=torch.float64), means, cov, schedule=VPCosine())


def test_sds_gradient_has_zero_mean_on_samples_of_an_exact_prior():
    """E_{x~p, t, eps}[eps_hat(x_t) - eps] = E[E[eps | x_t]] - E[eps] = 0 for the exact posterior mean."""
    prior, g, n = _gmm(), torch.Generator().manual_seed(0), 40000
    x = prior.sample(n, g)
    t = sample_times(n, 0.02, 0.98, g)
    eps = torch.randn(x.shape, generator=g, dtype=x.dtype)
    grad = sds_gradient(GuidedPredictor(prior, None, 1.0), prior.schedule, x, t, eps, "uniform")
    se = grad.std(dim=0) / math.sqrt(n)
    assert (grad.mean(dim=0).abs() < 4 * se).all(), (grad.mean(0), se)
    # the check has power: renders that are NOT prior samples get a clearly non-zero mean gradient
    off = sds_gradient(GuidedPredictor(prior, None, 1.0), prior.schedule, x + 1.0, t, eps, "uniform")
    assert (off.mean(dim=0).abs() > 20 * se).all()


def test_sds_gradient_points_down_the_smoothed_log_density():
    """eps_hat(x_t) = -sigma grad log p_t(x_t): a small step along -E[grad] raises log p of a far-away point."""
    prior, g = _gmm(), torch.Generator().manual_seed(1)
    x = torch.full((2000, 3), 3.0, dtype=torch.float64)
    t = torch.full((2000,), 0.3, dtype=torch.float64)
    eps = torch.randn(x.shape, generator=g, dtype=x.dtype)
    grad = sds_gradient(GuidedPredictor(prior, None, 1.0), prior.schedule, x, t, eps, "sigma2").mean(0)
    x1 = x[:1] - 0.1 * grad
    assert float(prior.log_prob(x1)) > float(prior.log_prob(x[:1]))


def test_vsd_gradient_is_exactly_zero_when_the_particle_model_is_the_prior():
    prior, g = _gmm(), torch.Generator().manual_seed(2)
    x = torch.randn(64, 3, generator=g, dtype=torch.float64) * 2
    t = sample_times(64, 0.02, 0.98, g)
    eps = torch.randn(x.shape, generator=g, dtype=x.dtype)
    pre = GuidedPredictor(prior, None, 1.0)
    grad = vsd_gradient(pre, pre, prior.schedule, x, t, eps)
    assert torch.equal(grad, torch.zeros_like(grad))
    assert sds_gradient(pre, prior.schedule, x, t, eps).abs().max() > 0.01  # while SDS' is not


def test_sds_loss_backpropagates_to_renders(tiny_prior):
    sds = SDS(tiny_prior, "a red cube", SDSConfig(guidance_scale=5.0))
    g = torch.Generator().manual_seed(0)
    img = torch.rand(2, 3, 8, 8, requires_grad=True)
    loss, info = sds.loss(img, random_cameras(2, g), 0.5, g)
    loss.backward()
    assert img.grad.abs().sum() > 0 and info["grad_norm"] > 0
    with pytest.raises(ValueError, match="cameras"):
        sds.loss(img, random_cameras(3, g), 0.5, g)


def test_sds_particles_each_get_the_gradient_of_a_run_of_their_own(tiny_prior):
    sds = SDS(tiny_prior, "a red cube", SDSConfig(guidance_scale=5.0))
    img = torch.rand(4, 3, 8, 8, requires_grad=True)
    cams = random_cameras(4, torch.Generator().manual_seed(0))
    sds.loss(img, cams, 0.5, torch.Generator().manual_seed(1), particles=2)[0].backward()
    together = img.grad.clone()
    img.grad = None
    sds.loss(img, cams, 0.5, torch.Generator().manual_seed(1))[0].backward()  # 4 views of one particle
    torch.testing.assert_close(together, 2 * img.grad)


def test_sds_guidance_warms_up_at_a_lower_scale(tiny_prior):
    sds = SDS(tiny_prior, "a red cube", SDSConfig(guidance_scale=60.0, warmup_guidance_scale=20.0,
                                                  guidance_warmup=0.2))
    assert [sds.guidance_scale(p) for p in (0.0, 0.19, 0.2, 1.0)] == [20.0, 20.0, 60.0, 60.0]
    assert SDS(tiny_prior, "a red cube", SDSConfig(guidance_scale=5.0)).guidance_scale(0.0) == 5.0  # capped
    no_warmup = SDSConfig(guidance_scale=60.0, warmup_guidance_scale=None)
    assert SDS(tiny_prior, "a red cube", no_warmup).guidance_scale(0.0) == 60.0
    # in the warm-up, the gradient is exactly that of a constant CFG of the warm-up scale (same draws)
    img = torch.rand(2, 3, 8, 8, requires_grad=True)
    cams = random_cameras(2, torch.Generator().manual_seed(0))
    loss, info = sds.loss(img, cams, 0.1, torch.Generator().manual_seed(1))
    loss.backward()
    warm = img.grad.clone()
    img.grad = None
    constant = SDS(tiny_prior, "a red cube", SDSConfig(guidance_scale=20.0, warmup_guidance_scale=None))
    constant.loss(img, cams, 0.1, torch.Generator().manual_seed(1))[0].backward()
    assert info["guidance_scale"] == 20.0
    torch.testing.assert_close(warm, img.grad)
    for bad in (dict(warmup_guidance_scale=0.0), dict(guidance_warmup=1.5)):
        with pytest.raises(ValueError):
            SDS(tiny_prior, "a red cube", SDSConfig(**bad))


def test_sds_guidance_cools_down_linearly_to_the_final_scale(tiny_prior):
    sds = SDS(tiny_prior, "a red cube", SDSConfig(guidance_scale=60.0, warmup_guidance_scale=20.0,
                                                  guidance_warmup=0.2, final_guidance_scale=10.0,
                                                  guidance_cooldown=0.4))
    got = [sds.guidance_scale(p) for p in (0.1, 0.3, 0.6, 0.7, 0.8, 1.0)]
    assert got == pytest.approx([20.0, 60.0, 60.0, 47.5, 35.0, 10.0])
    assert SDS(tiny_prior, "a red cube", SDSConfig(guidance_warmup=1.0)).guidance_scale(0.99) == 20.0  # no cool-down
    for bad in (dict(final_guidance_scale=0.0), dict(final_guidance_scale=10.0, guidance_cooldown=0.0),
                dict(final_guidance_scale=10.0, guidance_warmup=0.7, guidance_cooldown=0.4)):
        with pytest.raises(ValueError):
            SDS(tiny_prior, "a red cube", SDSConfig(**bad))


# ---------------------------------------------------------------------------------------------------------------------
# the VSD LoRA
# ---------------------------------------------------------------------------------------------------------------------


def test_lora_attaches_only_to_attention_projections_and_camera_embedding(tiny_prior):
    unet = tiny_prior.unet
    attach_lora(unet, LoRAConfig(rank=4))
    trainable = [n for n, p in unet.named_parameters() if p.requires_grad]
    assert trainable and trainable == [n for n, _ in lora_named_parameters(unet)]
    for n in trainable:
        if n.startswith("class_embedding."):
            continue
        module = n.split(".lora_")[0]
        assert module.endswith(tuple("." + t for t in TARGETS)), n
    # every target projection got a LoRA, and nothing else did
    wrapped = {n.split(".lora_")[0] for n in trainable if ".lora_" in n}
    targets = {n for n, _ in unet.named_modules() if n.endswith(tuple("." + t for t in TARGETS))
               and ".base_layer" not in n and ".lora_" not in n}
    assert wrapped == targets and len(targets) > 0
    assert any(n.startswith("class_embedding.") for n in trainable)
    with pytest.raises(ValueError, match="already has a VSD LoRA"):
        attach_lora(unet)


def test_lora_branch_equals_pretrained_at_init_and_vsd_gradient_is_zero(tiny_prior):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 3, 8, 8, generator=g)
    t = torch.tensor([0.2, 0.5, 0.8])
    cond = tiny_prior.encode(["a red cube"] * 3)
    before = tiny_prior(x, t, cond).eps
    vsd = VSD(tiny_prior, "a red cube", VSDConfig(guidance_scale=1.0))
    cams = random_cameras(3, g)
    feats = camera_features(cams)
    assert feats.shape == (3, 16)
    lora = tiny_prior(x, t, {"text": cond, "class_labels": feats}).eps
    assert torch.equal(lora, before)  # B = 0 and a zero camera MLP: exactly the pretrained model
    img = torch.rand(3, 3, 8, 8, requires_grad=True)
    loss, info = vsd.loss(img, cams, 0.0, g)
    assert info["grad_norm"] == 0.0  # particle gradient w (eps_pre - eps_lora) = 0 exactly
    loss.backward()
    assert torch.equal(img.grad, torch.zeros_like(img.grad))
    vsd.close()


def test_vsd_step_trains_the_lora_and_leaves_base_weights_unchanged(tiny_prior):
    unet = tiny_prior.unet
    base = {n: p.detach().clone() for n, p in unet.named_parameters()}
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 8, 8, generator=g)
    t = torch.tensor([0.3, 0.6])
    cond = tiny_prior.encode(["a red cube"] * 2)
    ref = tiny_prior(x, t, cond).eps
    vsd = VSD(tiny_prior, "a red cube", VSDConfig(guidance_scale=7.5, lora_lr=1e-2))
    lora0 = {n: p.detach().clone() for n, p in lora_named_parameters(unet)}
    for _ in range(2):
        img = torch.rand(2, 3, 8, 8, requires_grad=True)
        loss, _ = vsd.loss(img, random_cameras(2, g), 0.0, g)
        loss.backward()
        vsd.step()
        assert img.grad.abs().sum() > 0
    assert [n for n, p in unet.named_parameters() if p.requires_grad] == list(lora0)  # still only the LoRA
    for n, p in unet.named_parameters():
        if n in lora0:
            continue
        assert torch.equal(p, base[base_name(n)]), n
    assert any(not torch.equal(p, lora0[n]) for n, p in lora_named_parameters(unet))
    with pretrained_branch(unet):  # adapters off: the pretrained model, exactly
        assert torch.equal(tiny_prior(x, t, cond).eps, ref)
    feats = camera_features(random_cameras(2, g))
    assert not torch.equal(tiny_prior(x, t, {"text": cond, "class_labels": feats}).eps, ref)
    detach_lora(unet)
    assert unet.class_embedding is None and not any(".lora_" in n for n, _ in unet.named_parameters())
    assert torch.equal(tiny_prior(x, t, cond).eps, ref)


@pytest.mark.parametrize("bad, match", [({"views_per_particle": 0}, "views_per_particle"),
                                        ({"particle_weight": 0.0}, "particle_weight")])
def test_vsd_refuses_bad_particle_settings(tiny_prior, bad, match):
    with pytest.raises(ValueError, match=match):
        VSD(tiny_prior, "a red cube", VSDConfig(**bad))


# ---------------------------------------------------------------------------------------------------------------------
# the 2D toy
# ---------------------------------------------------------------------------------------------------------------------


def test_energy_distance_is_zero_for_equal_sets_and_grows_with_shift():
    x = torch.randn(200, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert energy_distance(x, x) == pytest.approx(0.0, abs=1e-12)
    assert energy_distance(x, x + 1.0) > energy_distance(x, x + 0.2) > 0


def test_toy2d_vsd_covers_more_modes_and_matches_the_mixture_better_than_sds():
    cfg = Toy2DConfig(particles=48, steps=120, noise_samples=4)
    result = compare(cfg)
    sds, vsd = result["sds"], result["vsd"]
    assert vsd["coverage"] > sds["coverage"]
    assert vsd["coverage"] == 1.0
    assert vsd["energy_distance"] < 0.5 * sds["energy_distance"]
    assert ring_mixture().num_components == 8


# ----------------------------------------------------------------------------------------------------------------------
# SDS.loss and VSD.loss put together from their parts (the mutation run of gen3d: clipping, weighting, the condition,
# the generator, the sign of the LoRA loss and the diagnostics were not checked by value)
# ----------------------------------------------------------------------------------------------------------------------


def _grad_in_images(loss_fn, images):
    img = images.clone().requires_grad_(True)
    loss, info = loss_fn(img)
    (g,) = torch.autograd.grad(loss, img)
    return g, info


def test_sds_loss_is_its_formula_with_clipping_weighting_condition_and_generator(tiny_prior):
    from priorkit.distill.score.guidance import draw_noise, surrogate_loss, to_model_space

    cfg = SDSConfig(guidance_scale=5.0, warmup_guidance_scale=None, weighting="uniform", grad_clip=0.05,
                    prior_precision="float32")
    sds = SDS(tiny_prior, "a red cube", cfg)
    cams = random_cameras(3, torch.Generator().manual_seed(1))
    images = torch.rand(3, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    got, info = _grad_in_images(lambda im: sds.loss(im, cams, 0.4, torch.Generator().manual_seed(7)), images)

    def by_hand(im):
        x = to_model_space(tiny_prior, im)
        lo, hi = sds.time_range(0.4)
        t, eps = draw_noise(x, lo, hi, torch.Generator().manual_seed(7))
        predict = GuidedPredictor(tiny_prior, sds.condition(cams), 5.0)
        grad = sds_gradient(predict, tiny_prior.schedule, x, t, eps, "uniform").clamp(-0.05, 0.05)
        return surrogate_loss(x, grad), {"grad_norm": float(grad.flatten(1).norm(dim=1).mean()), "t_max": hi}

    want, info_want = _grad_in_images(by_hand, images)
    torch.testing.assert_close(got, want)
    assert info["grad_norm"] == pytest.approx(info_want["grad_norm"]) and info["t_max"] == info_want["t_max"]
    assert info["guidance_scale"] == 5.0 and info["nonfinite"] == 0
    unclipped = SDS(tiny_prior, "a red cube", SDSConfig(guidance_scale=5.0, warmup_guidance_scale=None,
                                                       weighting="uniform", prior_precision="float32"))
    free, _ = _grad_in_images(lambda im: unclipped.loss(im, cams, 0.4, torch.Generator().manual_seed(7)), images)
    assert not torch.allclose(free, got)  # the clip binds here: both bounds matter


def test_vsd_loss_adds_the_lora_diffusion_loss_and_trains_it_downhill(tiny_prior):
    from priorkit.distill.score.guidance import diffusion_loss, sample_times, to_model_space

    vsd = VSD(tiny_prior, "a red cube", VSDConfig(guidance_scale=3.0, grad_clip=0.05, prior_precision="float32",
                                                  lora_views=None))  # every render in the LoRA's loss
    cams = random_cameras(2, torch.Generator().manual_seed(1))
    images = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    g = torch.Generator().manual_seed(3)
    loss, info = vsd.loss(images.clone().requires_grad_(True), cams, 0.5, g)
    # the LoRA term: fresh t and eps from the same generator after the particle term's draws
    g2 = torch.Generator().manual_seed(3)
    x = to_model_space(tiny_prior, images)
    lo, hi = vsd.time_range(0.5)
    from priorkit.distill.score.guidance import draw_noise

    draw_noise(x, lo, hi, g2)
    c = vsd.config
    t_l = sample_times(x.shape[0], max(c.lora_t_min, tiny_prior.schedule.t_min), c.lora_t_max, g2)
    eps_l = torch.randn(x.shape, generator=g2, dtype=x.dtype)
    _, cam_cond = vsd._conditions(cams)
    lora_loss = diffusion_loss(tiny_prior, x, t_l.to(x.dtype), eps_l, cam_cond)
    assert info["lora_loss"] == float(lora_loss.detach())  # bit for bit: the times cast to x's dtype, as here
    assert info["t_max"] == hi and info["nonfinite"] == 0 and info["grad_norm"] > 0
    # the LoRA's gradient from the total loss is the diffusion loss's: the total adds it (a minus would ascend)
    params = [p for p in tiny_prior.unet.parameters() if p.requires_grad]
    total = torch.autograd.grad(loss, params, allow_unused=True)
    alone = torch.autograd.grad(lora_loss, params, allow_unused=True)
    pairs = [(a, b) for a, b in zip(total, alone, strict=True) if b is not None]
    assert pairs and all(torch.allclose(a, b, rtol=1e-4, atol=1e-8) for a, b in pairs)


def test_prior_precision_bfloat16_is_close_to_float32_and_auto_follows_the_cpu(tiny_prior, monkeypatch):
    from priorkit.gen3d import guidance as guidance_mod

    cams = random_cameras(3, torch.Generator().manual_seed(1))
    images = torch.rand(3, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    grads = {}
    for precision in ("float32", "bfloat16"):
        sds = SDS(tiny_prior, "a red cube", SDSConfig(guidance_scale=5.0, warmup_guidance_scale=None,
                                                      weighting="uniform", prior_precision=precision))
        grads[precision], _ = _grad_in_images(lambda im, s=sds: s.loss(im, cams, 0.4, torch.Generator().manual_seed(7)),
                                              images)
        assert grads[precision].dtype == torch.float32
    diff = (grads["bfloat16"] - grads["float32"]).norm() / grads["float32"].norm()
    assert 0 < diff < 0.05  # bf16 rounding: different, but a small share of the gradient
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: False)
    assert isinstance(guidance_mod.prior_autocast("auto", "cpu"), contextlib.nullcontext)
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: True)
    ctx = guidance_mod.prior_autocast("auto", "cpu")
    assert isinstance(ctx, torch.autocast) and ctx.fast_dtype == torch.bfloat16
    assert isinstance(guidance_mod.prior_autocast("float32", "cpu"), contextlib.nullcontext)
    with pytest.raises(ValueError, match="prior_precision"):
        guidance_mod.prior_autocast("half", "cpu")


def test_vsd_lora_loss_on_the_first_views_of_each_particle(tiny_prior):
    from priorkit.distill.core.denoiser import select_rows
    from priorkit.distill.score.guidance import diffusion_loss, draw_noise, sample_times, to_model_space

    vsd = VSD(tiny_prior, "a red cube", VSDConfig(guidance_scale=3.0, prior_precision="float32", lora_views=1))
    cams = random_cameras(4, torch.Generator().manual_seed(1))  # 2 particles x 2 views, particle-major
    images = torch.rand(4, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    _, info = vsd.loss(images.clone().requires_grad_(True), cams, 0.5, torch.Generator().manual_seed(3), particles=2)
    g2 = torch.Generator().manual_seed(3)
    x = to_model_space(tiny_prior, images)
    draw_noise(x, *vsd.time_range(0.5), g2)
    rows = torch.tensor([0, 2])  # the first view of each particle
    c = vsd.config
    t_l = sample_times(2, max(c.lora_t_min, tiny_prior.schedule.t_min), c.lora_t_max, g2)
    eps_l = torch.randn(x[rows].shape, generator=g2, dtype=x.dtype)
    _, cam_cond = vsd._conditions(cams)
    expected = diffusion_loss(tiny_prior, x[rows], t_l.to(x.dtype), eps_l, select_rows(cam_cond, rows))
    assert info["lora_loss"] == pytest.approx(float(expected), rel=1e-5)
    # the other views do not reach the LoRA's loss
    other = images.clone()
    other[[1, 3]] = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(9))
    _, info2 = vsd.loss(other, cams, 0.5, torch.Generator().manual_seed(3), particles=2)
    assert info2["lora_loss"] == info["lora_loss"]
    with pytest.raises(ValueError, match="lora_views"):
        VSD(tiny_prior, "a red cube", VSDConfig(lora_views=0))
