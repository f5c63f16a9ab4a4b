"""nerfacc's occupancy-grid estimator as gen3d makes and refreshes it, on CPU (mutation survivors, tests/MUTANTS.md):
``make_estimator``'s defaults (CUDA, threshold 0.01, 8 filling passes, one level) and what it passes on,
``update_estimator``'s threshold and warm-up, and ``Renderer.update`` refreshing the estimator a renderer holds.

The field is a two-valued density: 16 where x < 0 and 1 elsewhere, so with the default step 2/64 a cell holds
alpha = sigma * step = 0.5 or 1/32 (the grid's faces at x = 0 split the cells). nerfacc binarises a cell when its
alpha exceeds min(occ_thre, mean alpha); here the mean is 0.265625, so a threshold of 0.01 keeps every cell and
one of 0.1 only the dense half."""

from __future__ import annotations

import nerfacc
import torch

from priorkit.gen3d import renderer as R

STEP = 2.0 / 64  # the default render_step_size of make_estimator / update_estimator


class _HalfDense(torch.nn.Module):
    """Density 16 for x < 0, 1 elsewhere; counts its calls and the points it was asked about."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(()))
        self.calls: list[int] = []

    def density(self, x):
        self.calls.append(x.shape[0])
        return torch.where(x[:, 0] < 0, 16.0, 1.0)


def _dense_half(res: int) -> torch.Tensor:
    """(1, res, res, res) bool: the cells with x < 0 (first index < res / 2)."""
    want = torch.zeros(1, res, res, res, dtype=torch.bool)
    want[:, : res // 2] = True
    return want


def test_make_estimator_puts_the_grid_on_cuda_by_default(monkeypatch):
    """Without a device the estimator is moved to "cuda"; a given device is the one it goes to."""
    seen = []
    monkeypatch.setattr(nerfacc.OccGridEstimator, "to", lambda self, device: seen.append(device) or self)
    R.make_estimator(None, resolution=4)
    R.make_estimator(None, "cpu", resolution=4)
    assert seen == ["cuda", "cpu"]


def test_make_estimator_threshold_defaults_to_0_01_and_is_passed_on():
    """Default occ_thre 0.01: every cell (alpha 0.5 or 1/32) is occupied; occ_thre 0.1: only the dense half."""
    default = R.make_estimator(_HalfDense(), "cpu", resolution=4)
    assert default.binaries.all()
    torch.testing.assert_close(default.occs.reshape(1, 4, 4, 4), torch.where(_dense_half(4), 0.5, 1 / 32))
    strict = R.make_estimator(_HalfDense(), "cpu", resolution=4, occ_thre=0.1)
    assert torch.equal(strict.binaries, _dense_half(4))


def test_make_estimator_fills_the_grid_with_8_passes_over_every_cell():
    """init_passes defaults to 8: the field's density is asked 8 times, at one point per cell (4^3 = 64)."""
    field = _HalfDense()
    R.make_estimator(field, "cpu", resolution=4)
    assert field.calls == [64] * 8
    field.calls.clear()
    R.make_estimator(field, "cpu", resolution=4, init_passes=3)
    assert field.calls == [64] * 3


def test_make_estimator_makes_the_levels_asked_for():
    """``levels`` reaches the estimator: two levels of 4^3 cells (the default is one)."""
    assert R.make_estimator(None, "cpu", resolution=4, levels=2).binaries.shape == (2, 4, 4, 4)
    assert R.make_estimator(None, "cpu", resolution=4).binaries.shape == (1, 4, 4, 4)


def test_update_estimator_threshold_defaults_to_0_01_and_is_passed_on():
    """One refresh at step 0 of an empty grid: occ_thre 0.01 by default keeps every cell; a given 0.1 keeps the
    dense half only."""
    est = R.make_estimator(None, "cpu", resolution=4)
    R.update_estimator(est, _HalfDense(), step=0)
    assert est.binaries.all()
    est = R.make_estimator(None, "cpu", resolution=4)
    R.update_estimator(est, _HalfDense(), step=0, occ_thre=0.1)
    assert torch.equal(est.binaries, _dense_half(4))


def _points_per_refresh(step: int, **kw) -> list[int]:
    """How many points one refresh of a fresh (empty) grid of 4^3 cells tests at ``step``."""
    est, field = R.make_estimator(None, "cpu", resolution=4), _HalfDense()
    R.update_estimator(est, field, step=step, **kw)
    return field.calls


def test_update_estimator_warm_up_is_256_steps_and_is_passed_on():
    """During the warm-up every cell is tested (64 points); afterwards a quarter of the cells plus occupied ones
    (16 points: a fresh grid has none occupied). The default warm-up ends at step 256; warmup_steps=32 at step 32."""
    assert _points_per_refresh(240) == [64] and _points_per_refresh(256) == [16]
    assert _points_per_refresh(16, warmup_steps=32) == [64] and _points_per_refresh(32, warmup_steps=32) == [16]


def test_renderer_update_refreshes_the_estimator_it_holds():
    """``Renderer.update(step)`` refreshes the renderer's estimator from its field at that step (made on CUDA only;
    here one made on CPU is handed to it): every cell then holds alpha = sigma * 2/64, and step 5 (not a multiple
    of 16) refreshes nothing."""
    field = _HalfDense()
    renderer = R.Renderer(field, n_samples=8)
    assert renderer.estimator is None  # on CPU none is made
    renderer.estimator = R.make_estimator(None, "cpu", resolution=4)
    renderer.update(5)
    assert field.calls == [] and not renderer.estimator.occs.any()
    renderer.update(0)
    assert field.calls == [64]
    torch.testing.assert_close(renderer.estimator.occs.reshape(1, 4, 4, 4),
                               torch.where(_dense_half(4), 16 * STEP, STEP))
