"""DMD / DMD2 (distill.students.dmd) and bespoke solvers (distill.core.samplers.bespoke, distill.students.bespoke)
against exact answers on 2D Gaussian mixtures, plus tiny end-to-end runs (save, load, sample, resume)."""

from __future__ import annotations

import math

import pytest
import torch

from priorkit.distill.core.gmm import GaussianMixture
from priorkit.distill.core.samplers import initial_noise, sample
from priorkit.distill.core.samplers.bespoke import BespokeSolver, load_bespoke
from priorkit.distill.core.training import TrainConfig
from priorkit.distill.score.guidance import surrogate_loss
from priorkit.distill.students import bespoke as bs
from priorkit.distill.students import dmd
from priorkit.distill.students.format import load_student, read_meta
from priorkit.distill.students.runner import distill, sample_student
from priorkit.distill.zoo.toy import MLPDenoiser, gmm_target, target_data


def _ring(radius: float, std: float = 0.3, k: int = 4) -> GaussianMixture:
    return gmm_target(components=k, radius=radius, std=std)


def _generated(radius: torch.Tensor, std: float = 0.3, k: int = 4, n: int = 4096, seed: int = 0) -> torch.Tensor:
    """A differentiable generator z -> means(radius)[c] + std z whose law is ``_ring(radius, std, k)``."""
    g = torch.Generator().manual_seed(seed)
    c = torch.randint(k, (n,), generator=g)
    angle = 2 * math.pi * c.double() / k
    z = torch.randn(n, 2, generator=g, dtype=torch.float64)
    return radius * torch.stack([torch.cos(angle), torch.sin(angle)], -1) + std * z


def _param_grad(real: GaussianMixture, r: float, seed: int = 0) -> float:
    """d/dr of DMD's surrogate loss for a generator of ring radius r, with the exact fake score (the mixture of
    radius r): the expected generator update."""
    radius = torch.tensor(r, dtype=torch.float64, requires_grad=True)
    x = _generated(radius, seed=seed)
    fake = _ring(float(radius.detach()))
    g = torch.Generator().manual_seed(seed + 1)
    t = 0.02 + 0.96 * torch.rand(x.shape[0], generator=g, dtype=torch.float64)
    eps = torch.randn(x.shape, generator=g, dtype=torch.float64)
    grad = dmd.dmd_gradient(real, fake, x, t, eps)
    surrogate_loss(x, grad).backward()
    return float(radius.grad)


def test_dmd_gradient_vanishes_when_the_generator_matches_the_target():
    real = _ring(2.0)
    x = _generated(torch.tensor(2.0, dtype=torch.float64))
    t = torch.linspace(0.02, 0.98, x.shape[0], dtype=torch.float64)
    eps = torch.randn(x.shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    grad = dmd.dmd_gradient(real, _ring(2.0), x, t, eps)  # exact fake score of the generator's own law
    assert grad.abs().max() < 1e-10
    assert abs(_param_grad(real, 2.0)) < 1e-10
    # a mismatched fake score (the generator elsewhere) gives a gradient of order one: the test can fail
    assert dmd.dmd_gradient(real, _ring(2.5), x, t, eps).abs().mean() > 0.05


@pytest.mark.parametrize("r", [1.6, 2.5])
def test_dmd_gradient_moves_a_wrong_generator_towards_the_target(r):
    real = _ring(2.0)
    d = _param_grad(real, r)
    assert d * (r - 2.0) > 0, d  # descent on the radius moves it towards 2
    radius = r
    for _ in range(40):  # gradient descent with the exact fake score recomputed each step
        radius -= 0.5 * _param_grad(real, radius, seed=_)
    assert abs(radius - 2.0) < 0.25 * abs(r - 2.0), radius


def test_dmd_normalisation_is_the_papers():
    real, fake = _ring(2.0), _ring(2.4)
    x = _generated(torch.tensor(2.4, dtype=torch.float64), n=256)
    t = torch.full((256,), 0.5, dtype=torch.float64)
    eps = torch.randn(x.shape, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    x_t = 0.5 * x + 0.5 * eps
    x0_r, x0_f = real(x_t, t).x0, fake(x_t, t).x0
    expected = (x0_f - x0_r) / (x - x0_r).abs().mean(1, keepdim=True)  # DMD eq. 8: sigma^2/alpha CS/|x - mu|_1
    torch.testing.assert_close(dmd.dmd_gradient(real, fake, x, t, eps), expected, rtol=1e-9, atol=1e-12)


def _tiny_dmd_cfg(cls, steps: int = 8, **kw):  # noqa: ANN001, ANN202
    return cls(batch=32, pairs=64, teacher_steps=4, train=TrainConfig(steps=steps, lr=1e-3, warmup=1, ema_decay=0.9,
                                                                      checkpoint_every=4, log_every=2), **kw)


@pytest.mark.parametrize("variant", ["dmd", "dmd2-gan-2step"])
def test_dmd_trains_saves_loads_and_samples(variant, tmp_path):
    torch.manual_seed(0)
    teacher = gmm_target().float()
    student = MLPDenoiser(hidden=32, depth=2)
    cfg = _tiny_dmd_cfg(dmd.DMDConfig) if variant == "dmd" else _tiny_dmd_cfg(dmd.DMD2Config, gan=0.1, steps=2)
    dmd.dmd_distill(teacher, student, target_data("gmm"), tmp_path, cfg)
    meta = read_meta(tmp_path / "student")
    assert meta["sampler"] == "dmd" and meta["steps"] == cfg.steps
    x = sample_student(tmp_path / "student", 16)
    assert x.shape == (16, 2) and torch.isfinite(x).all()


def test_dmd_resume_continues_exactly(tmp_path):
    base = target_data("gmm")
    calls = {"n": 0}

    def crashing(n, g):  # noqa: ANN001, ANN202
        calls["n"] += 1
        if calls["n"] > 4:
            raise KeyboardInterrupt
        return base(n, g)

    teacher = gmm_target().float()
    make = lambda: (torch.manual_seed(0), MLPDenoiser(hidden=32, depth=2))[1]  # noqa: E731
    cfg = _tiny_dmd_cfg(dmd.DMD2Config)
    with pytest.raises(KeyboardInterrupt):
        dmd.dmd_distill(teacher, make(), crashing, tmp_path / "a", cfg)
    a = dmd.dmd_distill(teacher, make(), base, tmp_path / "a", cfg, resume=True)
    b = dmd.dmd_distill(teacher, make(), base, tmp_path / "b", cfg)
    sa, sb = a.state_dict(), b.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_registry_runs_dmd2_and_bespoke_on_a_held_out_ring(tmp_path):
    folder = distill("dmd2", "toy:ring5", tmp_path / "dmd2", steps=6, batch=16)
    assert sample_student(folder, 8).shape == (8, 2)
    path = distill("bespoke", "toy:ring5", tmp_path / "bespoke", steps=3, batch=16)
    assert path.name == "bespoke.json"  # an exact teacher: the solver file is the result
    assert load_bespoke(path).nfe == 4


# ---- bespoke solvers ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("variant", ["rk2", "ns"])
def test_bespoke_starts_as_its_base_solver(variant):
    gmm = gmm_target()
    noise = initial_noise(gmm, (64, 2), generator=torch.Generator().manual_seed(0)).double()
    solver = BespokeSolver(4, variant)
    fn = lambda x, t: gmm(x, t.expand(x.shape[0]), check=False)  # noqa: E731
    if variant == "ns":  # Euler on a uniform grid
        expected = sample(gmm, noise, solver="euler", times=torch.linspace(1, 0, 5, dtype=torch.float64))
    else:  # the midpoint rule on a uniform grid, by hand
        x, h = noise, 0.5
        for t in (1.0, 0.5):
            tt = torch.tensor(t, dtype=torch.float64)
            mid = x - 0.5 * h * fn(x, tt).velocity
            x = x - h * fn(mid, tt - h / 2).velocity
        expected = x
    torch.testing.assert_close(solver(fn, noise), expected)


def test_bespoke_training_beats_its_start_and_saves(tmp_path):
    gmm = gmm_target().float()
    cfg = bs.BespokeConfig(nfe=4, trajectories=256, ref_steps=32, batch=128,
                           train=TrainConfig(steps=60, lr=2e-2, warmup=0, ema_decay=0.0))
    z, x_ref, _ = bs.reference_pairs(gmm, 256, 32, None, seed=0)
    fn = lambda x, t: gmm(x, t.expand(x.shape[0]), check=False)  # noqa: E731
    before = float(bs.rmse(BespokeSolver(4)(fn, z), x_ref))
    solver = bs.bespoke_train(gmm, tmp_path, cfg)
    after = float(bs.rmse(solver(fn, z), x_ref))
    assert after < 0.7 * before, (before, after)
    x = sample(gmm, z, solver=f"bespoke:{tmp_path / 'bespoke.json'}")
    torch.testing.assert_close(x, solver(fn, z))
    with pytest.raises(ValueError):
        sample(gmm, z, solver=f"bespoke:{tmp_path / 'missing.json'}")


def test_bespoke_student_of_an_mlp_teacher_samples(tmp_path):
    from priorkit.distill.students.registry import STUDENT_SAMPLERS

    torch.manual_seed(0)
    teacher = MLPDenoiser(hidden=32, depth=2).eval()
    cfg = bs.BespokeConfig(nfe=2, variant="ns", trajectories=32, ref_steps=8, batch=16,
                           train=TrainConfig(steps=3, lr=1e-2, warmup=0, ema_decay=0.0))
    bs.bespoke_distill(teacher, teacher, target_data("gmm"), tmp_path, cfg)
    student, meta = load_student(tmp_path / "student"), read_meta(tmp_path / "student")
    noise = torch.randn(8, 2)
    x = STUDENT_SAMPLERS[meta["sampler"]](student, noise, 1, None, None, meta)
    assert x.shape == (8, 2) and torch.isfinite(x).all()


def test_dmd_init_starts_a_second_stage_from_the_first_runs_generator_and_fake(tmp_path):
    torch.manual_seed(0)
    teacher = gmm_target().float()
    first = dmd.dmd_distill(teacher, MLPDenoiser(hidden=32, depth=2), target_data("gmm"), tmp_path / "a",
                            _tiny_dmd_cfg(dmd.DMD2Config))
    # a second stage with a GAN head that does not move (lr 0): its generator is the first run's student, its fake
    # the first run's fake score
    cfg = _tiny_dmd_cfg(dmd.DMD2Config, steps=1, gan=0.1, init=str(tmp_path / "a"))
    cfg.train.steps, cfg.train.lr = 1, 0.0
    fresh = MLPDenoiser(hidden=32, depth=2)
    second = dmd.dmd_distill(teacher, fresh, target_data("gmm"), tmp_path / "b", cfg)
    s1, s2 = first.state_dict(), second.state_dict()
    assert all(torch.equal(s1[k], s2[k]) for k in s1)
    from safetensors.torch import load_file

    a = load_file(str(tmp_path / "a" / "checkpoint" / "state.safetensors"))
    b = load_file(str(tmp_path / "b" / "checkpoint" / "state.safetensors"))
    fakes = [k for k in a if k.startswith("model.fake.")]
    assert fakes and all(torch.equal(a[k], b[k]) for k in fakes)
    assert any(k.startswith("model.head.") for k in b)  # the GAN head is new
    # a student folder gives the generator alone; anything else is a one-line error
    trainee = dmd.DMDTrainee(MLPDenoiser(hidden=32, depth=2), MLPDenoiser(hidden=32, depth=2), gan=False)
    dmd.load_init(trainee, tmp_path / "a" / "student")
    assert all(torch.equal(s1[k], v) for k, v in trainee.generator.state_dict().items())
    with pytest.raises(ValueError, match="neither a DMD run folder"):
        dmd.load_init(trainee, tmp_path)
    with pytest.raises(ValueError, match="do not fit"):
        dmd.load_init(dmd.DMDTrainee(MLPDenoiser(hidden=16, depth=2), MLPDenoiser(hidden=16, depth=2), gan=False),
                      tmp_path / "a")


def test_dmd2_with_a_lora_fake_score_on_a_unet_teacher(tmp_path):
    """The fake score as a peft LoRA on a copy of a UNet teacher: it starts as the teacher exactly, only the LoRA
    (and the GAN head) train, and a DMD2 run with both saves a student that samples."""
    from test_distill_methods import tiny_teacher

    from priorkit.distill.students.format import copy_teacher

    teacher = tiny_teacher()
    fake = dmd.make_fake(teacher, copy_teacher(teacher), kind="lora", rank=4)
    g = torch.Generator().manual_seed(0)
    x, states = torch.randn(2, 3, 8, 8, generator=g), torch.randn(2, 4, 16, generator=g)
    t = torch.tensor([0.3, 0.7])
    with torch.no_grad():
        assert torch.equal(fake(x, t, states).x0, teacher(x, t, states).x0)  # LoRA B = 0 at init
    trainable = [n for n, p in fake.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    lora = fake.unet.peft_config["dmd_fake"]  # attention projections, scale alpha / r = 1
    assert (lora.r, lora.lora_alpha, lora.init_lora_weights) == (4, 4, True)
    assert set(lora.target_modules) == {"to_q", "to_k", "to_v", "to_out.0"}
    assert dmd.make_fake(teacher, copy_teacher(teacher), kind="lora").unet.peft_config["dmd_fake"].r == 8
    images, conds = torch.randn(16, 3, 8, 8, generator=g), torch.randn(16, 4, 16, generator=g)

    def data(n, gen):  # noqa: ANN001, ANN202
        i = torch.randint(0, 16, (n,), generator=gen)
        return images[i], conds[i]

    cfg = dmd.DMD2Config(batch=4, fake="lora", lora_rank=4, gan=0.1, gan_disc=0.01,
                         train=TrainConfig(steps=12, lr=1e-3, warmup=1, ema_decay=0.9, checkpoint_every=6, log_every=3))
    student = dmd.dmd_distill(teacher, copy_teacher(teacher), data, tmp_path, cfg)
    assert read_meta(tmp_path / "student")["config"]["fake"] == "lora"
    back = load_student(tmp_path / "student")
    out = dmd.dmd_sample(back, torch.randn(2, 3, 8, 8, generator=g), 1, cond=states)
    assert out.shape == (2, 3, 8, 8) and torch.isfinite(out).all()
    trained, start = student.state_dict(), teacher.state_dict()
    assert trained.keys() == start.keys() and not all(torch.equal(trained[k], start[k]) for k in start)


def test_dmd_init_from_a_bundled_image_student_loads_its_generator():
    """--init shapes-dmd2: the student folder carries its text encoder; the generator (a bare UNet copy) takes the
    UNet weights exactly."""
    from priorkit.distill.core.loading import bundled_path, load_denoiser
    from priorkit.distill.students.format import copy_teacher

    teacher = load_denoiser("shapes")
    trainee = dmd.DMDTrainee(copy_teacher(teacher), copy_teacher(teacher), gan=False)
    dmd.load_init(trainee, "shapes-dmd2")
    bundled = load_student(bundled_path("shapes-dmd2")).state_dict()
    loaded = trainee.generator.state_dict()
    assert loaded and all(torch.equal(v, bundled[k]) for k, v in loaded.items())
    start = copy_teacher(teacher).state_dict()  # the fake score stays the teacher's copy
    assert all(torch.equal(v, start[k]) for k, v in trainee.fake.state_dict().items())
    assert any(not torch.equal(v, start[k]) for k, v in loaded.items())  # and the generator is not
