"""Checks and messages of the ``priorkit`` command line that run before any work (issue 24): where outputs go, what
a folder holding a run means, the version, and the one-line form of an OSError."""

from __future__ import annotations

import math
import os
import re
from contextlib import contextmanager
from pathlib import Path
from typing import NoReturn

import typer

BAD_INPUT, FAILED = 2, 1  # exit codes: 2 bad input, nothing done; 1 the work failed


def slug(text: str, limit: int = 60) -> str:
    """A folder name from free text: lower-case words joined by '-' (at most ``limit`` characters; "run" if empty)."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:limit].strip("-") or "run"


def fail(message: object, code: int = BAD_INPUT) -> NoReturn:
    """Print ``error: <message>`` as one line on stderr and exit with ``code``."""
    typer.echo(f"error: {' '.join(str(message).split())}", err=True)
    raise typer.Exit(code)


def missing_parents(path: Path) -> list[Path]:
    """The folders (path itself first, then its parents) that do not exist yet."""
    missing = []
    for p in (path, *path.parents):
        if p.exists():
            break
        missing.append(p)
    return missing


@contextmanager
def remove_if_left_empty(folder: Path):  # noqa: ANN201 (a generator context manager)
    """On an exception, delete the folders of ``folder``'s path that this block created and left empty."""
    created = missing_parents(folder)
    try:
        yield
    except BaseException:
        for p in created:  # deepest first
            try:
                p.rmdir()
            except OSError:
                break
        raise


def check_writable(folder: Path, what: str) -> None:
    """Raise ValueError unless ``folder`` is, or can be created as, a writable folder (nothing is created)."""
    missing = missing_parents(folder)
    existing = missing[-1].parent if missing else folder
    if not existing.is_dir():
        raise ValueError(f"{what} {folder} cannot be created: {existing} is not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"{what} {folder} is not writable ({existing}: permission denied)")


def check_png_out(out: Path, guidance: float) -> None:
    """``priorkit sample``: a finite guidance and a writable .png path, checked before sampling."""
    if not (math.isfinite(guidance) and abs(guidance) <= 1000):  # larger ones overflow float32 in the CFG sum
        raise ValueError(f"--guidance must be a finite number in [-1000, 1000]; got {guidance}")
    if out.is_dir():
        raise ValueError(f"--out {out} is a folder; give a .png file name")
    if out.suffix.lower() != ".png":
        raise ValueError(f"--out {out}: the output is a PNG; give a file name ending in .png")
    check_writable(out.parent, "output folder")
    if out.exists() and not os.access(out, os.W_OK):
        raise ValueError(f"--out {out} is not writable")


def check_run_folder(out: Path, resume: bool, overwrite: bool) -> None:
    """``priorkit 3d``: a folder holding a run is continued (--resume) or replaced (--overwrite), never silently."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"output folder {out} is a file")
    if resume and overwrite:
        raise ValueError("--resume continues the run in OUT and --overwrite starts it over: give one of them")
    if not resume and not overwrite and out.is_dir() and any(out.iterdir()):
        raise ValueError(f"output folder {out} holds a run: pass --resume to continue it, --overwrite to start over, "
                         "or choose another --out")
    check_writable(out, "output folder")


def os_error_line(e: OSError) -> str:
    """One line for a failed write: the path and the reason."""
    where = f" {e.filename}" if getattr(e, "filename", None) else ""
    return f"cannot write{where}: {e.strerror or e}"


def version_line() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"priorkit {version('priorkit')}"
    except PackageNotFoundError:
        return "priorkit (not installed as a package)"
