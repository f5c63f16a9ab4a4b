"""ODE solvers, priorkit vs diffusers, on exact Gaussian-mixture denoisers.

    python -m benchmarks.solvers --json outputs/bench/solvers.json [--quick]

Targets: GMMs in 2 and in 3072 (= 3x32x32) dimensions, served as epsilon models on Stable Diffusion's DDPM
schedule (so diffusers' schedulers run them natively). For each solver and NFE in {4, 8, 16, 32}: the ODE
endpoint's mean L2 distance to a scipy DOP853 reference solution (rtol 1e-10), divided by the data's RMS
norm, and the wall time of the whole solve (best of 3, both implementations in the same run).
Records: {"target", "solver", "impl", "nfe", "error", "seconds"}.
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


def timed(fn, repeats: int) -> tuple[torch.Tensor, float]:  # noqa: ANN001
    best, out = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return out, best


def run(quick: bool = False, repeats: int = 3) -> list[dict]:
    import diffusers

    records = []
    for name, (gmm, batch) in targets(quick).items():
        den: Denoiser = gmm
        x = torch.randn(batch, gmm.dim, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
        t0 = time.perf_counter()
        ref = reference_solve(den, x, 1.0)
        print(f"{name}: reference solved in {time.perf_counter() - t0:.1f}s")
        scale = float(gmm.sample(4096, generator=torch.Generator().manual_seed(2)).pow(2).sum(-1).mean().sqrt())
        for solver, cls in SOLVERS.items():
            for nfe in NFES:
                steps = steps_for(solver, nfe)
                with torch.no_grad():
                    ours, t_ours = timed(partial(sample, den, x, steps=steps, solver=solver, progress=False), repeats)
                    scheduler_cls = getattr(diffusers, cls)
                    theirs, t_theirs = timed(
                        lambda c=scheduler_cls, d=den, xx=x, n=steps: diffusers_solve(d, c(**SD_CONFIG), xx, n),
                        repeats)
                for impl, out, sec in (("priorkit", ours, t_ours), ("diffusers", theirs, t_theirs)):
                    err = float((out.double() - ref).norm(dim=-1).mean()) / scale
                    records.append({"target": name, "solver": solver, "impl": impl,
                                    "nfe": solver_nfe(solver, steps), "error": err, "seconds": sec})
    return records


def table(records: list[dict]) -> str:
    rows = ["| target | solver | NFE | error priorkit | error diffusers | time ratio (ours/diffusers) |",
            "|---|---|---|---|---|---|"]
    keyed = {(r["target"], r["solver"], r["nfe"], r["impl"]): r for r in records}
    for (target, solver, nfe, impl), r in keyed.items():
        if impl != "priorkit":
            continue
        d = keyed[(target, solver, nfe, "diffusers")]
        rows.append(f"| {target} | {solver} | {nfe} | {r['error']:.2e} | {d['error']:.2e} | "
                    f"{r['seconds'] / d['seconds']:.2f} |")
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
