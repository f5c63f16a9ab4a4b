"""The main job on the bundled models: ``python -m priorkit.apps.demo`` (``make demo``) writes ``outputs/index.html``.

    python -m priorkit.apps.demo [--out outputs] [--prompt "a purple torus"] [--steps N] [--quick]

1. text to 3D: SDS on the bundled camera-aware "shapes-v2" prior (``priorkit.gen3d.generate``): mesh (GLB / OBJ /
   PLY), turntable GIF and the preview images of the run;
2. restoration: held-out images (shapes-world renders with the "shapes" prior; a held-out photo, tiled, with the
   "photos" prior), for SR x4, Gaussian deblurring, half-image inpainting and 80%-random inpainting, each prior
   with the solver that restores it best in BENCHMARKS.md (``SOLVERS``): before / after pictures with PSNR;
3. fast sampling: the bundled few-step students of the "shapes" prior (``shapes-cd`` at 2 steps, ``shapes-dmd2`` at
   1 step when bundled) next to their teacher at 25 steps (time per sample); and ODE sampling of an analytic
   Gaussian mixture (Euler vs DPM-Solver++);
4. ``index.html`` that shows all of it (open it in any browser; no network needed).

``--quick`` runs every section with tiny budgets (a smoke test of the whole job, about a minute).
"""

from __future__ import annotations

import argparse
import html
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from priorkit.distill.core.gmm import GaussianMixture
from priorkit.distill.core.samplers import sample

DEFAULT_PROMPT = "a purple torus"
TASKS: tuple[tuple[str, str], ...] = (("sr4", "super-resolution x4"), ("deblur_gaussian", "Gaussian deblurring"),
                                      ("inpaint_half", "inpainting: half the image"),
                                      ("inpaint_random", "inpainting: 80% of pixels missing"))
STUDENT = "shapes-cd"
DMD_STUDENT = "shapes-dmd2"  # the one-step distribution-matching student, shown when bundled
STUDENT_PROMPTS = ["a red cube", "a blue sphere", "a green torus", "a yellow cone", "a purple cylinder"]
#: restoration solver per prior: (method, posterior samples averaged, label). On the shapes prior PiGDM averaging
#: 2 samples of 25 steps restores 1.5-7 dB better than flow PiGDM at the same 50 evaluations; on photos the default
#: method (DiffPIR, 20 steps, warm-started from the classical restoration) beats flow PiGDM and needs no backward
#: pass (BENCHMARKS.md, round 3).
SOLVERS: dict[str, tuple[str, int, str]] = {"shapes": ("pigdm", 2, "PiGDM, mean of 2 samples"),
                                            "photos": ("diffpir", 1, "DiffPIR (the default), 20 steps")}


@dataclass
class Budget:
    """Sizes of the main job (``quick``: a smoke run)."""

    steps_3d: int | None = None     # None: gen3d's default
    nfe: int = 50                   # restoration budget (model evaluations)
    photo_size: int = 128
    teacher_steps: int = 25
    samples_per_prompt: int = 8
    export_resolution: int | None = None  # None: gen3d's defaults for the mesh and the turntable
    turntable_frames: int | None = None

    @classmethod
    def quick(cls) -> Budget:
        return cls(steps_3d=8, nfe=4, photo_size=64, teacher_steps=2, samples_per_prompt=2, export_resolution=48,
                   turntable_frames=4)


@dataclass
class Page:
    """What the sections produced, for index.html (paths relative to the output folder)."""

    out: Path
    sections: list[tuple[str, str]] = field(default_factory=list)

    def rel(self, path: Path) -> str:
        return html.escape(path.relative_to(self.out).as_posix())

    def add(self, title: str, body: str) -> None:
        self.sections.append((title, body))

    def write(self, seconds: float) -> Path:
        parts = [f"<section><h2>{html.escape(t)}</h2>{b}</section>" for t, b in self.sections]
        page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>priorkit: main job</title>
<style>body{{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}}
img{{image-rendering:pixelated;max-width:100%;border:1px solid #ddd}} table{{border-collapse:collapse}}
td,th{{padding:4px 10px;border-bottom:1px solid #eee;text-align:left}} figure{{display:inline-block;margin:6px}}
figcaption{{font-size:0.85em;color:#555}} section{{margin-bottom:2.5em}}</style></head>
<body><h1>priorkit: the main job</h1>
<p>Written by <code>python -m priorkit.apps.demo</code> in {seconds:.0f} s on the bundled models. Every file is in this
folder.</p>
{''.join(parts)}
</body></html>
"""
        path = self.out / "index.html"
        tmp = path.with_suffix(".html.tmp")
        tmp.write_text(page)
        tmp.replace(path)
        return path


def _save(image: Tensor | np.ndarray, path: Path, scale: int = 1) -> Path:
    """Save a [0, 1] image (3, H, W) tensor or a uint8 (H, W, 3) array, upscaled by ``scale`` (nearest)."""
    if isinstance(image, Tensor):
        image = (image.detach().clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255).round().astype(np.uint8)
    from priorkit.apps.sampling import save_atomic

    im = Image.fromarray(image)
    if scale > 1:
        im = im.resize((im.width * scale, im.height * scale), Image.NEAREST)
    return save_atomic(im, path)


# ---------------------------------------------------------------------------------------------------------------------
# 1. text to 3D
# ---------------------------------------------------------------------------------------------------------------------


def asset_3d(page: Page, prompt: str, budget: Budget) -> None:
    """SDS on the bundled prior; the page shows the turntable, the previews and the mesh files."""
    from priorkit.gen3d.generate import DEFAULT_PRIOR, GenerateConfig, generate

    cfg = GenerateConfig()
    cfg.export_resolution = budget.export_resolution or cfg.export_resolution
    cfg.turntable_frames = budget.turntable_frames or cfg.turntable_frames
    folder = page.out / "3d"
    result = generate(prompt, "sds", DEFAULT_PRIOR, steps=budget.steps_3d, seed=0, out=folder,
                      preview_every=max(1, (budget.steps_3d or cfg.sds.steps) // 5), progress=True, config=cfg)
    paths = result.paths
    gif = paths["gif"][0]
    names = {"glb": "GLB (textured)", "obj": "OBJ", "mtl": "MTL", "texture": "PNG", "ply": "PLY (vertex colours)"}
    files = " ".join(f'<a href="{page.rel(paths[k][0])}">{v}</a>' for k, v in names.items() if paths.get(k))
    previews = "".join(f'<figure><img src="{page.rel(p)}" width="256"><figcaption>{html.escape(p.stem)}'
                       "</figcaption></figure>" for p in paths.get("previews", [])[-3:])
    mesh = result.meshes[0]
    about = (f"{len(mesh.vertices)} vertices, {len(mesh.faces)} faces" if mesh is not None
             else "no mesh (the field stayed empty)")
    page.add(f"Text to 3D: \u201c{prompt}\u201d (SDS)",
             f'<figure><img src="{page.rel(gif)}" width="256"><figcaption>turntable</figcaption></figure>'
             f"{previews}<p>Mesh: {about}; download {files or 'none'}. {len(result.history)} steps in "
             f"{result.seconds:.0f} s. Same command: <code>priorkit 3d \"{html.escape(prompt)}\" --out DIR</code></p>")
    print(f"3d: {gif} ({result.seconds:.0f} s)")


# ---------------------------------------------------------------------------------------------------------------------
# 2. restoration
# ---------------------------------------------------------------------------------------------------------------------


def _restore_one(image: Tensor, task: str, prior: Any, nfe: int | None, seed: int, method: str = "pigdm_flow",
                 samples: int = 1) -> tuple[Tensor, Tensor, float, float, Tensor, float]:
    """(degraded for display, restored, PSNR of the degraded display, PSNR of the restoration, the classical
    restoration, its PSNR) for one image; ``nfe`` model evaluations in all (``samples`` posterior samples of
    ``nfe // samples`` steps, averaged; None: the method's default)."""
    from torchmetrics.functional.image import peak_signal_noise_ratio as psnr

    from priorkit.inverse.operators import half_mask, random_mask
    from priorkit.inverse.restore import restore

    H, W = image.shape[-2:]
    kind, mask = task, None
    if task == "inpaint_half":
        kind, mask = "inpaint_mask", half_mask(H, W, "right")
    if task == "inpaint_random":
        kind, mask = "inpaint_mask", random_mask(H, W, 0.8, torch.Generator().manual_seed(seed))
    r = restore(image, kind, method, prior=prior, nfe=None if nfe is None else max(1, nfe // samples), seed=seed,
                mask=mask, samples=samples, simulate=True, progress=False)
    base = restore(image, kind, "classical", seed=seed, mask=mask, simulate=True, progress=False).restored
    score = lambda x: float(psnr(x[None], image[None], data_range=1.0))  # noqa: E731
    return r.degraded, r.restored, score(r.degraded), score(r.restored), base, score(base)


def restorations(page: Page, budget: Budget) -> None:
    """Every task on held-out shapes renders (one per task) and on one held-out photo; before / after pictures."""
    from tqdm.auto import tqdm

    from priorkit.distill.loading import load_denoiser
    from priorkit.distill.zoo.photos import held_out_images
    from priorkit.distill.zoo.shapes import held_out_renders

    renders, _, _ = held_out_renders(len(TASKS))
    photo, names = held_out_images(1, budget.photo_size)
    jobs = [("shapes", renders[i], task, label) for i, (task, label) in enumerate(TASKS)]
    jobs += [("photos", photo[0], task, label) for task, label in TASKS]
    priors = {name: load_denoiser(name) for name in ("shapes", "photos")}  # once, not per image
    rows = []
    for i, (prior, image, task, label) in enumerate(tqdm(jobs, desc="restoring")):
        t0 = time.time()
        method, samples, _ = SOLVERS[prior]
        nfe = None if method == "diffpir" else budget.nfe  # the default method at its default budget
        degraded, restored, p_in, p_out, base, p_base = _restore_one(image, task, priors[prior], nfe, seed=i,
                                                                     method=method, samples=samples)
        scale = max(1, 128 // image.shape[-1])
        strip = torch.cat([degraded, base, restored, image], dim=-1)
        png = _save(strip, page.out / "restore" / f"{prior}_{task}.png", scale)
        rows.append(f"<tr><td>{prior}</td><td>{html.escape(label)}</td><td>{SOLVERS[prior][2]}</td>"
                    f"<td>{p_in:.1f}</td><td>{p_base:.1f}</td><td><b>{p_out:.1f}</b>"
                    f"</td><td>{time.time() - t0:.1f}</td><td><img src=\"{page.rel(png)}\" height=\"128\"></td></tr>")
    page.add("Restoration (no retraining), beside the classical baseline",
             f"<p>Held-out shapes-world renders (the &ldquo;shapes&rdquo; prior, no prompt) and the held-out photo "
             f"&ldquo;{html.escape(names[0])}&rdquo; at {budget.photo_size}px (the &ldquo;photos&rdquo; prior, tiled), "
             f"measurement noise &sigma;<sub>y</sub> = 0.01; shapes: {budget.nfe} model evaluations, photos: the "
             "default method's 20. Classical: bicubic (SR), Wiener (deblurring), biharmonic (inpainting). Pictures: "
             "degraded | classical | restored | clean.</p><table><tr><th>prior</th><th>task</th><th>solver</th>"
             "<th>PSNR degraded</th><th>PSNR classical</th><th>PSNR restored"
             "</th><th>seconds</th><th></th></tr>" + "".join(rows) + "</table><p>Same on a folder of your degraded "
             "photos: <code>priorkit restore --task sr4 LOW_RES_DIR OUTPUT_DIR</code> (report.json: seconds, tiles, "
             "passes, measurement residual); on clean photos, degraded first and scored: <code>priorkit restore "
             "--task sr4 --simulate CLEAN_DIR OUTPUT_DIR</code></p>")
    print(f"restorations: {len(rows)} pictures in {page.out / 'restore'}")


# ---------------------------------------------------------------------------------------------------------------------
# 3. fast sampling
# ---------------------------------------------------------------------------------------------------------------------


def student_samples(page: Page, budget: Budget) -> None:
    """The bundled students (consistency at 2 steps, DMD2 at 1) next to their teacher at ``teacher_steps`` (a
    student that is not bundled is named and skipped)."""
    from priorkit.apps.sampling import sample_grid, sample_student_grid
    from priorkit.distill.core.loading import BUNDLED_DIR

    folder = BUNDLED_DIR / STUDENT
    n = budget.samples_per_prompt
    t0 = time.time()
    teacher = sample_grid("shapes", STUDENT_PROMPTS, n=n, steps=budget.teacher_steps, guidance=3.0, seed=0,
                          out=page.out / "samples" / "teacher.png")
    per_teacher = (time.time() - t0) / (n * len(STUDENT_PROMPTS))
    figs = (f'<figure><img src="{page.rel(teacher)}"><figcaption>teacher, DPM-Solver++ {budget.teacher_steps} '
            f"steps, CFG 3: {per_teacher:.3f} s/sample</figcaption></figure>")
    students = ((folder, 2, "student_2steps.png", "consistency-distilled student, 2 steps"),
                (BUNDLED_DIR / DMD_STUDENT, 1, "dmd2_1step.png", "DMD2 student (distribution matching), 1 step"))
    for path, steps, name, label in reversed(students):
        if not (path / "priorkit.json").is_file():
            figs += f"<p>No bundled student in {html.escape(str(path))}: not shown.</p>"
            continue
        t0 = time.time()
        grid = sample_student_grid(path, STUDENT_PROMPTS, n=n, steps=steps, seed=0, out=page.out / "samples" / name)
        per_student = (time.time() - t0) / (n * len(STUDENT_PROMPTS))
        figs = (f'<figure><img src="{page.rel(grid)}"><figcaption>{label}: {per_student:.3f} s/sample'
                "</figcaption></figure>") + figs
    gmm = gmm_demo(page.out / "samples")
    page.add("Fast sampling",
             f"<p>Rows: {', '.join(html.escape(p) for p in STUDENT_PROMPTS)}.</p>{figs}"
             f'<figure><img src="{page.rel(gmm)}" width="900"><figcaption>ODE sampling of an analytic Gaussian '
             "mixture: exact samples vs Euler and DPM-Solver++(2M)</figcaption></figure>")
    print(f"samples: {page.out / 'samples'}")


def gmm_demo(out: Path) -> Path:
    """Scatter plots: exact mixture samples vs. Euler and DPM-Solver++(2M) at 4, 8 and 16 steps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    g = torch.Generator().manual_seed(0)
    angles = torch.arange(8, dtype=torch.float64) * (2 * torch.pi / 8)
    means = 2.0 * torch.stack([angles.cos(), angles.sin()], 1)
    gmm = GaussianMixture(torch.ones(8), means, torch.full((8, 2), 0.03, dtype=torch.float64))
    exact = gmm.sample(4000, generator=g)
    noise = torch.randn(4000, 2, generator=g, dtype=torch.float64)
    fig, axes = plt.subplots(2, 4, figsize=(12, 6), dpi=90, sharex=True, sharey=True)
    for row, solver in enumerate(("euler", "dpm++2m")):
        axes[row, 0].scatter(*exact.T, s=1, c="k")
        axes[row, 0].set_title("exact samples")
        for col, steps in enumerate((4, 8, 16), start=1):
            x = sample(gmm, noise, steps=steps, solver=solver)
            axes[row, col].scatter(*x.T, s=1, c="tab:blue" if solver == "euler" else "tab:red")
            axes[row, col].set_title(f"{solver}, {steps} steps")
    for ax in axes.flat:
        ax.set_aspect("equal")
        ax.set_xlim(-3.2, 3.2)
        ax.set_ylim(-3.2, 3.2)
    fig.tight_layout()
    out.mkdir(parents=True, exist_ok=True)
    path = out / "gmm_ode_sampling.png"
    fig.savefig(path)
    plt.close(fig)
    return path


# ---------------------------------------------------------------------------------------------------------------------


def run(out: str | Path = "outputs", prompt: str = DEFAULT_PROMPT, budget: Budget | None = None) -> Path:
    """Run the three jobs into ``out`` and write ``out/index.html``; returns its path."""
    budget = budget or Budget()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    page = Page(out)
    t0 = time.time()
    asset_3d(page, prompt, budget)
    restorations(page, budget)
    student_samples(page, budget)
    path = page.write(time.time() - t0)
    (out / "demo.json").write_text(json.dumps({"prompt": prompt, "seconds": round(time.time() - t0, 1),
                                               "budget": budget.__dict__}, indent=1))
    return path


def main(argv: list[str] | None = None) -> Any:
    parser = argparse.ArgumentParser(description="priorkit's main job: a 3D asset, restorations and fast samples")
    parser.add_argument("--out", default="outputs", help="output folder (index.html goes here)")
    parser.add_argument("--prompt", default=DEFAULT_PROMPT, help="the text-to-3D prompt")
    parser.add_argument("--steps", type=int, default=None, help="SDS steps (default: gen3d's)")
    parser.add_argument("--quick", action="store_true", help="tiny budgets: a smoke run of the whole job")
    args = parser.parse_args(argv)
    if not args.prompt.strip():
        parser.error("--prompt must not be empty")
    budget = Budget.quick() if args.quick else Budget()
    if args.steps is not None:
        budget.steps_3d = args.steps
    path = run(args.out, args.prompt, budget)
    print(f"open {path.resolve()}")
    return path


if __name__ == "__main__":
    main()
