"""One registry of the distillation methods and of the few-step samplers their students need.

`METHODS` maps a method's name (what ``priorkit distill METHOD`` takes) to a :class:`Method`: its trainer, its
defaults dataclass and the facts the runner, the CLI, the web app and the benchmarks read instead of testing the
name. `STUDENT_SAMPLERS` maps the ``"sampler"`` a trainer writes into a student's priorkit.json to the function
that samples it. Adding a method: one trainer module plus one `Method` entry here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from priorkit.distill.core.denoiser import Condition, Denoiser
from priorkit.distill.core.samplers.ddim import ddim_sample
from priorkit.distill.core.training import TrainConfig
from priorkit.distill.students import bespoke, consistency, dmd, guidance_distill, progressive, reflow, shortcut
from priorkit.distill.students.consistency_model import ConsistencyModel
from priorkit.distill.zoo.toy import DataFn

#: trainer(teacher, student, data, out, cfg, *, resume, meta, conditions) -> the trained student
Trainer = Callable[..., Denoiser]


def _nothing(cfg: Any, *args: Any) -> None:
    return None


@dataclass(frozen=True)
class Method:
    """A distillation method as the runner, the CLI, the web app and the benchmarks see it."""

    name: str
    summary: str                        # one line for help texts
    config: type                        # the defaults dataclass of the trainer
    train: Trainer                      # the uniform call of the trainer (see `Trainer`)
    extras: tuple[str, ...] = ()        # extra scalar inputs of the student ("d": step size, "w": guidance weight)
    consistency: bool = False           # the student is a `ConsistencyModel` over the copied network
    copies_toy_teacher: bool = True     # 2D: the student starts as a copy of the MLP teacher (else a fresh MLP)
    learns_guidance: bool = False       # the student takes w: a class-conditional teacher, served without fixed CFG
    needs_teacher: bool = True          # False: trains from data alone (consistency training)
    train_config: Callable[[Any], TrainConfig] = lambda cfg: cfg.train  # the TrainConfig the common flags set
    image_defaults: Callable[[Any], None] = _nothing    # settings for image teachers (after lr / EMA / batch)
    toy_defaults: Callable[[Any], None] = _nothing      # settings for 2D teachers
    set_steps: Callable[[Any, int], None] = _nothing    # what else ``--steps`` sets (later stages, checkpoints)


def backbone(student: Denoiser) -> Denoiser:
    """The network a consistency trainer wraps itself (the student without its `ConsistencyModel`)."""
    return student.net if isinstance(student, ConsistencyModel) else student


# ---- the trainers, called alike -------------------------------------------------------------------------
def _reflow(teacher: Denoiser, student: Denoiser, data: DataFn, out: str | Path, cfg: Any, *, resume: bool = False,
            meta: dict[str, Any] | None = None, conditions: Any = None) -> Denoiser:
    conditions = conditions or (lambda m, g: data(m, g)[1])  # the couplings are conditioned like the data
    return reflow.reflow(teacher, student, out, cfg, conditions=conditions, resume=resume, meta=meta)


def _cd(teacher: Denoiser, student: Denoiser, data: DataFn, out: str | Path, cfg: Any, *, resume: bool = False,
        meta: dict[str, Any] | None = None, conditions: Any = None) -> Denoiser:
    return consistency.consistency_distill(teacher, backbone(student), data, out, cfg, resume=resume, meta=meta)


def _ct(teacher: Denoiser, student: Denoiser, data: DataFn, out: str | Path, cfg: Any, *, resume: bool = False,
        meta: dict[str, Any] | None = None, conditions: Any = None) -> Denoiser:
    return consistency.consistency_training(backbone(student), data, out, cfg, resume=resume, meta=meta)


def _shortcut(teacher: Denoiser, student: Denoiser, data: DataFn, out: str | Path, cfg: Any, *, resume: bool = False,
              meta: dict[str, Any] | None = None, conditions: Any = None) -> Denoiser:
    return shortcut.shortcut_train(student, data, out, cfg, teacher=teacher, resume=resume, meta=meta)


def _progressive(teacher: Denoiser, student: Denoiser, data: DataFn, out: str | Path, cfg: Any, *,
                 resume: bool = False, meta: dict[str, Any] | None = None, conditions: Any = None) -> Denoiser:
    return progressive.progressive_distill(teacher, student, data, out, cfg, resume=resume, meta=meta)


def _guidance(teacher: Denoiser, student: Denoiser, data: DataFn, out: str | Path, cfg: Any, *,
              resume: bool = False, meta: dict[str, Any] | None = None, conditions: Any = None) -> Denoiser:
    return guidance_distill.guidance_distill(teacher, student, data, out, cfg, resume=resume, meta=meta)


def _dmd(teacher: Denoiser, student: Denoiser, data: DataFn, out: str | Path, cfg: Any, *, resume: bool = False,
         meta: dict[str, Any] | None = None, conditions: Any = None) -> Denoiser:
    return dmd.dmd_distill(teacher, student, data, out, cfg, resume=resume, meta=meta)


def _bespoke(teacher: Denoiser, student: Denoiser, data: DataFn, out: str | Path, cfg: Any, *, resume: bool = False,
             meta: dict[str, Any] | None = None, conditions: Any = None) -> Denoiser:
    return bespoke.bespoke_distill(teacher, student, data, out, cfg, resume=resume, meta=meta)


# ---- method-specific defaults -----------------------------------------------------------------------------
def _reflow_image(cfg: Any) -> None:
    cfg.pairs, cfg.chunk, cfg.teacher_steps = 4096, 128, 32


def _reflow_steps(cfg: Any, steps: int) -> None:
    if cfg.one_step_steps:
        cfg.one_step_steps = steps


def _cd_image(cfg: Any) -> None:  # the teacher's DDIM (Euler) step between grid times, as latent consistency models
    cfg.solver = "euler"          # do: half the teacher evaluations of Heun on a CPU


def _toy_consistency(cfg: Any) -> None:
    cfg.sigma_data = 1.0


def _toy_ct(cfg: Any) -> None:
    cfg.sigma_data = 1.0
    cfg.train.steps, cfg.s1 = 6000, 80


def _progressive_image(cfg: Any) -> None:
    cfg.start_steps, cfg.spacing = 32, "time"


def _progressive_steps(cfg: Any, steps: int) -> None:
    cfg.train.checkpoint_every = max(1, steps // 3)


def _dmd_image(cfg: Any) -> None:  # DMD2's image settings: a slow generator, 2e-6-scale lr on a real UNet; the
    cfg.pairs, cfg.teacher_steps, cfg.train.lr = 1024, 25, 1e-5  # discriminator's loss weighted 1e-2 against the
    cfg.gan_disc = 1e-2                                           # fake score's (DMD2's ImageNet / SDXL settings)


def _bespoke_image(cfg: Any) -> None:  # fewer, cheaper reference solves: the solver has ~2 NFE parameters to fit
    cfg.trajectories, cfg.ref_steps, cfg.batch, cfg.train.lr, cfg.train.steps = 64, 64, 8, 1e-2, 150


def _guidance_steps(cfg: Any, steps: int) -> None:
    if cfg.stage2 is not None:
        cfg.stage2.train.steps = max(1, steps // 2)


METHODS: dict[str, Method] = {m.name: m for m in (
    Method("reflow", "rectified flow / k-reflow, then an optional one-step stage", reflow.ReflowConfig, _reflow,
           image_defaults=_reflow_image, set_steps=_reflow_steps),
    Method("cd", "consistency distillation", consistency.ConsistencyConfig, _cd, consistency=True,
           image_defaults=_cd_image, toy_defaults=_toy_consistency),
    Method("ct", "consistency training", consistency.ConsistencyConfig, _ct, consistency=True,
           copies_toy_teacher=False, needs_teacher=False, toy_defaults=_toy_ct),
    Method("shortcut", "a step-size-conditioned shortcut model", shortcut.ShortcutConfig, _shortcut, extras=("d",)),
    Method("progressive", "progressive distillation, halving the DDIM steps per round", progressive.ProgressiveConfig,
           _progressive, image_defaults=_progressive_image, set_steps=_progressive_steps),
    Method("guidance", "guidance distillation: w as an input, then progressive", guidance_distill.GuidanceDistillConfig,
           _guidance, extras=("w",), learns_guidance=True, train_config=lambda cfg: cfg.stage1,
           set_steps=_guidance_steps),
    Method("dmd", "distribution matching distillation: one-step generator, fake score, regression",
           dmd.DMDConfig, _dmd, image_defaults=_dmd_image),
    Method("dmd2", "DMD2: two time-scale updates, no regression, optional GAN head, multi-step",
           dmd.DMD2Config, _dmd, image_defaults=_dmd_image),
    Method("bespoke", "a bespoke solver (time grid and scaling) fitted to the frozen teacher", bespoke.BespokeConfig,
           _bespoke, image_defaults=_bespoke_image),
)}


def method(name: str) -> Method:
    """The registered method ``name``, or a ValueError naming them all."""
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; expected one of {tuple(METHODS)}")
    return METHODS[name]


# ---- the students' samplers -------------------------------------------------------------------------------
#: fn(student, noise (B, ...) at its start time, steps, cond, generator, meta) -> samples
StudentSampler = Callable[[Denoiser, Tensor, int, Condition, "torch.Generator | None", dict[str, Any]], Tensor]


def _consistency_times(student: Denoiser, meta: dict[str, Any], steps: int) -> Tensor:
    cfg = meta.get("config", {}) or {}
    return consistency.consistency_times(student.schedule, steps, sigma_min=cfg.get("sigma_min", 0.002),
                                         sigma_max=cfg.get("sigma_max", 80.0), rho=cfg.get("rho", 7.0),
                                         grid=max(cfg.get("n_steps", 18), steps + 1))


def _consistency_sample(student: Denoiser, noise: Tensor, steps: int, cond: Condition,
                        generator: torch.Generator | None, meta: dict[str, Any]) -> Tensor:
    times = _consistency_times(student, meta, steps)
    return consistency.consistency_sample(student, noise, times, cond=cond, generator=generator)


def _shortcut_sample(student: Denoiser, noise: Tensor, steps: int, cond: Condition,
                     generator: torch.Generator | None, meta: dict[str, Any]) -> Tensor:
    return shortcut.shortcut_sample(student, noise, steps, cond=cond, levels=meta.get("levels", 7))


def _ddim_sample(student: Denoiser, noise: Tensor, steps: int, cond: Condition, generator: torch.Generator | None,
                 meta: dict[str, Any]) -> Tensor:
    if meta.get("start_steps"):  # a progressive student: the sub-grid it was distilled on
        grid = progressive.student_grid(student.schedule, steps, meta["start_steps"], meta.get("spacing", "time"))
        return ddim_sample(student, noise, grid, cond=cond)
    return reflow.reflow_sample(student, noise, steps, cond=cond)


def _dmd_sample(student: Denoiser, noise: Tensor, steps: int, cond: Condition, generator: torch.Generator | None,
                meta: dict[str, Any]) -> Tensor:
    return dmd.dmd_sample(student, noise, steps, cond=cond, times=meta.get("times"), generator=generator)


def _bespoke_sample(student: Denoiser, noise: Tensor, steps: int, cond: Condition, generator: torch.Generator | None,
                    meta: dict[str, Any]) -> Tensor:
    from priorkit.distill.core.samplers import predict_fn
    from priorkit.distill.core.samplers.bespoke import BespokeSolver

    fn = predict_fn(student, cond, float(meta.get("guidance", 1.0)))
    return BespokeSolver.from_dict(meta["solver"])(fn, noise)  # its own NFE: ``steps`` is ignored


STUDENT_SAMPLERS: dict[str, StudentSampler] = {
    "bespoke": _bespoke_sample,
    "dmd": _dmd_sample,
    "consistency": _consistency_sample,
    "shortcut": _shortcut_sample,
    "ddim": _ddim_sample,
}


def start_time(student: Denoiser, meta: dict[str, Any]) -> float:
    """The time a student's sampler starts from (consistency models start below t_max)."""
    if meta.get("sampler") == "consistency":
        cfg = meta.get("config", {}) or {}
        return float(consistency.consistency_times(student.schedule, 1, sigma_min=cfg.get("sigma_min", 0.002),
                                                   sigma_max=cfg.get("sigma_max", 80.0))[0])
    return float(student.schedule.t_max)


__all__ = ["METHODS", "STUDENT_SAMPLERS", "Method", "backbone", "method", "start_time"]
