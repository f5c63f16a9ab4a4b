"""Tests of gen3d's fields, nerfacc renderer and mesh export (fast, CPU; one CUDA test)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import trimesh

from priorkit.distill.core.cameras import Camera
from priorkit.gen3d.export import (
    chamfer_distance,
    chamfer_min_over_z_rotations,
    default_threshold,
    extract_mesh,
    save_mesh,
    save_turntable_gif,
)
from priorkit.gen3d.field import AnalyticBallField, Background, MLPField, VoxelField, lattice_points
from priorkit.gen3d.renderer import make_estimator, ray_box_intersection, render, render_image, render_turntable


def _ball_truth(origins: torch.Tensor, directions: torch.Tensor, sigma0: float, radius: float):
    """Analytic opacity, expected depth and hit mask of a centred constant-density ball, rays (N, 3)."""
    b = torch.linalg.cross(origins, directions).norm(dim=-1)  # impact parameter
    chord = 2 * (radius**2 - b**2).clamp_min(0).sqrt()
    opacity = 1 - torch.exp(-sigma0 * chord)  # Beer-Lambert
    t_in = -(origins * directions).sum(-1) - chord / 2
    # E[t | terminate] for an exponential law truncated to the chord
    depth = t_in + 1 / sigma0 - chord * torch.exp(-sigma0 * chord) / (-torch.expm1(-sigma0 * chord)).clamp_min(1e-12)
    return opacity, depth, b < radius


def _rays(camera: Camera, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    o, d = camera.rays(size)
    return o.reshape(-1, 3), d.reshape(-1, 3)


@pytest.fixture(scope="module")
def sphere_field() -> VoxelField:
    """A 64^3 VoxelField holding a sphere of radius 0.5: density crosses the default threshold at r = 0.5."""
    field = VoxelField(64)
    tau = default_threshold(field)
    return field.fill_(lambda x: tau * torch.exp(20 * (0.5 - x.norm(dim=-1))), lambda x: 0.5 + 0.4 * x)


def test_ball_opacity_matches_beer_lambert():
    sigma0, radius = 1.5, 0.6
    ball = AnalyticBallField(sigma0=sigma0, radius=radius)
    o, d = _rays(Camera(30.0, 20.0), 32)
    truth, _, hit = _ball_truth(o, d, sigma0, radius)
    assert 0.2 < hit.float().mean() < 0.8  # both hits and misses
    out = render(ball, o, d, n_samples=1024, stratified=False)
    assert out.opacity.shape == (1024, 1)
    assert (out.opacity[:, 0] - truth).abs().max() < 1e-2
    assert out.opacity[~hit].abs().max() < 1e-6
    # stratified quadrature is unbiased: small mean error, bounded max error
    out = render(ball, o, d, n_samples=256, generator=torch.Generator().manual_seed(0))
    err = out.opacity[:, 0] - truth
    assert err.mean().abs() < 2e-3 and err.abs().max() < 3e-2


def test_ball_depth_and_colour():
    sigma0, radius = 30.0, 0.6
    ball = AnalyticBallField(sigma0=sigma0, radius=radius, rgb=(0.9, 0.3, 0.1))
    o, d = _rays(Camera(-60.0, 40.0), 32)
    truth, depth, _ = _ball_truth(o, d, sigma0, radius)
    out = render(ball, o, d, n_samples=1024, stratified=False, background=(0.0, 1.0, 0.0))
    opaque = truth > 0.99
    assert opaque.sum() > 100
    assert (out.depth[opaque, 0] - depth[opaque]).abs().max() < 1e-2
    expected = truth[:, None] * torch.tensor([0.9, 0.3, 0.1]) + (1 - truth[:, None]) * torch.tensor([0.0, 1.0, 0.0])
    assert (out.rgb - expected).abs().max() < 1e-2


def test_ray_box_intersection_and_misses():
    o = torch.tensor([[3.0, 0.0, 0.0], [3.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    d = torch.tensor([[-1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    t0, t1 = ray_box_intersection(o, d)
    assert torch.allclose(t0[0], torch.tensor(2.0)) and torch.allclose(t1[0], torch.tensor(4.0))
    assert t1[1] <= t0[1]  # parallel ray outside the box misses
    assert torch.allclose(t1[2], torch.tensor(1.0))  # ray from inside exits at z = 1
    out = render(VoxelField(8), o[1:2], d[1:2], background=0.25, n_samples=8)
    assert out.opacity.item() == 0.0 and torch.allclose(out.rgb, torch.full((1, 3), 0.25))


def test_voxel_field_vertices_and_axis_order():
    field = VoxelField(16)
    with torch.no_grad():
        field.density_logits.normal_()
        field.color_logits.normal_()
    pts = lattice_points(16)
    ijk = torch.tensor([[1, 5, 12], [14, 0, 7], [3, 9, 2]])
    x = pts[ijk[:, 0], ijk[:, 1], ijk[:, 2]]
    rgb, sigma = field(x)
    logits = field.density_logits[ijk[:, 0], ijk[:, 1], ijk[:, 2]]
    assert torch.allclose(sigma, torch.nn.functional.softplus(logits), atol=1e-5)
    assert torch.allclose(rgb, torch.sigmoid(field.color_logits[:, ijk[:, 0], ijk[:, 1], ijk[:, 2]].T), atol=1e-5)
    assert torch.allclose(field.density_grid(16), torch.nn.functional.softplus(field.density_logits), atol=1e-5)


@pytest.mark.parametrize(("centre", "camera", "axis", "sign"), [
    ((0.0, 0.5, 0.0), Camera(0.0, 0.0), "col", +1),   # +y is to the right seen from +x
    ((0.0, 0.0, 0.5), Camera(0.0, 0.0), "row", -1),   # +z is up (smaller rows)
    ((0.5, 0.0, 0.0), Camera(90.0, 0.0), "col", -1),  # +x is to the left seen from +y
    ((0.5, 0.0, 0.0), Camera(0.0, 0.0), "size", +1),  # +x is nearer to a camera on +x: bigger
])
def test_offcentre_blob_on_correct_side(centre, camera, axis, sign):
    c = torch.tensor(centre)
    field = VoxelField(32).fill_(lambda x: 200.0 * torch.exp(-((x - c) ** 2).sum(-1) / (2 * 0.12**2)))
    size = 32
    with torch.no_grad():
        alpha = render_image(field, camera, size, n_samples=64, stratified=False).opacity[..., 0]
    rows, cols = torch.meshgrid(torch.arange(size) + 0.5, torch.arange(size) + 0.5, indexing="ij")
    if axis == "size":
        ref = VoxelField(32).fill_(lambda x: 200.0 * torch.exp(-((x + c) ** 2).sum(-1) / (2 * 0.12**2)))
        with torch.no_grad():
            far = render_image(ref, camera, size, n_samples=64, stratified=False).opacity[..., 0]
        assert alpha.sum() > 1.2 * far.sum()
        return
    coord = (cols if axis == "col" else rows) - size / 2
    centroid = (alpha * coord).sum() / alpha.sum()
    assert sign * centroid > 3.0  # pixels off the image centre


@pytest.mark.parametrize("shading", ["albedo", "lambertian", "textureless"])
def test_gradients_reach_voxel_field_and_background(shading):
    field, bg = VoxelField(16), Background("learned")
    out = render_image(field, Camera(20.0, 10.0), 16, n_samples=32, background=bg, shading=shading,
                       generator=torch.Generator().manual_seed(0), light_dir=(0.3, 0.2, 1.0))
    assert out.rgb.shape == (16, 16, 3) and out.depth.shape == (16, 16, 1)
    (out.rgb.sum() + out.orientation.sum() if out.orientation is not None else out.rgb.sum()).backward()
    assert field.density_logits.grad.abs().sum() > 0 and torch.isfinite(field.density_logits.grad).all()
    if shading != "textureless":
        assert field.color_logits.grad.abs().sum() > 0
    assert all(p.grad is not None for p in bg.parameters())
    assert bg.mlp[-1].bias.grad.abs().sum() > 0  # the zero-initialised last layer passes no gradient further yet


def test_gradients_reach_mlp_field_with_normals():
    field = MLPField(hidden=32, n_layers=2)
    with torch.no_grad():  # break the zero init of the last layer so every weight gets a gradient
        field.mlp[-1].weight.normal_(std=0.1)
    out = render_image(field, Camera(0.0, 30.0), 8, n_samples=16, shading="lambertian", background=1.0)
    out.rgb.mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in field.parameters())
    assert field.mlp[0].weight.grad.abs().sum() > 0


def test_normals_point_outward(sphere_field):
    x = torch.nn.functional.normalize(torch.randn(200, 3, generator=torch.Generator().manual_seed(1)), dim=-1)
    for field, r in [(sphere_field, 0.5), (MLPField(), 0.3), (AnalyticBallField(), 0.6)]:
        n = field.normal(x * r)
        assert (n * x).sum(-1).min() > 0.95, type(field).__name__


def test_chunked_render_equals_unchunked():
    field = VoxelField(16)
    o, d = _rays(Camera(45.0, 30.0), 12)
    a = render(field, o, d, n_samples=16, stratified=False, shading="lambertian", background=1.0)
    b = render(field, o, d, n_samples=16, stratified=False, shading="lambertian", background=1.0, chunk=50)
    for f in ("rgb", "opacity", "depth", "normal", "orientation"):
        assert torch.allclose(getattr(a, f), getattr(b, f), atol=1e-6), f


def test_export_sphere_mesh(sphere_field, tmp_path):
    mesh = extract_mesh(sphere_field, resolution=96)
    truth = trimesh.creation.icosphere(subdivisions=4, radius=0.5)
    assert chamfer_distance(mesh, truth) < 0.02
    assert mesh.is_watertight and mesh.volume > 0
    assert abs(mesh.volume / truth.volume - 1) < 0.05
    colours = mesh.visual.vertex_colors
    assert colours.dtype == np.uint8 and colours.shape == (len(mesh.vertices), 4) and (colours[:, 3] == 255).all()
    with torch.no_grad():
        rgb = sphere_field(torch.as_tensor(mesh.vertices, dtype=torch.float32))[0].numpy()
    assert np.abs(colours[:, :3] / 255.0 - rgb).max() < 1.5 / 255
    for ext in ("glb", "obj", "ply"):
        path = save_mesh(mesh, tmp_path / "out" / f"sphere.{ext}")
        loaded = trimesh.load(path, force="mesh")
        assert len(loaded.faces) == len(mesh.faces)
        assert chamfer_distance(loaded.vertices, mesh.vertices) < 1e-5
        if ext != "obj":
            assert loaded.visual.kind == "vertex"
            assert np.abs(loaded.visual.vertex_colors.astype(int) - colours.astype(int)).max() <= 1
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["sphere.glb", "sphere.obj", "sphere.ply"]
    with pytest.raises(ValueError, match="unsupported mesh format"):
        save_mesh(mesh, tmp_path / "sphere.fbx")


def test_extract_mesh_empty_field_raises():
    with pytest.raises(ValueError, match="does not cross"):
        extract_mesh(VoxelField(16, blob_density=0.0), resolution=16)


def test_turntable_gif(sphere_field, tmp_path):
    import imageio.v3 as iio

    frames = render_turntable(sphere_field, n_frames=3, size=16, elevation=20.0, n_samples=32)
    assert frames.shape == (3, 16, 16, 3) and frames.dtype == np.uint8
    assert frames[0, 0, 0].tolist() == [255, 255, 255] and frames[0, 8, 8].max() < 250  # white bg, object centre
    path = save_turntable_gif(frames, tmp_path / "gif" / "turn.gif", fps=10)
    assert iio.imread(path).shape[0] == 3


def test_chamfer_conventions():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(500, 3))
    assert chamfer_distance(a, a) == 0.0
    assert math.isclose(chamfer_distance(a, a + np.array([0.0, 0.0, 0.1])), 0.1, rel_tol=0.2)  # not squared
    c, s = math.cos(math.radians(30)), math.sin(math.radians(30))
    b = a @ np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]]).T  # a turned by +30 degrees about z
    assert chamfer_distance(b, a) > 0.05
    assert chamfer_min_over_z_rotations(b, a, angles=[0.0, 330.0]) < 1e-9
    cube = trimesh.creation.box(extents=(1, 1, 1))
    turned = cube.copy().apply_transform(trimesh.transformations.rotation_matrix(math.radians(90), [0, 0, 1]))
    assert chamfer_distance(turned, cube) < 0.03


def test_chamfer_min_over_z_rotations_finds_angles_between_the_grid_points():
    cube = trimesh.creation.box(extents=(0.8, 0.8, 0.8))
    turned = cube.copy().apply_transform(trimesh.transformations.rotation_matrix(math.radians(17.5), [0, 0, 1]))
    floor = chamfer_distance(cube, cube)  # two independent surface samplings of the same cube (~0.0097)
    coarse = chamfer_min_over_z_rotations(turned, cube, refine=0.0)  # best grid points: 15 or 20 degrees away
    assert coarse > floor + 0.002
    assert chamfer_min_over_z_rotations(turned, cube) < floor + 0.0003


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the OccGridEstimator path needs CUDA")
def test_occgrid_path_matches_cpu_path_on_ball():
    sigma0, radius = 1.5, 0.6
    ball = AnalyticBallField(sigma0=sigma0, radius=radius).cuda()
    o, d = (t.cuda() for t in _rays(Camera(30.0, 20.0), 32))
    step = 2e-3
    estimator = make_estimator(ball, "cuda", resolution=64, render_step_size=step)
    grid = render(ball, o, d, estimator=estimator, render_step_size=step, stratified=False, background=1.0,
                  shading="lambertian")
    dense = render(ball, o, d, n_samples=1024, stratified=False, background=1.0, shading="lambertian")
    truth, _, _ = _ball_truth(o, d, sigma0, radius)
    assert (grid.opacity[:, 0] - truth).abs().max() < 2e-2
    assert (grid.opacity - dense.opacity).abs().max() < 2e-2
    assert (grid.rgb - dense.rgb).abs().max() < 3e-2
    hit = truth > 0.5
    assert (grid.depth[hit] - dense.depth[hit]).abs().max() < 2e-2


def test_extent_error_is_relative_per_axis_and_optionally_free_of_z_rotation():
    from priorkit.gen3d.export import extent_error

    truth = trimesh.creation.box(extents=(0.8, 0.8, 0.8))
    assert extent_error(truth, truth) == pytest.approx(0.0, abs=1e-12)
    assert extent_error(trimesh.creation.box(extents=(0.8, 0.84, 0.6)), truth) == pytest.approx(0.25)
    turned = truth.copy().apply_transform(trimesh.transformations.rotation_matrix(math.radians(30), [0, 0, 1]))
    assert extent_error(turned, truth) > 0.3
    assert extent_error(turned, truth, z_rotations=True) < 1e-3


def test_volume_iou_sees_a_filled_hole_and_is_free_of_z_rotation_for_the_cube():
    from priorkit.distill.zoo.shape_geometry import sdf, sdf_cylinder
    from priorkit.gen3d.export import default_threshold, volume_iou
    from priorkit.gen3d.field import VoxelField

    def solid(distance) -> VoxelField:  # noqa: ANN001
        """A field whose export level set is the zero set of ``distance`` (log-density linear in it: trilinear
        interpolation keeps the level set in place)."""
        f = VoxelField(64, activation="exp")
        tau = default_threshold(f)
        return f.fill_(lambda p: tau * torch.exp(-distance(p) / 0.05))

    torus = lambda p: sdf("torus", p) < 0  # noqa: E731
    assert volume_iou(solid(lambda p: sdf("torus", p)), torus) > 0.9
    puck = solid(lambda p: sdf_cylinder(p, radius=0.5, height=0.3))    # the torus with its hole filled
    assert volume_iou(puck, torus) < 0.7                                   # Chamfer would barely see the hole
    # exact on a known overlap: the field's solid x < 0.2 against the truth x > -0.2 in [-1, 1]^3: 0.4 / 2
    half = solid(lambda p: p[:, 0] - 0.2)
    assert volume_iou(half, lambda p: p[:, 0] > -0.2, n=200_000) == pytest.approx(0.4 / 2.0, abs=0.01)
    c, s = math.cos(math.radians(30)), math.sin(math.radians(30))
    turn = torch.tensor([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
    turned = solid(lambda p: sdf("cube", p @ turn))
    cube = lambda p: sdf("cube", p) < 0  # noqa: E731
    assert volume_iou(turned, cube) < 0.8
    assert volume_iou(turned, cube, z_rotations=True) > 0.95


# ---- empty-space skipping on the CPU path (gen3d/occupancy.py) --------------------------------------------
def _lopsided_field(activation: str) -> VoxelField:
    """An off-centre, anisotropic blob (so a swapped axis in the lookup shows) over empty space, values near the
    threshold included."""
    f = VoxelField(20, activation=activation)
    centre, scale = torch.tensor([0.35, -0.2, 0.1]), torch.tensor([0.5, 0.3, 0.2])
    f.fill_(lambda x: 40.0 * torch.exp(-(((x - centre) / scale) ** 2).sum(-1) * 3.0) + 1e-9,
            lambda x: (x + 1) / 2)
    return f


@pytest.mark.parametrize("activation", ["exp", "softplus"])
def test_occupancy_grid_bounds_the_density_of_every_skipped_point(activation):
    from priorkit.gen3d.occupancy import OccupancyGrid

    f = _lopsided_field(activation)
    grid = OccupancyGrid.of(f, threshold=1e-2)
    assert 0.05 < grid.fraction < 0.6  # something is skipped, something is kept
    x = torch.rand(200_000, 3, generator=torch.Generator().manual_seed(0)) * 2.2 - 1.1
    with torch.no_grad():
        dens = f.density(x)
    occ = grid.occupied(x)
    outside = (x.abs() > 1).any(-1)
    assert not occ[outside].any()
    assert dens[~occ & ~outside].max() <= 1e-2  # the bound: an empty cell has density below the threshold
    assert (dens[occ] > 1e-2).float().mean() > 0.3  # and the kept cells are mostly where the density is
    assert OccupancyGrid.of(MLPField()) is None  # no corner bound for an MLP: rendered everywhere


def test_skipping_empty_space_changes_renders_and_gradients_by_less_than_its_bound():
    from priorkit.gen3d.occupancy import OccupancyGrid

    f = _lopsided_field("exp")
    cam = Camera(azimuth=30.0, elevation=20.0)
    o, d = cam.rays(24, 24)
    outs = {}
    for skip in (False, True):
        f.zero_grad()
        grid = OccupancyGrid.of(f) if skip else None
        out = render(f, o, d, n_samples=48, background=1.0, stratified=False, occupancy=grid)
        out.rgb.sum().backward()
        outs[skip] = (out.rgb.detach(), out.opacity.detach(), f.density_logits.grad.clone(), grid)
    (rgb0, op0, g0, _), (rgb1, op1, g1, grid) = outs[False], outs[True]
    assert grid.fraction < 0.7
    assert (rgb1 - rgb0).abs().max() < 1e-3 and (op1 - op0).abs().max() < 1e-3
    assert (g1 - g0).norm() / g0.norm() < 1e-2


# ---- the stratified renderer by value: one hand quadrature (NeRF eq. 3) ----------------------------------
class _LinearField(torch.nn.Module):
    """Density, colour and normal as simple functions of position (so every sample differs)."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = torch.nn.Parameter(torch.tensor(1.0))

    def density(self, x):
        return self.scale * (1.5 + x[:, 0] + 0.5 * x[:, 1] ** 2)

    def forward(self, x):
        return torch.sigmoid(torch.stack([x[:, 0], x[:, 1] * 2, -x[:, 2]], -1)), self.density(x)

    def normal(self, x):
        return torch.nn.functional.normalize(x + torch.tensor([0.1, 0.2, 0.3]), dim=-1)


def _by_hand(field, o, d, light, bg, near, far, n, shading, ambient):
    """Midpoint quadrature of one ray at a time, written out from the formulas."""
    rgbs, ops, depths, normals = [], [], [], []
    for i in range(o.shape[0]):
        ts = []
        for axis in range(3):
            a, b = (-1 - o[i, axis]) / d[i, axis], (1 - o[i, axis]) / d[i, axis]
            ts.append((min(a, b), max(a, b)))
        t0, t1 = max(max(t[0] for t in ts), near), min(min(t[1] for t in ts), far)
        if t1 <= t0:
            rgbs.append(bg[i]), ops.append(torch.zeros(1)), depths.append(torch.zeros(1))
            normals.append(torch.zeros(3))
            continue
        delta = (t1 - t0) / n
        mids = t0 + delta * (torch.arange(n) + 0.5)
        x = o[i] + d[i] * mids[:, None]
        albedo, sigma = field(x)
        nrm = field.normal(x)
        if shading == "albedo":
            colour = albedo
        else:
            base = torch.ones_like(albedo) if shading == "textureless" else albedo
            colour = base * (ambient + (1 - ambient) * (nrm @ light[i]).clamp_min(0)[:, None])
        alpha = 1 - torch.exp(-sigma * delta)
        trans = torch.cumprod(torch.cat([torch.ones(1), 1 - alpha[:-1]]), 0)
        w = trans * alpha
        op = w.sum()
        rgbs.append((w[:, None] * colour).sum(0) + (1 - op) * bg[i])
        ops.append(op[None])
        depths.append(((w * mids).sum() / op)[None])
        normals.append((w[:, None] * nrm).sum(0))
    return torch.stack(rgbs), torch.stack(ops), torch.stack(depths), torch.stack(normals)


@pytest.mark.parametrize("shading", ["albedo", "lambertian", "textureless"])
def test_stratified_render_is_the_midpoint_quadrature_by_hand(shading):
    field = _LinearField()
    cam = Camera(azimuth=35.0, elevation=25.0)
    o, d = cam.rays(5, 5)
    o, d = o.reshape(-1, 3), d.reshape(-1, 3)
    o = torch.cat([o, torch.tensor([[3.0, 3.0, 3.0]])])  # one ray that misses the box
    d = torch.cat([d, torch.tensor([[1.0, 0.0, 0.0]])])
    light = torch.nn.functional.normalize(torch.randn(o.shape[0], 3, generator=torch.Generator().manual_seed(0)),
                                          dim=-1)
    bg = torch.rand(o.shape[0], 3, generator=torch.Generator().manual_seed(1))
    near, far, n, ambient = 1.8, 3.1, 24, 0.25
    with torch.no_grad():
        out = render(field, o, d, near=near, far=far, n_samples=n, background=bg, shading=shading, light_dir=light,
                     ambient=ambient, stratified=False, compute_normals=True)
        rgb, op, depth, nrm = _by_hand(field, o, d, light, bg, near, far, n, shading, ambient)
    torch.testing.assert_close(out.rgb, rgb, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.opacity, op, atol=1e-5, rtol=1e-5)
    hit = op[:, 0] > 1e-3
    assert 0.05 < float(op.max()) < 0.999 and not hit[-1]  # partial opacities, and a miss
    torch.testing.assert_close(out.depth[hit], depth[hit], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(out.normal, nrm, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(out.rgb[-1], bg[-1])


def test_background_forms_and_headlight():
    from priorkit.gen3d.renderer import _background_colour, _light_directions

    d = torch.nn.functional.normalize(torch.randn(4, 3, generator=torch.Generator().manual_seed(0)), dim=-1)
    assert torch.equal(_background_colour(None, d), torch.zeros(4, 3))
    assert torch.equal(_background_colour(0.25, d), torch.full((4, 3), 0.25))
    assert torch.equal(_background_colour((0.1, 0.2, 0.3), d), torch.tensor([[0.1, 0.2, 0.3]] * 4))
    per_ray = torch.rand(4, 3)
    assert torch.equal(_background_colour(per_ray, d), per_ray)
    assert torch.equal(_background_colour(lambda dirs: dirs.abs(), d), d.abs())
    assert torch.equal(_light_directions(None, d), -d)  # a headlight points back along each ray
    torch.testing.assert_close(_light_directions([0.0, 0.0, 2.0], d), torch.tensor([[0.0, 0.0, 1.0]] * 4))
    many = torch.randn(4, 3)
    torch.testing.assert_close(_light_directions(many, d), torch.nn.functional.normalize(many, dim=-1))
