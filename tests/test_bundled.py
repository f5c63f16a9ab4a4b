"""The bundled models: offline loading, the prior trainer, the photo data."""

from __future__ import annotations

import pytest
import torch

from priorkit.distill.core.samplers import initial_noise, sample
from priorkit.distill.loading import BUNDLED, ModelLoadError, bundled_path, load_denoiser

torch.set_num_threads(1)


@pytest.fixture
def offline(monkeypatch):
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
        monkeypatch.setenv(var, "1")


@pytest.mark.parametrize("name", sorted(BUNDLED))
def test_bundled_priors_load_offline_and_sample(offline, name):
    den = load_denoiser(name)
    assert den.sample_shape == ((3, 64, 64) if name == "photos" else (3, 32, 32))
    x = initial_noise(den, (2, *den.sample_shape), generator=torch.Generator().manual_seed(0))
    cond = ["a red cube, side view"] if name.startswith("shapes") else None
    with torch.no_grad():
        y = sample(den, x, steps=3, cond=cond, guidance=3.0 if cond else 1.0)
    assert y.shape == x.shape and torch.isfinite(y).all()
    student = name.endswith(("-cd", "-dmd2"))
    files = ("command.txt", "config.json", "priorkit.json") if student else (
        "command.txt", "training_log.json", "loss.png", "scheduler_config.json", "priorkit.json")
    for f in files:
        assert (bundled_path(name) / f).is_file(), f


def test_shapes_prior_conditions_on_text(offline):
    den = load_denoiser("shapes")
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        a = den(x, 0.5, ["a red cube"]).x0
        b = den(x, 0.5, ["a blue torus"]).x0
    assert float((a - b).abs().mean()) > 1e-3  # the prompt changes the prediction


def test_missing_bundled_weights_name_the_folder(monkeypatch, tmp_path):
    import priorkit.distill.core.loading as loading

    monkeypatch.setattr(loading, "BUNDLED_DIR", tmp_path)
    with pytest.raises(ModelLoadError, match=str(tmp_path)):
        load_denoiser("shapes")
    with pytest.raises(ModelLoadError, match="bundled models"):
        bundled_path("nope")


def test_text_encoder_is_offline_and_handles_empty_prompts(offline):
    from priorkit.distill.core.text import MiniLMEncoder

    enc = MiniLMEncoder()
    e = enc(["a red cube", "", "a crimson ball"])
    assert e.shape == (3, 17, 384) and torch.isfinite(e).all()
    torch.testing.assert_close(enc(["a red cube"]), e[:1])  # memoised, identical


def test_short_prior_training_lowers_the_loss(tmp_path):
    from diffusers import UNet2DModel

    from priorkit.distill.core.diffusers_adapter import DiffusersDenoiser
    from priorkit.distill.core.training import TrainConfig, train
    from priorkit.distill.zoo.train_prior import PHOTOS_SCHEDULER, denoising_loss

    torch.manual_seed(0)
    unet = UNet2DModel(sample_size=8, in_channels=3, out_channels=3, layers_per_block=1, block_out_channels=(16, 32),
                       down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
                       norm_num_groups=8)
    den = DiffusersDenoiser(unet, PHOTOS_SCHEDULER)
    data = torch.linspace(-1, 1, 8).reshape(1, 1, 1, 8).expand(16, 3, 8, 8).contiguous()  # one simple image

    def loss_fn(model, step, g):
        return denoising_loss(den, data, None, g)

    _, log = train(unet, loss_fn, TrainConfig(steps=60, lr=3e-3, warmup=5, log_every=10, checkpoint_every=60),
                   tmp_path, desc="test")
    assert log[-1]["loss"] < 0.5 * log[0]["loss"], log
    assert (tmp_path / "checkpoint" / "state.safetensors").is_file()


def test_photo_data_is_shipped_and_held_out_is_disjoint():
    from priorkit.distill.zoo.photos import HELD_OUT, PHOTOS, TRAIN, PatchSampler, load_photo

    assert len(HELD_OUT) >= 3 and not set(HELD_OUT) & set(TRAIN) and set(HELD_OUT) | set(TRAIN) == set(PHOTOS)
    for name in PHOTOS:
        img = load_photo(name)
        assert img.shape[0] == 3 and min(img.shape[1:]) >= 256 and 0 <= float(img.min()) <= float(img.max()) <= 1
    patches = PatchSampler(TRAIN[:2], size=32)(5, torch.Generator().manual_seed(0))
    assert patches.shape == (5, 3, 32, 32) and float(patches.min()) >= -1 and float(patches.max()) <= 1


def test_fine_tuning_starts_from_the_saved_weights_and_refuses_another_architecture(tmp_path):
    from diffusers import UNet2DModel

    from priorkit.distill.zoo.train_prior import PHOTOS_UNET, load_initial_weights

    bundled = bundled_path("photos")
    torch.manual_seed(1)
    unet = UNet2DModel(**PHOTOS_UNET)
    load_initial_weights(unet, bundled)
    from safetensors.torch import load_file

    saved = load_file(str(bundled / "diffusion_pytorch_model.safetensors"))
    name = next(iter(saved))
    torch.testing.assert_close(unet.state_dict()[name], saved[name].float())
    assert unet.state_dict()[name].dtype == torch.float32
    small = UNet2DModel(sample_size=8, in_channels=3, out_channels=3, layers_per_block=1, block_out_channels=(16, 32),
                        down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
                        norm_num_groups=8)
    with pytest.raises(ValueError, match="another architecture"):
        load_initial_weights(small, bundled)
    with pytest.raises(FileNotFoundError, match="safetensors"):
        load_initial_weights(unet, tmp_path)
