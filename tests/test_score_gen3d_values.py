"""gen3d's guidances by value where a mutation run of distill/score and gen3d left survivors (tests/MUTANTS.md): the
precision helpers, the Guidance protocol's signature, SDS's CFG cool-down at and past the end of the run, SDS's
camera condition in the prior's dtype, and the draws of VSD's LoRA term in the renders' dtype."""

from __future__ import annotations

import inspect
import warnings
from types import SimpleNamespace

import pytest
import torch
from diffusers import UNet2DConditionModel  # noqa: F401  (imported once here, not inside the first test's time)
from test_gen3d_camera import prior as camera_prior
from test_gen3d_guidance import tiny_prior  # noqa: F401  (fixture; tests/ is on sys.path under pytest)

from priorkit.distill.core.cameras import camera_input, camera_width, random_cameras
from priorkit.distill.score.guidance import draw_noise, sample_times, to_model_space
from priorkit.distill.score.lora import pretrained_branch
from priorkit.gen3d.guidance import Guidance, native_cpu_bf16, prior_autocast
from priorkit.gen3d.sds import SDS, SDSConfig
from priorkit.gen3d.vsd import VSD, VSDConfig


@pytest.mark.parametrize("error", [AttributeError, RuntimeError])
def test_native_cpu_bf16_is_false_when_torch_cannot_tell(monkeypatch, error) -> None:  # noqa: ANN001
    def cannot_tell() -> bool:
        raise error("no oneDNN here")

    monkeypatch.setattr(torch.backends.mkldnn, "is_available", cannot_tell)
    assert native_cpu_bf16() is False
    assert isinstance(prior_autocast("auto", "cpu"), type(prior_autocast("float32", "cpu")))  # auto: float32


def test_prior_autocast_bfloat16_is_bfloat16_on_every_device_type() -> None:
    """bfloat16 on the CPU and on CUDA, whose autocast default is float16 (without CUDA, torch only warns and
    disables the context: its dtype is still the one asked for)."""
    assert prior_autocast("bfloat16", "cpu").fast_dtype == torch.bfloat16
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        assert prior_autocast("bfloat16", "cuda").fast_dtype == torch.bfloat16


def test_the_guidance_protocol_declares_the_loss_signature_sds_and_vsd_have() -> None:
    def defaults(fn) -> dict:  # noqa: ANN001
        return {k: p.default for k, p in inspect.signature(fn).parameters.items()}

    declared = defaults(Guidance.loss)
    assert declared["progress"] == 0.0 and declared["particles"] == 1 and declared["generator"] is None
    assert defaults(SDS.loss) == declared and defaults(VSD.loss) == declared


def test_sds_cool_down_ends_exactly_at_the_final_scale() -> None:
    """With a cool-down of 0.3, (1 - 0.7) / 0.3 is 1 + 2^-52 in floats: the fraction is held to 1, so progress 1 (and
    beyond) gives the final scale exactly."""
    prior = SimpleNamespace()  # the scale schedule needs no prior (one without a camera input)
    sds = SDS(prior, "a cube", SDSConfig(guidance_scale=7.5, final_guidance_scale=2.5, guidance_cooldown=0.3))
    assert (1.0 - (1.0 - 0.3)) / 0.3 > 1.0  # the float fact the hold is for
    assert sds.guidance_scale(1.0) == 2.5
    assert sds.guidance_scale(1.2) == 2.5
    assert sds.guidance_scale(0.85) == pytest.approx(5.0)


def test_sds_condition_gives_the_camera_in_the_priors_dtype() -> None:
    den = camera_prior(True)
    den.unet.double()
    cams = random_cameras(3, torch.Generator().manual_seed(0))
    cond = SDS(den, "a cube", SDSConfig()).condition(cams)
    assert cond["text"].dtype == torch.float64 and cond["class_labels"].dtype == torch.float64
    assert torch.equal(cond["class_labels"], camera_input(cams, camera_width(den)).double())


def _lora_draws(den, vsd, images, progress, seed):  # noqa: ANN001, ANN202
    """The renders in model space and the LoRA term's (t, eps), drawn after the particle term's as VSD.loss does."""
    g = torch.Generator().manual_seed(seed)
    x = to_model_space(den, images)
    draw_noise(x, *vsd.time_range(progress), g)
    c = vsd.config
    t_l = sample_times(x.shape[0], max(c.lora_t_min, den.schedule.t_min), c.lora_t_max, g)
    eps_l = torch.randn(x.shape, generator=g, dtype=x.dtype)
    return x, t_l, eps_l


def test_vsd_lora_term_of_float64_renders_uses_float64_noise(tiny_prior) -> None:  # noqa: F811
    """At initialisation the LoRA branch is the pretrained model, so the LoRA's loss is the prior's own v-prediction
    error mean |f(x_t) - (alpha eps - sigma x)|^2 at x_t = alpha x + sigma eps, eps drawn in the renders' dtype."""
    vsd = VSD(tiny_prior, "a red cube", VSDConfig(guidance_scale=3.0, prior_precision="float32", lora_views=None,
                                                  view_dependent=False))
    cams = random_cameras(2, torch.Generator().manual_seed(1))
    images = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    _, info = vsd.loss(images, cams, 0.5, torch.Generator().manual_seed(3))
    x, t_l, eps_l = _lora_draws(tiny_prior, vsd, images, 0.5, 3)
    assert eps_l.dtype == torch.float64
    s = tiny_prior.schedule
    a, sg = s.alpha(t_l).reshape(-1, 1, 1, 1), s.sigma(t_l).reshape(-1, 1, 1, 1)
    with torch.no_grad(), pretrained_branch(tiny_prior.unet):
        kind, out = tiny_prior.predict_native(a * x + sg * eps_l, t_l, tiny_prior.encode(["a red cube"] * 2))
    assert kind == "v"
    want = (out - (a * eps_l - sg * x)).pow(2).mean()
    assert info["lora_loss"] == pytest.approx(float(want), rel=1e-6)
    vsd.close()


def test_vsd_lora_term_of_float32_renders_is_evaluated_at_float32_times(tiny_prior) -> None:  # noqa: F811
    """The LoRA's times are drawn in float64 and used in the renders' dtype, as the particle term's are: the loss is
    the diffusion loss at the float32 times, to the last bit."""
    from priorkit.distill.score.guidance import diffusion_loss

    vsd = VSD(tiny_prior, "a red cube", VSDConfig(guidance_scale=3.0, prior_precision="float32", lora_views=None))
    cams = random_cameras(3, torch.Generator().manual_seed(4))
    images = torch.rand(3, 3, 8, 8, generator=torch.Generator().manual_seed(5))
    _, info = vsd.loss(images, cams, 0.3, torch.Generator().manual_seed(6))
    x, t_l, eps_l = _lora_draws(tiny_prior, vsd, images, 0.3, 6)
    _, cam_cond = vsd._conditions(cams)
    with torch.no_grad():
        want = diffusion_loss(tiny_prior, x, t_l.float(), eps_l, cam_cond)
    assert info["lora_loss"] == float(want)
    vsd.close()
