"""Reward-weighted denoising (distill.finetune.reward_weighted): its loss is the tilted distribution's denoising
loss, proven on the exact tilted Gaussian mixture; its pool, resume and command."""

from __future__ import annotations

import json

import pytest
import torch

from priorkit.distill.core.denoiser import WrappedDenoiser
from priorkit.distill.finetune.residual import ResidualDenoiser, ScoreResidual
from priorkit.distill.finetune.reward import QuadraticReward
from priorkit.distill.finetune.reward_weighted import (
    Pool,
    RewardWeightedConfig,
    draw_pool,
    pool_batch,
    prepare_pool,
    reward_weighted_loss,
)
from priorkit.distill.finetune.tilt import tilt_weights, tilted_gmm
from priorkit.distill.finetune.trainer import finetune, make_config
from priorkit.distill.zoo.toy import gmm_target, sliced_w2

F64 = torch.float64


def _reward() -> QuadraticReward:
    return QuadraticReward(torch.tensor([2.0, 0.0], dtype=F64), torch.eye(2, dtype=F64))


def test_the_weighted_denoising_loss_is_minimised_by_the_exact_tilt():
    """On a pool of base samples, the weighted loss (one batch, the same draws for every model) is lowest for the exact
    tilted mixture's denoiser at the run's lambda: below the base, below the tilts at lambda 0.35 and 0.7, and below
    the tilt whose weights would be exp(r lambda) (lambda 2). Breaks if the weights are uniform or inverted, if the
    batch ignores them, or if the loss's target is not the drawn sample's (one unconditional row here: the
    per-condition normalisation is checked in the pool test below)."""
    base, reward = gmm_target(), _reward()
    cfg = RewardWeightedConfig(lam=0.5, batch=60000, prompts=1, per_prompt=60000, steps=40, chunk=60000)
    pool = draw_pool(base, reward, cfg, None, torch.Generator().manual_seed(0), dtype=F64, progress=False)

    def loss(model) -> float:  # noqa: ANN001
        return float(reward_weighted_loss(model, pool, cfg, torch.Generator().manual_seed(1))[0])

    best = loss(tilted_gmm(base, reward, 0.5))
    for other in (base, tilted_gmm(base, reward, 0.35), tilted_gmm(base, reward, 0.7), tilted_gmm(base, reward, 2.0)):
        assert best < loss(other), (best, loss(other))


def test_a_pool_batch_draws_conditions_uniformly_and_samples_by_their_weights():
    rewards = torch.tensor([[0.0, 1.0, 2.0], [3.0, 0.0, 0.0]], dtype=F64)
    w = tilt_weights(rewards, 0.5)
    x = torch.arange(6, dtype=F64).view(6, 1)
    pool = Pool(x, ["a"] * 3 + ["b"] * 3, rewards, w)
    x0, cond, r = pool_batch(pool, 60000, torch.Generator().manual_seed(0))
    freq = torch.bincount(x0[:, 0].long(), minlength=6).double() / 60000
    torch.testing.assert_close(freq, w.flatten() / 2, atol=0.01, rtol=0)
    assert cond == ["a" if i < 3 else "b" for i in x0[:, 0].long().tolist()]
    torch.testing.assert_close(r, rewards.flatten()[x0[:, 0].long()])


def test_a_short_run_moves_the_base_most_of_the_way_to_the_tilted_target():
    base, reward = gmm_target(), _reward()
    target = tilted_gmm(base, reward, 0.5).sample(3000, torch.Generator().manual_seed(2))
    torch.manual_seed(0)
    model = ResidualDenoiser(base, ScoreResidual(2, hidden=64).double())
    cfg = make_config("reward_weighted", lam=0.5, batch=256, prompts=64, per_prompt=64, steps=30)
    model, log = finetune("reward_weighted", model, base, reward, cfg, iterations=150, lr=3e-3, dtype=F64)
    from priorkit.distill.core.samplers import initial_noise
    from priorkit.distill.finetune.memoryless import memoryless_times, trajectory

    def draws(m) -> torch.Tensor:  # noqa: ANN001  (the benchmark's sampler: 40 memoryless steps)
        times = memoryless_times(m, 40)
        z = initial_noise(m, (3000, 2), t_max=float(times[0]), generator=torch.Generator().manual_seed(5), dtype=F64)
        with torch.no_grad():
            return trajectory(m, z, times, generator=torch.Generator().manual_seed(6))[-1]

    w_base = sliced_w2(draws(base), target, generator=torch.Generator().manual_seed(0))
    w_ft = sliced_w2(draws(model), target, generator=torch.Generator().manual_seed(0))
    assert w_ft < 0.25 * w_base, (w_ft, w_base)
    assert log[-1]["reward"] > -1.0  # the pool's draws by weight: rewards of the tilt, not of the base (~ -4)


def test_the_pool_is_kept_in_the_run_folder_read_back_on_resume_and_refused_for_other_settings(tmp_path, monkeypatch):
    from priorkit.distill.finetune import reward_weighted

    base, reward = gmm_target(), _reward()
    cfg = RewardWeightedConfig(lam=0.5, batch=8, prompts=4, per_prompt=8, steps=5)
    conditions = ["a red cube", "a blue ball", "a red cube", "a green cone"]
    cond_base = _CondFree(base)
    path = tmp_path / "pool.safetensors"
    first = prepare_pool(cond_base, reward, cfg, conditions, torch.Generator().manual_seed(0), F64, path)
    assert path.is_file() and first.x.shape == (32, 2) and first.cond[::8] == conditions
    torch.testing.assert_close(first.weights, tilt_weights(first.rewards, 0.5))  # normalised per condition
    torch.testing.assert_close(first.rewards, reward(first.x).view(4, 8))
    monkeypatch.setattr(reward_weighted, "draw_pool", lambda *a, **k: pytest.fail("the pool was drawn again"))
    again = prepare_pool(cond_base, reward, RewardWeightedConfig(lam=1.0, batch=8, prompts=4, per_prompt=8, steps=5),
                         conditions, torch.Generator().manual_seed(0), F64, path)
    torch.testing.assert_close(again.x, first.x)
    torch.testing.assert_close(again.weights, tilt_weights(first.rewards, 1.0))  # the weights follow lambda
    other_reward = QuadraticReward(torch.tensor([1.0, 0.0], dtype=F64), torch.eye(2, dtype=F64))
    other_base = _CondFree(tilted_gmm(base, reward, 2.0))
    for other in ({"cfg": RewardWeightedConfig(prompts=4, per_prompt=4, steps=5)},
                  {"cfg": RewardWeightedConfig(prompts=4, per_prompt=8, steps=6)}, {"conds": ["a red cube"] * 4},
                  {"reward": other_reward}, {"base": other_base}, {"dtype": torch.float32}, {"seed": 1}):
        with pytest.raises(ValueError, match="other settings"):
            prepare_pool(other.get("base", cond_base), other.get("reward", reward), other.get("cfg", cfg),
                         other.get("conds", conditions), torch.Generator().manual_seed(other.get("seed", 0)),
                         other.get("dtype", F64), path)


class _CondFree(WrappedDenoiser):
    """The 2D mixture, taking (and ignoring) text conditions: a conditional model for the pool's bookkeeping."""

    def forward(self, x, t, cond=None, *, check=True):  # noqa: ANN001, ANN201
        return self.inner(x, t, None, check=check)


def test_bad_settings_are_refused_when_the_config_is_made():
    for bad in ({"lam": 0.0}, {"batch": 0}, {"prompts": 0}, {"per_prompt": 0}, {"steps": 0}, {"chunk": 0}):
        with pytest.raises(ValueError):
            RewardWeightedConfig(**bad)


def test_a_non_finite_reward_on_the_pool_is_refused():
    base = gmm_target()
    cfg = RewardWeightedConfig(prompts=1, per_prompt=8, steps=3)
    with pytest.raises(FloatingPointError, match="not finite"):
        draw_pool(base, lambda x, c=None: torch.full((x.shape[0],), float("nan"), dtype=F64), cfg, None,
                  torch.Generator().manual_seed(0), F64, progress=False)


def test_finetune_command_runs_reward_weighted_with_its_pool_and_refuses_the_pool_elsewhere(tmp_path):
    from typer.testing import CliRunner

    from priorkit.apps.cli import app

    out = tmp_path / "rw"
    runner = CliRunner()
    result = runner.invoke(app, ["finetune", "reward_weighted", "--out", str(out), "--iterations", "2", "--batch", "2",
                                 "--steps", "2", "--pool", "2", "2"])
    assert result.exit_code == 0, result.output
    assert (out / "run" / "pool.safetensors").is_file() and (out / "priorkit.json").is_file()
    spec = json.loads((out / "priorkit.json").read_text())["finetune"]
    assert (spec["config"]["prompts"], spec["config"]["per_prompt"]) == (2, 2)
    assert json.loads((out / "run" / "settings.json").read_text())["pool"] == [2, 2]
    result = runner.invoke(app, ["finetune", "reward_weighted", "--out", str(out), "--iterations", "2", "--batch", "2",
                                 "--steps", "2", "--pool", "3", "2", "--resume"])
    assert result.exit_code == 2 and "pool" in result.output, result.output
    from priorkit.distill.finetune import reward_weighted

    with pytest.MonkeyPatch.context() as mp:  # the same settings: the pool is read back, not drawn
        mp.setattr(reward_weighted, "draw_pool", lambda *a, **k: pytest.fail("the pool was drawn again"))
        result = runner.invoke(app, ["finetune", "reward_weighted", "--out", str(out), "--iterations", "2", "--batch",
                                     "2", "--steps", "2", "--pool", "2", "2", "--resume"])
    assert result.exit_code == 0, result.output
    (out / "run" / "checkpoint").rename(out / "run" / "old")  # an interrupted run's folder: the pool, no checkpoint
    result = runner.invoke(app, ["finetune", "reward_weighted", "--out", str(out), "--iterations", "2", "--batch", "2",
                                 "--steps", "3", "--pool", "2", "2"])
    assert result.exit_code == 2 and "other settings" in result.output and "Traceback" not in result.output
    result = runner.invoke(app, ["finetune", "draft", "--out", str(tmp_path / "d"), "--pool", "3", "2"])
    assert result.exit_code == 2 and "reward_weighted's" in result.output, result.output


def test_finetune_keeps_the_pool_in_the_given_file_and_a_second_run_at_another_lambda_reads_it(tmp_path, monkeypatch):
    from priorkit.distill.finetune import reward_weighted

    base, reward = gmm_target(), _reward()
    path = tmp_path / "shared" / "pool.safetensors"

    def run(lam: float) -> None:
        torch.manual_seed(0)
        model = ResidualDenoiser(base, ScoreResidual(2, hidden=16).double())
        cfg = make_config("reward_weighted", lam=lam, batch=16, prompts=4, per_prompt=8, steps=5)
        finetune("reward_weighted", model, base, reward, cfg, iterations=2, lr=1e-3, dtype=F64, pool_file=path)

    drawn = []
    real = reward_weighted.draw_pool
    monkeypatch.setattr(reward_weighted, "draw_pool", lambda *a, **k: drawn.append(real(*a, **k)) or drawn[-1])
    run(0.5)
    assert path.is_file() and len(drawn) == 1
    monkeypatch.setattr(reward_weighted, "draw_pool", lambda *a, **k: pytest.fail("the pool was drawn again"))
    run(1.0)
    again = reward_weighted.prepare_pool(base, reward, RewardWeightedConfig(lam=1.0, prompts=4, per_prompt=8, steps=5),
                                         None, torch.Generator().manual_seed(999_983), F64, path)
    torch.testing.assert_close(again.x, drawn[0].x)  # the trainer's pool seed (seed 0)
    torch.testing.assert_close(again.weights, tilt_weights(drawn[0].rewards, 1.0))


def test_conditions_repeat_per_row_as_a_list_or_a_tensor_and_anything_else_is_refused():
    from priorkit.distill.finetune.reward_weighted import repeat_rows

    assert repeat_rows(["a", "b"], 2) == ["a", "a", "b", "b"]
    assert repeat_rows(torch.tensor([3, 5]), 2).tolist() == [3, 3, 5, 5]
    with pytest.raises(ValueError, match="as a list"):
        repeat_rows({"text": ["a"]}, 2)


def test_a_fingerprint_tells_models_and_rewards_apart_and_is_the_same_for_equal_ones():
    from priorkit.distill.finetune.reward import CallableReward
    from priorkit.distill.finetune.reward_weighted import fingerprint

    base = gmm_target()
    assert fingerprint(base) == fingerprint(gmm_target()) != fingerprint(tilted_gmm(base, _reward(), 0.5))
    assert fingerprint(_reward()) == fingerprint(_reward()) != fingerprint(
        QuadraticReward(torch.tensor([2.0, 0.5], dtype=F64), torch.eye(2, dtype=F64)))
    assert fingerprint(CallableReward(torch.sum)) != fingerprint(CallableReward(torch.mean))

    class Node:  # an object that refers to itself: hashed once, and the hash ends
        def __init__(self, x: float) -> None:
            self.me, self.x = self, x

    assert fingerprint(Node(1.0)) == fingerprint(Node(1.0)) != fingerprint(Node(2.0))


def test_the_data_term_adds_its_weight_times_the_denoising_loss_on_real_data():
    from priorkit.distill.finetune.reward_weighted import denoising_loss

    base, reward = gmm_target(), _reward()
    cfg = RewardWeightedConfig(lam=0.5, batch=64, prompts=1, per_prompt=256, steps=10, data_weight=0.3)
    pool = draw_pool(base, reward, cfg, None, torch.Generator().manual_seed(0), dtype=F64, progress=False)
    real = base.sample(64, torch.Generator().manual_seed(4))
    model = tilted_gmm(base, reward, 2.0)
    data_fn = lambda n, g: (real[:n], None)  # noqa: E731
    loss, _ = reward_weighted_loss(model, pool, cfg, torch.Generator().manual_seed(1), data_fn)
    g = torch.Generator().manual_seed(1)
    x0, cond, _ = pool_batch(pool, 64, g)
    expected = denoising_loss(model, x0, cond, g) + 0.3 * denoising_loss(model, real, None, g)
    assert float(loss) == pytest.approx(float(expected), rel=1e-12)
    assert float(expected) != pytest.approx(float(denoising_loss(model, x0, cond, torch.Generator().manual_seed(1))))
    with pytest.raises(ValueError, match="needs real data"):
        reward_weighted_loss(model, pool, cfg, torch.Generator().manual_seed(1))
    with pytest.raises(ValueError, match="needs real data"):  # refused before the pool is drawn
        finetune("reward_weighted", ResidualDenoiser(base, ScoreResidual(2, hidden=8).double()), base, reward, cfg,
                 iterations=1, dtype=F64)
    with pytest.raises(ValueError, match="data_weight"):
        RewardWeightedConfig(data_weight=-1.0)


def test_albedo_renders_draw_fine_tuning_prompts_with_their_renders():
    from priorkit.distill.finetune.reward import albedo_renders, albedo_triples

    held = ["red", "blue"]
    x, prompts = albedo_renders(exclude=held)(6, torch.Generator().manual_seed(0))
    assert x.shape == (6, 3, 32, 32) and float(x.min()) >= -1 and float(x.max()) <= 1 and float(x.std()) > 0.1
    allowed = {p for p, _, _ in albedo_triples(exclude=held)}
    assert len(prompts) == 6 and set(prompts) <= allowed
    full = {p for p, _, _ in albedo_triples()}
    assert {"a red cube", "a blue torus"} <= full and not {"a red cube", "a blue torus"} & allowed
    again, same = albedo_renders(exclude=held)(6, torch.Generator().manual_seed(0))
    assert same == prompts and torch.equal(again, x)
