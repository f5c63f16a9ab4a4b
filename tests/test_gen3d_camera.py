"""A camera-aware prior (the shapes prior v2's kind: the camera as a projection class input) gets each render's camera
from SDS and VSD (issue 22), by default; VSD's LoRA then uses the prior's own camera input and leaves it frozen."""

from __future__ import annotations

import tempfile

import pytest
import torch
from torch import nn

from priorkit.distill.core.cameras import (
    DIRECTION_FEATURES,
    Camera,
    accepts_camera,
    camera_input,
    camera_width,
    direction_features,
    random_cameras,
)
from priorkit.distill.core.diffusers_adapter import DiffusersDenoiser
from priorkit.distill.score.lora import has_own_camera_embedding, lora_named_parameters
from priorkit.distill.zoo.shapes_v2 import camera_features
from priorkit.gen3d.sds import SDS, SDSConfig
from priorkit.gen3d.vsd import VSD, VSDConfig

SCHEDULER = {"_class_name": "DDPMScheduler", "num_train_timesteps": 1000, "beta_schedule": "squaredcos_cap_v2",
             "prediction_type": "v_prediction"}


class HashText(nn.Module):
    """Prompts -> fixed pseudo-random states (B, 4, 8): a stand-in text encoder."""

    def forward(self, prompts: list[str]) -> torch.Tensor:
        return torch.stack([torch.randn(4, 8, generator=torch.Generator().manual_seed(len(p) * 7919 + sum(map(ord, p))))
                            for p in prompts])


def prior(camera: bool, width: int = DIRECTION_FEATURES) -> DiffusersDenoiser:
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    extra = {"class_embed_type": "projection", "projection_class_embeddings_input_dim": width} \
        if camera else {}
    unet = UNet2DConditionModel(sample_size=8, in_channels=3, out_channels=3, layers_per_block=1,
                                block_out_channels=(16, 32), down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=8,
                                attention_head_dim=8, norm_num_groups=8, **extra).eval()
    return DiffusersDenoiser(unet, SCHEDULER, text_encoder=HashText())


def test_camera_input_is_the_shapes_world_v2_feature() -> None:
    cams = [Camera(30.0, 10.0), Camera(-120.0, 45.0)]
    az, el = torch.tensor([30.0, -120.0]), torch.tensor([10.0, 45.0])
    assert torch.equal(camera_input(cams), camera_features(az, el))  # what the prior was trained with
    h = 3**0.5 / 2  # az 30: sin / cos of 30, 60 and 120 degrees; el 10
    assert torch.allclose(camera_input(cams)[0], torch.tensor([0.5, h, h, 0.5, h, -0.5, 0.17364818, 0.98480775, 1.0]))
    assert torch.allclose(camera_input(cams, width=5)[0], torch.tensor([0.5, h, 0.17364818, 0.98480775, 1.0]))
    with pytest.raises(ValueError, match="width 7"):
        camera_input(cams, width=7)


def test_a_cube_yaw_modulo_90_degrees_is_linear_in_the_camera_input() -> None:
    # the cube looks the same at az and az + 90: its face-on / corner-on reading cos(4 az) must be a column
    az = torch.tensor([0.0, 45.0, 90.0, 135.0, 20.0, 110.0])
    feats = direction_features(az, torch.zeros(6))
    torch.testing.assert_close(feats[:, 5], torch.cos(torch.deg2rad(4 * az)), atol=1e-6, rtol=0)
    torch.testing.assert_close(feats[4, 4:6], feats[5, 4:6], atol=1e-6, rtol=0)  # 20 and 110 degrees: one reading


def test_a_legacy_five_input_prior_still_gets_its_own_camera_input() -> None:
    den = prior(camera=True, width=5)
    assert camera_width(den) == 5 and accepts_camera(den)
    cams = random_cameras(2, torch.Generator().manual_seed(1))
    assert torch.equal(SDS(den, "a red cube").condition(cams)["class_labels"], camera_input(cams, width=5))


def test_widening_a_legacy_camera_embedding_keeps_the_prior_exact() -> None:
    from priorkit.distill.zoo.train_prior import load_initial_weights

    old, new = prior(camera=True, width=5), prior(camera=True)
    torch.nn.init.normal_(old.unet.class_embedding.linear_2.weight)  # a trained (non-zero) camera embedding
    with tempfile.TemporaryDirectory() as d:
        old.unet.save_pretrained(d, safe_serialization=True)
        load_initial_weights(new.unet, d)
    cams = random_cameras(3, torch.Generator().manual_seed(2))
    x, t = torch.randn(3, 3, 8, 8, generator=torch.Generator().manual_seed(3)), torch.full((3,), 0.6)
    text = old.encode(["a red cube"] * 3)
    with torch.no_grad():
        a = old(x, t, {"text": text, "class_labels": camera_input(cams, width=5)}).x0
        b = new(x, t, {"text": text, "class_labels": camera_input(cams)}).x0
        c = new(x, t, {"text": text, "class_labels": camera_input(cams[::-1])}).x0
    torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
    assert (b - c).abs().max() > 1e-3  # the camera still matters after widening


def test_sds_gives_a_camera_aware_prior_the_cameras_by_default() -> None:
    den, plain = prior(camera=True), prior(camera=False)
    assert accepts_camera(den) and not accepts_camera(plain)
    cams = random_cameras(3, torch.Generator().manual_seed(0))
    cond = SDS(den, "a red cube").condition(cams)
    assert isinstance(cond, dict) and torch.equal(cond["class_labels"], camera_input(cams))
    assert torch.is_tensor(SDS(den, "a red cube", SDSConfig(camera_input=False)).condition(cams))
    assert torch.is_tensor(SDS(plain, "a red cube").condition(cams))
    with pytest.raises(ValueError, match="camera-aware prior"):
        SDS(plain, "a red cube", SDSConfig(camera_input=True))


def test_the_camera_changes_the_sds_gradient_once_the_prior_uses_it() -> None:
    den = prior(camera=True)
    with torch.no_grad():  # a trained camera embedding (zero-initialised in training, so give it weights here)
        den.unet.class_embedding.linear_2.weight.normal_(0, 0.5)
    img = torch.rand(1, 3, 8, 8).expand(2, -1, -1, -1).contiguous()

    def grad(cams: list[Camera], use: bool) -> torch.Tensor:
        x = img.clone().requires_grad_(True)
        sds = SDS(den, "a red cube", SDSConfig(camera_input=use, view_dependent=False))
        loss, _ = sds.loss(x, cams, 0.0, torch.Generator().manual_seed(1))
        loss.backward()
        return x.grad

    same, turned = [Camera(0.0, 20.0)] * 2, [Camera(0.0, 20.0), Camera(90.0, 20.0)]
    g_same, g_turned = grad(same, True), grad(turned, True)
    assert torch.allclose(g_same[0], g_turned[0])  # the same camera (and t, eps): the same gradient
    assert not torch.allclose(g_turned[0], g_turned[1], atol=1e-6)  # another camera: another gradient
    g_off = grad(turned, False)
    assert not torch.allclose(g_off[0], g_turned[0], atol=1e-6)  # the camera was used, not ignored


def test_vsd_lora_on_a_camera_aware_prior_keeps_its_camera_input_frozen_and_starts_at_zero_gradient() -> None:
    den = prior(camera=True)
    unet = den.unet
    own = {n: p.detach().clone() for n, p in unet.class_embedding.named_parameters()}
    vsd = VSD(den, "a red cube", VSDConfig(guidance_scale=1.0, lora_lr=1e-2))
    assert vsd.camera and not has_own_camera_embedding(unet)
    assert not any(n.startswith("class_embedding.") for n, _ in lora_named_parameters(unet))
    g = torch.Generator().manual_seed(0)
    img = torch.rand(2, 3, 8, 8, requires_grad=True)
    loss, info = vsd.loss(img, random_cameras(2, g), 0.0, g)
    assert info["grad_norm"] == 0.0  # LoRA B = 0: the LoRA branch is the pretrained one, camera included
    loss.backward()
    vsd.step()
    for n, p in unet.class_embedding.named_parameters():
        assert torch.equal(p, own[n]), n  # the prior's camera embedding is not trained
    vsd.close()
    assert unet.class_embedding is not None and not has_own_camera_embedding(unet)  # still the prior's own
