"""gen3d's renderer at its edges, by value (mutation survivors, tests/MUTANTS.md): the slab test's guard on tiny
direction components, the default far plane of ``render`` and ``render_views``, a ray that only touches the box,
the strict normal-weight threshold, half-precision rays, representations that have ``query`` but no ``forward``,
empty-space skipping with a field that has no normals, and ``Renderer`` passing ``compute_normals`` on.

Every expected value is the Beer-Lambert law of a constant-density slab (opacity ``1 - exp(-sigma L)`` over a chord
of length L, whatever the sample positions) or a ray-box intersection worked out by hand."""

from __future__ import annotations

import math

import nerfacc
import pytest
import torch

from priorkit.distill.core.cameras import Camera
from priorkit.gen3d import renderer as R
from priorkit.gen3d.occupancy import OccupancyGrid

F64 = torch.float64
UP = (0.0, 0.0, 1.0)


class _Slab(torch.nn.Module):
    """Constant density ``sigma`` and colour over all space, a constant unit normal; outputs in the points' dtype.
    ``sigma_right`` (if given) is the density where x >= 0."""

    def __init__(self, sigma: float, colour=(0.2, 0.4, 0.6), normal=UP, sigma_right: float | None = None) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(()))  # so that render_views / Renderer find a device
        self.sigma, self.sigma_right, self.colour, self.n0 = sigma, sigma_right, colour, normal

    def density(self, x):
        left = torch.full_like(x[:, 0], self.sigma)
        return left if self.sigma_right is None else torch.where(x[:, 0] < 0, left, self.sigma_right)

    def forward(self, x):
        return torch.tensor(self.colour, dtype=x.dtype).expand(x.shape[0], 3), self.density(x)

    def normal(self, x):
        return torch.tensor(self.n0, dtype=x.dtype).expand(x.shape[0], 3)


class _NoNormal(torch.nn.Module):
    """A field with colour and density only (``forward``); it has no ``normal`` at all."""

    def forward(self, x):
        return torch.full_like(x, 0.5), torch.full_like(x[:, 0], 0.7)


class _QueryOnly(torch.nn.Module):
    """A Representation (gen3d/representation.py) in its minimal form: query, density, normal; no ``forward``."""

    def query(self, x, with_normal=False):
        rgb = torch.tensor([0.9, 0.3, 0.1], dtype=x.dtype).expand(x.shape[0], 3)
        return rgb, self.density(x), self.normal(x) if with_normal else None

    def density(self, x):
        return torch.full_like(x[:, 0], 0.8)

    def normal(self, x):
        return torch.tensor(UP, dtype=x.dtype).expand(x.shape[0], 3)


def _along_x(dtype=F64):
    """One ray along +x from (-3, 0.2, 0.1): it is inside the box for t in [2, 4] (a chord of length 2)."""
    return torch.tensor([[-3.0, 0.2, 0.1]], dtype=dtype), torch.tensor([[1.0, 0.0, 0.0]], dtype=dtype)


def test_ray_box_components_exactly_at_the_guard_keep_their_sign():
    """Only components smaller than 1e-12 are replaced; one of exactly -1e-12 still points the ray at the box:
    x = 2 - 1e-12 t (and the same in y, z) enters the cube at t = 1e12 and leaves it at t = 3e12."""
    o = torch.tensor([[2.0, 2.0, 2.0]], dtype=F64)
    d = torch.full((1, 3), -1e-12, dtype=F64)
    t_near, t_far = R.ray_box_intersection(o, d)
    assert t_near.item() == pytest.approx(1e12, rel=1e-12) and t_far.item() == pytest.approx(3e12, rel=1e-12)


def test_render_far_plane_defaults_to_1e4():
    """A ray starting 10000.5 from the centre crosses the box for t in [9999.5, 10001.5]; the default far = 1e4
    keeps the first 0.5 of that chord: opacity 1 - exp(-sigma 0.5), for any jitter."""
    field = _Slab(1.2)
    o, d = torch.tensor([[-10000.5, 0.0, 0.0]], dtype=F64), torch.tensor([[1.0, 0.0, 0.0]], dtype=F64)
    with torch.no_grad():
        out = R.render(field, o, d, n_samples=8, generator=torch.Generator().manual_seed(0))
    assert out.opacity.item() == pytest.approx(1 - math.exp(-1.2 * 0.5), abs=1e-9)


def test_render_views_without_a_scene_band_stops_at_1e4():
    """render_views' far plane is 1e4 when no scene radius is given: a camera 10000.5 away sees 0.5 of the chord."""
    field = _Slab(1.0)
    cam = Camera(azimuth=0.0, elevation=0.0, distance=10000.5)
    with torch.no_grad():
        _, out = R.render_views(field, [cam], 1, background=None, shading="albedo", lights=None, ambient=0.1,
                                n_samples=8, jitter=False)
    assert out.opacity.item() == pytest.approx(1 - math.exp(-0.5), abs=2e-3)  # float32 at t ~ 1e4


def test_a_ray_that_only_touches_the_box_draws_no_jitter():
    """A ray grazing an edge of the box (t_near == t_far: from (-2, 0, 0) along (1, 1, 0)/sqrt 2 it touches the
    edge x = -1, y = 1 at t = sqrt 2) is empty and takes no samples: the other rays get the same jitter as when
    rendered alone, and the grazing ray shows the background."""
    field = _Slab(0.9)
    graze_o, graze_d = torch.tensor([[-2.0, 0.0, 0.0]], dtype=F64), torch.tensor([[1.0, 1.0, 0.0]], dtype=F64)
    graze_d = graze_d / graze_d.norm(dim=-1, keepdim=True)
    t_near, t_far = R.ray_box_intersection(graze_o, graze_d)
    assert t_near.item() == t_far.item() == pytest.approx(math.sqrt(2), rel=1e-12)
    o, d = _along_x()
    bg = torch.tensor([[0.3, 0.6, 0.9], [0.0, 0.0, 0.0]], dtype=F64)
    with torch.no_grad():
        both = R.render(field, torch.cat([graze_o, o]), torch.cat([graze_d, d]), n_samples=8, background=bg,
                        generator=torch.Generator().manual_seed(4))
        alone = R.render(field, o, d, n_samples=8, generator=torch.Generator().manual_seed(4))
    assert both.depth[1].item() == alone.depth[0].item()  # the jitter's first row went to the ray that hits
    assert both.opacity[0].item() == 0 and torch.equal(both.rgb[0], bg[0])
    assert both.opacity[1].item() == pytest.approx(1 - math.exp(-0.9 * 2), abs=1e-12)


def _sigma_for_weight(sigma0: float, target: float) -> float:
    """A density of the second of two unit bins whose weight exp(-sigma0) (1 - exp(-sigma1)), as nerfacc computes
    it, is exactly ``target`` (searched over neighbouring floats)."""
    t_starts, t_ends = torch.tensor([[2.0, 3.0]], dtype=F64), torch.tensor([[3.0, 4.0]], dtype=F64)
    s = torch.tensor(-math.log1p(-target / math.exp(-sigma0)), dtype=F64)
    up, down = s.clone(), s.clone()
    for _ in range(400):
        for cand in (up, down):
            w, _, _ = nerfacc.render_weight_from_density(t_starts, t_ends, torch.stack([torch.tensor(
                sigma0, dtype=F64), cand])[None])
            if w[0, 1].item() == target:
                return cand.item()
        up, down = torch.nextafter(up, up + 1), torch.nextafter(down, down - 1)
    raise AssertionError("no density gives the weight exactly")


def test_a_sample_of_weight_exactly_normal_weight_eps_gets_no_normal():
    """Normals are evaluated only at samples of weight > NORMAL_WEIGHT_EPS (render's docstring): two unit bins on
    the chord t in [2, 4], the second of weight exactly 1e-5 adds nothing to the normal map; one float more density
    there and it adds its weight times the normal (0, 0, 1)."""
    sigma0 = -math.log(2e-5)  # transmittance 2e-5 after the first bin
    sigma1 = _sigma_for_weight(sigma0, R.NORMAL_WEIGHT_EPS)
    o, d = _along_x()
    w0 = 1 - math.exp(-sigma0)
    with torch.no_grad():
        tie = R.render(_Slab(sigma0, sigma_right=sigma1), o, d, n_samples=2, stratified=False, compute_normals=True)
        above = R.render(_Slab(sigma0, sigma_right=math.nextafter(sigma1, 1.0)), o, d, n_samples=2,
                         stratified=False, compute_normals=True)
    assert tie.opacity.item() == pytest.approx(w0 + 1e-5, abs=1e-14)
    assert tie.normal[0, :2].tolist() == [0.0, 0.0] and tie.normal[0, 2].item() == pytest.approx(w0, abs=1e-14)
    assert above.normal[0, 2].item() == pytest.approx(w0 + 1e-5, abs=1e-14)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_rays_render_in_half_precision(dtype):
    """Bin midpoints are taken in the rays' dtype: half-precision rays through a half-precision field render in
    that dtype (opacity 1 - exp(-0.5 * 2) over the chord of length 2)."""
    o, d = _along_x(dtype)
    with torch.no_grad():
        out = R.render(_Slab(0.5), o, d, n_samples=8, stratified=False, compute_normals=True)
    assert out.rgb.dtype == out.opacity.dtype == out.depth.dtype == out.normal.dtype == dtype
    assert out.opacity.item() == pytest.approx(1 - math.exp(-1.0), abs=1e-2)


def test_a_representation_with_query_and_no_forward_renders():
    """The Representation protocol asks for ``query``, not ``forward``: render uses it (opacity 1 - exp(-0.8 * 2),
    colour times opacity over black, and the normal map from ``normal``)."""
    o, d = _along_x()
    with torch.no_grad():
        out = R.render(_QueryOnly(), o, d, n_samples=4, stratified=False, compute_normals=True)
    op = 1 - math.exp(-1.6)
    assert out.opacity.item() == pytest.approx(op, abs=1e-12)
    torch.testing.assert_close(out.rgb[0], torch.tensor([0.9, 0.3, 0.1], dtype=F64) * op, atol=1e-12, rtol=0)
    torch.testing.assert_close(out.normal[0], torch.tensor(UP, dtype=F64) * op, atol=1e-12, rtol=0)


def test_skipping_empty_space_asks_a_field_for_no_normals_under_albedo():
    """With an occupancy grid (every cell occupied) a field that has no ``normal`` renders under albedo shading:
    opacity 1 - exp(-0.7 * 2), colour 0.5 times the opacity plus the white background's share."""
    grid = OccupancyGrid(torch.ones(2, 2, 2), torch.tensor([-1.0] * 3), torch.tensor([1.0] * 3))
    o, d = _along_x()
    with torch.no_grad():
        out = R.render(_NoNormal(), o, d, n_samples=4, stratified=False, background=1.0, occupancy=grid)
    op = 1 - math.exp(-1.4)
    assert out.opacity.item() == pytest.approx(op, abs=1e-12)
    torch.testing.assert_close(out.rgb[0], torch.full((3,), 0.5 * op + 1 - op, dtype=F64), atol=1e-12, rtol=0)


def test_renderer_computes_normals_when_asked_under_albedo():
    """``Renderer(...)(..., compute_normals=True)`` returns the normal and orientation maps even for albedo shading:
    with a constant normal n0 they are opacity * n0 and opacity * max(0, n0 . d)^2 per pixel."""
    field, n0 = _Slab(0.4, normal=(0.0, 0.6, 0.8)), torch.tensor([0.0, 0.6, 0.8])
    cam = Camera(azimuth=30.0, elevation=-20.0)
    with torch.no_grad():
        _, out = R.Renderer(field, n_samples=8)([cam], 3, background=0.0, shading="albedo", lights=None,
                                                 jitter=False, compute_normals=True)
    assert out.normal is not None and out.orientation is not None
    torch.testing.assert_close(out.normal[0], out.opacity[0] * n0, atol=1e-6, rtol=0)
    _, d = cam.rays(3, 3)
    torch.testing.assert_close(out.orientation[0], out.opacity[0] * (d @ n0).clamp_min(0)[..., None] ** 2,
                               atol=1e-6, rtol=0)
    assert out.opacity.min() > 0.1  # every pixel sees the slab
