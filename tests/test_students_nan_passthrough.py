"""The students' losses skip the model's per-call input check (`check=False`, which would cost four checks per model
call in the hot loop): a NaN in a batch comes out as a NaN loss, which `train` refuses with `FloatingPointError` naming
the step and what is kept (the CLI's one line: tests/test_faults.py). Each loss once with NaN in one or two rows: NaN
out, no ValueError."""

from __future__ import annotations

import math

import pytest
import torch

from priorkit.distill.core.schedule import FlowMatching, VPCosine
from priorkit.distill.core.training import TrainConfig, train
from priorkit.distill.students import dmd
from priorkit.distill.students.consistency import consistency_loss
from priorkit.distill.students.guidance_distill import guidance_loss
from priorkit.distill.students.progressive import progressive_loss
from priorkit.distill.students.reflow import one_step_loss, reflow_loss
from priorkit.distill.students.shortcut import shortcut_loss
from priorkit.distill.zoo.toy import MLPDenoiser

F64 = torch.float64
B = 4


def _mlp(**kw) -> MLPDenoiser:
    torch.manual_seed(0)
    return MLPDenoiser(hidden=8, depth=1, **kw).double()


def _nan(n: int = B) -> torch.Tensor:
    x = torch.randn(n, 2, dtype=F64)
    x[0, 1] = math.nan
    return x


def _is_nan(v: torch.Tensor) -> bool:
    return bool(torch.isnan(v).any())


def _times(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=F64)


T = _times(0.2, 0.4, 0.6, 0.8)


def test_reflow_and_its_one_step_loss_pass_a_nan_batch_through():
    student = _mlp(schedule=FlowMatching())
    assert _is_nan(reflow_loss(student, _nan(), torch.randn(B, 2, dtype=F64), T))
    assert _is_nan(reflow_loss(student, torch.randn(B, 2, dtype=F64), _nan(), T))
    assert _is_nan(one_step_loss(student, _nan(), torch.randn(B, 2, dtype=F64)))


@pytest.mark.parametrize("with_teacher", [False, True], ids=["ct", "cd"])
def test_the_consistency_loss_passes_a_nan_batch_through_both_of_its_model_calls(with_teacher):
    net = _mlp(schedule=FlowMatching())
    teacher = _mlp(schedule=FlowMatching()) if with_teacher else None
    loss = consistency_loss(net, net, _nan(), torch.randn(B, 2, dtype=F64), T, T - 0.1, teacher=teacher)
    assert _is_nan(loss)


def test_the_target_side_of_the_consistency_loss_alone_passes_nan_through():
    """NaN only where the target network is evaluated (x_lo from a teacher step that returns NaN)."""
    net = _mlp(schedule=FlowMatching())

    class _NaNTeacher(MLPDenoiser):
        def predict_native(self, x, t, cond=None):
            return "velocity", torch.full_like(x, math.nan)

    loss = consistency_loss(net, net, torch.randn(B, 2, dtype=F64), torch.randn(B, 2, dtype=F64), T, T - 0.1,
                            teacher=_NaNTeacher(schedule=FlowMatching()).double(), solver="euler")
    assert _is_nan(loss)


def test_the_guidance_loss_passes_a_nan_batch_through():
    teacher = _mlp(schedule=VPCosine(), num_classes=2)
    student = _mlp(schedule=VPCosine(), num_classes=2, extras=("w",))
    loss = guidance_loss(student, teacher, _nan(), torch.randn(B, 2, dtype=F64), T, torch.tensor([0, 1, 0, 1]),
                         torch.full((B,), 2.0, dtype=F64))
    assert _is_nan(loss)


def test_the_progressive_loss_passes_a_nan_batch_through():
    teacher, student = _mlp(schedule=VPCosine()), _mlp(schedule=VPCosine())
    loss = progressive_loss(student, teacher, _nan(), torch.randn(B, 2, dtype=F64), T, T - 0.05, T - 0.1)
    assert _is_nan(loss)


@pytest.mark.parametrize("sc_rows, with_teacher", [(0, True), (2, True), (2, False), (B, False)])
def test_the_shortcut_loss_passes_a_nan_batch_through(sc_rows, with_teacher):
    online = _mlp(schedule=FlowMatching(), extras=("d",))
    teacher = _mlp(schedule=FlowMatching()) if with_teacher else None
    x0 = torch.randn(B, 2, dtype=F64)
    x0[0, 0] = x0[B - 1, 1] = math.nan  # one self-consistency row (when sc_rows > 0) and one flow-matching row
    loss = shortcut_loss(online, online, x0, torch.randn(B, 2, dtype=F64), T, torch.full((B,), 0.25, dtype=F64),
                         sc_rows, 1 / 128, teacher=teacher)
    assert _is_nan(loss)


def test_dmds_gradient_generator_and_regression_pass_nan_through():
    real, fake = _mlp(schedule=VPCosine()), _mlp(schedule=VPCosine())
    assert _is_nan(dmd.dmd_gradient(real, fake, _nan(), T, torch.randn(B, 2, dtype=F64)))
    generator = _mlp(schedule=VPCosine())
    times = _times(0.9, 0.5, 0.2)
    x0, _ = dmd.generate(generator, _nan(), times, last=0)  # the gradient step alone
    assert _is_nan(x0)
    x0, x = dmd.generate(generator, _nan(), times)  # after two steps without gradients: their NaN reaches x
    assert _is_nan(x) and _is_nan(x0)
    pairs = {"z": torch.full((3, 2), math.nan, dtype=F64), "x0": torch.zeros(3, 2, dtype=F64)}
    assert _is_nan(dmd.regression_loss(generator, pairs, torch.tensor(0.9, dtype=F64), 1.0, 2,
                                       torch.Generator().manual_seed(0)))


def test_the_gan_heads_logits_pass_nan_through():
    trainee = dmd.DMDTrainee(_mlp(schedule=VPCosine()), _mlp(schedule=VPCosine()), gan=True).double()
    logits = trainee.logits(_nan(), T.double(), None)
    assert logits.shape == (B,) and bool(torch.isnan(logits[0])) and bool(torch.isfinite(logits[1:]).all())


def test_a_nan_loss_stops_training_with_one_line_naming_the_step(tmp_path):
    """Where the NaN batch ends: train's FloatingPointError (the check the losses rely on)."""
    student = _mlp(schedule=FlowMatching()).float()

    def loss_fn(model, step, g):
        x0 = torch.randn(B, 2) if step < 2 else torch.full((B, 2), math.nan)
        return reflow_loss(model, x0, torch.randn(B, 2), T.float())

    out = tmp_path / "run"
    with pytest.raises(FloatingPointError, match=r"loss became nan at step 2; the last checkpoint is kept in "):
        train(student, loss_fn, TrainConfig(steps=4, lr=1e-3, warmup=0, checkpoint_every=1), out)
    assert (out / "checkpoint").is_dir()


def test_a_nan_loss_before_the_first_checkpoint_says_none_was_written(tmp_path):
    student = _mlp(schedule=FlowMatching()).float()

    def loss_fn(model, step, g):
        return reflow_loss(model, torch.full((B, 2), math.nan), torch.randn(B, 2), T.float())

    with pytest.raises(FloatingPointError, match="loss became nan at step 0; no checkpoint was written yet in "):
        train(student, loss_fn, TrainConfig(steps=4, lr=1e-3, warmup=0, checkpoint_every=10), tmp_path / "run")
    assert not (tmp_path / "run" / "checkpoint").exists()


def test_the_bespoke_trainer_stops_on_a_nan_rmse_and_keeps_its_last_save(tmp_path, monkeypatch):
    """bespoke_train has its own loop (no `train`): a NaN RMSE stops it before the step, the saved solver intact."""
    import json

    from priorkit.distill.students import bespoke as bs
    from priorkit.distill.zoo.toy import gmm_target

    cfg = bs.BespokeConfig(nfe=2, trajectories=16, ref_steps=4, batch=8, save_every=2,
                           train=TrainConfig(steps=6, lr=1e-2, warmup=0, ema_decay=0.0))
    real, calls = bs.rmse, []
    monkeypatch.setattr(bs, "rmse", lambda x, y: (calls.append(1), real(x, y) * (math.nan if len(calls) > 3 else 1))[1])
    with pytest.raises(FloatingPointError, match="bespoke solver's RMSE became nan at iteration 3; last save kept in"):
        bs.bespoke_train(gmm_target().float(), tmp_path, cfg)
    saved = json.loads((tmp_path / bs.SOLVER_FILE).read_text())
    assert saved["iteration"] == 2 and math.isfinite(saved["train_rmse"])
