"""The restoration front door: degrade, restore, and batch-restore folders (resumable, shardable across processes).

``restore(image, task, method)`` simulates a degradation of a clean image (or, with ``observed=True``, takes the image
as the measurement itself), builds the operator and the model-range measurement, tiles the prior when the image is
larger than it (`TiledDenoiser`), runs a solver, and returns the restored image in [0, 1] with the degraded observation
for display. ``restore_folder`` does this for every image of a folder with a JSON report.

Tasks: inpaint_box, inpaint_random, inpaint_mask, deblur_gaussian, deblur_motion, sr2, sr4, sr8.
Methods: those of :mod:`priorkit.inverse.registry` (pinv (A^+ y, no prior), pigdm, pigdm_flow, dps, dflow, ...).
Image files and folder reports: :mod:`priorkit.inverse.files`.
"""

from __future__ import annotations

import contextlib
import functools
import json
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.nn import functional as F
from tqdm.auto import tqdm

from priorkit.distill.core.denoiser import Condition, Denoiser
from priorkit.inverse import registry
from priorkit.inverse.dflow import CountingDenoiser
from priorkit.inverse.files import (
    IMAGE_SUFFIXES,
    SkipFileError,
    find_by_stem,
    load_image,
    merge_reports,
    quality,
    rank_world,
    report_files,
    save_image,
    summary,
    write_json,
)
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
from priorkit.inverse.registry import RestorationMethod, get_method, method_names
from priorkit.inverse.tiling import CropOperator, TiledDenoiser, from_rgb, to_rgb

__all__ = ["TASKS", "TASK_OPERATORS", "METHODS", "RestoreDefaults", "Restoration", "build_operator", "degrade",
           "restore", "restore_folder", "methods_for_task", "check_method", "load_image", "save_image", "merge_reports",
           "IMAGE_SUFFIXES"]

TASKS: tuple[str, ...] = ("inpaint_box", "inpaint_random", "inpaint_mask", "deblur_gaussian", "deblur_motion",
                          "sr2", "sr4", "sr8")
#: the operator class each task builds (what a registered method must support to run it)
TASK_OPERATORS: dict[str, type[Operator]] = {t: {"in": Inpainting, "de": Blur, "sr": Downsampling}[t[:2]]
                                             for t in TASKS}
#: the registered methods when this module was imported (`priorkit.inverse.registry.METHODS` is the live table)
METHODS: tuple[str, ...] = method_names()


@dataclass
class RestoreDefaults:
    """Degradations and tiling of the front door; solver budgets are the registry's (``nfe``)."""

    sigma_y: float = 0.01
    random_missing: float = 0.7
    blur_sigma: float = 2.0
    motion_size: int = 9
    motion_angle: float = 30.0
    sr_kind: str = "bicubic"
    overlap: int = 16
    max_batch: int = 16

    @property
    def nfe(self) -> dict[str, int | None]:
        """Default model passes per prior method (D-Flow: total passes; None = the solver's own defaults), read from
        `priorkit.inverse.registry`."""
        return {m.name: m.default_nfe for m in registry.METHODS.values() if m.needs_prior}


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


def methods_for_task(task: str) -> tuple[str, ...]:
    """Registered methods that support ``task``'s operator."""
    _check_task(task)
    return tuple(m.name for m in registry.METHODS.values() if m.supports(TASK_OPERATORS[task]))


def check_method(method: str, task: str) -> RestorationMethod:
    """The registered method ``method`` if it supports ``task``; ValueError naming the choices otherwise."""
    spec = get_method(method)
    if not spec.supports(TASK_OPERATORS[task]):
        raise ValueError(f"method {method!r} does not support task {task!r}; choose one of "
                         f"{', '.join(methods_for_task(task))}")
    return spec


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
        task: one of TASKS. method: a registered method (`priorkit.inverse.registry`) supporting the task.
        prior: bundled name, diffusers folder / hub id, or a `Denoiser` (its sample_shape is the tile).
        sigma_y: measurement noise std in image range (also the noise assumed for an observed image).
        nfe: the solver's budget (pigdm / pigdm_flow / dps: steps = model evaluations; dflow: total model passes);
            default: the method's ``default_nfe`` in the registry.
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
    spec = check_method(method, task)
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
    no_grad = torch.no_grad() if not spec.needs_grad else contextlib.nullcontext()
    if not spec.needs_prior:
        with no_grad:
            x = spec(None, op, y_model, meas.sigma_model, **spec.solver_options(nfe, options))
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
        with no_grad:
            x = spec(counter, op_c, y_c.to(dtype), meas.sigma_model, cond=_repeat(cond, samples),
                            guidance=guidance, shape=(B * samples, 3, *canvas), generator=gen, progress=progress,
                            **spec.solver_options(nfe, options))
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
# Folders
# ----------------------------------------------------------------------------------------------------------------------


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
    check_method(method, task)
    mask_dir = Path(mask_dir) if mask_dir is not None else None
    reference_dir = Path(reference_dir) if reference_dir is not None else None
    output_dir.mkdir(parents=True, exist_ok=True)
    rank, world = rank_world()
    report_path = output_dir / ("report.json" if world == 1 else f"report.rank{rank}.json")

    previous: dict[str, dict] = {}
    if resume:
        for p in report_files(output_dir):
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
                raise SkipFileError("unsupported", f"unsupported file type {path.suffix or '(none)'!r}")
            try:
                image = load_image(path)
            except ValueError as e:
                raise SkipFileError("unreadable", str(e)) from e
            mask = None
            if task == "inpaint_mask":
                mask = find_by_stem(mask_dir, path.stem)
                if mask is None:
                    raise SkipFileError("failed", f"no mask named {path.stem}.* in {mask_dir}")
            result = restore(image, task, method, prior=prior, sigma_y=sigma_y, nfe=nfe,
                             seed=seed + zlib.crc32(name.encode()) % 100_000, mask=mask, observed=observed,
                             progress=False, **options)
            save_image(result.restored, out_path)
            entry.update(status="done", output=out_path.name, nfe=result.nfe)
            ref_path = find_by_stem(reference_dir, path.stem)
            reference = load_image(ref_path) if ref_path is not None else (None if observed else image)
            if reference is not None:
                entry["reference"] = str(ref_path.name) if ref_path is not None else "input"
                if tuple(reference.shape) == tuple(result.restored.shape):
                    entry.update(quality(result.restored, reference))
                else:
                    entry["quality_error"] = (f"reference shape {tuple(reference.shape)} != output shape "
                                              f"{tuple(result.restored.shape)}")
        except SkipFileError as s:
            entry.update(status=s.status, reason=s.reason)
        except (ValueError, RuntimeError) as e:
            entry.update(status="failed", reason=f"{type(e).__name__}: {e}")
        entry["seconds"] = round(time.perf_counter() - t0, 4)
        report["files"][name] = entry
        report["summary"] = summary(report["files"])
        write_json(report, report_path)  # after every file: a killed run resumes from here
    report["summary"] = summary(report["files"])
    write_json(report, report_path)
    if world > 1:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.barrier()
            if rank == 0:
                merge_reports(output_dir)
    return report
