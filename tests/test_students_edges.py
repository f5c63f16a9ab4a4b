"""The students' trainers at the edges of their settings, by value: progressive distillation's grid on a schedule whose
t_min > 0, a shortcut batch without self-consistency rows on a UNet student (and one of only such rows with a UNet
teacher), a DMD run's progress bar and a run of no steps, reflow with no rounds before its one-step stage, resuming
a finished bespoke run, and the bespoke trainer leaving torch's global RNG alone."""

from __future__ import annotations

import json

import torch
from test_distill_methods import tiny_teacher

from priorkit.distill.core.schedule import VPLinear
from priorkit.distill.core.training import TrainConfig
from priorkit.distill.students import bespoke as bs
from priorkit.distill.students import dmd
from priorkit.distill.students import reflow as rf
from priorkit.distill.students.format import read_meta, unet_student_from_teacher
from priorkit.distill.students.progressive import student_grid, teacher_grid
from priorkit.distill.students.shortcut import shortcut_loss
from priorkit.distill.zoo.toy import MLPDenoiser, gmm_target, target_data

F64 = torch.float64


def test_progressive_grids_run_to_the_data_end_even_where_the_schedule_stops_sampling_earlier():
    """teacher_grid: t_max down to t = 0 (Salimans & Ho distil the whole path), not to the schedule's t_min."""
    s = VPLinear()
    assert s.t_min == 1e-3
    grid = teacher_grid(s, 4, "time")
    assert grid.dtype == F64 and float(grid[-1]) == 0.0
    torch.testing.assert_close(grid, torch.tensor([1.0, 0.75, 0.5, 0.25, 0.0], dtype=F64), rtol=0, atol=1e-15)
    assert float(teacher_grid(s, 8, "logsnr")[-1]) == 0.0
    assert student_grid(s, 2, start_steps=4, spacing="time").tolist() == [1.0, 0.5, 0.0]


_tiny_unet_teacher = tiny_teacher  # test_distill_methods' tiny diffusers UNet (v-prediction, cosine DDPM)


def test_a_shortcut_batch_without_self_consistency_rows_is_flow_matching_on_every_row_of_a_unet_student():
    """sc_rows = 0 (e.g. sc_fraction 0): every row's target is the data velocity alpha' x0 + sigma' eps at d = 0,
    and no empty self-consistency batch reaches the UNet (whose attention cannot take one)."""
    student = unet_student_from_teacher(_tiny_unet_teacher(), ("d",))
    g = torch.Generator().manual_seed(5)
    x0, eps = torch.randn(3, 3, 8, 8, generator=g), torch.randn(3, 3, 8, 8, generator=g)
    states = torch.randn(3, 4, 16, generator=g)
    t, d = torch.tensor([0.2, 0.5, 0.9], dtype=F64), torch.tensor([0.5, 0.25, 0.5], dtype=F64)
    got = shortcut_loss(student, student, x0, eps, t, d, 0, 1 / 128, cond=states)
    s = student.schedule

    def per_row(v: torch.Tensor) -> torch.Tensor:
        return v.float()[:, None, None, None]

    x_t = per_row(s.alpha(t)) * x0 + per_row(s.sigma(t)) * eps
    with torch.no_grad():
        pred = student(x_t, t.float(), {"text": states, "d": torch.zeros(3)}).velocity
    want = (pred - (per_row(s.d_alpha(t)) * x0 + per_row(s.d_sigma(t)) * eps)).pow(2).mean()
    torch.testing.assert_close(got.detach(), want, rtol=1e-5, atol=1e-7)


def test_a_shortcut_batch_of_only_self_consistency_rows_runs_with_a_unet_teacher():
    """sc_rows = B (sc_fraction 1): no flow-matching row is left, so the teacher is not called on an empty batch (a
    UNet's attention cannot reshape one: this raised before); the loss is that of the self-consistency rows alone."""
    from priorkit.distill.students.shortcut import self_consistency_target

    teacher = _tiny_unet_teacher()
    student = unet_student_from_teacher(teacher, ("d",))
    g = torch.Generator().manual_seed(6)
    x0, eps = torch.randn(2, 3, 8, 8, generator=g), torch.randn(2, 3, 8, 8, generator=g)
    states = torch.randn(2, 4, 16, generator=g)
    t, d = torch.tensor([0.4, 0.8], dtype=F64), torch.tensor([0.25, 0.5], dtype=F64)
    got = shortcut_loss(student, student, x0, eps, t, d, 2, 1 / 128, cond=states, teacher=teacher)
    s = student.schedule
    x_t = s.alpha(t).float()[:, None, None, None] * x0 + s.sigma(t).float()[:, None, None, None] * eps
    with torch.no_grad():
        goal = self_consistency_target(student, x_t, t, d, 1 / 128, states)
        pred = student(x_t, t.float(), {"text": states, "d": d.float()}).velocity
    torch.testing.assert_close(got.detach(), (pred - goal).pow(2).mean(), rtol=1e-5, atol=1e-7)


def test_a_dmd_run_names_its_variant_and_steps_on_the_progress_bar(tmp_path, monkeypatch):
    seen = []

    def fake_train(model, loss_fn, cfg, out, *, resume=False, desc="train", params=None):  # noqa: ANN001, ANN202
        seen.append(desc)
        return model, [{"step": 1, "loss": 1.5}]

    monkeypatch.setattr(dmd, "train", fake_train)
    teacher = gmm_target().float()
    dmd.dmd_distill(teacher, MLPDenoiser(hidden=8, depth=2), target_data("gmm"), tmp_path / "a",
                    dmd.DMD2Config(steps=2, batch=4))
    dmd.dmd_distill(teacher, MLPDenoiser(hidden=8, depth=2), target_data("gmm"), tmp_path / "b",
                    dmd.DMDConfig(batch=4, regression=0.0))
    assert seen == ["dmd2 (2-step)", "dmd (1-step)"]
    assert read_meta(tmp_path / "a" / "student")["final_loss"] == 1.5  # the last logged loss


def test_a_dmd_run_of_no_steps_saves_its_starting_generator_without_a_final_loss(tmp_path):
    torch.manual_seed(0)
    student = MLPDenoiser(hidden=8, depth=2)
    start = {k: v.clone() for k, v in student.state_dict().items()}
    cfg = dmd.DMD2Config(batch=4, train=TrainConfig(steps=0))
    result = dmd.dmd_distill(gmm_target().float(), student, target_data("gmm"), tmp_path, cfg)
    meta = read_meta(tmp_path / "student")
    assert meta["final_loss"] is None and meta["method"] == "dmd2"
    assert all(torch.equal(v, start[k]) for k, v in result.state_dict().items())


def test_reflow_with_no_rounds_distils_the_teachers_own_one_step_map(tmp_path, monkeypatch):
    """rounds = 0, one_step_steps > 0: the couplings come from the teacher itself (with the conditions and the
    settings of the config, seeded train.seed + 0), and the one-step stage trains a copy of the caller's student."""
    made, trained = [], []

    def fake_couplings(teacher, n, **kw):  # noqa: ANN001, ANN202
        made.append({"teacher": teacher, "n": n, **kw, "seed": kw["generator"].initial_seed()})
        g = torch.Generator().manual_seed(1)
        return {"z": torch.randn(n, 2, generator=g), "x0": torch.randn(n, 2, generator=g)}

    def fake_train(model, loss_fn, cfg, out, *, resume=False, desc=""):  # noqa: ANN001, ANN202
        trained.append({"model": model, "out": out, "desc": desc, "steps": cfg.steps,
                        "loss": float(loss_fn(model, 0, torch.Generator().manual_seed(0)).detach())})
        with torch.no_grad():  # as a training would: the model's own parameters change in place
            for p in model.parameters():
                p.add_(1.0)
        return model, [{"loss": 0.0}]

    monkeypatch.setattr(rf, "make_couplings", fake_couplings)
    monkeypatch.setattr(rf, "train", fake_train)
    teacher = gmm_target().float()
    torch.manual_seed(0)
    student = MLPDenoiser(hidden=8, depth=2)
    start = {k: v.clone() for k, v in student.state_dict().items()}
    cfg = rf.ReflowConfig(rounds=0, pairs=6, teacher_steps=3, teacher_solver="heun", guidance=2.0, chunk=4, batch=4,
                          one_step_steps=2, train=TrainConfig(steps=9, seed=5))

    def conditions(n, g):  # noqa: ANN001, ANN202
        return None

    out = rf.reflow(teacher, student, tmp_path, cfg, conditions=conditions, meta={"teacher": "gmm"})
    (c,) = made
    assert c["teacher"] is teacher and c["n"] == 6 and c["seed"] == 5 and c["conditions"] is conditions
    assert (c["steps"], c["solver"], c["guidance"], c["chunk"]) == (3, "heun", 2.0, 4)
    (run,) = trained
    assert (run["out"], run["desc"], run["steps"]) == (tmp_path / "one_step", "reflow one-step", 2)
    assert run["model"] is not student and run["loss"] > 0
    assert all(torch.equal(v, start[k]) for k, v in student.state_dict().items())  # the caller's student is kept
    assert out is run["model"] and not out.training
    assert read_meta(tmp_path / "one_step" / "student")["method"] == "reflow-one-step"


def _bespoke_cfg() -> bs.BespokeConfig:
    return bs.BespokeConfig(nfe=2, trajectories=8, ref_steps=4, batch=4, save_every=1,
                            train=TrainConfig(steps=2, lr=1e-2, warmup=0, ema_decay=0.0))


def test_resuming_a_finished_bespoke_run_keeps_its_solver_file_as_it_was(tmp_path):
    teacher = gmm_target()
    trained = bs.bespoke_train(teacher, tmp_path, _bespoke_cfg())
    first = (tmp_path / bs.SOLVER_FILE).read_text()
    saved = json.loads(first)
    assert saved["iteration"] == 2 and "train_rmse" in saved and "seconds" in saved
    again = bs.bespoke_train(teacher, tmp_path, _bespoke_cfg(), resume=True)
    assert (tmp_path / bs.SOLVER_FILE).read_text() == first  # nothing left to train: nothing rewritten
    assert all(torch.equal(a, b) for a, b in zip(again.parameters(), trained.parameters(), strict=True))


def test_bespoke_distillation_hands_its_data_a_generator_and_leaves_the_global_rng_alone(tmp_path):
    """Every draw (the probe for conditions, the reference pairs, the batches) comes from the run's own seeded
    generators: a data function that draws from the generator it is given never touches torch's global RNG."""
    bank = torch.randn(64, 2, generator=torch.Generator().manual_seed(2))
    given = []

    def data(n, g):  # noqa: ANN001, ANN202
        given.append(g)
        return bank[torch.randint(64, (n,), generator=g)], None

    torch.manual_seed(3)
    before = torch.get_rng_state()
    teacher = gmm_target()
    assert bs.bespoke_distill(teacher, None, data, tmp_path, _bespoke_cfg()) is teacher
    assert torch.equal(torch.get_rng_state(), before)
    assert given and all(isinstance(g, torch.Generator) for g in given)
    assert json.loads((tmp_path / bs.SOLVER_FILE).read_text())["iteration"] == 2
