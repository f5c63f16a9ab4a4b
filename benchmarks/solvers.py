"""ODE solvers, priorkit vs diffusers, on exact Gaussian-mixture denoisers.

    python -m benchmarks.solvers --json outputs/bench/solvers.json [--quick]

Targets: GMMs in 2 and in 3072 (= 3x32x32) dimensions, served as epsilon models on Stable Diffusion's DDPM
schedule (so diffusers' schedulers run them natively). For each solver and NFE in {4, 8, 16, 32}: the ODE
endpoint's mean L2 distance to a scipy DOP853 reference solution (rtol 1e-10), divided by the data's RMS
norm, and the wall time of the whole solve (best of 3; the implementations' timing runs interleaved, so a slow
spell of the machine hits both).

Grids compare like with like. Each solver runs at each implementation's default grid (ours: log-SNR-uniform for
DPM-Solver++, Karras for Euler/Heun; diffusers: its "linspace" integer timesteps). DPM-Solver++ also runs
(a) on the same grid, ours on diffusers' default timesteps (``grid="diffusers-linspace"``: the two must agree to
float rounding), and (b) each at its best grid: diffusers with its other spacings (``use_lu_lambdas``, log-SNR
uniform rounded to integer timesteps; ``use_karras_sigmas``), ours with "karras" and "time" as well; the table picks
the lowest error per implementation.
Records: {"target", "solver", "impl", "grid", "nfe", "error", "seconds"}.
"""

from __future__ import annotations

import argparse
import json
import time
from functools import partial
from pathlib import Path

import torch

from benchmarks.diffusers_samplers import diffusers_solve
from benchmarks.reference_ode import reference_solve
from priorkit.distill.core.denoiser import Denoiser
from priorkit.distill.core.gmm import GaussianMixture
from priorkit.distill.core.samplers import nfe as solver_nfe
from priorkit.distill.core.samplers import sample
from priorkit.distill.core.schedule import VPDiscrete

#: our default grid for each solver (priorkit.distill.core.samplers.sample)
OUR_DEFAULT = {"dpm++2m": "logsnr", "euler": "karras", "heun": "karras"}
#: extra grids for DPM-Solver++'s best-grid comparison: ours (spacing) and diffusers' (scheduler options)
OUR_GRIDS = ("karras", "time")
DIFFUSERS_GRIDS = {"lu_lambdas": {"use_lu_lambdas": True}, "karras": {"use_karras_sigmas": True}}

SD_CONFIG = {"num_train_timesteps": 1000, "beta_schedule": "scaled_linear", "beta_start": 0.00085,
             "beta_end": 0.012}
NFES = (4, 8, 16, 32)
SOLVERS = {"dpm++2m": "DPMSolverMultistepScheduler", "euler": "EulerDiscreteScheduler",
           "heun": "HeunDiscreteScheduler"}


def targets(quick: bool) -> dict[str, tuple[GaussianMixture, int]]:
    schedule = VPDiscrete.from_diffusers_config(SD_CONFIG)
    g = torch.Generator().manual_seed(0)
    dim_big = 3 * 16 * 16 if quick else 3 * 32 * 32
    return {
        "gmm-2d": (GaussianMixture.random(2, 8, generator=g, schedule=schedule), 512),
        f"gmm-{dim_big}d": (GaussianMixture.random(dim_big, 4, generator=g, schedule=schedule,
                                                   dtype=torch.float64), 8),
    }


def steps_for(solver: str, nfe: int) -> int:
    return (nfe + 1) // 2 if solver == "heun" else nfe


def timed(fns: dict[str, object], repeats: int) -> dict[str, tuple[torch.Tensor, float]]:
    """Run every callable of ``fns`` ``repeats`` times, interleaved (a, b, c, a, b, c, ...); best time of each."""
    best = {k: float("inf") for k in fns}
    out: dict[str, torch.Tensor] = {}
    for _ in range(repeats):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            out[k] = fn()
            best[k] = min(best[k], time.perf_counter() - t0)
    return {k: (out[k], best[k]) for k in fns}


def diffusers_grid(den: Denoiser, scheduler, steps: int) -> torch.Tensor:  # noqa: ANN001
    """diffusers' grid as priorkit times: its timesteps' continuous times, then t = 0 (its last step lands on the
    data, final_sigmas_type "zero"). ``steps + 1`` decreasing float64 times."""
    scheduler.set_timesteps(steps)
    times = den.schedule.time(scheduler.timesteps.double())
    return torch.cat([times, torch.zeros(1, dtype=torch.float64)])


def solves(den: Denoiser, x: torch.Tensor, solver: str, steps: int) -> dict[tuple[str, str], object]:
    """(impl, grid) -> a callable that solves from ``x``; the like-with-like set for ``solver``."""
    import diffusers

    cls = getattr(diffusers, SOLVERS[solver])
    fns: dict[tuple[str, str], object] = {
        ("priorkit", OUR_DEFAULT[solver]): partial(sample, den, x, steps=steps, solver=solver, progress=False),
        ("diffusers", "linspace"): lambda: diffusers_solve(den, cls(**SD_CONFIG), x, steps),
    }
    if solver == "dpm++2m":
        times = diffusers_grid(den, cls(**SD_CONFIG), steps)
        fns[("priorkit", "diffusers-linspace")] = partial(sample, den, x, times=times, solver=solver,
                                                          progress=False)
        for grid in OUR_GRIDS:
            fns[("priorkit", grid)] = partial(sample, den, x, steps=steps, solver=solver, spacing=grid,
                                              progress=False)
        for grid, options in DIFFUSERS_GRIDS.items():
            fns[("diffusers", grid)] = lambda o=options: diffusers_solve(den, cls(**SD_CONFIG, **o), x, steps)
    return fns


def run(quick: bool = False, repeats: int = 3, nfes: tuple[int, ...] = NFES) -> list[dict]:
    records = []
    for name, (gmm, batch) in targets(quick).items():
        den: Denoiser = gmm
        x = torch.randn(batch, gmm.dim, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
        t0 = time.perf_counter()
        ref = reference_solve(den, x, 1.0)
        print(f"{name}: reference solved in {time.perf_counter() - t0:.1f}s")
        scale = float(gmm.sample(4096, generator=torch.Generator().manual_seed(2)).pow(2).sum(-1).mean().sqrt())
        for solver in SOLVERS:
            for nfe in nfes:
                steps = steps_for(solver, nfe)
                with torch.no_grad():
                    results = timed(solves(den, x, solver, steps), repeats)
                for (impl, grid), (out, sec) in results.items():
                    err = float((out.double() - ref).norm(dim=-1).mean()) / scale
                    records.append({"target": name, "solver": solver, "impl": impl, "grid": grid,
                                    "nfe": solver_nfe(solver, steps), "error": err, "seconds": sec})
    return records


def table(records: list[dict]) -> str:
    """Per (target, solver, NFE): defaults, the same-grid pair (DPM-Solver++) and each implementation's best grid."""
    rows = ["| target | solver | NFE | error priorkit (default grid) | error diffusers (linspace) | same grid: ours on "
            "diffusers' | best grid ours | best grid diffusers | time ratio (ours/diffusers, defaults) |",
            "|---|---|---|---|---|---|---|---|---|"]
    groups: dict[tuple, list[dict]] = {}
    for r in records:
        groups.setdefault((r["target"], r["solver"], r["nfe"]), []).append(r)
    for (target, solver, nfe), rs in groups.items():
        by = {(r["impl"], r.get("grid")): r for r in rs}
        ours, theirs = by[("priorkit", OUR_DEFAULT[solver])], by[("diffusers", "linspace")]
        same = by.get(("priorkit", "diffusers-linspace"))
        same_s = f"{same['error']:.2e} (diff. {abs(same['error'] - theirs['error']):.1e})" if same else "-"
        best = {impl: min((r for r in rs if r["impl"] == impl), key=lambda r: r["error"])
                for impl in ("priorkit", "diffusers")}
        rows.append(f"| {target} | {solver} | {nfe} | {ours['error']:.2e} | {theirs['error']:.2e} | {same_s} | "
                    + " | ".join(f"{best[i]['error']:.2e} ({best[i]['grid']})" for i in ("priorkit", "diffusers"))
                    + f" | {ours['seconds'] / theirs['seconds']:.2f} |")
    return "\n".join(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", type=Path, default=Path("outputs/bench/solvers.json"))
    ap.add_argument("--quick", action="store_true", help="a smaller high-dimensional target")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    records = run(args.quick, args.repeats)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(records, indent=1))
    print(table(records))
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
