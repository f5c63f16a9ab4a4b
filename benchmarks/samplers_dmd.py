"""benchmarks.samplers, issue 20: DMD / DMD2 students and bespoke solvers on the 2D targets.

* ``dmd`` / ``dmd2``: the registry's trainers on a copy of the target's MLP backbone (as every other student),
  the exact mixture or the MLP teacher as the real score; sliced W2 at the NFEs the generator was trained for.
* ``bespoke``: RK2 bespoke solvers fitted to the teacher at 4, 6 and 8 NFE; records their sliced W2 and
  "ode_rmse", the per-sample RMSE to the DOP853 solution of the same noise (benchmarks/reference_ode.py),
  next to DPM-Solver++(2M) at the same NFE (its best grid) — and the solver fitted on the "gmm" teacher used
  on this target's teacher ("bespoke-from-gmm", the transfer).
"""

from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from benchmarks.samplers_common import SPACINGS, record, train_cfg
from priorkit.distill.core.denoiser import Denoiser
from priorkit.distill.core.samplers import initial_noise, sample
from priorkit.distill.core.training import TrainConfig
from priorkit.distill.students import bespoke as bs
from priorkit.distill.students import dmd
from priorkit.distill.students.format import load_student, read_meta
from priorkit.distill.zoo.toy import FAMILY_SETS, DataFn, sliced_w2

FAMILY: tuple[str, ...] = FAMILY_SETS["family"]  # the held-out mixtures (fixed before tuning; distill.zoo.toy)
BESPOKE_NFES = (4, 6, 8)
ODE_POINTS = 1000  # trajectories in the DOP853 comparison


def plot_limit(x: Tensor) -> float:
    """Half the side of the square the samples of a target are drawn in."""
    return max(3.2, 1.1 * float(x.abs().max()))


def dmd_settings(method: str, s: dict[str, Any]) -> dmd.DMDConfig:
    """The benchmark's DMD / DMD2 settings: as many generator updates as the other students' steps / 2."""
    cfg = dmd.DMDConfig() if method == "dmd" else dmd.DMD2Config()
    cfg.batch = s["batch"]
    cfg.pairs = min(s["pairs"], 20_000)
    gen_updates = max(2, s["steps"] // 2)
    cfg.train = train_cfg(gen_updates * (cfg.fake_updates + 1), lr=2e-4)
    return cfg


def run_dmd(name: str, method: str, teacher: Denoiser, student: Denoiser, data: DataFn, s: dict[str, Any],
            folder: Path, ref: Tensor, seed: int) -> tuple[list, dict]:
    """Train a DMD / DMD2 student and measure it at 1 step (and at the generator's steps when > 1)."""
    from priorkit.distill.students.runner import student_samples

    cfg = dmd_settings(method, s)
    t0 = time.time()
    reuse = s.get("reuse", False)
    if reuse and not (folder / "student").is_dir():
        raise SystemExit(f"--reuse: no trained {method} student in {folder}")
    if not reuse:
        dmd.dmd_distill(teacher, student, data, folder, cfg)
    seconds = None if reuse else time.time() - t0
    sub = folder / "student"
    st, meta = load_student(sub), read_meta(sub)
    records, shown = [], {}
    for k in sorted({1, int(meta.get("steps", cfg.steps))}):  # the saved generator's own step count
        x = student_samples(st, meta, s["n_eval"], steps=k, seed=seed).float()
        records.append(record(name, method, k, sliced_w2(x, ref), seconds, f"{cfg.variant}, {cfg.steps}-step"))
        shown[(method, k)] = x
    return records, shown


def _best_dpm(teacher: Denoiser, noise: Tensor, nfe: int, target: Tensor, **kwargs: Any) -> tuple[Tensor, str]:
    """DPM-Solver++(2M) at ``nfe`` on the grid closest to ``target`` (per-sample RMSE); ``kwargs`` go to ``sample``
    (cond, guidance)."""
    best: tuple[float, str, Tensor | None] = (float("inf"), "", None)
    for spacing in SPACINGS:
        x = sample(teacher, noise, steps=nfe, spacing=spacing, **kwargs).double()
        err = float(bs.rmse(x, target))
        if err < best[0]:
            best = (err, spacing, x)
    assert best[2] is not None
    return best[2], best[1]


def run_bespoke(name: str, teacher: Denoiser, s: dict[str, Any], folder: Path, ref: Tensor, seed: int,
                transfer: dict[int, Path] | None = None) -> tuple[list, dict, dict[int, Path]]:
    """Fit bespoke solvers at BESPOKE_NFES; records sw2 and ode_rmse for them and for DPM-Solver++ (and for the
    solvers in ``transfer``, fitted on another teacher). Returns (records, samples to plot, {nfe: solver file})."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from benchmarks.reference_ode import reference_solve

    n = s["n_eval"]
    g = torch.Generator().manual_seed(seed + 11)
    noise = initial_noise(teacher, (n, 2), generator=g).to(_dtype(teacher))
    with torch.no_grad():
        exact = _exact_ends(teacher, noise[:ODE_POINTS].double(), reference_solve)
    records, shown, files = [], {}, {}
    for nfe in BESPOKE_NFES:
        iters = s.get("bespoke_iters", 400)
        cfg = bs.BespokeConfig(nfe=nfe, trajectories=min(n, 4096), ref_steps=128, batch=256,
                               train=TrainConfig(steps=iters, lr=1e-2, warmup=0, ema_decay=0.0), seed=seed)
        t0 = time.time()
        bs.bespoke_train(teacher, folder / f"nfe_{nfe}", cfg)
        seconds = time.time() - t0
        files[nfe] = folder / f"nfe_{nfe}" / bs.SOLVER_FILE
        dpm_x, spacing = _best_dpm(teacher, noise[:ODE_POINTS], nfe, exact)
        records.append(record(name, "teacher-dpm++2m", nfe, float(bs.rmse(dpm_x, exact)), None, spacing, "ode_rmse"))
        runs = [("bespoke", files[nfe], seconds)]
        if transfer and nfe in transfer:
            runs.append(("bespoke-from-gmm", transfer[nfe], None))
        for label, path, secs in runs:
            with torch.no_grad():
                x = sample(teacher, noise, solver=f"bespoke:{path}")
            records.append(record(name, label, nfe, sliced_w2(x.float(), ref), secs, "rk2"))
            records.append(record(name, label, nfe, float(bs.rmse(x[:ODE_POINTS].double(), exact)), secs, "rk2",
                                  "ode_rmse"))
            shown[(label, nfe)] = x.float()
    return records, shown, files


def _exact_ends(teacher: Denoiser, x: Tensor, reference_solve: Any, head: float = 0.02) -> Tensor:
    """The ODE's data end from x at t_max. Where alpha(t_max) = 0 (flow matching) DOP853 cannot start (its
    variable is x / alpha): 32 Heun steps over the first ``head`` of time first (error ~1e-9), then DOP853."""
    t_max = float(teacher.schedule.t_max)
    if float(teacher.schedule.alpha(torch.tensor(t_max, dtype=torch.float64))) > 0:
        return reference_solve(teacher, x, t_max)
    t1 = t_max - head
    head_grid = torch.linspace(t_max, t1, 33, dtype=torch.float64)
    x1 = sample(copy.deepcopy(teacher).double(), x, solver="heun", times=head_grid)
    return reference_solve(teacher, x1, t1)


def _dtype(den: Denoiser) -> torch.dtype:
    tensors = list(den.buffers()) + list(den.parameters())
    return tensors[0].dtype if tensors else torch.float32


def bespoke_ratios(records: list[dict]) -> list[str]:
    """ode_rmse of bespoke / DPM-Solver++ at each NFE and target (< 1: the bespoke solver is closer)."""
    out = []
    for target in dict.fromkeys(r["target"] for r in records if r["metric"] == "ode_rmse"):
        rows = [r for r in records if r["target"] == target and r["metric"] == "ode_rmse"]
        dpm = {r["nfe"]: r["value"] for r in rows if r["method"] == "teacher-dpm++2m"}
        for r in rows:
            if r["method"].startswith("bespoke") and r["nfe"] in dpm:
                ratio = r["value"] / max(dpm[r["nfe"]], 1e-12)
                out.append(f"{target}: {r['method']} at {r['nfe']} NFE: ODE error {r['value']:.4f} vs DPM-Solver++ "
                           f"{dpm[r['nfe']]:.4f} (ratio {ratio:.2f})  [{'met' if ratio < 1 else 'NOT met'}]")
    return out


__all__ = ["BESPOKE_NFES", "FAMILY", "bespoke_ratios", "dmd_settings", "plot_limit", "run_bespoke", "run_dmd"]
