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
    dflow(rec, Inpainting(m), y, 0.1, steps=3, solver="euler", noise=noise)
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
