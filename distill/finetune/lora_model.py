"""Image priors fine-tuned through a LoRA (Hu et al. 2021; DRaFT and adjoint matching both fine-tune a LoRA):
a copy of a diffusers denoiser with peft adapters on its attention projections, the frozen original as the base,
and a save that merges the adapters into plain UNet weights, so the result loads like any prior."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from priorkit.distill.core.atomic import write_bytes
from priorkit.distill.core.diffusers_adapter import DiffusersDenoiser

TARGETS: tuple[str, ...] = ("to_q", "to_k", "to_v", "to_out.0")


def with_lora(base: DiffusersDenoiser, rank: int = 8, targets: tuple[str, ...] = TARGETS,
              adapter: str = "finetune") -> tuple[DiffusersDenoiser, list[nn.Parameter]]:
    """A deep copy of ``base`` whose UNet carries a zero-initialised LoRA (so it starts as ``base`` exactly);
    returns it and its trainable parameters. ``base`` is frozen."""
    from peft import LoraConfig

    base.requires_grad_(False)
    model = copy.deepcopy(base)
    names = [n for n, _ in model.unet.named_modules()]
    if not any(n.endswith("." + t) for n in names for t in targets):
        raise ValueError(f"none of the LoRA targets {targets} exists in this UNet")
    model.unet.add_adapter(LoraConfig(r=rank, lora_alpha=rank, target_modules=list(targets), lora_dropout=0.0,
                                      init_lora_weights=True), adapter_name=adapter)
    params = [p for n, p in model.unet.named_parameters() if ".lora_A." in n or ".lora_B." in n]
    for p in params:
        p.requires_grad_(True)
    return model, params


@torch.no_grad()
def merged_state_dict(unet: nn.Module) -> dict[str, torch.Tensor]:
    """The UNet's weights with every LoRA merged in (W + scale B A), under the original module names."""
    from peft.tuners.lora import LoraLayer

    state = {}
    deltas = {}
    for name, module in unet.named_modules():
        if isinstance(module, LoraLayer):
            delta = sum(module.get_delta_weight(a) for a in module.active_adapters)
            deltas[f"{name}.base_layer.weight"] = delta
    for key, value in unet.state_dict().items():
        if ".lora_A." in key or ".lora_B." in key:
            continue
        out = value + deltas[key] if key in deltas else value
        state[key.replace(".base_layer.", ".")] = out.detach().clone().contiguous()
    return state


def save_finetuned(model: DiffusersDenoiser, base_folder: str | Path | None, out: str | Path,
                   meta: dict[str, Any]) -> Path:
    """Write ``model`` (LoRA merged) as a prior folder ``load_denoiser`` reads: config.json,
    diffusion_pytorch_model.safetensors, scheduler_config.json and priorkit.json (the base's, plus ``meta`` under
    "finetune")."""
    from diffusers import UNet2DConditionModel, UNet2DModel
    from safetensors.torch import save

    out = Path(out)
    cls = UNet2DConditionModel if getattr(model.unet.config, "cross_attention_dim", None) else UNet2DModel
    fresh = cls.from_config(model.unet.config)
    fresh.load_state_dict(merged_state_dict(model.unet))
    state = {k: v.half() if v.is_floating_point() else v for k, v in fresh.state_dict().items()}
    bad = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:  # a diverged run (or fp16 overflow) would save a prior that samples black images
        raise FloatingPointError(f"the fine-tuned weights hold NaN or inf ({len(bad)} tensors, e.g. {bad[0]}): "
                                 f"nothing saved in {out}; lower the learning rate")
    out.mkdir(parents=True, exist_ok=True)
    fresh.save_config(str(out))  # the weights follow as fp16, atomically (no save_pretrained: its own writer)
    write_bytes(out / "diffusion_pytorch_model.safetensors", save(state))
    write_bytes(out / "scheduler_config.json", json.dumps(model.scheduler_config, indent=2).encode())
    spec: dict[str, Any] = {}
    if base_folder is not None and (Path(base_folder) / "priorkit.json").is_file():
        spec = json.loads((Path(base_folder) / "priorkit.json").read_text())
    spec["finetune"] = meta
    write_bytes(out / "priorkit.json", json.dumps(spec, indent=2).encode())
    return out
