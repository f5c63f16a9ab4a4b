"""gen3d's renderer by value (the mutation run's survivors, tests/MUTANTS.md): the stratified path's jitter, dtype,
normals and orientation against one hand quadrature in float64; the packed (occupancy-grid) path against the same
quadrature on CPU, with a torch stand-in for nerfacc's two CUDA-only kernels; the estimator, ``render_views``,
``Renderer`` and ``OccupancyGrid`` against what they are defined to compute."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from priorkit.distill.core.cameras import Camera
from priorkit.gen3d import renderer as R
from priorkit.gen3d.field import AnalyticBallField, VoxelField
from priorkit.gen3d.occupancy import OccupancyGrid

torch.set_num_threads(1)
F64 = torch.float64


class _Field(torch.nn.Module):
    """Density, colour and normal as smooth functions of position, in any dtype."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = torch.nn.Parameter(torch.tensor(1.0, dtype=F64))

    def density(self, x):
        return self.scale.to(x.dtype) * (1.5 + x[:, 0] + 0.5 * x[:, 1] ** 2)

    def forward(self, x):
        return torch.sigmoid(torch.stack([x[:, 0], 2 * x[:, 1], -x[:, 2]], -1)), self.density(x)

    def normal(self, x):
        return F.normalize(x + torch.tensor([0.1, 0.2, 0.3], dtype=x.dtype), dim=-1)


def _no_normal_field() -> torch.nn.Module:
    f = _Field()
    f.normal = None  # an albedo render never asks for one
    return f


def _quadrature(field, o, d, light, bg, near, far, n, shading, ambient, frac=None):
    """One ray at a time from the formulas (NeRF eq. 3): bins of the box span inside [near, far], the sample at
    ``frac`` of each bin (midpoints by default); rgb, opacity, depth, normal and DreamFusion's orientation."""
    out = {k: [] for k in ("rgb", "opacity", "depth", "normal", "orientation")}
    row = 0
    for i in range(o.shape[0]):
        lo_hi = [sorted(((-1 - o[i, a]) / d[i, a], (1 - o[i, a]) / d[i, a])) for a in range(3)]
        t0, t1 = max(max(v[0] for v in lo_hi), near), min(min(v[1] for v in lo_hi), far)
        if t1 <= t0:
            for k, v in (("rgb", bg[i]), ("opacity", 0), ("depth", 0), ("normal", torch.zeros(3)),
                         ("orientation", 0)):
                out[k].append(torch.as_tensor(v, dtype=o.dtype).reshape(-1))
            continue
        delta = (t1 - t0) / n
        f = torch.full((n,), 0.5, dtype=o.dtype) if frac is None else frac[row]
        row += 1
        ts = t0 + delta * (torch.arange(n, dtype=o.dtype) + f)
        x = o[i] + d[i] * ts[:, None]
        albedo, sigma = field(x)
        nrm = F.normalize(x + torch.tensor([0.1, 0.2, 0.3], dtype=x.dtype), dim=-1)
        base = torch.ones_like(albedo) if shading == "textureless" else albedo
        lit = base * (ambient + (1 - ambient) * (nrm @ light[i]).clamp_min(0)[:, None])
        colour = albedo if shading == "albedo" else lit
        alpha = 1 - torch.exp(-sigma * delta)
        w = torch.cumprod(torch.cat([torch.ones(1, dtype=o.dtype), 1 - alpha[:-1]]), 0) * alpha
        op = w.sum()
        out["rgb"].append((w[:, None] * colour).sum(0) + (1 - op) * bg[i])
        out["opacity"].append(op[None])
        out["depth"].append(((w * ts).sum() / op)[None])
        out["normal"].append((w[:, None] * nrm).sum(0))
        out["orientation"].append((w * (nrm @ d[i]).clamp_min(0) ** 2).sum()[None])
    return {k: torch.stack(v) for k, v in out.items()}


def _rays(dtype=F64, miss=True):
    o, d = Camera(azimuth=35.0, elevation=25.0).rays(4, 4)
    o, d = o.reshape(-1, 3).to(dtype), d.reshape(-1, 3).to(dtype)
    if miss:
        o = torch.cat([o, torch.tensor([[3.0, 3.0, 3.0]], dtype=dtype)])
        d = torch.cat([d, torch.tensor([[1.0, 0.0, 0.0]], dtype=dtype)])
    light = F.normalize(torch.randn(o.shape[0], 3, generator=torch.Generator().manual_seed(0), dtype=dtype), dim=-1)
    bg = torch.rand(o.shape[0], 3, generator=torch.Generator().manual_seed(1), dtype=dtype)
    return o, d, light, bg


def _close(got, want, keys=("rgb", "opacity", "depth", "normal", "orientation"), tol=1e-10):
    for k in keys:
        torch.testing.assert_close(getattr(got, k), want[k], atol=tol, rtol=tol, msg=k)


# ---- the stratified path ------------------------------------------------------------------------------------------

def test_stratified_jitter_is_one_draw_per_bin_from_the_generator_in_the_rays_dtype():
    field, (o, d, light, bg) = _Field(), _rays()
    torch.manual_seed(123)  # the global RNG must not be what draws the jitter
    with torch.no_grad():
        out = R.render(field, o, d, near=1.8, far=3.1, n_samples=16, background=bg, shading="lambertian",
                       light_dir=light, ambient=0.25, generator=torch.Generator().manual_seed(5),
                       compute_normals=True)
        frac = torch.rand(o.shape[0] - 1, 16, generator=torch.Generator().manual_seed(5), dtype=F64)
        want = _quadrature(field, o, d, light, bg, 1.8, 3.1, 16, "lambertian", 0.25, frac)
    assert out.rgb.dtype == F64
    _close(out, want, tol=1e-9)


def test_render_defaults_are_near_zero_64_samples_black_albedo_and_jittered():
    field = _Field()
    o = torch.tensor([[0.0, 0.0, -0.5], [0.2, -0.1, 0.3]], dtype=F64)  # inside the box: near = 0 matters
    d = F.normalize(torch.tensor([[0.1, 0.2, 1.0], [-1.0, 0.3, 0.2]], dtype=F64), dim=-1)
    with torch.no_grad():
        out = R.render(field, o, d, generator=torch.Generator().manual_seed(2))
        frac = torch.rand(2, 64, generator=torch.Generator().manual_seed(2), dtype=F64)
        want = _quadrature(field, o, d, -d, torch.zeros(2, 3, dtype=F64), 0.0, 1e4, 64, "albedo", 0.1, frac)
        lit = R.render(field, o, d, shading="lambertian", stratified=False)
        want_lit = _quadrature(field, o, d, -d, torch.zeros(2, 3, dtype=F64), 0.0, 1e4, 64, "lambertian", 0.1)
    _close(out, want, keys=("rgb", "opacity", "depth"))
    assert out.normal is None and out.orientation is None  # albedo shading computes no normals by default
    _close(lit, want_lit)  # the default ambient term is 0.1


def test_one_ray_that_hits_and_a_field_without_normals():
    field, (o, d, light, bg) = _Field(), _rays(miss=False)
    with torch.no_grad():
        one = R.render(field, o[:1], d[:1], n_samples=12, background=bg[:1], stratified=False)
        want = _quadrature(field, o[:1], d[:1], light[:1], bg[:1], 0.0, 1e4, 12, "albedo", 0.1)
        _close(one, want, keys=("rgb", "opacity", "depth"))
        plain = R.render(_no_normal_field(), o, d, n_samples=12, background=bg, stratified=False)
    _close(plain, _quadrature(field, o, d, light, bg, 0.0, 1e4, 12, "albedo", 0.1), keys=("rgb", "opacity", "depth"))


@pytest.mark.parametrize("chunk", [9, 32])  # two parts (17 rays), and one part
def test_chunks_concatenate_every_output(chunk):
    field, (o, d, light, bg) = _Field(), _rays()
    with torch.no_grad():
        out = R.render(field, o, d, n_samples=10, background=bg, shading="lambertian", light_dir=light,
                       stratified=False, chunk=chunk)
        want = _quadrature(field, o, d, light, bg, 0.0, 1e4, 10, "lambertian", 0.1)
    _close(out, want, tol=1e-6)  # normals below NORMAL_WEIGHT_EPS are skipped by design


def test_render_output_reshape_keeps_the_channel_axis():
    field, (o, d, _, _) = _Field(), _rays(miss=False)
    with torch.no_grad():
        out = R.render(field, o.reshape(4, 4, 3), d.reshape(4, 4, 3), n_samples=6, stratified=False,
                       compute_normals=True)
    assert out.rgb.shape == (4, 4, 3) and out.opacity.shape == (4, 4, 1) and out.normal.shape == (4, 4, 3)
    flat = out.reshape(2, 8)
    assert flat.rgb.shape == (2, 8, 3) and flat.depth.shape == (2, 8, 1) and flat.orientation.shape == (2, 8, 1)


def test_light_and_background_in_the_rays_dtype_and_any_batch_shape():
    d = F.normalize(torch.randn(4, 3, generator=torch.Generator().manual_seed(0), dtype=F64), dim=-1)
    assert R._light_directions([0.0, 0.0, 0.5], d).dtype == F64
    torch.testing.assert_close(R._light_directions([0.0, 0.0, 0.5], d), torch.tensor([[0.0, 0.0, 1.0]] * 4,
                                                                                     dtype=F64))
    grid = torch.randn(2, 2, 3, dtype=F64)  # per ray, shaped like the image
    torch.testing.assert_close(R._light_directions(grid, d), F.normalize(grid.reshape(4, 3), dim=-1))
    assert R._background_colour((0.1, 0.2, 0.3), d).dtype == F64
    torch.testing.assert_close(R._background_colour(grid, d), grid.reshape(4, 3))


def test_query_field_uses_a_fields_own_query_and_asks_normals_only_when_needed():
    x = torch.rand(5, 3, dtype=F64)
    albedo, sigma, nrm = R.query_field(_no_normal_field(), x, False)
    assert nrm is None and sigma.shape == (5,)
    _, _, nrm = R.query_field(_Field(), x, True)
    torch.testing.assert_close(nrm, _Field().normal(x))
    vox = VoxelField(8)
    for with_normal in (False, True):
        want = vox.query(x.float(), with_normal=with_normal)
        got = R.query_field(vox, x.float(), with_normal)
        assert (got[2] is None) == (not with_normal)
        torch.testing.assert_close(got[0], want[0])


# ---- the packed path (nerfacc's occupancy grid), on CPU -----------------------------------------------------------

def _pack_info(ray_indices, n_rays=None):
    """nerfacc.pack_info without its CUDA-only guard: (start, count) of each ray's samples."""
    n_rays = int(ray_indices.max()) + 1 if n_rays is None else n_rays
    counts = torch.zeros(n_rays, dtype=ray_indices.dtype).index_add_(0, ray_indices, torch.ones_like(ray_indices))
    return torch.stack([counts.cumsum(0) - counts, counts], -1)


def _exclusive_sum(inputs, packed_info=None):
    """nerfacc.exclusive_sum over packed rays in plain torch (its CUDA kernel's job)."""
    if packed_info is None:
        return torch.cumsum(torch.cat([torch.zeros_like(inputs[..., :1]), inputs[..., :-1]], -1), -1)
    starts, counts = packed_info.unbind(-1)
    before = torch.cumsum(inputs, 0) - inputs
    ray = torch.repeat_interleave(torch.arange(counts.numel()), counts)
    return before - before[starts[ray]]


class _BinsEstimator:
    """``OccGridEstimator.sampling`` on CPU: ``n`` equal bins of each ray's box span inside [near, far], packed
    ray-major (the stratified path's bins); records its arguments and the densities ``sigma_fn`` returned."""

    def __init__(self, n: int) -> None:
        self.n, self.calls = n, []

    def sampling(self, rays_o, rays_d, *, sigma_fn, near_plane, far_plane, render_step_size, stratified):
        self.calls.append((near_plane, far_plane, render_step_size, stratified))
        t0, t1 = R.ray_box_intersection(rays_o, rays_d)
        t0, t1 = t0.clamp_min(near_plane), t1.clamp_max(far_plane)
        hit = (t1 > t0).nonzero().squeeze(1)
        edges = t0[hit, None] + (t1 - t0)[hit, None] * torch.linspace(0, 1, self.n + 1, dtype=rays_o.dtype)
        ray_indices = hit.repeat_interleave(self.n)
        starts, ends = edges[:, :-1].reshape(-1), edges[:, 1:].reshape(-1)
        self.points = rays_o[ray_indices] + rays_d[ray_indices] * ((starts + ends) / 2)[:, None]
        self.sigma = sigma_fn(starts, ends, ray_indices)
        return ray_indices, starts, ends


@pytest.fixture()
def packed_on_cpu(monkeypatch):
    import nerfacc.volrend

    monkeypatch.setattr(nerfacc.volrend, "pack_info", _pack_info)
    monkeypatch.setattr(nerfacc.volrend, "exclusive_sum", _exclusive_sum)


def test_the_cpu_stand_in_kernels_are_nerfaccs_on_padded_rays():
    import nerfacc

    sig = torch.rand(3, 5, dtype=F64)
    ray_indices = torch.arange(3).repeat_interleave(5)
    torch.testing.assert_close(_exclusive_sum(sig.reshape(-1), _pack_info(ray_indices, 3)),
                               nerfacc.exclusive_sum(sig).reshape(-1))


@pytest.mark.parametrize("shading", ["albedo", "lambertian", "textureless"])
def test_packed_occgrid_compositing_equals_the_quadrature(packed_on_cpu, shading):
    field, (o, d, light, bg) = _Field(), _rays()
    est = _BinsEstimator(20)
    with torch.no_grad():
        out = R._render_occgrid(field, o, d, light, bg, est, near=1.8, far=3.1, render_step_size=0.07,
                                shading=shading, ambient=0.25, need_normals=True, stratified=True)
        want = _quadrature(field, o, d, light, bg, 1.8, 3.1, 20, shading, 0.25)
    assert est.calls == [(1.8, 3.1, 0.07, True)]
    torch.testing.assert_close(est.sigma, field.density(est.points))  # sigma_fn: the density at interval midpoints
    _close(out, want, tol=1e-9)
    with torch.no_grad():
        bare = R._render_occgrid(field, o, d, light, bg, est, near=1.8, far=3.1, render_step_size=0.07,
                                 shading="albedo", ambient=0.25, need_normals=False, stratified=False)
    assert bare.normal is None and bare.orientation is None and est.calls[-1][3] is False


def test_packed_path_with_every_ray_missing_is_the_background(packed_on_cpu):
    o = torch.tensor([[3.0, 3.0, 3.0], [-3.0, 2.5, 0.0]], dtype=F64)
    d = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], dtype=F64)
    bg = torch.tensor([[0.2, 0.4, 0.6], [1.0, 0.5, 0.0]], dtype=F64)
    out = R._render_occgrid(_Field(), o, d, -d, bg, _BinsEstimator(8), near=0.0, far=1e4, render_step_size=0.1,
                            shading="albedo", ambient=0.1, need_normals=True, stratified=False)
    torch.testing.assert_close(out.rgb, bg)
    assert not out.opacity.any() and not out.normal.any() and not out.orientation.any()


def test_estimator_cells_hold_density_times_step_of_the_field(monkeypatch):
    ball = AnalyticBallField(sigma0=3.0, radius=0.55)
    est = R.make_estimator(ball, "cpu", resolution=8, render_step_size=0.05, occ_thre=0.01, init_passes=2)
    assert est.binaries.shape == (1, 8, 8, 8)
    centres = (torch.stack(torch.meshgrid(*[torch.arange(8)] * 3, indexing="ij"), -1).reshape(-1, 3) + 0.5) / 4 - 1
    r = centres.norm(dim=-1)
    inside, outside = r < 0.55 - 0.23, r > 0.55 + 0.23  # cells wholly inside / outside the ball
    occs = est.occs.reshape(-1)
    torch.testing.assert_close(occs[inside], torch.full_like(occs[inside], 3.0 * 0.05))  # alpha ~ sigma * step
    assert (occs[outside] == 0).all() and est.binaries.reshape(-1)[inside].all()
    assert not est.binaries.reshape(-1)[outside].any()
    assert R.occupancy_fn(ball, 0.05)(torch.zeros(1, 3)).shape == (1, 1)
    # refreshed every n steps only: between two refreshes a new field changes nothing
    empty = AnalyticBallField(sigma0=3.0, radius=0.01)
    before = est.occs.clone()
    R.update_estimator(est, empty, step=5, render_step_size=0.05, n=16)
    assert torch.equal(est.occs, before)
    R.update_estimator(est, empty, step=16, render_step_size=0.05, n=16)
    assert (est.occs < before).any()  # decayed towards the empty field's zeros


# ---- render_views and Renderer --------------------------------------------------------------------------------------

def test_render_views_renders_each_camera_with_its_light_and_the_scene_band():
    field = _Field()
    cams = [Camera(azimuth=20.0, elevation=10.0, distance=2.5), Camera(azimuth=150.0, elevation=-20.0, distance=3.0)]
    lights = F.normalize(torch.tensor([[1.0, 0.0, 0.2], [0.0, 1.0, -0.3]]), dim=-1)
    with torch.no_grad():
        images, out = R.render_views(field, cams, 5, background=0.5, shading="lambertian", lights=lights,
                                     ambient=0.3, n_samples=12, jitter=False, scene_radius=1.0)
    assert images.shape == (2, 3, 5, 5) and out.opacity.shape == (2, 5, 5, 1)
    for b, cam in enumerate(cams):
        o, d = cam.rays(5, 5)
        with torch.no_grad():
            one = R.render(field, o, d, near=1.5, far=4.0, n_samples=12, background=0.5, shading="lambertian",
                           light_dir=lights[b], ambient=0.3, stratified=False)
        torch.testing.assert_close(images[b], one.rgb.permute(2, 0, 1))
        torch.testing.assert_close(out.orientation[b], one.orientation)


def test_render_views_jitter_draws_pixels_then_bins_from_the_generator():
    field, cams = _Field(), [Camera(azimuth=20.0, elevation=10.0), Camera(azimuth=200.0, elevation=30.0)]
    with torch.no_grad():
        images, _ = R.render_views(field, cams, 4, background=None, shading="albedo", lights=None, ambient=0.1,
                                   n_samples=8, generator=torch.Generator().manual_seed(3))
        g = torch.Generator().manual_seed(3)
        rays = [c.rays(4, 4, jitter=torch.rand(4, 4, 2, generator=g) - 0.5) for c in cams]
        o, d = torch.stack([r[0] for r in rays]), torch.stack([r[1] for r in rays])
        want = R.render(field, o, d, n_samples=8, generator=g)
    torch.testing.assert_close(images, want.rgb.permute(0, 3, 1, 2))


@pytest.mark.parametrize("skip_empty", [False, True])
def test_renderer_is_render_views_with_its_settings_and_the_fields_occupancy(skip_empty):
    field = VoxelField(12)
    field.fill_(lambda x: 30.0 * torch.exp(-8 * (x ** 2).sum(-1)) + 1e-6, lambda x: (x + 1) / 2)
    renderer = R.Renderer(field, n_samples=10, scene_radius=1.2, ambient=0.4, skip_empty=skip_empty)
    assert renderer.estimator is None
    renderer.update(16)  # nothing to refresh on CPU
    cams = [Camera(azimuth=40.0, elevation=15.0)]
    with torch.no_grad():
        got, out = renderer(cams, 6, background=1.0, shading="lambertian", lights=None, jitter=False,
                            compute_normals=True)
        want, want_out = R.render_views(field, cams, 6, background=1.0, shading="lambertian", lights=None,
                                        ambient=0.4, n_samples=10, jitter=False, scene_radius=1.2,
                                        occupancy=OccupancyGrid.of(field) if skip_empty else None)
    torch.testing.assert_close(got, want, atol=0, rtol=0)
    torch.testing.assert_close(out.normal, want_out.normal, atol=0, rtol=0)


# ---- the occupancy grid ---------------------------------------------------------------------------------------------

def test_occupancy_cells_are_the_strict_max_of_their_eight_corners():
    dens = torch.tensor([[[0.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]],
                         [[0.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.5]],
                         [[0.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]]])
    grid = OccupancyGrid(dens, torch.tensor([-1.0] * 3), torch.tensor([1.0] * 3), threshold=0.25)
    want = torch.zeros(2, 2, 2, dtype=torch.bool)
    want[0, 1, 1] = want[1, 1, 1] = True  # the cells with vertex (1, 2, 2) as a corner
    assert torch.equal(grid.cells, want) and grid.threshold == 0.25
    assert not OccupancyGrid(dens, torch.tensor([-1.0] * 3), torch.tensor([1.0] * 3), threshold=0.5).cells.any()
    pts = torch.tensor([[-0.5, 0.5, 0.5], [0.5, 0.5, 0.5], [-0.5, -0.5, 0.5], [-1.0, 0.0, 0.0], [1.0, 1.0, 1.0],
                        [-1.0, -1.0, -1.0], [1.001, 0.5, 0.5]], dtype=F64)
    assert grid.occupied(pts).tolist() == [True, True, False, True, True, False, False]  # faces are inside
    one_cell = OccupancyGrid(torch.ones(2, 2, 2), torch.tensor([-1.0] * 3), torch.tensor([1.0] * 3))
    assert one_cell.cells.shape == (1, 1, 1) and one_cell.occupied(torch.tensor([[1.0, -1.0, 1.0]])).all()
    for bad in (torch.ones(1, 1, 1), torch.ones(4, 4)):
        with pytest.raises(ValueError, match="R >= 2"):
            OccupancyGrid(bad, torch.tensor([-1.0] * 3), torch.tensor([1.0] * 3))



def test_a_half_precision_point_is_placed_in_its_own_cell():
    """Box [-1, 1] on each axis, 6 cells, the cells with x index 2-4 occupied. A point's cell is floor(3 (x + 1));
    in float16 arithmetic 3 (x + 1) rounds across an integer for these points (exact 3.999, 5.9985, 1.9995 become 4,
    6, 2), so x = -0.33349609375 (cell 1, empty) was reported occupied. Cells are now computed in float32 at least:
    every precision answers as the exact cell does."""
    dens = torch.zeros(7, 7, 7)
    dens[3:5] = 1.0  # vertices 3 and 4 on x: the cells touching them (x index 2, 3, 4) are occupied
    grid = OccupancyGrid(dens, torch.tensor([-1.0] * 3), torch.tensor([1.0] * 3), threshold=0.5)
    assert grid.cells[:, 0, 0].tolist() == [False, False, True, True, True, False]
    pts = torch.tensor([[0.3330078125, 0.0, 0.0], [0.99951171875, 0.0, 0.0], [-0.33349609375, 0.0, 0.0]])
    want = [True, False, False]  # exact cells 3, 5 and 1 (3 (x + 1) = 3.999, 5.9985, 1.9995)
    for dtype in (torch.float16, torch.bfloat16, torch.float32, F64):
        assert grid.occupied(pts.to(dtype)).tolist() == want, dtype

def test_occupancy_of_a_voxel_field_takes_the_threshold():
    field = VoxelField(6)
    field.fill_(lambda x: 0.01 + 0 * x[:, 0], lambda x: (x + 1) / 2)
    assert OccupancyGrid.of(field, threshold=0.005).cells.all()
    assert not OccupancyGrid.of(field, threshold=0.02).cells.any()


class _Masked(torch.nn.Module):
    """A field seen through an occupancy grid: density and colour zero outside its occupied cells."""

    def __init__(self, field, grid) -> None:
        super().__init__()
        self.field, self.grid = field, grid

    def forward(self, x):
        keep = self.grid.occupied(x).to(x.dtype)
        albedo, sigma = self.field(x)
        return albedo * keep[:, None], sigma * keep


def test_skipping_empty_space_is_rendering_the_field_masked_by_its_grid():
    field = VoxelField(10)
    field.fill_(lambda x: 20.0 * torch.exp(-10 * ((x - 0.2) ** 2).sum(-1)) + 1e-6, lambda x: (x + 1) / 2)
    grid = OccupancyGrid.of(field, threshold=0.5)
    o, d = Camera(azimuth=30.0, elevation=20.0).rays(6, 6)
    with torch.no_grad():
        skipped = R.render(field, o, d, n_samples=16, stratified=False, background=1.0, occupancy=grid)
        masked = R.render(_Masked(field, grid), o, d, n_samples=16, stratified=False, background=1.0)
        full = R.render(field, o, d, n_samples=16, stratified=False, background=1.0)
    torch.testing.assert_close(skipped.rgb, masked.rgb, atol=1e-6, rtol=0)
    torch.testing.assert_close(skipped.opacity, masked.opacity, atol=1e-6, rtol=0)
    assert (skipped.opacity - full.opacity).abs().max() > 1e-4  # this threshold skips visible density


def test_render_image_takes_a_size_or_height_and_width_and_a_pixel_jitter():
    field, cam = _Field(), Camera(azimuth=60.0, elevation=5.0)
    jitter = torch.rand(3, 5, 2, generator=torch.Generator().manual_seed(0)) - 0.5
    with torch.no_grad():
        out = R.render_image(field, cam, (3, 5), jitter=jitter, n_samples=8, stratified=False)
        o, d = cam.rays(3, 5, jitter=jitter)
        want = R.render(field, o, d, n_samples=8, stratified=False)
        square = R.render_image(field, cam, 4, n_samples=8, stratified=False)
    assert out.rgb.shape == (3, 5, 3) and square.rgb.shape == (4, 4, 3)
    torch.testing.assert_close(out.rgb, want.rgb)


def test_render_views_without_a_scene_band_starts_at_the_camera():
    field, cam = _Field(), Camera(azimuth=10.0, elevation=0.0, distance=1.6)  # inside the box's corner sphere
    with torch.no_grad():
        images, out = R.render_views(field, [cam], 4, background=0.0, shading="albedo", lights=None, ambient=0.1,
                                     n_samples=12, jitter=False)
        o, d = cam.rays(4, 4)
        want = R.render(field, o, d, near=0.0, far=1e4, n_samples=12, stratified=False)
    torch.testing.assert_close(images[0], want.rgb.permute(2, 0, 1))
    assert out.normal is None  # albedo shading, normals not asked for


def test_renderer_defaults_and_what_it_passes_on():
    field = VoxelField(10)
    field.fill_(lambda x: 10.0 * torch.exp(-6 * (x ** 2).sum(-1)) + 1e-6, lambda x: (x + 1) / 2)
    renderer = R.Renderer(field)
    cams = [Camera(azimuth=40.0, elevation=15.0), Camera(azimuth=-70.0, elevation=30.0)]
    lights = F.normalize(torch.tensor([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0]]), dim=-1)
    with torch.no_grad():
        got, out = renderer(cams, 5, background=0.5, shading="lambertian", lights=lights,
                            generator=torch.Generator().manual_seed(1))
        want, want_out = R.render_views(field, cams, 5, background=0.5, shading="lambertian", lights=lights,
                                        ambient=0.1, n_samples=64, generator=torch.Generator().manual_seed(1),
                                        occupancy=OccupancyGrid.of(field))
        plain, plain_out = renderer(cams, 5, background=0.5, shading="albedo", lights=None)
    torch.testing.assert_close(got, want, atol=0, rtol=0)
    torch.testing.assert_close(out.orientation, want_out.orientation, atol=0, rtol=0)
    assert plain_out.normal is None and not torch.equal(plain, renderer(cams, 5, background=0.5, shading="albedo",
                                                                         lights=None)[0])  # jittered by default


def test_render_views_passes_the_scene_band_normals_and_occupancy_on():
    field = VoxelField(10)
    field.fill_(lambda x: 20.0 * torch.exp(-10 * ((x - 0.2) ** 2).sum(-1)) + 1e-6, lambda x: (x + 1) / 2)
    grid = OccupancyGrid.of(field, threshold=0.5)
    cam = Camera(azimuth=10.0, elevation=0.0, distance=1.6)  # close: the band starts at 0.6, inside near = 1
    with torch.no_grad():
        images, out = R.render_views(field, [cam], 4, background=0.0, shading="albedo", lights=None, ambient=0.1,
                                     n_samples=12, jitter=False, scene_radius=1.0, compute_normals=True,
                                     occupancy=grid)
        o, d = cam.rays(4, 4)
        want = R.render(field, o, d, near=0.6, far=2.6, n_samples=12, stratified=False, compute_normals=True,
                        occupancy=grid)
    torch.testing.assert_close(images[0], want.rgb.permute(2, 0, 1))
    assert out.normal is not None  # asked for under albedo shading
    torch.testing.assert_close(out.normal[0], want.normal)


def test_small_contracts_of_the_renderer():
    assert R._field_device(torch.nn.Module()) == torch.device("cpu")  # a field with no weights renders on CPU
    with pytest.raises(ValueError, match="unknown shading 'toon'; use one of"):
        R.render(_Field(), torch.zeros(1, 3), torch.tensor([[1.0, 0.0, 0.0]]), shading="toon")
    field, (o, d, _, bg) = _Field(), _rays()
    with torch.no_grad():  # two chunks without normals (albedo): the None outputs stay None
        parts = R.render(field, o, d, n_samples=6, background=bg, stratified=False, chunk=9)
        whole = R.render(field, o, d, n_samples=6, background=bg, stratified=False)
        # an estimator is used only for rays on CUDA: on CPU the same render as without one
        est = R.render(field, o, d, n_samples=6, background=bg, stratified=False,
                       estimator=R.make_estimator(None, "cpu", resolution=8))
    assert parts.normal is None and torch.equal(parts.rgb, whole.rgb) and torch.equal(est.rgb, whole.rgb)


def test_estimator_defaults_and_refresh_period():
    est = R.make_estimator(None, "cpu")
    assert est.resolution.tolist() == [128, 128, 128] and est.binaries.shape == (1, 128, 128, 128)
    ball, empty = AnalyticBallField(sigma0=3.0, radius=0.55), AnalyticBallField(sigma0=3.0, radius=0.01)
    est = R.make_estimator(ball, "cpu", resolution=8, render_step_size=0.05, init_passes=1)
    before = est.occs.clone()
    R.update_estimator(est, empty, step=4, render_step_size=0.05, n=4)  # every 4th step: refreshed now
    assert (est.occs < before).any()
    before = est.occs.clone()
    R.update_estimator(est, empty, step=24, render_step_size=0.05)  # the default period is 16: not now
    assert torch.equal(est.occs, before)
    R.update_estimator(est, empty, step=32, render_step_size=0.05)
    assert (est.occs < before).any()


def test_packed_path_shapes_when_no_ray_has_a_sample(packed_on_cpu):
    o, d = torch.tensor([[3.0, 3.0, 3.0]] * 3, dtype=F64), torch.tensor([[1.0, 0.0, 0.0]] * 3, dtype=F64)
    out = R._render_occgrid(_Field(), o, d, -d, torch.zeros(3, 3, dtype=F64), _BinsEstimator(4), near=0.0, far=1e4,
                            render_step_size=0.1, shading="albedo", ambient=0.1, need_normals=True, stratified=False)
    assert out.normal.shape == (3, 3) and out.orientation.shape == (3, 1)


# (field, rays' dtype, tolerance on colour and opacity, on normals): three times the differences measured to the
# float32 render (2026-12-06), which come from the rays' own precision (a point at t = 4 in bfloat16 moves by ~0.02)
@pytest.mark.parametrize("field_kind, dtype, tol, tol_normal", [
    ("voxel", torch.float16, 2e-3, 5e-3), ("mlp", torch.float16, 3e-2, 0.1),
    ("voxel", torch.bfloat16, 1.2e-2, 5e-2), ("voxel", F64, 1e-6, 1e-6)])
def test_a_float32_field_renders_with_rays_of_another_precision(field_kind, dtype, tol, tol_normal):
    """Half-precision rays ask a float32 field in float32 and get the answer in their own dtype (they used to stop in
    index_copy: float32 field outputs into half buffers); float64 rays stay float64 in the renderer (the voxel grid
    casts its samples to its own dtype). Colour, opacity and normals against the float32 render, with and without
    the occupancy grid; the MLP's weights perturbed so that its arithmetic shows."""
    from priorkit.gen3d.field import MLPField

    torch.manual_seed(0)
    field = VoxelField(resolution=8) if field_kind == "voxel" else MLPField()
    if field_kind == "mlp":
        with torch.no_grad():
            for p in field.parameters():
                p.add_(0.3 * torch.randn_like(p))
    o = torch.tensor([[0.0, 0.0, 3.0], [0.3, -0.2, 3.0], [2.0, 2.0, 3.0]])
    d = F.normalize(torch.tensor([[0.0, 0.0, -1.0], [-0.1, 0.05, -1.0], [0.0, 0.0, -1.0]]), dim=-1)
    kw = {"n_samples": 16, "stratified": False, "compute_normals": True}
    ref = R.render(field, o, d, **kw)
    got = R.render(field, o.to(dtype), d.to(dtype), **kw)
    grid = OccupancyGrid.of(field)
    outs = [got] + ([] if grid is None else [R.render(field, o.to(dtype), d.to(dtype), occupancy=grid, **kw)])
    assert len(outs) == (2 if field_kind == "voxel" else 1)
    for out in outs:
        assert out.rgb.dtype == out.opacity.dtype == out.normal.dtype == dtype
        for name, atol in (("rgb", tol), ("opacity", tol), ("normal", tol_normal)):
            torch.testing.assert_close(getattr(out, name).detach().float(), getattr(ref, name).detach(), rtol=0,
                                       atol=atol)
    assert float(ref.opacity[0]) > 0.1 and float(ref.normal[0].norm()) > 0.1  # the rays cross something


def test_half_precision_rays_along_an_axis_have_finite_gradients():
    """The slab method's guard against a zero direction component was 1e-12, which is 0 in float16: 0 / 0 made the
    gradient in the origins NaN for a ray along an axis. Gradients reach the origins and the field's parameters."""
    torch.manual_seed(0)
    field = VoxelField(resolution=8)
    o = torch.tensor([[0.0, 0.0, 3.0], [0.2, 0.1, 3.0]], dtype=torch.float16, requires_grad=True)
    d = torch.tensor([[0.0, 0.0, -1.0], [0.0, 0.0, -1.0]], dtype=torch.float16)
    R.render(field, o, d, n_samples=16, stratified=False).opacity.sum().backward()
    assert bool(torch.isfinite(o.grad).all()) and float(o.grad.abs().sum()) > 0
    assert all(bool(torch.isfinite(p.grad).all()) for p in field.parameters() if p.grad is not None)
    t_near, t_far = R.ray_box_intersection(o.detach(), d)
    assert t_near.tolist() == [2.0, 2.0] and t_far.tolist() == [4.0, 4.0]


def test_packed_path_renders_a_float32_field_with_half_precision_rays(packed_on_cpu):
    """The estimator's sigma_fn and the compositing ask the field in its own dtype and answer in the rays' dtype."""
    torch.manual_seed(0)
    field = VoxelField(resolution=8)
    o = torch.tensor([[0.0, 0.0, 3.0], [0.3, -0.2, 3.0]])
    d = F.normalize(torch.tensor([[0.0, 0.0, -1.0], [-0.1, 0.05, -1.0]]), dim=-1)
    outs = {}
    for dtype in (torch.float32, torch.float16):
        est = _BinsEstimator(16)
        oh, dh = o.to(dtype), d.to(dtype)
        with torch.no_grad():
            outs[dtype] = R._render_occgrid(field, oh, dh, -dh, torch.zeros(2, 3, dtype=dtype), est, near=0.0,
                                            far=1e4, render_step_size=0.1, shading="albedo", ambient=0.1,
                                            need_normals=True, stratified=False)
        assert est.sigma.dtype == dtype and outs[dtype].rgb.dtype == dtype
    assert float(outs[torch.float32].opacity[0]) > 0.1
    for name in ("rgb", "opacity"):
        torch.testing.assert_close(getattr(outs[torch.float16], name).float(), getattr(outs[torch.float32], name),
                                   rtol=0, atol=2e-3)


class _Float32Linear(torch.nn.Module):
    """A field that does not cast its input (unlike VoxelField and MLPField): float32 layers, density and colour
    smooth in x, normals by autograd. Half-precision points reaching it unconverted stop in its first layer."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.layer = torch.nn.Linear(3, 4)

    def forward(self, x):
        h = self.layer(x)
        return torch.sigmoid(h[:, :3]), 4.0 * F.softplus(h[:, 3] + 1.0 - 2.0 * x.square().sum(-1))

    def density(self, x):
        return self(x)[1]

    def normal(self, x):
        with torch.enable_grad():
            x = x.detach().requires_grad_(True)
            (g,) = torch.autograd.grad(self.density(x).sum(), x)
        return -F.normalize(g, dim=-1)


@pytest.mark.parametrize("path", ["stratified", "packed"])
def test_a_field_that_does_not_cast_its_input_gets_points_in_its_own_dtype(path, monkeypatch):
    """query_field, the normals of the stratified path and the estimator's density all hand the field points in its
    parameters' dtype and give its answers back in the rays' dtype (colour, opacity, normals)."""
    if path == "packed":
        import nerfacc.volrend

        monkeypatch.setattr(nerfacc.volrend, "pack_info", _pack_info)
        monkeypatch.setattr(nerfacc.volrend, "exclusive_sum", _exclusive_sum)
    field = _Float32Linear()
    o = torch.tensor([[0.0, 0.0, 3.0], [0.3, -0.2, 3.0]])
    d = F.normalize(torch.tensor([[0.0, 0.0, -1.0], [-0.1, 0.05, -1.0]]), dim=-1)
    outs = {}
    for dtype in (torch.float32, torch.float16):
        oh, dh = o.to(dtype), d.to(dtype)
        bg = torch.zeros(2, 3, dtype=dtype)
        with torch.no_grad():
            if path == "packed":
                outs[dtype] = R._render_occgrid(field, oh, dh, -dh, bg, _BinsEstimator(16), near=0.0, far=1e4,
                                                render_step_size=0.1, shading="lambertian", ambient=0.1,
                                                need_normals=True, stratified=False)
            else:
                outs[dtype] = R.render(field, oh, dh, n_samples=16, stratified=False, compute_normals=True)
        for name in ("rgb", "opacity", "normal"):
            assert getattr(outs[dtype], name).dtype == dtype, name
    assert float(outs[torch.float32].opacity[0]) > 0.1 and float(outs[torch.float32].normal[0].norm()) > 0.1
    for name in ("rgb", "opacity", "normal"):
        torch.testing.assert_close(getattr(outs[torch.float16], name).float(), getattr(outs[torch.float32], name),
                                   rtol=0, atol=5e-3)
