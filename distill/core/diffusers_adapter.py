"""Adapter: a diffusers UNet (pixel or latent) with its scheduler config, served as a `Denoiser`.

The schedule and the prediction type are read from the scheduler config, never guessed:

* DDPM-family configs (DDPM, DDIM, PNDM, DPM-Solver, Euler, ...): betas -> `VPDiscrete`, model time
  ``timestep = t N - 1``, ``prediction_type`` epsilon / sample / v_prediction.
* ``FlowMatchEulerDiscreteScheduler`` configs: `FlowMatching`, velocity prediction, ``timestep = t N``.
* A ``priorkit_schedule`` entry (our students and bundled models may carry one): any `Schedule`,
  with ``timestep = t * N`` as well.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from priorkit.distill.core.denoiser import Condition, Denoiser
from priorkit.distill.core.prediction import DIFFUSERS_KINDS
from priorkit.distill.core.schedule import FlowMatching, Schedule, VPDiscrete, schedule_from_config

FLOW_SCHEDULERS = {"FlowMatchEulerDiscreteScheduler", "FlowMatchHeunDiscreteScheduler"}


def read_scheduler_config(config: dict[str, Any]) -> tuple[Schedule, str, str]:
    """(schedule, our prediction kind, time mapping "ddpm" | "scaled") from a diffusers scheduler config."""
    config = dict(config)
    if "priorkit_schedule" in config:
        kind = DIFFUSERS_KINDS.get(config.get("prediction_type", "epsilon"))
        if kind is None:
            raise ValueError(f"unsupported prediction_type {config.get('prediction_type')!r}")
        return schedule_from_config(config["priorkit_schedule"]), kind, "scaled"
    if config.get("_class_name") in FLOW_SCHEDULERS:
        return FlowMatching(), "velocity", "scaled"
    prediction = config.get("prediction_type", "epsilon")
    if prediction not in ("epsilon", "sample", "v_prediction"):
        raise ValueError(f"unsupported prediction_type {prediction!r} in scheduler config "
                         "(expected epsilon, sample or v_prediction)")
    return VPDiscrete.from_diffusers_config(config), DIFFUSERS_KINDS[prediction], "ddpm"


class DiffusersDenoiser(Denoiser):
    """A diffusers ``UNet2DModel`` / ``UNet2DConditionModel`` as a `Denoiser`.

    Args:
        unet: the network; called as ``unet(x, timestep, [encoder_hidden_states], [class_labels])``.
        scheduler_config: its scheduler config dict (``scheduler.config`` or the json file).
        vae: an ``AutoencoderKL`` for latent models (the denoiser then works on latents).
        text_encoder: prompts -> (B, L, D) states, for conditional UNets.
        resolution: image side for pixel models (defaults to ``unet.config.sample_size``).

    Conditions: prompts (str / list), a tensor of states (B, L, D), or a dict
    ``{"text": ..., "class_labels": (B, ...)}`` (camera conditioning for VSD's LoRA).
    """

    def __init__(self, unet: nn.Module, scheduler_config: dict[str, Any], *, vae: nn.Module | None = None,
                 text_encoder: nn.Module | None = None, scheduler_config_path: str | None = None) -> None:
        super().__init__()
        self.unet, self.vae, self.text_encoder = unet, vae, text_encoder
        self.scheduler_config = dict(scheduler_config)
        self.schedule, self.kind, self._time_map = read_scheduler_config(self.scheduler_config)
        self.num_train_timesteps = int(self.scheduler_config.get("num_train_timesteps", 1000))
        cfg = unet.config
        side = cfg.sample_size if isinstance(cfg.sample_size, int) else cfg.sample_size[0]
        self.sample_shape = (cfg.in_channels, side, side)
        self.conditional = getattr(cfg, "cross_attention_dim", None) is not None
        # a "projection" class embedding takes a float vector (B, class_inputs), e.g. camera features
        self.class_inputs = int(getattr(cfg, "projection_class_embeddings_input_dim", None) or 0) \
            if getattr(cfg, "class_embed_type", None) == "projection" else 0
        self._null: Tensor | None = None

    # ---- time -------------------------------------------------------------------------------
    def timestep(self, t: Tensor) -> Tensor:
        """Continuous t -> the model's timestep input."""
        if self._time_map == "ddpm":
            return t * self.num_train_timesteps - 1.0
        return t * self.num_train_timesteps

    # ---- conditions -------------------------------------------------------------------------
    def encode(self, cond: Condition) -> Condition:
        if isinstance(cond, dict):
            return {**cond, "text": self.encode(cond.get("text"))}
        if isinstance(cond, str):
            cond = [cond]
        if isinstance(cond, list):
            if self.text_encoder is None:
                raise ValueError("this model has no text encoder; pass embeddings instead of prompts")
            states = self.text_encoder(cond)
            return states.to(self.device, self.dtype)
        return cond

    def null_condition(self, cond: Condition) -> Condition:
        if isinstance(cond, dict):
            return {**cond, "text": self.null_condition(cond.get("text"))}
        if cond is None:
            return None
        if self._null is None:
            if self.text_encoder is None:
                raise ValueError("classifier-free guidance needs a text encoder to embed the empty prompt")
            self._null = self.text_encoder([""]).to(self.device, self.dtype)
        return self._null.expand(cond.shape[0], *self._null.shape[1:])

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.unet.parameters()).dtype

    # ---- the model call ---------------------------------------------------------------------
    def predict_native(self, x: Tensor, t: Tensor, cond: Condition = None) -> tuple[str, Tensor]:
        b = x.shape[0]
        timestep = self.timestep(t).to(self.device, self.dtype).reshape(-1).expand(b)
        kwargs: dict[str, Any] = {}
        text = cond.get("text") if isinstance(cond, dict) else cond
        if isinstance(cond, dict) and cond.get("class_labels") is not None:
            kwargs["class_labels"] = cond["class_labels"].to(self.device, self.dtype)
        elif self.class_inputs:  # a vector class input (the v2 shapes prior's camera) left out: its zero vector
            kwargs["class_labels"] = torch.zeros(b, self.class_inputs, device=self.device, dtype=self.dtype)
        if self.conditional:
            if text is None:
                text = self.null_condition(torch.empty(b, 0))
            kwargs["encoder_hidden_states"] = text.to(self.device, self.dtype)
        out = self.unet(x.to(self.dtype), timestep, **kwargs).sample
        if out.shape[1] == 2 * x.shape[1]:  # learned variance (DDPM "learned_range"): keep the mean part
            out = out[:, : x.shape[1]]
        return self.kind, out.to(x.dtype)

    # ---- latent models ----------------------------------------------------------------------
    @property
    def latent(self) -> bool:
        return self.vae is not None

    def encode_images(self, images: Tensor) -> Tensor:
        """Images in [-1, 1] (B, 3, H, W) -> model-space samples (latents scaled by the VAE's factor)."""
        if self.vae is None:
            return images
        latents = self.vae.encode(images.to(self.vae.dtype)).latent_dist.sample()
        return latents * self.vae.config.scaling_factor

    def decode_images(self, z: Tensor) -> Tensor:
        """Model-space samples -> images in [-1, 1]."""
        if self.vae is None:
            return z
        return self.vae.decode(z.to(self.vae.dtype) / self.vae.config.scaling_factor).sample
