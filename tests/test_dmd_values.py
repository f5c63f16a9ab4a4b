"""DMD / DMD2's training steps by value (distill.students.dmd): the fake-score step, the generator step, the
regression term and how the trainer alternates them, each against the same quantity computed by hand."""

from __future__ import annotations

import pytest
import torch

from priorkit.distill.core.schedule import VE, add_noise
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
        pairs["cond"] = torch.arange(10)
    got = dmd.regression_loss(Recorder(), pairs, torch.tensor(0.75, dtype=torch.float64), 3.0, 6,
                              torch.Generator().manual_seed(2))
    idx = torch.randint(10, (6,), generator=torch.Generator().manual_seed(2))
    want = (2.0 * z[idx] * 3.0 + 0.75 - pairs["x0"][idx]).pow(2).mean()
    torch.testing.assert_close(got, want)
    x_in, t_in, c_in = calls[0]
    assert t_in.dtype == torch.float32 and t_in.shape == (6,)
    assert torch.equal(c_in, idx) if with_cond else c_in is None


SCHEDULE = VE(0.01, 5.0)  # sigma_max = 5: scaling by sigma_max is visible
SIGMA_MAX = 5.0


def _run_loss_fn(monkeypatch, cfg: dmd.DMDConfig, steps: int) -> list[dict]:  # noqa: ANN001
    """Run dmd_distill's loss function for ``steps`` steps (the training loop replaced) with the three losses
    replaced by recorders: what each step computed, on what, and which parameters could learn."""
    seen: list[dict] = []

    def critic(m, x, x_real, cond, c, g):  # noqa: ANN001, ANN202
        seen.append({"kind": "critic", "x_grad": x.requires_grad, "x": x.detach().clone(),
                     "critic_grad": [p.requires_grad for p in m.fake.parameters()]})
        return sum(p.sum() for p in m.fake.parameters()) * 0.0 + 1.0

    def generator(m, teacher, x, cond, c, g):  # noqa: ANN001, ANN202
        seen.append({"kind": "generator", "x_grad": x.requires_grad,
                     "critic_grad": [p.requires_grad for p in m.fake.parameters()]})
        return x.sum() * 0.0 + 2.0

    def regression(gen, pairs, t_max, sigma_max, batch, g):  # noqa: ANN001, ANN202
        seen[-1]["regression"] = (float(t_max), sigma_max, batch, pairs["z"].shape[0])
        return torch.tensor(3.0)

    def fake_train(model, loss_fn, tcfg, out, **kw):  # noqa: ANN001, ANN202
        g = torch.Generator().manual_seed(0)
        for step in range(steps):
            seen.append({"loss": float(loss_fn(model, step, g))})
        return model, [{"loss": 0.0}]

    monkeypatch.setattr(dmd, "critic_loss", critic)
    monkeypatch.setattr(dmd, "generator_loss", generator)
    monkeypatch.setattr(dmd, "regression_loss", regression)
    monkeypatch.setattr(dmd, "train", fake_train)
    monkeypatch.setattr(dmd, "save_student", lambda *a, **k: None)
    dmd.dmd_distill(gmm_target(SCHEDULE).float(), MLPDenoiser(hidden=16, depth=2, schedule=SCHEDULE),
                    target_data("gmm"), "/nonexistent", cfg)
    return seen


def test_dmd2_alternates_fake_updates_and_a_generator_update(monkeypatch):
    cfg = dmd.DMD2Config(batch=8, fake_updates=2)
    seen = _run_loss_fn(monkeypatch, cfg, 6)
    kinds = [s["kind"] for s in seen if "kind" in s]
    assert kinds == ["critic", "critic", "generator"] * 2
    losses = [s["loss"] for s in seen if "loss" in s]
    assert losses == [1.0, 1.0, 2.0] * 2  # no regression in DMD2
    for s in seen:
        if s.get("kind") == "critic":  # the fake score learns, on samples without a graph to the generator
            assert all(s["critic_grad"]) and not s["x_grad"] and s["x"].shape == (8, 2)
        elif s.get("kind") == "generator":  # the generator learns through x; the critic is frozen
            assert not any(s["critic_grad"]) and s["x_grad"]


def test_dmd_adds_the_weighted_regression_on_generator_steps_only(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    cfg = dmd.DMDConfig(batch=8, pairs=16, teacher_steps=2, regression=0.25)
    seen = _run_loss_fn(monkeypatch, cfg, 4)
    kinds = [s["kind"] for s in seen if "kind" in s]
    assert kinds == ["critic", "generator"] * 2
    assert [s["loss"] for s in seen if "loss" in s] == [1.0, 2.75] * 2
    t_max, sigma_max, batch, n = next(s["regression"] for s in seen if "regression" in s)
    assert t_max == pytest.approx(SCHEDULE.t_max) and batch == 8 and n == 16
    assert sigma_max == pytest.approx(SIGMA_MAX)
    assert not any("regression" in s for s in seen if s.get("kind") == "critic")


def test_generator_steps_noise_at_sigma_max_and_pick_the_step_of_a_multi_step_generator(monkeypatch):
    picked = []
    real_generate = dmd.generate

    def spy(generator, noise, times, cond=None, *, last=None, generator_rng=None):  # noqa: ANN001, ANN202
        picked.append((last, float(noise.std()), len(times)))
        return real_generate(generator, noise, times, cond, last=last, generator_rng=generator_rng)

    monkeypatch.setattr(dmd, "generate", spy)
    cfg = dmd.DMD2Config(batch=4096, fake_updates=1, steps=3)
    _run_loss_fn(monkeypatch, cfg, 12)
    assert {k for k, _, _ in picked} == {0, 1, 2} and all(n == 3 for _, _, n in picked)
    assert all(abs(s - SIGMA_MAX) < 0.05 * SIGMA_MAX for _, s, _ in picked)
