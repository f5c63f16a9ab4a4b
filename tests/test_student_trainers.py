"""The progressive and shortcut trainers by value: what each training step draws and passes to its loss (the losses
themselves are tested by hand in test_student_pieces / test_student_losses), the rounds and what they save, with the
training loop replaced by a recorder."""

from __future__ import annotations

import pytest
import torch

from priorkit.distill.core.schedule import VE, VPCosine
from priorkit.distill.core.training import TrainConfig
from priorkit.distill.students import progressive as pd
from priorkit.distill.students import shortcut as sc
from priorkit.distill.students.format import read_meta
from priorkit.distill.zoo.toy import MLPDenoiser, gmm_target, target_data


def _recording_train(calls: list[dict], steps: int = 3):  # noqa: ANN202
    """A stand-in for `train`: calls the loss function ``steps`` times with a seeded generator and returns the
    model unchanged as its "EMA"."""

    def fake_train(model, loss_fn, cfg, out, *, resume=False, desc="", **kw):  # noqa: ANN001, ANN202
        g = torch.Generator().manual_seed(0)
        calls.append({"model": model, "out": out, "resume": resume, "desc": desc, "cfg": cfg,
                      "losses": [loss_fn(model, step, g) for step in range(steps)]})
        return model, [{"loss": 0.0}]

    return fake_train


# ---- progressive -----------------------------------------------------------------------------------------
def test_round_times_nest_the_teachers_two_steps_in_one_student_step():
    fine = torch.linspace(1.0, 0.0, 9, dtype=torch.float64)  # 8 teacher steps
    for n_student, want in ((4, [(0, 1, 2), (2, 3, 4), (4, 5, 6), (6, 7, 8)]), (2, [(0, 2, 4), (4, 6, 8)]),
                            (1, [(0, 4, 8)])):
        t, mid, nxt = pd.round_times(fine, n_student, torch.arange(n_student))
        got = [tuple(round(float(v) * 8) for v in row) for row in zip(t, mid, nxt, strict=True)]
        assert got == [(8 - a, 8 - b, 8 - c) for a, b, c in want], (n_student, got)


def test_a_progressive_round_draws_its_batch_and_passes_it_on(monkeypatch, tmp_path):
    seen = []

    def loss(model, teacher, x0, eps, t, t_mid, t_next, cond, weighting):  # noqa: ANN001, ANN202
        seen.append(dict(model=model, teacher=teacher, x0=x0, eps=eps, t=t, t_mid=t_mid, t_next=t_next, cond=cond,
                         weighting=weighting))
        return torch.zeros(())

    calls: list[dict] = []
    monkeypatch.setattr(pd, "progressive_loss", loss)
    monkeypatch.setattr(pd, "train", _recording_train(calls))
    teacher, student = gmm_target().float(), MLPDenoiser(hidden=8, depth=2)
    fine = pd.teacher_grid(teacher.schedule, 8)
    cfg = pd.ProgressiveConfig(start_steps=8, batch=64, weighting="none")
    base = target_data("gmm", conditional=True)
    data = lambda n, g: (lambda x, c: (x.double(), c))(*base(n, g))  # noqa: E731  (float64: eps must follow)
    pd._round(teacher, student, data, fine, 4, tmp_path, cfg, resume=False)
    assert len(seen) == 3 and calls[0]["desc"] == "progressive -> 4 steps" and calls[0]["cfg"] is cfg.train
    g = torch.Generator().manual_seed(0)
    x0, cond = data(64, g)  # the first step's draws, in order: data, student step, noise
    i = torch.randint(0, 4, (64,), generator=g)
    eps = torch.randn(x0.shape, generator=g, dtype=x0.dtype)
    first = seen[0]
    assert first["model"] is student and first["teacher"] is teacher and first["weighting"] == "none"
    assert torch.equal(first["x0"], x0) and torch.equal(first["eps"], eps) and torch.equal(first["cond"], cond)
    assert first["eps"].dtype == torch.float64
    t, mid, nxt = pd.round_times(fine, 4, i)
    assert torch.equal(first["t"], t) and torch.equal(first["t_mid"], mid) and torch.equal(first["t_next"], nxt)
    assert len(set(i.tolist())) == 4  # every student step is drawn


def test_progressive_rounds_chain_teachers_save_students_and_skip_finished_rounds(monkeypatch, tmp_path):
    rounds = []

    grids = []

    def fake_round(teacher, student, data, fine, n_student, folder, cfg, resume):  # noqa: ANN001, ANN202
        rounds.append((teacher, student, n_student, folder.name, resume))
        grids.append(fine)
        with torch.no_grad():
            for p in student.parameters():
                p.add_(1.0)  # a "trained" student, told apart from its start
        return student

    monkeypatch.setattr(pd, "_round", fake_round)
    teacher = MLPDenoiser(hidden=8, depth=2)
    cfg = pd.ProgressiveConfig(start_steps=8, end_steps=1, spacing="logsnr")
    result = pd.progressive_distill(teacher, teacher, target_data("gmm"), tmp_path, cfg, meta={"teacher": "x"})
    assert [(n, name) for _, _, n, name, _ in rounds] == [(4, "steps_4"), (2, "steps_2"), (1, "steps_1")]
    assert all(torch.equal(f, pd.teacher_grid(teacher.schedule, 8, "logsnr")) for f in grids)  # the config's grid
    assert rounds[0][0] is teacher and rounds[0][1] is not teacher  # round 1 trains a copy of the given student
    for (_, s_prev, _, _, _), (t_next, _, _, _, _) in zip(rounds[:-1], rounds[1:], strict=True):  # teacher: last
        assert all(torch.equal(a, b) for a, b in zip(t_next.parameters(), s_prev.parameters(), strict=True))
    assert not any(p.requires_grad for p in result.parameters()) and not result.training
    start = dict(teacher.named_parameters())
    assert all(torch.allclose(v, start[k] + 3.0) for k, v in result.named_parameters())  # three rounds of +1
    meta = read_meta(tmp_path / "steps_2" / "student")
    assert (meta["method"], meta["sampler"], meta["steps"], meta["start_steps"], meta["spacing"], meta["teacher"]) \
        == ("progressive", "ddim", 2, 8, "logsnr", "x")
    assert meta["config"]["end_steps"] == 1
    rounds.clear()  # resume: the saved rounds are loaded, not trained again; the unfinished one resumes
    import shutil

    shutil.rmtree(tmp_path / "steps_1" / "student")
    again = pd.progressive_distill(teacher, teacher, target_data("gmm"), tmp_path, cfg, resume=True)
    assert [(n, r) for _, _, n, _, r in rounds] == [(1, True)]
    assert all(torch.equal(a, b) for a, b in zip(again.parameters(), result.parameters(), strict=True))
    rounds.clear()  # not resumed: every round trains again, whatever the folder holds
    pd.progressive_distill(teacher, teacher, target_data("gmm"), tmp_path, cfg)
    assert [(n, r) for _, _, n, _, r in rounds] == [(4, False), (2, False), (1, False)]
    with pytest.raises(ValueError, match="^end_steps must divide start_steps$"):
        pd.progressive_distill(teacher, teacher, target_data("gmm"), tmp_path, pd.ProgressiveConfig(end_steps=3))
    with pytest.raises(ValueError, match="^end_steps must divide start_steps$"):
        pd.progressive_distill(teacher, teacher, target_data("gmm"), tmp_path, pd.ProgressiveConfig(end_steps=0))


def test_a_round_resumes_only_when_asked_and_its_checkpoint_exists(monkeypatch, tmp_path):
    calls: list[dict] = []
    monkeypatch.setattr(pd, "train", _recording_train(calls, steps=0))
    teacher = gmm_target().float()
    fine = pd.teacher_grid(teacher.schedule, 4)
    cfg = pd.ProgressiveConfig(start_steps=4)
    (tmp_path / "b" / "checkpoint").mkdir(parents=True)
    for folder, resume in (("a", True), ("b", False), ("b", True)):
        pd._round(teacher, MLPDenoiser(hidden=8, depth=2), target_data("gmm"), fine, 2, tmp_path / folder, cfg,
                  resume)
    assert [c["resume"] for c in calls] == [False, False, True]
    assert [c["out"] for c in calls] == [tmp_path / "a", tmp_path / "b", tmp_path / "b"]


# ---- shortcut --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("total", [1.0, 0.9946])
def test_shortcut_times_by_hand(total):
    t, d = sc.shortcut_times(512, 200, 5, total, torch.Generator().manual_seed(1))
    g = torch.Generator().manual_seed(1)
    k = torch.randint(0, 5, (512,), generator=g)
    u = torch.rand(512, generator=g, dtype=torch.float64)
    want_d = total / 2.0 ** k.double()
    torch.testing.assert_close(d, want_d, rtol=0, atol=0)
    torch.testing.assert_close(t[:200], want_d[:200] + (total - want_d[:200]) * u[:200], rtol=1e-15, atol=0)
    torch.testing.assert_close(t[200:], (1e-4 + (1 - 1e-4) * u[200:]) * total, rtol=1e-15, atol=0)
    assert t.dtype == d.dtype == torch.float64 and set(k.tolist()) == set(range(5))
    assert bool((t[:200] - d[:200] >= 0).all()) and bool((t <= total).all())


def test_a_shortcut_step_draws_its_batch_and_passes_it_on(monkeypatch, tmp_path):
    seen = []

    def loss(m, target, x0, eps, t, d, n_sc, d_min, *, cond=None, teacher=None):  # noqa: ANN001, ANN202
        seen.append(dict(m=m, target=target, x0=x0, eps=eps, t=t, d=d, n_sc=n_sc, d_min=d_min, cond=cond,
                         teacher=teacher))
        return torch.zeros(())

    calls: list[dict] = []
    monkeypatch.setattr(sc, "shortcut_loss", loss)
    monkeypatch.setattr(sc, "train", _recording_train(calls))
    schedule = VPCosine()  # t_max = 0.9946: the span is the schedule's, not 1
    student = MLPDenoiser(schedule, hidden=8, depth=2, extras=("d",), num_classes=8)
    teacher = MLPDenoiser(schedule, hidden=8, depth=2)
    base = target_data("gmm", conditional=True)
    data = lambda n, g: (lambda x, c: (x.double(), c))(*base(n, g))  # noqa: E731  (float64: eps must follow)
    cfg = sc.ShortcutConfig(batch=40, levels=4, sc_fraction=0.3, target_decay=0.0)
    sc.shortcut_train(student, data, tmp_path, cfg, teacher=teacher, meta={"teacher": "x"})
    trainee = calls[0]["model"]
    assert trainee.target is None and calls[0]["desc"] == "shortcut"
    g = torch.Generator().manual_seed(0)
    x0, cond = data(40, g)
    t, d = sc.shortcut_times(40, 12, 4, schedule.t_max, g)  # round(0.3 * 40) = 12 self-consistency rows
    eps = torch.randn(x0.shape, generator=g, dtype=x0.dtype)
    first = seen[0]
    assert first["m"] is trainee and first["target"] is trainee.student and first["n_sc"] == 12
    assert first["d_min"] == pytest.approx(schedule.t_max / 16) and first["teacher"] is teacher
    assert not any(p.requires_grad for p in teacher.parameters())
    for name, want in (("x0", x0), ("eps", eps), ("t", t), ("d", d), ("cond", cond)):
        assert torch.equal(first[name], want), name
    assert first["eps"].dtype == torch.float64
    meta = read_meta(tmp_path / "student")
    assert (meta["method"], meta["sampler"], meta["levels"], meta["teacher"]) == ("shortcut", "shortcut", 4, "x")
    assert meta["config"]["sc_fraction"] == 0.3


def test_the_shortcut_target_is_an_ema_updated_from_the_second_step(monkeypatch, tmp_path):
    targets = []

    def loss(m, target, *a, **k):  # noqa: ANN001, ANN002, ANN003, ANN202
        targets.append({n: p.clone() for n, p in target.named_parameters()})
        with torch.no_grad():
            for p in m.student.parameters():
                p.add_(1.0)  # the student moves by 1 every step
        return torch.zeros(())

    calls: list[dict] = []
    monkeypatch.setattr(sc, "shortcut_loss", loss)
    monkeypatch.setattr(sc, "train", _recording_train(calls))
    student = MLPDenoiser(VE(0.01, 2.0), hidden=8, depth=2, extras=("d",))
    start = {n: p.clone() for n, p in student.named_parameters()}
    sc.shortcut_train(student, target_data("gmm"), tmp_path, sc.ShortcutConfig(batch=8, target_decay=0.75))
    trainee = calls[0]["model"]
    assert trainee.target is not None and trainee.target is not trainee.student
    # step 0: the target is the start; step 1: 0.75 start + 0.25 (start + 1); step 2: 0.75 step1 + 0.25 (start + 2)
    for step, offset in ((0, 0.0), (1, 0.25), (2, 0.75 * 0.25 + 0.25 * 2.0)):
        assert all(torch.allclose(targets[step][n], start[n] + offset) for n in start), step


def test_shortcut_refuses_a_fraction_outside_zero_one(tmp_path):
    student = MLPDenoiser(hidden=8, depth=2, extras=("d",))
    for bad in (-0.1, 1.5):
        with pytest.raises(ValueError, match=rf"^sc_fraction must lie in \[0, 1\]; got {bad}$"):
            sc.shortcut_train(student, target_data("gmm"), tmp_path, sc.ShortcutConfig(sc_fraction=bad))
    assert not (tmp_path / "student").exists()


@pytest.mark.parametrize("fraction", [0.0, 1.0])
def test_shortcut_takes_all_or_no_self_consistency_rows(monkeypatch, tmp_path, fraction):
    seen = []
    monkeypatch.setattr(sc, "shortcut_loss", lambda m, tg, x0, eps, t, d, n_sc, *a, **k: (seen.append(n_sc),
                                                                                          torch.zeros(()))[1])
    monkeypatch.setattr(sc, "train", _recording_train([], steps=1))
    sc.shortcut_train(MLPDenoiser(hidden=8, depth=2, extras=("d",)), target_data("gmm"), tmp_path,
                      sc.ShortcutConfig(batch=10, sc_fraction=fraction))
    assert seen == [round(10 * fraction)]


def test_shortcut_train_passes_resume_on(monkeypatch, tmp_path):
    calls: list[dict] = []
    monkeypatch.setattr(sc, "shortcut_loss", lambda *a, **k: torch.zeros(()))
    monkeypatch.setattr(sc, "train", _recording_train(calls, steps=0))
    for resume in (False, True):
        sc.shortcut_train(MLPDenoiser(hidden=8, depth=2, extras=("d",)), target_data("gmm"), tmp_path,
                          sc.ShortcutConfig(train=TrainConfig(steps=1)), resume=resume)
    assert [c["resume"] for c in calls] == [False, True]


# ---- the bespoke solver's trainer ------------------------------------------------------------------------
def test_reference_pairs_are_the_teachers_heun_solves_chunk_by_chunk():
    from priorkit.distill.core.samplers import initial_noise, sample
    from priorkit.distill.students import bespoke as bs
    from priorkit.distill.zoo.toy import conditional_gmm_target

    teacher = conditional_gmm_target().float()
    data = target_data("gmm", conditional=True)
    z, x, cond = bs.reference_pairs(teacher, 5, 6, data, seed=3, chunk=3)
    g = torch.Generator().manual_seed(3)  # per chunk: its conditions, then its noise
    want_z, want_x, want_c = [], [], []
    for m in (3, 2):
        c = data(m, g)[1]
        zz = initial_noise(teacher, (m, 2), generator=g)
        want_x.append(sample(teacher, zz, steps=6, solver="heun", spacing="karras", cond=c))
        want_z.append(zz)
        want_c.append(c)
    assert torch.equal(z, torch.cat(want_z)) and torch.equal(cond, torch.cat(want_c))
    torch.testing.assert_close(x, torch.cat(want_x), rtol=0, atol=0)
    z2, _, none = bs.reference_pairs(gmm_target().float(), 4, 2, None, seed=3)
    assert none is None and z2.shape == (4, 2)


def _bespoke_cfg(steps: int, **kw):  # noqa: ANN202
    from priorkit.distill.students import bespoke as bs

    return bs.BespokeConfig(**{"nfe": 2, "trajectories": 16, "ref_steps": 4, "batch": 8, "save_every": 2,
                               "train": TrainConfig(steps=steps, lr=1e-2, warmup=0, ema_decay=0.0), **kw})


def _record_saves(monkeypatch) -> list[int]:  # noqa: ANN001
    """The iterations at which the bespoke trainer saves its solver (the files are still written)."""
    from priorkit.distill.students import bespoke as bs

    saved: list[int] = []
    real_save = bs.BespokeSolver.save
    monkeypatch.setattr(bs.BespokeSolver, "save", lambda self, path, **m: (saved.append(m["iteration"]),
                                                                             real_save(self, path, **m))[1])
    return saved


def test_bespoke_train_saves_on_its_cadence_and_resumes_from_the_saved_iteration(tmp_path, monkeypatch):
    import json

    from priorkit.distill.core.samplers.bespoke import load_bespoke
    from priorkit.distill.students import bespoke as bs

    teacher = gmm_target().float()
    saved = _record_saves(monkeypatch)
    first = bs.bespoke_train(teacher, tmp_path, _bespoke_cfg(5), meta={"teacher": "x"})
    assert saved == [2, 4, 5]  # every save_every iterations and at the end
    info = json.loads((tmp_path / "bespoke.json").read_text())
    assert info["iteration"] == 5 and info["teacher"] == "x" and info["config"]["nfe"] == 2
    assert info["schedule"] == teacher.schedule.config() and info["train_rmse"] > 0 and info["seconds"] >= 0
    assert not any(p.requires_grad for p in first.parameters())
    saved.clear()  # longer, resumed: iterations 5..7 only, starting from the saved solver
    seen, loaded = [], []
    real_rmse = bs.rmse
    monkeypatch.setattr(bs, "rmse", lambda x, y: (seen.append(1), real_rmse(x, y))[1])
    monkeypatch.setattr(bs, "load_bespoke", lambda path: (loaded.append(load_bespoke(path)), loaded[-1])[1])
    at_five = {k: v.clone() for k, v in load_bespoke(tmp_path / "bespoke.json").state_dict().items()}
    resumed = bs.bespoke_train(teacher, tmp_path, _bespoke_cfg(8), resume=True)
    assert len(seen) == 3 and saved == [6, 8] and len(loaded) == 1
    assert resumed is loaded[0]  # trained on from the loaded solver, not a fresh one
    assert all(torch.equal(v, at_five[k]) for k, v in first.state_dict().items())  # the file held the result
    seen.clear()  # not resumed: a fresh solver, all 8 iterations, nothing loaded
    bs.bespoke_train(teacher, tmp_path / "b", _bespoke_cfg(8))
    assert len(seen) == 8 and len(loaded) == 1
    assert load_bespoke(tmp_path / "bespoke.json").nfe == 2
    seen.clear()  # a finished run resumed again: no iteration, the file kept
    bs.bespoke_train(teacher, tmp_path, _bespoke_cfg(8), resume=True)
    assert seen == [] and json.loads((tmp_path / "bespoke.json").read_text())["iteration"] == 8


def test_bespoke_train_fits_only_the_solver_on_its_loss(tmp_path):
    from priorkit.distill.core.samplers import predict_fn
    from priorkit.distill.core.samplers.bespoke import BespokeSolver
    from priorkit.distill.students import bespoke as bs

    torch.manual_seed(0)
    teacher = MLPDenoiser(hidden=8, depth=2)
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    cfg = _bespoke_cfg(1, variant="ns", batch=64)  # batch > trajectories: every trajectory, in a random order
    solver = bs.bespoke_train(teacher, tmp_path, cfg)
    assert all(torch.equal(v, before[k]) for k, v in teacher.state_dict().items())
    z, x_ref, _ = bs.reference_pairs(teacher, 16, 4, None, seed=0)
    g = torch.Generator().manual_seed(1)
    idx = torch.randint(16, (16,), generator=g)
    start = BespokeSolver(2, "ns", t_max=float(teacher.schedule.t_max)).requires_grad_(True)
    opt = torch.optim.Adam(start.parameters(), lr=1e-2)
    bs.rmse(start(predict_fn(teacher, None), z[idx]), x_ref[idx]).backward()
    opt.step()
    for k, v in solver.state_dict().items():  # one Adam step on the batch's RMSE, by hand
        torch.testing.assert_close(v, start.state_dict()[k])


def test_bespoke_distill_saves_a_student_of_a_network_and_only_the_file_for_an_exact_teacher(tmp_path):
    from priorkit.distill.students import bespoke as bs
    from priorkit.distill.students.runner import CFGDenoiser

    torch.manual_seed(0)
    net = MLPDenoiser(hidden=8, depth=2, num_classes=8)
    teacher = CFGDenoiser(net, 2.5)
    out = bs.bespoke_distill(teacher, teacher, target_data("gmm", conditional=True), tmp_path / "a", _bespoke_cfg(2),
                             meta={"teacher": "x"})
    assert out is teacher
    meta = read_meta(tmp_path / "a" / "student")
    assert (meta["method"], meta["sampler"], meta["guidance"], meta["steps"], meta["teacher"]) == (
        "bespoke", "bespoke", 2.5, 2, "x")
    assert meta["solver"]["nfe"] == 2 and meta["solver"]["kind"] == "bespoke"
    exact = gmm_target().float()
    assert bs.bespoke_distill(exact, exact, target_data("gmm"), tmp_path / "b", _bespoke_cfg(2)) is exact
    assert (tmp_path / "b" / "bespoke.json").is_file() and not (tmp_path / "b" / "student").exists()


def test_bespoke_distill_passes_conditions_resume_and_meta_on(monkeypatch, tmp_path):
    from priorkit.distill.core.samplers.bespoke import BespokeSolver
    from priorkit.distill.students import bespoke as bs

    seen = []
    monkeypatch.setattr(bs, "bespoke_train", lambda teacher, out, cfg, *, data=None, resume=False, meta=None: (
        seen.append({"data": data, "resume": resume, "meta": meta}), BespokeSolver(2))[1])
    torch.manual_seed(0)
    plain = MLPDenoiser(hidden=8, depth=2)
    conditional = target_data("gmm", conditional=True)
    bs.bespoke_distill(plain, plain, conditional, tmp_path / "a", _bespoke_cfg(2), resume=True, meta={"m": 1})
    bs.bespoke_distill(plain, plain, target_data("gmm"), tmp_path / "b", _bespoke_cfg(2))
    assert seen[0]["data"] is conditional and seen[0]["resume"] is True and seen[0]["meta"] == {"m": 1}
    assert seen[1]["data"] is None and seen[1]["resume"] is False  # unconditional data: no conditions to draw
    assert read_meta(tmp_path / "b" / "student")["guidance"] == 1.0  # no CFG wrapper: scale 1


def test_bespoke_train_starts_afresh_unless_resumed_and_fits_the_teachers_range(tmp_path, monkeypatch):
    import json

    from priorkit.distill.students import bespoke as bs

    teacher = gmm_target(VPCosine()).float()  # t_max = 0.9946: the solver integrates from the teacher's start
    solver = bs.bespoke_train(teacher, tmp_path, _bespoke_cfg(2))
    assert solver.t_max == pytest.approx(VPCosine().t_max)
    seen = []
    real_rmse = bs.rmse
    monkeypatch.setattr(bs, "rmse", lambda x, y: (seen.append(1), real_rmse(x, y))[1])
    bs.bespoke_train(teacher, tmp_path, _bespoke_cfg(3))  # a file is there, but no resume: all 3 iterations
    assert len(seen) == 3
    info = json.loads((tmp_path / "bespoke.json").read_text())
    del info["iteration"]  # a file without an iteration count resumes from the start
    (tmp_path / "bespoke.json").write_text(json.dumps(info))
    seen.clear()
    bs.bespoke_train(teacher, tmp_path, _bespoke_cfg(3), resume=True)
    assert len(seen) == 3


def test_bespoke_train_draws_its_reference_conditions_from_the_data(monkeypatch, tmp_path):
    from priorkit.distill.students import bespoke as bs

    seen = []
    real = bs.reference_pairs
    monkeypatch.setattr(bs, "reference_pairs", lambda *a, **k: (seen.append(a[3]), real(*a, **k))[1])
    data = target_data("gmm", conditional=True)
    from priorkit.distill.zoo.toy import conditional_gmm_target

    bs.bespoke_train(conditional_gmm_target().float(), tmp_path, _bespoke_cfg(1), data=data)
    assert seen == [data]


def test_bespoke_train_fits_each_batch_under_its_own_conditions(monkeypatch, tmp_path):
    from priorkit.distill.students import bespoke as bs
    from priorkit.distill.zoo.toy import conditional_gmm_target

    teacher = conditional_gmm_target().float()
    data = target_data("gmm", conditional=True)
    conds = []
    real = bs.predict_fn
    monkeypatch.setattr(bs, "predict_fn", lambda den, cond: (conds.append(cond), real(den, cond))[1])
    bs.bespoke_train(teacher, tmp_path, _bespoke_cfg(2), data=data)
    _, _, all_conds = bs.reference_pairs(teacher, 16, 4, data, seed=0)
    g = torch.Generator().manual_seed(1)  # the trainer's batch draws
    assert len(conds) == 2  # one per training step
    for cond in conds:
        idx = torch.randint(16, (8,), generator=g)
        assert cond is not None and torch.equal(cond, all_conds[idx])


def test_bespoke_train_save_cadence_timing_and_a_run_of_no_steps(tmp_path, monkeypatch):
    import json

    from priorkit.distill.students import bespoke as bs

    teacher = gmm_target().float()
    saved = _record_saves(monkeypatch)
    bs.bespoke_train(teacher, tmp_path / "a", _bespoke_cfg(5, save_every=3))
    assert saved == [3, 5]
    assert 0 <= json.loads((tmp_path / "a" / "bespoke.json").read_text())["seconds"] < 3600
    saved.clear()  # no training steps: the untrained solver is still written, with its iteration and settings
    bs.bespoke_train(teacher, tmp_path / "b", _bespoke_cfg(0), meta={"teacher": "x"})
    info = json.loads((tmp_path / "b" / "bespoke.json").read_text())
    assert saved == [0] and info["iteration"] == 0 and info["teacher"] == "x" and info["config"]["nfe"] == 2


def test_bespoke_train_shows_its_progress_in_iterations_with_the_rmse(tmp_path, capsys):
    from priorkit.distill.students import bespoke as bs

    teacher = gmm_target().float()
    bs.bespoke_train(teacher, tmp_path, _bespoke_cfg(3))
    err = capsys.readouterr().err
    assert "bespoke solver, 2 NFE" in err and "0/3" in err and "rmse=" in err
    bs.bespoke_train(teacher, tmp_path, _bespoke_cfg(5), resume=True)  # resumed: counts on from the saved iteration
    err = capsys.readouterr().err
    assert "3/5" in err and "0/5" not in err and "/2 " not in err


def test_shapes_training_data_carries_captions_unless_unconditional():
    from priorkit.distill.students.runner import image_data

    class Encoder:  # records what the teacher is asked to encode
        def __init__(self):
            self.texts = []

        def encode(self, texts):
            self.texts.append(list(texts))
            return torch.ones(len(texts), 2)

    teacher = Encoder()
    x, c = image_data(teacher, "shapes", n=8)(4, torch.Generator().manual_seed(0))
    assert x.shape == (4, 3, 32, 32) and c.shape == (4, 2) and len(teacher.texts) == 1 and len(teacher.texts[0]) == 4
    teacher = Encoder()
    x, c = image_data(teacher, "shapes", n=8, unconditional=True)(4, torch.Generator().manual_seed(0))
    assert x.shape == (4, 3, 32, 32) and c is None and teacher.texts == []
