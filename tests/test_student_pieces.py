"""Progressive, shortcut, DMD and bespoke pieces by value, one call each on a tiny analytic model (milliseconds):
which times, which weights, which rows get which target, which step carries the gradient, which numbers a solver
step combines. The trainings that reach the targets are in tests/test_exact_students.py and test_dmd_bespoke.py."""

from __future__ import annotations

import math

import pytest
import torch

from priorkit.distill.core.denoiser import Denoiser
from priorkit.distill.core.samplers.bespoke import BespokeSolver, load_bespoke
from priorkit.distill.core.schedule import FlowMatching, VPCosine, add_noise
from priorkit.distill.students import dmd
from priorkit.distill.students import progressive as pd
from priorkit.distill.students import shortcut as sc
from priorkit.distill.students.bespoke import rmse

F64 = torch.float64


class _Affine(Denoiser):
    """kind-native output  a * x + b * t + c * d (+ e * cond["text"]): ``d`` read from a dict condition."""

    def __init__(self, kind: str, schedule, a: float = 0.7, b: float = 0.3, c: float = 0.0, e: float = 0.0) -> None:
        super().__init__()
        self.kind, self.schedule, self.sample_shape = kind, schedule, (2,)
        self.a, self.b, self.c, self.e = a, b, c, e

    def predict_native(self, x, t, cond=None):
        out = self.a * x + self.b * t.reshape(-1, 1).to(x).expand(x.shape[0], 1)
        if isinstance(cond, dict) and "d" in cond:
            out = out + self.c * torch.as_tensor(cond["d"]).to(x).reshape(-1, 1)
        if isinstance(cond, dict) and "text" in cond:
            out = out + self.e * cond["text"].to(x)
        return self.kind, out


def _batch(seed: int = 0, n: int = 4):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 2, generator=g, dtype=F64), torch.randn(n, 2, generator=g, dtype=F64)


# ---- progressive distillation ----------------------------------------------------------------------------
def test_snr_weight_is_max_snr_one_or_ones():
    s = VPCosine()
    t = torch.tensor([0.1, 0.5, 0.9], dtype=F64)  # SNR > 1, ~ 1 (0.98), < 1 for the cosine schedule
    snr = (s.alpha(t) / s.sigma(t)) ** 2
    torch.testing.assert_close(pd.snr_weight(s, t, "truncated_snr"), torch.maximum(snr, torch.ones_like(snr)))
    assert float(snr[0]) > 1.5 and float(snr[2]) < 0.5  # both branches of the max are exercised
    assert pd.snr_weight(s, t, "none").tolist() == [1.0, 1.0, 1.0]
    with pytest.raises(ValueError, match="unknown weighting 'snr'"):
        pd.snr_weight(s, t, "snr")


@pytest.mark.parametrize("weighting", ["truncated_snr", "none"])
def test_progressive_loss_is_the_weighted_x0_error_to_the_two_step_target(weighting):
    schedule = VPCosine()
    teacher, student = _Affine("eps", schedule, a=0.6, b=0.2), _Affine("x0", schedule, a=0.9, b=-0.4)
    x0, eps = _batch(1)
    t = torch.tensor([0.15, 0.4, 0.6, 0.9], dtype=F64)
    t_mid, t_next = t - 0.05, t - 0.1
    z = add_noise(schedule, x0, t, eps)
    target = pd.progressive_target(teacher, z, t, t_mid, t_next)
    err = (0.9 * z - 0.4 * t[:, None] - target).pow(2).mean(1)
    w = pd.snr_weight(schedule, t, weighting)
    got = pd.progressive_loss(student, teacher, x0, eps, t, t_mid, t_next, weighting=weighting)
    assert float(got) == pytest.approx(float((w * err).mean()), rel=1e-10)
    # the gradient reaches the student only (the target is under no_grad)
    x0r = x0.clone().requires_grad_(True)
    (gx,) = torch.autograd.grad(pd.progressive_loss(student, teacher, x0r, eps, t, t_mid, t_next,
                                                    weighting=weighting), x0r)
    a = schedule.alpha(t)[:, None]
    torch.testing.assert_close(gx, 2 * w[:, None] * (0.9 * z - 0.4 * t[:, None] - target) * 0.9 * a / (4 * 2))


def test_progressive_loss_passes_the_condition_to_teacher_and_student():
    schedule = VPCosine()
    teacher = _Affine("eps", schedule, a=0.6, b=0.2, e=0.5)
    student = _Affine("x0", schedule, a=0.9, b=-0.4, e=-0.7)
    x0, eps = _batch(6)
    t = torch.tensor([0.3, 0.5, 0.7, 0.9], dtype=F64)
    t_mid, t_next = t - 0.1, t - 0.2
    text = torch.randn(4, 2, generator=torch.Generator().manual_seed(8), dtype=F64)
    cond = {"text": text}
    z = add_noise(schedule, x0, t, eps)
    target = pd.progressive_target(teacher, z, t, t_mid, t_next, cond)
    assert not torch.allclose(target, pd.progressive_target(teacher, z, t, t_mid, t_next))  # the teacher reads it
    pred = 0.9 * z - 0.4 * t[:, None] - 0.7 * text
    want = (pd.snr_weight(schedule, t, "truncated_snr") * (pred - target).pow(2).mean(1)).mean()
    got = pd.progressive_loss(student, teacher, x0, eps, t, t_mid, t_next, cond)
    assert float(got) == pytest.approx(float(want), rel=1e-10)


def test_progressive_grids_refuse_what_does_not_nest():
    vp = VPCosine()
    from priorkit.distill.core.samplers.base import time_grid

    for spacing in ("logsnr", "time", "karras"):  # the spacing is passed on, and the grid ends at the data (t = 0)
        want = time_grid(vp, 8, spacing, end=0.0)
        assert pd.teacher_grid(vp, 8, spacing).tolist() == want.tolist() and float(want[-1]) == 0.0
        assert pd.student_grid(vp, 2, 8, spacing).tolist() == want[::4].tolist()
    assert pd.teacher_grid(vp, 8).tolist() == time_grid(vp, 8, "time", end=0.0).tolist()  # default: uniform in t
    assert pd.teacher_grid(vp, 8, "logsnr").tolist() != pd.teacher_grid(vp, 8).tolist()
    s = FlowMatching()
    assert pd.teacher_grid(s, 1).tolist() == [1.0, 0.0]
    for bad in (0, 3, 12):
        with pytest.raises(ValueError, match="power-of-two"):
            pd.teacher_grid(s, bad)
    with pytest.raises(ValueError, match="3 steps do not divide the 8-step grid"):
        pd.student_grid(s, 3, 8)
    assert pd.student_grid(s, 8, 8).tolist() == pd.teacher_grid(s, 8).tolist()
    assert pd.student_grid(s, 1, 8).tolist() == [1.0, 0.0]
    assert pd.student_grid(s, 4).tolist() == pd.teacher_grid(s, 64)[::16].tolist()
    with pytest.raises(ValueError, match="128 steps do not divide the 64-step grid"):  # 64 start steps by default
        pd.student_grid(s, 128)


# ---- shortcut models -------------------------------------------------------------------------------------
def test_shortcut_step_size_levels_and_span():
    s = FlowMatching()
    assert sc.span(s) == 1.0
    assert sc.step_size(s, 3) == pytest.approx(1 / 3)
    assert sc.step_size(s, 3, levels=2) == pytest.approx(1 / 3) and sc.step_size(s, 4, levels=2) == 0.0
    assert sc.step_size(s, 6, levels=3) == pytest.approx(1 / 6) and sc.step_size(s, 8, levels=3) == 0.0
    with pytest.raises(ValueError, match="steps must be >= 1; got 0"):
        sc.step_size(s, 0)
    h = sc.half_query(torch.tensor([0.5, 0.25, 0.25 * (1 + 5e-7)], dtype=F64), 0.125)
    assert h.tolist() == [0.25, 0.0, 0.0]  # at (or within rounding of) the finest level: plain flow
    edge = float(torch.tensor(0.125, dtype=F64) * (1 + 1e-6))  # a half-step exactly at the tolerance is finest
    assert sc.half_query(torch.tensor([2 * edge], dtype=F64), 0.125).tolist() == [0.0]


def test_shortcut_loss_rows_by_hand():
    schedule = FlowMatching()
    online = _Affine("velocity", schedule, a=0.5, b=0.2, c=0.9, e=0.3)
    target = _Affine("velocity", schedule, a=-0.4, b=0.6, c=1.5, e=-0.2)
    x0, eps = _batch(2, n=5)
    t = torch.tensor([0.9, 0.7, 0.5, 0.4, 0.8], dtype=F64)
    d = torch.tensor([0.5, 0.25, 0.125, 0.3, 0.6], dtype=F64)  # d of the FM rows (3, 4) must be ignored
    text = torch.randn(5, 2, generator=torch.Generator().manual_seed(9), dtype=F64)
    cond = {"text": text}
    d_min = 0.125
    x_t = (1 - t[:, None]) * x0 + t[:, None] * eps

    def vel(m, x, tt, dd, c):
        return m.a * x + m.b * tt[:, None] + m.c * dd[:, None] + m.e * c

    rows = slice(0, 3)
    h = d[rows] / 2
    q = torch.where(h <= d_min * (1 + 1e-6), torch.zeros_like(h), h)  # [0.25, 0, 0]
    s1 = vel(target, x_t[rows], t[rows], q, text[rows])
    s2 = vel(target, x_t[rows] - h[:, None] * s1, t[rows] - h, q, text[rows])
    goal = torch.cat([(s1 + s2) / 2, eps[3:] - x0[3:]])  # FM rows: alpha' x0 + sigma' eps = -x0 + eps
    d_in = torch.cat([d[:3], torch.zeros(2, dtype=F64)])
    pred = vel(online, x_t, t, d_in, text)
    want = (pred - goal).pow(2).mean()
    got = sc.shortcut_loss(online, target, x0, eps, t, d, 3, d_min, cond=cond)
    assert float(got) == pytest.approx(float(want), rel=1e-10)
    # with a teacher, the FM rows regress on the teacher's velocity at x_t (and the condition reaches it)
    teacher = _Affine("velocity", schedule, a=0.8, b=-0.1, e=0.7)
    goal_t = torch.cat([(s1 + s2) / 2, vel(teacher, x_t[3:], t[3:], torch.zeros(2, dtype=F64), text[3:])])
    got_t = sc.shortcut_loss(online, target, x0, eps, t, d, 3, d_min, cond=cond, teacher=teacher)
    assert float(got_t) == pytest.approx(float((pred - goal_t).pow(2).mean()), rel=1e-10)
    # no self-consistency rows: plain flow matching with d = 0 everywhere
    pred0 = vel(online, x_t, t, torch.zeros(5, dtype=F64), text)
    got0 = sc.shortcut_loss(online, target, x0, eps, t, d, 0, d_min, cond=cond)
    assert float(got0) == pytest.approx(float((pred0 - (eps - x0)).pow(2).mean()), rel=1e-10)


def test_shortcut_loss_puts_a_tensor_condition_under_the_online_models_key():
    class _Keyed(_Affine):
        condition_key = "class"

        def predict_native(self, x, t, cond=None):
            kind, out = super().predict_native(x, t, {k: v for k, v in cond.items() if k != "class"})
            return kind, out + 0.5 * cond["class"].to(x)

    schedule = FlowMatching()
    online = _Keyed("velocity", schedule, a=0.5, b=0.2, c=0.9)
    x0, eps = _batch(3)
    t = torch.tensor([0.9, 0.7, 0.5, 0.4], dtype=F64)
    labels = torch.randn(4, 2, generator=torch.Generator().manual_seed(2), dtype=F64)
    x_t = (1 - t[:, None]) * x0 + t[:, None] * eps
    pred = 0.5 * x_t + 0.2 * t[:, None] + 0.5 * labels  # FM rows only: d = 0
    got = sc.shortcut_loss(online, online, x0, eps, t, t, 0, 0.1, cond=labels)
    assert float(got) == pytest.approx(float((pred - (eps - x0)).pow(2).mean()), rel=1e-10)


# ---- DMD / DMD2 ------------------------------------------------------------------------------------------
def test_generator_times_are_uniform_from_t_max():
    assert dmd.generator_times(FlowMatching(), 4).tolist() == [1.0, 0.75, 0.5, 0.25]
    assert dmd.generator_times(FlowMatching(), 1).tolist() == [1.0]
    assert dmd.generator_times(FlowMatching(), 4).dtype == F64


def test_backward_simulation_renoises_the_generators_output_and_keeps_the_last_steps_gradient():
    schedule = FlowMatching()
    gen = _Affine("x0", schedule, a=0.5, b=0.3)
    gen.a = torch.tensor(0.5, dtype=F64, requires_grad=True)
    noise, _ = _batch(3, n=3)
    times = torch.tensor([1.0, 0.6, 0.3], dtype=F64)
    out, x_in = dmd.generate(gen, noise, times, generator_rng=torch.Generator().manual_seed(4))
    rng = torch.Generator().manual_seed(4)
    x = noise
    for i in range(2):  # x0 of step i, re-noised to the next time with fresh noise
        x0 = 0.5 * x + 0.3 * times[i]
        e = torch.randn(x.shape, generator=rng, dtype=F64)
        x = (1 - times[i + 1]) * x0 + times[i + 1] * e
    torch.testing.assert_close(x_in, x)
    torch.testing.assert_close(out.detach(), 0.5 * x + 0.3 * 0.3)
    (ga,) = torch.autograd.grad(out.sum(), gen.a)
    assert float(ga) == pytest.approx(float(x.sum()), rel=1e-12)  # only the last step carries the gradient
    # last = 0: the first step alone, from the noise
    out0, x0_in = dmd.generate(gen, noise, times, last=0)
    torch.testing.assert_close(x0_in, noise)
    torch.testing.assert_close(out0.detach(), 0.5 * noise + 0.3)
    # dmd_sample: the given times when there are as many as steps, else uniform ones
    s_given = dmd.dmd_sample(gen, noise, 3, times=[1.0, 0.6, 0.3], generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(s_given, out.detach())
    s_uniform = dmd.dmd_sample(gen, noise, 2, times=[1.0, 0.6, 0.3], generator=torch.Generator().manual_seed(4))
    want, _ = dmd.generate(gen, noise, dmd.generator_times(schedule, 2), generator_rng=torch.Generator().manual_seed(4))
    torch.testing.assert_close(s_uniform, want.detach())


def test_dmd_noise_levels_are_uniform_in_the_configured_range():
    cfg = dmd.DMDConfig(t_lo=0.3, t_hi=0.4)
    x = torch.zeros(2000, 2, dtype=F64)
    t, eps = dmd._noise_level(x, cfg, torch.Generator().manual_seed(0))
    assert t.shape == (2000,) and eps.shape == x.shape and t.dtype == F64
    assert 0.3 <= float(t.min()) < 0.302 and 0.398 < float(t.max()) <= 0.4
    assert abs(float(t.mean()) - 0.35) < 0.002 and abs(float(eps.std()) - 1.0) < 0.03


# ---- bespoke solvers -------------------------------------------------------------------------------------
def test_rmse_is_the_mean_of_per_sample_root_mean_squares():
    x = torch.zeros(2, 2, 2, dtype=F64)
    y = torch.tensor([[[1.0, 1.0], [1.0, 1.0]], [[2.0, 0.0], [0.0, 0.0]]], dtype=F64)
    assert float(rmse(x, y)) == pytest.approx((1.0 + 1.0) / 2)  # sqrt(4/4), sqrt(4/4)
    y[1, 0, 0] = 4.0
    assert float(rmse(x, y)) == pytest.approx((1.0 + 2.0) / 2)
    assert float(rmse(x + 3.0, y + 3.0)) == pytest.approx((1.0 + 2.0) / 2)  # a difference, not a sum


class _Linear1D:
    """u(x, t) = lam x: the exact flow is x(t) = x(t0) exp(lam (t - t0))."""

    def __init__(self, lam: float) -> None:
        self.lam, self.calls = lam, []

    def __call__(self, x, t):
        self.calls.append(float(t.detach()))
        return type("P", (), {"velocity": self.lam * x})()


def test_bespoke_rk2_with_the_exact_scale_integrates_a_linear_ode_exactly():
    # Shaul et al. 2023: with s_r = exp(-lam (t_r - t_max)) the transformed path is constant, so RK2 on it is exact
    # for any time grid. The half step's f0 and x_mid are multiplied by zero here (f1 = 0): they are tested by hand
    # in test_bespoke_rk2_steps_by_hand; this test pins the scale's role and the final division by s.
    lam, n = -1.3, 2
    solver = BespokeSolver(2 * n, "rk2", t_max=1.0, t_end=0.0)
    with torch.no_grad():
        solver.dt_logits.copy_(torch.tensor([0.3, -0.2, 0.5, 0.1], dtype=F64))
        t = solver.times()
        tdot = torch.tensor([-0.9, -1.2, -0.7, -1.1], dtype=F64)  # any negative speeds
        solver.log_tdot.copy_(tdot.neg().log())
        s = torch.exp(-lam * (t - 1.0))                            # s at points 0, 1/2, 1, 3/2, 2
        solver.log_s.copy_(s[1:].log())
        solver.sdot.copy_(-lam * tdot * s[:-1])                    # sdot = ds/dt * dt/dr at points 0 .. 3/2
    u = _Linear1D(lam)
    x = torch.tensor([[1.0], [-2.0]], dtype=F64)
    got = solver(u, x)
    torch.testing.assert_close(got, x * math.exp(lam * (float(t[-1]) - 1.0)), rtol=1e-12, atol=1e-12)
    assert u.calls == pytest.approx([float(v) for v in t[:-1]])  # 2n evaluations at the grid's first 2n points
    # plain RK2 (the initial parameters) is not exact on the same problem: the scale is what made it so
    plain = BespokeSolver(2 * n, "rk2")(_Linear1D(lam), x)
    assert (plain - x * math.exp(-lam)).abs().max() > 1e-4


def test_bespoke_rk2_steps_by_hand():
    # two steps (n = 2, NFE 4) with every parameter away from its start: Shaul et al. 2023 eq. 13 in plain floats
    lam = 0.6
    solver = BespokeSolver(4, "rk2", t_max=1.0, t_end=0.0)
    inc = [0.1, 0.2, 0.3, 0.4]
    tdot, s, sdot = [0.8, 1.3, 0.6, 1.1], [1.0, 1.5, 0.7, 1.2, 0.9], [0.4, -0.9, 0.3, 0.2]
    with torch.no_grad():
        solver.dt_logits.copy_(torch.tensor(inc, dtype=F64).log())
        solver.log_tdot.copy_(torch.tensor(tdot, dtype=F64).log())
        solver.log_s.copy_(torch.tensor(s[1:], dtype=F64).log())  # s_0 = 1 is fixed
        solver.sdot.copy_(torch.tensor(sdot, dtype=F64))
    times = [1.0, 0.9, 0.7, 0.4, 0.0]
    assert solver.times().tolist() == pytest.approx(times)

    def u(y, tt):  # u(x, t) = lam x (1 + t): the time the solver passes shows in the answer
        return lam * y * (1 + tt)

    x, h = 2.0, 0.5
    for i in range(2):
        k0, k1, k2 = 2 * i, 2 * i + 1, 2 * i + 2
        f0 = sdot[k0] * x - tdot[k0] * s[k0] * u(x, times[k0])
        x_mid = (s[k0] * x + 0.5 * h * f0) / s[k1]
        f1 = sdot[k1] * x_mid - tdot[k1] * s[k1] * u(x_mid, times[k1])
        x = (s[k0] * x + h * f1) / s[k2]
    fn = lambda y, tt: type("P", (), {"velocity": lam * y * (1 + tt)})()  # noqa: E731
    assert float(solver(fn, torch.tensor([[2.0]], dtype=F64))) == pytest.approx(x, rel=1e-12)


def test_bespoke_ns_step_is_euler_plus_the_learned_combinations():
    lam = 0.8
    solver = BespokeSolver(2, "ns", t_max=1.0, t_end=0.0)
    with torch.no_grad():
        solver.dt_logits.copy_(torch.tensor([0.0, math.log(3.0)], dtype=F64))  # increments 1/4, 3/4
        solver.a.copy_(torch.tensor([[0.1, 0.0], [0.2, -0.3]], dtype=F64))
        solver.b_scale.copy_(torch.tensor([[0.4, 0.0], [-0.5, 0.6]], dtype=F64))
    assert solver.times().tolist() == pytest.approx([1.0, 0.75, 0.0])
    x0 = torch.tensor([[2.0]], dtype=F64)
    u0 = lam * 2.0
    dt0 = -0.25
    x1 = 2.0 + dt0 * u0 + 0.1 * 2.0 + dt0 * 0.4 * u0
    u1 = lam * x1
    dt1 = -0.75
    x2 = x1 + dt1 * u1 + 0.2 * 2.0 + dt1 * -0.5 * u0 + -0.3 * x1 + dt1 * 0.6 * u1
    u = _Linear1D(lam)
    assert float(solver(u, x0)) == pytest.approx(x2, rel=1e-12)
    assert u.calls == pytest.approx([1.0, 0.75])  # evaluated at the learned times t_0, t_1


def test_bespoke_solver_files_and_refusals(tmp_path):
    import json

    from priorkit.distill.core.samplers.bespoke import bespoke_solve

    with pytest.raises(ValueError, match="unknown bespoke variant 'rk4'"):
        BespokeSolver(4, "rk4")
    for nfe in (0, 1, 3):
        with pytest.raises(ValueError, match="even NFE >= 2"):
            BespokeSolver(nfe, "rk2")
    assert BespokeSolver(2, "rk2").n == 1  # the smallest RK2 solver: one midpoint step
    rk2 = BespokeSolver(4, "rk2", t_max=0.9, t_end=0.1)
    assert torch.exp(rk2.log_tdot).tolist() == pytest.approx([0.8] * 4)  # dt/dr of the uniform grid at start
    solver = BespokeSolver(4, "ns", t_max=0.9, t_end=0.1)
    assert solver.times().tolist() == pytest.approx([0.9, 0.7, 0.5, 0.3, 0.1])  # uniform at start
    with torch.no_grad():
        solver.a.add_(0.25)
    path = solver.save(tmp_path / "new" / "deeper" / "s.json", iteration=7)  # folders made as needed
    back = load_bespoke(path)
    assert (back.variant, back.nfe, back.t_max, back.t_end) == ("ns", 4, 0.9, 0.1)
    x = torch.tensor([[1.0], [2.0]], dtype=F64)
    torch.testing.assert_close(bespoke_solve(_Linear1D(0.5), x, path), back(_Linear1D(0.5), x))
    old = json.loads(path.read_text())
    del old["t_end"]  # files written before t_end existed end at the data
    (tmp_path / "old.json").write_text(json.dumps(old))
    assert load_bespoke(tmp_path / "old.json").t_end == 0.0
    torch.testing.assert_close(back.a, solver.a.detach())
    assert not any(p.requires_grad for p in back.parameters())
    bad = tmp_path / "bad.json"
    bad.write_text('{"kind": "student"}')
    with pytest.raises(ValueError, match="not a bespoke solver file"):
        load_bespoke(bad)
    with pytest.raises(ValueError, match="cannot read bespoke solver"):
        load_bespoke(tmp_path / "missing.json")
