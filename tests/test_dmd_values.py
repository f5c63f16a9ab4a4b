"""DMD / DMD2's training steps by value (distill.students.dmd): the fake-score step, the generator step, the
regression term and how the trainer alternates them, each against the same quantity computed by hand."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from priorkit.distill.core.schedule import VE, add_noise
from priorkit.distill.core.training import ResumeMismatchError
from priorkit.distill.score.guidance import diffusion_loss
from priorkit.distill.students import dmd
from priorkit.distill.zoo.toy import MLPDenoiser, gmm_target, target_data


def _trainee(gan: bool, seed: int = 0) -> dmd.DMDTrainee:
    torch.manual_seed(seed)
    generator = MLPDenoiser(hidden=16, depth=2).double()
    fake = MLPDenoiser(hidden=16, depth=2).double()
    return dmd.DMDTrainee(generator, fake, gan=gan).double()


def _draws(n: int, cfg: dmd.DMDConfig, seed: int, times: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The (t, eps) pairs the steps draw from a generator seeded with ``seed``, in order."""
    g = torch.Generator().manual_seed(seed)
    x = torch.zeros(n, 2, dtype=torch.float64)
    return [dmd._noise_level(x, cfg, g) for _ in range(times)]


def _samples(n: int = 8, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 2, generator=g, dtype=torch.float64) * 1.5, torch.randn(n, 2, generator=g,
                                                                                  dtype=torch.float64) + 1.0


def test_critic_loss_is_the_fake_scores_denoising_loss_without_a_head():
    m, cfg = _trainee(gan=False), dmd.DMDConfig(t_lo=0.1, t_hi=0.9)
    x, x_real = _samples()
    (t, eps), = _draws(8, cfg, 4, 1)
    got = dmd.critic_loss(m, x, x_real, None, cfg, torch.Generator().manual_seed(4))
    want = diffusion_loss(m.fake, x, t, eps, None)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=0)


def test_critic_loss_adds_the_discriminators_loss_on_real_and_generated_data_noised_alike():
    m, cfg = _trainee(gan=True), dmd.DMD2Config(gan=0.1, gan_disc=0.7, t_lo=0.1, t_hi=0.9)
    x, x_real = _samples()
    (t, eps), (t2, eps2) = _draws(8, cfg, 4, 2)
    got = dmd.critic_loss(m, x, x_real, None, cfg, torch.Generator().manual_seed(4))
    schedule = m.generator.schedule
    d_real = m.logits(add_noise(schedule, x_real, t2, eps2), t2, None)
    d_fake = m.logits(add_noise(schedule, x, t2, eps2), t2, None)
    # non-saturating: -log D(real) - log(1 - D(fake)) with D = sigmoid(logit)
    disc = -torch.log(torch.sigmoid(d_real)).mean() - torch.log(1 - torch.sigmoid(d_fake)).mean()
    want = diffusion_loss(m.fake, x, t, eps, None) + 0.7 * disc
    torch.testing.assert_close(got, want, rtol=1e-10, atol=0)
    assert abs(float(disc.detach())) > 0.1  # the head's term is not negligible: the test sees it


def test_generator_loss_gradient_is_dmds_normalised_gradient_per_element():
    m, cfg = _trainee(gan=False), dmd.DMDConfig(t_lo=0.2, t_hi=0.8)
    teacher = gmm_target().double()
    x = _samples()[0].requires_grad_(True)
    (t, eps), = _draws(8, cfg, 6, 1)
    loss = dmd.generator_loss(m, teacher, x, None, cfg, torch.Generator().manual_seed(6))
    (got,) = torch.autograd.grad(loss, x)
    want = dmd.dmd_gradient(teacher, m.fake, x.detach(), t, eps) / (8 * 2)  # mean over the batch and elements
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-14)
    assert want.abs().mean() > 1e-3


def test_generator_loss_takes_a_batch_of_one():
    m, cfg = _trainee(gan=False), dmd.DMDConfig()
    x = _samples(n=1)[0].requires_grad_(True)
    (t, eps), = _draws(1, cfg, 6, 1)
    (got,) = torch.autograd.grad(dmd.generator_loss(m, gmm_target().double(), x, None, cfg,
                                                    torch.Generator().manual_seed(6)), x)
    torch.testing.assert_close(got, dmd.dmd_gradient(gmm_target().double(), m.fake, x.detach(), t, eps) / 2)


def test_generator_loss_adds_the_generators_non_saturating_gan_term():
    m, cfg = _trainee(gan=True), dmd.DMD2Config(gan=0.3, t_lo=0.2, t_hi=0.8)
    teacher = gmm_target().double()
    x = _samples()[0].requires_grad_(True)
    (t, eps), (t2, eps2) = _draws(8, cfg, 6, 2)
    loss = dmd.generator_loss(m, teacher, x, None, cfg, torch.Generator().manual_seed(6))
    (got,) = torch.autograd.grad(loss, x)
    x_t = add_noise(m.generator.schedule, x, t2, eps2)
    gan = -torch.log(torch.sigmoid(m.logits(x_t, t2, None))).mean()
    (gan_grad,) = torch.autograd.grad(0.3 * gan, x)
    want = dmd.dmd_gradient(teacher, m.fake, x.detach(), t, eps) / 16 + gan_grad
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-14)
    assert gan_grad.abs().mean() > 1e-4


@pytest.mark.parametrize("with_cond", [False, True])
def test_regression_loss_is_the_mse_to_the_teachers_ode_output_at_the_first_level(with_cond):
    calls = []

    class Recorder(torch.nn.Module):
        def forward(self, x, t, cond, check=True):  # noqa: ANN001, ANN202
            calls.append((x, t, cond))
            return type("P", (), {"x0": 2.0 * x + t[:, None]})()

    z = torch.randn(10, 2, generator=torch.Generator().manual_seed(0))
    pairs = {"z": z, "x0": torch.randn(10, 2, generator=torch.Generator().manual_seed(1))}
    if with_cond:
        pairs["cond"] = torch.arange(10) + 100  # conditions that are not their own row numbers
    got = dmd.regression_loss(Recorder(), pairs, torch.tensor(0.75, dtype=torch.float64), 3.0, 6,
                              torch.Generator().manual_seed(2))
    idx = torch.randint(10, (6,), generator=torch.Generator().manual_seed(2))
    want = (2.0 * z[idx] * 3.0 + 0.75 - pairs["x0"][idx]).pow(2).mean()
    torch.testing.assert_close(got, want)
    x_in, t_in, c_in = calls[0]
    assert t_in.dtype == torch.float32 and t_in.shape == (6,)
    assert torch.equal(c_in, idx + 100) if with_cond else c_in is None


SCHEDULE = VE(0.01, 5.0)  # sigma_max = 5: scaling by sigma_max is visible
SIGMA_MAX = 5.0


def _run_loss_fn(monkeypatch, cfg: dmd.DMDConfig, steps: int, out) -> list[dict]:  # noqa: ANN001
    """Run dmd_distill's loss function for ``steps`` steps (the training loop replaced) with the three losses
    replaced by recorders: what each step computed, on what, and which parameters could learn."""
    seen: list[dict] = []

    def critic(m, x, x_real, cond, c, g):  # noqa: ANN001, ANN202
        seen.append({"kind": "critic", "x_grad": x.requires_grad, "x": x.detach().clone(), "x_real": x_real,
                     "critic_grad": [p.requires_grad for p in m.fake.parameters()]})
        return sum(p.sum() for p in m.fake.parameters()) * 0.0 + 1.0

    def generator(m, teacher, x, cond, c, g):  # noqa: ANN001, ANN202
        seen.append({"kind": "generator", "x_grad": x.requires_grad, "x": x.detach().clone(),
                     "critic_grad": [p.requires_grad for p in m.fake.parameters()]})
        return x.sum() * 0.0 + 2.0

    def regression(gen, pairs, t_max, sigma_max, batch, g):  # noqa: ANN001, ANN202
        seen[-1]["regression"] = (float(t_max), sigma_max, batch, pairs["z"].shape[0])
        return torch.tensor(3.0)

    def fake_train(model, loss_fn, tcfg, out, **kw):  # noqa: ANN001, ANN202
        g = torch.Generator().manual_seed(0)
        for step in range(steps):
            seen.append({"loss": float(loss_fn(model, step, g).detach())})
        return model, [{"loss": 0.0}]

    monkeypatch.setattr(dmd, "critic_loss", critic)
    monkeypatch.setattr(dmd, "generator_loss", generator)
    monkeypatch.setattr(dmd, "regression_loss", regression)
    monkeypatch.setattr(dmd, "train", fake_train)
    monkeypatch.setattr(dmd, "save_student", lambda *a, **k: None)
    dmd.dmd_distill(gmm_target(SCHEDULE).float(), MLPDenoiser(hidden=16, depth=2, schedule=SCHEDULE),
                    target_data("gmm"), out, cfg)
    return seen


def test_dmd2_alternates_fake_updates_and_a_generator_update(monkeypatch, tmp_path):
    cfg = dmd.DMD2Config(batch=8, fake_updates=2)
    seen = _run_loss_fn(monkeypatch, cfg, 6, tmp_path)
    kinds = [s["kind"] for s in seen if "kind" in s]
    assert kinds == ["critic", "critic", "generator"] * 2
    x_real, _ = target_data("gmm")(8, torch.Generator().manual_seed(0))  # the first step's data, from its generator
    assert torch.equal(seen[0]["x_real"], x_real)
    critics = [s for s in seen if s.get("kind") == "critic"]
    assert not torch.equal(critics[1]["x_real"], critics[0]["x_real"])  # each step draws afresh from the run's RNG
    losses = [s["loss"] for s in seen if "loss" in s]
    assert losses == [1.0, 1.0, 2.0] * 2  # no regression in DMD2
    for s in seen:
        if s.get("kind") == "critic":  # the fake score learns, on samples without a graph to the generator
            assert all(s["critic_grad"]) and not s["x_grad"] and s["x"].shape == (8, 2)
        elif s.get("kind") == "generator":  # the generator learns through x; the critic is frozen
            assert not any(s["critic_grad"]) and s["x_grad"]


def test_dmd_adds_the_weighted_regression_on_generator_steps_only(monkeypatch, tmp_path):
    cfg = dmd.DMDConfig(batch=8, pairs=16, teacher_steps=2, regression=0.25)
    seen = _run_loss_fn(monkeypatch, cfg, 4, tmp_path)
    kinds = [s["kind"] for s in seen if "kind" in s]
    assert kinds == ["critic", "generator"] * 2
    assert [s["loss"] for s in seen if "loss" in s] == [1.0, 2.75] * 2
    t_max, sigma_max, batch, n = next(s["regression"] for s in seen if "regression" in s)
    assert t_max == pytest.approx(SCHEDULE.t_max) and batch == 8 and n == 16
    assert sigma_max == pytest.approx(SIGMA_MAX)
    assert not any("regression" in s for s in seen if s.get("kind") == "critic")


def test_generator_steps_noise_at_sigma_max_and_pick_the_step_of_a_multi_step_generator(monkeypatch, tmp_path):
    picked = []
    real_generate = dmd.generate

    def spy(generator, noise, times, cond=None, *, last=None, generator_rng=None):  # noqa: ANN001, ANN202
        picked.append((last, float(noise.std()), len(times)))
        return real_generate(generator, noise, times, cond, last=last, generator_rng=generator_rng)

    monkeypatch.setattr(dmd, "generate", spy)
    cfg = dmd.DMD2Config(batch=4096, fake_updates=1, steps=3)
    _run_loss_fn(monkeypatch, cfg, 12, tmp_path)
    assert {k for k, _, _ in picked} == {0, 1, 2} and all(n == 3 for _, _, n in picked)
    assert all(abs(s - SIGMA_MAX) < 0.05 * SIGMA_MAX for _, s, _ in picked)


def test_generator_steps_train_on_the_generators_output_not_its_input(monkeypatch, tmp_path):
    """Both steps get x0 = G(input), the first of `generate`'s pair (the second is the input state)."""
    got = {}

    def stub(generator, noise, times, cond=None, *, last=None, generator_rng=None):  # noqa: ANN001, ANN202
        return torch.full_like(noise, 1.0).requires_grad_(torch.is_grad_enabled()), torch.full_like(noise, 2.0)

    monkeypatch.setattr(dmd, "generate", stub)
    seen = _run_loss_fn(monkeypatch, dmd.DMD2Config(batch=4, fake_updates=1), 2, tmp_path)
    for kind in ("critic", "generator"):
        got[kind] = next(s["x"] for s in seen if s.get("kind") == kind)
        assert torch.equal(got[kind], torch.ones(4, 2)), kind


def test_the_trainer_builds_its_pieces_from_the_config(monkeypatch, tmp_path):
    """The fake score gets the config's kind and rank; the GAN head exists only for gan > 0; the critic's parameters
    are the fake score's and the head's."""
    made = []
    real_make_fake = dmd.make_fake

    def spy(teacher, student, kind="copy", rank=8):  # noqa: ANN001, ANN202
        made.append((kind, rank))
        return real_make_fake(teacher, student, kind, rank)

    models = []
    monkeypatch.setattr(dmd, "make_fake", spy)
    real_trainee = dmd.DMDTrainee
    monkeypatch.setattr(dmd, "DMDTrainee", lambda *a, **k: models.append(real_trainee(*a, **k)) or models[-1])
    _run_loss_fn(monkeypatch, dmd.DMD2Config(batch=4, lora_rank=3), 1, tmp_path)
    _run_loss_fn(monkeypatch, dmd.DMD2Config(batch=4, gan=0.5), 1, tmp_path)
    assert made == [("copy", 3), ("copy", 8)]
    assert models[0].head is None and models[1].head is not None
    critic = models[1].critic_params()
    assert {id(p) for p in critic} == {id(p) for p in models[1].fake.parameters()} | {
        id(p) for p in models[1].head.parameters()}


def test_noise_levels_take_the_samples_dtype():
    x = torch.zeros(5, 2, dtype=torch.float64)
    t, eps = dmd._noise_level(x, dmd.DMDConfig(), torch.Generator().manual_seed(0))
    assert t.dtype == eps.dtype == torch.float64 and t.shape == (5,) and eps.shape == (5, 2)


def test_gan_head_pools_space_and_gives_one_logit_per_sample():
    head = dmd.GANHead(6)
    assert [type(m) for m in head.net] == [torch.nn.Linear, torch.nn.SiLU, torch.nn.Linear]
    assert head.net[0].out_features == 128 and head.net[2].out_features == 1  # DMD2's small MLP head
    f = torch.randn(3, 6, 4, 5, generator=torch.Generator().manual_seed(0))
    lin1, lin2 = head.net[0], head.net[2]
    pooled = f.mean(dim=(2, 3))
    want = (lin2(F.silu(lin1(pooled)))).squeeze(-1)
    torch.testing.assert_close(head(f), want)
    torch.testing.assert_close(head(f.flatten(2)), want)  # (B, C, L) features pool over L
    assert head(pooled).shape == (3,)  # (B, C) features (an MLP's block) go straight in


def test_feature_module_is_the_mlps_last_block_or_the_unets_mid_block():
    from types import SimpleNamespace

    mlp = MLPDenoiser(hidden=8, depth=3)
    assert dmd.feature_module(mlp) is mlp.blocks[-1] and len(mlp.blocks) > 2
    mid = torch.nn.Identity()
    assert dmd.feature_module(SimpleNamespace(unet=SimpleNamespace(mid_block=mid))) is mid
    for den in (SimpleNamespace(unet=SimpleNamespace(mid_block=None)), SimpleNamespace(unet=SimpleNamespace()),
                SimpleNamespace()):
        with pytest.raises(ValueError, match="no feature layer known for a SimpleNamespace"):
            dmd.feature_module(den)


def test_make_fake_copies_the_teachers_network_or_the_students():
    torch.manual_seed(0)
    teacher, student = MLPDenoiser(hidden=8, depth=2), MLPDenoiser(hidden=8, depth=2)
    teacher.requires_grad_(False)

    class Wrapped(torch.nn.Module):  # e.g. the CFG wrapper a runner puts round the teacher
        def __init__(self, inner):  # noqa: ANN001
            super().__init__()
            self.inner = inner

    for given in (teacher, Wrapped(teacher)):
        fake = dmd.make_fake(given, student)  # default: a full, trainable copy
        assert type(fake) is MLPDenoiser and fake is not teacher
        assert all(torch.equal(a, b) for a, b in zip(fake.parameters(), teacher.parameters(), strict=True))
        assert all(p.requires_grad for p in fake.parameters())
    fake = dmd.make_fake(gmm_target(), student)  # an exact mixture has no network: the student's is copied
    assert all(torch.equal(a, b) for a, b in zip(fake.parameters(), student.parameters(), strict=True))
    with pytest.raises(ValueError, match="^fake='lora' needs a diffusers teacher$"):
        dmd.make_fake(teacher, student, kind="lora")

    class NoAdapter(torch.nn.Module):  # a network with a `unet` that peft cannot adapt
        def __init__(self) -> None:
            super().__init__()
            self.unet = torch.nn.Linear(2, 2)

    with pytest.raises(ValueError, match="^fake='lora' needs a diffusers teacher$"):
        dmd.make_fake(NoAdapter(), student, kind="lora")

    class NoParameters(torch.nn.Module):  # a teacher with nothing to copy (not one of the exact mixtures)
        pass

    fake = dmd.make_fake(NoParameters(), student)
    assert type(fake) is MLPDenoiser and any(True for _ in fake.parameters())
    with pytest.raises(ValueError, match="^unknown fake score 'full'; expected 'copy' or 'lora'$"):
        dmd.make_fake(teacher, student, kind="full")


class _TupleBlock(torch.nn.Module):
    def forward(self, h):  # noqa: ANN001, ANN201
        return h * 2.0, h * 3.0  # a block that returns (features, extra): the head reads the first


class _TupleModel(torch.nn.Module):
    sample_shape = (3,)

    def __init__(self) -> None:
        super().__init__()
        self.blocks = torch.nn.ModuleList([_TupleBlock()])

    def forward(self, x, t, cond=None, check=True):  # noqa: ANN001, ANN201
        return self.blocks[-1](x)[0]


def test_the_head_reads_the_first_output_of_a_block_that_returns_a_tuple():
    trainee = dmd.DMDTrainee(_TupleModel(), _TupleModel(), gan=True)
    x = torch.randn(4, 3, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(trainee.logits(x, torch.full((4,), 0.5), None), trainee.head(2.0 * x))


def test_the_head_is_as_wide_as_a_unets_last_block():
    from types import SimpleNamespace

    class FakeUNetDenoiser(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.unet = torch.nn.Module()
            self.unet.mid_block = torch.nn.Identity()
            self.unet.config = SimpleNamespace(block_out_channels=(8, 16, 32))

    trainee = dmd.DMDTrainee(MLPDenoiser(hidden=8, depth=2), FakeUNetDenoiser(), gan=True)
    assert trainee.head.net[0].in_features == 32


def test_generate_gives_every_step_the_condition(monkeypatch):
    seen = []

    class Recorder(torch.nn.Module):
        schedule = SCHEDULE

        def forward(self, x, t, cond=None, check=True):  # noqa: ANN001, ANN202
            seen.append(cond)
            return type("P", (), {"x0": torch.zeros_like(x)})()

    cond = torch.tensor([1, 2])
    dmd.generate(Recorder(), torch.zeros(2, 2), dmd.generator_times(SCHEDULE, 3), cond)
    assert len(seen) == 3 and all(c is cond for c in seen)


def _tiny(cls, steps: int = 8, **kw):  # noqa: ANN001, ANN202
    from priorkit.distill.core.training import TrainConfig

    return cls(**{"batch": 16, "pairs": 32, "teacher_steps": 2, **kw},
               train=TrainConfig(steps=steps, lr=1e-3, warmup=1, ema_decay=0.9, checkpoint_every=4, log_every=2))


def _counting(calls: list[int]):  # noqa: ANN202
    base = target_data("gmm")

    def data(n, g):  # noqa: ANN001, ANN202
        calls.append(n)
        return base(n, g)

    return data


def test_resume_continues_from_the_checkpoint_and_a_fresh_run_ignores_it(tmp_path):
    from priorkit.distill.students.format import read_meta

    teacher = gmm_target().float()
    make = lambda: (torch.manual_seed(0), MLPDenoiser(hidden=16, depth=2))[1]  # noqa: E731
    first = dmd.dmd_distill(teacher, make(), target_data("gmm"), tmp_path / "a", _tiny(dmd.DMD2Config, steps=4))
    calls: list[int] = []  # a finished run resumed: no step runs, the result is the run's
    a = dmd.dmd_distill(teacher, make(), _counting(calls), tmp_path / "a", _tiny(dmd.DMD2Config, steps=4), resume=True)
    assert calls == []
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), first.state_dict().values(), strict=True))
    calls.clear()  # not resumed: a fresh run, whatever the folder holds
    b = dmd.dmd_distill(teacher, make(), _counting(calls), tmp_path / "a", _tiny(dmd.DMD2Config, steps=6))
    assert len(calls) == 6
    c = dmd.dmd_distill(teacher, make(), target_data("gmm"), tmp_path / "c", _tiny(dmd.DMD2Config, steps=6))
    assert all(torch.equal(x, y) for x, y in zip(b.state_dict().values(), c.state_dict().values(), strict=True))
    assert not (tmp_path / "c" / "pairs.safetensors").exists()  # no regression, no teacher ODE pairs
    meta = read_meta(tmp_path / "c" / "student")
    assert meta["method"] == "dmd2" and meta["times"] == dmd.generator_times(teacher.schedule, 1).tolist()
    assert isinstance(meta["final_loss"], float)


def test_an_interrupted_run_with_its_own_fake_rate_resumes_exactly_and_refuses_another_rate(tmp_path):
    teacher = gmm_target().float()
    make = lambda: (torch.manual_seed(0), MLPDenoiser(hidden=16, depth=2))[1]  # noqa: E731
    base, calls = target_data("gmm"), []

    def crashing(n, g):  # noqa: ANN001, ANN202
        calls.append(n)
        if len(calls) > 5:
            raise KeyboardInterrupt
        return base(n, g)

    cfg = _tiny(dmd.DMD2Config, steps=8, fake_lr_scale=20.0)
    with pytest.raises(KeyboardInterrupt):
        dmd.dmd_distill(teacher, make(), crashing, tmp_path / "a", cfg)
    for other in (1.0, 10.0):  # a different rate would silently change the run (or fail in torch): refused
        with pytest.raises(ResumeMismatchError, match="learning-rate scales"):
            dmd.dmd_distill(teacher, make(), base, tmp_path / "a", _tiny(dmd.DMD2Config, steps=8,
                                                                         fake_lr_scale=other), resume=True)
    calls.clear()
    a = dmd.dmd_distill(teacher, make(), _counting(calls), tmp_path / "a", cfg, resume=True)
    assert len(calls) == 4  # steps 4..7 after the checkpoint at 4
    b = dmd.dmd_distill(teacher, make(), base, tmp_path / "b", cfg)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))


def test_a_run_depends_on_its_seed_and_not_on_the_global_rng(tmp_path):
    """Every random draw of a step (data, noise, the generator's step, noise levels, re-noising, pairs) comes from
    the trainer's seeded generator: the global RNG's state changes nothing, the run's seed changes the result.
    (A GAN head is a new module, initialised like any from torch's RNG, which `priorkit distill` seeds with
    --seed.)"""
    teacher = gmm_target().float()
    results = {}
    for global_seed, seed in ((1, 0), (2, 0), (1, 1)):
        cfg = _tiny(dmd.DMDConfig, steps=6, regression=0.25)
        cfg.steps, cfg.train.seed = 2, seed
        student = (torch.manual_seed(0), MLPDenoiser(hidden=16, depth=2))[1]
        torch.manual_seed(global_seed)
        folder = tmp_path / f"{global_seed}-{seed}"
        results[global_seed, seed] = dmd.dmd_distill(teacher, student, target_data("gmm"), folder, cfg).state_dict()
    a, b, c = results[1, 0], results[2, 0], results[1, 1]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)
    pa, pb = (dmd.load_tensors(tmp_path / s / "pairs.safetensors") for s in ("1-0", "2-0"))
    assert torch.equal(pa["z"], pb["z"]) and torch.equal(pa["x0"], pb["x0"])


def test_a_gan_run_after_its_head_is_built_depends_on_its_seed_only(monkeypatch, tmp_path):
    """With a GAN head: the head seeded alike, then the global RNG moved differently; the steps (real data for the
    discriminator, its noise levels) come from the run's generator only."""
    real_trainee, state = dmd.DMDTrainee, {}

    def seeded_then_moved(*a, **k):  # noqa: ANN002, ANN003, ANN202
        torch.manual_seed(0)
        model = real_trainee(*a, **k)
        torch.manual_seed(state["global"])
        return model

    monkeypatch.setattr(dmd, "DMDTrainee", seeded_then_moved)
    results = []
    for global_seed in (1, 2):
        state["global"] = global_seed
        student = (torch.manual_seed(0), MLPDenoiser(hidden=16, depth=2))[1]
        cfg = _tiny(dmd.DMD2Config, steps=6, gan=0.1)
        results.append(dmd.dmd_distill(gmm_target().float(), student, target_data("gmm"), tmp_path / str(global_seed),
                                       cfg).state_dict())
    assert all(torch.equal(results[0][k], results[1][k]) for k in results[0])


def test_pairs_are_saved_once_in_a_new_folder_and_carry_the_conditions(tmp_path):
    from priorkit.distill.zoo.toy import conditional_gmm_target

    teacher = conditional_gmm_target()
    data = target_data("gmm", conditional=True)
    out = tmp_path / "new" / "deeper"
    pairs = dmd._pairs(teacher, out, _tiny(dmd.DMDConfig), data, seed=3)
    assert (out / "pairs.safetensors").is_file()
    want_cond = data(32, torch.Generator().manual_seed(3))[1]
    assert torch.equal(pairs["cond"], want_cond) and pairs["z"].shape == pairs["x0"].shape == (32, 2)
    again = dmd._pairs(None, out, _tiny(dmd.DMDConfig), data, seed=4)  # read back, not recomputed
    assert all(torch.equal(pairs[k], again[k]) for k in pairs)
    coarser = dmd._pairs(teacher, tmp_path / "other", _tiny(dmd.DMDConfig, teacher_steps=1), data, seed=3)
    assert torch.equal(coarser["z"], pairs["z"]) and not torch.allclose(coarser["x0"], pairs["x0"])  # teacher_steps


def _checkpoint(folder, tensors: dict) -> None:  # noqa: ANN001
    from safetensors.torch import save_file

    (folder / "checkpoint").mkdir(parents=True)
    save_file(tensors, str(folder / "checkpoint" / "state.safetensors"))


def test_load_init_reads_the_raw_generator_without_an_ema_and_refuses_a_checkpoint_without_a_fake(tmp_path):
    torch.manual_seed(0)
    gen, fake = MLPDenoiser(hidden=8, depth=2), MLPDenoiser(hidden=8, depth=2)
    no_ema = {**{f"model.generator.{k}": v for k, v in gen.state_dict().items()},
              **{f"model.fake.{k}": v for k, v in fake.state_dict().items()}}
    _checkpoint(tmp_path / "a", no_ema)
    trainee = dmd.DMDTrainee(MLPDenoiser(hidden=8, depth=2), MLPDenoiser(hidden=8, depth=2), gan=False)
    dmd.load_init(trainee, tmp_path / "a")
    assert all(torch.equal(v, gen.state_dict()[k]) for k, v in trainee.generator.state_dict().items())
    assert all(torch.equal(v, fake.state_dict()[k]) for k, v in trainee.fake.state_dict().items())
    _checkpoint(tmp_path / "b", {k: v for k, v in no_ema.items() if k.startswith("model.generator.")})
    with pytest.raises(ValueError, match=r"holds no DMD checkpoint \(no generator / fake score in state.safetensors\)"):
        dmd.load_init(trainee, tmp_path / "b")
    wide = dmd.DMDTrainee(MLPDenoiser(hidden=16, depth=2), MLPDenoiser(hidden=16, depth=2), gan=False)
    with pytest.raises(ValueError, match=r"networks do not fit this teacher \(Error\(s\) in loading state_dict for "
                                         r"MLPDenoiser:\)"):
        dmd.load_init(wide, tmp_path / "a")


def test_load_init_from_a_student_folder_drops_the_attached_codecs(tmp_path, monkeypatch):
    from priorkit.distill.students import format as fmt

    torch.manual_seed(0)
    gen = MLPDenoiser(hidden=8, depth=2)

    class WithCodecs(torch.nn.Module):  # a latent student as load_student returns it: text encoder and VAE attached
        def __init__(self, hidden: int) -> None:
            super().__init__()
            self.net = MLPDenoiser(hidden=hidden, depth=2)

        def state_dict(self, *a, **k):  # noqa: ANN002, ANN003, ANN201
            return {**self.net.state_dict(), "text_encoder.w": torch.zeros(1), "vae.w": torch.zeros(1)}

    monkeypatch.setattr(fmt, "is_student_folder", lambda p: True)
    monkeypatch.setattr(fmt, "load_student", lambda p: (lambda m: (m.net.load_state_dict(gen.state_dict()), m)[1])(
        WithCodecs(8)))
    trainee = dmd.DMDTrainee(MLPDenoiser(hidden=8, depth=2), MLPDenoiser(hidden=8, depth=2), gan=False)
    dmd.load_init(trainee, tmp_path)
    assert all(torch.equal(v, gen.state_dict()[k]) for k, v in trainee.generator.state_dict().items())
    monkeypatch.setattr(fmt, "load_student", lambda p: WithCodecs(16))
    with pytest.raises(ValueError, match=r"its student does not fit this teacher \(Error\(s\) in loading state_dict "
                                         r"for MLPDenoiser:\)"):
        dmd.load_init(trainee, tmp_path)


@pytest.mark.parametrize("scale", [1.0, 20.0])
def test_the_fake_score_learns_at_its_own_rate(monkeypatch, tmp_path, scale):
    """fake_lr_scale: the critic (fake score and head) in a parameter group of its own at that multiple of the
    generator's rate; at 1 the trainer's single group, as before the option existed."""
    seen = {}

    def fake_train(model, loss_fn, tcfg, out, *, params=None, **kw):  # noqa: ANN001, ANN202
        seen["params"] = params
        seen["model"] = model
        return model, [{"loss": 0.0}]

    monkeypatch.setattr(dmd, "train", fake_train)
    monkeypatch.setattr(dmd, "save_student", lambda *a, **k: None)
    cfg = dmd.DMD2Config(batch=4, gan=0.1, fake_lr_scale=scale)
    dmd.dmd_distill(gmm_target().float(), MLPDenoiser(hidden=8, depth=2), target_data("gmm"), tmp_path, cfg)
    if scale == 1.0:
        assert seen["params"] is None
        return
    gen, critic = seen["params"]
    model = seen["model"]
    assert {id(p) for p in gen["params"]} == {id(p) for p in model.generator.parameters()}
    assert {id(p) for p in critic["params"]} == {id(p) for p in model.critic_params()} and critic["lr_scale"] == 20.0
    assert "lr_scale" not in gen


def test_a_larger_fake_rate_moves_only_the_fake_score_further(tmp_path):
    """Through the real trainer: two fake-score steps at 10x the rate move the fake score ~10x as far (Adam's
    first steps are lr-sized); the generator has no step yet (it is updated every sixth step)."""
    teacher = gmm_target().float()
    moved = {}
    for scale in (1.0, 10.0):
        cfg = _tiny(dmd.DMD2Config, steps=2, fake_lr_scale=scale)
        cfg.train.warmup, cfg.train.ema_decay = 0, 0.0
        student = (torch.manual_seed(0), MLPDenoiser(hidden=16, depth=2))[1]
        start = {k: v.clone() for k, v in student.state_dict().items()}
        dmd.dmd_distill(teacher, student, target_data("gmm"), tmp_path / str(scale), cfg)
        assert all(torch.equal(v, start[k]) for k, v in student.state_dict().items())  # generator: no step yet
        state = dmd.load_tensors(tmp_path / str(scale) / "checkpoint" / "state.safetensors")
        fake = {k[len("model.fake."):]: v for k, v in state.items() if k.startswith("model.fake.")}
        moved[scale] = sum(float((fake[k] - start[k]).abs().sum()) for k in fake)
    assert 7.0 < moved[10.0] / moved[1.0] < 13.0, moved


def test_the_runner_passes_the_fake_options_into_the_config_and_the_run_settings(monkeypatch, tmp_path):
    import json

    from priorkit.distill.students import runner

    seen = {}

    def fake_run(method, target, student, data, out, cfg, *, resume=False, meta=None):  # noqa: ANN001, ANN202
        seen["cfg"] = cfg
        raise KeyboardInterrupt  # stop before training: the settings are written by then

    monkeypatch.setattr(runner, "run_method", fake_run)
    for scale, recorded in ((20.0, 20.0), (1.0, None)):  # 1 is the default: not recorded, so resuming matches
        out = tmp_path / str(scale)
        with pytest.raises(KeyboardInterrupt):
            runner.distill("dmd2", "toy:gmm", out, steps=2, gan=0.1, fake_lr_scale=scale)
        assert seen["cfg"].fake_lr_scale == scale and seen["cfg"].gan == 0.1
        assert json.loads((out / "settings.json").read_text()).get("fake_lr_scale") == recorded
    for bad in (0.0, -1.0, float("inf"), float("nan")):
        with pytest.raises(ValueError, match="--fake-lr-scale must be a finite number > 0"):
            runner.check_dmd_options("dmd2", "toy:gmm", None, None, None, bad)
    with pytest.raises(ValueError, match="fake_lr_scale must be a finite number > 0"):
        dmd.dmd_distill(gmm_target().float(), MLPDenoiser(hidden=8, depth=2), target_data("gmm"), tmp_path / "x",
                        dmd.DMD2Config(fake_lr_scale=0.0))
