"""DDPO: denoising diffusion policy optimisation (Black, Janner, Du, Kostrikov & Levine 2023, "Training Diffusion
Models with Reinforcement Learning"), on the general schedule.

The sampler is a policy whose actions are its Gaussian steps: the memoryless (eta = 1 DDIM) step x_s ~ N(mean(x_t),
c^2). Rewards of the final samples, normalised within the batch, are the advantages; the loss is the clipped
importance-sampled policy gradient (PPO form, the paper's DDPO_IS) summed over steps. With one inner epoch the ratio
is 1 and this is REINFORCE (DDPO_SF). No KL term: like DRaFT it maximises reward.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from priorkit.distill.core.denoiser import Condition, Denoiser
from priorkit.distill.core.samplers import initial_noise
from priorkit.distill.finetune.memoryless import check_spacing, memoryless_times, step_mean, trajectory
from priorkit.distill.finetune.reward import Reward


@dataclass
class DDPOConfig:
    """Defaults of DDPO."""

    steps: int = 20
    batch: int = 256
    clip: float = 1e-4  # the paper's ratio clip range
    time_samples: int = 10  # steps of each trajectory in the loss per iteration (random subset)
    spacing: str = "logsnr"  # the memoryless grid's spacing (memoryless_times)

    def __post_init__(self) -> None:
        check_spacing(self.spacing)


def log_prob(mean: Tensor, c: Tensor, x_next: Tensor) -> Tensor:
    """log N(x_next; mean, c^2 I) summed over the sample's dimensions -> (B,)."""
    c = float(c)
    d = (x_next - mean).flatten(1)
    return -0.5 * (d.pow(2).sum(1) / c**2 + d.shape[1] * (2 * torch.log(torch.tensor(c)) + 1.8378770664093453))


def ddpo_loss(finetuned: Denoiser, base: Denoiser, reward: Reward, cfg: DDPOConfig, generator: torch.Generator,
              cond: Condition = None, dtype: torch.dtype = torch.float32) -> tuple[Tensor, Tensor]:
    """Clipped policy-gradient loss on fresh trajectories of the fine-tuned sampler; returns (loss, rewards (B,))."""
    times = memoryless_times(finetuned, cfg.steps, spacing=cfg.spacing)
    x = initial_noise(finetuned, (cfg.batch, *finetuned.sample_shape), t_max=float(times[0]), generator=generator,
                      dtype=dtype)
    states = trajectory(finetuned, x, times, cond, generator)
    with torch.no_grad():
        r = reward(states[-1], cond)
    adv = (r - r.mean()) / (r.std() + 1e-8)
    n = len(times) - 1
    pick = torch.randperm(n, generator=generator)[: min(cfg.time_samples, n)].tolist()
    loss = torch.zeros((), dtype=torch.float32)
    for i in pick:
        mean, c = step_mean(finetuned, states[i], times[i], times[i + 1], cond)
        if float(c) <= 0:
            continue
        lp = log_prob(mean, c, states[i + 1])
        ratio = torch.exp(lp - lp.detach())
        clipped = torch.clamp(ratio, 1 - cfg.clip, 1 + cfg.clip)
        loss = loss - torch.minimum(ratio * adv, clipped * adv).mean().float()
    return loss / len(pick), r
