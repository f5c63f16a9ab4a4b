"""The guidance-distillation trainer by value: what stage 1 draws and passes to its loss, what it saves, the
hand-over to progressive distillation with a random w per sample, and resume, with the training loop, the loss
and stage 2 replaced by recorders (the loss itself is tested by hand in test_student_losses)."""

from __future__ import annotations

import shutil

import pytest
import torch

from priorkit.distill.core.schedule import VPLinear
from priorkit.distill.core.training import TrainConfig
from priorkit.distill.students import guidance_distill as gd
from priorkit.distill.students.format import read_meta
from priorkit.distill.students.progressive import ProgressiveConfig
from priorkit.distill.zoo.toy import MLPDenoiser, conditional_gmm_target, target_data

F64 = torch.float64


def test_random_w_is_drawn_after_the_data_for_every_sample_and_rides_with_its_condition():
    data = target_data("gmm", conditional=True)
    student = MLPDenoiser(hidden=8, depth=2, extras=("w",), num_classes=8)
    x0, cond = gd.with_random_w(data, student, 1.5, 4.0)(6, torch.Generator().manual_seed(3))
    g = torch.Generator().manual_seed(3)
    want_x0, want_labels = data(6, g)
    want_w = 1.5 + (4.0 - 1.5) * torch.rand(6, generator=g)
    assert torch.equal(x0, want_x0) and torch.equal(cond["class"], want_labels)
    torch.testing.assert_close(cond["w"], want_w.to(x0.dtype), rtol=0, atol=0)
    assert cond["w"].dtype == x0.dtype and float(cond["w"].min()) >= 1.5 and float(cond["w"].max()) <= 4.0


def _setup(monkeypatch, steps: int = 2):  # noqa: ANN202
    trained, losses, stage2 = [], [], []

    def fake_train(model, loss_fn, cfg, out, *, resume=False, desc="", **kw):  # noqa: ANN001, ANN202
        g = torch.Generator().manual_seed(0)
        trained.append({"model": model, "cfg": cfg, "out": out, "resume": resume, "desc": desc,
                        "grad": all(p.requires_grad for p in model.parameters()), "training": model.training})
        for k in range(steps):
            loss_fn(model, k, g)
        return model, [{"loss": 0.0}]

    monkeypatch.setattr(gd, "train", fake_train)
    monkeypatch.setattr(gd, "guidance_loss", lambda *a: losses.append(a) or torch.zeros(()))
    monkeypatch.setattr(gd, "progressive_distill", lambda *a, **k: stage2.append((a, k)) or "stage2-student")
    return trained, losses, stage2


def test_stage_one_draws_times_and_weights_per_sample_then_hands_over_to_progressive(tmp_path, monkeypatch):
    trained, losses, stage2 = _setup(monkeypatch)
    teacher = conditional_gmm_target(VPLinear()).float()  # t_min = 1e-3 > 0: the times' interval is [t_min, t_max]
    assert teacher.schedule.t_min > 0
    student = MLPDenoiser(hidden=8, depth=2, extras=("w",), num_classes=8).eval().requires_grad_(False)
    data = target_data("gmm", conditional=True)
    p2 = ProgressiveConfig(start_steps=4, end_steps=2)
    cfg = gd.GuidanceDistillConfig(w_min=1.5, w_max=3.0, batch=5, stage1=TrainConfig(steps=2), stage2=p2)
    out = gd.guidance_distill(teacher, student, data, tmp_path, cfg, meta={"teacher": "cgmm"})

    (run,) = trained
    assert run["model"] is student and run["grad"] and run["training"] and run["cfg"] is cfg.stage1
    assert run["out"] == tmp_path / "stage1" and run["resume"] is False
    assert run["desc"] == "guidance distillation (stage 1)"
    s = teacher.schedule
    g = torch.Generator().manual_seed(0)
    assert len(losses) == 2
    for model, teach, x0, eps, t, cond, w in losses:
        want_x0, want_cond = data(5, g)
        want_t = s.t_min + (s.t_max - s.t_min) * torch.rand(5, generator=g, dtype=F64)
        want_w = 1.5 + (3.0 - 1.5) * torch.rand(5, generator=g, dtype=F64)
        want_eps = torch.randn(want_x0.shape, generator=g, dtype=want_x0.dtype)
        assert model is student and teach is teacher and not any(p.requires_grad for p in teacher.parameters())
        assert torch.equal(x0, want_x0) and torch.equal(cond, want_cond) and torch.equal(eps, want_eps)
        assert t.dtype == F64 and w.dtype == F64
        torch.testing.assert_close(t, want_t, rtol=0, atol=0)
        torch.testing.assert_close(w, want_w, rtol=0, atol=0)
    meta = read_meta(tmp_path / "stage1" / "student")
    assert (meta["method"], meta["sampler"], meta["w_range"], meta["teacher"]) == ("guidance-stage1", "ode",
                                                                                     [1.5, 3.0], "cgmm")
    assert meta["config"]["batch"] == 5

    # stage 2: progressive distillation of the (frozen) stage-1 student, teacher and student alike, w random per sample
    ((args, kw),) = stage2
    assert out == "stage2-student"
    assert args[0] is student and args[1] is student and not student.training
    assert not any(p.requires_grad for p in student.parameters())
    assert args[3] == tmp_path / "stage2" and args[4] is p2 and kw["resume"] is False
    assert kw["meta"] == {"teacher": "cgmm", "guidance": "distilled", "w_range": [1.5, 3.0]}
    x0, cond = args[2](4, torch.Generator().manual_seed(1))
    want = gd.with_random_w(data, student, 1.5, 3.0)(4, torch.Generator().manual_seed(1))[1]
    assert torch.equal(cond["w"], want["w"]) and torch.equal(cond["class"], want["class"])


def test_without_stage_two_resume_and_bad_ranges(tmp_path, monkeypatch):
    trained, losses, stage2 = _setup(monkeypatch, steps=1)
    teacher = conditional_gmm_target().float()
    data = target_data("gmm", conditional=True)
    cfg = gd.GuidanceDistillConfig(batch=4, stage1=TrainConfig(steps=1), stage2=None)
    with pytest.raises(ValueError, match="w_max must be >= w_min"):
        gd.guidance_distill(teacher, MLPDenoiser(hidden=8, depth=2, extras=("w",), num_classes=8), data, tmp_path,
                            gd.GuidanceDistillConfig(w_min=3.0, w_max=2.0))
    one_w = gd.GuidanceDistillConfig(w_min=2.0, w_max=2.0, batch=4, stage1=TrainConfig(steps=1), stage2=None)
    gd.guidance_distill(teacher, MLPDenoiser(hidden=8, depth=2, extras=("w",), num_classes=8), data,
                        tmp_path / "one", one_w)  # a single guidance weight is a range too
    assert read_meta(tmp_path / "one" / "stage1" / "student")["w_range"] == [2.0, 2.0]
    trained.clear(), losses.clear()
    student = MLPDenoiser(hidden=8, depth=2, extras=("w",), num_classes=8)
    out = gd.guidance_distill(teacher, student, data, tmp_path, cfg)
    assert out is student and not out.training and stage2 == [] and len(trained) == 1
    assert read_meta(tmp_path / "stage1" / "student")["w_range"] == [1.0, 4.0]  # the defaults
    again = gd.guidance_distill(teacher, MLPDenoiser(hidden=8, depth=2, extras=("w",), num_classes=8), data,
                                tmp_path, cfg, resume=True)  # stage 1 done: loaded, not trained again
    assert len(trained) == 1 and isinstance(again, MLPDenoiser) and not again.training
    assert all(torch.equal(a, b) for a, b in zip(again.state_dict().values(), student.state_dict().values(),
                                                 strict=True))
    shutil.rmtree(tmp_path / "stage1" / "student")  # interrupted after a checkpoint: resumed from it
    (tmp_path / "stage1" / "checkpoint").mkdir(parents=True, exist_ok=True)
    gd.guidance_distill(teacher, MLPDenoiser(hidden=8, depth=2, extras=("w",), num_classes=8), data, tmp_path, cfg,
                        resume=True)
    assert trained[-1]["resume"] is True
    gd.guidance_distill(teacher, MLPDenoiser(hidden=8, depth=2, extras=("w",), num_classes=8), data, tmp_path / "n",
                        cfg, resume=True)  # nothing to resume from: a fresh run
    assert trained[-1]["resume"] is False
    gd.guidance_distill(teacher, MLPDenoiser(hidden=8, depth=2, extras=("w",), num_classes=8), data, tmp_path / "d",
                        gd.GuidanceDistillConfig(batch=4, stage1=TrainConfig(steps=1)))
    assert stage2[-1][0][4] == gd.GuidanceDistillConfig().stage2  # the default hands over to progressive
