"""The fast-sampler trainers of distill/: fixed points of their losses against exact answers, training,
saving / reloading, resuming, and a two-process accelerate run."""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from benchmarks.reference_ode import reference_solve
from priorkit.distill.core.denoiser import Denoiser
from priorkit.distill.core.gmm import GaussianMixture
from priorkit.distill.core.samplers.ddim import ddim_next
from priorkit.distill.core.schedule import FlowMatching, VPCosine, broadcast_to
from priorkit.distill.core.training import TrainConfig
from priorkit.distill.students import consistency as cm
from priorkit.distill.students import guidance_distill as gd
from priorkit.distill.students import progressive as pd
from priorkit.distill.students import reflow as rf
from priorkit.distill.students import shortcut as sc
from priorkit.distill.students.format import load_student, save_student, unet_student_from_teacher, with_extras
from priorkit.distill.zoo.toy import (
    MLPDenoiser,
    conditional_gmm_target,
    exact_w2,
    gmm_target,
    sample_target,
    sliced_w2,
    target_data,
    train_teacher,
)

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[1]


def small_gmm(schedule=None) -> GaussianMixture:
    means = torch.tensor([[-1.5, 0.0], [1.0, 1.0], [0.5, -1.2]], dtype=torch.float64)
    cov = torch.tensor([[0.10, 0.05], [0.05, 0.08], [0.2, 0.1]], dtype=torch.float64)
    return GaussianMixture(torch.tensor([0.3, 0.5, 0.2], dtype=torch.float64), means, cov,
                           schedule=schedule or FlowMatching())


def quick(steps: int, **kw) -> TrainConfig:
    return TrainConfig(**{"steps": steps, "lr": 2e-3, "warmup": 5, "ema_decay": 0.9, "checkpoint_every": 10_000,
                          "log_every": max(1, steps // 4), **kw})


def small_mlp(**kw) -> MLPDenoiser:
    torch.manual_seed(0)
    return MLPDenoiser(hidden=32, depth=2, embed_dim=16, **kw)


# ---- exact models used as fixed points -----------------------------------------------------------
class FlowMap(Denoiser):
    """x0 = the exact ODE endpoint of ``den`` from (x, t) (a reference solve per sample): a consistency function."""

    def __init__(self, den: Denoiser) -> None:
        super().__init__()
        self.den, self.schedule, self.sample_shape = den, den.schedule, den.sample_shape

    def predict_native(self, x, t, cond=None):
        t = t.reshape(-1).expand(x.shape[0])
        rows = [reference_solve(self.den, x[i:i + 1].double(), float(t[i]), rtol=1e-9, atol=1e-9)
                for i in range(x.shape[0])]
        return "x0", torch.cat(rows).to(x.dtype)


class GaussianShortcut(Denoiser):
    """Exact average velocity s(x, t, d) = (x - Phi_{t -> t-d}(x)) / d of data N(mu, s^2 I); d = 0: the velocity.

    Every trajectory keeps (x_t - alpha_t mu) / std_t fixed, std_t = sqrt(alpha_t^2 s^2 + sigma_t^2).
    """

    def __init__(self, mu: torch.Tensor, s: float, schedule) -> None:
        super().__init__()
        self.mu, self.s, self.schedule, self.sample_shape = mu, s, schedule, (mu.shape[0],)

    def _std(self, t):
        return torch.sqrt(self.schedule.alpha(t) ** 2 * self.s**2 + self.schedule.sigma(t) ** 2)

    def predict_native(self, x, t, cond=None):
        sch = self.schedule
        t = t.double().reshape(-1).expand(x.shape[0])
        d = torch.as_tensor(cond["d"], dtype=torch.float64).reshape(-1).expand(x.shape[0])
        a, std = broadcast_to(sch.alpha(t), x), broadcast_to(self._std(t), x)
        xi = (x - a * self.mu) / std
        da, ds = broadcast_to(sch.d_alpha(t), x), broadcast_to(sch.d_sigma(t), x)
        dstd = (a * da * self.s**2 + broadcast_to(sch.sigma(t), x) * ds) / std
        inst = da * self.mu + dstd * xi
        t2 = (t - d).clamp_min(0.0)
        end = broadcast_to(sch.alpha(t2), x) * self.mu + broadcast_to(self._std(t2), x) * xi
        dd = broadcast_to(d, x)
        avg = torch.where(dd > 0, (x - end) / torch.where(dd > 0, dd, torch.ones_like(dd)), inst)
        return "velocity", avg


# ---- consistency models --------------------------------------------------------------------------
@pytest.mark.parametrize("schedule", [FlowMatching(), VPCosine()], ids=["flow", "vp_cosine"])
def test_consistency_parameterisation_boundary_and_teacher_start(schedule):
    net = small_mlp(schedule=schedule, kind="v").double()
    x = torch.randn(6, 2, dtype=torch.float64)
    model = cm.ConsistencyModel(net, sigma_data=0.7, sigma_min=0.002)
    t_lo = cm.ratio_to_time(schedule, torch.tensor(0.002, dtype=torch.float64))
    c_skip, c_out = model.coefficients(torch.tensor([0.002], dtype=torch.float64))
    assert float(c_skip) == 1.0 and float(c_out) == 0.0
    f = model(x, t_lo, check=False).x0
    torch.testing.assert_close(f, x / schedule.alpha(t_lo), rtol=1e-9, atol=1e-9)   # f(x, t_min) = x / alpha
    plain = cm.ConsistencyModel(net, sigma_data=0.7, sigma_min=0.0)               # r_min = 0: the backbone's x0
    t = torch.tensor([0.1, 0.3, 0.5, 0.7, 0.9, schedule.t_max], dtype=torch.float64)
    torch.testing.assert_close(plain(x, t, check=False).x0, net(x, t, check=False).x0, rtol=1e-9, atol=1e-9)
    assert torch.isfinite(model(x, torch.tensor(schedule.t_max, dtype=torch.float64), check=False).x0).all()


def test_cd_loss_vanishes_at_the_exact_flow_map():
    gmm = small_gmm()
    exact = FlowMap(gmm)
    times = cm.karras_times(gmm.schedule, 40, 0.002, 80.0)
    g = torch.Generator().manual_seed(0)
    x0 = gmm.sample(3, g)
    eps = torch.randn(3, 2, generator=g, dtype=torch.float64)
    i = torch.tensor([3, 15, 30])
    args = (x0, eps, times[i + 1], times[i])
    for solver in ("heun", "dpm2"):  # the loss is the teacher step's local error: third order, ~1e-8 here
        loss_exact = cm.consistency_loss(exact, exact, *args, teacher=gmm, solver=solver)
        loss_tweedie = cm.consistency_loss(gmm, gmm, *args, teacher=gmm, solver=solver)  # E[x0|x_t]: not consistent
        assert float(loss_exact) < 1e-7 and float(loss_exact) < 1e-3 * float(loss_tweedie)


def test_ct_n_schedule_and_teacher_steps():
    assert cm.ct_steps(0, 1000, 2, 150) == 2 and cm.ct_steps(1000, 1000, 2, 150) == 151
    assert math.isclose(cm.ct_mu(3, 2, 0.9), 0.9 ** (2 / 3))
    gmm = small_gmm(VPCosine())
    x = torch.randn(5, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([0.5, 0.6, 0.3, 0.5, 0.8], dtype=torch.float64)  # per-sample times
    errors = {}
    for h in (0.04, 0.02):
        fine = x
        for k in range(400):  # a fine Heun solve as the reference for one coarse step
            fine = cm.teacher_step(gmm, fine, t - h * k / 400, t - h * (k + 1) / 400, "heun")
        for solver in cm.SOLVERS:
            errors.setdefault(solver, []).append(float((cm.teacher_step(gmm, x, t, t - h, solver) - fine).abs().max()))
    for solver, (e1, e2) in errors.items():  # local error O(h^3) for Heun / DPM-Solver-2, O(h^2) for DDIM / Euler
        assert (e1 / e2 > 6.5) if solver in ("heun", "dpm2") else (3.0 < e1 / e2 < 6.0), (solver, e1, e2)


# ---- shortcut models -----------------------------------------------------------------------------
@pytest.mark.parametrize("schedule", [FlowMatching(), VPCosine()], ids=["flow", "vp_cosine"])
def test_shortcut_self_consistency_vanishes_for_the_exact_flow_map(schedule):
    mu, s = torch.tensor([0.7, -0.3], dtype=torch.float64), 0.6
    model = GaussianShortcut(mu, s, schedule)
    one = GaussianMixture(torch.ones(1, dtype=torch.float64), mu[None], torch.full((1, 2), s * s, dtype=torch.float64),
                          schedule=schedule)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(8, 2, generator=g, dtype=torch.float64)
    t = torch.linspace(0.2, 0.9, 8, dtype=torch.float64)
    torch.testing.assert_close(model(x, t, {"d": 0.0}, check=False).velocity, one(x, t, check=False).velocity)
    d_min = schedule.t_max / 128
    d = torch.tensor([0.1, 0.2, 0.05, 0.15, 0.1, 0.2, 2 * d_min, 0.125], dtype=torch.float64)
    target = sc.self_consistency_target(model, x, t, d, d_min=1e-9, cond={})
    torch.testing.assert_close(target, model(x, t, {"d": d}, check=False).velocity, rtol=1e-10, atol=1e-10)
    x0 = one.sample(8, g)
    eps = torch.randn(8, 2, generator=g, dtype=torch.float64)
    loss = sc.shortcut_loss(model, model, x0, eps, t, d, 8, d_min=1e-9)
    assert float(loss) < 1e-20
    # a student that ignores d fails self-consistency
    loss_inst = sc.shortcut_loss(lambda x_, t_, c, check=False: model(x_, t_, {"d": 0.0}, check=False), model,
                                 x0, eps, t, d, 8, d_min=1e-9)
    assert float(loss_inst) > 1e-4


def test_shortcut_step_sizes():
    s = FlowMatching()
    assert sc.step_size(s, 1) == 1.0 and sc.step_size(s, 4) == 0.25 and sc.step_size(s, 128) == 0.0
    h = sc.half_query(torch.tensor([1.0, 2 / 128, 4 / 128], dtype=torch.float64), 1 / 128)
    assert h.tolist() == [0.5, 0.0, 2 / 128]


# ---- progressive distillation --------------------------------------------------------------------
@pytest.mark.parametrize("schedule", [FlowMatching(), VPCosine()], ids=["flow", "vp_cosine"])
def test_progressive_target_is_the_two_step_map(schedule):
    gmm = small_gmm(schedule)
    g = torch.Generator().manual_seed(2)
    x0 = gmm.sample(7, g)
    eps = torch.randn(7, 2, generator=g, dtype=torch.float64)
    grid = pd.teacher_grid(schedule, 8)
    i = torch.tensor([0, 1, 2, 3, 1, 2, 3])  # student steps on the 4-step sub-grid, teacher on the 8-step one
    t, t_mid, t_next = grid[2 * i], grid[2 * i + 1], grid[2 * i + 2]
    z_t = broadcast_to(schedule.alpha(t), x0) * x0 + broadcast_to(schedule.sigma(t), x0) * eps
    x_tilde = pd.progressive_target(gmm, z_t, t, t_mid, t_next)
    two = ddim_next(gmm(ddim_next(gmm(z_t, t), t_mid), t_mid), t_next)

    class TwoStep(Denoiser):  # the student whose one DDIM step is the teacher's two
        schedule, sample_shape = gmm.schedule, (2,)

        def predict_native(self, x, tt, cond=None):
            return "x0", pd.progressive_target(gmm, x, tt.double(), t_mid, t_next)

    student = TwoStep()
    torch.testing.assert_close(ddim_next(student(z_t, t), t_next), two, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(x_tilde, student(z_t, t).x0)
    assert float(pd.progressive_loss(student, gmm, x0, eps, t, t_mid, t_next)) < 1e-20
    assert float(pd.progressive_loss(gmm, gmm, x0, eps, t, t_mid, t_next)) > 1e-6  # the teacher is not its own 2-step


def test_student_grid_nests():
    s = FlowMatching()
    fine = pd.teacher_grid(s, 8)
    assert pd.student_grid(s, 2, 8).tolist() == fine[::4].tolist() and fine[0] == 1.0 and fine[-1] == 0.0
    with pytest.raises(ValueError):
        pd.teacher_grid(s, 6)


# ---- guidance distillation and reflow ------------------------------------------------------------
def test_guidance_loss_vanishes_for_the_guided_teacher():
    teacher = conditional_gmm_target()

    class Guided(Denoiser):  # the exact w-conditioned model
        schedule, sample_shape, condition_key = teacher.schedule, (2,), "class"

        def predict_native(self, x, t, cond=None):
            return "x0", teacher.guided(x, t, cond["class"], torch.as_tensor(cond["w"]).to(x), check=False).x0

    g = torch.Generator().manual_seed(3)
    x0, labels = sample_target("gmm", 16, g, labels=True)
    x0 = x0.double()
    eps = torch.randn(16, 2, generator=g, dtype=torch.float64)
    t = torch.rand(16, generator=g, dtype=torch.float64) * 0.9 + 0.05
    w = 1 + 3 * torch.rand(16, generator=g, dtype=torch.float64)
    assert float(gd.guidance_loss(Guided(), teacher, x0, eps, t, labels, w)) < 1e-20
    # guidance changes the prediction: the unguided conditional model is not a fixed point
    plain = GuidedAt1(teacher)
    assert float(gd.guidance_loss(plain, teacher, x0, eps, t, labels, w)) > 1e-4


class GuidedAt1(Denoiser):
    condition_key = "class"

    def __init__(self, teacher):
        super().__init__()
        self.teacher, self.schedule, self.sample_shape = teacher, teacher.schedule, (2,)

    def predict_native(self, x, t, cond=None):
        return "x0", self.teacher(x, t, cond["class"], check=False).x0


def test_class_conditional_gmm_is_exact_per_class():
    teacher = conditional_gmm_target()
    x = torch.randn(10, 2, dtype=torch.float64)
    t = torch.tensor(0.4, dtype=torch.float64)
    labels = torch.tensor([0, 1] * 5)
    out = teacher(x, t, labels).x0
    torch.testing.assert_close(out[labels == 0], teacher.parts[0](x[labels == 0], t).x0)
    torch.testing.assert_close(teacher(x, t, torch.full((10,), -1)).x0, teacher.full(x, t).x0)


def test_reflow_loss_vanishes_on_straight_couplings():
    # Gaussian data N(mu, s^2): the ODE couples z with x0 = mu + s z; the straight field v = (1 - s) z - mu
    # (z recovered from x_t = (1 - t) mu + ((1 - t) s + t) z) is the rectified flow of that coupling
    mu, s = torch.tensor([1.0, -0.5], dtype=torch.float64), 0.4

    class Straight(Denoiser):
        schedule, sample_shape, kind = FlowMatching(), (2,), "velocity"

        def predict_native(self, x, t, cond=None):
            tt = broadcast_to(t.double().reshape(-1).expand(x.shape[0]), x)
            z = (x - (1 - tt) * mu) / ((1 - tt) * s + tt)
            return "velocity", (1 - s) * z - mu

    g = torch.Generator().manual_seed(4)
    z = torch.randn(32, 2, generator=g, dtype=torch.float64)
    x0 = mu + s * z
    t = torch.rand(32, generator=g, dtype=torch.float64)
    assert float(rf.reflow_loss(Straight(), x0, z, t)) < 1e-20
    one = GaussianMixture(torch.ones(1, dtype=torch.float64), mu[None], torch.full((1, 2), s * s, dtype=torch.float64))
    teacher = _Kinded(one)
    assert float(rf.reflow_loss(teacher, x0, z, t)) > 1e-3  # the curved teacher flow is not straight
    torch.testing.assert_close(rf.reflow_sample(Straight(), z, 1), x0)  # one Euler step is exact


class _Kinded(Denoiser):
    def __init__(self, inner):
        super().__init__()
        self.inner, self.schedule, self.sample_shape, self.kind = inner, inner.schedule, (2,), "velocity"

    def predict_native(self, x, t, cond=None):
        return "velocity", self.inner(x, t, cond, check=False).velocity


# ---- training, saving, resuming ------------------------------------------------------------------
def _run(method: str, out: Path, steps: int, resume: bool = False, data=None):
    gmm = gmm_target().float()
    data = data or target_data("gmm")
    if method == "cd":
        cfg = cm.ConsistencyConfig(sigma_data=1.0, n_steps=10, batch=128, train=quick(steps))
        return cm.consistency_distill(gmm, small_mlp(kind="x0"), data, out, cfg, resume=resume)
    if method == "ct":
        cfg = cm.ConsistencyConfig(sigma_data=1.0, s1=20, batch=128, train=quick(steps))
        return cm.consistency_training(small_mlp(kind="x0"), data, out, cfg, resume=resume)
    if method == "shortcut":
        cfg = sc.ShortcutConfig(batch=128, target_decay=0.5, train=quick(steps))
        return sc.shortcut_train(small_mlp(extras=("d",)), data, out, cfg, teacher=gmm, resume=resume)
    if method == "progressive":
        cfg = pd.ProgressiveConfig(start_steps=4, end_steps=2, batch=128, train=quick(steps))
        return pd.progressive_distill(gmm, small_mlp(), data, out, cfg, resume=resume)
    if method == "reflow":
        cfg = rf.ReflowConfig(pairs=512, teacher_steps=8, chunk=512, batch=128, train=quick(steps))
        return rf.reflow(gmm, small_mlp(), out, cfg, resume=resume)
    if method == "guidance":
        cfg = gd.GuidanceDistillConfig(batch=128, stage1=quick(steps), stage2=None)
        return gd.guidance_distill(conditional_gmm_target().float(), small_mlp(extras=("w",), num_classes=2),
                                   target_data("gmm", conditional=True), out, cfg, resume=resume)
    raise ValueError(method)


def _log(out: Path) -> list[dict]:
    import json

    for path in (out / "checkpoint", out / "steps_2" / "checkpoint", out / "round_1" / "checkpoint",
                 out / "stage1" / "checkpoint"):
        if (path / "state.json").is_file():
            return json.loads((path / "state.json").read_text())["log"]
    raise FileNotFoundError(out)


@pytest.mark.parametrize("method", ["cd", "ct", "shortcut", "progressive", "reflow", "guidance"])
def test_short_training_lowers_the_loss(method, tmp_path):
    student = _run(method, tmp_path, 60)
    log = _log(tmp_path)
    assert log[-1]["loss"] < log[0]["loss"], log
    reloaded = load_student(next(p for p in sorted(tmp_path.rglob("student")) if p.is_dir()))
    assert type(reloaded).__name__ == type(student).__name__


def test_resume_continues_exactly(tmp_path):
    calls = {"n": 0}
    base = target_data("gmm")

    def crashing(n, g):
        calls["n"] += 1
        if calls["n"] > 20:
            raise KeyboardInterrupt  # killed after the step-20 checkpoint
        return base(n, g)

    cfg = cm.ConsistencyConfig(sigma_data=1.0, n_steps=10, batch=64, train=quick(40, checkpoint_every=20))
    gmm = gmm_target().float()
    with pytest.raises(KeyboardInterrupt):
        cm.consistency_distill(gmm, small_mlp(kind="x0"), crashing, tmp_path / "a", cfg)
    resumed = cm.consistency_distill(gmm, small_mlp(kind="x0"), base, tmp_path / "a", cfg, resume=True)
    whole = cm.consistency_distill(gmm, small_mlp(kind="x0"), base, tmp_path / "b", cfg)
    sa, sb = resumed.state_dict(), whole.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_saved_students_reload_bit_identically(tmp_path):
    x = torch.randn(5, 2)
    t = torch.rand(5)
    students = {
        "mlp": (small_mlp(kind="v"), None),
        "shortcut": (small_mlp(extras=("d",)), {"d": 0.25}),
        "guided": (small_mlp(extras=("w",), num_classes=2, extra_defaults={"w": 2.0}),
                   {"class": torch.tensor([0, 1, -1, 0, 1])}),
        "consistency": (cm.ConsistencyModel(small_mlp(kind="x0", schedule=VPCosine()), 0.5, 0.002), None),
    }
    for name, (student, cond) in students.items():
        for p in student.parameters():
            p.data.add_(0.01 * torch.randn_like(p))
        folder = save_student(student, tmp_path / name, {"method": name})
        back = load_student(folder)
        assert type(back) is type(student)
        sa, sb = student.state_dict(), back.state_dict()
        assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
        assert torch.equal(student(x, t, cond).x0, back(x, t, cond).x0)
        assert back.schedule.config() == student.schedule.config()


# ---- UNet students -------------------------------------------------------------------------------
def tiny_teacher():
    from diffusers import UNet2DConditionModel

    from priorkit.distill.core.diffusers_adapter import DiffusersDenoiser

    torch.manual_seed(0)
    unet = UNet2DConditionModel(sample_size=8, in_channels=3, out_channels=3, layers_per_block=1,
                                block_out_channels=(8, 16), down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=16,
                                attention_head_dim=4, norm_num_groups=4)
    config = {"_class_name": "DDPMScheduler", "num_train_timesteps": 1000, "beta_schedule": "squaredcos_cap_v2",
              "prediction_type": "v_prediction"}
    return DiffusersDenoiser(unet.eval(), config)


def test_unet_student_starts_as_the_teacher_trains_and_reloads(tmp_path):
    teacher = tiny_teacher()
    student = unet_student_from_teacher(teacher, ("d",))
    assert student.unet.config.class_embed_type == "projection"
    g = torch.Generator().manual_seed(5)
    x = torch.randn(3, 3, 8, 8, generator=g)
    states = torch.randn(3, 4, 16, generator=g)
    t = torch.tensor([0.2, 0.5, 0.9])
    with torch.no_grad():
        ref = teacher(x, t, states).x0
        for d in (0.0, 0.25, 1.0):
            assert torch.equal(student(x, t, {"text": states, "d": d}).x0, ref)
    images = torch.randn(16, 3, 8, 8, generator=g)
    conds = torch.randn(16, 4, 16, generator=g)

    def data(n, gen):
        i = torch.randint(0, 16, (n,), generator=gen)
        return images[i], conds[i]

    cfg = sc.ShortcutConfig(batch=4, train=quick(3))
    trained = sc.shortcut_train(student, data, tmp_path / "sc", cfg, teacher=teacher)
    with torch.no_grad():
        out = trained(x, t, {"text": states, "d": 0.5}).x0
    assert not torch.equal(out, ref)  # training moved the d embedding away from zero
    back = load_student(tmp_path / "sc" / "student")
    with torch.no_grad():
        assert torch.equal(back(x, t, {"text": states, "d": 0.5}).x0, out)
    sample = sc.shortcut_sample(back, torch.randn(2, 3, 8, 8), 2, cond=states[:2])
    assert sample.shape == (2, 3, 8, 8) and torch.isfinite(sample).all()
    assert with_extras(back, states, d=0.5)["text"] is states


# ---- toy targets and metrics ---------------------------------------------------------------------
def test_metrics_on_known_shifts():
    g = torch.Generator().manual_seed(6)
    x = torch.randn(4000, 2, generator=g)
    shift = torch.tensor([0.3, -0.4])
    assert sliced_w2(x, x) == 0.0
    # uniform directions in 2D: E (theta . delta)^2 = |delta|^2 / 2
    assert abs(sliced_w2(x, x + shift, projections=1024) - 0.5 / math.sqrt(2)) < 0.01
    assert abs(exact_w2(x[:500], x[:500] + shift, n=500) - 0.5) < 1e-6
    for name in ("gmm", "moons", "checkerboard"):
        a = sample_target(name, 3000, torch.Generator().manual_seed(1))
        assert a.shape == (3000, 2) and torch.isfinite(a).all()
    board = sample_target("checkerboard", 2000, g)
    cells = torch.floor(board + 2).long()
    assert bool(((cells[:, 0] + cells[:, 1]) % 2 == 0).all())  # every sample on a "black" square


def test_held_out_mixture_sets_are_fixed_and_disjoint():
    """The held-out sets of issue 20 stay what they were when fixed (a silent change would re-tune on them)."""
    from priorkit.distill.zoo.toy import FAMILY_SETS, GMM_FAMILY

    assert FAMILY_SETS == {"family": ("ring5", "ring12", "ring16", "grid9"), "family2": ("ring8w", "ring20", "grid16")}
    assert GMM_FAMILY == {
        "ring5": {"components": 5, "radius": 1.5, "std": 0.3}, "ring12": {"components": 12, "radius": 3.0, "std": 0.1},
        "ring16": {"components": 16, "radius": 4.0, "std": 0.05}, "grid9": {"grid": 3, "radius": 2.0, "std": 0.15},
        "ring8w": {"components": 8, "radius": 2.0, "std": 0.25},
        "ring20": {"components": 20, "radius": 5.0, "std": 0.06}, "grid16": {"grid": 4, "radius": 1.5, "std": 0.1}}
    assert not set(FAMILY_SETS["family"]) & set(FAMILY_SETS["family2"])
    means = gmm_target(**GMM_FAMILY["grid16"]).means
    assert means.shape == (16, 2) and torch.allclose(means.unique(), torch.tensor([-2.25, -0.75, 0.75, 2.25],
                                                                                   dtype=means.dtype))


def test_train_teacher_runs(tmp_path):
    teacher = train_teacher("moons", 20, out=tmp_path)
    assert not any(p.requires_grad for p in teacher.parameters())
    assert (tmp_path / "checkpoint" / "state.safetensors").is_file()


# ---- distributed ---------------------------------------------------------------------------------
def test_two_process_accelerate_run(tmp_path):
    script = tmp_path / "run.py"
    script.write_text(textwrap.dedent(f"""
        import sys, torch
        sys.path.insert(0, {str(ROOT)!r})
        torch.set_num_threads(1)
        from priorkit.distill.students import shortcut as sc
        from priorkit.distill.zoo.toy import MLPDenoiser, gmm_target, target_data
        from priorkit.distill.core.training import TrainConfig
        torch.manual_seed(0)
        student = MLPDenoiser(hidden=32, depth=2, embed_dim=16, extras=("d",))
        cfg = sc.ShortcutConfig(batch=64, train=TrainConfig(steps=4, warmup=1, checkpoint_every=2, log_every=1))
        out = sc.shortcut_train(student, target_data("gmm"), {str(tmp_path / 'out')!r}, cfg,
                                teacher=gmm_target().float())
        print("RANK", torch.distributed.get_rank(), "WORLD", torch.distributed.get_world_size(),
              float(sum(p.sum() for p in out.parameters())))
    """))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    start = time.time()
    # accelerate's own launcher needs mpirun for several CPU processes; torchrun sets the same environment
    # (RANK, WORLD_SIZE, MASTER_ADDR) and Accelerator joins a gloo process group from it
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           str(script)],
                          capture_output=True, text=True, timeout=300, env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # each rank's line, wherever it sits (another process's unterminated output may precede it on the pipe)
    lines = re.findall(r"RANK (\d+) WORLD (\d+) (\S+)", proc.stdout)
    assert sorted(r for r, _, _ in lines) == ["0", "1"] and all(w == "2" for _, w, _ in lines), (
        proc.stdout[-2000:], proc.stderr[-2000:])
    assert len({total for _, _, total in lines}) == 1  # gradients were averaged: both ranks hold one model
    assert (tmp_path / "out" / "student" / "student.safetensors").is_file()
    print(f"two-process run: {time.time() - start:.1f}s")
