"""One driver for every reward fine-tuning method: the registry, and training with checkpoints and exact resume
through the core training loop (:func:`priorkit.distill.core.training.train`)."""

from __future__ import annotations

import math
import numbers
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from priorkit.distill.core.denoiser import Condition, Denoiser
from priorkit.distill.core.training import TrainConfig, train
from priorkit.distill.finetune.adjoint_matching import AdjointMatchingConfig, adjoint_matching_loss
from priorkit.distill.finetune.ddpo import DDPOConfig, ddpo_loss
from priorkit.distill.finetune.draft import DRaFTConfig, draft_loss
from priorkit.distill.finetune.reward import Reward
from priorkit.distill.finetune.reward_weighted import RewardWeightedConfig, prepare_pool, reward_weighted_loss

LossFn = Callable[..., tuple[Tensor, Tensor]]


@dataclass(frozen=True)
class FinetuneMethod:
    """A reward fine-tuning method: its loss (finetuned, base, reward, config, generator, cond, dtype) ->
    (loss, rewards) and its config dataclass. A method that learns from a fixed pool of base samples instead has a
    ``prepare`` (base, reward, config, conditions or None, generator, dtype, pool file or None) -> pool, drawn once
    before the run (kept in the run's folder when its conditions are text or none, so a resumed run reads it back;
    others are drawn again from the same seed), and a ``loss`` (finetuned, pool, config, generator, data_fn) ->
    (loss, rewards)."""

    name: str
    loss: LossFn
    config: type
    description: str
    prepare: Callable[..., Any] | None = None


METHODS: dict[str, FinetuneMethod] = {m.name: m for m in (
    FinetuneMethod("adjoint_matching", adjoint_matching_loss, AdjointMatchingConfig,
                   "memoryless SOC: regress the score residual on the lean adjoint (targets p exp(r/lambda))"),
    FinetuneMethod("draft", draft_loss, DRaFTConfig, "backprop the reward through the sampler (K, LV variants)"),
    FinetuneMethod("ddpo", ddpo_loss, DDPOConfig, "policy gradient over the sampler's Gaussian steps"),
    FinetuneMethod("reward_weighted", reward_weighted_loss, RewardWeightedConfig,
                   "denoising loss on base samples weighted by exp(r/lambda) (targets p exp(r/lambda))",
                   prepare=prepare_pool),
)}


def make_config(method: str, **overrides: Any) -> Any:
    """The method's config with the ``overrides`` that it has (others are ignored: a shared CLI can pass all)."""
    if method not in METHODS:
        raise ValueError(f"unknown fine-tuning method {method!r}; expected one of {', '.join(METHODS)}")
    cls = METHODS[method].config
    names = {f.name for f in fields(cls)}
    return cls(**{k: v for k, v in overrides.items() if k in names and v is not None})


def finetune(method: str, finetuned: Denoiser, base: Denoiser, reward: Reward, config: Any, *,
             iterations: int, lr: float = 1e-3, out: str | Path | None = None, resume: bool = False,
             cond_fn: Callable[[int, torch.Generator], Condition] | None = None, seed: int = 0,
             params: list[nn.Parameter] | None = None, dtype: torch.dtype = torch.float32,
             desc: str | None = None, checkpoint_every: int | None = None, grad_clip: float = 1.0,
             ema_decay: float = 0.0, pool_file: str | Path | None = None,
             data_fn: Callable[[int, torch.Generator], tuple[Tensor, Condition]] | None = None,
             on_checkpoint: Callable[[nn.Module, int], None] | None = None) -> tuple[Denoiser, list[dict[str, float]]]:
    """Fine-tune ``finetuned`` (its trainable parameters, or ``params``) towards ``reward`` for ``iterations``
    steps; ``cond_fn(batch, generator)`` draws the conditions (prompts) of each iteration. Returns the fine-tuned
    model and the log (loss and mean reward every few steps): ``finetuned`` itself at its final weights, or with
    ``ema_decay`` > 0 a frozen copy (eval mode) holding the exponential moving average of its parameters (Polyak
    averaging of a noisy run's end; the copy is of the whole model, so it costs a second model's memory) — the
    sampling inside each iteration always uses the current weights. ``on_checkpoint(model, step)`` runs after each
    checkpoint (every ``checkpoint_every`` steps; default a quarter of the run). ``grad_clip``: the gradient norm's
    cap (0: none). ``pool_file``: where a pool method (reward_weighted) keeps its pool (default
    ``out/pool.safetensors``; read back when it holds the pool of the same conditions, sizes, steps, dtype, seed,
    base model and reward (`reward_weighted.prepare_pool`), so runs at other lambdas or learning rates can share
    one). ``data_fn(n, generator) -> (x0, cond)``: real data for a pool method's ``data_weight`` term."""
    if not grad_clip >= 0 or not math.isfinite(grad_clip):
        raise ValueError(f"grad_clip must be a finite number >= 0 (0: no clipping); got {grad_clip}")
    if not 0 <= ema_decay < 1:
        raise ValueError(f"ema_decay must be in [0, 1) (0: the last iterate); got {ema_decay}")
    if method not in METHODS:
        raise ValueError(f"unknown fine-tuning method {method!r}; expected one of {', '.join(METHODS)}")
    if not isinstance(config, METHODS[method].config):
        raise ValueError(f"{method} takes a {METHODS[method].config.__name__}; got a {type(config).__name__} "
                         f"(make_config({method!r}, ...) builds one)")
    if isinstance(iterations, bool) or not isinstance(iterations, numbers.Integral) or iterations < 1:
        raise ValueError(f"iterations must be a whole number >= 1; got {iterations!r}")
    if not (math.isfinite(lr) and lr > 0):
        raise ValueError(f"lr must be a finite number > 0; got {lr}")
    lam = getattr(config, "lam", 1.0)
    if not (isinstance(lam, numbers.Real) and math.isfinite(lam) and lam > 0):
        raise ValueError(f"lam (the reward's temperature) must be a finite number > 0; got {lam!r}")
    if getattr(config, "batch", 1) < 1:
        raise ValueError(f"batch must be >= 1; got {config.batch}")
    if getattr(config, "data_weight", 0) > 0 and data_fn is None:  # before the pool's sampling
        raise ValueError("data_weight > 0 needs real data: pass data_fn")
    m = METHODS[method]
    rewards: dict[int, float] = {}  # step -> mean reward of its batch
    state: dict[str, Any] = {}

    def loss_fn(model: nn.Module, step: int, g: torch.Generator) -> Tensor:
        if m.prepare is not None:
            loss, r = m.loss(model, state["pool"], config, g, data_fn)
        else:
            cond = cond_fn(config.batch, g) if cond_fn is not None else None
            loss, r = m.loss(model, base, reward, config, g, cond, dtype)
        rewards[step] = float(r.float().mean())
        return loss

    every = checkpoint_every or max(10, iterations // 4)
    cfg = TrainConfig(steps=iterations, lr=lr, warmup=min(20, iterations // 10), ema_decay=ema_decay,
                      grad_clip=grad_clip,
                      checkpoint_every=every, log_every=max(1, iterations // 20), seed=seed)
    with tempfile.TemporaryDirectory() as tmp:
        if m.prepare is not None:  # drawn from its own seed, so a resumed run without the file draws the same pool
            g = torch.Generator().manual_seed(seed * 1_000_003 + 999_983)
            conditions = cond_fn(config.prompts, g) if cond_fn is not None else None
            path = Path(pool_file) if pool_file is not None else Path(out) / "pool.safetensors" if out is not None \
                else None
            state["pool"] = m.prepare(base, reward, config, conditions, g, dtype, path)
        model, log = train(finetuned, loss_fn, cfg, out or tmp, resume=resume, desc=desc or f"finetune {method}",
                           params=params, on_checkpoint=on_checkpoint)
    previous = 0
    for entry in log:  # each entry's mean reward over the steps since the previous entry (this process's steps)
        seen = [rewards[k] for k in range(previous, entry["step"]) if k in rewards]
        if seen and "reward" not in entry:
            entry["reward"] = sum(seen) / len(seen)
        previous = entry["step"]
    return model, log
