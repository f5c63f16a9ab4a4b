"""Pictures of an asset for people: a small z-buffer rasterizer of (textured or vertex-coloured) triangle meshes.

The prior scores renders of 32-64 px; people look at the exported mesh. :func:`render_mesh` draws a trimesh seen by
a camera of ``priorkit.distill.core.cameras`` (z up, pinhole, the same projection as ``Camera.rays``) at any size,
2x2 supersampled, with perspective-correct texture coordinates, smooth normals and Lambertian shading under a light
that sits above and to the left of the viewer. :func:`mesh_turntable` is a full turn of such frames.

Example::

    frames = mesh_turntable(textured_mesh(field, mesh), n_frames=24, size=256)     # (24, 256, 256, 3) uint8
"""

from __future__ import annotations

import math

import numpy as np
import trimesh

from priorkit.distill.core.cameras import Camera

LIGHT_IN_CAMERA = (-0.4, 0.6, -1.0)  # (right, up, forward) towards the light: upper left, in front of the object


def smooth_normals(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Area-weighted vertex normals (V, 3), shared by vertices at the same position (UV seams do not show)."""
    _, key = np.unique(np.round(vertices, 6), axis=0, return_inverse=True)
    key = key.reshape(-1)
    tri = vertices[faces]
    fn = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])  # length = 2 x area
    acc = np.zeros((key.max() + 1, 3))
    for k in range(3):
        np.add.at(acc, key[faces[:, k]], fn)
    n = acc[key]
    return n / np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-12)


def _vertex_attributes(mesh: trimesh.Trimesh) -> tuple[np.ndarray | None, np.ndarray | None, np.ndarray]:
    """(uv (V, 2) or None, texture float (H, W, 3) or None, vertex colours float (V, 3))."""
    visual = mesh.visual
    if visual.kind == "texture" and visual.uv is not None:
        mat = visual.material
        img = getattr(mat, "baseColorTexture", None) or getattr(mat, "image", None)
        if img is not None:
            tex = np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0
            return np.asarray(visual.uv, dtype=np.float64), tex, np.ones((len(mesh.vertices), 3))
    if visual.kind == "vertex":
        return None, None, np.asarray(visual.vertex_colors[:, :3], dtype=np.float64) / 255.0
    return None, None, np.full((len(mesh.vertices), 3), 0.8)


def render_mesh(mesh: trimesh.Trimesh, camera: Camera, size: int = 256, *, background: float = 1.0,
                ambient: float = 0.3, supersample: int = 2) -> np.ndarray:
    """The mesh seen by ``camera``: uint8 (size, size, 3), Lambertian-shaded albedo over a grey ``background``."""
    s = size * supersample
    vertices, faces = np.asarray(mesh.vertices, dtype=np.float64), np.asarray(mesh.faces, dtype=np.int64)
    uv, tex, colours = _vertex_attributes(mesh)
    normals = smooth_normals(vertices, faces)
    rot = camera.rotation().double().numpy()  # columns: right, up, forward
    pc = (vertices - camera.eye.double().numpy()) @ rot  # camera coordinates (V, 3)
    focal = 0.5 * s / math.tan(math.radians(camera.fov) / 2)
    z = np.maximum(pc[:, 2], 1e-6)
    screen = np.stack([pc[:, 0] / z * focal + 0.5 * s, -pc[:, 1] / z * focal + 0.5 * s], axis=1)
    p = screen[faces]  # (F, 3, 2)
    area = (p[:, 1, 0] - p[:, 0, 0]) * (p[:, 2, 1] - p[:, 0, 1]) - (p[:, 2, 0] - p[:, 0, 0]) * (p[:, 1, 1] - p[:, 0, 1])
    keep = np.abs(area) > 1e-12
    tri = vertices[faces]  # closed meshes (marching cubes): draw only the faces turned towards the camera
    fn = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    outward = np.sign((fn * tri.mean(axis=1)).sum())  # the sign of the signed volume: the winding convention
    keep &= (fn * (tri.mean(axis=1) - camera.eye.double().numpy())).sum(axis=1) * outward < 0
    faces, p = faces[keep], p[keep]
    lo = np.clip(np.floor(p.min(axis=1) - 0.5), 0, s - 1).astype(np.int64)
    hi = np.clip(np.ceil(p.max(axis=1) - 0.5), 0, s - 1).astype(np.int64)
    w, h = np.maximum(hi[:, 0] - lo[:, 0] + 1, 0), np.maximum(hi[:, 1] - lo[:, 1] + 1, 0)
    n = w * h
    face = np.repeat(np.arange(len(faces)), n)
    local = np.arange(n.sum()) - np.repeat(np.cumsum(n) - n, n)
    px, py = lo[face, 0] + local % w[face], lo[face, 1] + local // w[face]
    q = np.stack([px + 0.5, py + 0.5], axis=1)
    a, b, c = p[face, 0], p[face, 1], p[face, 2]
    den = (b[:, 0] - a[:, 0]) * (c[:, 1] - a[:, 1]) - (c[:, 0] - a[:, 0]) * (b[:, 1] - a[:, 1])
    l1 = ((q[:, 0] - a[:, 0]) * (c[:, 1] - a[:, 1]) - (c[:, 0] - a[:, 0]) * (q[:, 1] - a[:, 1])) / den
    l2 = ((b[:, 0] - a[:, 0]) * (q[:, 1] - a[:, 1]) - (q[:, 0] - a[:, 0]) * (b[:, 1] - a[:, 1])) / den
    bary = np.stack([1.0 - l1 - l2, l1, l2], axis=1)
    inside = (bary >= -1e-7).all(axis=1)
    face, px, py, bary = face[inside], px[inside], py[inside], bary[inside]
    corners = faces[face]  # (K, 3)
    w_persp = bary / z[corners]  # perspective-correct weights
    inv_z = w_persp.sum(axis=1)
    w_persp /= inv_z[:, None]
    pix = py * s + px
    order = np.lexsort((-inv_z, pix))  # per pixel, the nearest fragment first
    first = np.ones(len(order), dtype=bool)
    first[1:] = pix[order][1:] != pix[order][:-1]
    sel = order[first]
    wts, corners, pix = w_persp[sel], corners[sel], pix[sel]
    albedo = (colours[corners] * wts[..., None]).sum(axis=1)
    if tex is not None:
        t_uv = (uv[corners] * wts[..., None]).sum(axis=1)
        th, tw = tex.shape[:2]
        col = np.clip((t_uv[:, 0] * tw).astype(np.int64), 0, tw - 1)
        row = np.clip(((1.0 - t_uv[:, 1]) * th).astype(np.int64), 0, th - 1)
        albedo = tex[row, col]
    nrm = (normals[corners] * wts[..., None]).sum(axis=1)
    nrm /= np.maximum(np.linalg.norm(nrm, axis=1, keepdims=True), 1e-12)
    light = rot @ np.asarray(LIGHT_IN_CAMERA)
    light /= np.linalg.norm(light)
    view = vertices[corners[:, 0]] - camera.eye.double().numpy()
    nrm = np.where(((nrm * view).sum(axis=1) > 0)[:, None], -nrm, nrm)  # the side facing the camera
    shade = ambient + (1.0 - ambient) * np.clip(nrm @ light, 0.0, None)
    image = np.full((s * s, 3), float(background))
    image[pix] = albedo * shade[:, None]
    image = image.reshape(size, supersample, size, supersample, 3).mean(axis=(1, 3))
    return (np.clip(image, 0, 1) * 255).round().astype(np.uint8)


def mesh_turntable(mesh: trimesh.Trimesh, n_frames: int = 24, size: int = 256, elevation: float = 15.0, *,
                   start_azimuth: float = 0.0, **kw) -> np.ndarray:
    """Frames of a full turn around the z axis (azimuths ``start + 360 i / n``): uint8 (n_frames, size, size, 3)."""
    return np.stack([render_mesh(mesh, Camera(azimuth=start_azimuth + 360.0 * i / n_frames, elevation=elevation),
                                 size, **kw) for i in range(n_frames)])


__all__ = ["mesh_turntable", "render_mesh", "smooth_normals"]
