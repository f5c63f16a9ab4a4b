"""Textured export (decimate, xatlas, bake, GLB / OBJ + MTL + PNG) and the mesh turntable for people."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import trimesh

from priorkit.distill.core.cameras import Camera
from priorkit.gen3d.asset import export_asset
from priorkit.gen3d.config import GenerateConfig
from priorkit.gen3d.field import VoxelField
from priorkit.gen3d.preview import mesh_turntable, render_mesh
from priorkit.gen3d.texture import decimate, rasterize_uv, save_textured, texture_image, textured_mesh


def paint(x: torch.Tensor) -> torch.Tensor:
    """A colour that changes along every axis (a smooth pattern the voxel grid represents closely)."""
    return torch.stack([0.5 + 0.45 * torch.sin(3 * x[:, 0]), 0.5 + 0.4 * x[:, 1], 0.5 - 0.4 * x[:, 2]], dim=1)


@pytest.fixture(scope="module")
def painted() -> VoxelField:
    """A ball of radius 0.5 (density 200 inside, 1e-3 outside) painted with :func:`paint`."""
    return VoxelField(40, activation="exp").fill_(lambda x: 200.0 * (x.norm(dim=-1) < 0.5).float() + 1e-3, paint)


def sample_texture(mesh: trimesh.Trimesh, n: int = 3000) -> tuple[np.ndarray, np.ndarray]:
    """(surface points (n, 3), the texture's colour there (n, 3) in [0, 1]) of a loaded textured mesh."""
    pts, fi = trimesh.sample.sample_surface(mesh, n, seed=0)
    bary = trimesh.triangles.points_to_barycentric(mesh.triangles[fi], pts)
    uv = (mesh.visual.uv[mesh.faces[fi]] * bary[:, :, None]).sum(axis=1)
    img = texture_image(mesh)
    h, w, _ = img.shape
    rows = np.clip(((1 - uv[:, 1]) * h).astype(int), 0, h - 1)
    cols = np.clip((uv[:, 0] * w).astype(int), 0, w - 1)
    return pts, img[rows, cols] / 255.0


def test_glb_texture_sampled_at_mesh_points_matches_the_field(painted, tmp_path):
    mesh = textured_mesh(painted, painted.extract_mesh(96), faces=2000, size=256)
    assert len(mesh.faces) <= 2000 and mesh.visual.kind == "texture"
    path = save_textured(mesh, tmp_path / "a" / "mesh.glb")[0]
    loaded = trimesh.load(path, force="mesh")
    assert loaded.visual.kind == "texture" and len(loaded.faces) == len(mesh.faces)
    pts, colour = sample_texture(loaded)
    with torch.no_grad():
        truth = painted.query(torch.as_tensor(pts, dtype=torch.float32))[0].numpy()
    err = np.abs(colour - truth)
    assert err.mean() < 0.01 and np.percentile(err, 99) < 0.05, (err.mean(), err.max())
    # the size of the ball is kept by the decimation
    assert np.allclose(loaded.extents, 1.0, atol=0.03), loaded.extents


def test_obj_mtl_png_load_with_the_texture(painted, tmp_path):
    mesh = textured_mesh(painted, painted.extract_mesh(64), faces=1000, size=128)
    written = save_textured(mesh, tmp_path / "mesh.obj")
    assert sorted(p.name for p in written) == ["mesh.mtl", "mesh.obj", "mesh.png"]
    assert "map_Kd mesh.png" in (tmp_path / "mesh.mtl").read_text()
    loaded = trimesh.load(tmp_path / "mesh.obj", force="mesh")
    assert loaded.visual.kind == "texture" and loaded.visual.material.image.size == (128, 128)
    pts, colour = sample_texture(loaded, 1000)
    with torch.no_grad():
        truth = painted.query(torch.as_tensor(pts, dtype=torch.float32))[0].numpy()
    assert np.abs(colour - truth).mean() < 0.015
    with pytest.raises(ValueError, match="glb or .obj"):
        save_textured(mesh, tmp_path / "mesh.ply")


def test_texels_outside_the_charts_are_dilated_so_no_seam_shows(painted):
    mesh = textured_mesh(painted, painted.extract_mesh(64), faces=1000, size=128)
    img = texture_image(mesh)
    rows, cols, _ = rasterize_uv(mesh.visual.uv, mesh.faces, 128)
    covered = np.zeros((128, 128), dtype=bool)
    covered[rows, cols] = True
    assert 0.2 < covered.mean() < 1.0
    assert (img[~covered].sum(axis=1) > 0).all()  # no black texel left between the charts


def test_decimate_keeps_small_meshes_and_rejects_tiny_budgets():
    ball = trimesh.creation.icosphere(subdivisions=3)
    assert len(decimate(ball, 100_000).faces) == len(ball.faces)
    assert len(decimate(ball, 200).faces) <= 200
    with pytest.raises(ValueError, match="face budget"):
        decimate(ball, 2)


def test_mesh_render_for_people_is_sharp_shaded_and_the_right_size(painted):
    mesh = textured_mesh(painted, painted.extract_mesh(64), faces=1000, size=128)
    img = render_mesh(mesh, Camera(azimuth=0.0, elevation=15.0), 256)
    assert img.shape == (256, 256, 3) and (img[0, 0] == 255).all()  # background in the corner
    centre = img[128, 128].astype(float) / 255
    with torch.no_grad():
        front = painted.query(torch.tensor([[0.5, 0.0, 0.13]]))[0][0].numpy()  # the point seen at the centre
    ratio = centre / front
    assert np.ptp(ratio) < 0.1 and 0.5 < ratio.mean() <= 1.0  # albedo times one Lambertian factor
    frames = mesh_turntable(mesh, n_frames=3, size=64)
    assert frames.shape == (3, 64, 64, 3) and not np.array_equal(frames[0], frames[1])


def test_export_asset_writes_textured_glb_obj_and_a_vertex_coloured_ply(painted, tmp_path):
    cfg = GenerateConfig(export_resolution=48, faces=800, texture_size=128, turntable_frames=2, turntable_size=64)
    mesh, frames, paths = export_asset(painted, cfg, tmp_path)
    assert set(paths) == {"glb", "obj", "ply", "gif", "mtl", "texture"}
    assert mesh.visual.kind == "texture" and frames.shape == (2, 64, 64, 3)
    assert trimesh.load(paths["glb"], force="mesh").visual.kind == "texture"
    assert trimesh.load(paths["ply"], force="mesh").visual.kind == "vertex"
    cfg.texture = False
    mesh, _, paths = export_asset(painted, cfg, tmp_path / "plain")
    assert mesh.visual.kind == "vertex" and "texture" not in paths
    assert trimesh.load(paths["glb"], force="mesh").visual.kind == "vertex"
