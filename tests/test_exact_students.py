"""Trained students reach their target: a 2D Gaussian mixture with its exact denoiser as the teacher.

A short training must give a sliced W2 to the target clearly below the untrained student's and below the teacher's
own Euler sampler at the same number of model evaluations (NFE). Falling losses alone do not show this.
"""

from __future__ import annotations

import math
import tempfile
import time

import pytest
import torch

from priorkit.distill.core.gmm import GaussianMixture
from priorkit.distill.core.samplers import sample
from priorkit.distill.core.training import TrainConfig
from priorkit.distill.students import reflow as rf
from priorkit.distill.students.format import load_student
from priorkit.distill.zoo.toy import (
    ClassConditionalGMM,
    DataFn,
    MLPDenoiser,
    gmm_target,
    sample_target,
    sliced_w2,
)

torch.set_num_threads(1)


def quick(steps: int) -> TrainConfig:
    return TrainConfig(steps=steps, lr=3e-3, warmup=10, ema_decay=0.9, checkpoint_every=10_000, log_every=50)


def w2(x: torch.Tensor, target: torch.Tensor) -> float:
    return sliced_w2(x.float(), target.float(), projections=256, generator=torch.Generator().manual_seed(0))


def test_reflow_two_rounds_and_the_one_step_stage(tmp_path):
    """Measured (W2): untrained 0.45, teacher Euler 1.43 (NFE 1) and 0.46 (NFE 2), 2-reflow at NFE 2 0.14, its
    one-step stage 0.14. Tested: below half the untrained student's and 0.7x the teacher's Euler at equal NFE."""
    start = time.perf_counter()
    teacher = gmm_target().float()
    target = sample_target("gmm", 2000, torch.Generator().manual_seed(1))
    torch.manual_seed(0)
    student = MLPDenoiser(hidden=64, depth=2, embed_dim=16)
    z = torch.randn(2000, 2, generator=torch.Generator().manual_seed(2))
    untrained = w2(rf.reflow_sample(student, z, 2), target)
    cfg = rf.ReflowConfig(rounds=2, pairs=4096, teacher_steps=16, chunk=4096, batch=256, train=quick(400),
                          one_step_steps=400)
    one_step = rf.reflow(teacher, student, tmp_path, cfg)
    second = load_student(tmp_path / "round_2" / "student")
    sigma = float(teacher.schedule.sigma(torch.tensor(teacher.schedule.t_max)))
    euler = {n: w2(sample(teacher, z * sigma, steps=n, solver="euler", spacing="time"), target) for n in (1, 2)}
    got = {"one_step": w2(rf.reflow_sample(one_step, z, 1), target),
           "round2_2": w2(rf.reflow_sample(second, z, 2), target)}
    print(f"untrained {untrained:.3f} euler {euler} students {got} ({time.perf_counter() - start:.0f} s)")
    assert got["one_step"] < 0.5 * untrained and got["one_step"] < 0.7 * euler[1]
    assert got["round2_2"] < 0.5 * untrained and got["round2_2"] < 0.7 * euler[2]


# ---------------------------------------------------------------------------------------------------------------------
# the other students on the same ring, each against the exact teacher's Euler at equal NFE
# ---------------------------------------------------------------------------------------------------------------------


def _setup(n: int = 2000) -> tuple[torch.Tensor, torch.Tensor]:
    """Target samples and the standard normal draws every sampler starts from (scaled by sigma(t_start))."""
    target = sample_target("gmm", n, torch.Generator().manual_seed(1))
    z = torch.randn(n, 2, generator=torch.Generator().manual_seed(2))
    return target, z


def _euler(teacher, z, target, nfes, cond=None, guidance=1.0) -> dict[int, float]:
    """The teacher's Euler sampler (uniform time grid, from t_max) at each NFE; with guidance 2 evals per step."""
    per = 1 if guidance == 1.0 else 2
    sigma = float(teacher.schedule.sigma(torch.tensor(teacher.schedule.t_max)))
    return {n: w2(sample(teacher, z * sigma, steps=n // per, solver="euler", spacing="time", cond=cond,
                         guidance=guidance), target) for n in nfes}


def _student_mlp(**kw) -> MLPDenoiser:
    torch.manual_seed(0)
    return MLPDenoiser(hidden=64, depth=2, embed_dim=16, **kw)


def test_consistency_distillation_reaches_the_ring():
    """Measured (W2): untrained consistency model 0.47 (NFE 1) / 0.65 (NFE 2), teacher Euler 1.43 / 0.46, CD after
    400 steps 0.15 / 0.13. Tested: below half the untrained student's and 0.7x the teacher's Euler at equal NFE.
    (Consistency training without a teacher does not reach the bar cheaply: 400 steps 0.50 / 0.63, 1500 steps
    0.66 / 0.28, so it has no test here.)"""
    from priorkit.distill.students import consistency as cm
    from priorkit.distill.students.consistency_model import ConsistencyModel
    from priorkit.distill.zoo.toy import target_data

    start = time.perf_counter()
    teacher = gmm_target().float()
    target, z = _setup()
    cfg = cm.ConsistencyConfig(sigma_data=1.0, n_steps=18, batch=256, train=quick(400))

    def run(model) -> dict[int, float]:
        out = {}
        for n in (1, 2):
            times = cm.consistency_times(model.schedule, n, sigma_min=cfg.sigma_min, sigma_max=cfg.sigma_max,
                                         grid=cfg.n_steps)
            sig = float(model.schedule.sigma(times[0].double()))
            x = cm.consistency_sample(model, z * sig, times, generator=torch.Generator().manual_seed(3))
            out[n] = w2(x, target)
        return out

    untrained = run(ConsistencyModel(_student_mlp(), cfg.sigma_data, cfg.sigma_min))
    with tempfile.TemporaryDirectory() as tmp:
        got = run(cm.consistency_distill(teacher, _student_mlp(), target_data("gmm"), tmp, cfg))
    euler = _euler(teacher, z, target, (1, 2))
    print(f"untrained {untrained} euler {euler} cd {got} ({time.perf_counter() - start:.0f} s)")
    for n in (1, 2):
        assert got[n] < 0.5 * untrained[n] and got[n] < 0.7 * euler[n], (n, got, untrained, euler)


def test_shortcut_model_reaches_the_ring():
    """Measured (W2): untrained 0.60, teacher Euler 1.43 (NFE 1) / 0.46 (NFE 2) / 0.146 (NFE 4), shortcut after 400
    steps with the exact teacher's velocity on its flow-matching rows 0.16 / 0.15 / 0.135. Tested at NFE 1 and 2:
    below half the untrained student's and 0.7x the teacher's Euler (at NFE 4 it only matches the teacher)."""
    from priorkit.distill.students import shortcut as sc
    from priorkit.distill.zoo.toy import target_data

    start = time.perf_counter()
    teacher = gmm_target().float()
    target, z = _setup()
    cfg = sc.ShortcutConfig(batch=256, train=quick(400))
    sigma = float(teacher.schedule.sigma(torch.tensor(teacher.schedule.t_max)))

    def run(m) -> dict[int, float]:
        return {n: w2(sc.shortcut_sample(m, z * sigma, n, levels=cfg.levels), target) for n in (1, 2, 4)}

    untrained = run(_student_mlp(extras=("d",)))
    with tempfile.TemporaryDirectory() as tmp:
        got = run(sc.shortcut_train(_student_mlp(extras=("d",)), target_data("gmm"), tmp, cfg, teacher=teacher))
    euler = _euler(teacher, z, target, (1, 2, 4))
    print(f"untrained {untrained} euler {euler} shortcut {got} ({time.perf_counter() - start:.0f} s)")
    for n in (1, 2):
        assert got[n] < 0.5 * untrained[n] and got[n] < 0.7 * euler[n], (n, got, untrained, euler)
    assert got[4] < 1.2 * euler[4]


def test_progressive_distillation_reaches_the_ring():
    """The exact teacher's 4-step DDIM (W2 0.146) halved twice, 300 steps a round: measured 2-step student 0.18,
    1-step 0.18, against untrained 0.46 / 0.45 and the teacher's Euler 1.43 (NFE 1) / 0.46 (NFE 2). Tested: below
    half the untrained student's and 0.7x the teacher's Euler at equal NFE."""
    from priorkit.distill.core.samplers.ddim import ddim_sample
    from priorkit.distill.students import progressive as pd
    from priorkit.distill.zoo.toy import target_data

    start = time.perf_counter()
    teacher = gmm_target().float()
    target, z = _setup()
    cfg = pd.ProgressiveConfig(start_steps=4, end_steps=1, batch=256, train=quick(300))
    sigma = float(teacher.schedule.sigma(torch.tensor(teacher.schedule.t_max)))

    def run(m, n: int) -> float:
        return w2(ddim_sample(m, z * sigma, pd.student_grid(m.schedule, n, cfg.start_steps)), target)

    untrained = {n: run(_student_mlp(), n) for n in (1, 2)}
    with tempfile.TemporaryDirectory() as tmp:
        one = pd.progressive_distill(teacher, _student_mlp(), target_data("gmm"), tmp, cfg)
        got = {1: run(one, 1), 2: run(load_student(f"{tmp}/steps_2/student"), 2)}
    euler = _euler(teacher, z, target, (1, 2))
    print(f"untrained {untrained} euler {euler} progressive {got} ({time.perf_counter() - start:.0f} s)")
    for n in (1, 2):
        assert got[n] < 0.5 * untrained[n] and got[n] < 0.7 * euler[n], (n, got, untrained, euler)


def _overlapping_classes() -> tuple[ClassConditionalGMM, DataFn]:
    """Four broad Gaussians on a ring, classes alternating: the classes overlap, so CFG changes the distribution
    a lot (unlike the well-separated 'gmm' ring). Returns the exact conditional teacher and its labelled data."""
    angle = 2 * math.pi * torch.arange(4, dtype=torch.float64) / 4
    means = 1.5 * torch.stack([torch.cos(angle), torch.sin(angle)], -1)
    mix = GaussianMixture(torch.ones(4, dtype=torch.float64), means, torch.full((4, 2), 0.5**2, dtype=torch.float64))
    classes = torch.arange(4) % 2

    def data(n: int, g: torch.Generator):
        comp = torch.randint(0, 4, (n,), generator=g)
        x = means[comp] + 0.5 * torch.randn(n, 2, generator=g, dtype=torch.float64)
        return x.float(), classes[comp]

    return ClassConditionalGMM(mix, classes).float(), data


@pytest.mark.slow
def test_guidance_distillation_both_stages_reach_the_guided_teacher():
    """Target: the exact CFG ODE at w = 3 (Heun, 64 steps; 128 steps differ by W2 < 1e-3) on overlapping classes.
    The guided teacher's Euler spends 2 evaluations per step. Measured (W2 to the target): untrained 0.65, guided
    Euler 1.36 (NFE 2) / 0.215 (NFE 4), the exact unguided (w = 1) flow 0.245; stage 1 after 400 steps 0.15 (NFE 2) /
    0.20 (NFE 4) (1000 steps: 0.19 / 0.19, no better); stage 2 (4 -> 2 -> 1 DDIM steps) 0.20 (NFE 1) / 0.20 (NFE 2).
    Tested where the bar is met: stage 1 at NFE 2 and stage 2 at NFE 1 and 2 below half the untrained student's and
    0.7x the guided teacher's Euler at NFE 2. NOT met (reported, not tested at the bar): stage 1 at NFE 4 is only
    ~0.9x the teacher's Euler, and both stages are only ~0.6-0.8x the distance of a model that ignores guidance."""
    from priorkit.distill.core.samplers.ddim import ddim_sample
    from priorkit.distill.students import guidance_distill as gd
    from priorkit.distill.students import progressive as pd

    start = time.perf_counter()
    teacher, data = _overlapping_classes()
    _, z = _setup()
    labels = torch.arange(z.shape[0]) % 2
    w = 3.0
    ref = sample(teacher, z, steps=64, solver="heun", spacing="time", cond=labels, guidance=w)
    unguided = w2(sample(teacher, z, steps=64, solver="heun", spacing="time", cond=labels), ref)
    euler = _euler(teacher, z, ref, (2, 4), cond=labels, guidance=w)
    c = {"class": labels, "w": w}

    def stage1(m) -> dict[int, float]:
        return {n: w2(sample(m, z, steps=n, solver="euler", spacing="time", cond=c), ref) for n in (2, 4)}

    def ddim(m, n: int) -> float:
        return w2(ddim_sample(m, z, pd.student_grid(m.schedule, n, 4), cond=c), ref)

    untrained = stage1(_student_mlp(num_classes=2, extras=("w",)))
    cfg = gd.GuidanceDistillConfig(w_min=1.0, w_max=4.0, batch=256, stage1=quick(400),
                                   stage2=pd.ProgressiveConfig(start_steps=4, end_steps=1, batch=256, train=quick(300)))
    with tempfile.TemporaryDirectory() as tmp:
        final = gd.guidance_distill(teacher, _student_mlp(num_classes=2, extras=("w",)), data, tmp, cfg)
        s1 = stage1(load_student(f"{tmp}/stage1/student"))
        s2 = {1: ddim(final, 1), 2: ddim(load_student(f"{tmp}/stage2/steps_2/student"), 2)}
    print(f"unguided {unguided:.3f} untrained {untrained} guided euler {euler} stage1 {s1} stage2 {s2} "
          f"({time.perf_counter() - start:.0f} s)")
    assert s1[2] < 0.5 * untrained[2] and s1[2] < 0.7 * euler[2], (s1, untrained, euler)
    assert s1[4] < euler[4] and s1[4] < unguided, (s1, euler, unguided)  # below, but not by the 0.7 margin
    for n in (1, 2):  # NFE 1 and 2 of the stage-2 student against the guided teacher's one step (NFE 2)
        assert s2[n] < 0.5 * untrained[2] and s2[n] < 0.7 * euler[2] and s2[n] < unguided, (n, s2, euler)
