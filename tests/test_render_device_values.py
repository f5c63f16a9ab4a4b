"""gen3d's renderer pieces on a second device (mutation survivors recorded as one-device and
render-untestable-on-CPU, tests/MUTANTS.md): torch's "meta" device stands in for CUDA (a CPU tensor mixed with a
meta tensor raises), and ``Renderer`` is handed a field that reports CUDA through a patched ``_field_device``, with
``make_estimator`` replaced by a recorder."""

from __future__ import annotations

import torch

from priorkit.distill.core.cameras import Camera
from priorkit.gen3d import renderer as R
from priorkit.gen3d.occupancy import OccupancyGrid

META = torch.device("meta")


def test_a_listed_background_colour_is_put_on_the_rays_device():
    d = torch.empty(5, 3, device=META)
    for background in ((0.1, 0.2, 0.3), torch.tensor([0.1, 0.2, 0.3])):
        bg = R._background_colour(background, d)
        assert bg.device == META and bg.shape == (5, 3)


def test_a_given_light_direction_is_put_on_the_rays_device():
    d = torch.empty(5, 3, device=META)
    for light_dir in ((0.0, 0.0, 2.0), torch.tensor([0.0, 0.0, 2.0])):
        light = R._light_directions(light_dir, d)
        assert light.device == META and light.shape == (5, 3)


def test_an_occupancy_grid_on_the_cpu_answers_for_points_on_another_device():
    grid = OccupancyGrid(torch.ones(3, 3, 3), -torch.ones(3), torch.ones(3))
    got = grid.occupied(torch.zeros(4, 3, device=META))
    assert got.device == META and got.shape == (4,) and got.dtype == torch.bool
    assert grid.occupied(torch.zeros(4, 3)).all()  # and on the grid's own device: inside, occupied


class _Field(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(()))


def _cuda_renderer(monkeypatch) -> tuple[R.Renderer, _Field, list]:
    calls = []
    sentinel = object()

    def fake_make_estimator(*args, **kw):  # noqa: ANN002, ANN003, ANN202
        calls.append((args, kw))
        return sentinel

    monkeypatch.setattr(R, "_field_device", lambda field: torch.device("cuda"))
    monkeypatch.setattr(R, "make_estimator", fake_make_estimator)
    field = _Field()
    renderer = R.Renderer(field)
    calls.append(sentinel)
    return renderer, field, calls


def test_a_renderer_of_a_cuda_field_makes_its_estimator_from_that_field_on_its_device(monkeypatch):
    renderer, field, calls = _cuda_renderer(monkeypatch)
    *made, sentinel = calls
    assert renderer.estimator is sentinel
    ((args, kw),) = made
    assert len(args) == 2 and args[0] is field and args[1] == torch.device("cuda") and kw == {}


def test_a_renderer_of_a_cpu_field_makes_no_estimator(monkeypatch):
    calls = []
    monkeypatch.setattr(R, "make_estimator", lambda *a, **k: calls.append(a))
    assert R.Renderer(_Field()).estimator is None and calls == []


def _spy_render(monkeypatch) -> list[dict]:
    seen = []

    def fake_render(field, origins, directions, **kw):  # noqa: ANN001, ANN003, ANN202
        seen.append({"origins": origins, "directions": directions, **kw})
        return R.RenderOutput(rgb=torch.zeros(*origins.shape[:-1], 3), opacity=torch.zeros(*origins.shape[:-1], 1),
                              depth=torch.zeros(*origins.shape[:-1], 1))

    monkeypatch.setattr(R, "render", fake_render)
    return seen


def test_render_image_puts_the_cameras_rays_on_the_fields_device(monkeypatch):
    seen = _spy_render(monkeypatch)
    monkeypatch.setattr(R, "_field_device", lambda field: META)
    R.render_image(_Field(), Camera(azimuth=30.0, elevation=20.0), 4, n_samples=8)
    (call,) = seen
    assert call["origins"].device == META and call["directions"].device == META and call["n_samples"] == 8


def test_render_views_puts_rays_and_lights_on_the_fields_device_and_keeps_a_cpu_generator_off_it(monkeypatch):
    """A field off the CPU gets its rays and lights moved to it, and no (CPU) generator for its jitter."""
    seen = _spy_render(monkeypatch)
    field = _Field().to(META)
    cams = [Camera(azimuth=20.0, elevation=10.0), Camera(azimuth=200.0, elevation=30.0)]
    R.render_views(field, cams, 4, background=1.0, shading="lambertian", lights=torch.tensor([[0.0, 0.0, 1.0]] * 2),
                   ambient=0.2, n_samples=8, generator=torch.Generator().manual_seed(0))
    (call,) = seen
    assert call["origins"].device == META and call["directions"].device == META
    assert call["light_dir"].device == META and call["light_dir"].shape == (2, 4, 4, 3)
    assert call["generator"] is None
    g = torch.Generator().manual_seed(0)
    R.render_views(_Field(), cams, 4, background=1.0, shading="lambertian", lights=None, ambient=0.2, n_samples=8,
                   generator=g)
    assert seen[1]["generator"] is g and seen[1]["light_dir"] is None  # a CPU field: the generator goes on
