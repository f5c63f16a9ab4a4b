"""The consistency trainer by value: the Karras grid of noise-to-signal ratios, CT's growing N(k), the sampling
times, and what each training step draws and passes to its loss, with the training loop and the loss replaced by
recorders (the loss itself is tested by hand in test_student_losses)."""

from __future__ import annotations

import math

import pytest
import torch

from priorkit.distill.core.schedule import VE, VPCosine
from priorkit.distill.core.training import TrainConfig
from priorkit.distill.students import consistency as cs
from priorkit.distill.students.format import Trainee, read_meta
from priorkit.distill.zoo.toy import MLPDenoiser, gmm_target, target_data

F64 = torch.float64


def _ratio(schedule, t):  # noqa: ANN001, ANN202
    t = torch.as_tensor(t, dtype=F64)
    return schedule.sigma(t) / schedule.alpha(t)


@pytest.mark.parametrize("schedule", [VPCosine(), VE(sigma_max=50.0)], ids=["vp-cosine", "ve"])
def test_karras_grid_by_hand(schedule):
    lo, hi = cs.noise_range(schedule, 0.01, 80.0)
    assert lo == 0.01
    assert hi == pytest.approx(min(80.0, float(_ratio(schedule, schedule.t_max))), rel=1e-9)  # clamped to reach
    for rho in (7.0, 3.0):
        t = cs.karras_times(schedule, 5, 0.01, 80.0, rho) if rho != 7.0 else cs.karras_times(schedule, 5, 0.01, 80.0)
        assert t.dtype == F64 and t.shape == (5,)
        want = [(lo ** (1 / rho) + k / 4 * (hi ** (1 / rho) - lo ** (1 / rho))) ** rho for k in range(5)]
        torch.testing.assert_close(_ratio(schedule, t), torch.tensor(want, dtype=F64), rtol=1e-7, atol=0)
    torch.testing.assert_close(_ratio(schedule, cs.ratio_to_time(schedule, torch.tensor([0.3, 2.0], dtype=F64))),
                               torch.tensor([0.3, 2.0], dtype=F64), rtol=1e-9, atol=0)
    with pytest.raises(ValueError, match="at least 2 points; got 1"):
        cs.karras_times(schedule, 1, 0.01, 80.0)


def test_ct_grows_n_from_s0_to_s1_plus_one_and_mu_with_it():
    def by_hand(step, total, s0, s1):  # noqa: ANN001, ANN202
        k = min(step, total) / max(1, total)
        return math.ceil(math.sqrt(k * ((s1 + 1) ** 2 - s0 ** 2) + s0 ** 2) - 1) + 1

    for step, total, s0, s1 in ((0, 100, 3, 20), (10, 100, 3, 20), (57, 100, 3, 20), (100, 100, 3, 20),
                                (500, 100, 3, 20), (1, 1, 3, 10), (0, 0, 3, 10), (7, 40, 5, 150)):
        assert cs.ct_steps(step, total, s0, s1) == by_hand(step, total, s0, s1), (step, total, s0, s1)
    # the same by hand: k = 0.57 -> sqrt(0.57 (21^2 - 3^2) + 3^2) = 15.98 -> ceil(14.98) + 1 = 16
    assert [cs.ct_steps(k, 100, 3, 20) for k in (0, 10, 57, 100, 500)] == [3, 8, 16, 21, 21]
    assert cs.ct_steps(1, 1, 3, 10) == 11 and cs.ct_steps(0, 0, 3, 10) == 3
    assert cs.ct_steps(50, 100, 10, 20) == 17  # sqrt(0.5 (441 - 100) + 100) = 16.4: s0 large enough to matter
    assert cs.ct_mu(4, 2, 0.9) == pytest.approx(0.9 ** 0.5) and cs.ct_mu(2, 2, 0.9) == pytest.approx(0.9)


def test_sampling_times_are_evenly_spaced_indices_of_the_karras_grid_from_its_top():
    s = VPCosine()
    grid = cs.karras_times(s, 5, 0.01, 20.0, 3.0)
    got = cs.consistency_times(s, 2, sigma_min=0.01, sigma_max=20.0, rho=3.0, grid=5)
    assert torch.equal(got, grid[[4, 2]])  # linspace(4, 0, 3) without its last point
    assert torch.equal(cs.consistency_times(s, 1, sigma_min=0.01, sigma_max=20.0, rho=3.0, grid=5), grid[[4]])
    assert torch.equal(cs.consistency_times(s, 4, sigma_min=0.01, sigma_max=20.0, rho=3.0, grid=5), grid[[4, 3, 2, 1]])
    default = cs.karras_times(s, 18, 0.002, 80.0, 7.0)  # the defaults: Song et al.'s 18-point grid
    assert torch.equal(cs.consistency_times(s, 3), default[torch.linspace(17, 0, 4)[:-1].round().long()])


def _record(monkeypatch, steps: int = 3):  # noqa: ANN202
    trained, losses, updates = [], [], []

    def fake_train(model, loss_fn, cfg, out, *, resume=False, desc="", **kw):  # noqa: ANN001, ANN202
        g = torch.Generator().manual_seed(0)
        trained.append({"model": model, "resume": resume, "desc": desc, "cfg": cfg, "out": out,
                        "grad": all(p.requires_grad for p in model.student.parameters()),
                        "training": model.student.training})
        for k in range(steps):
            loss_fn(model, k, g)
        return model, [{"loss": 0.0}]

    def fake_loss(m, target, x0, eps, t_hi, t_lo, **kw):  # noqa: ANN001, ANN202
        losses.append({"m": m, "target": target, "x0": x0, "eps": eps, "t_hi": t_hi, "t_lo": t_lo, **kw})
        return torch.zeros(())

    monkeypatch.setattr(cs, "train", fake_train)
    monkeypatch.setattr(cs, "consistency_loss", fake_loss)
    monkeypatch.setattr(Trainee, "update_target", lambda self, mu: updates.append(mu))
    return trained, losses, updates


def _draws(data, times: torch.Tensor, batch: int, g: torch.Generator):  # noqa: ANN001, ANN202
    x0, cond = data(batch, g)
    i = torch.randint(0, len(times) - 1, (batch,), generator=g)
    eps = torch.randn(x0.shape, generator=g, dtype=x0.dtype)
    return x0, cond, eps, times[i], times[i + 1]


def test_distillation_steps_draw_adjacent_grid_times_and_pass_the_teacher(tmp_path, monkeypatch):
    trained, losses, updates = _record(monkeypatch)
    teacher, net = gmm_target().float(), MLPDenoiser(hidden=8, depth=2, num_classes=8)
    data = target_data("gmm", conditional=True)
    cfg = cs.ConsistencyConfig(n_steps=6, mu=0.8, solver="dpm2", metric="pseudo_huber", weighting="inverse_gap",
                               sigma_min=0.01, sigma_max=20.1, rho=5.0, batch=5, sigma_data=0.7,
                               train=TrainConfig(steps=3))
    student = cs.consistency_distill(teacher, net.eval().requires_grad_(False), data, tmp_path, cfg, resume=True,
                                     meta={"teacher": "gmm"})
    (run,) = trained
    assert run["resume"] is True and run["desc"] == "consistency (cd)" and run["out"] == tmp_path
    assert run["grad"] and run["training"] and run["cfg"] is cfg.train
    assert (run["model"].student.sigma_data, run["model"].student.sigma_min) == (0.7, 0.01)  # c_skip / c_out's
    assert updates == [0.8, 0.8]  # the target follows the student after every optimiser step (not before the first)
    s = run["model"].student.schedule
    times = cs.karras_times(s, 6, 0.01, 20.1, 5.0)
    g = torch.Generator().manual_seed(0)
    assert len(losses) == 3
    for call in losses:
        x0, cond, eps, t_lo, t_hi = _draws(data, times, 5, g)
        assert call["m"] is run["model"] and call["target"] is run["model"].target
        assert call["teacher"] is teacher and not any(p.requires_grad for p in teacher.parameters())
        assert (call["solver"], call["metric"]) == ("dpm2", "pseudo_huber")
        assert torch.equal(call["x0"], x0) and torch.equal(call["cond"], cond) and torch.equal(call["eps"], eps)
        assert torch.equal(call["t_lo"], t_lo) and torch.equal(call["t_hi"], t_hi)
        torch.testing.assert_close(call["weight"], 1.0 / (_ratio(s, t_hi) - _ratio(s, t_lo)), rtol=1e-9, atol=0)
    meta = read_meta(tmp_path / "student")
    assert (meta["method"], meta["sampler"], meta["teacher"]) == ("consistency-cd", "consistency", "gmm")
    assert meta["t_max"] == pytest.approx(float(times[-1]), rel=1e-12) and meta["config"]["n_steps"] == 6
    assert _ratio(s, meta["t_max"]) == pytest.approx(20.1, rel=1e-12)  # the top: sigma_max (20.1: not a float32 number)
    assert not any(p.requires_grad for p in student.parameters()) and not student.training


def test_consistency_training_grows_its_grid_and_target_decay_without_a_teacher(tmp_path, monkeypatch):
    trained, losses, updates = _record(monkeypatch, steps=4)
    data = target_data("gmm")
    cfg = cs.ConsistencyConfig(s0=3, s1=9, mu0=0.9, batch=4, train=TrainConfig(steps=4))
    cs.consistency_training(MLPDenoiser(hidden=8, depth=2), data, tmp_path, cfg, meta={"teacher": "none"})
    (run,) = trained
    assert run["resume"] is False and run["desc"] == "consistency (ct)"
    ns = [cs.ct_steps(k, 4, 3, 9) for k in range(4)]
    assert len(set(ns)) > 2  # the grid grows within the run
    assert updates == pytest.approx([cs.ct_mu(n, 3, 0.9) for n in ns[1:]])
    s = run["model"].student.schedule
    g = torch.Generator().manual_seed(0)
    for n, call in zip(ns, losses, strict=True):
        x0, cond, eps, t_lo, t_hi = _draws(data, cs.karras_times(s, n, cfg.sigma_min, cfg.sigma_max, cfg.rho), 4, g)
        assert call["teacher"] is None and call["weight"] is None and call["cond"] is None
        assert torch.equal(call["x0"], x0) and torch.equal(call["t_lo"], t_lo) and torch.equal(call["t_hi"], t_hi)
    assert read_meta(tmp_path / "student")["method"] == "consistency-ct"
    assert read_meta(tmp_path / "student")["teacher"] == "none"


def test_the_trainer_refuses_unknown_settings_and_defaults_its_config(tmp_path, monkeypatch):
    trained, losses, _ = _record(monkeypatch, steps=1)
    data = target_data("gmm")
    with pytest.raises(ValueError, match="unknown solver 'rk4'"):
        cs.consistency_training(MLPDenoiser(hidden=8, depth=2), data, tmp_path, cs.ConsistencyConfig(solver="rk4"))
    with pytest.raises(ValueError, match="unknown weighting 'snr'"):
        cs.consistency_training(MLPDenoiser(hidden=8, depth=2), data, tmp_path / "w",
                                cs.ConsistencyConfig(weighting="snr", train=TrainConfig(steps=1)))
    cs.consistency_distill(gmm_target().float(), MLPDenoiser(hidden=8, depth=2), data, tmp_path / "d")
    assert trained[-1]["cfg"] == cs.ConsistencyConfig().train and trained[-1]["resume"] is False
    assert losses[-1]["solver"] == "heun" and losses[-1]["weight"] is None
    assert read_meta(tmp_path / "d" / "student")["config"]["n_steps"] == 18
