"""The restoration front door: degrade, restore, and batch-restore folders (resumable, shardable across processes).

``restore(image, task, method)`` simulates a degradation of a clean image (or, with ``observed=True``, takes the image
as the measurement itself), builds the operator and the model-range measurement, tiles the prior when the image is
larger than it (`TiledDenoiser`), runs a solver, and returns the restored image in [0, 1] with the degraded observation
for display. ``restore_folder`` does this for every image of a folder with a JSON report.

Tasks: inpaint_box, inpaint_random, inpaint_mask, deblur_gaussian, deblur_motion, sr2, sr4, sr8.
Methods: pinv (A^+ y, no prior), pigdm, pigdm_flow, dps, dflow.
"""

from __future__ import annotations

import functools
import json
import os
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.nn import functional as F
from tqdm.auto import tqdm

from priorkit.distill.core.atomic import atomic_open
from priorkit.distill.core.denoiser import Condition, Denoiser
from priorkit.inverse.dflow import CountingDenoiser, dflow
from priorkit.inverse.dps import dps
from priorkit.inverse.operators import (
    Blur,
    Downsampling,
    Inpainting,
    Measurement,
    Operator,
    box_mask,
    gaussian_kernel,
    mask_from_image,
    motion_kernel,
    random_mask,
    to_image_range,
)
from priorkit.inverse.pigdm import pigdm, pigdm_flow
from priorkit.inverse.tiling import CropOperator, TiledDenoiser, from_rgb, to_rgb

__all__ = ["TASKS", "METHODS", "RestoreDefaults", "Restoration", "build_operator", "degrade", "restore",
           "restore_folder", "load_image", "save_image", "merge_reports", "IMAGE_SUFFIXES"]

TASKS: tuple[str, ...] = ("inpaint_box", "inpaint_random", "inpaint_mask", "deblur_gaussian", "deblur_motion",
                          "sr2", "sr4", "sr8")
METHODS: tuple[str, ...] = ("pinv", "pigdm", "pigdm_flow", "dps", "dflow")
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".gif"}


@dataclass
class RestoreDefaults:
    """Degradations and solver budgets of the front door (model evaluations per method; D-Flow: total passes)."""

    sigma_y: float = 0.01
    random_missing: float = 0.7
    blur_sigma: float = 2.0
    motion_size: int = 9
    motion_angle: float = 30.0
    sr_kind: str = "bicubic"
    overlap: int = 16
    max_batch: int = 16
    nfe: dict[str, int | None] = field(default_factory=lambda: {"pigdm": 100, "pigdm_flow": 80, "dps": 1000,
                                                                 "dflow": None})


DEFAULTS = RestoreDefaults()


@dataclass
class Restoration:
    """What :func:`restore` returns; images in [0, 1], shaped like the input ((C, H, W) or (B, C, H, W)).

    ``degraded`` is the observation for display (same size as ``restored``: low-res inputs nearest-upsampled);
    ``measurement`` the raw image-range measurement; ``nfe`` model evaluations + backward passes spent.
    """

    restored: Tensor
    degraded: Tensor
    measurement: Tensor
    operator: Operator
    nfe: int
    seconds: float


# ----------------------------------------------------------------------------------------------------------------------
# Operators and degradations
# ----------------------------------------------------------------------------------------------------------------------


def _check_task(task: str) -> None:
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; expected one of {', '.join(TASKS)}")


def sr_factor(task: str) -> int:
    """2, 4 or 8 for "sr2", "sr4", "sr8"; 1 otherwise."""
    return int(task[2:]) if task.startswith("sr") else 1


def build_operator(task: str, H: int, W: int, *, seed: int = 0, mask: Tensor | str | Path | None = None,
                   defaults: RestoreDefaults = DEFAULTS) -> Operator:
    """The operator of ``task`` on (H, W) images (H, W: the clean/high-resolution size).

    inpaint_box: centred box of half the size; inpaint_random: ``random_missing`` of the pixels (seeded);
    inpaint_mask: ``mask`` (tensor (H, W) / (1, 1, H, W) of 0/1, or an image file, white = keep);
    deblur_gaussian: Gaussian kernel, std ``blur_sigma``; deblur_motion: motion streak (``motion_size``,
    ``motion_angle``); both circular. srF: ``sr_kind`` downsampling by F.
    """
    _check_task(task)
    if task == "inpaint_box":
        return Inpainting(box_mask(H, W))
    if task == "inpaint_random":
        return Inpainting(random_mask(H, W, defaults.random_missing, torch.Generator().manual_seed(seed)))
    if task == "inpaint_mask":
        if mask is None:
            raise ValueError("task 'inpaint_mask' needs a mask (tensor or image file; white = keep)")
        m = mask_from_image(mask, H, W) if isinstance(mask, (str, Path)) else torch.as_tensor(mask).float()
        if m.ndim == 2:
            m = m[None, None]
        if tuple(m.shape[-2:]) != (H, W):
            raise ValueError(f"mask is {tuple(m.shape[-2:])} but the image is {(H, W)}")
        return Inpainting(m)
    if task == "deblur_gaussian":
        return Blur(gaussian_kernel(defaults.blur_sigma))
    if task == "deblur_motion":
        return Blur(motion_kernel(defaults.motion_size, defaults.motion_angle))
    return Downsampling(sr_factor(task), defaults.sr_kind)


def _as_batch(image: Tensor) -> tuple[Tensor, bool]:
    image = torch.as_tensor(image)
    if image.ndim == 3:
        return image[None], True
    if image.ndim != 4:
        raise ValueError(f"expected an image (C, H, W) or a batch (B, C, H, W); got shape {tuple(image.shape)}")
    return image, False


def _check_range(image: Tensor) -> None:
    if not image.is_floating_point():
        raise ValueError("images must be float tensors in [0, 1]")
    if not torch.isfinite(image).all():
        raise ValueError("the image contains NaN or inf values")
    if float(image.min()) < -1e-6 or float(image.max()) > 1 + 1e-6:
        raise ValueError(f"images must lie in [0, 1]; got [{float(image.min()):.3g}, {float(image.max()):.3g}]")


def degrade(image: Tensor, task: str, sigma_y: float = DEFAULTS.sigma_y, seed: int = 0, *,
            mask: Tensor | str | Path | None = None) -> tuple[Tensor, Operator]:
    """Simulate ``y = A x + sigma_y n`` on a clean image in [0, 1] ((C, H, W) or (B, C, H, W)).

    Returns the image-range measurement (measurement-shaped, batch kept) and the operator. For srF, H and W must be
    divisible by F.
    """
    x, single = _as_batch(image)
    _check_range(x)
    if sigma_y < 0:
        raise ValueError(f"sigma_y must be >= 0; got {sigma_y}")
    op = build_operator(task, x.shape[-2], x.shape[-1], seed=seed, mask=mask)
    y = Measurement(op, sigma_y)(x, generator=torch.Generator().manual_seed(seed + 1))
    return (y[0] if single else y), op


# ----------------------------------------------------------------------------------------------------------------------
# restore
# ----------------------------------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=4)
def _load_named_prior(name: str) -> Denoiser:
    from priorkit.distill.loading import load_prior

    return load_prior(name).eval()


def resolve_prior(prior: str | Path | Denoiser) -> Denoiser:
    """A `Denoiser` from a bundled name ("photos"), a diffusers folder or hub id, or a `Denoiser` (returned as is)."""
    if isinstance(prior, Denoiser):
        return prior
    return _load_named_prior(str(prior))


def _model_dtype(den: Denoiser) -> torch.dtype:
    """float64 for float64 analytic priors, else float32 (the solver's working precision)."""
    for t in (*den.parameters(), *den.buffers()):
        if t.is_floating_point():
            return torch.float64 if t.dtype == torch.float64 else torch.float32
    return torch.float32


def _repeat(cond: Condition, k: int) -> Condition:
    """A per-image condition repeated for ``k`` samples per image (prompt lists and tensors; None stays None)."""
    if k == 1 or cond is None:
        return cond
    if isinstance(cond, Tensor):
        return cond.repeat_interleave(k, dim=0)
    if isinstance(cond, (list, tuple)):
        return [c for c in cond for _ in range(k)]
    return cond


def _kernel_size(op: Operator) -> int:
    return int(max(op.kernel.shape[-2:])) if isinstance(op, Blur) else 0


def _run_method(method: str, den: Denoiser, op: Operator, y: Tensor, sigma: float, shape: tuple[int, ...],
                nfe: int | None, generator: torch.Generator, cond: Condition, guidance: float,
                progress: bool | None, options: dict[str, Any]) -> Tensor:
    common = dict(cond=cond, guidance=guidance, shape=shape, generator=generator, progress=progress)
    budget = DEFAULTS.nfe.get(method) if nfe is None else nfe
    if method == "pigdm":
        return pigdm(den, op, y, sigma, steps=budget, **common, **options)
    if method == "pigdm_flow":
        return pigdm_flow(den, op, y, sigma, steps=budget, **common, **options)
    if method == "dps":
        return dps(den, op, y, sigma, steps=budget, **common, **options)
    if method == "dflow":
        if budget is not None:  # a budget of model passes: each L-BFGS evaluation costs ~3 ODE solves
            from priorkit.distill.core.samplers import nfe as solver_nfe
            from priorkit.inverse.dflow import DFlowDefaults

            per_solve = solver_nfe(options.get("solver", DFlowDefaults.solver),
                                   options.get("steps", DFlowDefaults.steps))
            evals = max(1, (int(budget) - 2 * per_solve) // (3 * per_solve))
            options = {"max_iter": evals, "max_evals": evals, **options}
        return dflow(den, op, y, sigma, **common, **options)
    raise ValueError(f"unknown method {method!r}; expected one of {', '.join(METHODS)}")


def restore(image: Tensor, task: str, method: str = "pigdm", *, prior: str | Path | Denoiser = "photos",
            sigma_y: float = DEFAULTS.sigma_y, nfe: int | None = None, seed: int = 0,
            mask: Tensor | str | Path | None = None, observed: bool = False, cond: Condition = None,
            guidance: float = 1.0, overlap: int = DEFAULTS.overlap, max_batch: int = DEFAULTS.max_batch,
            samples: int = 1, solver_seed: int | None = None, progress: bool | None = None,
            **options: Any) -> Restoration:
    """Restore an image in [0, 1] ((C, H, W) or (B, C, H, W); C = 1, 2, 3 or 4) with a diffusion/flow prior.

    Args:
        image: the clean image to degrade and restore (``observed=False``), or the observation itself
            (``observed=True``: the image with holes for inpainting, the blurry image, the low-res image for srF).
        task: one of TASKS. method: one of METHODS.
        prior: bundled name, diffusers folder / hub id, or a `Denoiser` (its sample_shape is the tile).
        sigma_y: measurement noise std in image range (also the noise assumed for an observed image).
        nfe: the solver's budget (pigdm / pigdm_flow / dps: steps = model evaluations; dflow: total model passes);
            default `RestoreDefaults.nfe`.
        seed: seeds the mask (inpaint_random), the simulated noise and the solver.
        solver_seed: seeds the solver alone (default ``seed + 2``): other posterior samples of the same measurement.
        mask: for inpaint_mask (tensor or image file, white = keep).
        cond, guidance: condition and CFG scale for conditional priors.
        overlap, max_batch: tiling (the overlap is widened past the blur kernel).
        samples: posterior samples drawn (in one batch) from the same measurement and averaged: an estimate of the
            posterior mean E[x | y], the MMSE restoration (higher PSNR, softer detail). ``nfe`` counts the batched
            calls, so the model evaluations per image are ``samples`` times the solver's budget.
        options: forwarded to the solver (e.g. eta=0.0, zeta=0.5, max_iter=10).
    Returns:
        `Restoration` (restored and degraded in [0, 1], shaped like the input; for srF with ``observed=True`` the
        output is F times larger).
    """
    _check_task(task)
    if not isinstance(samples, int) or samples < 1:
        raise ValueError(f"samples must be a whole number >= 1; got {samples!r}")
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; expected one of {', '.join(METHODS)}")
    start = time.perf_counter()
    img, single = _as_batch(image)
    _check_range(img)
    img = img.float()
    rgb, layout = to_rgb(img)
    f = sr_factor(task)
    if observed:
        H, W = rgb.shape[-2] * f, rgb.shape[-1] * f
        op = build_operator(task, H, W, seed=seed, mask=mask)
        y = op.measured(rgb) if isinstance(op, Inpainting) else rgb
    else:
        if f > 1 and (rgb.shape[-2] % f or rgb.shape[-1] % f):  # crop to a multiple of the factor
            rgb = rgb[..., : rgb.shape[-2] // f * f, : rgb.shape[-1] // f * f]
            layout.alpha = None if layout.alpha is None else layout.alpha[..., : rgb.shape[-2], : rgb.shape[-1]]
        H, W = rgb.shape[-2:]
        op = build_operator(task, H, W, seed=seed, mask=mask)
        y = Measurement(op, sigma_y)(rgb, generator=torch.Generator().manual_seed(seed + 1))
    B = rgb.shape[0]
    meas = Measurement(op, sigma_y)
    y_model = meas.to_model(y, (B, 3, H, W))

    counter = None
    if method == "pinv":
        x = op.pinv(y_model)
    else:
        y_model = y_model.repeat_interleave(samples, dim=0)
        den = resolve_prior(prior)
        dtype = _model_dtype(den)
        if den.sample_shape is not None and den.sample_shape[0] != 3:
            raise ValueError(f"the prior makes {den.sample_shape[0]}-channel images; restore needs an RGB prior")
        h, w = (den.sample_shape[-2:] if den.sample_shape is not None else (H, W))
        canvas = (max(H, h), max(W, w))
        op_c = op if canvas == (H, W) else CropOperator(op, (H, W), canvas)
        y_c = y_model
        if canvas != (h, w):
            ov = min(max(overlap, _kernel_size(op) + 2), min(h, w) // 2)
            den = TiledDenoiser(den, canvas, overlap=ov, max_batch=max_batch)
        counter = CountingDenoiser(den)
        gen = torch.Generator().manual_seed(seed + 2 if solver_seed is None else solver_seed)
        x = _run_method(method, counter, op_c, y_c.to(dtype), meas.sigma_model, (B * samples, 3, *canvas), nfe, gen,
                        _repeat(cond, samples), guidance, progress, options)
        x = x[..., :H, :W].float().unflatten(0, (B, samples)).mean(dim=1)  # mean of the posterior samples
    restored = from_rgb(to_image_range(x.detach()).clamp(0, 1), layout)
    shown = y.clamp(0, 1)
    if shown.shape[-2:] != (H, W):
        shown = F.interpolate(shown, size=(H, W), mode="nearest")
    degraded = from_rgb(shown, layout)
    out = Restoration(restored=restored[0] if single else restored, degraded=degraded[0] if single else degraded,
                      measurement=y[0] if single else y, operator=op, nfe=0 if counter is None else counter.nfe,
                      seconds=time.perf_counter() - start)
    return out


# ----------------------------------------------------------------------------------------------------------------------
# Files
# ----------------------------------------------------------------------------------------------------------------------


def load_image(path: str | Path) -> Tensor:
    """(C, H, W) float32 in [0, 1] from an image file; C = 1 (L), 2 (LA), 3 (RGB) or 4 (RGBA). Raises ValueError."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im.load()
            mode = im.mode
            if mode in ("1", "L", "I", "I;16", "F"):
                arr = np.asarray(im.convert("F"), dtype=np.float64)
                arr = arr / (65535.0 if mode.startswith("I") and arr.max() > 255 else 255.0 if mode != "1" else 1.0)
                if mode == "F":
                    arr = arr * 255.0
                arr = np.clip(arr, 0, 1)[..., None]
            elif mode == "LA":
                arr = np.asarray(im, dtype=np.float64) / 255.0
            else:
                has_alpha = mode in ("RGBA", "PA", "LA") or (mode == "P" and "transparency" in im.info)
                arr = np.asarray(im.convert("RGBA" if has_alpha else "RGB"), dtype=np.float64) / 255.0
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as e:
        raise ValueError(f"cannot read image {str(path)!r}: {e}") from e
    return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1))).float()


def save_image(image: Tensor, path: str | Path) -> None:
    """Write a (C, H, W) image in [0, 1] as PNG atomically (temporary file in the same folder + os.replace)."""
    from PIL import Image

    path = Path(path)
    arr = (image.detach().clamp(0, 1).cpu().numpy().transpose(1, 2, 0) * 255.0 + 0.5).astype(np.uint8)
    modes = {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}
    if arr.shape[-1] not in modes:
        raise ValueError(f"cannot save an image with {arr.shape[-1]} channels")
    pil = Image.fromarray(arr[..., 0] if arr.shape[-1] == 1 else arr, mode=None)
    with atomic_open(path, "wb") as fh:
        pil.save(fh, format="PNG")


def _write_json(data: dict, path: Path) -> None:
    with atomic_open(path, "w") as fh:
        json.dump(data, fh, indent=2, sort_keys=True)


def _rank_world() -> tuple[int, int]:
    """(rank, world size): torch.distributed when initialised (accelerate launch), else RANK / WORLD_SIZE env."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def _find_by_stem(folder: Path | None, stem: str) -> Path | None:
    if folder is None:
        return None
    for p in sorted(folder.iterdir()):
        if p.is_file() and p.stem == stem and p.suffix.lower() in IMAGE_SUFFIXES:
            return p
    return None


def _quality(restored: Tensor, reference: Tensor) -> dict[str, float | None]:
    from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

    a, b = restored[None].float(), reference[None].float()
    out: dict[str, float | None] = {"psnr": float(peak_signal_noise_ratio(a, b, data_range=1.0))}
    try:
        out["ssim"] = float(structural_similarity_index_measure(a, b, data_range=1.0))
    except (RuntimeError, ValueError):  # too small for the 11x11 window
        out["ssim"] = None
    return out


def _report_files(output_dir: Path) -> list[Path]:
    return sorted(output_dir.glob("report*.json"))


def merge_reports(output_dir: str | Path) -> dict:
    """Merge the per-process reports (report.rank*.json) of a sharded run into report.json; returns the merged dict."""
    output_dir = Path(output_dir)
    merged: dict[str, Any] = {"files": {}}
    for p in _report_files(output_dir):
        data = json.loads(p.read_text())
        merged.update({k: v for k, v in data.items() if k not in ("files", "summary", "rank")})
        merged["files"].update(data.get("files", {}))
    merged["summary"] = _summary(merged["files"])
    _write_json(merged, output_dir / "report.json")
    return merged


def _summary(files: dict[str, dict]) -> dict[str, Any]:
    counts: dict[str, Any] = {}
    for entry in files.values():
        counts[entry["status"]] = counts.get(entry["status"], 0) + 1
    for key in ("psnr", "ssim"):
        vals = [e[key] for e in files.values() if e.get(key) is not None]
        counts[f"mean_{key}"] = float(np.mean(vals)) if vals else None
    return counts


def restore_folder(input_dir: str | Path, output_dir: str | Path, task: str, method: str = "pigdm", *,
                   prior: str | Path | Denoiser = "photos", mask_dir: str | Path | None = None,
                   reference_dir: str | Path | None = None, resume: bool = False, sigma_y: float = DEFAULTS.sigma_y,
                   nfe: int | None = None, seed: int = 0, observed: bool = False, progress: bool = True,
                   **options: Any) -> dict:
    """Restore every image of ``input_dir`` into ``output_dir`` (PNG, same stem), with a JSON report.

    * Unreadable or unsupported files are listed in the report with the reason and skipped.
    * Outputs are <stem>.png (<stem>_<ext>.png when two inputs share a stem), written atomically (temp file +
      os.replace); ``output_dir`` may not be ``input_dir`` or inside it.
    * ``resume=True`` skips files the report(s) mark done whose output exists.
    * Quality: PSNR/SSIM (torchmetrics) against ``reference_dir``/<stem>.* when given, else, when the degradation is
      simulated (``observed=False``), against the input itself (the ground truth).
    * Under torch.distributed / ``accelerate launch`` with N processes, process r takes files i with i % N == r and
      writes report.rank{r}.json (merged into report.json by rank 0 when torch.distributed is initialised; else call
      :func:`merge_reports`).
    * Each file's seed is ``seed + crc32(name)``: results do not depend on sharding or resuming.

    Other keyword arguments go to :func:`restore`. Returns this process's report dict.
    """
    input_dir, output_dir = Path(input_dir).resolve(), Path(output_dir).resolve()
    if not input_dir.is_dir():
        raise ValueError(f"input folder {input_dir} does not exist")
    if output_dir == input_dir or input_dir in output_dir.parents:
        raise ValueError(f"output folder {output_dir} must not be the input folder or inside it (inputs are never "
                         "overwritten)")
    _check_task(task)
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; expected one of {', '.join(METHODS)}")
    mask_dir = Path(mask_dir) if mask_dir is not None else None
    reference_dir = Path(reference_dir) if reference_dir is not None else None
    output_dir.mkdir(parents=True, exist_ok=True)
    rank, world = _rank_world()
    report_path = output_dir / ("report.json" if world == 1 else f"report.rank{rank}.json")

    previous: dict[str, dict] = {}
    if resume:
        for p in _report_files(output_dir):
            try:
                previous.update(json.loads(p.read_text()).get("files", {}))
            except (OSError, json.JSONDecodeError):
                continue
    report: dict[str, Any] = {"task": task, "method": method, "prior": prior if isinstance(prior, str) else
                              type(prior).__name__, "sigma_y": sigma_y, "nfe": nfe, "seed": seed,
                              "observed": observed, "world_size": world, "rank": rank, "files": {}}

    candidates = sorted(p for p in input_dir.iterdir() if p.is_file() and not p.name.startswith("."))
    mine = [p for i, p in enumerate(candidates) if i % world == rank]
    stems: dict[str, int] = {}
    for p in candidates:
        stems[p.stem] = stems.get(p.stem, 0) + 1
    bar = tqdm(mine, desc=f"restore {task}/{method}", disable=not progress)
    for path in bar:
        name = path.name
        unique = stems[path.stem] == 1  # "a.jpg" and "a.png" would both become a.png
        out_path = output_dir / (f"{path.stem}.png" if unique else f"{path.stem}_{path.suffix.lstrip('.')}.png")
        old = previous.get(name)
        if resume and old is not None and old.get("status") == "done" and out_path.is_file():
            report["files"][name] = old
            continue
        entry: dict[str, Any] = {"output": None}
        t0 = time.perf_counter()
        try:
            if path.suffix.lower() not in IMAGE_SUFFIXES:
                raise _SkipFileError("unsupported", f"unsupported file type {path.suffix or '(none)'!r}")
            try:
                image = load_image(path)
            except ValueError as e:
                raise _SkipFileError("unreadable", str(e)) from e
            mask = None
            if task == "inpaint_mask":
                mask = _find_by_stem(mask_dir, path.stem)
                if mask is None:
                    raise _SkipFileError("failed", f"no mask named {path.stem}.* in {mask_dir}")
            result = restore(image, task, method, prior=prior, sigma_y=sigma_y, nfe=nfe,
                             seed=seed + zlib.crc32(name.encode()) % 100_000, mask=mask, observed=observed,
                             progress=False, **options)
            save_image(result.restored, out_path)
            entry.update(status="done", output=out_path.name, nfe=result.nfe)
            ref_path = _find_by_stem(reference_dir, path.stem)
            reference = load_image(ref_path) if ref_path is not None else (None if observed else image)
            if reference is not None:
                entry["reference"] = str(ref_path.name) if ref_path is not None else "input"
                if tuple(reference.shape) == tuple(result.restored.shape):
                    entry.update(_quality(result.restored, reference))
                else:
                    entry["quality_error"] = (f"reference shape {tuple(reference.shape)} != output shape "
                                              f"{tuple(result.restored.shape)}")
        except _SkipFileError as s:
            entry.update(status=s.status, reason=s.reason)
        except (ValueError, RuntimeError) as e:
            entry.update(status="failed", reason=f"{type(e).__name__}: {e}")
        entry["seconds"] = round(time.perf_counter() - t0, 4)
        report["files"][name] = entry
        report["summary"] = _summary(report["files"])
        _write_json(report, report_path)  # after every file: a killed run resumes from here
    report["summary"] = _summary(report["files"])
    _write_json(report, report_path)
    if world > 1:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.barrier()
            if rank == 0:
                merge_reports(output_dir)
    return report


class _SkipFileError(Exception):
    def __init__(self, status: str, reason: str) -> None:
        super().__init__(reason)
        self.status, self.reason = status, reason
