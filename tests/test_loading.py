"""Loading real diffusers models from folders: tiny UNets saved with save_pretrained and loaded back."""

from __future__ import annotations

import json

import pytest
import torch

from priorkit.distill.core.diffusers_adapter import DiffusersDenoiser
from priorkit.distill.core.schedule import FlowMatching, VPDiscrete
from priorkit.distill.loading import ModelLoadError, PickleRefusedError, load_denoiser

torch.set_num_threads(1)


def tiny_unet(conditional: bool):
    from diffusers import UNet2DConditionModel, UNet2DModel

    torch.manual_seed(0)
    if conditional:
        return UNet2DConditionModel(
            sample_size=8, in_channels=3, out_channels=3, layers_per_block=1, block_out_channels=(8, 16),
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            cross_attention_dim=12, attention_head_dim=4, norm_num_groups=4)
    return UNet2DModel(sample_size=8, in_channels=3, out_channels=3, layers_per_block=1, block_out_channels=(8, 16),
                       down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
                       norm_num_groups=4)


DDPM = {"_class_name": "DDPMScheduler", "num_train_timesteps": 1000, "beta_schedule": "linear",
        "beta_start": 0.0001, "beta_end": 0.02}
SCHEDULERS = {
    "epsilon": {**DDPM, "prediction_type": "epsilon"},
    "sample": {**DDPM, "prediction_type": "sample"},
    "v_prediction": {**DDPM, "prediction_type": "v_prediction"},
    "flow": {"_class_name": "FlowMatchEulerDiscreteScheduler", "num_train_timesteps": 1000, "shift": 1.0},
}


def save_bare(folder, unet, scheduler_config):
    unet.save_pretrained(str(folder), safe_serialization=True)
    (folder / "scheduler_config.json").write_text(json.dumps(scheduler_config))


@pytest.mark.parametrize("prediction", list(SCHEDULERS))
@pytest.mark.parametrize("conditional", [False, True], ids=["UNet2DModel", "UNet2DConditionModel"])
def test_saved_unet_reloads_and_predicts_identically(tmp_path, prediction, conditional):
    unet = tiny_unet(conditional).eval()
    config = SCHEDULERS[prediction]
    save_bare(tmp_path, unet, config)
    loaded = load_denoiser(tmp_path)
    memory = DiffusersDenoiser(unet, config)
    assert isinstance(loaded.schedule, FlowMatching if prediction == "flow" else VPDiscrete)
    assert loaded.kind == {"epsilon": "eps", "sample": "x0", "v_prediction": "v", "flow": "velocity"}[prediction]
    x = torch.randn(2, 3, 8, 8)
    t = torch.tensor([0.3, 0.8])
    cond = torch.randn(2, 5, 12) if conditional else None
    with torch.no_grad():
        a, b = loaded(x, t, cond), memory(x, t, cond)
        raw = unet(x, memory.timestep(t), **({"encoder_hidden_states": cond} if conditional else {})).sample
    torch.testing.assert_close(a.x0, b.x0, rtol=0, atol=0)
    torch.testing.assert_close(a.eps, b.eps, rtol=0, atol=0)
    torch.testing.assert_close(a.as_kind(loaded.kind), raw, rtol=1e-4, atol=1e-5)  # the native output, unchanged


def test_timestep_mapping_reads_the_config():
    ddpm = DiffusersDenoiser(tiny_unet(False), SCHEDULERS["epsilon"])
    flow = DiffusersDenoiser(tiny_unet(False), SCHEDULERS["flow"])
    t = torch.tensor([0.001, 0.5, 1.0], dtype=torch.float64)
    torch.testing.assert_close(ddpm.timestep(t), torch.tensor([0.0, 499.0, 999.0], dtype=torch.float64))
    torch.testing.assert_close(flow.timestep(t), torch.tensor([1.0, 500.0, 1000.0], dtype=torch.float64))


def test_pipeline_folder_with_model_index(tmp_path):
    unet = tiny_unet(False)
    unet.save_pretrained(str(tmp_path / "unet"), safe_serialization=True)
    (tmp_path / "scheduler").mkdir()
    (tmp_path / "scheduler" / "scheduler_config.json").write_text(json.dumps(SCHEDULERS["v_prediction"]))
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "DDPMPipeline"}))
    den = load_denoiser(tmp_path)
    assert den.kind == "v" and den.sample_shape == (3, 8, 8)


def test_pickle_checkpoints_are_refused(tmp_path):
    unet = tiny_unet(False)
    save_bare(tmp_path, unet, SCHEDULERS["epsilon"])
    weights = tmp_path / "diffusion_pytorch_model.safetensors"
    weights.rename(tmp_path / "diffusion_pytorch_model.bin")  # what an old diffusers folder holds
    with pytest.raises(PickleRefusedError, match="safetensors"):
        load_denoiser(tmp_path)
    ckpt = tmp_path / "model.ckpt"
    ckpt.write_bytes(b"not really a pickle, never opened")
    with pytest.raises(PickleRefusedError, match="model.ckpt"):
        load_denoiser(ckpt)


def test_missing_or_wrong_models_give_clear_errors(tmp_path):
    with pytest.raises(ModelLoadError, match="holds no model"):
        load_denoiser(tmp_path)
    with pytest.raises(ModelLoadError, match="no such model folder"):
        load_denoiser(tmp_path / "nope")
    with pytest.raises(ModelLoadError, match="unknown bundled model|no such model"):
        load_denoiser("./not-a-model")
    save_bare(tmp_path, tiny_unet(False), SCHEDULERS["epsilon"])
    (tmp_path / "scheduler_config.json").unlink()
    with pytest.raises(ModelLoadError, match="scheduler_config.json"):
        load_denoiser(tmp_path)
    (tmp_path / "scheduler_config.json").write_text(json.dumps({**DDPM, "prediction_type": "sigma"}))
    with pytest.raises(ValueError, match="prediction_type"):
        load_denoiser(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["_class_name"] = "AutoencoderKL"
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelLoadError, match="AutoencoderKL"):
        load_denoiser(tmp_path)


def test_hub_ids_fail_clearly_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError, match="model hub"):
        load_denoiser("someone/no-such-model-here")
