"""The restoration front door: restore, and batch-restore folders (resumable, shardable across processes).

``restore(image, task, method)`` takes the image as the observation itself (the degraded photo a user has: the image
with holes for inpainting, the blurry image, the low-resolution image for srF) or, with ``simulate=True``, simulates
the degradation of a clean image first (benchmarks, the web app's example mode). It builds the operator and the
model-range measurement, tiles the prior when the image is larger than it (`TiledDenoiser`), runs a solver, and returns
the restored image in [0, 1] with the degraded observation for display, the cost (forward and backward passes, tiles,
seconds) and the measurement residual. ``restore_folder`` does this for every image of a folder with a JSON report.

Tasks and their operators: :mod:`priorkit.inverse.tasks`. Methods: :mod:`priorkit.inverse.registry` (pinv (A^+ y, no
prior), pigdm, pigdm_flow, dps, dflow, diffpir, pnp_flow, ...). Image files and folder reports:
:mod:`priorkit.inverse.files`.
"""

from __future__ import annotations

import contextlib
import json
import math
import numbers
import sys
import time
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.nn import functional as F
from tqdm.auto import tqdm

from priorkit.distill.core.denoiser import Condition, Denoiser
from priorkit.inverse.files import (
    IMAGE_SUFFIXES,
    MAX_PIXELS,
    ImageTooLargeError,
    SkipFileError,
    clear_run,
    find_by_stem,
    load_image,
    merge_reports,
    quality,
    rank_world,
    report_files,
    run_settings,
    save_image,
    summary,
    write_json,
)
from priorkit.inverse.folder_checks import check_folder_run, input_files, output_names, output_stems  # noqa: F401
from priorkit.inverse.operators import Inpainting, Measurement, Operator, to_image_range
from priorkit.inverse.progress import TileCounter, estimate_seconds, warn_if_long  # noqa: F401 - re-exported
from priorkit.inverse.registry import DEFAULT_METHOD, get_method, method_names, pairing_note
from priorkit.inverse.tasks import (  # noqa: F401 - re-exported: the tasks used to live here
    DEFAULTS,
    TASK_OPERATORS,
    TASKS,
    RestoreDefaults,
    as_batch,
    build_operator,
    check_method,
    check_range,
    check_task,
    default_nfe,
    degrade,
    forward_budget,
    methods_for_task,
    model_dtype,
    resolve_prior,
    sr_factor,
    tile_overlap,
)
from priorkit.inverse.tiling import CropOperator, TiledDenoiser, from_rgb, to_rgb

__all__ = ["TASKS", "TASK_OPERATORS", "METHODS", "RestoreDefaults", "Restoration", "build_operator", "degrade",
           "restore", "restore_folder", "methods_for_task", "check_method", "load_image", "save_image", "merge_reports",
           "IMAGE_SUFFIXES", "estimate_seconds", "check_folder_run"]

#: the registered methods when this module was imported (`priorkit.inverse.registry.METHODS` is the live table)
METHODS: tuple[str, ...] = method_names()


@dataclass
class Restoration:
    """What :func:`restore` returns; images in [0, 1], shaped like the output ((C, H, W) or (B, C, H, W)).

    ``degraded`` is the observation for display (same size as ``restored``: low-res inputs nearest-upsampled);
    ``measurement`` the raw image-range measurement; ``nfe`` = ``forward`` + ``backward``: batched model evaluations
    and backward passes through the model (a tiled call counts once; ``tiles`` tiles per image go through the network
    per call). ``residual`` (B,): ``||A x - y||`` of the restoration in image range over the observed entries, and
    ``expected_residual`` (B,): ``sigma_y sqrt(M)`` for M observed entries, what the noise alone leaves (ratio ~1: the
    restoration explains the measurement; >> 1: it does not). ``std``: per-pixel standard deviation of the posterior
    samples (shaped like ``restored``), None with one sample.
    """

    restored: Tensor
    degraded: Tensor
    measurement: Tensor
    operator: Operator
    nfe: int
    seconds: float
    forward: int = 0
    backward: int = 0
    tiles: int = 1
    residual: Tensor | None = None
    expected_residual: Tensor | None = None
    std: Tensor | None = None


def _repeat(cond: Condition, k: int) -> Condition:
    """A per-image condition repeated for ``k`` samples per image (prompt lists and tensors; None stays None)."""
    if k == 1 or cond is None:
        return cond
    if isinstance(cond, Tensor):
        return cond.repeat_interleave(k, dim=0)
    if isinstance(cond, (list, tuple)):
        return [c for c in cond for _ in range(k)]
    return cond


def _residual(op: Operator, x: Tensor, y: Tensor, sigma_y: float) -> tuple[Tensor, Tensor]:
    """(||A x - y||, sigma_y sqrt(M)) per image (B,), image range, over the M observed measurement entries."""
    seen = op.measured(torch.ones_like(y))
    r = (op.measured(op.A(x) - y)).flatten(1).norm(dim=1)
    return r, sigma_y * seen.flatten(1).sum(1).sqrt()


def restore(image: Tensor, task: str, method: str = DEFAULT_METHOD, *, prior: str | Path | Denoiser = "photos",
            sigma_y: float = DEFAULTS.sigma_y, nfe: int | None = None, seed: int = 0,
            mask: Tensor | str | Path | None = None, simulate: bool | None = None, observed: bool | None = None,
            cond: Condition = None, guidance: float = 1.0, overlap: int = DEFAULTS.overlap,
            max_batch: int = DEFAULTS.max_batch, samples: int = 1, solver_seed: int | None = None,
            progress: bool | None = None, **options: Any) -> Restoration:
    """Restore an image in [0, 1] ((C, H, W) or (B, C, H, W); C = 1, 2, 3 or 4) with a diffusion/flow prior.

    Args:
        image: the observation (``simulate=False``: the image with holes for inpainting, the blurry image, the low-res
            image for srF), or the clean image to degrade first and restore (``simulate=True``).
        task: one of TASKS. method: a registered method (`priorkit.inverse.registry`) supporting the task.
        prior: bundled name, diffusers folder / hub id, or a `Denoiser` (its sample_shape is the tile).
        sigma_y: measurement noise std in image range (the noise assumed for an observed image, added when simulating).
        nfe: the solver's budget (steps = model evaluations; dflow: total model passes); default: the prior's
            ``restore_nfe`` for step-budgeted methods where it has one (a few-step student's priorkit.json),
            else the method's ``default_nfe`` in the registry.
        seed: seeds the mask (inpaint_random), the simulated noise and the solver.
        simulate: degrade the clean ``image`` first and restore that (default False: ``image`` is the observation).
        observed: the former switch, ``observed = not simulate`` (kept for one release; ``observed=False`` is
            ``simulate=True``).
        solver_seed: seeds the solver alone (default ``seed + 2``): other posterior samples of the same measurement.
        mask: for inpaint_mask (tensor or image file, white = keep).
        cond, guidance: condition and CFG scale for conditional priors.
        overlap, max_batch: tiling (the overlap is widened past the blur kernel; ``max_batch`` tiles per model call).
        samples: posterior samples drawn (in one batch) from the same measurement and averaged: an estimate of the
            posterior mean E[x | y], the MMSE restoration (higher PSNR, softer detail); their per-pixel standard
            deviation is returned as ``std``. ``nfe`` counts the batched calls.
        progress: a bar counted in tiles (None: shown for runs of 50 tile evaluations or more).
        options: forwarded to the solver (e.g. eta=0.0, zeta=0.5, max_iter=10).
    Returns:
        `Restoration`. Sizes: an observed srF input gives an output F times larger; a simulated srF input whose sides
        are not multiples of F is padded (edge pixels repeated) to the next multiple and the output cropped back.
    """
    check_task(task)
    if simulate is None:
        simulate = False if observed is None else not observed
    elif observed is not None and observed == simulate:
        raise ValueError("simulate and observed contradict each other; pass simulate only")
    if not isinstance(samples, int) or samples < 1:
        raise ValueError(f"samples must be a whole number >= 1; got {samples!r}")
    if not (isinstance(sigma_y, numbers.Real) and math.isfinite(sigma_y) and 0 <= sigma_y <= 1):
        raise ValueError(f"sigma_y must be a number in [0, 1] (image range); got {sigma_y!r}")
    if nfe is not None and (isinstance(nfe, bool) or not isinstance(nfe, numbers.Integral) or nfe < 1):
        raise ValueError(f"nfe must be a whole number >= 1; got {nfe!r}")
    nfe = None if nfe is None else int(nfe)  # numpy integers welcome
    if not (isinstance(guidance, numbers.Real) and math.isfinite(guidance)):
        raise ValueError(f"guidance must be a finite number; got {guidance!r}")
    spec = check_method(method, task)
    start = time.perf_counter()
    img, single = as_batch(image)
    check_range(img)
    img = img.float()
    rgb, layout = to_rgb(img)
    f = sr_factor(task)
    out_size = tuple(rgb.shape[-2:]) if simulate else (rgb.shape[-2] * f, rgb.shape[-1] * f)
    if not simulate:
        H, W = out_size
        op = build_operator(task, H, W, seed=seed, mask=mask)
        y = op.measured(rgb) if isinstance(op, Inpainting) else rgb
    else:
        ph, pw = (-rgb.shape[-2]) % f, (-rgb.shape[-1]) % f
        if ph or pw:  # pad to a multiple of the factor; cropped back below (never a silent crop)
            rgb = F.pad(rgb, (0, pw, 0, ph), mode="replicate")
        H, W = rgb.shape[-2:]
        op = build_operator(task, H, W, seed=seed, mask=mask)
        y = Measurement(op, sigma_y)(rgb, generator=torch.Generator().manual_seed(seed + 1))
    B = rgb.shape[0]
    meas = Measurement(op, sigma_y)
    y_model = meas.to_model(y, (B, 3, H, W))

    forward = backward = 0
    tiles, std = 1, None
    no_grad = torch.no_grad() if not spec.needs_grad else contextlib.nullcontext()
    if not spec.needs_prior:
        tiles = 0
        with no_grad:
            x = spec(None, op, y_model, meas.sigma_model, **spec.solver_options(nfe, options))
    else:
        y_model = y_model.repeat_interleave(samples, dim=0)
        den = resolve_prior(prior)
        nfe = default_nfe(spec, den, nfe)
        dtype = model_dtype(den)
        if den.sample_shape is not None and (len(den.sample_shape) != 3 or den.sample_shape[0] != 3):
            raise ValueError(f"the prior makes samples of shape {tuple(den.sample_shape)}; restore needs an RGB image "
                             "prior (3, H, W)")
        h, w = (den.sample_shape[-2:] if den.sample_shape is not None else (H, W))
        canvas = (max(H, h), max(W, w))
        op_c = op if canvas == (H, W) else CropOperator(op, (H, W), canvas)
        if canvas != (h, w):
            den = TiledDenoiser(den, canvas, overlap=tile_overlap(op, (h, w), overlap), max_batch=max_batch)
            tiles = den.num_tiles
        steps = forward_budget(spec, nfe, options)
        show = (steps or 0) * tiles * B * samples >= 50 if progress is None else bool(progress)
        desc = f"{tiles} tile{'s' * (tiles > 1)} x {steps if steps is not None else '?'} steps" + (
            f" x {B * samples} samples" if B * samples > 1 else "")
        counter = TileCounter(den, tiles * B * samples, steps, desc, show)
        gen = torch.Generator().manual_seed(seed + 2 if solver_seed is None else solver_seed)
        try:
            with no_grad:
                x = spec(counter, op_c, y_model.to(dtype), meas.sigma_model, cond=_repeat(cond, samples),
                         guidance=guidance, shape=(B * samples, 3, *canvas), generator=gen, progress=False,
                         **spec.solver_options(nfe, options))
        finally:
            counter.close()
        forward, backward = counter.counts["forward"], counter.counts["backward"]
        xs = to_image_range(x[..., :H, :W].detach().float()).unflatten(0, (B, samples))
        if samples > 1:
            std = xs.clamp(0, 1).std(dim=1)
        x = xs.mean(dim=1) * 2 - 1  # mean of the posterior samples, model range
    x_img = to_image_range(x.detach().float()).clamp(0, 1)
    residual, expected = _residual(op, x_img, y, sigma_y)
    oh, ow = out_size
    restored = from_rgb(x_img[..., :oh, :ow], layout)
    shown = y.clamp(0, 1)
    if shown.shape[-2:] != (H, W):
        shown = F.interpolate(shown, size=(H, W), mode="nearest")
    degraded = from_rgb(shown[..., :oh, :ow], layout)
    if std is not None:
        std = std[..., :oh, :ow].mean(1, keepdim=True) if layout.channels in (1, 2) else std[..., :oh, :ow]
    pick = (lambda v: v[0]) if single else (lambda v: v)  # noqa: E731
    return Restoration(restored=pick(restored), degraded=pick(degraded), measurement=pick(y), operator=op,
                       nfe=forward + backward, seconds=time.perf_counter() - start, forward=forward, backward=backward,
                       tiles=tiles, residual=residual, expected_residual=expected,
                       std=None if std is None else pick(std))


# ----------------------------------------------------------------------------------------------------------------------
# Folders
# ----------------------------------------------------------------------------------------------------------------------


def restore_folder(input_dir: str | Path, output_dir: str | Path, task: str, method: str = DEFAULT_METHOD, *,
                   prior: str | Path | Denoiser = "photos", mask_dir: str | Path | None = None,
                   reference_dir: str | Path | None = None, resume: bool = False, sigma_y: float = DEFAULTS.sigma_y,
                   nfe: int | None = None, seed: int = 0, simulate: bool = False, observed: bool | None = None,
                   uncertainty: bool = False, progress: bool = True, max_pixels: int | None = MAX_PIXELS,
                   overwrite: bool = False, **options: Any) -> dict:
    """Restore every image of ``input_dir`` into ``output_dir`` (PNG, same stem), with a JSON report.

    * Inputs are the degraded images (observations); ``simulate=True`` degrades clean inputs first and scores against
      them. ``observed`` is the former switch (``observed=False`` = ``simulate=True``), deprecated.
    * Every per-file failure is listed in the report with its status and reason, and the batch goes on: "unsupported"
      (not an image suffix), "unreadable" (cannot be decoded: truncated, empty, not an image), "too_large" (the
      header declares more than ``max_pixels`` pixels, checked before decoding; None: no limit), "failed" (the
      restoration itself: out of memory, a solver error). Only an OSError writing an output ends the batch.
    * Outputs are <stem>.png (<stem>_<ext>.png when two inputs share a stem), written atomically (temp file +
      os.replace); ``output_dir`` may not be ``input_dir`` or inside it. ``uncertainty=True`` (with ``samples`` >= 2)
      also writes <stem>_std.png, the per-pixel standard deviation of the posterior samples scaled by its maximum
      (recorded as ``std_max``; ``std_mean`` is the mean).
    * Per file: status, seconds, tiles (per image), forward and backward passes (``nfe`` = forward, the budget the
      user set), the measurement residual ``||A x - y||`` and the ``expected_residual`` sigma_y sqrt(M) the noise
      alone explains (``residual_ratio`` ~1 = consistent), PSNR/SSIM against ``reference_dir``/<stem>.* when given,
      else, when simulating, against the input itself (the ground truth).
    * ``resume=True`` skips files the report(s) mark done whose output exists; a run made with other settings (task,
      method, prior, sigma_y, nfe, seed, simulate, samples, uncertainty) is refused with the differences named.
      ``overwrite=True`` starts over: the old report(s) and the outputs they list are removed first. Without either,
      an ``output_dir`` holding an earlier run's report, or a file named like one of this run's outputs, is refused
      (ValueError): nothing is replaced silently. Sharded over several processes, that check is the caller's, made
      before the processes start writing (the CLI makes it before they join their group).
    * Under torch.distributed / ``accelerate launch`` with N processes, process r takes files i with i % N == r and
      writes report.rank{r}.json (merged into report.json by rank 0 when torch.distributed is initialised; else call
      :func:`merge_reports`).
    * Each file's seed is ``seed + crc32(name)``: results do not depend on sharding or resuming.
    * With ``progress``, a run estimated longer than a minute (tiles x steps x measured seconds per tile) is announced
      on stderr before it starts.

    Other keyword arguments go to :func:`restore`. Returns this process's report dict.
    """
    if observed is not None:
        warnings.warn("observed= is deprecated: inputs are observations by default; pass simulate=True to degrade "
                      "clean inputs", DeprecationWarning, stacklevel=2)
        simulate = not observed
    input_dir, output_dir = Path(input_dir).resolve(), Path(output_dir).resolve()
    mask_dir = Path(mask_dir) if mask_dir is not None else None
    reference_dir = Path(reference_dir) if reference_dir is not None else None
    # every check of the CLI, before any file is touched (sharded: a rank's report is not an "earlier run", and the
    # CLI checked for one before the processes met)
    check_folder_run(input_dir, output_dir, task, method, prior, mask_dir=mask_dir, reference_dir=reference_dir,
                     sigma_y=sigma_y, nfe=nfe, uncertainty=uncertainty, samples=int(options.get("samples", 1)),
                     seed=seed, simulate=simulate, resume=resume, overwrite=overwrite,
                     new_run=rank_world()[1] == 1)
    settings = run_settings(task, method, prior, sigma_y, nfe, seed, simulate, options.get("samples", 1), uncertainty)
    if overwrite:
        clear_run(output_dir)
    rank, world = rank_world()
    output_dir.mkdir(parents=True, exist_ok=True)
    report_path = output_dir / ("report.json" if world == 1 else f"report.rank{rank}.json")

    previous: dict[str, dict] = {}
    if resume:
        for p in report_files(output_dir):
            try:
                previous.update(json.loads(p.read_text()).get("files", {}))
            except (OSError, json.JSONDecodeError):
                continue
    report: dict[str, Any] = {**settings, "world_size": world, "rank": rank, "files": {}}

    candidates = input_files(input_dir)
    mine = [p for i, p in enumerate(candidates) if i % world == rank]
    stems = output_stems(candidates)
    # the report (settings, earlier runs' done files) exists before the first image: what a --resume is checked against
    report["files"] = {p.name: previous[p.name] for p in mine if previous.get(p.name, {}).get("status") == "done"}
    write_json(report, report_path)
    if note := pairing_note(method, prior, task):  # a pairing measured to lose: name the default method
        tqdm.write(note, file=sys.stderr)
    if progress and get_method(method).needs_prior:
        todo = [p for p in mine if p.suffix.lower() in IMAGE_SUFFIXES and not (
            resume and previous.get(p.name, {}).get("status") == "done")]
        warn_if_long(todo, task, method, prior, nfe, simulate, options, max_pixels=max_pixels)
    bar = tqdm(mine, desc=f"restore {task}/{method}", unit="image", disable=not progress)
    for path in bar:
        name = path.name
        stem_out = stems[path.name]
        out_path = output_dir / f"{stem_out}.png"
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
                image = load_image(path, max_pixels)
            except ImageTooLargeError as e:
                raise SkipFileError("too_large", str(e)) from e
            except ValueError as e:
                raise SkipFileError("unreadable", str(e)) from e
            mask = None
            if task == "inpaint_mask":
                mask = find_by_stem(mask_dir, path.stem)
                if mask is None:
                    raise SkipFileError("failed", f"no mask named {path.stem}.* in {mask_dir}")
            result = restore(image, task, method, prior=prior, sigma_y=sigma_y, nfe=nfe,
                             seed=seed + zlib.crc32(name.encode()) % 100_000, mask=mask, simulate=simulate,
                             progress=progress, **options)
            if not bool(torch.isfinite(result.restored).all()):  # never a black image marked done
                raise SkipFileError("failed", "the restoration holds NaN or inf (a damaged or diverged prior?)")
            save_image(result.restored, out_path)
            res, exp = float(result.residual[0]), float(result.expected_residual[0])
            entry.update(status="done", output=out_path.name, nfe=result.forward, forward=result.forward,
                         backward=result.backward, tiles=result.tiles, residual=round(res, 6),
                         expected_residual=round(exp, 6), residual_ratio=round(res / exp, 4) if exp > 0 else None)
            if uncertainty and result.std is not None:
                top = float(result.std.max())
                save_image(result.std / max(top, 1e-12), output_dir / f"{stem_out}_std.png")
                entry.update(uncertainty=f"{stem_out}_std.png", std_max=round(top, 6),
                             std_mean=round(float(result.std.mean()), 6))
            ref_path = find_by_stem(reference_dir, path.stem)
            try:  # the restoration is written and done: a bad reference only costs its scores
                reference = load_image(ref_path) if ref_path is not None else (image if simulate else None)
            except ValueError as e:
                reference, entry["quality_error"] = None, f"reference {ref_path.name} unreadable: {e}"
            if reference is not None:
                entry["reference"] = str(ref_path.name) if ref_path is not None else "input"
                if tuple(reference.shape) == tuple(result.restored.shape):
                    entry.update(quality(result.restored, reference))
                else:
                    entry["quality_error"] = (f"reference shape {tuple(reference.shape)} != output shape "
                                              f"{tuple(result.restored.shape)}")
        except SkipFileError as s:
            entry.update(status=s.status, reason=s.reason)
        except OSError:  # a write that fails (disk full, read-only): the batch ends with one line (the CLI)
            raise
        except MemoryError:
            entry.update(status="failed", reason="out of memory restoring this image")
        except Exception as e:  # noqa: BLE001 - any other per-file failure is this file's, never the batch's
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
