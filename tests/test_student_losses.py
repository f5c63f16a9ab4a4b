"""The students' losses by value, one call each on a tiny analytic model (milliseconds; the trainings that reach the
targets are in tests/test_exact_students.py): what is noised, at which time, against which target, weighted how."""

from __future__ import annotations

import math

import pytest
import torch

from priorkit.distill.core.denoiser import Denoiser
from priorkit.distill.core.schedule import FlowMatching, VPCosine, add_noise
from priorkit.distill.students.consistency import consistency_loss, distance
from priorkit.distill.students.guidance_distill import guidance_loss
from priorkit.distill.students.reflow import one_step_loss, reflow_loss

F64 = torch.float64


class _Linear(Denoiser):
    """kind-native output  a * x_t + b * t + c * cond  (cond (B, 2) or None): every input shows in the answer."""

    def __init__(self, kind: str, schedule, a: float = 0.7, b: float = 0.3, c: float = 0.5) -> None:
        super().__init__()
        self.kind, self.schedule, self.sample_shape = kind, schedule, (2,)
        self.a, self.b, self.c = a, b, c
        self.conditional = True

    def null_condition(self, cond):
        return torch.zeros_like(cond)

    def predict_native(self, x, t, cond=None):
        tt = t.reshape(-1, 1) if t.ndim == 1 else t
        out = self.a * x + self.b * tt
        return self.kind, out if cond is None else out + self.c * cond.to(x)


def _batch(seed: int = 0, n: int = 4):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 2, generator=g, dtype=F64), torch.randn(n, 2, generator=g, dtype=F64)


@pytest.mark.parametrize("kind, schedule", [("eps", VPCosine()), ("x0", VPCosine()), ("velocity", FlowMatching()),
                                            ("v", VPCosine())])
def test_reflow_loss_is_the_mse_to_the_couplings_target_in_the_students_kind(kind, schedule):
    student = _Linear(kind, schedule)
    x0, z = _batch()
    t = torch.tensor([0.1, 0.4, 0.6, 0.9], dtype=F64)
    x_t = add_noise(schedule, x0, t, z)
    pred = student.a * x_t + student.b * t[:, None]
    a, s = schedule.alpha(t)[:, None], schedule.sigma(t)[:, None]
    target = {"eps": z, "x0": x0, "velocity": -x0 + z, "v": a * z - s * x0}[kind]
    want = (pred - target).pow(2).mean()
    assert float(reflow_loss(student, x0, z, t)) == pytest.approx(float(want), rel=1e-10)
    # another schedule given explicitly is the one that noises
    other = FlowMatching() if isinstance(schedule, VPCosine) else VPCosine()
    assert float(reflow_loss(student, x0, z, t, schedule=other)) != pytest.approx(float(want), rel=1e-6)
    cond = torch.ones(4, 2, dtype=F64)
    with_cond = (pred + student.c * cond - target).pow(2).mean()
    assert float(reflow_loss(student, x0, z, t, cond)) == pytest.approx(float(with_cond), rel=1e-10)


def test_one_step_loss_maps_the_noise_end_to_the_couplings_data():
    schedule = FlowMatching()
    student = _Linear("x0", schedule)
    x0, z = _batch(1)
    t_max = schedule.t_max
    x_t = (1 - t_max) * x0 + t_max * z
    want = (student.a * x_t + student.b * t_max - x0).pow(2).mean()
    assert float(one_step_loss(student, x0, z)) == pytest.approx(float(want), rel=1e-10)


def test_consistency_distance_l2_and_pseudo_huber():
    a, b = torch.zeros(2, 3, 4, dtype=F64), torch.ones(2, 3, 4, dtype=F64)
    b[1] = 2.0
    torch.testing.assert_close(distance(a, b), torch.tensor([1.0, 4.0], dtype=F64))
    c = 0.00054 * math.sqrt(12)
    torch.testing.assert_close(distance(a, b, "pseudo_huber"),
                               torch.tensor([math.sqrt(12 + c * c) - c, math.sqrt(48 + c * c) - c], dtype=F64))
    with pytest.raises(ValueError, match="unknown metric 'l1'"):
        distance(a, b, "l1")


def test_consistency_training_loss_compares_the_online_model_at_t_hi_with_the_target_at_t_lo():
    schedule = VPCosine()
    online, target = _Linear("x0", schedule, a=0.7), _Linear("x0", schedule, a=0.4, b=-0.2)
    x0, eps = _batch(2)
    t_hi = torch.tensor([0.5, 0.6, 0.7, 0.8], dtype=F64)
    t_lo = t_hi - 0.1
    w = torch.tensor([1.0, 2.0, 0.5, 0.0], dtype=F64)
    x_hi, x_lo = add_noise(schedule, x0, t_hi, eps), add_noise(schedule, x0, t_lo, eps)  # CT: the same eps
    f_hi = 0.7 * x_hi + 0.3 * t_hi[:, None]
    f_lo = 0.4 * x_lo - 0.2 * t_lo[:, None]
    d = (f_hi - f_lo).pow(2).mean(1)
    assert float(consistency_loss(online, target, x0, eps, t_hi, t_lo)) == pytest.approx(float(d.mean()), rel=1e-10)
    assert float(consistency_loss(online, target, x0, eps, t_hi, t_lo, weight=w)) == pytest.approx(
        float((w * d).mean()), rel=1e-10)
    got = consistency_loss(online, target, x0, eps, t_hi, t_lo, metric="pseudo_huber")
    assert float(got) == pytest.approx(float(distance(f_hi, f_lo, "pseudo_huber").mean()), rel=1e-10)
    # only the online branch carries a gradient (the target's side is under no_grad)
    x0r = x0.clone().requires_grad_(True)
    loss = consistency_loss(online, target, x0r, eps, t_hi, t_lo)
    (g,) = torch.autograd.grad(loss, x0r)
    a_hi = schedule.alpha(t_hi)[:, None]
    torch.testing.assert_close(g, 2 * (f_hi - f_lo) * 0.7 * a_hi / (4 * 2))


def test_consistency_distillation_takes_the_teachers_step_from_x_hi():
    from priorkit.distill.students.consistency import teacher_step

    schedule = VPCosine()
    online, target, teacher = (_Linear("x0", schedule, a=a) for a in (0.7, 0.4, 0.9))
    x0, eps = _batch(3)
    t_hi = torch.tensor([0.5, 0.6, 0.7, 0.8], dtype=F64)
    t_lo = t_hi - 0.1
    x_hi = add_noise(schedule, x0, t_hi, eps)
    for solver in ("heun", "euler"):
        x_lo = teacher_step(teacher, x_hi, t_hi, t_lo, solver, None)
        f_lo = 0.4 * x_lo + 0.3 * t_lo[:, None]
        f_hi = 0.7 * x_hi + 0.3 * t_hi[:, None]
        want = (f_hi - f_lo).pow(2).mean(1).mean()
        got = consistency_loss(online, target, x0, eps, t_hi, t_lo, teacher=teacher, solver=solver)
        assert float(got) == pytest.approx(float(want), rel=1e-10)


def test_guidance_loss_matches_the_guided_teacher_in_the_students_kind():
    schedule = VPCosine()
    teacher = _Linear("eps", schedule, a=0.6, c=0.8)

    class _WStudent(_Linear):
        """Takes the guidance weight as an extra condition entry ("w")."""

        def predict_native(self, x, t, cond=None):
            tt = t.reshape(-1, 1)
            return self.kind, self.a * x + self.b * tt + self.c * cond["w"].to(x)[:, None] + 0.1 * cond["text"].to(x)

    student = _WStudent("x0", schedule, a=0.5, b=0.1, c=0.2)
    args = (*_batch(4), torch.full((4,), 0.5, dtype=F64), torch.ones(4, 2, dtype=F64), torch.ones(4, dtype=F64))
    assert float(guidance_loss(_Wrapped(student), teacher, *args)) == float(guidance_loss(student, teacher, *args))
    x0, eps = _batch(4)
    t = torch.tensor([0.2, 0.4, 0.6, 0.8], dtype=F64)
    cond = torch.ones(4, 2, dtype=F64)
    w = torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=F64)
    got = guidance_loss(student, teacher, x0, eps, t, cond, w)  # the student gets {"text": cond, "w": w}
    x_t = add_noise(schedule, x0, t, eps)
    guided_eps = teacher.guided(x_t, t, cond, w).eps
    a, s = schedule.alpha(t)[:, None], schedule.sigma(t)[:, None]
    goal_x0 = (x_t - s * guided_eps) / a
    pred = 0.5 * x_t + 0.1 * t[:, None] + 0.2 * w[:, None] + 0.1 * cond
    assert float(got) == pytest.approx(float((pred - goal_x0).pow(2).mean()), rel=1e-8)


class _Wrapped(torch.nn.Module):
    """A data-parallel style wrapper: the model under ``.module``, called through the wrapper."""

    def __init__(self, module) -> None:
        super().__init__()
        self.module = module

    def forward(self, *args, **kwargs):
        return self.module(*args, **kwargs)


class _NoKind(_Linear):
    """A student that does not declare its kind: the losses then work in x0."""

    def __init__(self, schedule) -> None:
        super().__init__("eps", schedule)
        del self.kind

    def predict_native(self, x, t, cond=None):
        out = 0.7 * x + 0.3 * t.reshape(-1, 1)
        return "eps", out if cond is None else out + 0.5 * cond.to(x)


def test_losses_see_through_a_wrapper_default_to_x0_and_pass_the_condition():
    schedule = VPCosine()
    x0, z = _batch(5)
    t = torch.tensor([0.1, 0.4, 0.6, 0.9], dtype=F64)
    cond = torch.tensor([[1.0, -1.0]] * 4, dtype=F64)
    # reflow: the wrapper's .module gives the schedule and kind; a student with no kind is trained in x0
    inner = _Linear("velocity", FlowMatching())
    assert float(reflow_loss(_Wrapped(inner), x0, z, t, cond)) == pytest.approx(
        float(reflow_loss(inner, x0, z, t, cond)), rel=1e-12)
    bare = _NoKind(schedule)
    x_t = add_noise(schedule, x0, t, z)
    eps_hat = 0.7 * x_t + 0.3 * t[:, None] + 0.5 * cond
    a, s = schedule.alpha(t)[:, None], schedule.sigma(t)[:, None]
    want = ((x_t - s * eps_hat) / a - x0).pow(2).mean()
    assert float(reflow_loss(bare, x0, z, t, cond)) == pytest.approx(float(want), rel=1e-10)
    # one-step: the condition reaches the student, the wrapper's schedule is used
    fm = _Linear("x0", FlowMatching())
    x_top = add_noise(FlowMatching(), x0, torch.full((4,), FlowMatching().t_max, dtype=F64), z)
    want1 = (0.7 * x_top + 0.3 * FlowMatching().t_max + 0.5 * cond - x0).pow(2).mean()
    assert float(one_step_loss(_Wrapped(fm), x0, z, cond)) == pytest.approx(float(want1), rel=1e-10)
    # consistency (CT and CD): the condition reaches online, target and teacher
    from priorkit.distill.students.consistency import teacher_step

    online, target, teacher = (_Linear("x0", schedule, a=a_) for a_ in (0.7, 0.4, 0.9))
    t_hi, t_lo = t.clamp_min(0.2), t.clamp_min(0.2) - 0.1
    x_hi = add_noise(schedule, x0, t_hi, z)
    x_lo = teacher_step(teacher, x_hi, t_hi, t_lo, "heun", cond)
    f_hi = 0.7 * x_hi + 0.3 * t_hi[:, None] + 0.5 * cond
    f_lo = 0.4 * x_lo + 0.3 * t_lo[:, None] + 0.5 * cond
    got = consistency_loss(online, target, x0, z, t_hi, t_lo, teacher=teacher, cond=cond)
    assert float(got) == pytest.approx(float((f_hi - f_lo).pow(2).mean(1).mean()), rel=1e-10)
    assert float(consistency_loss(online, target, x0, z, t_hi, t_lo, teacher=teacher)) != pytest.approx(
        float(got), rel=1e-6)  # without the condition every branch answers differently
    heun = consistency_loss(online, target, x0, z, t_hi, t_lo, teacher=teacher, cond=cond, solver="heun")
    default = consistency_loss(online, target, x0, z, t_hi, t_lo, teacher=teacher, cond=cond)
    assert float(default) == float(heun)


@pytest.mark.parametrize("kind", ["eps", None])
def test_guidance_loss_works_in_the_students_declared_kind_or_x0(kind):
    schedule = VPCosine()
    teacher = _Linear("eps", schedule, a=0.6, c=0.8)

    class _W(Denoiser):
        def __init__(self) -> None:
            super().__init__()
            self.schedule, self.sample_shape = schedule, (2,)
            if kind is not None:
                self.kind = kind

        def predict_native(self, x, t, cond=None):
            return (kind or "x0"), 0.5 * x + 0.2 * cond["w"].to(x)[:, None]

    x0, eps = _batch(6)
    t, w = torch.tensor([0.2, 0.4, 0.6, 0.8], dtype=F64), torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=F64)
    cond = torch.ones(4, 2, dtype=F64)
    x_t = add_noise(schedule, x0, t, eps)
    goal = teacher.guided(x_t, t, cond, w)
    out = 0.5 * x_t + 0.2 * w[:, None]
    want = (out - (goal.eps if kind == "eps" else goal.x0)).pow(2).mean()
    assert float(guidance_loss(_W(), teacher, x0, eps, t, cond, w)) == pytest.approx(float(want), rel=1e-8)
