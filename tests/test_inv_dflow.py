"""D-Flow's time grids and its counting wrapper by value (what a mutation run of dflow.py left unchecked).

The prior is one isotropic Gaussian under flow matching (t_top = 1) in float64, wrapped so that every model call's
time is recorded; L-BFGS is replaced by a stand-in that evaluates the loss once.
"""

from __future__ import annotations

import pytest
import torch

from priorkit.distill.core.denoiser import WrappedDenoiser
from priorkit.distill.core.gmm import GaussianMixture
from priorkit.distill.core.schedule import FlowMatching
from priorkit.inverse.dflow import CountingDenoiser, dflow
from priorkit.inverse.operators import Inpainting

F64 = torch.float64
SHAPE = (1, 2, 2)


def _prior() -> GaussianMixture:
    mu = torch.tensor([[0.1, -0.2, 0.3, 0.0]], dtype=F64)
    return GaussianMixture(torch.ones(1), mu, torch.full((1, 4), 0.5, dtype=F64), schedule=FlowMatching(),
                           sample_shape=SHAPE)


class _Times(WrappedDenoiser):
    """Records the time of every model call."""

    def __init__(self, inner) -> None:
        super().__init__(inner)
        self.times: list[float] = []

    def forward(self, x, t, cond=None, *, check=True):
        self.times.append(float(torch.as_tensor(t).reshape(-1)[0]))
        return self.inner(x, t, cond, check=check)


class _OneEvaluation:
    """Stands in for torch.optim.LBFGS: evaluates the closure once."""

    def __init__(self, params, **kwargs) -> None:
        self.params = list(params)

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    def step(self, closure):
        closure()


def test_dflow_grids_are_uniform_in_float64_and_the_inversion_starts_at_one_thousandth(monkeypatch) -> None:
    """steps = 3, Euler: the inversion (data -> noise) evaluates at 1e-3, 1/3, 2/3; the loss's solve at 1, 2/3, 1/3
    (and its checkpointed backward again); the final solve at 1, 2/3, 1/3 — every time to float64 precision (a float32
    grid is off by ~1e-8 relative)."""
    monkeypatch.setattr(torch.optim, "LBFGS", _OneEvaluation)
    rec = _Times(_prior())
    m = torch.tensor([[1.0, 0.0], [1.0, 1.0]], dtype=F64)
    y = (m * torch.tensor([[0.5, 0.0], [-0.5, 0.25]], dtype=F64))[None, None]
    noise = torch.tensor([[[[0.3, -1.0], [0.7, 0.1]]]], dtype=F64)
    dflow(rec, Inpainting(m), y, 0.1, steps=3, solver="euler", noise=noise, checkpoint=True)
    down = [1.0, 2 / 3, 1 / 3]
    want = [1e-3, 1 / 3, 2 / 3] + down + down[::-1] + down
    assert len(rec.times) == len(want)
    assert rec.times[0] == 1e-3
    assert rec.times == pytest.approx(want, rel=1e-14, abs=0)


def test_counting_denoiser_leaves_x_alone_when_no_backward_can_pass() -> None:
    """Under no_grad, or for an x that needs no gradient, nothing is spliced in: the prediction's x_t is the caller's
    own tensor (requires_grad as given) and no backward is counted."""
    counter = CountingDenoiser(_prior())
    x = torch.randn(2, *SHAPE, dtype=F64, requires_grad=True)
    with torch.no_grad():
        p = counter(x, 0.5)
    assert p.x_t is x and p.x_t.requires_grad
    plain = x.detach()
    q = counter(plain, 0.5)
    assert q.x_t is plain and not q.x0.requires_grad
    assert counter.counts == {"forward": 2, "backward": 0}
    counter(x, 0.5).x0.sum().backward()                          # with a graph: one backward counted
    assert counter.counts == {"forward": 3, "backward": 1}


def test_dflow_stages_run_coarse_to_fine_and_invert_on_the_first_grid(monkeypatch) -> None:
    """steps = (2, 3), Euler, one evaluation per stage: the inversion on the 2-step grid (1e-3, 1/2), the first stage's
    solve at 1, 1/2, the second's at 1, 2/3, 1/3, the final solve on the finest grid; no checkpointed recomputation
    for an input this small."""
    monkeypatch.setattr(torch.optim, "LBFGS", _OneEvaluation)
    rec = _Times(_prior())
    m = torch.tensor([[1.0, 0.0], [1.0, 1.0]], dtype=F64)
    y = (m * torch.tensor([[0.5, 0.0], [-0.5, 0.25]], dtype=F64))[None, None]
    noise = torch.tensor([[[[0.3, -1.0], [0.7, 0.1]]]], dtype=F64)
    _, info = dflow(rec, Inpainting(m), y, 0.1, steps=(2, 3), solver="euler", noise=noise, stop_at=None,
                    coarse_stop=0.0, return_info=True)
    want = [1e-3, 1 / 2] + [1.0, 1 / 2] + [1.0, 2 / 3, 1 / 3] + [1.0, 2 / 3, 1 / 3]
    assert rec.times == pytest.approx(want, rel=1e-14, abs=0)
    assert info["stages"] == [1, 1] and info["checkpoint"] is False and info["steps_nfe"] == 3
    with pytest.raises(ValueError, match="steps must be"):
        dflow(rec, Inpainting(m), y, 0.1, steps=(2, 0), noise=noise)


def _gaussian_problem(sigma_y: float = 0.05):
    g = torch.Generator().manual_seed(3)
    m = torch.tensor([[1.0, 1.0], [1.0, 0.0]], dtype=F64)
    x = 0.1 + 0.7 * torch.randn(8, *SHAPE, generator=g, dtype=F64)
    y = m * (x + sigma_y * torch.randn(x.shape, generator=g, dtype=F64))
    return Inpainting(m), y, torch.randn(x.shape, generator=g, dtype=F64), sigma_y


def test_dflow_stops_by_the_discrepancy_principle_where_every_data_term_reaches_the_noise_level() -> None:
    """Morozov: the last stage ends at the first evaluation where ||A Phi(z) - y||^2 <= c sigma_y^2 M for every image
    (M = 3 observed entries here); the point it stopped at is the one returned (its data terms are those reported).
    Without the stop the fit goes on below the noise level, with more evaluations."""
    op, y, noise, sy = _gaussian_problem()
    prior = _prior()
    floor = sy**2 * 3
    x, info = dflow(prior, op, y, sy, steps=(2, 4), solver="heun", noise=noise, stop_at=1.0, coarse_stop=4.0,
                    return_info=True)
    data = (op.A(x) - y).flatten(1).pow(2).sum(1)
    assert info["data_ratio"] == pytest.approx((data / floor).tolist(), rel=1e-9)
    assert max(info["data_ratio"]) <= 1.0 and len(info["stages"]) == 2
    x_free, info_free = dflow(prior, op, y, sy, steps=(2, 4), solver="heun", noise=noise, stop_at=None,
                              coarse_stop=4.0, max_iter=40, max_evals=None, return_info=True)
    assert info_free["evaluations"] > info["evaluations"]
    assert min(info_free["data_ratio"]) < min(info["data_ratio"])
    # a far stricter target takes more evaluations (here all those allowed, not reaching it)
    cap = info["evaluations"] + 20
    _, info_strict = dflow(prior, op, y, sy, steps=(2, 4), solver="heun", noise=noise, stop_at=1e-12, coarse_stop=4.0,
                           max_evals=cap, return_info=True)
    assert info_strict["evaluations"] == cap


def test_dflow_budget_of_model_passes_and_checkpointing_by_size(monkeypatch) -> None:
    """max_passes caps the counted passes (an evaluation in progress finishes: at most one solve's forward and backward
    over); checkpointing turns on above CHECKPOINT_ELEMENTS values and then costs one more forward per call."""
    import priorkit.inverse.dflow as dflow_module

    op, y, noise, sy = _gaussian_problem()
    per = 3  # Heun, 2 steps
    _, info = dflow(_prior(), op, y, sy, steps=2, noise=noise, stop_at=None, max_passes=40, return_info=True)
    assert 40 <= info["nfe"] <= 40 + 2 * per and info["checkpoint"] is False
    inversion = 2 * 2  # Heun from 1e-3: two calls per step (the data -> noise solve never ends at sigma = 0)
    assert info["forward"] == info["evaluations"] * per + inversion + per      # + the final solve
    _, info_1 = dflow(_prior(), op, y, sy, steps=(2, 3), noise=noise, stop_at=None, max_passes=1, return_info=True)
    assert info_1["evaluations"] == 1 and info_1["stages"] == [1]   # a budget below the inversion: one evaluation
    monkeypatch.setattr(dflow_module, "CHECKPOINT_ELEMENTS", y.numel() - 1)
    _, info_c = dflow(_prior(), op, y, sy, steps=2, noise=noise, stop_at=None, max_passes=40, return_info=True)
    assert info_c["checkpoint"] is True
    assert info_c["forward"] == info_c["evaluations"] * 2 * per + inversion + per


class _RecordingInpainting(Inpainting):
    """Inpainting that records the data term ||A x - y||^2 per image of every loss evaluation (x with a graph)."""

    def __init__(self, mask, y) -> None:
        super().__init__(mask)
        self.y, self.data = y, []

    def A(self, x):
        out = super().A(x)
        if x.requires_grad:
            self.data.append((out - self.y).flatten(1).pow(2).sum(1).detach())
        return out


def test_each_stage_stops_at_the_first_evaluation_reaching_its_own_target() -> None:
    """Stage 1 (2 steps) ends at the first evaluation whose every data term is <= coarse_stop sigma_y^2 M, stage 2 (4
    steps) at the first <= stop_at sigma_y^2 M: the evaluation before each was above its target."""
    op0, y, noise, sy = _gaussian_problem()
    op = _RecordingInpainting(op0.mask, y)
    floor = sy**2 * 3
    _, info = dflow(_prior(), op, y, sy, steps=(2, 4), solver="heun", noise=noise, stop_at=0.93, coarse_stop=6.0,
                    return_info=True)
    ratios = [float((d / floor).max()) for d in op.data]
    n1, n2 = info["stages"]
    assert len(ratios) == n1 + n2 == info["evaluations"] and n1 >= 2 and n2 >= 2
    assert all(r > 6.0 for r in ratios[:n1 - 1]) and ratios[n1 - 1] <= 6.0      # stage 1: first at or below 6
    assert all(r > 0.93 for r in ratios[n1:-1]) and ratios[-1] <= 0.93          # stage 2: first at or below 0.93


def test_a_coarse_stage_spends_at_most_half_the_budget_and_the_result_is_the_last_stage_run() -> None:
    """Targets that cannot be met: the 2-step stage takes half the 20 evaluations, the 4-step stage the rest; with
    one stage's worth of budget (1 evaluation) only the coarse stage runs and its own grid makes the output."""
    op, y, noise, sy = _gaussian_problem()
    _, info = dflow(_prior(), op, y, sy, steps=(2, 4), solver="heun", noise=noise, stop_at=0.0, coarse_stop=0.0,
                    max_evals=20, return_info=True)
    assert info["stages"] == [10, 10] and info["steps_nfe"] == 7
    rec = _Times(_prior())
    _, info_1 = dflow(rec, op, y, sy, steps=(2, 4), solver="euler", noise=noise, stop_at=0.0, coarse_stop=0.0,
                      max_evals=1, return_info=True)
    assert info_1["stages"] == [1] and info_1["evaluations"] == 1 and info_1["steps_nfe"] == 2
    assert rec.times[-2:] == pytest.approx([1.0, 0.5])           # the final solve on the 2-step grid it optimised


def test_dflow_defaults_are_the_measured_ones() -> None:
    """Chosen on shapes renders (BENCHMARKS.md, "D-Flow that converges"): 3 then 5 Heun steps, the coarse stage handing
    over at 1.5 sigma_y^2 M, the discrepancy stop at 1, 20 sigma_y^2, blend 0.1 of the inverted A^+ y."""
    from priorkit.inverse.dflow import CHECKPOINT_ELEMENTS, DFlowDefaults

    d = DFlowDefaults()
    assert (d.steps, d.solver, d.coarse_stop, d.stop_at, d.reg_scale, d.blend, d.init) == (
        (3, 5), "heun", 1.5, 1.0, 20.0, 0.1, "pinv")
    assert (d.max_iter, d.max_evals, d.max_passes, d.checkpoint, d.history_size) == (200, 200, None, None, 20)
    assert CHECKPOINT_ELEMENTS == 3 * 128 * 128
