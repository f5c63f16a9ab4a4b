"""The front door for loading models: `load_denoiser` reads bundled names, diffusers folders, hub ids and the
folders of distilled students.

``priorkit.distill.core.loading`` does the loading; core imports nothing from the students, so this module,
above both, imports the student format, which registers its folder kind with the core loader.
"""

from __future__ import annotations

from priorkit.distill.core.loading import (
    BUNDLED,
    BUNDLED_DIR,
    ModelLoadError,
    PickleRefusedError,
    bundled_path,
    load_denoiser,
    load_prior,
)
from priorkit.distill.students import format as _student_format  # noqa: F401  (registers "student" folders)

__all__ = ["BUNDLED", "BUNDLED_DIR", "ModelLoadError", "PickleRefusedError", "bundled_path", "load_denoiser",
           "load_prior"]
