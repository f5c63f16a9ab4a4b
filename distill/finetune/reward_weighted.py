"""Reward-weighted denoising: fine-tune on the base model's own samples, each weighted by exp(r / lambda)
(reward-weighted regression, Peng, Kumar, Zhang & Levine 2019; for text-to-image, Lee et al. 2023, "Aligning
Text-to-Image Models using Human Feedback").

For a fixed condition c,

    E_{x ~ p(.|c)} [ w(x) || f(x_t, t) - target(x, eps) ||^2 ],   w(x) = exp(r(x, c) / lambda) / Z(c),

is the denoising loss of the tilted distribution p*(x | c) ∝ p(x | c) exp(r(x, c) / lambda), so its minimiser is the
denoiser of p*: the target of adjoint matching, reached by regression on base samples instead of a control problem,
with no gradient of the reward. Here the expectation is over a fixed pool drawn once from the base model's sampler
(``per_prompt`` samples for each of ``prompts`` conditions, DPM-Solver++ at ``steps``: the tilt is of the sampler's
distribution), with weights self-normalised per condition over the pool (distill.finetune.tilt); the exact minimiser
is then the denoiser of the weighted pool, which tends to p*'s as the pool grows — on a small pool a flexible model
can memorise its few heaviest samples, and the estimate leans towards the base where a condition's effective sample
size is small. Each iteration draws ``batch`` pool entries, conditions uniformly and samples in proportion to their
weights (an unbiased estimate of the weighted loss at every batch's gradient scale), and takes the model's own
denoising loss at a time uniform on the schedule's range.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor
from tqdm.auto import tqdm

from priorkit.distill.core.denoiser import Condition, Denoiser, select_rows
from priorkit.distill.core.samplers import initial_noise, sample
from priorkit.distill.core.schedule import add_noise
from priorkit.distill.finetune.reward import Reward
from priorkit.distill.finetune.tilt import effective_sample_size, tilt_weights
from priorkit.distill.score.guidance import diffusion_loss


@dataclass
class RewardWeightedConfig:
    """Defaults of reward-weighted denoising."""

    lam: float = 1.0  # reward temperature: target p(x) exp(r(x) / lam)
    batch: int = 64  # pool entries in each iteration's denoising loss
    prompts: int = 256  # conditions in the pool (drawn once by the run's cond_fn)
    per_prompt: int = 16  # base samples per condition (the self-normalisation's size); unconditional: one
    # row of prompts x per_prompt samples
    steps: int = 25  # the pool sampler's steps (DPM-Solver++(2M), CFG 1)
    chunk: int = 64  # samples per sampler call while the pool is drawn
    data_weight: float = 0.0  # weight of the denoising loss on real data beside the pool's (Lee et al. 2023's
    # pre-training loss against drift; needs the run's data_fn; 0: none)

    def __post_init__(self) -> None:
        if not self.lam > 0:
            raise ValueError(f"lambda must be > 0; got {self.lam}")
        if not self.data_weight >= 0:
            raise ValueError(f"data_weight must be >= 0; got {self.data_weight}")
        for name in ("batch", "prompts", "per_prompt", "steps", "chunk"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1; got {getattr(self, name)}")


@dataclass
class Pool:
    """Base samples (P k, ...), their conditions (P k rows; None unconditional), rewards (P, k) and the tilt's
    weights (P, k, float64, rows sum to 1)."""

    x: Tensor
    cond: Condition
    rewards: Tensor
    weights: Tensor

    @property
    def ess(self) -> float:
        """Mean effective sample size of a condition's k samples."""
        return float(effective_sample_size(self.weights).mean())


def repeat_rows(conditions: list | Tensor, k: int) -> list | Tensor:
    """Each of the P conditions (a list, or a tensor's rows) ``k`` times in a row: the pool's P k conditions."""
    if isinstance(conditions, Tensor):
        return conditions.repeat_interleave(k, dim=0)
    if isinstance(conditions, list):
        return [c for c in conditions for _ in range(k)]
    raise ValueError(f"reward_weighted takes its conditions as a list (prompts) or a tensor of rows; got "
                     f"{type(conditions).__name__}")


@torch.no_grad()
def draw_pool(base: Denoiser, reward: Reward, cfg: RewardWeightedConfig, conditions: list | Tensor | None,
              generator: torch.Generator, dtype: torch.dtype = torch.float32, progress: bool = True) -> Pool:
    """``cfg.per_prompt`` samples of ``base`` (CFG 1) for each of ``conditions`` (P conditions: a list or a tensor's
    rows), or with None one unconditional row of ``cfg.prompts * cfg.per_prompt``; their rewards and tilt weights at
    ``cfg.lam``."""
    rows = len(conditions) if conditions is not None else 1
    k = cfg.per_prompt if conditions is not None else cfg.prompts * cfg.per_prompt
    cond = None if conditions is None else repeat_rows(conditions, k)
    xs, rs = [], []
    n = rows * k
    with tqdm(total=n, desc="reward-weighted pool (base samples)", unit="sample", disable=not progress) as bar:
        for i in range(0, n, cfg.chunk):
            part = select_rows(cond, slice(i, i + cfg.chunk))
            m = min(cfg.chunk, n - i)
            z = initial_noise(base, (m, *base.sample_shape), generator=generator, dtype=dtype)
            x = sample(base, z, steps=cfg.steps, solver="dpm++2m", cond=part, progress=False)
            xs.append(x)
            rs.append(reward(x, part).detach().double())
            bar.update(m)
    r = torch.cat(rs).view(rows, k)
    if not torch.isfinite(r).all():
        raise FloatingPointError("the reward is not finite on some of the base samples; the pool cannot be weighted")
    pool = Pool(torch.cat(xs), cond, r, tilt_weights(r, cfg.lam))
    if progress:
        tqdm.write(f"reward-weighted pool: {rows} x {k} samples, mean effective sample size {pool.ess:.1f} of {k} "
                   f"per condition at lambda {cfg.lam:g}")
    return pool


def fingerprint(obj: object) -> str:
    """A hash of a model's or reward's numbers (the state of a torch module; a plain object's tensors, modules and
    other attributes, by repr), so a pool is reused only for the same base model and reward."""
    import hashlib
    import types

    h = hashlib.sha256(type(obj).__name__.encode())
    seen: dict[int, object] = {}  # objects already hashed, kept alive so their ids stay theirs (cycles end here)

    def add(value: object) -> None:
        if not isinstance(value, Tensor) and (isinstance(value, (torch.nn.Module, dict, list, tuple))
                                              or hasattr(value, "__dict__")):
            if id(value) in seen:
                h.update(b"<seen>")
                return
            seen[id(value)] = value
        if isinstance(value, Tensor):
            h.update(str((value.dtype, tuple(value.shape))).encode())
            h.update(value.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
        elif isinstance(value, torch.nn.Module):  # its state, its plain attributes (e.g. a mixture's tensors)
            add(dict(value.state_dict()))
            add({k: v for k, v in vars(value).items() if not k.startswith("_") and k != "training"})
        elif isinstance(value, dict):
            for name in sorted(value, key=str):
                h.update(str(name).encode())
                add(value[name])
        elif isinstance(value, (list, tuple)):
            for item in value:
                add(item)
        elif isinstance(value, (type, types.FunctionType, types.MethodType, types.BuiltinFunctionType)):
            h.update(f"{getattr(value, '__module__', '')}.{getattr(value, '__qualname__', '')}".encode())
        elif hasattr(value, "__dict__"):  # a reward object (a dataclass, a callable class): its fields
            h.update(type(value).__name__.encode())
            add(vars(value))
        else:
            h.update(repr(value).encode())

    add(obj)
    return h.hexdigest()[:16]


def save_pool(pool: Pool, path: Path, settings: dict | None = None) -> bool:
    """Write the pool as safetensors (conditions and ``settings`` as JSON in the metadata). Only a pool of text
    conditions or none is written (returns False for others: a resumed run draws them again from the same seed)."""
    import json

    from safetensors.torch import save

    from priorkit.distill.core.atomic import write_bytes

    if pool.cond is not None and not (isinstance(pool.cond, list) and all(isinstance(c, str) for c in pool.cond)):
        return False
    meta = {"cond": json.dumps(pool.cond), "settings": json.dumps(settings or {}, sort_keys=True)}
    write_bytes(path, save({"x": pool.x.contiguous(), "rewards": pool.rewards.contiguous(),
                            "weights": pool.weights.contiguous()}, metadata=meta))
    return True


def load_pool(path: Path) -> tuple[Pool, dict]:
    """A pool written by :func:`save_pool`, and its settings."""
    import json

    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata()
            pool = Pool(f.get_tensor("x"), json.loads(meta["cond"]), f.get_tensor("rewards"), f.get_tensor("weights"))
            return pool, json.loads(meta.get("settings", "{}"))
    except (SafetensorError, KeyError, TypeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path} is not a readable pool (damaged, truncated or of another format: {e})") from e


def pool_batch(pool: Pool, batch: int, generator: torch.Generator) -> tuple[Tensor, Condition, Tensor]:
    """``batch`` entries: conditions uniformly, then a sample of each in proportion to its weight (with
    replacement) -> (x0, cond, rewards)."""
    p, k = pool.weights.shape  # condition p's sample i has probability w_pi / P
    flat = torch.multinomial((pool.weights.flatten() / p).clamp_min(0), batch, replacement=True, generator=generator)
    rows, cols = flat // k, flat % k
    return pool.x[flat], select_rows(pool.cond, flat), pool.rewards[rows, cols]


def reward_weighted_loss(finetuned: Denoiser, pool: Pool, cfg: RewardWeightedConfig, generator: torch.Generator,
                         data_fn: Callable[[int, torch.Generator], tuple[Tensor, Condition]] | None = None
                         ) -> tuple[Tensor, Tensor]:
    """The module's weighted denoising loss on one batch of the pool, plus ``cfg.data_weight`` times the denoising
    loss on a batch of real data ``data_fn(batch, generator) -> (x0, cond)``; returns (loss, the pool batch's
    rewards)."""
    x0, cond, r = pool_batch(pool, cfg.batch, generator)
    loss = denoising_loss(finetuned, x0, cond, generator)
    if cfg.data_weight > 0:
        if data_fn is None:
            raise ValueError("data_weight > 0 needs real data: pass the run's data_fn")
        x_data, cond_data = data_fn(cfg.batch, generator)
        loss = loss + cfg.data_weight * denoising_loss(finetuned, x_data.to(x0), cond_data, generator)
    return loss, r


def denoising_loss(finetuned: Denoiser, x0: Tensor, cond: Condition, generator: torch.Generator) -> Tensor:
    """The model's denoising loss on ``x0`` at times uniform on the schedule's range (its own prediction kind; a
    wrapper such as a base plus a trainable residual: its eps prediction)."""
    s = finetuned.schedule
    t = (s.t_min + (s.t_max - s.t_min) * torch.rand(x0.shape[0], generator=generator, dtype=torch.float64)).to(x0)
    eps = torch.randn(x0.shape, generator=generator, dtype=x0.dtype)
    if type(finetuned).predict_native is not Denoiser.predict_native:  # the model's own training loss
        return diffusion_loss(finetuned, x0, t, eps, cond)
    x_t = add_noise(s, x0, t, eps)
    return (finetuned(x_t, t, cond, check=False).eps - eps).pow(2).mean()


def prepare_pool(base: Denoiser, reward: Reward, cfg: RewardWeightedConfig, conditions: list | Tensor | None,
                 generator: torch.Generator, dtype: torch.dtype = torch.float32, path: Path | None = None) -> Pool:
    """The run's pool: read from ``path`` when a previous run of the same settings wrote it there (the conditions,
    sizes, sampler steps, dtype, the generator's seed, and the base model's and reward's numbers by
    :func:`fingerprint`; lambda may differ: the weights are made again), else drawn (:func:`draw_pool`) and written to
    ``path`` (text conditions or none only; see :func:`save_pool`). A pool of other settings is refused
    (ValueError)."""
    settings = {"steps": cfg.steps, "dtype": str(dtype), "seed": generator.initial_seed(),
                "base": fingerprint(base), "reward": fingerprint(reward)}
    if path is not None and path.is_file():
        pool, saved = load_pool(path)
        k = pool.rewards.shape[1]
        shape = (len(conditions), cfg.per_prompt) if conditions is not None else (1, cfg.prompts * cfg.per_prompt)
        same = tuple(pool.rewards.shape) == shape \
            and (pool.cond is None) == (conditions is None) \
            and (pool.cond is None or pool.cond[::k] == list(conditions)) and saved == settings
        if not same:
            raise ValueError(f"{path} holds the pool of a run with other settings; remove it or use another folder")
        return Pool(pool.x, pool.cond, pool.rewards, tilt_weights(pool.rewards, cfg.lam))
    pool = draw_pool(base, reward, cfg, conditions, generator, dtype)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        save_pool(pool, path, settings)
    return pool
