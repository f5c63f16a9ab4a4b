"""`sample`, `initial_noise` and `nfe` by value: what the front door hands each solver (the solvers themselves are
tested step by step in test_sampler_values)."""

from __future__ import annotations

import json

import pytest
import torch

from priorkit.distill.core import samplers as sp
from priorkit.distill.core.samplers import dpm_solver, euler, heun
from priorkit.distill.core.samplers.base import time_grid
from priorkit.distill.core.schedule import VE
from priorkit.distill.zoo.toy import gmm_target

F64 = torch.float64
FNS: list = []  # the prediction functions `sample` was given, latest last


@pytest.fixture
def recorded(monkeypatch):  # noqa: ANN201
    """Every solver and `predict_fn` replaced by recorders; returns the list of calls."""
    calls = []
    real = sp.predict_fn

    def fake_predict_fn(den, cond=None, guidance=1.0, *, checkpoint=False):  # noqa: ANN001, ANN202
        calls.append(("fn", den, cond, guidance, checkpoint))
        FNS.append(real(den, None, 1.0))
        return FNS[-1]

    def solver(name):  # noqa: ANN001, ANN202
        def run(fn, x, times, progress=None, **kw):  # noqa: ANN001, ANN202
            calls.append((name, fn, x, times, progress, kw, torch.is_grad_enabled()))
            return x * 2.0
        return run

    monkeypatch.setattr(sp, "predict_fn", fake_predict_fn)
    monkeypatch.setattr(sp, "SOLVERS", {k: solver(k) for k in sp.SOLVERS})
    return calls


def test_each_solver_gets_its_default_grid_the_prediction_and_its_options(recorded):
    den = gmm_target().float()
    noise = torch.randn(3, 2)
    out = sp.sample(den, noise, steps=5)  # DPM-Solver++ on a log-SNR grid by default
    (fn_call, run) = recorded
    assert fn_call == ("fn", den, None, 1.0, False) and run[0] == "dpm++2m" and run[1] is FNS[-1] and run[2] is noise
    assert torch.equal(run[3], time_grid(den.schedule, 5, "logsnr")) and run[4] is None and run[5] == {}
    assert torch.equal(out, noise * 2.0) and run[6] is False  # no graph unless asked for
    for solver in ("heun", "euler"):  # Karras' grid for the others
        recorded.clear()
        sp.sample(den, noise, steps=4, solver=solver, cond="c", guidance=2.5, progress=True, churn=0.3)
        (fn_call, run) = recorded
        assert fn_call == ("fn", den, "c", 2.5, False) and run[0] == solver
        assert torch.equal(run[3], time_grid(den.schedule, 4, "karras")) and run[4] is True and run[5] == {"churn": 0.3}
    recorded.clear()
    sp.sample(den, noise, steps=4, solver="heun", spacing="time", t_max=0.5)
    assert torch.equal(recorded[1][3], time_grid(den.schedule, 4, "time", t_max=0.5))
    recorded.clear()
    times = torch.tensor([0.9, 0.4, 0.0], dtype=F64)
    sp.sample(den, noise, steps=50, times=times)  # an explicit grid wins over steps and spacing
    assert recorded[1][3] is times


def test_gradients_and_checkpointing_only_when_asked(recorded):
    den = gmm_target().float()
    noise = torch.randn(2, 2, requires_grad=True)
    out = sp.sample(den, noise, steps=3, differentiable=True, checkpoint=True)
    assert recorded[0][4] is True and recorded[1][6] is True and out.requires_grad
    recorded.clear()
    out = sp.sample(den, noise, steps=3, checkpoint=True)  # checkpointing means nothing without a graph
    assert recorded[0][4] is False and recorded[1][6] is False and not out.requires_grad
    recorded.clear()
    with torch.no_grad():  # differentiable inside no_grad stays without a graph
        sp.sample(den, noise, steps=3, differentiable=True)
    assert recorded[1][6] is False


def test_bad_solver_names_and_non_finite_noise_are_refused_in_one_line():
    den = gmm_target().float()
    with pytest.raises(ValueError, match=r"unknown solver 'rk4'; expected one of \['dpm\+\+2m', 'euler', 'heun'\]"):
        sp.sample(den, torch.zeros(1, 2), solver="rk4")
    for bad in (float("nan"), float("inf")):
        for solver in ("dpm++2m", "bespoke:/nonexistent.json"):  # checked before any solver is looked up
            with pytest.raises(ValueError, match="noise contains NaN or inf values"):
                sp.sample(den, torch.tensor([[0.0, bad]]), solver=solver)


def test_a_bespoke_solver_file_brings_its_own_grid(tmp_path, recorded):
    from priorkit.distill.core.samplers.bespoke import BespokeSolver

    den = gmm_target().float()
    solver = BespokeSolver(2, "ns", t_max=float(den.schedule.t_max))
    solver.save(tmp_path / "b.json", iteration=0)
    assert json.loads((tmp_path / "b.json").read_text())["nfe"] == 2
    noise = torch.randn(3, 2, requires_grad=True)
    x = sp.sample(den, noise, solver=f"bespoke:{tmp_path / 'b.json'}", steps=99, cond="c", guidance=3.0,
                  differentiable=True, checkpoint=True)
    assert recorded == [("fn", den, "c", 3.0, True)]  # no ODE solver of the table: the file's own steps
    with torch.no_grad():
        want = solver(FNS[-1], noise)
    torch.testing.assert_close(x.detach(), want, rtol=0, atol=0)
    assert x.requires_grad
    recorded.clear()
    x = sp.sample(den, noise, solver=f"bespoke:{tmp_path / 'b.json'}", checkpoint=True)
    assert recorded == [("fn", den, None, 1.0, False)] and not x.requires_grad


def test_initial_noise_and_nfe():
    den = gmm_target().float()
    z = torch.randn((4, 2), generator=torch.Generator().manual_seed(2))
    x = sp.initial_noise(den, (4, 2), generator=torch.Generator().manual_seed(2))
    sigma = float(den.schedule.sigma(torch.tensor(den.schedule.t_max, dtype=F64)))
    assert torch.equal(x, z * sigma) and x.dtype == torch.float32
    x = sp.initial_noise(den, (4, 2), t_max=0.3, generator=torch.Generator().manual_seed(2), dtype=F64)
    assert x.dtype == F64
    torch.testing.assert_close(x, z.double() * float(den.schedule.sigma(torch.tensor(0.3, dtype=F64))), rtol=1e-6,
                               atol=0)
    ve = gmm_target(VE(sigma_max=30.0)).float()  # sigma(t_max) = 30, not 1 as on flow matching
    assert torch.equal(sp.initial_noise(ve, (4, 2), generator=torch.Generator().manual_seed(2)), z * 30.0)
    for name, module in (("euler", euler), ("heun", heun), ("dpm++2m", dpm_solver)):
        for steps in (1, 4):
            for clean in (True, False):
                assert sp.nfe(name, steps, clean) == module.nfe(steps, clean)
    assert sp.nfe("heun", 4) == heun.nfe(4, True) and sp.nfe("heun", 4, False) != sp.nfe("heun", 4)
