"""Fast samplers on 2D targets: every distillation method against the teacher's ODE solvers, at equal NFE.

    python -m benchmarks.samplers --json outputs/bench/samplers.json [--quick] [--targets gmm,moons]
                                  [--methods reflow,cd,ct,shortcut,progressive,guidance,dmd,dmd2,bespoke]

``--targets family`` runs the held-out Gaussian mixtures of issue 20 (ring5, ring12, ring16, grid9; fixed in
`priorkit.distill.zoo.toy.GMM_FAMILY` before any tuning), ``family2`` a second set fixed later (ring8w, ring20,
grid16), each with its exact mixture as teacher. DMD / DMD2 and
the bespoke solvers (ODE error to DOP853 at 4/6/8 NFE vs DPM-Solver++, and the gmm solvers transferred) are in
benchmarks/samplers_dmd.py; the shapes-prior scoring in benchmarks/samplers_shapes.py.

Targets: "gmm" (a ring of 8 Gaussians; its exact denoiser is the teacher), "moons" and "checkerboard" (an
MLP teacher trained by flow matching on exact samples). Students are MLPs trained by `distill`'s trainers.

Metric: the sliced 2-Wasserstein distance (512 random directions, exact 1D W2 by sorting) between 20k (``--n-eval``)
generated samples and 20k exact samples of the target ("sw2"); its noise floor (two independent exact
sample sets) is recorded as method "data". Each method at NFE 1, 2, 4, 8 where it allows (progressive
students exist at the step counts of their rounds); the teacher with Euler and DPM-Solver++(2M) at the
same NFE (the best of the "logsnr", "karras" and "time" grids, named in "detail") and at 128 NFE as the
reference. Guidance distillation is measured on "gmm" against the exact teacher's classifier-free guided
samples (128 DPM-Solver++ steps; w = 2, class 0), the CFG teacher's NFE counting both branches.

Records: {"target", "method", "nfe", "metric", "value", "train_seconds", "detail"}; a table is printed,
the goals are checked (best 1-step student below DPM-Solver++ at 4 NFE, best 2-step student below
DPM-Solver++ at 8 NFE), and a PNG of samples per target is saved next to the JSON.
With ``--shapes RUN[,RUN]`` it also scores students of the bundled "shapes" text-to-image prior trained by
``priorkit distill METHOD --teacher shapes --guidance 3 --out RUN`` (judge accuracy and seconds per sample
against the teacher; goal: a 2-step student keeps >= 0.85 judge accuracy >= 10x faster than the teacher at 25
steps). ``--shapes-bespoke 4,6,8`` fits bespoke solvers of the shapes prior at CFG 3 and scores their error to the
guided ODE's solution against DPM-Solver++ at the same NFE, at CFG 3 and moved to CFG 2
(benchmarks.samplers_shapes.run_shapes_bespoke). ``--targets none`` skips the 2D targets.
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from benchmarks.samplers_common import METRIC, NFES, REFERENCE_NFE, SPACINGS, record, train_cfg  # noqa: F401
from benchmarks.samplers_dmd import bespoke_ratios, plot_limit, run_bespoke, run_dmd
from benchmarks.samplers_shapes import HELD_OUT_SEED, SHAPES_TEACHER_STEPS, run_shapes, run_shapes_bespoke, shapes_goals  # noqa: F401
from priorkit.distill.core.denoiser import Denoiser
from priorkit.distill.core.samplers import initial_noise, sample
from priorkit.distill.core.samplers.ddim import ddim_sample
from priorkit.distill.students import consistency as cm
from priorkit.distill.students import guidance_distill as gd
from priorkit.distill.students import progressive as pd
from priorkit.distill.students import reflow as rf
from priorkit.distill.students import shortcut as sc
from priorkit.distill.students.format import load_student, read_meta
from priorkit.distill.students.registry import METHODS, start_time
from priorkit.distill.students.runner import make_student, student_sampler
from priorkit.distill.zoo.toy import (
    ALL_TARGETS,
    FAMILY_SETS,
    TARGETS,
    TeacherConfig,
    conditional_gmm_target,
    exact_target,
    sample_target,
    sliced_w2,
    target_data,
    train_teacher,
)


# ---- settings ------------------------------------------------------------------------------------
def settings(quick: bool) -> dict[str, Any]:
    """Training lengths: full (minutes per student on one CPU thread) or quick (a smoke run)."""
    if quick:
        return {"n_eval": 4000, "teacher": 300, "steps": 150, "pairs": 4000, "pd_start": 8, "pd_steps": 60,
                "gd_start": 4, "batch": 256}
    return {"n_eval": 20000, "teacher": 4000, "steps": 3000, "pairs": 40000, "pd_start": 32, "pd_steps": 1200,
            "gd_start": 16, "batch": 512}


# ---- evaluation ----------------------------------------------------------------------------------
@torch.no_grad()
def teacher_baselines(name: str, teacher: Denoiser, ref: Tensor, n: int, seed: int,
                      reference: bool = True) -> tuple[list, dict]:
    """Euler and DPM-Solver++ at NFES and (``reference``) at the reference NFE, each on its best time grid."""
    records, shown = [], {}
    noise = initial_noise(teacher, (n, 2), generator=torch.Generator().manual_seed(seed))
    for solver in ("euler", "dpm++2m"):
        for nfe in (*NFES, *((REFERENCE_NFE,) if reference else ())):
            best = (math.inf, "", None)
            for spacing in SPACINGS:
                x = sample(teacher, noise.to(_dtype(teacher)), steps=nfe, solver=solver, spacing=spacing).float()
                value = sliced_w2(x, ref)
                if value < best[0]:
                    best = (value, spacing, x)
            records.append(record(name, f"teacher-{solver}", nfe, best[0], None, best[1]))
            if nfe in NFES:
                shown[(f"teacher-{solver}", nfe)] = best[2]
    return records, shown


def _dtype(den: Denoiser) -> torch.dtype:
    buffers = list(den.buffers()) + list(den.parameters())
    return buffers[0].dtype if buffers else torch.float32


@torch.no_grad()
def evaluate_student(name: str, method: str, student: Denoiser, meta: dict[str, Any], ref: Tensor, n: int,
                     nfes: tuple[int, ...], seconds: float | None, seed: int) -> tuple[list, dict]:
    """Sliced W2 of n samples of a saved student at each NFE (seconds: its training time, None when reused)."""
    run = student_sampler(meta)
    records, shown = [], {}
    for nfe in nfes:
        g = torch.Generator().manual_seed(seed)
        noise = initial_noise(student, (n, 2), t_max=start_time(student, meta), generator=g)
        x = run(student, noise, nfe, None, g).float()
        records.append(record(name, method, nfe, sliced_w2(x, ref), seconds, meta.get("sampler", "")))
        shown[(method, nfe)] = x
    return records, shown


# ---- one target ----------------------------------------------------------------------------------
def run_target(name: str, methods: list[str], s: dict[str, Any], work: Path, seed: int = 0) -> tuple[list, dict]:
    """Train the teacher (if any) and every student on one target; returns (records, samples to plot)."""
    n = s["n_eval"]
    ref = sample_target(name, n, torch.Generator().manual_seed(1))
    records = [record(name, "data", 0, sliced_w2(sample_target(name, n, torch.Generator().manual_seed(2)), ref),
                      None, "noise floor")]
    shown: dict = {("data", 0): ref}
    t0 = time.time()
    backbone = train_teacher(name, s["teacher"], config=TeacherConfig(), out=work / "teacher",
                             resume=(work / "teacher" / "checkpoint").is_dir())  # reused with --work
    teacher_seconds = time.time() - t0
    exact = exact_target(name)  # the mixtures (gmm and the held-out family) are their own exact teachers
    teacher: Denoiser = exact.float() if exact is not None else backbone
    rec, sh = teacher_baselines(name, teacher, ref, n, seed + 5, reference=s.get("reference", True))
    for r in rec:
        r["train_seconds"] = None if name == "gmm" or s.get("reuse") else round(teacher_seconds, 1)
    records += rec
    shown.update(sh)
    data = target_data(name)
    steps, batch = s["steps"], s["batch"]
    for method in methods:
        if method == "guidance":
            continue
        if method in ("dmd", "dmd2"):
            rec, sh = run_dmd(name, method, teacher, make_student(method, teacher, backbone), data, s, work / method,
                              ref, seed)
            records += rec
            shown.update(sh)
            continue
        if method == "bespoke":  # on the exact teacher where there is one; the gmm solvers transferred to others
            gmm_files = {k: p for k in (4, 6, 8) if (p := work.parent / "gmm" / "bespoke" / f"nfe_{k}"
                                                     / "bespoke.json").is_file()}
            rec, _, _ = run_bespoke(name, teacher, s, work / "bespoke", ref, seed,
                                    transfer=gmm_files if name != "gmm" else None)
            records += rec
            continue
        folder = work / method
        student = make_student(method, teacher, backbone)
        t0 = time.time()
        reuse = s.get("reuse", False)
        if reuse:
            last = folder / {"reflow": "one_step", "progressive": "steps_1"}.get(method, "") / "student"
            if not last.is_dir():
                raise SystemExit(f"--reuse: no trained {method} student in {folder} (expected {last})")
            print(f"{name} {method}: scoring the student already in {folder} (--reuse)", flush=True)
        if method == "reflow":
            cfg = rf.ReflowConfig(pairs=s["pairs"], batch=batch, train=train_cfg(steps), one_step_steps=steps // 2)
            if not reuse:
                rf.reflow(teacher, student, folder, cfg)
            seconds = None if reuse else time.time() - t0
            for sub, label in ((folder / "round_1" / "student", "reflow"), (folder / "one_step" / "student",
                                                                            "reflow+1step")):
                rec, sh = evaluate_student(name, label, load_student(sub), read_meta(sub), ref, n, NFES, seconds, seed)
                records += rec
                shown.update(sh)
            continue
        if reuse:
            pass  # trained by an earlier run: scored below
        elif method in ("cd", "ct"):
            cfg = cm.ConsistencyConfig(sigma_data=1.0, batch=batch, train=train_cfg(steps if method == "cd"
                                                                                     else 2 * steps))
            if method == "cd":
                cm.consistency_distill(teacher, student, data, folder, cfg)
            else:
                cm.consistency_training(student, data, folder, replace(cfg, s1=min(cfg.s1, 80)))
        elif method == "shortcut":
            sc.shortcut_train(student, data, folder, sc.ShortcutConfig(batch=batch, train=train_cfg(steps)),
                              teacher=teacher)
        elif method == "progressive":
            cfg = pd.ProgressiveConfig(start_steps=s["pd_start"], end_steps=1, batch=batch,
                                       train=train_cfg(s["pd_steps"]))
            pd.progressive_distill(teacher, student, data, folder, cfg)
        else:
            raise ValueError(f"unknown method {method!r}")
        seconds = None if reuse else time.time() - t0
        if method == "progressive":  # one student per round, each scored at its own step count
            for k in NFES:
                sub = folder / f"steps_{k}" / "student"
                if sub.is_dir():
                    rec, sh = evaluate_student(name, method, load_student(sub), read_meta(sub), ref, n, (k,),
                                               seconds, seed)
                    records += rec
                    shown.update(sh)
            continue
        sub = folder / "student"
        rec, sh = evaluate_student(name, method, load_student(sub), read_meta(sub), ref, n, NFES, seconds, seed)
        records += rec
        shown.update(sh)
    if "guidance" in methods and name == "gmm":
        records += run_guidance(s, work / "guidance", seed)
    return records, shown


def run_guidance(s: dict[str, Any], folder: Path, seed: int, w: float = 2.0, label: int = 0) -> list[dict]:
    """Guidance distillation on the class-conditional ring: students vs the exact CFG teacher (w, class)."""
    teacher = conditional_gmm_target().float()
    target = f"gmm|class{label},w={w:g}"
    n = s["n_eval"]
    labels = torch.full((n,), label)
    noise = initial_noise(teacher, (n, 2), generator=torch.Generator().manual_seed(seed + 7))
    ref = sample(teacher, initial_noise(teacher, (n, 2), generator=torch.Generator().manual_seed(seed + 8)),
                 steps=REFERENCE_NFE, cond=labels, guidance=w).float()
    records = []
    for steps in (1, 2, 4):  # the CFG teacher: two evaluations per step
        best = min((sliced_w2(sample(teacher, noise, steps=steps, cond=labels, guidance=w, spacing=sp).float(),
                              ref), sp) for sp in SPACINGS)
        records.append(record(target, "teacher-dpm++2m-cfg", 2 * steps, best[0], None, best[1]))
    student = make_student("guidance", teacher)
    cfg = gd.GuidanceDistillConfig(batch=s["batch"], stage1=train_cfg(s["steps"]),
                                   stage2=pd.ProgressiveConfig(start_steps=s["gd_start"], end_steps=1,
                                                               batch=s["batch"], train=train_cfg(s["pd_steps"])))
    t0 = time.time()
    gd.guidance_distill(teacher, student, target_data("gmm", conditional=True), folder, cfg)
    seconds = time.time() - t0
    cond = {"class": labels, "w": w}
    stage1 = load_student(folder / "stage1" / "student")
    for steps in (2, 4, 8):
        x = sample(stage1, noise, steps=steps, cond=cond).float()
        records.append(record(target, "guidance-stage1", steps, sliced_w2(x, ref), seconds, "dpm++2m"))
    for k in NFES:
        sub = folder / "stage2" / f"steps_{k}" / "student"
        if sub.is_dir():
            x = ddim_sample(load_student(sub), noise, pd.student_grid(teacher.schedule, k, s["gd_start"]), cond=cond)
            records.append(record(target, "guidance", k, sliced_w2(x.float(), ref), seconds, "ddim"))
    return records


# ---- report --------------------------------------------------------------------------------------
def table(records: list[dict]) -> str:
    lines = []
    for target, metric in dict.fromkeys((r["target"], r["metric"]) for r in records):
        rows = [r for r in records if r["target"] == target and r["metric"] == metric]
        nfes = sorted({r["nfe"] for r in rows})
        better = "higher" if metric == "judge_accuracy" else "lower"
        lines.append(f"\n{target}  ({metric}, {better} is better)")
        lines.append(f"{'method':24s}" + "".join(f"{'NFE ' + str(k):>10s}" for k in nfes) + f"{'train s':>10s}")
        for method in dict.fromkeys(r["method"] for r in rows):
            cells = {r["nfe"]: r["value"] for r in rows if r["method"] == method}
            secs = next((r["train_seconds"] for r in rows if r["method"] == method), None)
            lines.append(f"{method:24s}" + "".join(f"{cells[k]:10.4f}" if k in cells else f"{'':10s}" for k in nfes)
                         + (f"{secs:10.0f}" if secs is not None else f"{'':10s}"))
    return "\n".join(lines)


def goals(records: list[dict]) -> list[str]:
    """Best 1-step student < DPM-Solver++ at 4 NFE; best 2-step student < DPM-Solver++ at 8 NFE (per target);
    a DMD student at 1 step below every other 1-step student and below DPM-Solver++ at 8 NFE."""
    out = []
    for target in ALL_TARGETS:
        rows = [r for r in records if r["target"] == target and r["metric"] == METRIC]
        if not rows:
            continue
        dpm = {r["nfe"]: r["value"] for r in rows if r["method"] == "teacher-dpm++2m"}
        students = [r for r in rows if not r["method"].startswith(("teacher", "data"))]
        for k, ref_nfe in ((1, 4), (2, 8)):
            cands = [r for r in students if r["nfe"] == k]
            if not cands or ref_nfe not in dpm:
                continue
            best = min(cands, key=lambda r: r["value"])
            ok = best["value"] < dpm[ref_nfe]
            out.append(f"{target}: best {k}-step student {best['method']} {best['value']:.4f} "
                       f"{'<' if ok else '>='} DPM-Solver++ at {ref_nfe} NFE {dpm[ref_nfe]:.4f}  "
                       f"[{'met' if ok else 'NOT met'}]")
        others = [r["value"] for r in students if r["nfe"] == 1 and not r["method"].startswith(("dmd", "bespoke"))]
        for r in (r for r in students if r["nfe"] == 1 and r["method"] in ("dmd", "dmd2")):
            bar = min(others + [dpm.get(8, float("inf"))])
            out.append(f"{target}: 1-step {r['method']} {r['value']:.4f} vs best other 1-step student / DPM-Solver++ "
                       f"at 8 NFE {bar:.4f}  [{'met' if r['value'] < bar else 'NOT met'}]")
    return out


def plot(shown: dict, target: str, path: Path, n_points: int = 2000) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = list(dict.fromkeys(m for m, _ in shown if m != "data"))
    fig, axes = plt.subplots(len(methods) + 1, len(NFES), figsize=(2.2 * len(NFES), 2.2 * (len(methods) + 1)),
                             squeeze=False)
    lim = plot_limit(shown[("data", 0)])
    for ax in axes.ravel():
        ax.set_xlim(-lim, lim)
        ax.set_ylim(-lim, lim)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_aspect("equal")
    data = shown[("data", 0)][:n_points]
    axes[0, 0].scatter(data[:, 0], data[:, 1], s=0.5, c="k")
    axes[0, 0].set_title("data", fontsize=8)
    for ax in axes[0, 1:]:
        ax.axis("off")
    for i, method in enumerate(methods, start=1):
        for j, k in enumerate(NFES):
            ax = axes[i, j]
            if (method, k) in shown:
                x = shown[(method, k)][:n_points]
                ax.scatter(x[:, 0].clamp(-lim, lim), x[:, 1].clamp(-lim, lim), s=0.5, c="C0")
            ax.set_title(f"{method}, NFE {k}", fontsize=7)
    fig.suptitle(target)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", required=True, type=Path, help="where to write the records")
    parser.add_argument("--quick", action="store_true", help="short trainings and 4k samples (a smoke run)")
    parser.add_argument("--targets", default=",".join(TARGETS),
                        help=f"comma-separated subset of {ALL_TARGETS}; 'family' / 'family2' = the held-out mixtures "
                             f"{FAMILY_SETS['family']} / {FAMILY_SETS['family2']}")
    parser.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated subset of {tuple(METHODS)}")
    parser.add_argument("--work", type=Path, default=None, help="folder for checkpoints (default: a temp folder)")
    parser.add_argument("--shapes", default="", help="comma-separated run folders of shapes-prior students")
    parser.add_argument("--shapes-bespoke", default="", help="comma-separated NFEs: fit bespoke solvers of the "
                        "shapes prior at CFG 3 and score their ODE error against DPM-Solver++ (and at CFG 2)")
    parser.add_argument("--shapes-per-prompt", type=int, default=4,
                        help="--shapes: images per shape x colour caption (8 for a 320-image Frechet distance)")
    parser.add_argument("--shapes-guidance", type=float, default=3.0,
                        help="--shapes: the CFG scale of the teacher's baseline rows (3, the prior's default)")
    parser.add_argument("--shapes-held-out-seed", type=int, default=HELD_OUT_SEED,
                        help="--shapes: seed of the held-out renders the Frechet distance compares with (another "
                             "than the default is a fresh set, to check a choice made on the default's)")
    parser.add_argument("--n-eval", type=int, default=None,
                        help="samples on each side of every sliced W2 (default 20000; --quick 4000): more lowers the "
                             "noise floor (the 'data' row) where methods differ by less than it")
    parser.add_argument("--reuse", action="store_true",
                        help="score the students already trained in --work instead of training them again (train "
                             "seconds then null; a missing student is an error): e.g. at another --n-eval")
    parser.add_argument("--no-reference", action="store_true",
                        help=f"skip the teacher's {REFERENCE_NFE}-NFE rows (most of the cost of a large --n-eval with"
                             " an MLP teacher; the goals do not use them)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    targets = [u for t in args.targets.split(",") if t and t != "none" for u in FAMILY_SETS.get(t, (t,))]
    methods = [m for m in args.methods.split(",") if m]
    for t in targets:
        if t not in ALL_TARGETS:
            parser.error(f"unknown target {t!r}")
    for m in methods:
        if m not in METHODS:
            parser.error(f"unknown method {m!r}")
    s = settings(args.quick)
    if args.n_eval is not None:
        if args.n_eval < 100:
            parser.error(f"--n-eval must be >= 100; got {args.n_eval}")
        s["n_eval"] = args.n_eval
    if args.reuse and args.work is None:
        parser.error("--reuse needs --work (the folder the students were trained in)")
    if args.reuse and (fresh := [m for m in methods if m in ("bespoke", "guidance")]):
        parser.error(f"--reuse scores saved students; {', '.join(fresh)} cannot be reused (run without --reuse)")
    s["reuse"], s["reference"] = args.reuse, not args.no_reference
    args.json.parent.mkdir(parents=True, exist_ok=True)
    records: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        for target in targets:
            recs, shown = run_target(target, methods, s, work / target, args.seed)
            records += recs
            png = args.json.with_name(f"{args.json.stem}_{target}.png")
            plot(shown, target, png)
            args.json.write_text(json.dumps(records, indent=1))  # partial results survive a crash
            print(f"{target}: done; samples in {png}", flush=True)
    runs = [Path(r) for r in args.shapes.split(",") if r]
    if runs:
        records += run_shapes(runs, seed=args.seed, n_per_prompt=args.shapes_per_prompt, guidance=args.shapes_guidance,
                              held_out_seed=args.shapes_held_out_seed)
    if args.shapes_bespoke:
        with tempfile.TemporaryDirectory() as tmp:
            records += run_shapes_bespoke(args.work or Path(tmp) / "shapes-bespoke",
                                          tuple(int(k) for k in args.shapes_bespoke.split(",")), seed=args.seed)
    args.json.write_text(json.dumps(records, indent=1))
    print(table(records))
    for line in goals(records) + bespoke_ratios(records) + shapes_goals(records):
        print(line)


if __name__ == "__main__":
    main()
