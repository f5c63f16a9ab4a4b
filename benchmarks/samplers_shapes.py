"""benchmarks.samplers, the shapes prior: students of the bundled text-to-image prior scored by the judge."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from benchmarks.samplers_common import record
from priorkit.distill.core.samplers import initial_noise, sample
from priorkit.distill.students.format import load_student, read_meta
from priorkit.distill.students.registry import start_time
from priorkit.distill.students.runner import student_sampler

# ---- the shapes prior ---------------------------------------------------------------------------------
SHAPES_TEACHER_STEPS = 25
HELD_OUT_SEED = 5  # the held-out renders the Frechet distance compares with (fixed before any student was scored)


def run_shapes(runs: list[Path | str], *, teacher_path: str = "shapes", nfes: tuple[int, ...] = (1, 2, 4),
               guidance: float = 3.0, n_per_prompt: int = 4, seed: int = 0,
               teacher_steps: int = SHAPES_TEACHER_STEPS, held_out_seed: int = HELD_OUT_SEED) -> list[dict]:
    """Score students of the shapes text-to-image prior: run folders of ``priorkit distill ... --teacher shapes``,
    student folders, or bundled names ("shapes-cd").

    For every shape x colour caption, ``n_per_prompt`` images per student and NFE (the same noise for all);
    metrics "judge_accuracy" (the judge names both shape and colour), "seconds_per_sample" (wall time of the whole
    batch / its size, this process's threads) and "fid_judge" (judge-feature Frechet distance of the batch to as many
    held-out renders of the shapes world, ``shapes.held_out_renders``, seed ``held_out_seed``: fixed; another seed is a
    fresh set for a check of a choice made on the fixed one). Baselines: the teacher with
    DPM-Solver++(2M) and CFG ``guidance`` at ``nfes`` steps and at ``teacher_steps`` (NFE counts both CFG branches).
    A student's ``train_seconds`` comes from its run's distill.json.
    """
    from priorkit.distill.loading import load_denoiser
    from priorkit.distill.students.runner import final_folder
    from priorkit.distill.zoo import shapes
    from priorkit.distill.zoo.judge import frechet_distance, judge_features, load_judge

    judge = load_judge()
    teacher = load_denoiser(teacher_path).eval()
    colours = list(shapes.COLOURS)
    pairs = [(si, ci) for si in range(len(shapes.SHAPES)) for ci in range(len(colours))]
    prompts = [shapes.caption(shapes.SHAPES[si], colours[ci]) for si, ci in pairs for _ in range(n_per_prompt)]
    shape_idx = torch.tensor([si for si, _ in pairs for _ in range(n_per_prompt)])
    colour_idx = torch.tensor([ci for _, ci in pairs for _ in range(n_per_prompt)])
    cond = teacher.encode(prompts)
    n = len(prompts)

    real = judge_features(judge, shapes.held_out_renders(n, seed=held_out_seed)[0])

    def score(images: Tensor) -> float:
        return judge.accuracy(((images.clamp(-1, 1) + 1) / 2).float(), shape_idx, colour_idx)

    def fid(images: Tensor) -> float:
        return frechet_distance(judge_features(judge, ((images.clamp(-1, 1) + 1) / 2).float()), real)

    def timed(fn: Any, *args: Any, **kwargs: Any) -> tuple[Tensor, float]:
        t0 = time.perf_counter()
        with torch.no_grad():
            x = fn(*args, **kwargs)
        return x, (time.perf_counter() - t0) / n

    records = []
    noise = initial_noise(teacher, (n, *teacher.sample_shape), generator=torch.Generator().manual_seed(seed))
    big = n >= 1000  # a large evaluation: the teacher's rows take minutes per step, so show each step
    for nfe in (*nfes, teacher_steps):
        print(f"shapes: teacher, CFG {guidance:g}, {nfe} steps on {n} images", flush=True)
        x, sec = timed(sample, teacher, noise, steps=nfe, cond=cond, guidance=guidance, progress=True if big else None)
        detail = f"cfg {guidance:g}, {nfe} steps"
        records.append(record("shapes", "teacher-dpm++2m", 2 * nfe, score(x), None, detail, "judge_accuracy"))
        records.append(record("shapes", "teacher-dpm++2m", 2 * nfe, sec, None, detail, "seconds_per_sample"))
        records.append(record("shapes", "teacher-dpm++2m", 2 * nfe, fid(x), None, detail, "fid_judge"))
    from priorkit.distill.core.loading import BUNDLED, BUNDLED_DIR
    from priorkit.distill.students.format import is_student_folder

    seen: set[str] = set()
    for source in runs:
        run = BUNDLED_DIR / str(source) if str(source) in BUNDLED else Path(source)
        info = json.loads((run / "distill.json").read_text()) if (run / "distill.json").is_file() else {}
        if is_student_folder(run):  # a student folder itself (e.g. a bundled one): its meta has the facts
            folder = Path(run)
            info = {"seconds": read_meta(folder).get("train_seconds"), **info}
        else:
            folder = Path(info["student"]) if info.get("student") else final_folder("", run)
        student, meta = load_student(folder), read_meta(folder)
        method = info.get("method", meta.get("method", run.name))
        label = f"{method}:{run.name}" if method in seen else method  # two runs of one method: their own rows
        seen.add(method)
        sampler = student_sampler(meta)
        c = {"text": cond, "w": guidance} if method == "guidance" else cond
        for nfe in nfes:
            if meta.get("start_steps") and meta.get("steps") and nfe != meta["steps"]:
                continue  # a progressive student samples at its own step count only
            z = initial_noise(student, (n, *student.sample_shape), t_max=start_time(student, meta),
                              generator=torch.Generator().manual_seed(seed))
            gg = torch.Generator().manual_seed(seed + 1)
            x, sec = timed(sampler, student, z, nfe, c, gg)
            train = info.get("seconds")
            records.append(record("shapes", label, nfe, score(x), train, meta.get("sampler", ""), "judge_accuracy"))
            records.append(record("shapes", label, nfe, sec, train, meta.get("sampler", ""), "seconds_per_sample"))
            records.append(record("shapes", label, nfe, fid(x), train, meta.get("sampler", ""), "fid_judge"))
    return records


def shapes_goals(records: list[dict], teacher_steps: int = SHAPES_TEACHER_STEPS) -> list[str]:
    """A 2-step student keeps >= 0.85 judge accuracy at >= 10x fewer seconds per sample than the teacher at 25."""
    rows = [r for r in records if r["target"] == "shapes"]
    ref = [r for r in rows if r["method"] == "teacher-dpm++2m" and r["nfe"] == 2 * teacher_steps]
    if not ref:
        return []
    acc_t = next(r["value"] for r in ref if r["metric"] == "judge_accuracy")
    sec_t = next(r["value"] for r in ref if r["metric"] == "seconds_per_sample")
    out = [f"shapes: teacher at {teacher_steps} steps: judge {acc_t:.3f}, {sec_t:.4f} s/sample"]
    for r in rows:
        if r["nfe"] == 2 and r["metric"] == "judge_accuracy" and not r["method"].startswith("teacher"):
            sec = next(q["value"] for q in rows if q["method"] == r["method"] and q["nfe"] == 2
                       and q["metric"] == "seconds_per_sample")
            speed = sec_t / max(sec, 1e-12)
            ok = r["value"] >= 0.85 and speed >= 10
            out.append(f"shapes: 2-step {r['method']}: judge {r['value']:.3f}, {speed:.1f}x faster than the teacher "
                       f"at {teacher_steps} steps  [{'met' if ok else 'NOT met'}]")
    fid_t = [r["value"] for r in ref if r["metric"] == "fid_judge"]
    for r in rows:  # issue 20: a one-step DMD student at or below the teacher's Frechet distance, judge >= 0.99
        if r["nfe"] == 1 and r["metric"] == "fid_judge" and r["method"].split(":")[0] in ("dmd", "dmd2") and fid_t:
            acc = next(q["value"] for q in rows if q["method"] == r["method"] and q["nfe"] == 1
                       and q["metric"] == "judge_accuracy")
            ok = r["value"] <= fid_t[0] and acc >= 0.99
            out.append(f"shapes: 1-step {r['method']}: FID {r['value']:.3f} (teacher at {teacher_steps} steps "
                       f"{fid_t[0]:.3f}), judge {acc:.3f}  [{'met' if ok else 'NOT met'}]")
    return out


def run_shapes_bespoke(work: Path, nfes: tuple[int, ...] = (4, 6, 8), *, guidance: float = 3.0,
                       transfer_guidance: float = 2.0, teacher_path: str = "shapes", seed: int = 0,
                       ref_steps: int = 256) -> list[dict]:
    """Bespoke solvers of the shapes prior against DPM-Solver++(2M) at the same number of guided evaluations.

    Each solver is trained as ``priorkit distill bespoke --teacher shapes --guidance G --nfe K`` does (the method's
    image preset; ``train_seconds`` its wall time). On one held-out noise per basic prompt (40, seed fixed): metric
    "ode_rmse", the per-sample RMSE to the guided probability-flow ODE's solution, and "judge_accuracy". The
    solution is DPM-Solver++(2M) at ``ref_steps``: a DOP853 solve (benchmarks.reference_ode) costs 1500-2300 guided
    evaluations here, and on 4 noises at CFG 3 DPM-Solver++ at 128 steps is already within 0.0011 of it (at 4 and 8
    steps 0.27 and 0.21; measured 2026-12-05), so 256 steps are exact to well below every error compared.
    Target "shapes-cfg{G}" for the training scale and "shapes-cfg{G'}" for ``transfer_guidance``,
    where the same solvers run as "bespoke-from-cfg{G}" (a solver moved to another scale).
    DPM-Solver++ takes the best of the benchmark's time grids (SPACINGS) per NFE, as on the 2D targets.
    """
    from benchmarks.samplers_dmd import _best_dpm
    from priorkit.distill.loading import load_denoiser
    from priorkit.distill.students.bespoke import rmse
    from priorkit.distill.students.runner import distill
    from priorkit.distill.zoo import shapes
    from priorkit.distill.zoo.judge import load_judge

    teacher, judge = load_denoiser(teacher_path).eval(), load_judge()
    pairs = [(si, ci) for si in range(len(shapes.SHAPES)) for ci in range(len(shapes.COLOUR_NAMES))]
    cond = teacher.encode([shapes.caption(shapes.SHAPES[si], shapes.COLOUR_NAMES[ci]) for si, ci in pairs])
    labels = (torch.tensor([si for si, _ in pairs]), torch.tensor([ci for _, ci in pairs]))
    noise = initial_noise(teacher, (len(pairs), *teacher.sample_shape), generator=torch.Generator().manual_seed(
        seed + 11))
    exact = {}
    for g in (guidance, transfer_guidance):
        t0 = time.perf_counter()
        with torch.no_grad():
            exact[g] = sample(teacher, noise, steps=ref_steps, cond=cond, guidance=g, progress=False).float()
        print(f"shapes: reference solve at CFG {g:g} ({ref_steps} steps) in {time.perf_counter() - t0:.0f} s",
              flush=True)

    def score(x: Tensor) -> float:
        return judge.accuracy(((x.clamp(-1, 1) + 1) / 2).float(), *labels)

    records = []
    for nfe in nfes:
        t0 = time.perf_counter()
        shutil.rmtree(work / f"nfe_{nfe}", ignore_errors=True)  # trained afresh each run (distill keeps old runs)
        distill("bespoke", teacher_path, work / f"nfe_{nfe}", guidance=guidance, nfe=nfe, n_data=512, seed=seed)
        seconds = time.perf_counter() - t0
        solver = next((work / f"nfe_{nfe}").rglob("bespoke.json"))
        for g in (guidance, transfer_guidance):
            target = f"shapes-cfg{g:g}"
            with torch.no_grad():
                dpm, spacing = _best_dpm(teacher, noise, nfe, exact[g].double(), cond=cond, guidance=g,
                                         progress=False)
                xb = sample(teacher, noise, solver=f"bespoke:{solver}", cond=cond, guidance=g, progress=False)
            best = (float(rmse(dpm.float(), exact[g])), spacing, dpm)
            label = "bespoke" if g == guidance else f"bespoke-from-cfg{guidance:g}"
            records += [record(target, "teacher-dpm++2m", nfe, best[0], None, best[1], "ode_rmse"),
                        record(target, "teacher-dpm++2m", nfe, score(best[2]), None, best[1], "judge_accuracy"),
                        record(target, label, nfe, float(rmse(xb.float(), exact[g])), seconds, "rk2", "ode_rmse"),
                        record(target, label, nfe, score(xb), seconds, "rk2", "judge_accuracy")]
            print(f"{target} {nfe} NFE: ODE error bespoke {records[-2]['value']:.4f} vs DPM-Solver++ "
                  f"{best[0]:.4f} ({best[1]}); judge {records[-1]['value']:.3f} vs {records[-3]['value']:.3f}; "
                  f"fitted in {seconds:.0f} s", flush=True)
    return records
