"""The students' losses and trainers keep the samples' precision: float32 samples with float64 times or weights give
float32 results (the times' and weights' own dtype does not leak into them), the times a model is told are the
times its input was noised at, and float64 data get float64 noise. Each value is checked against the formula by
hand (the losses' full checks are in test_student_losses, test_student_pieces and test_dmd_values)."""

from __future__ import annotations

import torch

from priorkit.distill.core.prediction import Prediction
from priorkit.distill.core.schedule import FlowMatching, VPCosine
from priorkit.distill.core.training import TrainConfig
from priorkit.distill.students import consistency as cs
from priorkit.distill.students import dmd
from priorkit.distill.students import guidance_distill as gd
from priorkit.distill.students.progressive import progressive_loss, progressive_target
from priorkit.distill.students.reflow import one_step_loss
from priorkit.distill.zoo.toy import MLPDenoiser, conditional_gmm_target, gmm_target, target_data

F32, F64 = torch.float32, torch.float64


def _rand(*shape: int, seed: int, dtype: torch.dtype = F32) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def test_dmd_gradient_of_float32_samples_at_float64_times_is_float32_and_the_x0_difference_normalised():
    """DMD eqs. 7-8: grad = (x0_fake - x0_real) / mean|x - x0_real|, in the samples' dtype whatever the times'."""
    s = FlowMatching()
    real, fake = gmm_target(s).float(), gmm_target(s, radius=1.5).float()
    x, eps = _rand(4, 2, seed=0), _rand(4, 2, seed=1)
    t = torch.tensor([0.2, 0.4, 0.6, 0.8], dtype=F64)
    got = dmd.dmd_gradient(real, fake, x, t, eps)
    assert got.dtype == F32 and got.shape == (4, 2)
    t32 = t.float()[:, None]
    x_t = (1 - t32) * x + t32 * eps  # flow matching: alpha = 1 - t, sigma = t
    x0_real, x0_fake = real(x_t, t.float()).x0, fake(x_t, t.float()).x0
    want = (x0_fake - x0_real) / (x - x0_real).abs().mean(1, keepdim=True)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)
    assert want.abs().mean() > 0.05


def test_dmd_noise_levels_of_float32_samples_are_float32_times_in_the_configured_range():
    x = torch.zeros(6, 2)
    cfg = dmd.DMDConfig(t_lo=0.1, t_hi=0.7)
    t, eps = dmd._noise_level(x, cfg, torch.Generator().manual_seed(3))
    assert t.dtype == eps.dtype == F32
    g = torch.Generator().manual_seed(3)
    u = torch.rand(6, generator=g, dtype=F64)  # U(t_lo, t_hi) drawn in float64, then in the samples' precision
    assert torch.equal(t, (0.1 + 0.6 * u).float())
    assert torch.equal(eps, torch.randn(6, 2, generator=g))


class _ConstantGenerator(torch.nn.Module):
    """A generator whose x0 is a fixed tensor; records the input and time of every call."""

    def __init__(self, x0: torch.Tensor) -> None:
        super().__init__()
        self.schedule, self.x0, self.calls = FlowMatching(), x0, []

    def forward(self, x, t, cond=None, *, check=True):  # noqa: ANN001, ANN202
        self.calls.append((x.clone(), t.clone()))
        return Prediction(x0=self.x0.expand_as(x), eps=torch.zeros_like(x), x_t=x, t=t, schedule=self.schedule)


def test_dmd_backward_simulation_renoises_at_exactly_the_time_the_generator_is_then_told():
    """Step k's input is x = alpha(t_k) x0 + sigma(t_k) eps at the time t_k the generator receives (in the samples'
    float32): flow matching on the grid 1, 2/3, 1/3, whose inner times are not float32 numbers."""
    x0 = torch.tensor([[0.7, -1.3], [2.1, 0.4]])
    gen = _ConstantGenerator(x0)
    times = dmd.generator_times(FlowMatching(), 3)
    torch.testing.assert_close(times, torch.tensor([1.0, 2 / 3, 1 / 3], dtype=F64), rtol=0, atol=1e-15)
    dmd.generate(gen, torch.zeros(2, 2), times, last=2, generator_rng=torch.Generator().manual_seed(5))
    assert len(gen.calls) == 3
    g = torch.Generator().manual_seed(5)
    for k, (x_in, t_in) in enumerate(gen.calls):
        assert t_in.dtype == F32 and torch.equal(t_in, times[k].float().expand(2))
        if k == 0:
            continue
        eps = torch.randn(2, 2, generator=g)
        tk = t_in[:, None]
        assert torch.equal(x_in, (1 - tk) * x0 + tk * eps), k  # the same float32 operations: equal to the bit


def test_progressive_loss_of_float32_samples_is_float32():
    """mean_b max(SNR_t, 1) || x~ - x0_student ||^2 keeps the samples' float32 with float64 times."""
    teacher = gmm_target(VPCosine()).float()
    torch.manual_seed(0)
    student = MLPDenoiser(hidden=8, depth=2, schedule=VPCosine())
    x0, eps = _rand(5, 2, seed=2), _rand(5, 2, seed=3)
    t = torch.tensor([0.9, 0.7, 0.5, 0.3, 0.2], dtype=F64)
    t_mid, t_next = t - 0.05, t - 0.1
    got = progressive_loss(student, teacher, x0, eps, t, t_mid, t_next)
    assert got.dtype == F32
    s = teacher.schedule
    a, sg = s.alpha(t), s.sigma(t)
    z_t = (a[:, None] * x0.double() + sg[:, None] * eps.double()).float()
    target = progressive_target(teacher, z_t, t, t_mid, t_next)
    err = (student(z_t, t.float()).x0 - target).pow(2).mean(1).double()
    want = ((a / sg) ** 2).clamp_min(1.0) * err  # truncated SNR weight max(alpha^2 / sigma^2, 1)
    torch.testing.assert_close(got.double(), want.mean(), rtol=1e-5, atol=0)


def test_consistency_loss_of_float32_samples_with_float64_weights_is_float32():
    """mean_b lambda_b d(f_online(x_hi), f_target(x_lo)) (CT): float64 weights do not turn the loss into float64."""
    s = VPCosine()
    torch.manual_seed(0)
    online, target = MLPDenoiser(hidden=8, depth=2, schedule=s), MLPDenoiser(hidden=8, depth=2, schedule=s)
    x0, eps = _rand(4, 2, seed=4), _rand(4, 2, seed=5)
    t_hi, t_lo = torch.tensor([0.9, 0.6, 0.5, 0.3], dtype=F64), torch.tensor([0.8, 0.5, 0.3, 0.1], dtype=F64)
    weight = torch.tensor([1.0, 2.0, 0.5, 4.0], dtype=F64)
    got = cs.consistency_loss(online, target, x0, eps, t_hi, t_lo, weight=weight)
    assert got.dtype == F32

    def noised(t: torch.Tensor) -> torch.Tensor:
        return s.alpha(t).float()[:, None] * x0 + s.sigma(t).float()[:, None] * eps

    with torch.no_grad():
        d = (online(noised(t_hi), t_hi.float()).x0 - target(noised(t_lo), t_lo.float()).x0).pow(2).mean(1)
    torch.testing.assert_close(got.detach().double(), (weight * d.double()).mean(), rtol=1e-5, atol=0)


class _HalfX(torch.nn.Module):
    """x0_hat = x / 2; records the times it is told."""

    def __init__(self, schedule) -> None:  # noqa: ANN001
        super().__init__()
        self.schedule, self.times = schedule, []

    def forward(self, x, t, cond=None, *, check=True):  # noqa: ANN001, ANN202
        self.times.append(t.clone())
        return Prediction(x0=x / 2, eps=torch.zeros_like(x), x_t=x, t=t, schedule=self.schedule)


def test_one_step_loss_of_float64_pairs_is_computed_at_t_max_in_float64():
    """|| x0_hat(alpha x0 + sigma z, t_max) - x0 ||^2 with float64 pairs: the student is told t_max itself and the
    noising uses float64 alpha(t_max), sigma(t_max) (VP cosine: t_max = 0.9946 is not a float32 number)."""
    s = VPCosine()
    student = _HalfX(s)
    x0, z = _rand(3, 2, seed=6, dtype=F64), _rand(3, 2, seed=7, dtype=F64)
    got = one_step_loss(student, x0, z)
    (told,) = student.times
    assert told.dtype == F64 and told.tolist() == [s.t_max] * 3
    t_max = torch.tensor(s.t_max, dtype=F64)
    x_t = s.alpha(t_max) * x0 + s.sigma(t_max) * z
    torch.testing.assert_close(got, (x_t / 2 - x0).pow(2).mean(), rtol=1e-13, atol=0)


def _float64(data):  # noqa: ANN001, ANN202
    def wrapped(n, g):  # noqa: ANN001, ANN202
        x0, cond = data(n, g)
        return x0.double(), cond

    return wrapped


def _two_steps(model, loss_fn, cfg, out, **kw):  # noqa: ANN001, ANN202
    """A stand-in for the training loop: two loss calls with a generator seeded 0, nothing trained."""
    g = torch.Generator().manual_seed(0)
    for k in range(2):
        loss_fn(model, k, g)
    return model, [{"loss": 0.0}]


def test_consistency_training_draws_float64_noise_for_float64_data(tmp_path, monkeypatch):
    losses = []

    monkeypatch.setattr(cs, "train", _two_steps)
    monkeypatch.setattr(cs, "consistency_loss", lambda m, target, x0, eps, hi, lo, **kw: losses.append((x0, eps)) or 0)
    data = _float64(target_data("gmm"))
    cfg = cs.ConsistencyConfig(s0=4, s1=3, batch=16, train=TrainConfig(steps=2))  # N(k) = s0 = s1 + 1 = 4
    cs.consistency_training(MLPDenoiser(hidden=8, depth=2), data, tmp_path, cfg)
    g = torch.Generator().manual_seed(0)
    assert len(losses) == 2
    for x0, eps in losses:
        want_x0, _ = data(16, g)
        torch.randint(0, 3, (16,), generator=g)  # the indices n of the pairs (t_n, t_n+1) on the 4-point grid
        assert x0.dtype == eps.dtype == F64 and torch.equal(x0, want_x0)
        assert torch.equal(eps, torch.randn(16, 2, generator=g, dtype=F64))


def test_guidance_distillation_stage_one_draws_float64_noise_for_float64_data(tmp_path, monkeypatch):
    losses = []

    monkeypatch.setattr(gd, "train", _two_steps)
    monkeypatch.setattr(gd, "guidance_loss", lambda *a: losses.append(a) or torch.zeros(()))
    teacher = conditional_gmm_target().float()
    student = MLPDenoiser(hidden=8, depth=2, extras=("w",), num_classes=8)
    data = _float64(target_data("gmm", conditional=True))
    cfg = gd.GuidanceDistillConfig(batch=16, stage1=TrainConfig(steps=2), stage2=None)
    gd.guidance_distill(teacher, student, data, tmp_path, cfg)
    g = torch.Generator().manual_seed(0)
    assert len(losses) == 2
    for _model, _teacher, x0, eps, _t, _cond, _w in losses:
        want_x0, _ = data(16, g)
        torch.rand(16, generator=g, dtype=F64), torch.rand(16, generator=g, dtype=F64)  # t, then w
        assert x0.dtype == eps.dtype == F64 and torch.equal(x0, want_x0)
        assert torch.equal(eps, torch.randn(16, 2, generator=g, dtype=F64))
