"""Tune a restoration method's options on training photographs (never the held-out ones) by a grid search.

    python -m benchmarks.tune_restoration --method diffpir --grid zeta=0,0.5,1 --grid lam=1,3,10 \
        --tasks sr4,deblur_gaussian --crops 3 --size 128 --json outputs/bench/tune_diffpir.json

The crops are taken as the held-out evaluation sees its photos (``benchmarks.inverse --photo-set v2``): each training
photo of set v2 (Debian's downloaded into the cache on first use) is resized so that its short side is
``--scale`` (the evaluation's centre crops of 512-px photos at 256 px: scale 256), then a fixed random
``--size`` square is cut from it. The degradations, noise and seeds are those of ``benchmarks.inverse``.

Records {"method", "task", "options", "crop", "psnr", "ssim", "seconds"} (and the classical baseline's, options
"classical", for reference); the table averages PSNR per task and option setting, best first, and names the best
setting over all tasks.
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from benchmarks.inverse import DEFAULTS, TASKS, classical, psnr, ssim, task_setup
from priorkit.distill.core.atomic import atomic_open
from priorkit.inverse.registry import DEFAULT_METHOD, get_method
from priorkit.inverse.restore import degrade, restore


def training_crops(n: int, size: int, scale: int, seed: int = 0) -> tuple[Tensor, list[str]]:
    """``n`` square crops (n, 3, size, size) in [0, 1] of distinct training photos of set v2, seen at ``scale``."""
    from priorkit.distill.zoo.debian_photos import fetch_debian_photos
    from priorkit.distill.zoo.photos import PHOTO_SETS, load_photo

    fetch_debian_photos()
    train, held = PHOTO_SETS["v2"]
    assert not set(train) & set(held), "a held-out photo is listed for training"
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(train), generator=g).tolist()
    crops, names = [], []
    for k in order[:n]:
        p = load_photo(train[k])[None]
        h, w = p.shape[-2:]
        r = scale / min(h, w)
        p = F.interpolate(p, size=(max(size, round(h * r)), max(size, round(w * r))), mode="bilinear",
                          antialias=True, align_corners=False)
        top = int(torch.randint(p.shape[-2] - size + 1, (1,), generator=g))
        left = int(torch.randint(p.shape[-1] - size + 1, (1,), generator=g))
        crops.append(p[..., top:top + size, left:left + size])
        names.append(train[k])
    return torch.cat(crops).clamp(0, 1), names


def parse_grid(items: Sequence[str]) -> dict[str, list[float]]:
    grid: dict[str, list[float]] = {}
    for item in items:
        key, sep, values = item.partition("=")
        if not sep or not key or not values:
            raise SystemExit(f"--grid expects NAME=V1,V2,...; got {item!r}")
        try:
            grid[key] = [float(v) for v in values.split(",")]
        except ValueError:
            raise SystemExit(f"--grid {key}: values must be numbers; got {values!r}") from None
    return grid


def main(argv: Sequence[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--method", default=DEFAULT_METHOD)
    ap.add_argument("--grid", action="append", default=[], metavar="NAME=V1,V2", help="a solver option's values")
    ap.add_argument("--tasks", default=",".join(TASKS))
    ap.add_argument("--crops", type=int, default=3)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--scale", type=int, default=256)
    ap.add_argument("--nfe", type=int, default=None)
    ap.add_argument("--samples", type=int, default=1, help="posterior samples averaged (restore's samples)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, default=Path("outputs/bench/tune_restoration.json"))
    args = ap.parse_args(argv)
    get_method(args.method)
    tasks = [t for t in args.tasks.split(",") if t]
    if unknown := [t for t in tasks if t not in TASKS]:
        raise SystemExit(f"unknown task(s) {', '.join(unknown)}; expected {', '.join(TASKS)}")
    torch.set_num_threads(args.threads)
    grid = parse_grid(args.grid)
    settings = [dict(zip(grid, values, strict=True)) for values in itertools.product(*grid.values())] or [{}]
    images, names = training_crops(args.crops, args.size, args.scale, args.seed)
    print(f"{len(settings)} settings x {len(tasks)} tasks x {len(names)} crops of training photos ({', '.join(names)})")
    from priorkit.distill.loading import load_denoiser

    prior = load_denoiser("photos")
    records: list[dict] = []
    for i, task in itertools.product(range(len(images)), tasks):
        image, s = images[i:i + 1], args.seed + i
        rtask, mask = task_setup(task, args.size, args.size, s)
        y, op = degrade(image, rtask, DEFAULTS.sigma_y, seed=s, mask=mask)
        base = classical(op, y, DEFAULTS.sigma_y)
        records.append({"method": "classical", "task": task, "options": "classical", "crop": i, "photo": names[i],
                        "psnr": psnr(base, image), "ssim": ssim(base, image), "seconds": 0.0})
        for opts in settings:
            t0 = time.perf_counter()
            r = restore(image, rtask, args.method, prior=prior, sigma_y=DEFAULTS.sigma_y, nfe=args.nfe, seed=s,
                        mask=mask, samples=args.samples, simulate=True, progress=False, **opts)
            rec = {"method": args.method, "task": task, "options": opts, "crop": i, "photo": names[i],
                   "psnr": psnr(r.restored, image), "ssim": ssim(r.restored, image),
                   "seconds": time.perf_counter() - t0}
            records.append(rec)
            print(f"  {task} crop {i} {opts}: PSNR {rec['psnr']:.2f} SSIM {rec['ssim']:.3f} {rec['seconds']:.1f}s",
                  flush=True)
            with atomic_open(args.json, "w") as f:
                json.dump(records, f, indent=1)
    print(table(records))
    return records


def table(records: list[dict]) -> str:
    """Mean PSNR / SSIM per (task, setting), best first per task; then the best setting over all tasks."""
    by: dict[tuple[str, str], list[dict]] = {}
    for r in records:
        by.setdefault((r["task"], json.dumps(r["options"], sort_keys=True)), []).append(r)
    rows = ["| task | options | n | PSNR | SSIM |", "|---|---|---|---|---|"]
    mean = lambda rs, k: sum(r[k] for r in rs) / len(rs)  # noqa: E731
    for task in dict.fromkeys(t for t, _ in by):
        ranked = sorted(((o, rs) for (t, o), rs in by.items() if t == task), key=lambda kv: -mean(kv[1], "psnr"))
        rows += [f"| {task} | {o} | {len(rs)} | {mean(rs, 'psnr'):.2f} | {mean(rs, 'ssim'):.3f} |" for o, rs in ranked]
    overall: dict[str, list[dict]] = {}
    for (_, o), rs in by.items():
        if o == '"classical"':
            continue
        overall.setdefault(o, []).extend(rs)
    best = max(overall, key=lambda o: mean(overall[o], "psnr"))
    rows.append(f"\nbest over all tasks: {best} (mean PSNR {mean(overall[best], 'psnr'):.2f})")
    return "\n".join(rows)


if __name__ == "__main__":
    main()
