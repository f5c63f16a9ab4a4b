"""``render``'s occupancy-grid branch on CPU (mutation survivors, tests/MUTANTS.md): the branch is taken only for rays
on CUDA with an estimator, so the rays here are a tensor subclass that reports ``is_cuda``; nerfacc's two CUDA-only
kernels are replaced by plain-torch equivalents (as in tests/test_gen3d_render_values.py, which checks them against
nerfacc) and the estimator hands out the stratified path's own bins. With the same bins the packed quadrature must
equal the stratified render (NeRF eq. 3 either way), and the estimator must receive render's near, far, marching step
(default 2 / n_samples) and stratified flag."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from test_gen3d_render_values import _exclusive_sum, _pack_info  # nerfacc's CUDA-only kernels in plain torch

from priorkit.distill.core.cameras import Camera
from priorkit.gen3d import renderer as R

F64 = torch.float64


class _ReportsCuda(torch.Tensor):
    """A CPU tensor whose ``is_cuda`` says True: what makes ``render`` take its occupancy-grid branch."""

    @property
    def is_cuda(self) -> bool:
        return True


class _Field(torch.nn.Module):
    """Density, colour and normal as smooth functions of position (float64)."""

    def density(self, x):
        return 1.5 + x[:, 0] + 0.5 * x[:, 1] ** 2

    def forward(self, x):
        return torch.sigmoid(torch.stack([x[:, 0], 2 * x[:, 1], -x[:, 2]], -1)), self.density(x)

    def normal(self, x):
        return F.normalize(x + torch.tensor([0.1, 0.2, 0.3], dtype=x.dtype), dim=-1)


class _BinsEstimator:
    """``OccGridEstimator.sampling`` on CPU: ``n`` equal bins of each ray's box span inside [near, far], packed
    ray-major (the stratified path's bins); records the arguments it was called with."""

    def __init__(self, n: int) -> None:
        self.n, self.calls = n, []

    def sampling(self, rays_o, rays_d, *, sigma_fn, near_plane, far_plane, render_step_size, stratified):
        self.calls.append((near_plane, far_plane, render_step_size, stratified))
        rays_o, rays_d = rays_o.as_subclass(torch.Tensor), rays_d.as_subclass(torch.Tensor)
        t0, t1 = R.ray_box_intersection(rays_o, rays_d)
        t0, t1 = t0.clamp_min(near_plane), t1.clamp_max(far_plane)
        hit = (t1 > t0).nonzero().squeeze(1)
        edges = t0[hit, None] + (t1 - t0)[hit, None] * torch.linspace(0, 1, self.n + 1, dtype=rays_o.dtype)
        return hit.repeat_interleave(self.n), edges[:, :-1].reshape(-1), edges[:, 1:].reshape(-1)


@pytest.fixture()
def packed_on_cpu(monkeypatch):
    import nerfacc.volrend

    monkeypatch.setattr(nerfacc.volrend, "pack_info", _pack_info)
    monkeypatch.setattr(nerfacc.volrend, "exclusive_sum", _exclusive_sum)


def _rays():
    """16 camera rays and one that misses the box, per-ray lights and backgrounds, all float64."""
    o, d = Camera(azimuth=35.0, elevation=25.0).rays(4, 4)
    o = torch.cat([o.reshape(-1, 3), torch.tensor([[3.0, 3.0, 3.0]])]).to(F64)
    d = torch.cat([d.reshape(-1, 3), torch.tensor([[1.0, 0.0, 0.0]])]).to(F64)
    light = F.normalize(torch.randn(17, 3, generator=torch.Generator().manual_seed(0), dtype=F64), dim=-1)
    bg = torch.rand(17, 3, generator=torch.Generator().manual_seed(1), dtype=F64)
    return o, d, light, bg


@pytest.mark.parametrize("shading", ["lambertian", "albedo"])
def test_the_grid_branch_equals_the_stratified_render_on_the_same_bins(packed_on_cpu, shading):
    """Rays on "CUDA" with an estimator go through the estimator (called once with near, far, step 2/12 and the
    stratified flag) and the packed quadrature, which on the stratified path's 12 midpoint bins equals the stratified
    render: colour over the background, opacity, depth, normal and orientation maps."""
    field, (o, d, light, bg) = _Field(), _rays()
    kw = dict(near=1.8, far=3.1, n_samples=12, background=bg, shading=shading, light_dir=light, ambient=0.25,
              compute_normals=True)
    est = _BinsEstimator(12)
    with torch.no_grad():
        grid = R.render(field, o.as_subclass(_ReportsCuda), d.as_subclass(_ReportsCuda), estimator=est,
                        stratified=False, **kw)
        want = R.render(field, o, d, stratified=False, **kw)
    assert est.calls == [(1.8, 3.1, 2.0 / 12, False)] and est.calls[0][3] is False
    for f in ("rgb", "opacity", "depth", "normal", "orientation"):
        torch.testing.assert_close(getattr(grid, f).as_subclass(torch.Tensor), getattr(want, f), atol=1e-12, rtol=0,
                                   msg=f)
    assert grid.rgb.shape == (17, 3) and grid.normal.shape == (17, 3)
    torch.testing.assert_close(grid.rgb[16].as_subclass(torch.Tensor), bg[16], atol=0, rtol=0)  # the missed ray


def test_the_grid_branch_takes_the_marching_step_and_jitter_flag_given(packed_on_cpu):
    """A given render_step_size and stratified=True reach the estimator unchanged; without normals asked for under
    albedo shading the branch returns none."""
    field, (o, d, _, bg) = _Field(), _rays()
    est = _BinsEstimator(6)
    with torch.no_grad():
        out = R.render(field, o.as_subclass(_ReportsCuda), d.as_subclass(_ReportsCuda), estimator=est,
                       n_samples=6, render_step_size=0.05, background=bg)
    assert est.calls == [(0.0, 1e4, 0.05, True)]
    assert out.normal is None and out.orientation is None


def test_render_views_and_renderer_hand_their_estimator_to_render(monkeypatch):
    """render_views passes its estimator to render, and a Renderer the one it holds (on CPU render then ignores it,
    so it is recorded on the way in)."""
    seen, real = [], R.render

    def recording_render(*args, **kw):
        seen.append(kw["estimator"])
        return real(*args, **kw)

    monkeypatch.setattr(R, "render", recording_render)
    field, cam, est = _Field(), Camera(azimuth=10.0, elevation=5.0), R.make_estimator(None, "cpu", resolution=4)
    field.register_buffer("anchor", torch.zeros(1))  # render_views takes the device of the field's first tensor
    args = dict(background=0.0, shading="albedo", lights=None, jitter=False)
    with torch.no_grad():
        R.render_views(field, [cam], 2, ambient=0.1, n_samples=4, estimator=est, **args)
        renderer = R.Renderer(field, n_samples=4)
        renderer.estimator = est  # what __init__ makes for a field on CUDA
        renderer([cam], 2, **args)
    assert seen[0] is est and seen[1] is est and len(seen) == 2
