"""Progressive distillation (Salimans & Ho 2022, "Progressive Distillation for Fast Sampling of Diffusion Models").

Each round halves the number of DDIM steps: a student, initialised as the teacher, learns to take in one
DDIM step what the teacher takes in two; then the student becomes the teacher. In the general schedule
x_t = alpha_t x0 + sigma_t eps, with t > t' > t'' (Salimans & Ho, Algorithm 2):

    z_t'  = alpha_t' x_hat(z_t) + (sigma_t' / sigma_t) (z_t - alpha_t x_hat(z_t))       # teacher DDIM step
    z_t'' = alpha_t'' x_hat(z_t') + (sigma_t'' / sigma_t') (z_t' - alpha_t' x_hat(z_t'))  # teacher DDIM step
    x~    = (z_t'' - (sigma_t'' / sigma_t) z_t) / (alpha_t'' - (sigma_t'' / sigma_t) alpha_t)

x~ is the x0 that makes one student DDIM step t -> t'' land on z_t''. The loss is
max(SNR_t, 1) || x~ - x_hat_student(z_t) ||^2 ("truncated SNR" weighting; any parameterisation of the
student: v, x0, eps or velocity — its x0 is read through its `Prediction`). Students sample with
`priorkit.distill.core.samplers.ddim.ddim_sample` on the grid they were distilled for (:func:`student_grid`).
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from priorkit.distill.core.denoiser import Condition, Denoiser
from priorkit.distill.core.samplers.base import time_grid
from priorkit.distill.core.samplers.ddim import ddim_next
from priorkit.distill.core.schedule import Schedule, add_noise, broadcast_to
from priorkit.distill.core.training import TrainConfig, train
from priorkit.distill.students.format import freeze, is_student_folder, load_student, save_student
from priorkit.distill.zoo.toy import DataFn


@dataclass
class ProgressiveConfig:
    """Defaults for :func:`progressive_distill` (2D scale; raise ``train.steps`` and lower ``lr`` for images)."""

    start_steps: int = 64      # the teacher's DDIM steps (a power of two)
    end_steps: int = 1         # stop when the student takes this many steps
    spacing: str = "time"      # the teacher's DDIM grid ("time" = uniform in t, as Salimans & Ho)
    batch: int = 512
    weighting: str = "truncated_snr"  # or "none"
    train: TrainConfig = field(default_factory=lambda: TrainConfig(steps=1500, lr=5e-4, warmup=50, ema_decay=0.995,
                                                                   checkpoint_every=500, log_every=50))


def teacher_grid(schedule: Schedule, steps: int, spacing: str = "time") -> Tensor:
    """The finest grid (steps + 1 decreasing times, float64) from t_max to the data end t = 0."""
    if steps < 1 or steps & (steps - 1):
        raise ValueError(f"progressive distillation needs a power-of-two step count; got {steps}")
    return time_grid(schedule, steps, spacing, end=0.0)


def student_grid(schedule: Schedule, steps: int, start_steps: int = 64, spacing: str = "time") -> Tensor:
    """The sub-grid of :func:`teacher_grid` with ``steps`` steps (every start_steps/steps-th time)."""
    if start_steps % steps:
        raise ValueError(f"{steps} steps do not divide the {start_steps}-step grid")
    return teacher_grid(schedule, start_steps, spacing)[:: start_steps // steps]


# ---- the target and the loss ---------------------------------------------------------------------------
@torch.no_grad()
def progressive_target(teacher: Denoiser, x_t: Tensor, t: Tensor, t_mid: Tensor, t_next: Tensor,
                       cond: Condition = None) -> Tensor:
    """x~ of Salimans & Ho (Alg. 2): the x0 whose single DDIM step t -> t_next equals two teacher steps.

    x_t: (B, ...); t, t_mid, t_next: (B,) float64 with t > t_mid > t_next. Returns x~ (B, ...).
    """
    s = teacher.schedule
    z_mid = ddim_next(teacher(x_t, t.to(x_t.dtype), cond, check=False), t_mid)
    z_next = ddim_next(teacher(z_mid, t_mid.to(x_t.dtype), cond, check=False), t_next)
    ratio = broadcast_to(s.sigma(t_next) / s.sigma(t), x_t)                          # sigma_t'' / sigma_t
    denom = broadcast_to(s.alpha(t_next), x_t) - ratio * broadcast_to(s.alpha(t), x_t)
    return (z_next - ratio * x_t) / denom                                              # x~


def snr_weight(schedule: Schedule, t: Tensor, weighting: str) -> Tensor:
    """max(SNR_t, 1) ("truncated SNR", Salimans & Ho sec. 4) or ones; (B,)."""
    if weighting == "none":
        return torch.ones_like(t)
    if weighting == "truncated_snr":
        return torch.exp(schedule.log_snr(t)).clamp_min(1.0)
    raise ValueError(f"unknown weighting {weighting!r}; expected 'truncated_snr' or 'none'")


def progressive_loss(student: nn.Module, teacher: Denoiser, x0: Tensor, eps: Tensor, t: Tensor, t_mid: Tensor,
                     t_next: Tensor, cond: Condition = None, weighting: str = "truncated_snr") -> Tensor:
    """mean_b w(t) || x~ - x0_student(z_t) ||^2 with z_t = alpha_t x0 + sigma_t eps. Times (B,) float64."""
    s = teacher.schedule
    z_t = add_noise(s, x0, t, eps)
    target = progressive_target(teacher, z_t, t, t_mid, t_next, cond)
    pred = student(z_t, t.to(x0.dtype), cond, check=False)
    err = (pred.x0 - target).pow(2).reshape(x0.shape[0], -1).mean(1)
    return (snr_weight(s, t, weighting).to(err) * err).mean()


# ---- the trainer ---------------------------------------------------------------------------------------
def progressive_distill(teacher: Denoiser, student: Denoiser, data: DataFn, out: str | Path,
                        cfg: ProgressiveConfig | None = None, *, resume: bool = False,
                        meta: dict[str, Any] | None = None) -> Denoiser:
    """Distil ``teacher`` (DDIM, ``cfg.start_steps`` steps) into a ``cfg.end_steps``-step DDIM student.

    ``student`` initialises the first round (normally a copy of the teacher's network; it may differ, e.g.
    when the teacher is an exact analytic model); each round starts from the previous round's student and
    uses it as its teacher. ``data(n, g) -> (x0, cond)`` gives training images and their conditions.
    Round k trains in ``out/steps_<N>`` (checkpoints; ``resume`` continues there) and saves its student to
    ``out/steps_<N>/student`` (finished rounds are skipped on resume). Returns the last student (eval).
    """
    cfg = cfg or ProgressiveConfig()
    out = Path(out)
    if cfg.end_steps < 1 or cfg.start_steps % cfg.end_steps:
        raise ValueError("end_steps must divide start_steps")
    fine = teacher_grid(teacher.schedule, cfg.start_steps, cfg.spacing)
    current_teacher = freeze(teacher)
    n_teacher = cfg.start_steps
    result = student
    while n_teacher > cfg.end_steps:
        n_student = n_teacher // 2
        folder = out / f"steps_{n_student}"
        if resume and is_student_folder(folder / "student"):
            result = load_student(folder / "student")
        else:
            result = _round(current_teacher, copy.deepcopy(result).train().requires_grad_(True), data, fine,
                            n_student, folder, cfg, resume)
            save_student(result, folder / "student", {**(meta or {}), "method": "progressive", "sampler": "ddim",
                                                      "steps": n_student, "start_steps": cfg.start_steps,
                                                      "spacing": cfg.spacing, "config": asdict(cfg)})
        current_teacher = freeze(result)
        n_teacher = n_student
    return freeze(result)


def round_times(fine: Tensor, n_student: int, i: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(t, t_mid, t_next) of the student's steps ``i`` (B,) in a round: t -> t_next is step i of the
    ``n_student``-step sub-grid of ``fine``, t_mid the time between them on the 2 n_student-step one."""
    stride = (len(fine) - 1) // n_student
    grid_s, grid_t = fine[::stride], fine[:: stride // 2]
    return grid_s[i], grid_t[2 * i + 1], grid_s[i + 1]


def _round(teacher: Denoiser, student: Denoiser, data: DataFn, fine: Tensor, n_student: int, folder: Path,
           cfg: ProgressiveConfig, resume: bool) -> Denoiser:
    def loss_fn(model: nn.Module, step: int, g: torch.Generator) -> Tensor:
        x0, cond = data(cfg.batch, g)
        i = torch.randint(0, n_student, (x0.shape[0],), generator=g)
        eps = torch.randn(x0.shape, generator=g, dtype=x0.dtype)
        return progressive_loss(model, teacher, x0, eps, *round_times(fine, n_student, i), cond, cfg.weighting)

    resume_round = resume and (folder / "checkpoint").is_dir()
    ema, _ = train(student, loss_fn, cfg.train, folder, resume=resume_round, desc=f"progressive -> {n_student} steps")
    return ema
