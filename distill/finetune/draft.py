"""DRaFT: direct reward fine-tuning by backpropagation through the sampler (Clark, Vicol, Swersky & Fleet 2024,
"Directly Fine-Tuning Diffusion Models on Differentiable Rewards"), on the general schedule.

Samples come from the deterministic DDIM (probability-flow) sampler of the fine-tuned model; the loss is
-r(x_0) / lambda. DRaFT-K backpropagates through the last K steps only; DRaFT-LV (K = 1) re-noises the final
sample ``lv`` times to the last step's time and averages the rewards of the one-step denoisings, a lower-variance
gradient. With ``checkpoint`` each step is recomputed in the backward pass (memory of one step).
Without a KL term DRaFT maximises the reward: it over-shoots the tilted target p(x) exp(r(x)/lambda).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint as grad_checkpoint

from priorkit.distill.core.denoiser import Condition, Denoiser
from priorkit.distill.core.samplers import initial_noise, time_grid
from priorkit.distill.core.samplers.ddim import ddim_next
from priorkit.distill.core.schedule import add_noise
from priorkit.distill.finetune.memoryless import start_time
from priorkit.distill.finetune.reward import Reward


@dataclass
class DRaFTConfig:
    """Defaults of DRaFT; ``k`` None backpropagates through every step, ``lv`` > 0 selects DRaFT-LV."""

    lam: float = 1.0
    steps: int = 20
    batch: int = 256
    k: int | None = None
    lv: int = 0
    checkpoint: bool = False


def _step(den: Denoiser, x: Tensor, t: Tensor, s: Tensor, cond: Condition) -> Tensor:
    return ddim_next(den(x, t.to(x.dtype), cond, check=False), s)


def draft_loss(finetuned: Denoiser, base: Denoiser, reward: Reward, cfg: DRaFTConfig, generator: torch.Generator,
               cond: Condition = None, dtype: torch.dtype = torch.float32) -> tuple[Tensor, Tensor]:
    """-mean r(x_0) / lam through the sampler; returns (loss, rewards (B,)). ``base`` is unused (no KL term)."""
    t_max = start_time(finetuned.schedule)
    x = initial_noise(finetuned, (cfg.batch, *finetuned.sample_shape), t_max=t_max, generator=generator, dtype=dtype)
    times = time_grid(finetuned.schedule, cfg.steps, "logsnr", t_max=t_max)
    n = len(times) - 1
    k = 1 if cfg.lv > 0 else (n if cfg.k is None else min(cfg.k, n))
    for i in range(n):
        grad_on = i >= n - k and not (cfg.lv > 0)
        with torch.set_grad_enabled(grad_on):
            if grad_on and cfg.checkpoint:
                x = grad_checkpoint(_step, finetuned, x, times[i], times[i + 1], cond, use_reentrant=False)
            else:
                x = _step(finetuned, x, times[i], times[i + 1], cond)
    if cfg.lv > 0:  # DRaFT-LV: re-noise the final sample to the last step's time, denoise once with gradients
        t1 = times[-2]
        x0 = x.detach()
        rewards = []
        for _ in range(cfg.lv):
            eps = torch.randn(x0.shape, generator=generator, dtype=x0.dtype)
            xt = add_noise(finetuned.schedule, x0, t1.to(x0.dtype), eps)
            rewards.append(reward(_step(finetuned, xt, t1, times[-1], cond), cond))
        r = torch.stack(rewards).mean(0)
    else:
        r = reward(x, cond)
    return -(r.mean() / cfg.lam).float(), r.detach()
