"""The guided restoration solvers step by step against values computed by hand from their papers' formulas.

tests/test_inverse_solvers.py checks the solvers' *sample statistics* against the exact Gaussian posterior, with
tolerances a Monte-Carlo estimate needs; a mutation run (tests/MUTANTS.md) showed that wrong weights, signs and
starting states pass those. Here every prior is one isotropic Gaussian N(mu, v I), whose denoiser is linear,

    x0_hat(x_t) = mu + c (x_t - alpha mu),   c = alpha v / (alpha^2 v + sigma^2),   d x0_hat / d x_t = c I,

and every operator is inpainting (A = A^T = diag(m)), so one step of each solver has a closed form written out below
and compared to 1e-10. A recording wrapper checks what reaches the model: the times, the starting state, the
condition and the guidance scale.
"""

from __future__ import annotations

import math
import re

import pytest
import torch

from priorkit.distill.core.denoiser import WrappedDenoiser
from priorkit.distill.core.gmm import GaussianMixture
from priorkit.distill.core.schedule import FlowMatching, VPCosine, VPLinear
from priorkit.inverse.dflow import CountingDenoiser, chi_regulariser, dflow
from priorkit.inverse.diffpir import diffpir
from priorkit.inverse.dps import dps
from priorkit.inverse.operators import Inpainting, random_mask
from priorkit.inverse.pigdm import pigdm, pigdm_flow, pigdm_guided_x0, sampling_times

F64 = torch.float64
SHAPE = (1, 4, 4)
D = 16
SY = 0.1


def _prior(schedule, v: float = 1.0, seed: int = 0) -> GaussianMixture:
    g = torch.Generator().manual_seed(seed)
    mu = 0.5 * torch.randn(1, D, generator=g, dtype=F64)
    return GaussianMixture(torch.ones(1), mu, torch.full((1, D), v, dtype=F64), schedule=schedule, sample_shape=SHAPE)


class Recorder(WrappedDenoiser):
    """The prior, conditional in name: records (x, t, cond) of every call; the condition does not change the output,
    its null condition is zeros."""

    def __init__(self, inner) -> None:
        super().__init__(inner)
        self.conditional = True
        self.calls: list[tuple[torch.Tensor, float, object]] = []

    def null_condition(self, cond):
        return None if cond is None else torch.zeros_like(cond)

    def forward(self, x, t, cond=None, *, check=True):
        tt = torch.as_tensor(t)
        self.calls.append((x.detach().clone(), float(tt.reshape(-1)[0]), None if cond is None else cond.clone()))
        return self.inner(x, t, None, check=check)


def _problem(seed: int = 1, batch: int = 2):
    g = torch.Generator().manual_seed(seed)
    m = random_mask(4, 4, 0.5, g).to(F64)
    op = Inpainting(m)
    y = m * torch.randn(batch, *SHAPE, generator=g, dtype=F64)
    noise = torch.randn(batch, *SHAPE, generator=g, dtype=F64)
    return op, m.reshape(1, *SHAPE) if m.ndim == 2 else m, y, noise


def _gauss(prior: GaussianMixture, v: float, t: float):
    """(mu image, alpha, sigma, c) of the prior at time t."""
    tt = torch.tensor(t, dtype=F64)
    a, s = float(prior.schedule.alpha(tt)), float(prior.schedule.sigma(tt))
    return prior.means[0].reshape(1, *SHAPE), a, s, a * v / (a * a * v + s * s)


def _pigdm_x0(prior, v, t, x, y, m, data_var=1.0, weight=1.0):
    """PiGDM's guided x0 (Song et al. 2023, eq. 7 with r_t^2 = c sigma^2 / (alpha^2 c + sigma^2)), inpainting."""
    mu, a, s, c = _gauss(prior, v, t)
    x0 = mu + c * (x - a * mu)
    r2 = data_var * s * s / (a * a * data_var + s * s)
    return x0 + weight * (s * s / a) * c * m * (y - m * x0) / (r2 + SY**2)


# ----------------------------------------------------------------------------------------------------------------------
# PiGDM
# ----------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("schedule", [VPCosine(), FlowMatching()], ids=["vp_cosine", "flow"])
def test_pigdm_one_deterministic_step_by_hand(schedule):
    prior = _prior(schedule)
    op, m, y, noise = _problem()
    t, s = 0.6, 0.35
    times = torch.tensor([t, s], dtype=F64)
    out = pigdm(prior, op, y, SY, times=times, noise=noise, eta=0.0)
    _, a_t, s_t, _ = _gauss(prior, 1.0, t)
    _, a_s, s_s, _ = _gauss(prior, 1.0, s)
    x = s_t * noise                                                       # the start: sigma(t0) z
    x0g = _pigdm_x0(prior, 1.0, t, x, y, m)                               # default data_var = 1
    eps_g = (x - a_t * x0g) / s_t
    torch.testing.assert_close(out, a_s * x0g + s_s * eps_g, rtol=1e-10, atol=1e-10)   # DDIM, eta = 0


def test_pigdm_guided_x0_defaults_are_the_exact_posterior_mean_for_unit_variance_data():
    """With v = 1 the paper's r_t^2 (data_var = 1, the default) is exact: the guided x0 is E[x0 | x_t, y]."""
    from priorkit.distill.core.samplers.base import predict_fn
    from priorkit.inverse.gaussian import posterior_given_xt

    prior = _prior(VPCosine())
    op, m, y, noise = _problem()
    t = 0.5
    _, a, s, _ = _gauss(prior, 1.0, t)
    x = a * prior.sample(2, torch.Generator().manual_seed(3)) + s * noise
    x0g, pred = pigdm_guided_x0(predict_fn(prior), x, t, op, y, SY, prior.schedule)
    exact = posterior_given_xt(prior, op, y, SY, x, a, s)
    torch.testing.assert_close(x0g, exact, rtol=1e-8, atol=1e-8)
    torch.testing.assert_close(x0g, _pigdm_x0(prior, 1.0, t, x, y, m), rtol=1e-10, atol=1e-10)
    # the second value is the unguided prediction at x_t, detached
    _, _, _, c = _gauss(prior, 1.0, t)
    mu = prior.means[0].reshape(1, *SHAPE)
    torch.testing.assert_close(pred.x0, mu + c * (x - a * mu))
    torch.testing.assert_close(pred.eps, (x - a * pred.x0) / s)
    assert pred.x_t is x and float(pred.t) == t and pred.schedule is prior.schedule
    assert not pred.x0.requires_grad and not pred.eps.requires_grad
    flow = _prior(FlowMatching())
    with pytest.raises(ValueError, match=r"PiGDM guidance needs alpha\(t\) > 0"):
        pigdm_guided_x0(predict_fn(flow), x, 1.0, op, y, SY, flow.schedule)      # alpha(1) = 0 on the flow path


def test_pigdm_warm_start_on_a_flow_prior_and_its_grid():
    prior = Recorder(_prior(FlowMatching()))
    op, m, y, noise = _problem()
    pigdm(prior, op, y, SY, steps=4, noise=noise, flow_start=0.8, eta=0.0)
    grid = sampling_times(prior.schedule, 4, "ddpm", t_max=0.8)
    assert [t for _, t, _ in prior.calls] == pytest.approx(grid[:-1].tolist(), abs=1e-12)
    t0 = float(grid[0])
    x_start = t0 * noise + (1 - t0) * m * y / (1 + SY**2)        # sigma z + alpha A^T (A A^T + s^2)^-1 y
    torch.testing.assert_close(prior.calls[0][0], x_start, rtol=1e-12, atol=1e-12)
    prior.calls.clear()
    pigdm(prior, op, y, SY, steps=4, noise=noise, flow_start=1.0, eta=0.0)     # 1: the pure-noise end, no pinv
    first_t = prior.calls[0][1]
    torch.testing.assert_close(prior.calls[0][0], first_t * noise, rtol=1e-12, atol=1e-12)
    for bad in (0.0, 1.5):
        with pytest.raises(ValueError, match=r"flow_start must lie in \(0, 1\]"):
            pigdm(prior, op, y, SY, steps=2, flow_start=bad)
    with pytest.raises(ValueError, match="eta must be >= 0"):
        pigdm(prior, op, y, SY, steps=2, eta=-0.1)


# ----------------------------------------------------------------------------------------------------------------------
# PiGDM on a flow (Pokle et al. 2024)
# ----------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("weighting", ["adaptive", "unit"])
def test_pigdm_flow_one_euler_step_by_hand(weighting):
    prior = _prior(FlowMatching())
    op, m, y, noise = _problem()
    out = pigdm_flow(prior, op, y, SY, steps=1, start=0.8, noise=noise, weighting=weighting)
    t = 0.8
    a, s = 1 - t, t
    x = t * noise + (1 - t) * m * y / (1 + SY**2)                          # init "pinv"
    gamma = math.sqrt(a / (a * a + s * s)) if weighting == "adaptive" else 1.0
    x0w = _pigdm_x0(prior, 1.0, t, x, y, m, weight=gamma)
    eps_w = (x - a * x0w) / s
    u = eps_w - x0w                                                         # the flow's velocity d x_t / dt
    torch.testing.assert_close(out, x + (0.0 - t) * u, rtol=1e-10, atol=1e-10)


def test_pigdm_flow_starts_noise_or_at_the_noise_end_and_checks_its_arguments():
    prior = Recorder(_prior(FlowMatching()))
    op, m, y, noise = _problem()
    pigdm_flow(prior, op, y, SY, steps=2, start=0.6, init="noise", noise=noise)
    torch.testing.assert_close(prior.calls[0][0], 0.6 * noise, rtol=1e-12, atol=1e-12)
    assert [t for _, t, _ in prior.calls] == pytest.approx([0.6, 0.3])
    prior.calls.clear()
    pigdm_flow(prior, op, y, SY, steps=2, start=1.0, init="noise", noise=noise)   # alpha(1) = 0: log-SNR -10 start
    t0 = 1.0 / (1.0 + math.exp(-5.0))                                       # alpha / sigma = (1 - t) / t = e^-5
    assert prior.calls[0][1] == pytest.approx(t0, abs=1e-9)
    for kwargs, match in (({"steps": 0}, "steps must be >= 1"), ({"start": 0.0}, r"start must lie in \(0, 1\]"),
                          ({"start": 1.5}, None), ({"init": "zeros"}, "init must be"),
                          ({"weighting": "x"}, "weighting must be")):
        if match is None:  # a start above 1 is clipped to the prior's top (1): it runs
            pigdm_flow(prior, op, y, SY, steps=1, **kwargs)
            continue
        with pytest.raises(ValueError, match=match):
            pigdm_flow(prior, op, y, SY, **{"steps": 1, **kwargs})


# ----------------------------------------------------------------------------------------------------------------------
# DPS
# ----------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("schedule", [VPCosine(), FlowMatching()], ids=["vp_cosine", "flow"])
def test_dps_one_deterministic_step_by_hand(schedule):
    v = 0.5
    prior = _prior(schedule, v)
    op, m, y, noise = _problem()
    t, s, zeta = 0.6, 0.35, 0.7
    out = dps(prior, op, y, SY, times=torch.tensor([t, s], dtype=F64), noise=noise, eta=0.0, zeta=zeta)
    mu, a, sg, c = _gauss(prior, v, t)
    _, a_s, s_s, _ = _gauss(prior, v, s)
    x = sg * noise
    x0 = mu + c * (x - a * mu)
    r = y - m * x0
    norm = r.flatten(1).norm(dim=1).reshape(-1, 1, 1, 1)
    grad = -c * m * r / norm                                 # grad_x ||y - A x0_hat(x)||, per sample
    eps = (x - a * x0) / sg
    torch.testing.assert_close(out, a_s * x0 + s_s * eps - zeta * grad, rtol=1e-10, atol=1e-10)
    out0 = dps(prior, op, y, SY, times=torch.tensor([t, s], dtype=F64), noise=noise, eta=0.0, zeta=0.0)
    torch.testing.assert_close(out0, a_s * x0 + s_s * eps, rtol=1e-10, atol=1e-10)   # zeta = 0 is allowed
    with pytest.raises(ValueError, match="zeta must be >= 0"):
        dps(prior, op, y, SY, steps=2, zeta=-0.5)


# ----------------------------------------------------------------------------------------------------------------------
# D-Flow
# ----------------------------------------------------------------------------------------------------------------------


def test_chi_regulariser_is_the_chi_negative_log_density():
    z = torch.randn(3, *SHAPE, generator=torch.Generator().manual_seed(0), dtype=F64)
    n2 = z.flatten(1).pow(2).sum(1)
    torch.testing.assert_close(chi_regulariser(z), n2 / 2 - (D - 1) * torch.log(n2.sqrt()))
    # its minimum over the radius is at |z|^2 = d - 1, the chi_d mode
    radius = torch.tensor(math.sqrt(D - 1), dtype=F64, requires_grad=True)
    direction = z[:1] / z[:1].norm()
    (g,) = torch.autograd.grad(chi_regulariser(radius * direction).sum(), radius)
    assert abs(float(g)) < 1e-10


class _OneClosureLBFGS:
    """Stands in for torch.optim.LBFGS: records its settings and the starting z, evaluates the closure once."""

    seen: dict = {}

    def __init__(self, params, **kwargs) -> None:
        self.params = list(params)
        _OneClosureLBFGS.seen.update(kwargs=kwargs, z0=self.params[0].detach().clone())

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    def step(self, closure):
        _OneClosureLBFGS.seen["loss"] = float(closure().detach())


def test_dflow_start_loss_and_optimiser_by_hand(monkeypatch):
    """D-Flow (Ben-Hamu et al. 2024): z0 = sqrt(b) z_y + sqrt(1 - b) eps, z_y the source noise of the regularised
    pseudo-inverse (the ODE run backwards, divided by the start time's sigma); loss ||A Phi(z) - y||^2 + 20 s_y^2 R(z).
    On a VP-linear prior the flow starts below t = 1, so the division by t_top is seen."""
    v, b, steps = 0.5, 0.3, 60
    prior = _prior(VPLinear(), v)
    op, m, y, noise = _problem()
    monkeypatch.setattr(torch.optim, "LBFGS", _OneClosureLBFGS)
    x, info = dflow(prior, op, y, SY, steps=steps, blend=b, noise=noise, max_iter=7, max_evals=None, history_size=5,
                    return_info=True)
    seen = _OneClosureLBFGS.seen
    assert seen["kwargs"] == {"lr": 1.0, "max_iter": 7, "max_eval": None, "history_size": 5,
                              "line_search_fn": "strong_wolfe", "tolerance_grad": 1e-10, "tolerance_change": 1e-12}
    a1, s1 = (float(f(torch.tensor(1.0, dtype=F64))) for f in (prior.schedule.alpha, prior.schedule.sigma))
    t_top = s1 / (a1 + s1)                                   # the flow time of the prior's top SNR
    mu = prior.means[0].reshape(1, *SHAPE)

    def sd(t):  # the flow path's marginal std for N(mu, v I) data: x_t = (1 - t) x0 + t eps
        return math.sqrt((1 - t) ** 2 * v + t * t)

    x_init = m * y / (1 + SY**2)
    x_top = (1 - t_top) * mu + sd(t_top) / sd(1e-3) * (x_init - (1 - 1e-3) * mu)   # the exact ODE map 1e-3 -> t_top
    z0 = math.sqrt(b) * x_top / t_top + math.sqrt(1 - b) * noise
    torch.testing.assert_close(seen["z0"], z0, rtol=2e-3, atol=2e-3)        # Heun, 60 steps, vs the exact map
    z = seen["z0"]
    n2 = z.flatten(1).pow(2).sum(1)
    loss = ((m * x - y).flatten(1).pow(2).sum(1) + 20 * SY**2 * (n2 / 2 - (D - 1) / 2 * torch.log(n2))).sum()
    assert seen["loss"] == pytest.approx(float(loss), rel=1e-10)
    assert info["loss"] == pytest.approx(float(loss), rel=1e-10)
    # the output is the ODE map of that z (nothing moved it): mu + sqrt(v) / sd(t_top) (t_top z - (1 - t_top) mu)
    torch.testing.assert_close(x, mu + math.sqrt(v) / sd(t_top) * (t_top * z - (1 - t_top) * mu), rtol=2e-3,
                               atol=2e-3)
    monkeypatch.undo()
    x_r, info_r = dflow(prior, op, y, SY, steps=4, noise=noise, max_iter=1, reg=0.0, return_info=True)
    assert info_r["loss"] == pytest.approx(float((m * x_r - y).pow(2).sum()), rel=1e-10)   # reg = 0: data term only
    monkeypatch.setattr(torch.optim, "LBFGS", _OneClosureLBFGS)
    dflow(prior, op, y, SY, steps=4, blend=0.0, noise=noise, max_evals=9)   # b = 0: z0 is the fresh noise
    torch.testing.assert_close(_OneClosureLBFGS.seen["z0"], noise, rtol=0, atol=0)
    assert _OneClosureLBFGS.seen["kwargs"]["max_eval"] == 9
    dflow(prior, op, y, SY, steps=4, blend=1.0, noise=noise)                # b = 1: z0 is the pseudo-inverse's
    z_y = _OneClosureLBFGS.seen["z0"]
    dflow(prior, op, y, SY, steps=4, blend=1.0, noise=-noise)
    torch.testing.assert_close(_OneClosureLBFGS.seen["z0"], z_y, rtol=0, atol=0)
    from priorkit.inverse.classical import classical

    dflow(prior, op, y, SY, steps=steps, blend=1.0, noise=noise, init="classical")  # inverted from the classical fill
    x_c = classical(None, op, y, SY).to(F64)
    x_top_c = (1 - t_top) * mu + sd(t_top) / sd(1e-3) * (x_c - (1 - 1e-3) * mu)
    assert not torch.allclose(x_c, x_init)
    torch.testing.assert_close(_OneClosureLBFGS.seen["z0"], x_top_c / t_top, rtol=2e-3, atol=2e-3)
    monkeypatch.undo()
    with pytest.raises(ValueError, match="init must be 'pinv' or 'classical'"):
        dflow(prior, op, y, SY, init="zeros")
    for bad in (-0.1, 1.1):
        with pytest.raises(ValueError, match=r"blend must lie in \[0, 1\]"):
            dflow(prior, op, y, SY, blend=bad)
    with pytest.raises(ValueError, match="max_iter must be >= 1"):
        dflow(prior, op, y, SY, max_iter=0)


def test_counting_denoiser_counts_forward_and_backward_passes_and_passes_the_condition():
    rec = Recorder(_prior(FlowMatching()))
    counter = CountingDenoiser(rec)
    x = torch.randn(2, *SHAPE, dtype=F64, requires_grad=True)
    cond = torch.ones(2, 1, dtype=F64)
    with torch.no_grad():
        counter(x.detach(), 0.5, cond)
    assert counter.counts == {"forward": 1, "backward": 0}
    counter(x, 0.5, cond).x0.sum().backward()
    assert counter.counts == {"forward": 2, "backward": 1} and counter.nfe == 3
    assert all(c is not None and torch.equal(c, cond) for _, _, c in rec.calls)
    counter.reset()
    assert counter.counts == {"forward": 0, "backward": 0} and counter.nfe == 0


# ----------------------------------------------------------------------------------------------------------------------
# What reaches the model, for every solver: times, condition, guidance, randomness, shape, progress
# ----------------------------------------------------------------------------------------------------------------------

SOLVERS = {
    "pigdm": (pigdm, {"steps": 3}, "PiGDM"),
    "pigdm_flow": (pigdm_flow, {"steps": 3}, "PiGDM-flow"),
    "dps": (dps, {"steps": 3}, "DPS"),
    "dflow": (dflow, {"steps": 2, "max_iter": 1}, "D-Flow"),
}
PROGRESS_KW = {  # D-Flow's inner ODE solves must stay silent even at 50 steps (where a bar would show by default)
    "dflow": {"steps": 50, "max_iter": 1},
}


@pytest.mark.parametrize("name", list(SOLVERS))
def test_condition_and_guidance_reach_the_model(name):
    fn, kw, _ = SOLVERS[name]
    rec = Recorder(_prior(FlowMatching()))
    op, m, y, noise = _problem()
    cond = torch.full((1, 1), 7.0, dtype=F64)
    fn(rec, op, y, SY, cond=cond, noise=noise, **kw)                        # guidance defaults to 1: one branch
    assert rec.calls and all(c is not None and bool((c == 7).all()) for _, _, c in rec.calls)
    assert all(x.shape[0] == 2 for x, _, _ in rec.calls)
    rec.calls.clear()
    fn(rec, op, y, SY, cond=cond, guidance=2.5, noise=noise, **kw)          # CFG: both branches, one batched call
    assert all(x.shape[0] == 4 and bool((c[:2] == 0).all()) and bool((c[2:] == 7).all()) for x, _, c in rec.calls)


@pytest.mark.parametrize("name", list(SOLVERS))
def test_randomness_comes_from_the_generator_and_shape_sets_the_batch(name):
    fn, kw, _ = SOLVERS[name]
    prior = _prior(FlowMatching())
    op, m, y, _ = _problem(batch=1)

    calls = iter(range(100))

    def run(seed, **extra):
        torch.manual_seed(next(calls))        # the global RNG differs between runs: only the generator may matter
        return fn(prior, op, y, SY, generator=torch.Generator().manual_seed(seed), **kw, **extra)

    a, b, c = run(0), run(0), run(1)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.dtype == F64
    many = run(0, shape=(3, *SHAPE))
    assert many.shape == (3, *SHAPE) and many.dtype == F64
    if name in ("pigdm_flow", "dflow"):  # their only randomness is the starting noise: N(0, I) in y's dtype
        z = torch.randn((1, *SHAPE), generator=torch.Generator().manual_seed(0), dtype=F64)
        assert torch.equal(a, fn(prior, op, y, SY, noise=z, **kw))
        # noise of another dtype is cast to y's before use
        z32 = z.float()
        assert torch.equal(fn(prior, op, y, SY, noise=z32, **kw), fn(prior, op, y, SY, noise=z32.double(), **kw))
        # the noise sets the batch, whatever shape says
        z3 = torch.randn((3, *SHAPE), generator=torch.Generator().manual_seed(5), dtype=F64)
        assert fn(prior, op, y, SY, noise=z3, shape=(2, *SHAPE), **kw).shape == (3, *SHAPE)


@pytest.mark.parametrize("name", list(SOLVERS))
def test_progress_bar_is_named_and_silent_when_off(name, capfd):
    fn, kw, label = SOLVERS[name]
    kw = PROGRESS_KW.get(name, kw)
    prior = _prior(FlowMatching())
    op, m, y, noise = _problem()
    fn(prior, op, y, SY, noise=noise, progress=False, **kw)
    assert capfd.readouterr().err == ""
    fn(prior, op, y, SY, noise=noise, progress=True, **kw)
    assert f"{label}:" in capfd.readouterr().err


@pytest.mark.parametrize("name", ["pigdm", "dps"])
def test_explicit_times_are_the_models_times(name):
    fn, _, _ = SOLVERS[name]
    rec = Recorder(_prior(VPCosine()))
    op, m, y, noise = _problem()
    times = torch.tensor([0.9, 0.7, 0.4, 0.1, 0.0], dtype=F64)
    fn(rec, op, y, SY, times=times, noise=noise)
    assert [t for _, t, _ in rec.calls] == pytest.approx(times[:-1].tolist())
    torch.testing.assert_close(rec.calls[0][0], float(rec.schedule.sigma(times[0])) * noise)


def test_dflow_bar_counts_loss_evaluations_against_its_budget(capfd):
    """The bar's total is max_evals, or torch's default 1.25 max_iter; it advances once per loss evaluation."""
    prior = _prior(FlowMatching())
    op, m, y, noise = _problem()
    capfd.readouterr()
    _, info = dflow(prior, op, y, SY, steps=2, max_iter=4, max_evals=None, stop_at=None, noise=noise, progress=True,
                    return_info=True)
    err = capfd.readouterr().err.replace("\r", "\n")
    shown = [int(k) for k in re.findall(r"(\d+)/5 ", err)]
    assert shown and max(shown) == info["evaluations"], err[-300:]
    assert "loss=" in err and "loss=None" not in err


def test_counting_denoiser_checks_inputs_by_default_and_not_when_told():
    counter = CountingDenoiser(_prior(FlowMatching()))
    bad = torch.full((1, *SHAPE), float("nan"), dtype=F64)
    with pytest.raises(ValueError):
        counter(bad, 0.5)
    counter(bad, 0.5, check=False)                             # the samplers' calls skip the check


def test_diffpir_auto_warm_start_follows_how_scattered_the_holes_are():
    from priorkit.inverse.diffpir import (
        SCATTER_RADIUS,
        WARM_START_OTHER,
        WARM_START_SCATTERED,
        auto_warm_start,
        scattered_holes,
    )
    from priorkit.inverse.operators import Blur, half_mask

    rand = Inpainting(random_mask(64, 64, 0.8, torch.Generator().manual_seed(0)))
    box = Inpainting(half_mask(64, 64, "right"))
    assert (WARM_START_SCATTERED, WARM_START_OTHER) == (0.3, 0.7)
    assert auto_warm_start(rand) == 0.3 and auto_warm_start(box) == 0.7
    assert auto_warm_start(Blur(torch.ones(3, 3) / 9)) == 0.7
    assert scattered_holes(torch.ones(8, 8))  # nothing missing
    # stripes of missing columns: one 2r wide is all within r px of an observed column; one 2r + 4 wide has 4 far
    # columns. n narrow stripes and a wide one: share 1 - 4 / (6n + 10) (r = 3), exactly 0.9 at n = 5
    assert SCATTER_RADIUS == 3

    def stripes(n: int) -> torch.Tensor:
        m, col = torch.ones(1, 3, 12, 100), 2
        for width in [6] * n + [10]:
            m[..., col:col + width] = 0
            col += width + 2
        return m

    assert scattered_holes(stripes(5)) and not scattered_holes(stripes(4))
    # per-channel masks: a pixel is missing where any channel is (three 80% masks: 99% of pixels missing)
    g = torch.Generator().manual_seed(1)
    per_channel = torch.cat([random_mask(64, 64, 0.8, g).reshape(1, 1, 64, 64) for _ in range(3)], dim=1)
    assert all(scattered_holes(per_channel[:, c:c + 1]) for c in range(3)) and not scattered_holes(per_channel)
    # diffpir's default is "auto": on scattered holes it starts at 0.3, exactly as when told so
    prior = _prior(VPCosine())
    op, _, y, noise = _problem()
    runs = {w: diffpir(prior, op, y, 0.05, steps=3, noise=noise, generator=torch.Generator().manual_seed(4),
                       **({} if w is None else {"warm_start": w})) for w in (None, 0.3, 0.7)}
    assert torch.equal(runs[None], runs[0.3]) and not torch.equal(runs[None], runs[0.7])
    with pytest.raises(ValueError, match="warm_start must be a time, None or 'auto'"):
        diffpir(prior, op, y, 0.05, steps=3, warm_start="hot")
