"""Guidance distillation (Meng, Rombach, Gao, Kingma, Ermon, Ho & Salimans 2023, "On Distillation of Guided
Diffusion Models").

Classifier-free guidance costs two model calls per step. Stage 1 trains a student that takes the guidance
weight w as an input to reproduce the guided teacher in one call (Meng et al., eq. 6; our w is the CFG
scale, w = 1 unguided):

    x_t = alpha_t x0 + sigma_t eps,   w ~ U[w_min, w_max],
    target = uncond + w (cond - uncond)           (the teacher's guided prediction at (x_t, t))
    L = || f_student(x_t, t, c, w) - target ||^2  (in the student's own prediction kind)

Stage 2 is progressive distillation (`priorkit.distill.students.progressive`) of the stage-1 student, w kept as an
input:
each round the student matches two DDIM steps of the previous one at the same w.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from priorkit.distill.core.denoiser import Condition, Denoiser
from priorkit.distill.core.prediction import Prediction
from priorkit.distill.core.schedule import add_noise
from priorkit.distill.core.training import TrainConfig, train
from priorkit.distill.students.format import freeze, is_student_folder, load_student, save_student, unwrap, with_extras
from priorkit.distill.students.progressive import ProgressiveConfig, progressive_distill
from priorkit.distill.zoo.toy import DataFn


@dataclass
class GuidanceDistillConfig:
    """Defaults for :func:`guidance_distill` (2D scale)."""

    w_min: float = 1.0
    w_max: float = 4.0
    batch: int = 512
    stage1: TrainConfig = field(default_factory=lambda: TrainConfig(steps=3000, lr=5e-4, warmup=100, ema_decay=0.995,
                                                                    checkpoint_every=500, log_every=50))
    stage2: ProgressiveConfig | None = field(default_factory=lambda: ProgressiveConfig(start_steps=32, end_steps=2))


@torch.no_grad()
def guidance_target(teacher: Denoiser, x_t: Tensor, t: Tensor, cond: Condition, w: Tensor) -> Prediction:
    """The teacher's classifier-free-guided prediction uncond + w (cond - uncond), w (B,), one batched call."""
    return teacher.guided(x_t, t, cond, w.to(x_t.dtype), check=False)


def guidance_loss(student: nn.Module, teacher: Denoiser, x0: Tensor, eps: Tensor, t: Tensor, cond: Condition,
                  w: Tensor) -> Tensor:
    """Stage-1 loss: || f_student(x_t, t, c, w) - guided teacher ||^2 in the student's kind. t, w: (B,)."""
    s = teacher.schedule
    x_t = add_noise(s, x0, t, eps)
    tt = t.to(x0.dtype)
    goal = guidance_target(teacher, x_t, tt, cond, w)
    pred = student(x_t, tt, with_extras(student, cond, w=w.to(x0.dtype)), check=False)
    kind = getattr(unwrap(student), "kind", "x0")
    return (pred.as_kind(kind) - goal.as_kind(kind)).pow(2).mean()


def with_random_w(data: DataFn, student: Denoiser, w_min: float, w_max: float) -> DataFn:
    """Wrap ``data`` so that each condition also carries a guidance weight w ~ U[w_min, w_max] per sample."""

    def wrapped(n: int, g: torch.Generator) -> tuple[Tensor, Condition]:
        x0, cond = data(n, g)
        w = w_min + (w_max - w_min) * torch.rand(x0.shape[0], generator=g)
        return x0, with_extras(student, cond, w=w.to(x0.dtype))

    return wrapped


def guidance_distill(teacher: Denoiser, student: Denoiser, data: DataFn, out: str | Path,
                     cfg: GuidanceDistillConfig | None = None, *, resume: bool = False,
                     meta: dict[str, Any] | None = None) -> Denoiser:
    """Stage 1 (w-conditioned student of the CFG teacher) then, if ``cfg.stage2``, progressive distillation.

    ``student`` takes the extra input "w" (an `MLPDenoiser` with ``extras=("w",)`` or a UNet student from
    `priorkit.distill.students.format.unet_student_from_teacher(teacher, ("w",))`). ``data(n, g) -> (x0, cond)`` with
    the
    teacher's conditions. Stage 1 trains in ``out/stage1`` (student in ``out/stage1/student``), stage 2 in
    ``out/stage2``. Returns the final student (eval).
    """
    cfg = cfg or GuidanceDistillConfig()
    if cfg.w_max < cfg.w_min:
        raise ValueError("w_max must be >= w_min")
    out = Path(out)
    teacher = freeze(teacher)
    s = teacher.schedule
    folder = out / "stage1"
    if resume and is_student_folder(folder / "student"):
        stage1 = load_student(folder / "student")
    else:
        def loss_fn(model: nn.Module, step: int, g: torch.Generator) -> Tensor:
            x0, cond = data(cfg.batch, g)
            b = x0.shape[0]
            t = s.t_min + (s.t_max - s.t_min) * torch.rand(b, generator=g, dtype=torch.float64)
            w = cfg.w_min + (cfg.w_max - cfg.w_min) * torch.rand(b, generator=g, dtype=torch.float64)
            eps = torch.randn(x0.shape, generator=g, dtype=x0.dtype)
            return guidance_loss(model, teacher, x0, eps, t, cond, w)

        stage1, _ = train(student.train().requires_grad_(True), loss_fn, cfg.stage1, folder,
                          resume=resume and (folder / "checkpoint").is_dir(), desc="guidance distillation (stage 1)")
        save_student(stage1, folder / "student", {**(meta or {}), "method": "guidance-stage1", "sampler": "ode",
                                                  "w_range": [cfg.w_min, cfg.w_max], "config": asdict(cfg)})
    stage1 = freeze(stage1)
    if cfg.stage2 is None:
        return stage1
    wrapped = with_random_w(data, stage1, cfg.w_min, cfg.w_max)
    return progressive_distill(stage1, stage1, wrapped, out / "stage2", cfg.stage2, resume=resume,
                               meta={**(meta or {}), "guidance": "distilled", "w_range": [cfg.w_min, cfg.w_max]})
