"""Models the web app may load: the allow-list of folders, bundled priors and students, caches, toy teachers."""

from __future__ import annotations

import functools
import json
import os
import re
from collections.abc import Callable
from pathlib import Path

import torch

from priorkit.apps.web_common import UserInputError
from priorkit.distill.core.denoiser import Denoiser

MODEL_DIRS_ENV = "PRIORKIT_APP_MODEL_DIRS"
DEFAULT_MODEL_DIRS = ("models", "runs", "outputs/distill")  # the last: where `priorkit distill` writes
HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,95}/[A-Za-z0-9][A-Za-z0-9_.-]{0,95}$")
TOYS = ("gmm", "moons", "checkerboard")


def model_dirs() -> list[Path]:
    """The directories user-typed model folders must lie in: ``$PRIORKIT_APP_MODEL_DIRS`` or ./models, ./runs and
    ./outputs/distill (the default output of ``priorkit distill``)."""
    env = os.environ.get(MODEL_DIRS_ENV)
    raw = env.split(os.pathsep) if env else list(DEFAULT_MODEL_DIRS)
    return [Path(p).expanduser().resolve() for p in raw if p.strip()]


def resolve_model(source: str, *, allow_hub: bool = True) -> str:
    """A loadable model source from what a user typed: a bundled name, an allowed folder (absolute path) or a hub id.

    Folders are looked up inside each of :func:`model_dirs` (relative names) or must resolve inside one of them
    (absolute paths); symlinks and ".." are resolved first. Raises `UserInputError` otherwise.
    """
    from priorkit.distill.core.loading import BUNDLED

    s = (source or "").strip()
    if not s:
        raise UserInputError("give a model: a bundled name, a hub id (owner/name) or a folder under the model dirs")
    if s in BUNDLED:
        return s
    if len(s) > 512 or "\x00" in s:
        raise UserInputError("model name too long or malformed")
    roots = model_dirs()
    given = Path(s).expanduser()
    for root in roots:
        cand = (given if given.is_absolute() else root / given).resolve()
        if cand.is_dir() and cand.is_relative_to(root):
            return str(cand)
    if allow_hub and HUB_ID.match(s) and ".." not in s:
        if given.exists():
            raise UserInputError(f"{s!r} is a local folder outside the allowed model directories "
                                 f"({', '.join(map(str, roots))}); move it there or set ${MODEL_DIRS_ENV}")
        return s
    hub = ", a hub id (owner/name)" if allow_hub else ""
    raise UserInputError(f"unknown model {s!r}: use a bundled prior ({', '.join(sorted(BUNDLED))}){hub} or a folder "
                         f"inside {' or '.join(map(str, roots))} (set ${MODEL_DIRS_ENV} to allow others)")


def bundled_students() -> list[str]:
    """Names of the bundled students whose weights are present (e.g. "shapes-cd")."""
    from priorkit.distill.core.loading import BUNDLED, BUNDLED_DIR, ModelLoadError, bundled_path
    from priorkit.distill.students.format import is_student_folder

    names = []
    for name in sorted(BUNDLED):
        try:
            bundled_path(name)
        except ModelLoadError:
            continue
        if is_student_folder(BUNDLED_DIR / name):
            names.append(name)
    return names


def _model_folders(keep: Callable[[Path], bool], limit: int, depth: int, found: list[str]) -> list[str]:
    """``found`` plus the folders in the model dirs (at most ``depth`` deep, no hidden parts) whose
    ``priorkit.json`` passes ``keep``, up to ``limit`` entries in all."""
    for root in model_dirs():
        if not root.is_dir():
            continue
        for meta in sorted(root.rglob("priorkit.json")):
            rel = meta.relative_to(root).parts
            if len(rel) > depth + 1 or any(p.startswith(".") for p in rel):
                continue
            if keep(meta):
                found.append(str(meta.parent))
            if len(found) >= limit:
                return found
    return found


def find_students(limit: int = 50, depth: int = 5) -> list[str]:
    """Bundled students by name, then student folders (``priorkit.json`` with kind "student") in the model dirs."""
    from priorkit.distill.students.format import is_student_folder

    return _model_folders(lambda meta: is_student_folder(meta.parent), limit, depth, bundled_students())


def _is_finetuned(meta: Path) -> bool:
    try:
        spec = json.loads(meta.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(spec, dict) and "finetune" in spec


def find_finetuned(limit: int = 20, depth: int = 5) -> list[str]:
    """Prior folders made by ``priorkit finetune`` (``priorkit.json`` with a "finetune" record) in the model dirs."""
    return _model_folders(_is_finetuned, limit, depth, [])


@functools.lru_cache(maxsize=3)
def load_model(source: str) -> Denoiser:
    """A cached, frozen `Denoiser` (one per source; the compute lock keeps jobs from sharing it at once)."""
    from priorkit.distill.loading import load_denoiser

    return load_denoiser(source).eval().requires_grad_(False)


def bundled_status() -> dict[str, str | None]:
    """For each bundled prior: None when its weights are present, else the reason they cannot be loaded."""
    from priorkit.distill.core.loading import BUNDLED, ModelLoadError, bundled_path

    status: dict[str, str | None] = {}
    for name in BUNDLED:
        try:
            bundled_path(name)
            status[name] = None
        except ModelLoadError as e:
            status[name] = str(e)
    return status


@functools.lru_cache(maxsize=4)
def toy_teacher(name: str, points: int = 2048, bandwidth: float = 0.06) -> Denoiser:
    """The teacher of a 2D target: the exact mixture ("gmm"), or the exact denoiser of a Gaussian kernel density
    estimate of ``points`` exact samples (bandwidth = the std of each kernel), a `GaussianMixture` in float64."""
    from priorkit.distill.core.gmm import GaussianMixture
    from priorkit.distill.zoo.toy import gmm_target, sample_target

    if name == "gmm":
        return gmm_target()
    if name not in TOYS:
        raise UserInputError(f"unknown 2D target {name!r}; use one of {', '.join(TOYS)}")
    x = sample_target(name, points, torch.Generator().manual_seed(0)).double()
    return GaussianMixture(torch.ones(points, dtype=torch.float64), x,
                           torch.full((points, 2), bandwidth**2, dtype=torch.float64))
