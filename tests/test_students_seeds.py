"""The seeds and chunks the students' trainers hand on (mutation survivors recorded as students-chunk,
students-seed-offset, students-resume-seed and students-couplings-exist, tests/MUTANTS.md), read off spies: DMD's
regression pairs (made in chunks of at most 2000, seeded train.seed + 7), a resumed bespoke run's batches (seeded
seed + 1 + the iteration it resumes at) and reflow's one-step couplings (seeded as the last round's)."""

from __future__ import annotations

import torch

from priorkit.distill.core.training import TrainConfig
from priorkit.distill.students import bespoke as bs
from priorkit.distill.students import dmd
from priorkit.distill.students import reflow as rf
from priorkit.distill.zoo.toy import MLPDenoiser, gmm_target, target_data


def _fake_couplings(made: list):
    def fake(teacher, n, **kw):  # noqa: ANN001, ANN202
        made.append({"n": n, **kw, "seed": kw["generator"].initial_seed()})
        g = torch.Generator().manual_seed(1)
        return {"z": torch.randn(n, 2, generator=g), "x0": torch.randn(n, 2, generator=g)}
    return fake


def test_dmd_regression_pairs_are_made_in_chunks_of_at_most_2000(tmp_path, monkeypatch):
    made = []
    monkeypatch.setattr(rf, "make_couplings", _fake_couplings(made))
    data = target_data("gmm")
    for i, n in enumerate((5000, 2000, 7)):
        dmd._pairs(gmm_target(), tmp_path / str(i), dmd.DMDConfig(pairs=n), data, seed=11)
    assert [(c["n"], c["chunk"], c["seed"]) for c in made] == [(5000, 2000, 11), (2000, 2000, 11), (7, 7, 11)]


def test_dmd_regression_pairs_are_seeded_train_seed_plus_7(tmp_path, monkeypatch):
    seeds = []

    class _StopError(Exception):
        pass

    def fake_pairs(teacher, out, cfg, data, seed):  # noqa: ANN001, ANN202
        seeds.append(seed)
        raise _StopError

    monkeypatch.setattr(dmd, "_pairs", fake_pairs)
    cfg = dmd.DMDConfig(batch=4, regression=0.25, train=TrainConfig(steps=1, seed=3))
    try:
        dmd.dmd_distill(gmm_target().float(), MLPDenoiser(hidden=8, depth=2), target_data("gmm"), tmp_path, cfg)
    except _StopError:
        pass
    assert seeds == [10]


def test_a_resumed_bespoke_run_draws_its_batches_seeded_seed_plus_1_plus_its_start(tmp_path, monkeypatch):
    """The run resumed at iteration 1 draws its first batch from a generator seeded seed + 1 + 1 (the first run's
    first batch: seed + 1 + 0)."""
    teacher = gmm_target()

    def cfg(steps: int) -> bs.BespokeConfig:
        return bs.BespokeConfig(nfe=2, trajectories=16, ref_steps=2, batch=4, save_every=1, seed=4,
                                train=TrainConfig(steps=steps, lr=1e-2, warmup=0, ema_decay=0.0))

    _, x_ref, _ = bs.reference_pairs(teacher, 16, 2, None, 4)
    targets = []
    real_rmse = bs.rmse

    def spy(x, y):  # noqa: ANN001, ANN202
        targets.append(y.clone())
        return real_rmse(x, y)

    monkeypatch.setattr(bs, "rmse", spy)
    bs.bespoke_train(teacher, tmp_path, cfg(1))
    bs.bespoke_train(teacher, tmp_path, cfg(2), resume=True)
    first, resumed = targets
    for got, seed in ((first, 4 + 1 + 0), (resumed, 4 + 1 + 1)):
        idx = torch.randint(16, (4,), generator=torch.Generator().manual_seed(seed))
        assert torch.equal(got, x_ref[idx])


def test_reflow_one_step_couplings_are_seeded_as_the_last_rounds_where_none_were_saved(tmp_path, monkeypatch):
    """A process that saves no couplings (not the main one) makes the one-step stage's couplings again; they are the
    last round's (seed train.seed + rounds), as the main process reads them from that round's file."""
    made = []

    def fake_train(model, loss_fn, cfg, out, *, resume=False, desc=""):  # noqa: ANN001, ANN202
        return model, [{"loss": 0.0}]

    monkeypatch.setattr(rf, "make_couplings", _fake_couplings(made))
    monkeypatch.setattr(rf, "train", fake_train)
    monkeypatch.setattr(rf, "is_main_process", lambda: False)
    cfg = rf.ReflowConfig(rounds=2, pairs=6, teacher_steps=2, chunk=4, batch=4, one_step_steps=1,
                          train=TrainConfig(steps=1, seed=5))
    rf.reflow(gmm_target().float(), MLPDenoiser(hidden=8, depth=2), tmp_path, cfg)
    assert [c["seed"] for c in made] == [6, 7, 7]
