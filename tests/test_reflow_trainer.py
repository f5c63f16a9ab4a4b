"""The reflow trainer by value: the training times, the couplings' files, what each round draws and passes to its
loss, the rounds' teachers, the one-step stage and what every stage saves, with the training loop replaced by a
recorder (the losses themselves are tested by hand in test_student_losses)."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from priorkit.distill.core.training import TrainConfig
from priorkit.distill.students import reflow as rf
from priorkit.distill.students.format import read_meta
from priorkit.distill.zoo.toy import MLPDenoiser, gmm_target

F64 = torch.float64


def test_training_times_are_uniform_or_logit_normal_in_the_open_interval_scaled_by_t_max():
    g = torch.Generator().manual_seed(4)
    u = torch.rand(6, generator=g, dtype=F64)
    g = torch.Generator().manual_seed(4)
    t = rf.sample_times(6, g, 2.5)  # uniform by default
    assert t.dtype == F64
    torch.testing.assert_close(t, (1e-4 + (1 - 1e-4) * u) * 2.5, rtol=0, atol=1e-15)
    g = torch.Generator().manual_seed(4)
    n = torch.randn(6, generator=g, dtype=F64)
    g = torch.Generator().manual_seed(4)
    t = rf.sample_times(6, g, 0.5, "logit_normal")
    assert t.dtype == F64
    torch.testing.assert_close(t, (1e-4 + (1 - 1e-4) * torch.sigmoid(n)) * 0.5, rtol=0, atol=1e-15)
    g = torch.Generator().manual_seed(4)
    big = rf.sample_times(20000, g, 1.0, "logit_normal")
    assert 1e-4 <= float(big.min()) and float(big.max()) <= 1.0 and abs(float(big.mean()) - 0.5) < 0.01
    with pytest.raises(ValueError, match="unknown t_sampling 'beta'"):
        rf.sample_times(3, g, 1.0, "beta")


def _pairs(n: int, seed: int, cond: bool = True) -> dict:
    g = torch.Generator().manual_seed(seed)
    out = {"z": torch.randn(n, 2, generator=g), "x0": torch.randn(n, 2, generator=g)}
    if cond:
        out["cond"] = torch.arange(n) + 100 * seed
    return out


def test_couplings_are_made_once_saved_whole_and_reused(tmp_path, monkeypatch):
    calls = []

    def fake(teacher, n, **kw):  # noqa: ANN001, ANN202
        calls.append({"teacher": teacher, "n": n, **kw, "first": float(torch.rand(1, generator=kw["generator"]))})
        return _pairs(n, 1)

    monkeypatch.setattr(rf, "make_couplings", fake)
    cfg = rf.ReflowConfig(pairs=12, teacher_steps=7, teacher_solver="heun", guidance=2.5, chunk=5)
    teacher, conditions = object(), object()
    got = rf._couplings(teacher, tmp_path / "r", cfg, conditions, seed=9)
    (c,) = calls
    assert c["teacher"] is teacher and c["n"] == 12 and c["conditions"] is conditions
    assert (c["steps"], c["solver"], c["guidance"], c["chunk"]) == (7, "heun", 2.5, 5)
    assert c["first"] == float(torch.rand(1, generator=torch.Generator().manual_seed(9)))  # seeded with `seed`
    assert sorted(p.name for p in (tmp_path / "r").iterdir()) == ["couplings.safetensors"]  # no temporary left
    saved = load_file(str(tmp_path / "r" / "couplings.safetensors"))
    assert all(torch.equal(saved[k], got[k]) for k in ("z", "x0", "cond"))
    again = rf._couplings(teacher, tmp_path / "r", cfg, conditions, seed=9)  # reused, not made again
    assert len(calls) == 1 and all(torch.equal(again[k], got[k]) for k in got)
    rf._couplings(teacher, tmp_path / "new" / "deeper", cfg, conditions, seed=9)  # its parents made as needed
    (tmp_path / "kept").mkdir()  # a round folder that exists already (a checkpoint in it) is written into
    rf._couplings(teacher, tmp_path / "kept", cfg, conditions, seed=9)
    assert (tmp_path / "new" / "deeper" / "couplings.safetensors").is_file()
    assert (tmp_path / "kept" / "couplings.safetensors").is_file() and len(calls) == 3
    monkeypatch.setattr(rf, "is_main_process", lambda: False)  # other processes make their own, write nothing
    rf._couplings(teacher, tmp_path / "deep" / "other", cfg, conditions, seed=9)
    assert len(calls) == 4 and not (tmp_path / "deep").exists()


def _recording(calls: list[dict], steps: int = 2):  # noqa: ANN202
    def fake_train(model, loss_fn, cfg, out, *, resume=False, desc="", **kw):  # noqa: ANN001, ANN202
        g = torch.Generator().manual_seed(0)
        calls.append({"model": model, "grad": all(p.requires_grad for p in model.parameters()),
                      "state": {k: v.clone() for k, v in model.state_dict().items()},
                      "training": model.training, "out": out, "resume": resume, "desc": desc, "steps": cfg.steps,
                      "losses": [loss_fn(model, k, g) for k in range(steps)]})
        with torch.no_grad():  # as a training would: the model's own parameters change in place
            for p in model.parameters():
                p.add_(1.0)
        return model, [{"loss": 0.0}]

    return fake_train


def test_rounds_chain_their_teachers_and_the_one_step_stage_reuses_the_last_couplings(tmp_path, monkeypatch):
    made, trained = [], []

    def fake_couplings(teacher, n, **kw):  # noqa: ANN001, ANN202
        made.append({"teacher": teacher, "seed": int(kw["generator"].initial_seed()), "conditions": kw["conditions"]})
        return _pairs(n, len(made))

    monkeypatch.setattr(rf, "make_couplings", fake_couplings)
    monkeypatch.setattr(rf, "train", _recording(trained))
    losses = []
    monkeypatch.setattr(rf, "reflow_loss", lambda m, x0, z, t, cond: losses.append(("flow", x0, z, t, cond)) or 0.0)
    monkeypatch.setattr(rf, "one_step_loss", lambda m, x0, z, cond: losses.append(("one", x0, z, None, cond)) or 0.0)
    teacher, student = gmm_target().float(), MLPDenoiser(hidden=8, depth=2)
    student_start = {k: v.clone() for k, v in student.state_dict().items()}  # the caller's student stays as it was
    cfg = rf.ReflowConfig(rounds=2, pairs=10, batch=4, t_sampling="logit_normal", one_step_steps=1,
                          train=TrainConfig(steps=5, seed=7))
    conditions = object()
    out = rf.reflow(teacher, student, tmp_path, cfg, conditions=conditions, meta={"teacher": "gmm"})

    # couplings: round r seeded train.seed + r, by the previous round's student; the one-step stage makes none
    assert [m["seed"] for m in made] == [8, 9] and all(m["conditions"] is conditions for m in made)
    assert made[0]["teacher"] is teacher and made[1]["teacher"] is trained[0]["model"]
    # three trainings: the rounds on their own copies (trainable, train mode), then the one-step map
    assert [c["out"].name for c in trained] == ["round_1", "round_2", "one_step"]
    assert [c["desc"] for c in trained] == ["reflow round_1", "reflow round_2", "reflow one-step"]
    assert [c["steps"] for c in trained] == [5, 5, 1] and not any(c["resume"] for c in trained)
    assert all(c["grad"] and c["training"] for c in trained)
    assert trained[0]["model"] is not student and trained[1]["model"] is not trained[0]["model"]
    assert all(torch.equal(a, b) for a, b in zip(trained[0]["state"].values(), student_start.values(), strict=True))
    assert all(torch.equal(a, b) for a, b in zip(student.state_dict().values(), student_start.values(), strict=True))
    assert all(torch.equal(a, b + 1.0) for a, b in zip(trained[1]["state"].values(), trained[0]["state"].values(),
                                                       strict=True))  # round 2 starts from round 1's result
    assert out is trained[2]["model"] and not out.training and not any(p.requires_grad for p in out.parameters())

    # each loss call: the batch rows drawn from the run's generator, the rows' conditions, the times
    g = torch.Generator().manual_seed(0)
    assert len(losses) == 6  # two steps of each of the three stages
    for k, (kind, x0, z, t, cond) in enumerate(losses):
        stage = k // 2
        pairs = _pairs(10, min(stage + 1, 2))  # the one-step stage trains on round 2's couplings
        if k % 2 == 0:
            g = torch.Generator().manual_seed(0)
        idx = torch.randint(0, 10, (4,), generator=g)
        assert kind == ("one" if stage == 2 else "flow")
        assert torch.equal(x0, pairs["x0"][idx]) and torch.equal(z, pairs["z"][idx])
        assert torch.equal(cond, pairs["cond"][idx])
        if kind == "flow":
            torch.testing.assert_close(t, rf.sample_times(4, g, 1.0, "logit_normal"), rtol=0, atol=0)

    # what each stage saved
    for r in (1, 2):
        meta = read_meta(tmp_path / f"round_{r}" / "student")
        assert (meta["method"], meta["round"], meta["sampler"], meta["teacher"]) == ("reflow", r, "ddim", "gmm")
        assert meta["config"]["rounds"] == 2 and meta["config"]["t_sampling"] == "logit_normal"
        assert (tmp_path / f"round_{r}" / "couplings.safetensors").is_file()
    meta = read_meta(tmp_path / "one_step" / "student")
    assert (meta["method"], meta["sampler"], meta["steps"], meta["teacher"]) == ("reflow-one-step", "ddim", 1, "gmm")
    assert meta["config"]["one_step_steps"] == 1 and not (tmp_path / "one_step" / "couplings.safetensors").exists()
    trained.clear()  # one_step_steps = 0: no one-step stage
    rf.reflow(teacher, student, tmp_path / "none", rf.ReflowConfig(rounds=1, pairs=10, batch=4,
                                                                  train=TrainConfig(steps=1)))
    assert [c["out"].name for c in trained] == ["round_1"] and not (tmp_path / "none" / "one_step").exists()


def test_a_resumed_reflow_keeps_finished_stages_and_resumes_a_checkpointed_one(tmp_path, monkeypatch):
    made, trained = [], []
    monkeypatch.setattr(rf, "make_couplings", lambda teacher, n, **kw: made.append(1) or _pairs(n, 1, cond=False))
    monkeypatch.setattr(rf, "train", _recording(trained, steps=1))
    teacher, student = gmm_target().float(), MLPDenoiser(hidden=8, depth=2)
    cfg = rf.ReflowConfig(rounds=2, pairs=10, batch=4, one_step_steps=2, train=TrainConfig(steps=3))
    rf.reflow(teacher, student, tmp_path, cfg)
    assert len(made) == 2 and len(trained) == 3
    made.clear(), trained.clear()
    loaded = []
    real_load = rf.load_student
    monkeypatch.setattr(rf, "load_student", lambda path: loaded.append(path) or real_load(path))
    again = rf.reflow(teacher, student, tmp_path, cfg, resume=True)  # everything done: loaded, nothing trained
    assert made == [] and trained == [] and loaded[-1] == tmp_path / "one_step" / "student"
    assert loaded == [tmp_path / "round_1" / "student", tmp_path / "round_2" / "student",
                      tmp_path / "one_step" / "student"]
    assert isinstance(again, MLPDenoiser)
    # round 2 interrupted after a checkpoint: round 1 is loaded, round 2 reuses its couplings and resumes
    import shutil

    shutil.rmtree(tmp_path / "round_2" / "student")
    shutil.rmtree(tmp_path / "one_step")
    (tmp_path / "round_2" / "checkpoint").mkdir()
    loaded.clear()
    rf.reflow(teacher, student, tmp_path, cfg, resume=True)
    assert made == [] and loaded[0] == tmp_path / "round_1" / "student"
    assert [(c["out"].name, c["resume"]) for c in trained] == [("round_2", True), ("one_step", False)]
    trained.clear()  # without --resume nothing is kept: both rounds train afresh (their couplings files stay)
    weights = tmp_path / "round_1" / "student" / "student.safetensors"
    weights.write_bytes(b"stale")  # whatever was there is replaced by the new round's student
    rf.reflow(teacher, student, tmp_path, cfg)
    assert weights.read_bytes() != b"stale"
    assert [(c["out"].name, c["resume"]) for c in trained] == [("round_1", False), ("round_2", False),
                                                              ("one_step", False)]
    assert json.loads((tmp_path / "round_1" / "student" / "priorkit.json").read_text())["round"] == 1
