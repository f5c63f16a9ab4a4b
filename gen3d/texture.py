"""Textured assets from a radiance field: decimate the marching-cubes mesh, UV-unwrap it, bake the field's albedo.

1. :func:`decimate`: quadric edge collapse (Garland & Heckbert 1997, ``fast_simplification``) to a face budget;
2. :func:`unwrap`: charts and a packed atlas with xatlas (``xatlas.parametrize``); vertices on chart seams are split;
3. :func:`bake_texture`: every texel covered by a triangle in UV space takes the field's colour at its 3D point
   (barycentric interpolation of the triangle's corners); texels no triangle covers take the colour of the nearest
   covered texel (dilation past the chart borders, so bilinear filtering and mip-maps show no seams);
4. :func:`textured_mesh` / :func:`save_textured`: a trimesh with a PBR base-colour texture, written as GLB (the
   texture embedded) or OBJ + MTL + PNG.

UV convention: trimesh's (OpenGL): v = 0 is the bottom row of the image; trimesh flips v for glTF itself.

Example::

    mesh = extract_mesh(field, 128)                         # marching cubes, vertex colours
    asset = textured_mesh(field, mesh, faces=4000, size=512)
    save_textured(asset, "out/mesh.glb"); save_textured(asset, "out/mesh.obj")   # + mesh.mtl, mesh.png
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import torch
import trimesh
from scipy import ndimage
from torch import nn

from priorkit.distill.core.atomic import write_bytes
from priorkit.gen3d.renderer import query_field

DEFAULT_FACES = 4000
DEFAULT_TEXTURE = 512
PADDING = 4  # texels between charts in the atlas


def decimate(mesh: trimesh.Trimesh, faces: int) -> trimesh.Trimesh:
    """``mesh`` reduced to at most about ``faces`` triangles by quadric edge collapse (unchanged if it has fewer).

    Vertex colours are dropped (the texture carries the colour). Raises ValueError for ``faces < 4``.
    """
    if faces < 4:
        raise ValueError(f"face budget must be >= 4; got {faces}")
    if len(mesh.faces) <= faces:
        return trimesh.Trimesh(np.asarray(mesh.vertices), np.asarray(mesh.faces), process=False)
    import fast_simplification

    v, f = fast_simplification.simplify(np.asarray(mesh.vertices, dtype=np.float64),
                                        np.asarray(mesh.faces, dtype=np.int32), target_count=int(faces))
    out = trimesh.Trimesh(v, f, process=False)
    out.update_faces(out.nondegenerate_faces())
    out.remove_unreferenced_vertices()
    return out


def unwrap(mesh: trimesh.Trimesh, size: int = DEFAULT_TEXTURE) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """xatlas charts packed into a ``size`` x ``size`` atlas: (vertices (V', 3), faces (F, 3), uv (V', 2) in [0, 1]).

    Vertices on seams are duplicated (one per chart); faces keep their order.
    """
    import xatlas

    atlas = xatlas.Atlas()
    atlas.add_mesh(np.asarray(mesh.vertices, dtype=np.float32), np.asarray(mesh.faces, dtype=np.uint32))
    pack = xatlas.PackOptions()
    pack.resolution, pack.padding, pack.bilinear = int(size), PADDING, True
    atlas.generate(xatlas.ChartOptions(), pack)
    vmap, faces, uv = atlas[0]
    return np.asarray(mesh.vertices)[vmap], faces.astype(np.int64), uv.astype(np.float64)


def rasterize_uv(uv: np.ndarray, faces: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Texels whose centre lies in a UV triangle: (rows (K,), cols (K,), face (K,), bary (K, 3)) packed as
    ``rows, cols, (face, bary)``.

    Texel (r, c) has centre ``u = (c + 0.5) / size``, ``v = 1 - (r + 0.5) / size``. Vectorised over the
    triangles' bounding boxes (every candidate texel is tested with its barycentric coordinates).
    """
    p = uv[faces] * size  # (F, 3, 2) in texel units, x = u * size, y = v * size
    p[..., 1] = size - p[..., 1]  # y down: row coordinate
    lo = np.clip(np.floor(p.min(axis=1) - 0.5), 0, size - 1).astype(np.int64)  # (F, 2)
    hi = np.clip(np.ceil(p.max(axis=1) - 0.5), 0, size - 1).astype(np.int64)
    w, h = hi[:, 0] - lo[:, 0] + 1, hi[:, 1] - lo[:, 1] + 1
    n = w * h
    face = np.repeat(np.arange(len(faces)), n)
    local = np.arange(n.sum()) - np.repeat(np.cumsum(n) - n, n)
    cx = lo[face, 0] + local % w[face]
    cy = lo[face, 1] + local // w[face]
    q = np.stack([cx + 0.5, cy + 0.5], axis=1)
    a, b, c = p[face, 0], p[face, 1], p[face, 2]
    v0, v1, v2 = b - a, c - a, q - a
    den = v0[:, 0] * v1[:, 1] - v1[:, 0] * v0[:, 1]
    ok = np.abs(den) > 1e-12
    den = np.where(ok, den, 1.0)
    l1 = (v2[:, 0] * v1[:, 1] - v1[:, 0] * v2[:, 1]) / den
    l2 = (v0[:, 0] * v2[:, 1] - v2[:, 0] * v0[:, 1]) / den
    bary = np.stack([1.0 - l1 - l2, l1, l2], axis=1)
    inside = ok & (bary >= -1e-6).all(axis=1)
    return cy[inside], cx[inside], np.concatenate([face[inside, None], bary[inside]], axis=1)


@torch.no_grad()
def bake_texture(field: nn.Module, vertices: np.ndarray, faces: np.ndarray, uv: np.ndarray, size: int,
                 chunk: int = 65536) -> np.ndarray:
    """The field's colour at each covered texel's 3D point, dilated over the rest: uint8 (size, size, 3)."""
    rows, cols, fb = rasterize_uv(uv, faces, size)
    face, bary = fb[:, 0].astype(np.int64), fb[:, 1:]
    pts = (vertices[faces[face]] * bary[:, :, None]).sum(axis=1)
    device = next(iter(list(field.parameters()) + list(field.buffers())), torch.empty(0)).device
    x = torch.as_tensor(pts, dtype=torch.float32, device=device)
    rgb = torch.cat([query_field(field, x[i:i + chunk], False)[0] for i in range(0, len(x), chunk)]) \
        if len(x) else torch.zeros(0, 3)
    image = np.zeros((size, size, 3), dtype=np.float32)
    covered = np.zeros((size, size), dtype=bool)
    image[rows, cols] = rgb.clamp(0, 1).float().cpu().numpy()
    covered[rows, cols] = True
    if covered.any() and not covered.all():  # every empty texel takes its nearest covered texel's colour
        _, (ri, ci) = ndimage.distance_transform_edt(~covered, return_indices=True)
        image = image[ri, ci]
    return (image * 255).round().astype(np.uint8)


def textured_mesh(field: nn.Module, mesh: trimesh.Trimesh, faces: int = DEFAULT_FACES,
                  size: int = DEFAULT_TEXTURE) -> trimesh.Trimesh:
    """``mesh`` decimated to ``faces``, unwrapped and textured with the field's colour (PBR base colour)."""
    from PIL import Image

    small = decimate(mesh, faces)
    vertices, tri, uv = unwrap(small, size)
    image = Image.fromarray(bake_texture(field, vertices, tri, uv, size))
    material = trimesh.visual.material.PBRMaterial(name="albedo", baseColorTexture=image, metallicFactor=0.0,
                                                   roughnessFactor=1.0)
    return trimesh.Trimesh(vertices, tri, visual=trimesh.visual.TextureVisuals(uv=uv, material=material),
                           process=False)


def save_textured(mesh: trimesh.Trimesh, path: str | os.PathLike) -> list[Path]:
    """Write a textured mesh as .glb (texture embedded) or .obj (+ .mtl + .png beside it), atomically.

    Returns the written paths (the mesh file first). Raises ValueError for other extensions.
    """
    path = Path(path)
    ext = path.suffix.lower()
    if ext == ".glb":
        write_bytes(path, mesh.export(file_type="glb"))
        return [path]
    if ext != ".obj":
        raise ValueError(f"textured meshes are written as .glb or .obj; got {path.name!r}")
    from trimesh.exchange.obj import export_obj

    text, files = export_obj(mesh, include_texture=True, return_texture=True, mtl_name=f"{path.stem}.mtl")
    written = [path]
    images = [n for n in files if not n.endswith(".mtl")]
    for name, data in files.items():
        if name.endswith(".mtl"):  # point the material at the image named after the mesh
            for old in images:
                data = data.replace(old.encode(), f"{path.stem}.png".encode())
            name = f"{path.stem}.mtl"
        else:
            name = f"{path.stem}.png"
        write_bytes(path.with_name(name), data)
        written.append(path.with_name(name))
    write_bytes(path, text.encode())
    return written


def texture_image(mesh: trimesh.Trimesh) -> np.ndarray:
    """The base-colour texture of a textured mesh as uint8 (H, W, 3)."""
    mat = mesh.visual.material
    img = getattr(mat, "baseColorTexture", None) or getattr(mat, "image", None)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    from PIL import Image

    return np.asarray(Image.open(buf).convert("RGB"))


__all__ = ["DEFAULT_FACES", "DEFAULT_TEXTURE", "bake_texture", "decimate", "rasterize_uv", "save_textured",
           "texture_image", "textured_mesh", "unwrap"]
