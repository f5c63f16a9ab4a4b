"""Shortcut models (Frans, Hafner, Levine & Abbeel 2024, "One Step Diffusion via Shortcut Models").

One network s(x_t, t, d) conditioned on the step size d gives the average velocity over [t - d, t], so that
x_{t-d} = x_t - d s(x_t, t, d) for any d; sampling takes any number of steps 2^k with one model. Trained
on two kinds of rows (Frans et al., eq. 5), in the general schedule x_t = alpha_t x0 + sigma_t eps:

    flow-matching rows (d = 0):  s(x_t, t, 0) ~ dx_t/dt = alpha'_t x0 + sigma'_t eps   (or the teacher's velocity)
    self-consistency rows:       s(x_t, t, 2h) ~ (s1 + s2) / 2,   s1 = s-(x_t, t, h),
                                 x' = x_t - h s1,   s2 = s-(x', t - h, h)

where s- is the (EMA or stop-gradient) student; d runs over span / 2^k, k = 0 .. levels - 1, and a
half-step at the finest level (span / 2^levels) is queried with d = 0. ``sc_fraction`` of each batch is
self-consistency rows (the paper: 1/4). The student outputs any prediction kind; its velocity is read
through its `Prediction`, so a VP / v-prediction UNet works unchanged.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from priorkit.distill.core.denoiser import Condition, Denoiser
from priorkit.distill.core.samplers.base import steps_bar
from priorkit.distill.core.schedule import Schedule, add_noise, broadcast_to
from priorkit.distill.core.training import TrainConfig, train
from priorkit.distill.students.format import Trainee, freeze, save_student, select_rows, unwrap, with_extras
from priorkit.distill.zoo.toy import DataFn


@dataclass
class ShortcutConfig:
    """Defaults for :func:`shortcut_train` (2D scale)."""

    levels: int = 7              # finest step span / 2^levels (128 steps)
    sc_fraction: float = 0.25    # share of self-consistency rows in a batch
    target_decay: float = 0.0    # EMA decay of the network giving self-consistency targets (0: stop-grad student)
    batch: int = 512
    train: TrainConfig = field(default_factory=lambda: TrainConfig(steps=3000, lr=5e-4, warmup=100, ema_decay=0.995,
                                                                   checkpoint_every=500, log_every=50))


def span(schedule: Schedule) -> float:
    """Length of the time interval a shortcut model covers: [0, t_max]."""
    return float(schedule.t_max)


def step_size(schedule: Schedule, steps: int, levels: int = 7) -> float:
    """The d input for sampling in ``steps`` equal steps (0 at or beyond the finest level: plain flow)."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1; got {steps}")
    return 0.0 if steps >= 2**levels else span(schedule) / steps


def half_query(d: Tensor, d_min: float) -> Tensor:
    """The d input for each half-step of a self-consistency row at step d: d / 2, or 0 at the finest level."""
    h = d / 2
    return torch.where(h <= d_min * (1 + 1e-6), torch.zeros_like(h), h)


@torch.no_grad()
def self_consistency_target(target: Denoiser, x_t: Tensor, t: Tensor, d: Tensor, d_min: float,
                            cond: Condition = None) -> Tensor:
    """(s1 + s2) / 2: the average velocity of two half-steps of ``target``. x_t (B, ...), t, d (B,) float64."""
    h = d / 2
    q = half_query(d, d_min).to(x_t.dtype)
    s1 = target(x_t, t.to(x_t.dtype), with_extras(target, cond, d=q), check=False).velocity
    x_mid = x_t - broadcast_to(h, x_t).to(x_t.dtype) * s1                              # x' = x_t - h s1
    s2 = target(x_mid, (t - h).to(x_t.dtype), with_extras(target, cond, d=q), check=False).velocity
    return 0.5 * (s1 + s2)


def shortcut_loss(online: nn.Module, target: Denoiser, x0: Tensor, eps: Tensor, t: Tensor, d: Tensor,
                  sc_rows: int, d_min: float, *, cond: Condition = None, teacher: Denoiser | None = None) -> Tensor:
    """Mean squared error over a batch whose first ``sc_rows`` rows are self-consistency rows at step d.

    The other rows are flow-matching rows (d input 0; target the data velocity alpha' x0 + sigma' eps, or
    the ``teacher``'s velocity at x_t). x0, eps (B, ...); t, d (B,) float64 (d ignored on FM rows).
    """
    s = target.schedule
    x_t = add_noise(s, x0, t, eps)
    fm = slice(sc_rows, None)
    with torch.no_grad():
        if teacher is not None and sc_rows < x0.shape[0]:  # a UNet cannot take an empty batch
            v_fm = teacher(x_t[fm], t[fm].to(x0.dtype), select_rows(cond, fm), check=False).velocity
        else:
            v_fm = broadcast_to(s.d_alpha(t[fm]), x0[fm]) * x0[fm] + broadcast_to(s.d_sigma(t[fm]), x0[fm]) * eps[fm]
        parts = [v_fm.to(x0.dtype)]
        if sc_rows > 0:
            sc = slice(0, sc_rows)
            parts.insert(0, self_consistency_target(target, x_t[sc], t[sc], d[sc], d_min, select_rows(cond, sc)))
    goal = torch.cat(parts)
    d_in = torch.cat([d[:sc_rows], torch.zeros_like(d[sc_rows:])]).to(x0.dtype)
    pred = online(x_t, t.to(x0.dtype), with_extras(online, cond, d=d_in), check=False).velocity
    return (pred - goal).pow(2).mean()


def shortcut_times(b: int, n_sc: int, levels: int, total: float, g: torch.Generator) -> tuple[Tensor, Tensor]:
    """(t, d) (B,) float64 of a batch: step sizes d = span / 2^k, k ~ U{0..levels-1}; the first ``n_sc`` rows
    (self-consistency) at t ~ U(d, span) so that t - d >= 0, the rest (flow matching) at t ~ U(1e-4, 1) span."""
    k = torch.randint(0, levels, (b,), generator=g)
    d = total / 2.0 ** k.double()
    u = torch.rand(b, generator=g, dtype=torch.float64)
    t_sc = d + (total - d) * u
    t_fm = (1e-4 + (1 - 1e-4) * u) * total
    return torch.cat([t_sc[:n_sc], t_fm[n_sc:]]), d


def shortcut_train(student: Denoiser, data: DataFn, out: str | Path, cfg: ShortcutConfig | None = None, *,
                   teacher: Denoiser | None = None, resume: bool = False,
                   meta: dict[str, Any] | None = None) -> Denoiser:
    """Train a shortcut model (``student`` must take the extra input "d"); returns the EMA student (eval).

    Flow-matching rows use ``data``'s x0 (the paper), or the ``teacher``'s velocity when one is given
    (distillation: lower-variance targets). Checkpoints in ``out``; the student in ``out/student``.
    """
    cfg = cfg or ShortcutConfig()
    if not 0.0 <= cfg.sc_fraction <= 1.0:
        raise ValueError(f"sc_fraction must lie in [0, 1]; got {cfg.sc_fraction}")
    out = Path(out)
    schedule = student.schedule
    total = span(schedule)
    d_min = total / 2**cfg.levels
    teacher = freeze(teacher) if teacher is not None else None
    trainee = Trainee(student.train().requires_grad_(True), target=cfg.target_decay > 0)

    def loss_fn(m: nn.Module, step: int, g: torch.Generator) -> Tensor:
        core = unwrap(m)
        if core.target is not None and step > 0:
            core.update_target(cfg.target_decay)
        target = core.target if core.target is not None else core.student
        x0, cond = data(cfg.batch, g)
        n_sc = int(round(cfg.sc_fraction * x0.shape[0]))
        t, d = shortcut_times(x0.shape[0], n_sc, cfg.levels, total, g)
        eps = torch.randn(x0.shape, generator=g, dtype=x0.dtype)
        return shortcut_loss(m, target, x0, eps, t, d, n_sc, d_min, cond=cond, teacher=teacher)

    ema, _ = train(trainee, loss_fn, cfg.train, out, resume=resume, desc="shortcut")
    result = freeze(unwrap(ema).student)
    save_student(result, out / "student", {**(meta or {}), "method": "shortcut", "sampler": "shortcut",
                                           "levels": cfg.levels, "config": asdict(cfg)})
    return result


@torch.no_grad()
def shortcut_sample(student: Denoiser, noise: Tensor, steps: int, *, cond: Condition = None, levels: int = 7,
                    progress: bool | None = None) -> Tensor:
    """Sample in ``steps`` equal steps of size d from t_max to 0: x <- x - d s(x, t, d); NFE = steps.

    ``noise``: the state at t_max (``initial_noise(student, shape)``).
    """
    s = student.schedule
    d = step_size(s, steps, levels)
    times = torch.linspace(span(s), 0.0, steps + 1, dtype=torch.float64)
    c = with_extras(student, cond, d=d)
    x = noise
    for i in steps_bar(steps, "shortcut", progress):
        v = student(x, times[i].to(x.dtype), c, check=False).velocity
        x = x + (times[i + 1] - times[i]).to(x.dtype) * v
    return x
