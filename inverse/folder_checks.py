"""Checks of a folder run before any file is touched, and the names of the files it writes: what
``restore_folder`` and the ``priorkit restore`` command refuse (bad arguments, a prior that is no RGB image prior, a
resume with other settings, a new run that would replace an earlier one's files)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from priorkit.distill.core.denoiser import Denoiser
from priorkit.inverse.files import check_new_run, check_resume, run_settings
from priorkit.inverse.tasks import DEFAULTS, TASKS, check_method, resolve_prior


def check_folder_run(input_dir: Path, output_dir: Path, task: str, method: str, prior: str | Path | Denoiser, *,
                     mask_dir: Path | None = None, reference_dir: Path | None = None,
                     sigma_y: float = DEFAULTS.sigma_y, nfe: int | None = None, uncertainty: bool = False,
                     samples: int = 1, writable: Callable[[], None] | None = None, seed: int = 0,
                     simulate: bool = False, resume: bool = False, overwrite: bool = False,
                     new_run: bool = True) -> None:
    """Raise ValueError (or `ModelLoadError`) for a folder run that cannot work, before any file is touched (the
    messages name the CLI's flags). ``writable``: the caller's check that the output folder can be written. A
    ``resume`` into a run made with other settings is refused (`check_resume`); with ``new_run``, so is a new run
    that would replace an earlier one's files (`check_new_run`)."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; expected one of {', '.join(TASKS)}")
    spec = check_method(method, task)
    input_dir, output_dir = Path(input_dir), Path(output_dir)
    if input_dir.is_file():
        raise ValueError(f"input {input_dir} is a file: give the folder that holds the images to restore")
    if not input_dir.is_dir():
        raise ValueError(f"input folder {input_dir} does not exist")
    inp, outp = input_dir.resolve(), output_dir.resolve()
    if outp == inp or inp in outp.parents:
        raise ValueError(f"output folder {output_dir} must not be the input folder or inside it")
    if not any(p.is_file() and not p.name.startswith(".") for p in input_dir.iterdir()):
        raise ValueError(f"input folder {input_dir} holds no files")
    if task == "inpaint_mask" and mask_dir is None:
        raise ValueError("task inpaint_mask needs --mask-dir (masks named like the inputs; white = keep)")
    for flag, d in (("--mask-dir", mask_dir), ("--reference-dir", reference_dir)):
        if d is not None and not d.is_dir():
            raise ValueError(f"{flag} {d} is not a folder")
    if not 0.0 <= sigma_y <= 1.0:
        raise ValueError(f"--sigma-y must be in [0, 1] (image range); got {sigma_y}")
    if nfe is not None and nfe < 1:
        raise ValueError(f"--nfe must be >= 1; got {nfe}")
    if uncertainty and samples < 2:
        raise ValueError("--uncertainty needs 2 or more posterior samples: add --samples 4 (for example)")
    if uncertainty and not spec.needs_prior:
        raise ValueError(f"--uncertainty needs a method that samples a posterior; {method} has no prior")
    check_resume(output_dir, run_settings(task, method, prior, sigma_y, nfe, seed, simulate, samples, uncertainty),
                 resume, overwrite)
    if new_run:
        check_new_run(output_dir, resume, overwrite, output_names(input_dir, uncertainty))
    if writable is not None:
        writable()
    if spec.needs_prior:  # load (and cache) the prior now: a missing or wrong prior fails before any file
        den = resolve_prior(prior)
        if den.sample_shape is not None and (len(den.sample_shape) != 3 or den.sample_shape[0] != 3):
            raise ValueError(f"prior {prior!r} makes samples of shape {tuple(den.sample_shape)}; restore needs "
                             "an RGB image prior")


def input_files(input_dir: Path) -> list[Path]:
    """The files of a folder run, in the order the processes share them (hidden files left out)."""
    return sorted(p for p in Path(input_dir).iterdir() if p.is_file() and not p.name.startswith("."))


def output_stems(files: list[Path]) -> dict[str, str]:
    """Each input's output stem: its own, or <stem>_<ext> when two inputs share a stem ("a.jpg" and "a.png" would
    both become a.png)."""
    count: dict[str, int] = {}
    for p in files:
        count[p.stem] = count.get(p.stem, 0) + 1
    return {p.name: p.stem if count[p.stem] == 1 else f"{p.stem}_{p.suffix.lstrip('.')}" for p in files}


def output_names(input_dir: Path, uncertainty: bool = False) -> list[str]:
    """The file names a folder run may write into its output folder (restorations, std maps, the report)."""
    stems = output_stems(input_files(input_dir)) if Path(input_dir).is_dir() else {}
    return [f"{s}{tail}" for s in stems.values() for tail in (".png", *(("_std.png",) if uncertainty else ()))]


__all__ = ["check_folder_run", "input_files", "output_names", "output_stems"]
