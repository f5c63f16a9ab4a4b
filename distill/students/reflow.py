"""Reflow / rectified diffusion (Liu, Gong & Liu 2022, "Flow Straight and Fast: Learning to Generate and Transfer
Data with Rectified Flow"; Wang et al. 2024, "Rectified Diffusion: Straightness Is Not Your Need").

The teacher's ODE couples each noise z with a sample x0 = ODE(z). Retraining on the coupled pairs, with
the teacher's own schedule and prediction type (no flow-matching form needed; Wang et al.),

    x_t = alpha_t x0 + sigma_t z,   L = E_t || f_student(x_t, t) - target_kind(x0, z) ||^2,

gives a model whose trajectories are the first-order paths alpha_t x0 + sigma_t z, which DDIM (Euler for
flow matching) follows exactly: few steps suffice. k-reflow repeats this with the previous student as
the teacher; an optional last stage distils the one-step map z -> x0 at t_max alone (Liu et al., sec. 2.3).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from priorkit.distill.core.denoiser import Condition, Denoiser
from priorkit.distill.core.prediction import from_x0_eps
from priorkit.distill.core.samplers import sample
from priorkit.distill.core.samplers.ddim import ddim_sample
from priorkit.distill.core.schedule import add_noise
from priorkit.distill.core.tensor_files import load_tensors, save_tensors
from priorkit.distill.core.training import TrainConfig, train
from priorkit.distill.students.format import freeze, is_main_process, is_student_folder, load_student, save_student

#: optional conditions for the couplings: ``conditions(n, generator) -> cond`` (class labels, prompts' states)
CondFn = Callable[[int, torch.Generator], Condition]


@dataclass
class ReflowConfig:
    """Defaults for :func:`reflow` (2D scale)."""

    rounds: int = 1              # k of k-reflow
    pairs: int = 50_000          # couplings per round
    teacher_steps: int = 64      # ODE steps that make the couplings
    teacher_solver: str = "dpm++2m"
    guidance: float = 1.0        # CFG scale of the teacher's couplings (conditional teachers)
    chunk: int = 5000            # couplings generated per call
    batch: int = 512
    t_sampling: str = "uniform"  # or "logit_normal" (Esser et al. 2024)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(steps=3000, lr=5e-4, warmup=100, ema_decay=0.995,
                                                                   checkpoint_every=500, log_every=50))
    one_step_steps: int = 0      # > 0: then distil the one-step map for this many steps


@torch.no_grad()
def make_couplings(teacher: Denoiser, n: int, *, steps: int = 64, solver: str = "dpm++2m", guidance: float = 1.0,
                   conditions: CondFn | None = None, chunk: int = 5000, generator: torch.Generator | None = None,
                   progress: bool = True) -> dict[str, Tensor]:
    """n couplings {"z": unit noise (n, ...), "x0": ODE(sigma(t_max) z) (n, ...), ["cond": (n, ...)]}.

    z is the standard normal whose scaled copy sigma(t_max) z starts the teacher's ODE, so that
    x_t = alpha_t x0 + sigma_t z is the pair's point at every t (alpha(t_max) x0 is negligible there).
    Tensor conditions only (labels or text states).
    """
    g = generator if generator is not None else torch.Generator().manual_seed(0)
    shape = teacher.sample_shape
    if shape is None:
        raise ValueError("the teacher must declare its sample_shape")
    sigma_max = float(teacher.schedule.sigma(torch.tensor(teacher.schedule.t_max, dtype=torch.float64)))
    zs, xs, cs = [], [], []
    for start in tqdm(range(0, n, chunk), desc="couplings", disable=not progress, leave=False):
        m = min(chunk, n - start)
        cond = conditions(m, g) if conditions is not None else None
        z = torch.randn((m, *shape), generator=g)
        x0 = sample(teacher, z * sigma_max, steps=steps, solver=solver, cond=cond, guidance=guidance)
        zs.append(z)
        xs.append(x0.float())
        if cond is not None:
            if not isinstance(cond, Tensor):
                raise TypeError("couplings keep tensor conditions only (labels or encoded states)")
            cs.append(cond)
    out = {"z": torch.cat(zs), "x0": torch.cat(xs)}
    if cs:
        out["cond"] = torch.cat(cs)
    return out


def sample_times(n: int, g: torch.Generator, t_max: float, kind: str = "uniform") -> Tensor:
    """n training times in (0, t_max], float64: uniform, or logit-normal(0, 1) (Esser et al. 2024)."""
    if kind == "uniform":
        u = torch.rand(n, generator=g, dtype=torch.float64)
    elif kind == "logit_normal":
        u = torch.sigmoid(torch.randn(n, generator=g, dtype=torch.float64))
    else:
        raise ValueError(f"unknown t_sampling {kind!r}; expected 'uniform' or 'logit_normal'")
    return (1e-4 + (1 - 1e-4) * u) * t_max


def reflow_loss(student: nn.Module, x0: Tensor, z: Tensor, t: Tensor, cond: Condition = None,
                schedule: Any = None) -> Tensor:
    """|| f(x_t, t) - target_kind(x0, z) ||^2 at x_t = alpha_t x0 + sigma_t z, in the student's own kind."""
    inner = getattr(student, "module", student)
    s = schedule or inner.schedule
    tt = t.to(x0.dtype)
    x_t = add_noise(s, x0, t, z)
    pred = student(x_t, tt, cond, check=False)
    kind = getattr(inner, "kind", "x0")
    return (pred.as_kind(kind) - from_x0_eps(kind, x0, z, x_t, tt, s)).pow(2).mean()


def one_step_loss(student: nn.Module, x0: Tensor, z: Tensor, cond: Condition = None) -> Tensor:
    """|| x0_hat(sigma(t_max) z, t_max) - x0 ||^2: the one-step map of the coupling (Liu et al., sec. 2.3)."""
    s = getattr(student, "module", student).schedule
    t = torch.full((x0.shape[0],), s.t_max, dtype=torch.float64)
    x_t = add_noise(s, x0, t, z)
    return (student(x_t, t.to(x0.dtype), cond, check=False).x0 - x0).pow(2).mean()


def reflow(teacher: Denoiser, student: Denoiser, out: str | Path, cfg: ReflowConfig | None = None, *,
           conditions: CondFn | None = None, resume: bool = False, meta: dict[str, Any] | None = None) -> Denoiser:
    """k-reflow of ``teacher``; ``student`` initialises round 1 (e.g. a copy of the teacher's network).

    Round r makes ``cfg.pairs`` couplings with the current teacher (saved to ``out/round_r/couplings``,
    reused on resume), trains in ``out/round_r`` and saves its student to ``out/round_r/student``; the
    next round's teacher is that student. With ``one_step_steps`` a final stage in ``out/one_step``
    distils the one-step map. Returns the last student (eval).
    """
    cfg = cfg or ReflowConfig()
    out = Path(out)
    current, result = freeze(teacher), student
    for r in range(1, cfg.rounds + 1):
        folder = out / f"round_{r}"
        if resume and is_student_folder(folder / "student"):
            result = load_student(folder / "student")
        else:
            pairs = _couplings(current, folder, cfg, conditions, seed=cfg.train.seed + r)
            result = _train_round(copy.deepcopy(result).train().requires_grad_(True), pairs, folder, cfg, resume,
                                  one_step=False)
            save_student(result, folder / "student", {**(meta or {}), "method": "reflow", "round": r,
                                                      "sampler": "ddim", "config": asdict(cfg)})
        current = freeze(result)
    if cfg.one_step_steps > 0:
        folder = out / "one_step"
        if resume and is_student_folder(folder / "student"):
            return load_student(folder / "student")
        pairs = _couplings(current, out / f"round_{cfg.rounds}", cfg, conditions, seed=cfg.train.seed + cfg.rounds)
        result = _train_round(copy.deepcopy(result).train().requires_grad_(True), pairs, folder, cfg, resume,
                              one_step=True)
        save_student(result, folder / "student", {**(meta or {}), "method": "reflow-one-step",
                                                  "sampler": "ddim", "steps": 1, "config": asdict(cfg)})
    return freeze(result)


def _couplings(teacher: Denoiser, folder: Path, cfg: ReflowConfig, conditions: CondFn | None,
               seed: int) -> dict[str, Tensor]:
    path = folder / "couplings.safetensors"
    if path.is_file():
        return load_tensors(path)
    pairs = make_couplings(teacher, cfg.pairs, steps=cfg.teacher_steps, solver=cfg.teacher_solver,
                           guidance=cfg.guidance, conditions=conditions, chunk=cfg.chunk,
                           generator=torch.Generator().manual_seed(seed))
    if not is_main_process():
        return pairs
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / "couplings.tmp.safetensors"
    save_tensors({k: v.contiguous() for k, v in pairs.items()}, tmp)
    tmp.rename(path)
    return pairs


def _train_round(student: Denoiser, pairs: dict[str, Tensor], folder: Path, cfg: ReflowConfig, resume: bool,
                 one_step: bool) -> Denoiser:
    n = pairs["z"].shape[0]
    t_max = float(student.schedule.t_max)

    def loss_fn(model: nn.Module, step: int, g: torch.Generator) -> Tensor:
        idx = torch.randint(0, n, (cfg.batch,), generator=g)
        x0, z = pairs["x0"][idx], pairs["z"][idx]
        cond = pairs["cond"][idx] if "cond" in pairs else None
        if one_step:
            return one_step_loss(model, x0, z, cond)
        return reflow_loss(model, x0, z, sample_times(cfg.batch, g, t_max, cfg.t_sampling), cond)

    tcfg = cfg.train if not one_step else TrainConfig(**{**asdict(cfg.train), "steps": cfg.one_step_steps})
    resume_here = resume and (folder / "checkpoint").is_dir()
    ema, _ = train(student, loss_fn, tcfg, folder, resume=resume_here,
                   desc="reflow one-step" if one_step else f"reflow {folder.name}")
    return ema


@torch.no_grad()
def reflow_sample(student: Denoiser, noise: Tensor, steps: int, *, cond: Condition = None) -> Tensor:
    """DDIM (= Euler for flow matching) in ``steps`` uniform-in-t steps from t_max; noise = sigma(t_max) z."""
    times = torch.linspace(float(student.schedule.t_max), 0.0, steps + 1, dtype=torch.float64)
    return ddim_sample(student, noise, times, cond=cond)


__all__ = ["ReflowConfig", "make_couplings", "reflow", "reflow_loss", "one_step_loss", "reflow_sample",
           "sample_times"]
