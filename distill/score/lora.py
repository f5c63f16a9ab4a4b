"""The camera-conditioned LoRA of VSD (Wang et al. 2023, "ProlificDreamer", sec. 4 and appendix).

VSD estimates the score of the current renders' distribution with a LoRA (Hu et al. 2021) of the pretrained
UNet itself, conditioned on the camera: W' = W + (alpha / r) B A on the attention projections
(to_q, to_k, to_v, to_out.0), with B = 0 at the start, and a small MLP of the camera pose added to the time
embedding (through ``unet.class_embedding``, called with ``class_labels``), whose last layer starts at zero.
At initialisation the LoRA branch therefore equals the pretrained model exactly.

One UNet serves both branches: :func:`pretrained_branch` disables the adapters and hides the camera embedding.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from priorkit.distill.core.cameras import Camera

CAMERA_FEATURES = 16  # a flattened 4x4 camera-to-world matrix


@dataclass
class LoRAConfig:
    """Defaults of the VSD LoRA: rank r, scale alpha (alpha / r multiplies B A), targets, camera MLP width."""

    rank: int = 8
    alpha: float | None = None  # None: alpha = rank (scale 1)
    target_modules: tuple[str, ...] = ("to_q", "to_k", "to_v", "to_out.0")
    camera_hidden: int = 64
    adapter_name: str = "vsd"


def camera_features(cameras: Sequence[Camera]) -> Tensor:
    """Camera-to-world matrices [R | eye; 0 0 0 1] flattened, (B, 16); the eye scaled by 1 / distance."""
    rows = []
    for cam in cameras:
        m = torch.eye(4)
        m[:3, :3] = cam.rotation()
        m[:3, 3] = cam.eye / cam.distance
        rows.append(m.reshape(-1))
    return torch.stack(rows) if rows else torch.zeros(0, CAMERA_FEATURES)


class CameraEmbedding(nn.Module):
    """MLP of camera features (B, 16) -> (B, out_dim), added to the UNet's time embedding; starts at zero."""

    def __init__(self, out_dim: int, in_dim: int = CAMERA_FEATURES, hidden: int = 64) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(in_dim, hidden), nn.SiLU(), nn.Linear(hidden, out_dim))
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)

    def forward(self, features: Tensor) -> Tensor:
        return self.net(features)


def time_embedding_dim(unet: nn.Module) -> int:
    """Width of a diffusers UNet's time embedding (what a class embedding must output)."""
    lin = getattr(getattr(unet, "time_embedding", None), "linear_2", None)
    if lin is None:
        raise ValueError("the UNet has no time_embedding.linear_2; camera conditioning needs a diffusers UNet")
    return int(lin.out_features)


def attach_lora(unet: nn.Module, config: LoRAConfig | None = None) -> list[nn.Parameter]:
    """Freeze ``unet``, add a peft LoRA on ``config.target_modules`` and a zero-initialised camera embedding.

    A UNet that already has a class embedding (a camera-aware prior such as the shapes prior v2, or a
    class-conditional one) keeps it, frozen, and gets no camera embedding of ours: the LoRA branch then sees the
    prior's own class input (for a camera-aware prior, its camera).

    Returns the trainable parameters (LoRA A/B matrices and the camera MLP); everything else is frozen.
    The LoRA A matrices are drawn from torch's global RNG (seed it for reproducible runs).

    Raises:
        ValueError: if a VSD LoRA is attached already, or no target module exists.
    """
    from peft import LoraConfig

    config = config or LoRAConfig()
    if not hasattr(unet, "add_adapter"):
        raise ValueError("VSD needs a diffusers UNet (with peft adapter support)")
    if isinstance(getattr(unet, "class_embedding", None), CameraEmbedding):
        raise ValueError("this UNet already has a VSD LoRA and camera embedding attached")
    names = [n for n, _ in unet.named_modules()]
    if not any(n == t or n.endswith("." + t) for n in names for t in config.target_modules):
        raise ValueError(f"none of the target modules {config.target_modules} exists in the UNet")
    unet.requires_grad_(False)
    lora = LoraConfig(r=config.rank, lora_alpha=config.alpha if config.alpha is not None else config.rank,
                      target_modules=list(config.target_modules), lora_dropout=0.0, init_lora_weights=True)
    unet.add_adapter(lora, adapter_name=config.adapter_name)
    param = next(unet.parameters())
    if getattr(unet, "class_embedding", None) is None:
        unet.class_embedding = CameraEmbedding(time_embedding_dim(unet), hidden=config.camera_hidden).to(
            param.device, param.dtype)
    trainable = lora_named_parameters(unet)
    names = {n for n, _ in trainable}
    for name, p in unet.named_parameters():
        p.requires_grad_(name in names)
    return [p for _, p in trainable]


def has_own_camera_embedding(unet: nn.Module) -> bool:
    """True when the UNet's class embedding is the VSD camera embedding :func:`attach_lora` added."""
    return isinstance(getattr(unet, "class_embedding", None), CameraEmbedding)


def is_lora_parameter(name: str) -> bool:
    """True for peft LoRA weights and the camera embedding's weights."""
    return ".lora_A." in name or ".lora_B." in name or name.startswith("class_embedding.")


def lora_named_parameters(unet: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """(name, parameter) of every LoRA / camera-embedding parameter, in a fixed order (a prior's own class
    embedding is not one: it stays frozen)."""
    own = has_own_camera_embedding(unet)
    return [(n, p) for n, p in unet.named_parameters()
            if is_lora_parameter(n) and (own or not n.startswith("class_embedding."))]


def lora_state_dict(unet: nn.Module) -> dict[str, Tensor]:
    """Detached copies of the LoRA and camera-embedding parameters (for checkpoints)."""
    return {n: p.detach().clone() for n, p in lora_named_parameters(unet)}


@torch.no_grad()
def load_lora_state_dict(unet: nn.Module, state: dict[str, Tensor]) -> None:
    """Copy ``state`` (from :func:`lora_state_dict`) into the attached LoRA; names must match exactly."""
    params = dict(lora_named_parameters(unet))
    if set(params) != set(state):
        missing, extra = sorted(set(params) - set(state)), sorted(set(state) - set(params))
        raise ValueError(f"LoRA state does not match the UNet: missing {missing[:3]}, unexpected {extra[:3]}")
    for n, p in params.items():
        p.copy_(state[n])


@contextmanager
def pretrained_branch(unet: nn.Module) -> Iterator[nn.Module]:
    """Within the block the UNet is the pretrained model: adapters disabled, our camera embedding hidden (a prior's
    own class embedding stays: it is part of the pretrained model)."""
    embedding = unet.class_embedding
    unet.disable_adapters()
    if has_own_camera_embedding(unet):
        unet.class_embedding = None
    try:
        yield unet
    finally:
        unet.class_embedding = embedding
        unet.enable_adapters()


def detach_lora(unet: nn.Module, config: LoRAConfig | None = None) -> None:
    """Remove the LoRA adapter and the camera embedding: the UNet is the pretrained model again."""
    config = config or LoRAConfig()
    unet.delete_adapters(config.adapter_name)
    if has_own_camera_embedding(unet):
        unet.class_embedding = None


__all__ = ["CameraEmbedding", "LoRAConfig", "attach_lora", "camera_features", "detach_lora", "has_own_camera_embedding",
           "is_lora_parameter",
           "load_lora_state_dict", "lora_named_parameters", "lora_state_dict", "pretrained_branch",
           "time_embedding_dim"]
