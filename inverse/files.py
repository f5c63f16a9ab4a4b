"""Files of batch restoration: images read and written (atomically), quality against a reference, and the JSON reports
of a folder run (one per process under torch.distributed, merged at the end)."""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from priorkit.distill.core.atomic import atomic_open

__all__ = ["IMAGE_SUFFIXES", "load_image", "save_image", "write_json", "rank_world", "find_by_stem", "quality",
           "report_files", "merge_reports", "summary", "SkipFileError", "ImageTooLargeError", "MAX_PIXELS",
           "OUTPUT_SETTINGS", "check_resume", "check_new_run", "clear_run", "run_settings"]

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".gif"}
#: the default pixel limit of an image read (width x height; ``priorkit restore --max-pixels``): 50 megapixels
MAX_PIXELS = 50_000_000
_PIL_LIMIT = threading.Lock()  # Image.MAX_IMAGE_PIXELS is PIL's global: set and restored under this lock


class ImageTooLargeError(ValueError):
    """An image whose header declares more pixels than the limit (nothing decoded)."""


def _open(path: str | Path, max_pixels: int | None):  # noqa: ANN202 (a PIL image)
    """Image.open with our limit instead of PIL's (its DecompressionBombWarning / Error): header only, no decoding."""
    from PIL import Image

    with _PIL_LIMIT:
        old, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
        try:
            im = Image.open(path)
        finally:
            Image.MAX_IMAGE_PIXELS = old
    if max_pixels is not None and im.width * im.height > max_pixels:
        im.close()
        raise ImageTooLargeError(f"image {str(path)!r} declares {im.width}x{im.height} = {im.width * im.height:,} "
                                 f"pixels, more than the limit of {max_pixels:,} (--max-pixels)")
    return im


def load_image(path: str | Path, max_pixels: int | None = MAX_PIXELS) -> Tensor:
    """(C, H, W) float32 in [0, 1] from an image file; C = 1 (L), 2 (LA), 3 (RGB) or 4 (RGBA).

    Raises ValueError for a file that cannot be decoded (or runs out of memory decoding), `ImageTooLargeError` (a
    ValueError) before decoding when the header declares more than ``max_pixels`` pixels (None: no limit; PIL's own
    decompression-bomb limit is replaced by this one).
    """
    from PIL import UnidentifiedImageError

    try:
        with _open(path, max_pixels) as im:
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
    except ImageTooLargeError:
        raise
    except MemoryError as e:
        raise ValueError(f"cannot read image {str(path)!r}: out of memory decoding it") from e
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


def write_json(data: dict, path: Path) -> None:
    with atomic_open(path, "w") as fh:
        json.dump(data, fh, indent=2, sort_keys=True)


def rank_world() -> tuple[int, int]:
    """(rank, world size): torch.distributed when initialised (accelerate launch), else RANK / WORLD_SIZE env."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def find_by_stem(folder: Path | None, stem: str) -> Path | None:
    if folder is None:
        return None
    for p in sorted(folder.iterdir()):
        if p.is_file() and p.stem == stem and p.suffix.lower() in IMAGE_SUFFIXES:
            return p
    return None


def quality(restored: Tensor, reference: Tensor) -> dict[str, float | None]:
    from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

    a, b = restored[None].float(), reference[None].float()
    out: dict[str, float | None] = {"psnr": float(peak_signal_noise_ratio(a, b, data_range=1.0))}
    try:
        out["ssim"] = float(structural_similarity_index_measure(a, b, data_range=1.0))
    except (RuntimeError, ValueError):  # too small for the 11x11 window
        out["ssim"] = None
    return out


def report_files(output_dir: Path) -> list[Path]:
    return sorted(output_dir.glob("report*.json"))


def merge_reports(output_dir: str | Path) -> dict:
    """Merge the per-process reports (report.rank*.json) of a sharded run into report.json; returns the merged dict."""
    output_dir = Path(output_dir)
    merged: dict[str, Any] = {"files": {}}
    for p in report_files(output_dir):
        data = json.loads(p.read_text())
        merged.update({k: v for k, v in data.items() if k not in ("files", "summary", "rank")})
        merged["files"].update(data.get("files", {}))
    merged["summary"] = summary(merged["files"])
    write_json(merged, output_dir / "report.json")
    return merged


def summary(files: dict[str, dict]) -> dict[str, Any]:
    counts: dict[str, Any] = {}
    for entry in files.values():
        counts[entry["status"]] = counts.get(entry["status"], 0) + 1
    for key in ("psnr", "ssim"):
        vals = [e[key] for e in files.values() if e.get(key) is not None]
        counts[f"mean_{key}"] = float(np.mean(vals)) if vals else None
    return counts


class SkipFileError(Exception):
    """A skipped file: its report status ("unsupported", "unreadable", "too_large", "failed") and reason."""

    def __init__(self, status: str, reason: str) -> None:
        super().__init__(reason)
        self.status, self.reason = status, reason


#: the report's header fields that shape the outputs: a --resume must match them (old reports may lack some)
OUTPUT_SETTINGS = ("task", "method", "prior", "sigma_y", "nfe", "seed", "simulate", "samples", "uncertainty")


def run_settings(task: str, method: str, prior: Any, sigma_y: float, nfe: int | None, seed: int, simulate: bool,
                 samples: int, uncertainty: bool) -> dict[str, Any]:
    """The report's header: the settings that shape the outputs (:data:`OUTPUT_SETTINGS`)."""
    return {"task": task, "method": method, "prior": str(prior) if isinstance(prior, (str, Path)) else
            type(prior).__name__, "sigma_y": sigma_y, "nfe": nfe, "seed": seed, "simulate": simulate,
            "samples": samples, "uncertainty": uncertainty}


def check_resume(output_dir: Path, settings: dict[str, Any], resume: bool, overwrite: bool) -> None:
    """Raise ValueError when ``resume`` would mix runs: the report(s) in ``output_dir`` were written with other
    ``settings`` (:data:`OUTPUT_SETTINGS`; the message names each difference), or both flags are given."""
    if resume and overwrite:
        raise ValueError("--resume continues the run in the output folder and --overwrite starts it over: give one")
    if not resume or not Path(output_dir).is_dir():
        return
    for path in report_files(Path(output_dir)):
        try:
            old = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        diff = [f"{k} {old[k]!r} there, {settings[k]!r} now" for k in OUTPUT_SETTINGS
                if k in old and k in settings and old[k] != settings[k]]
        if diff:
            raise ValueError(f"--resume: {output_dir} holds a run with other settings ({'; '.join(diff)}): resume "
                             "with the same settings, pass --overwrite to start over, or choose another output folder")


def check_new_run(output_dir: Path, resume: bool, overwrite: bool, names: Iterable[str] = ()) -> None:
    """Raise ValueError when a new run (neither ``resume`` nor ``overwrite``) would write over what ``output_dir``
    holds: an earlier run's report, or a file named like one of the run's outputs (``names``)."""
    out = Path(output_dir)
    if resume or overwrite or not out.is_dir():
        return
    found = report_files(out)
    if found:
        raise ValueError(f"{output_dir} holds an earlier run ({found[0].name}): pass --resume to continue it, "
                         "--overwrite to start over, or choose another output folder")
    clash = sorted(n for n in set(names) if (out / n).exists())
    if clash:
        raise ValueError(f"output folder {output_dir} already holds {clash[0]}"
                         + (f" and {len(clash) - 1} more of this run's output names" if len(clash) > 1 else "")
                         + ": choose another output folder, or pass --overwrite to replace them")


def clear_run(output_dir: Path) -> None:
    """Start over: remove the report(s) of ``output_dir`` and the outputs they list (nothing else); under
    torch.distributed, rank 0 does it and every process waits for it."""
    import torch.distributed as dist

    rank, world = rank_world()
    if rank == 0:
        _clear(output_dir)
    if world > 1 and dist.is_available() and dist.is_initialized():
        dist.barrier()


def _clear(output_dir: Path) -> None:
    for path in report_files(Path(output_dir)):
        try:
            files = json.loads(path.read_text()).get("files", {})
        except (OSError, json.JSONDecodeError):
            files = {}
        for entry in files.values():
            for key in ("output", "uncertainty"):
                name = entry.get(key)
                if isinstance(name, str) and Path(name).name == name:
                    (Path(output_dir) / name).unlink(missing_ok=True)
        path.unlink(missing_ok=True)
