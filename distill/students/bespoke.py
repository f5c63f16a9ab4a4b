"""Training a bespoke solver for a frozen teacher (Shaul et al. 2023, "Bespoke Solvers for Generative Flow
Models", sec. 3.2; Shaul et al. 2024, "Bespoke Non-Stationary Solvers"): the solver's parameters
(`priorkit.distill.core.samplers.bespoke.BespokeSolver`) are fitted on the teacher's own ODE trajectories,

    min_theta E_z || solve_theta(z) - ODE(z) ||,     ODE(z): a high-accuracy solve (Heun, many steps)

(the RMSE loss of Shaul et al. 2023, eq. 15 bounds the global error by it), with Adam; the model's weights
never change and gradients flow only through the solver's inputs and times. Writes ``out/bespoke.json``
(``sample(..., solver="bespoke:out/bespoke.json")``) and, when the teacher is a network that the student format
can save, ``out/student``: the teacher's network with the "bespoke" sampler, so ``priorkit sample`` takes it.
"""

from __future__ import annotations

import copy
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from priorkit.distill.core.denoiser import Condition, Denoiser
from priorkit.distill.core.samplers import initial_noise, predict_fn, sample
from priorkit.distill.core.samplers.bespoke import BespokeSolver, load_bespoke
from priorkit.distill.core.training import TrainConfig
from priorkit.distill.students.format import freeze, is_main_process, save_student, select_rows, student_spec
from priorkit.distill.zoo.toy import DataFn

SOLVER_FILE = "bespoke.json"


@dataclass
class BespokeConfig:
    """Defaults for :func:`bespoke_train` (a minute or two on a 2D teacher)."""

    nfe: int = 4
    variant: str = "rk2"       # "rk2" (stationary, 2023) or "ns" (non-stationary, 2024)
    trajectories: int = 2048   # teacher ODE solves to fit on
    ref_steps: int = 128       # Heun steps of the reference solve
    batch: int = 256
    save_every: int = 100
    seed: int = 0
    # Adam iterations and learning rate (``priorkit distill --steps / --lr``); no EMA, no warm-up
    train: TrainConfig = field(default_factory=lambda: TrainConfig(steps=600, lr=1e-2, warmup=0, ema_decay=0.0))


@torch.no_grad()
def reference_pairs(teacher: Denoiser, n: int, ref_steps: int, conditions: DataFn | None, seed: int,
                    chunk: int = 1024) -> tuple[Tensor, Tensor, Condition]:
    """(noise (n, ...) at t_max, its high-accuracy ODE end (n, ...), conditions or None)."""
    g = torch.Generator().manual_seed(seed)
    zs, xs, cs = [], [], []
    for start in range(0, n, chunk):
        m = min(chunk, n - start)
        cond = conditions(m, g)[1] if conditions is not None else None
        z = initial_noise(teacher, (m, *teacher.sample_shape), generator=g)
        xs.append(sample(teacher, z, steps=ref_steps, solver="heun", spacing="karras", cond=cond,
                          progress=None if is_main_process() else False))  # a bar from 50 steps
        zs.append(z)
        if isinstance(cond, Tensor):
            cs.append(cond)
    return torch.cat(zs), torch.cat(xs), (torch.cat(cs) if cs else None)


def rmse(x: Tensor, y: Tensor) -> Tensor:
    """Mean over samples of the per-sample root mean squared error."""
    return (x - y).pow(2).flatten(1).mean(1).sqrt().mean()


def bespoke_train(teacher: Denoiser, out: str | Path, cfg: BespokeConfig | None = None, *,
                  data: DataFn | None = None, resume: bool = False, meta: dict[str, Any] | None = None
                  ) -> BespokeSolver:
    """Fit a bespoke solver with ``cfg.nfe`` evaluations of the frozen ``teacher``; saved to ``out/bespoke.json``.

    ``data(n, g) -> (x0, cond)`` supplies conditions for a conditional teacher (only its conditions are used).
    ``resume`` restarts from the last saved parameters (Adam's moments start afresh).
    """
    cfg = cfg or BespokeConfig()
    out = Path(out)
    teacher = freeze(teacher)
    path = out / SOLVER_FILE
    t_max = float(teacher.schedule.t_max)
    start = 0
    if resume and path.is_file():
        solver = load_bespoke(path).requires_grad_(True)
        start = int(json.loads(path.read_text()).get("iteration", 0))
    else:
        solver = BespokeSolver(cfg.nfe, cfg.variant, t_max=t_max)
    z, x_ref, conds = reference_pairs(teacher, cfg.trajectories, cfg.ref_steps, data, cfg.seed)
    opt = torch.optim.Adam(solver.parameters(), lr=cfg.train.lr)
    g = torch.Generator().manual_seed(cfg.seed + 1 + start)
    t0, loss = time.time(), torch.tensor(float("nan"))
    info = {**(meta or {}), "config": asdict(cfg), "schedule": teacher.schedule.config()}
    bar = tqdm(range(start, cfg.train.steps), desc=f"bespoke solver, {cfg.nfe} NFE", initial=start,
               total=cfg.train.steps, disable=not is_main_process(), leave=False)
    for it in bar:
        idx = torch.randint(z.shape[0], (min(cfg.batch, z.shape[0]),), generator=g)
        cond = select_rows(conds, idx) if conds is not None else None
        fn = predict_fn(teacher, cond)
        loss = rmse(solver(fn, z[idx]), x_ref[idx])  # Shaul et al. 2023, eq. 15
        if not torch.isfinite(loss):  # as `train`: never step (or save) on a NaN; the last saved solver stays
            raise FloatingPointError(f"bespoke solver's RMSE became {loss.item()} at iteration {it}; "
                                     f"last save kept in {path}")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        bar.set_postfix(rmse=f"{float(loss.detach()):.4f}")
        if is_main_process() and ((it + 1) % cfg.save_every == 0 or it + 1 == cfg.train.steps):
            solver.save(path, iteration=it + 1, train_rmse=float(loss.detach()), seconds=time.time() - t0, **info)
    if is_main_process() and start >= cfg.train.steps and not path.is_file():
        solver.save(path, iteration=start, **info)
    return solver.requires_grad_(False)


def bespoke_distill(teacher: Denoiser, student: Denoiser, data: DataFn, out: str | Path, cfg: Any, *,
                    resume: bool = False, meta: dict[str, Any] | None = None) -> Denoiser:
    """The registry's call: fit the solver, then save the teacher's network as a student that samples with it
    (``out/student``) when the student format can save it (an exact analytic teacher cannot be: the solver file
    alone is the result). Returns the teacher."""
    out = Path(out)
    guided = getattr(teacher, "scale", 1.0)
    conditional = data(1, torch.Generator().manual_seed(0))[1] is not None
    solver = bespoke_train(teacher, out, cfg, data=data if conditional else None, resume=resume, meta=meta)
    net = getattr(teacher, "inner", teacher)
    try:
        student_spec(net)
    except TypeError:
        return teacher
    save_student(copy.deepcopy(net), out / "student", {**(meta or {}), "method": "bespoke", "sampler": "bespoke",
                                                       "solver": solver.to_dict(), "guidance": guided,
                                                       "steps": cfg.nfe})
    return teacher


__all__ = ["BespokeConfig", "SOLVER_FILE", "bespoke_distill", "bespoke_train", "reference_pairs", "rmse"]
