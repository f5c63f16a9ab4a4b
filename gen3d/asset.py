"""The files of one finished particle: mesh.glb / mesh.obj (+ .mtl, .png) / mesh.ply and turntable.gif.

With ``GenerateConfig.texture`` (the default) the GLB and the OBJ carry a UV texture baked from the field's albedo
(``priorkit.gen3d.texture``) and the PLY the full-resolution marching-cubes mesh with vertex colours; without it all
three carry vertex colours. The turntable is drawn from the exported mesh at ``turntable_size`` for people
(``priorkit.gen3d.preview``); a particle without a surface gets a turntable of its field.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

log = logging.getLogger(__name__)


def export_asset(field: Any, cfg: Any, folder: Path | None) -> tuple[Any, np.ndarray, dict[str, Path]]:
    """(the exported mesh or None, turntable frames (T, S, S, 3) uint8, written paths by kind) of one particle.

    ``field`` is a Representation, ``cfg`` a GenerateConfig; nothing is written when ``folder`` is None. Kinds:
    "glb", "obj", "ply", "gif", and with a texture "mtl" and "texture" (the PNG beside the OBJ).
    """
    from priorkit.gen3d.export import save_mesh, save_turntable_gif
    from priorkit.gen3d.preview import mesh_turntable

    try:
        full = field.extract_mesh(cfg.export_resolution)
    except ValueError as e:
        log.warning("no mesh for this particle: %s", e)
        full = None
    mesh = full
    if full is not None and cfg.texture:
        from priorkit.gen3d.texture import textured_mesh

        mesh = textured_mesh(field, full, faces=cfg.faces, size=cfg.texture_size)
    if mesh is not None:
        frames = mesh_turntable(mesh, n_frames=cfg.turntable_frames, size=cfg.turntable_size)
    else:
        frames = _field_turntable(field, cfg)
    paths: dict[str, Path] = {}
    if folder is None:
        return mesh, frames, paths
    if mesh is not None and cfg.texture:
        from priorkit.gen3d.texture import save_textured

        paths["glb"] = save_textured(mesh, folder / "mesh.glb")[0]
        obj, *extra = save_textured(mesh, folder / "mesh.obj")
        paths["obj"] = obj
        for p in extra:
            paths["mtl" if p.suffix == ".mtl" else "texture"] = p
        paths["ply"] = save_mesh(full, folder / "mesh.ply")
    elif mesh is not None:
        for ext in ("glb", "obj", "ply"):
            paths[ext] = save_mesh(mesh, folder / f"mesh.{ext}")
    paths["gif"] = save_turntable_gif(frames, folder / "turntable.gif")
    return mesh, frames, paths


def _field_turntable(field: Any, cfg: Any) -> np.ndarray:
    """Volume-rendered turntable of a field with no surface, at most 64 px, enlarged to ``turntable_size``."""
    from priorkit.gen3d.renderer import render_turntable

    small = min(cfg.turntable_size, 64)
    frames = render_turntable(field, n_frames=cfg.turntable_frames, size=small, background=1.0,
                              n_samples=cfg.n_samples, shading="lambertian",
                              light_dir=torch.tensor([0.3, -0.2, 1.0]), ambient=cfg.ambient)
    k = max(1, cfg.turntable_size // small)
    return frames.repeat(k, axis=1).repeat(k, axis=2)


__all__ = ["export_asset"]
