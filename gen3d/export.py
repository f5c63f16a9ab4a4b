"""Mesh export of radiance fields (marching cubes), mesh/GIF writers and Chamfer distances.

Threshold convention: a density level ``tau`` is where a ray crossing one voxel of the field (edge h) reaches
opacity 1/2, ``1 - exp(-tau h) = 1/2`` i.e. ``tau = ln 2 / h`` (about 21.8 for the default 64^3 grid over
[-1, 1]^3, close to threestudio's isosurface threshold of 25). It ties the surface to what renders as
half-opaque at the field's own resolution and does not depend on the export resolution.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
import trimesh
from scipy.spatial import cKDTree
from skimage.measure import marching_cubes
from torch import nn

from priorkit.distill.core.atomic import write_bytes
from priorkit.gen3d.renderer import query_field
from priorkit.gen3d.representation import UNIT_BOX, BBox, sample_density_grid

MESH_FORMATS = (".glb", ".obj", ".ply")
REFERENCE_VOXEL = 2.0 / 63  # voxel edge of a 64^3 lattice over [-1, 1]^3


def default_threshold(field: nn.Module) -> float:
    """``ln 2 / h`` for the field's voxel edge h (``field.voxel_size``, else a 64^3 grid over [-1, 1]^3)."""
    size = getattr(field, "voxel_size", None)
    h = float(torch.as_tensor(size).float().mean()) if size is not None else REFERENCE_VOXEL
    return math.log(2.0) / h


@torch.no_grad()
def extract_mesh(field: nn.Module, resolution: int = 128, threshold: float | None = None, bbox: BBox = UNIT_BOX,
                 *, largest_component: bool = True, chunk: int = 65536) -> trimesh.Trimesh:
    """Mesh of the level set ``sigma = threshold`` of ``field`` inside ``bbox``, with vertex colours.

    Marching cubes (Lorensen & Cline 1987) on an R^3 density lattice padded with one empty layer, so the
    surface closes at the box faces. Vertex colours are the field's colour at the vertices (uint8 RGBA, alpha
    255). Cleaning: degenerate and duplicate faces and unreferenced vertices are removed; with
    ``largest_component`` only the connected component with the most faces is kept.

    Args:
        threshold: density level; None = :func:`default_threshold` (opacity 1/2 across one field voxel).
    Raises:
        ValueError: if the density never crosses the threshold (e.g. an empty field).
    """
    tau = default_threshold(field) if threshold is None else float(threshold)
    grid = sample_density_grid(field, resolution, bbox, chunk).cpu().numpy().astype(np.float32)
    lo, hi = np.asarray(bbox[0], dtype=np.float64), np.asarray(bbox[1], dtype=np.float64)
    if tau <= 0 or grid.max() <= tau:  # the zero padding is below any positive level
        raise ValueError(f"density range [{grid.min():.3g}, {grid.max():.3g}] does not cross threshold {tau:.3g}")
    padded = np.pad(grid, 1, mode="constant", constant_values=0.0)
    spacing = (hi - lo) / (resolution - 1)
    verts, faces, _, _ = marching_cubes(padded, level=tau, spacing=tuple(spacing), gradient_direction="ascent")
    verts = verts - spacing + lo  # undo the padding offset, lattice -> world
    mesh = trimesh.Trimesh(vertices=verts, faces=faces, process=False)
    mesh.update_faces(mesh.nondegenerate_faces())
    mesh.update_faces(mesh.unique_faces())
    mesh.merge_vertices()
    mesh.remove_unreferenced_vertices()
    if largest_component and len(mesh.faces):
        parts = mesh.split(only_watertight=False)
        if len(parts) > 1:
            mesh = max(parts, key=lambda m: len(m.faces))
    device = next(iter(list(field.parameters()) + list(field.buffers())), torch.empty(0)).device
    pts = torch.as_tensor(np.asarray(mesh.vertices), dtype=torch.float32, device=device)
    rgb = torch.cat([query_field(field, pts[i:i + chunk], False)[0] for i in range(0, len(pts), chunk)]) \
        if len(pts) else torch.zeros(0, 3)
    rgba = np.concatenate([(rgb.clamp(0, 1) * 255).round().byte().cpu().numpy(),
                           np.full((len(pts), 1), 255, dtype=np.uint8)], axis=1)
    mesh.visual = trimesh.visual.ColorVisuals(mesh, vertex_colors=rgba)
    return mesh


def save_mesh(mesh: trimesh.Trimesh, path: str | os.PathLike) -> Path:
    """Write ``mesh`` as .glb, .obj or .ply (chosen by the extension) atomically; returns the path.

    Raises:
        ValueError: for any other extension.
    """
    path = Path(path)
    ext = path.suffix.lower()
    if ext not in MESH_FORMATS:
        raise ValueError(f"unsupported mesh format {ext or path.name!r}; use one of {MESH_FORMATS}")
    data = mesh.export(file_type=ext[1:])
    write_bytes(path, data.encode() if isinstance(data, str) else data)
    return path


def save_turntable_gif(frames: np.ndarray | Sequence[np.ndarray], path: str | os.PathLike, fps: float = 12.0) -> Path:
    """Write uint8 frames (T, H, W, 3) as a looping GIF at ``fps`` frames per second (atomic); returns the path."""
    import imageio.v3 as iio

    path = Path(path)
    if path.suffix.lower() != ".gif":
        raise ValueError(f"expected a .gif path, got {path.name!r}")
    frames = np.asarray(frames, dtype=np.uint8)
    data = iio.imwrite("<bytes>", frames, extension=".gif", duration=1000.0 / fps, loop=0)
    write_bytes(path, data)
    return path


def _points(x: trimesh.Trimesh | np.ndarray | torch.Tensor, n: int, seed: int) -> np.ndarray:
    """Surface samples (n, 3) of a mesh, or the given points (M, 3) as float64."""
    if isinstance(x, trimesh.Trimesh):
        pts, _ = trimesh.sample.sample_surface(x, n, seed=seed)
        return np.asarray(pts, dtype=np.float64)
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=np.float64).reshape(-1, 3)


def _chamfer_points(a: np.ndarray, b: np.ndarray) -> float:
    """(mean_a min_b |a - b| + mean_b min_a |b - a|) / 2 for point sets (N, 3), (M, 3)."""
    d_ab, _ = cKDTree(b).query(a)
    d_ba, _ = cKDTree(a).query(b)
    return 0.5 * (float(d_ab.mean()) + float(d_ba.mean()))


def chamfer_distance(a: trimesh.Trimesh | np.ndarray | torch.Tensor, b: trimesh.Trimesh | np.ndarray | torch.Tensor,
                     n: int = 10000, seed: int = 0) -> float:
    """Symmetric mean Chamfer distance, NOT squared: ``(mean_a d(a, B) + mean_b d(b, A)) / 2``.

    Meshes are replaced by ``n`` area-uniform surface samples (seeded); point arrays (M, 3) are used as given.
    Distances are Euclidean, in world units.
    """
    return _chamfer_points(_points(a, n, seed), _points(b, n, seed + 1))


def chamfer_min_over_z_rotations(mesh: trimesh.Trimesh | np.ndarray | torch.Tensor,
                                 target: trimesh.Trimesh | np.ndarray | torch.Tensor,
                                 angles: Sequence[float] | np.ndarray | None = None, n: int = 10000,
                                 seed: int = 0, refine: float = 0.1) -> float:
    """Smallest :func:`chamfer_distance` between ``mesh`` rotated about the z axis and ``target``.

    ``angles`` in degrees (default every 5 degrees over a full turn) is the coarse search; the best angle is then
    refined by a golden-section search over the neighbouring grid interval down to ``refine`` degrees (0: no
    refinement), so that the minimum does not depend on the grid (a 2.5-degree misalignment of a cube of side 0.8
    adds ~0.003). For shapes whose orientation about the vertical is arbitrary (cube, cylinder). The same surface
    samples are reused for every angle.
    """
    angles = np.arange(0.0, 360.0, 5.0) if angles is None else np.asarray(angles, dtype=np.float64)
    pa, pb = _points(mesh, n, seed), _points(target, n, seed + 1)
    tree_b = cKDTree(pb)

    def at(deg: float) -> float:
        c, s = math.cos(math.radians(deg)), math.sin(math.radians(deg))
        pr = pa @ np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]]).T
        d_ab, _ = tree_b.query(pr)
        d_ba, _ = cKDTree(pr).query(pb)
        return 0.5 * (float(d_ab.mean()) + float(d_ba.mean()))

    values = [at(float(d)) for d in angles]
    i = int(np.argmin(values))
    best = values[i]
    if refine > 0 and len(angles) > 1:
        step = float(np.min(np.abs(np.diff(np.sort(angles))))) if len(angles) > 2 else 5.0
        lo, hi = float(angles[i]) - step, float(angles[i]) + step
        phi = (math.sqrt(5.0) - 1.0) / 2.0
        a, b = hi - phi * (hi - lo), lo + phi * (hi - lo)
        fa, fb = at(a), at(b)
        while hi - lo > refine:
            if fa < fb:
                hi, b, fb = b, a, fa
                a = hi - phi * (hi - lo)
                fa = at(a)
            else:
                lo, a, fa = a, b, fb
                b = lo + phi * (hi - lo)
                fb = at(b)
        best = min(best, fa, fb)
    return best


@torch.no_grad()
def volume_iou(field: nn.Module, inside: Callable[[torch.Tensor], torch.Tensor], *, n: int = 32768, seed: int = 0,
               threshold: float | None = None, z_rotations: bool = False, bbox: BBox = UNIT_BOX) -> float:
    """Intersection over union of the field's solid (density above ``threshold``, the export's level set, default
    :func:`default_threshold`) and the true solid (``inside(points) -> bool``) on ``n`` uniform points of ``bbox``.

    Unlike Chamfer, it sees a filled hole (a torus grown as a puck) and a filled concavity. With ``z_rotations``
    the largest value over rotations of the true solid about the z axis (every degree of a quarter turn).
    """
    g = torch.Generator().manual_seed(seed)
    lo, hi = torch.tensor(bbox[0], dtype=torch.float32), torch.tensor(bbox[1], dtype=torch.float32)
    p = lo + (hi - lo) * torch.rand(n, 3, generator=g)
    tau = default_threshold(field) if threshold is None else float(threshold)
    solid = field.density(p) > tau
    best = 0.0
    for deg in (range(90) if z_rotations else (0,)):
        c, s = math.cos(math.radians(deg)), math.sin(math.radians(deg))
        q = p @ torch.tensor([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])  # points in the rotated truth's frame
        truth = inside(q)
        union = int((solid | truth).sum())
        best = max(best, int((solid & truth).sum()) / union if union else 1.0)
    return best


def extent_error(mesh: trimesh.Trimesh | np.ndarray, target: trimesh.Trimesh | np.ndarray,
                 z_rotations: bool = False) -> float:
    """Largest relative error of the axis-aligned extents, ``max_axis |e_mesh / e_target - 1|``.

    Meshes or points (N, 3). With ``z_rotations`` the smallest value over rotations of ``mesh`` about the z axis
    (every degree of a quarter turn), for shapes whose orientation about the vertical is arbitrary (a cube).
    """
    pa = np.asarray(mesh.vertices if isinstance(mesh, trimesh.Trimesh) else mesh, dtype=np.float64)
    pb = np.asarray(target.vertices if isinstance(target, trimesh.Trimesh) else target, dtype=np.float64)
    ref = pb.max(axis=0) - pb.min(axis=0)
    best = math.inf
    for deg in (range(90) if z_rotations else (0,)):
        c, s = math.cos(math.radians(deg)), math.sin(math.radians(deg))
        p = pa @ np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]]).T
        best = min(best, float(np.abs((p.max(axis=0) - p.min(axis=0)) / ref - 1.0).max()))
    return best
