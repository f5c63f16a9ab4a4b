"""SDS and VSD by value where the mutation run found gaps (tests/MUTANTS.md): the settings each refuses and accepts,
the camera-aware conditions, VSD's clip, LoRA rows and checkpoint round trip, and the non-finite gradient rule."""

from __future__ import annotations

import pytest
import torch
from test_gen3d_camera import prior as camera_prior
from test_gen3d_guidance import tiny_prior  # noqa: F401  (fixture; tests/ is on sys.path under pytest)

from priorkit.distill.core.cameras import camera_input, random_cameras
from priorkit.distill.score.guidance import view_prompts
from priorkit.gen3d.guidance import NonFiniteGradientError, finite_gradient, uses_camera
from priorkit.gen3d.sds import SDS, SDSConfig
from priorkit.gen3d.vsd import VSD, VSDConfig

torch.set_num_threads(1)


def test_finite_gradient_zeroes_and_counts_the_bad_values_and_refuses_an_all_bad_step():
    g = torch.tensor([[1.0, float("nan")], [float("inf"), -2.0]])
    fixed, count = finite_gradient(g, "SDS")
    assert count == 2 and torch.equal(fixed, torch.tensor([[1.0, 0.0], [0.0, -2.0]]))
    clean = torch.tensor([0.5, -1.5])
    same, none = finite_gradient(clean, "SDS")
    assert none == 0 and same is clean
    one_bad, n1 = finite_gradient(torch.tensor([float("nan"), 3.0]), "SDS")
    assert n1 == 1 and torch.equal(one_bad, torch.tensor([0.0, 3.0]))
    message = (r"^every value of the VSD gradient is NaN or infinite \(the prior's prediction is not finite\): "
               r"check the prior, the guidance scale and the learning rate$")
    with pytest.raises(NonFiniteGradientError, match=message):
        finite_gradient(torch.full((2, 3), float("nan")), "VSD")


def test_uses_camera_resolves_the_setting_against_the_prior():
    plain, aware = camera_prior(False), camera_prior(True)
    assert uses_camera(aware, SDSConfig()) is True and uses_camera(plain, SDSConfig()) is False  # None: follow it
    assert uses_camera(aware, SDSConfig(camera_input=False)) is False
    assert uses_camera(aware, SDSConfig(camera_input=True)) is True
    with pytest.raises(ValueError, match=r"^camera_input=True needs a camera-aware prior \(such as the shapes prior "
                       r"v2\); this prior takes no camera$"):
        uses_camera(plain, SDSConfig(camera_input=True))


def test_sds_and_vsd_give_a_camera_aware_prior_text_and_camera_for_both_branches():
    den = camera_prior(True)
    cams = random_cameras(3, torch.Generator().manual_seed(0))
    text = den.encode(view_prompts("a red cube", cams, True))
    want = camera_input(list(cams))
    cond = SDS(den, "a red cube", SDSConfig(view_dependent=True)).condition(cams)
    assert torch.equal(cond["text"], text) and torch.equal(cond["class_labels"], want)
    assert not torch.equal(SDS(den, "a red cube", SDSConfig(view_dependent=False)).condition(cams)["text"], text)
    vsd = VSD(den, "a red cube", VSDConfig(view_dependent=True))
    try:
        pre, lora = vsd._conditions(cams)
        assert pre is lora and torch.equal(pre["text"], text) and torch.equal(pre["class_labels"], want)
    finally:
        vsd.close()
    plain = camera_prior(False)
    assert torch.equal(SDS(plain, "a red cube", SDSConfig(view_dependent=True)).condition(cams), text)


@pytest.mark.parametrize("bad, match", [
    (dict(guidance_scale=0.0), "guidance_scale"),
    (dict(warmup_guidance_scale=0.0), "warmup_guidance_scale"),
    (dict(guidance_warmup=1.5), "guidance_warmup"),
    (dict(final_guidance_scale=0.0), "final_guidance_scale"),
    (dict(final_guidance_scale=2.0, guidance_warmup=0.5, guidance_cooldown=0.6), "guidance_cooldown"),
    (dict(t_max_end=1.5), "t_max_end"),
    (dict(t_min=0.6, t_max=0.4), "t_min"),
    (dict(weighting="nope"), "weighting"),
])
def test_sds_refuses_bad_settings(tiny_prior, bad, match):  # noqa: F811
    with pytest.raises(ValueError, match=match):
        SDS(tiny_prior, "a cube", SDSConfig(**bad))


def test_sds_accepts_the_edges_of_its_ranges(tiny_prior):  # noqa: F811
    for ok in (dict(guidance_scale=0.5, warmup_guidance_scale=0.5), dict(guidance_warmup=0.0),
               dict(final_guidance_scale=0.5, guidance_warmup=0.4, guidance_cooldown=0.6)):
        SDS(tiny_prior, "a cube", SDSConfig(**ok))


@pytest.mark.parametrize("bad, match", [(dict(guidance_scale=0.0), "guidance_scale"),
                                        (dict(t_max_end=-0.1), "t_max_end"), (dict(weighting="x"), "weighting"),
                                        (dict(particle_weight=0.0), "particle_weight")])
def test_vsd_refuses_bad_settings_and_accepts_one_view(tiny_prior, bad, match):  # noqa: F811
    with pytest.raises(ValueError, match=match):
        VSD(tiny_prior, "a cube", VSDConfig(**bad))
    with pytest.raises(ValueError, match=r"^VSD needs a diffusers prior \(DiffusersDenoiser\) to attach its LoRA to$"):
        VSD(object(), "a cube", VSDConfig())
    vsd = VSD(tiny_prior, "a cube", VSDConfig(views_per_particle=1, lora_lr=3e-4))
    try:
        assert vsd.views == 1 and vsd.optimizer.param_groups[0]["lr"] == 3e-4
        assert vsd.camera is False
    finally:
        vsd.close()


def test_vsd_clips_its_gradient_and_trains_the_first_lora_views_of_each_particle(tiny_prior):  # noqa: F811
    from priorkit.distill.core.denoiser import select_rows
    from priorkit.distill.score.guidance import diffusion_loss, draw_noise, sample_times, to_model_space

    cams = random_cameras(6, torch.Generator().manual_seed(1))  # 2 particles x 3 views
    images = torch.rand(6, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    vsd = VSD(tiny_prior, "a red cube", VSDConfig(guidance_scale=3.0, prior_precision="float32", lora_views=2,
                                                  grad_clip=1e-3))
    try:
        img = images.clone().requires_grad_(True)
        loss, info = vsd.loss(img, cams, 0.5, torch.Generator().manual_seed(3), particles=2)
        grad_particles = torch.autograd.grad(loss, img, retain_graph=True)[0]
        x = to_model_space(tiny_prior, images)
        # the clipped gradient's norm per image, and no value past the clip
        assert info["grad_norm"] <= 1e-3 * (3 * 8 * 8) ** 0.5 + 1e-9 and grad_particles.abs().max() > 0
        g2 = torch.Generator().manual_seed(3)
        draw_noise(x, *vsd.time_range(0.5), g2)
        rows = torch.tensor([0, 1, 3, 4])  # views 0 and 1 of each particle
        c = vsd.config
        t_l = sample_times(4, max(c.lora_t_min, tiny_prior.schedule.t_min), c.lora_t_max, g2)
        eps_l = torch.randn(x[rows].shape, generator=g2, dtype=x.dtype)
        _, cam_cond = vsd._conditions(cams)
        want = diffusion_loss(tiny_prior, x[rows], t_l.to(x.dtype), eps_l, select_rows(cam_cond, rows))
        assert info["lora_loss"] == pytest.approx(float(want.detach()), rel=1e-5)
        vsd.config = VSDConfig(guidance_scale=3.0, prior_precision="float32", lora_views=2, grad_clip=None)
        _, info_free = vsd.loss(images.clone(), cams, 0.5, torch.Generator().manual_seed(3), particles=2)
        vsd.config = c
        assert info_free["grad_norm"] > info["grad_norm"]  # the clip binds
        with pytest.raises(ValueError, match="5 images but 6 cameras"):
            vsd.loss(images[:5], cams, 0.5)
    finally:
        vsd.close()


def test_vsd_state_round_trip_restores_the_lora_and_its_optimiser(tiny_prior):  # noqa: F811
    cams = random_cameras(2, torch.Generator().manual_seed(1))
    images = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    cfg = VSDConfig(guidance_scale=3.0, prior_precision="float32", lora_lr=1e-2)
    vsd = VSD(tiny_prior, "a red cube", cfg)
    for s in range(2):
        loss, _ = vsd.loss(images.clone().requires_grad_(True), cams, 0.5, torch.Generator().manual_seed(s))
        loss.backward()
        vsd.step()
    tensors, info = vsd.state()
    assert any(k.startswith("lora.") for k in tensors) and any(k.startswith("opt.lora") for k in tensors)
    assert all(p.grad is None for p in vsd.parameters)  # zero_grad(set_to_none=True)
    saved = {k: v.clone() for k, v in tensors.items()}
    loss, _ = vsd.loss(images.clone().requires_grad_(True), cams, 0.5, torch.Generator().manual_seed(9))
    loss.backward()
    vsd.step()
    after_one = {k: v.clone() for k, v in vsd.state()[0].items() if k.startswith("lora.")}
    vsd.load_state(saved, info)  # back to the saved step, then the same step again
    assert all(torch.equal(v, saved[k]) for k, v in vsd.state()[0].items() if k.startswith("lora."))
    loss, _ = vsd.loss(images.clone().requires_grad_(True), cams, 0.5, torch.Generator().manual_seed(9))
    loss.backward()
    vsd.step()
    again = {k: v for k, v in vsd.state()[0].items() if k.startswith("lora.")}
    assert all(torch.allclose(again[k], after_one[k], atol=1e-7) for k in after_one)
    vsd.close()
    assert not any("lora" in n for n, _ in tiny_prior.unet.named_parameters())


def test_vsd_conditions_follow_view_dependence_and_a_legacy_camera_width():
    cams = random_cameras(2, torch.Generator().manual_seed(0))
    den = camera_prior(True, width=5)
    vsd = VSD(den, "a red cube", VSDConfig(view_dependent=False))
    try:
        pre, _ = vsd._conditions(cams)
        assert torch.equal(pre["text"], den.encode(["a red cube"] * 2))
        assert torch.equal(pre["class_labels"], camera_input(list(cams), width=5))
    finally:
        vsd.close()


def test_vsd_gradient_by_value_per_particle_and_defaults(tiny_prior):  # noqa: F811
    cams = random_cameras(6, torch.Generator().manual_seed(1))
    images = torch.rand(6, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    vsd = VSD(tiny_prior, "a red cube", VSDConfig(guidance_scale=3.0, prior_precision="float32", grad_clip=0.02,
                                                  weighting="uniform"))
    try:
        def image_grad(**kw):
            img = images.clone().requires_grad_(True)
            loss, info = vsd.loss(img, cams, generator=torch.Generator().manual_seed(3), **kw)
            return torch.autograd.grad(loss, img)[0], info

        g2, info2 = image_grad(particles=2, progress=0.0)
        # d loss / d images = particle_weight 2 grad / views (renders -> [-1, 1]; 3 views per particle)
        grad = g2 * 3 / (2 * vsd.config.particle_weight)
        assert vsd.config.particle_weight == 0.25 and grad.abs().max() == pytest.approx(0.02)  # the clip binds
        assert info2["grad_norm"] == pytest.approx(float(grad.flatten(1).norm(dim=1).mean()), rel=1e-5)
        g1, _ = image_grad(particles=1, progress=0.0)
        torch.testing.assert_close(g2, 2 * g1)  # six views of one particle: half the per-view share
        g_default, _ = image_grad(particles=2)  # progress defaults to the start of the run
        torch.testing.assert_close(g_default, g2, atol=0, rtol=0)
        vsd.config = VSDConfig(guidance_scale=3.0, prior_precision="float32", grad_clip=0.02, weighting="sigma2")
        g_w, _ = image_grad(particles=2, progress=0.0)
        assert not torch.allclose(g_w, g2)  # the weighting reaches the gradient
    finally:
        vsd.close()


def test_time_ranges_reach_t_max_end_and_a_custom_lora_is_attached_and_removed(tiny_prior):  # noqa: F811
    from priorkit.distill.score.lora import LoRAConfig

    assert SDS(tiny_prior, "a cube", SDSConfig(t_max_end=0.4)).time_range(1.0)[1] == pytest.approx(0.4)
    lora = LoRAConfig(rank=2, target_modules=("to_q",), adapter_name="vsd_test")
    vsd = VSD(tiny_prior, "a cube", VSDConfig(t_max_end=0.4, lora=lora))
    assert vsd.time_range(1.0)[1] == pytest.approx(0.4)
    names = [n for n, _ in tiny_prior.unet.named_parameters() if "vsd_test" in n]
    shapes = {tuple(p.shape) for n, p in tiny_prior.unet.named_parameters() if "lora_A" in n and "vsd_test" in n}
    assert names and all(".to_q." in n or "class" in n or "camera" in n for n in names if "lora" in n)
    assert all(s[0] == 2 for s in shapes)  # rank 2
    vsd.close()
    assert not any("vsd_test" in n for n, _ in tiny_prior.unet.named_parameters())


def test_sds_and_vsd_name_themselves_when_the_prior_returns_no_finite_value(tiny_prior):  # noqa: F811
    cams = random_cameras(2, torch.Generator().manual_seed(1))
    nan_images = torch.full((2, 3, 8, 8), float("nan"))
    sds = SDS(tiny_prior, "a cube", SDSConfig(prior_precision="float32"))
    with pytest.raises(NonFiniteGradientError, match="^every value of the SDS gradient"):
        sds.loss(nan_images, cams)
    with pytest.raises(ValueError, match="^2 images but 3 cameras$"):
        sds.loss(nan_images, random_cameras(3, torch.Generator().manual_seed(1)))
    images = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    at_start, _ = sds.loss(images, cams, 0.0, torch.Generator().manual_seed(4))
    default, _ = sds.loss(images, cams, generator=torch.Generator().manual_seed(4))
    assert torch.equal(at_start, default)  # progress defaults to the start of the run
    vsd = VSD(tiny_prior, "a cube", VSDConfig(prior_precision="float32"))
    try:
        with pytest.raises(NonFiniteGradientError, match="^every value of the VSD gradient"):
            vsd.loss(nan_images, cams)
    finally:
        vsd.close()
