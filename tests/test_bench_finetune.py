"""benchmarks.finetune (2D): the records' fields, the residual network chosen, the reference rows' order."""

from __future__ import annotations

import pytest
import torch

from benchmarks import finetune as bench
from priorkit.distill.finetune.residual import FourierResidual, ScoreResidual
from priorkit.distill.zoo.toy import gmm_target


def test_mixture_std_is_the_per_axis_spread_of_the_ring():
    base = gmm_target()  # radius 2, std 0.2: per-axis variance 2^2 / 2 + 0.2^2
    assert bench.mixture_std(base) == pytest.approx((2.0 + 0.04) ** 0.5, rel=1e-12)
    assert bench.mixture_std(base) == pytest.approx(
        float(base.sample(200_000, torch.Generator().manual_seed(0)).std(0).mean()), rel=0.01)


def test_residual_network_by_name():
    base = gmm_target()
    for parts in ("both", "gradient", "vector"):
        net = bench.residual_network(parts, base)
        assert isinstance(net, FourierResidual)
        assert (net.phi is not None, net.vector is not None) == (parts != "vector", parts != "gradient")
        assert net.data_std == bench.mixture_std(base)
    assert isinstance(bench.residual_network("mlp", base), ScoreResidual)
    with pytest.raises(ValueError, match="unknown residual"):
        bench.residual_network("scalar", base)


def test_a_tiny_run_writes_every_row_with_its_settings(tmp_path, monkeypatch):
    batches = []

    def finetune(*args, **kwargs):  # the real training, with the batch it was given recorded
        batches.append((args[4].batch, args[4].spacing))
        return real(*args, **kwargs)

    real = bench.finetune
    monkeypatch.setattr(bench, "finetune", finetune)
    grids, real_times = [], bench.memoryless_times

    def times(den, steps, t_end=1e-3, spacing="logsnr"):  # noqa: ANN001, ANN202  (every evaluation's grid)
        grids.append(spacing)
        return real_times(den, steps, t_end, spacing)

    monkeypatch.setattr(bench, "memoryless_times", times)
    records = bench.run(2, ("adjoint_matching",), (1.0,), tmp_path, residual="both", seed=3, grad_clip=0.0, batch=32,
                        spacing="time")
    assert batches == [(32, "time")]
    assert grids == ["time"] * 4  # the base floor, the base, the exact tilted model and the fine-tuned model
    assert [r["method"] for r in records] == ["exact_resample", "base_sampler_floor", "tilted_sampler_floor", "base",
                                              "adjoint_matching"]
    for r in records:
        assert {"target", "method", "reward", "kl_or_w2", "seconds"} <= set(r)
        assert (r["residual"], r["seed"], r["grad_clip"], r["ema"], r["steps"], r["eval_steps"], r["batch"],
                r["spacing"]) == ("both", 3, 0.0, 0.0, bench.STEPS, bench.STEPS, 32, "time")
    floor, model = records[0]["kl_or_w2"], records[-1]["kl_or_w2"]
    assert 0 < floor < model  # 2 iterations cannot reach the exact resample
    assert (tmp_path / "finetune_2d.png").exists()


def test_the_2d_only_flags_are_refused_elsewhere_and_checked(monkeypatch, capsys):
    for argv, message in ((["--target", "shapes", "--seed", "2"], "--seed: 2d only"),
                          (["--target", "shapes-v2", "--residual", "mlp"], "--residual: 2d only"),
                          (["--target", "shapes", "--spacing", "time"], "--spacing: 2d only"),
                          (["--grad-clip", "-1"], "--grad-clip must be"), (["--ema", "1"], "--ema in"),
                          (["--batch", "0"], "--batch must be >= 1"), (["--lambdas", "0"], "--lambdas must be > 0"),
                          (["--spacing", "ddpm"], "invalid choice")):
        monkeypatch.setattr("sys.argv", ["finetune", *argv])
        with pytest.raises(SystemExit) as e:
            bench.main()
        assert e.value.code == 2
        assert message in capsys.readouterr().err, argv


def test_the_default_batch_is_256_in_2d_and_8_on_the_shapes(monkeypatch, tmp_path):
    import benchmarks.finetune_shapes as shapes_bench

    seen = {}
    monkeypatch.setattr(bench, "run", lambda *a: seen.setdefault("2d", a[10]) and [])
    monkeypatch.setattr(shapes_bench, "run", lambda *a, **k: seen.setdefault("shapes", k["batch"]) and [])
    for argv in ([], ["--target", "shapes"]):
        monkeypatch.setattr("sys.argv", ["finetune", "--json", str(tmp_path / "f.json"), *argv])
        bench.main()
    assert seen == {"2d": bench.BATCH, "shapes": 8} and bench.BATCH == 256


def test_a_lambda_run_alone_scores_against_the_full_runs_samples(tmp_path):
    records = bench.run(1, (), (0.5,), tmp_path)
    assert round(records[0]["kl_or_w2"], 4) == 0.0302  # the full run's exact_resample at lambda 0.5


def test_the_exact_sets_do_not_depend_on_which_lambdas_are_run():
    """A run of lambda 0.5 alone scores against the same exact samples as the full run (they once came from one
    generator in the order the lambdas were run, so the floor of a 0.5-only run was 0.020, not the records' 0.030)."""
    base, reward = gmm_target(), bench.QuadraticReward(torch.tensor([2.0, 0.0], dtype=torch.float64),
                                                       torch.eye(2, dtype=torch.float64))
    full_base, full = bench.exact_sets(base, reward, (1.0, 0.5))
    alone_base, alone = bench.exact_sets(base, reward, (0.5, 0.25))
    assert torch.equal(full_base, alone_base)
    for a, b in zip(full[0.5], alone[0.5], strict=True):
        assert torch.equal(a, b)
    assert round(bench.w2(*full[1.0][::-1]), 4) == 0.0483 and round(bench.w2(*full[0.5][::-1]), 4) == 0.0302  # records
    other, again = alone[0.25], bench.exact_sets(base, reward, (0.25,))[1][0.25]
    assert torch.equal(other[0], again[0]) and not torch.equal(other[0], full[0.5][0])


def test_the_exact_tilt_rows_weigh_the_base_samples_by_exp_r_over_lambda(monkeypatch):
    """The shapes-v2 exact-tilt rows on the bundled prior and judge (3 + 2 prompts, 4 samples each, 2 solver steps):
    a huge lambda gives the base pool's own figures, a tiny one those of each prompt's best-rewarded sample."""
    import benchmarks.finetune_shapes as fs
    import benchmarks.priors as priors
    from priorkit.distill.loading import load_denoiser
    from priorkit.distill.zoo.judge import DEFAULT_DIR, load_judge

    names, held = fs.v2_eval_prompts()
    monkeypatch.setattr(fs, "v2_eval_prompts", lambda: (names[:3], held[:2]))
    monkeypatch.setattr(priors, "STEPS", 2)
    monkeypatch.setattr(fs, "TILT_REPEATS", 2)
    den, judge = load_denoiser("shapes-v2"), load_judge(DEFAULT_DIR.parent / "judge-v2")
    img, r, hit = fs.tilt_pool(den, judge, names[:3], 4, fs.TILT_SEEDS[0])  # the draws the rows make
    _, r_held, hit_held = fs.tilt_pool(den, judge, held[:2], 4, fs.TILT_SEEDS[1])
    assert img.shape == (12, 3, 32, 32) and r.shape == hit.shape == (3, 4)
    pairs = [(sh, c) for _, sh, c in names[:3] for _ in range(4)]  # each hit is the v2 rule on its own image
    assert torch.equal(hit.flatten().bool(), priors.v2_hits(judge, img, pairs))
    (pool, _), (flat, _), (sharp, shown) = fs.tilted_reference(den, judge, (1e9, 1e-9), 4)
    assert pool["method"] == "base_pool" and pool["lam"] is None
    assert {k: pool[k] for k in ("accuracy", "reward", "ess")} == pytest.approx(
        {k: flat[k] for k in ("accuracy", "reward", "ess")})
    assert flat["accuracy"] == pytest.approx(float(hit.mean()))
    assert flat["heldout_accuracy"] == pytest.approx(float(hit_held.mean()))
    assert sharp["heldout_accuracy"] == pytest.approx(float(hit_held[torch.arange(2), r_held.argmax(1)].mean()))
    assert pool["kl_or_w2"] == pytest.approx(flat["kl_or_w2"])  # uniform weights: the same draws, the same distance
    assert flat["reward"] == pytest.approx(float(r.mean()))
    assert flat["ess"] == pytest.approx(4.0)
    best = r.argmax(1)
    assert sharp["accuracy"] == pytest.approx(float(hit[torch.arange(3), best].mean()))
    assert sharp["reward"] == pytest.approx(float(r.max(1).values.mean()))
    assert sharp["ess"] == pytest.approx(1.0)
    assert torch.equal(shown[::2], img.view(3, 4, 3, 32, 32)[torch.arange(3), best])  # the best drawn first
    assert flat["method"] == "exact_tilt" and flat["lam"] == 1e9 and flat["tilt_samples"] == 4
    assert flat["kl_or_w2"] > 0 and sharp["kl_or_w2_spread"] >= 0
    with pytest.raises(ValueError, match="lambdas > 0"):
        fs.tilted_reference(den, judge, (0.0,), 4)
    with pytest.raises(ValueError, match="k must be >= 2"):
        fs.tilted_reference(den, judge, (1.0,), 1)


def test_the_rows_only_run_passes_its_lambdas_and_prints_every_row(monkeypatch, tmp_path, capsys):
    import benchmarks.finetune_shapes as shapes_bench

    seen = {}
    rows = [{"method": m, "iteration": 0, "guidance": 1.0, "accuracy": 0.5, "heldout_accuracy": 0.4, "reward": -1.0,
             "kl_or_w2": 1.2, "seconds": 3.0, "lam": lam} for m, lam in (("base_pool", None), ("exact_tilt", 0.5))]

    def run(methods, *a, **k):
        seen.update(methods=methods, **k)
        return rows

    monkeypatch.setattr(shapes_bench, "run", run)
    monkeypatch.setattr("sys.argv", ["finetune", "--target", "shapes-v2", "--rows-only", "--tilt-samples", "16",
                                     "--lambdas", "1", "0.5", "--json", str(tmp_path / "f.json")])
    bench.main()
    assert seen["methods"] == () and seen["tilt_samples"] == 16 and seen["tilt_lams"] == (1.0, 0.5)
    out = capsys.readouterr().out
    assert "| base (the exact-tilt rows' pool) | 0 | 1 | 0.5000 |" in out and "| exact tilt (lambda 0.5) |" in out


def test_the_tilt_flags_are_checked(monkeypatch, capsys):
    for argv, message in ((["--target", "2d", "--tilt-samples", "4"], "is for --target shapes-v2"),
                          (["--target", "shapes-v2", "--tilt-samples", "-1"], "must be >= 0"),
                          (["--target", "shapes-v2", "--tilt-samples", "1"], "cannot tilt anything"),
                          (["--target", "2d", "--rows-only"], "is for the shapes targets"),
                          (["--target", "shapes-v2", "--rows-only", "--methods", "draft_k1"], "drop --methods"),
                          (["--target", "shapes-v2", "--rows-only", "--no-base"], "would run nothing")):
        monkeypatch.setattr("sys.argv", ["finetune", *argv])
        with pytest.raises(SystemExit):
            bench.main()
        assert message in capsys.readouterr().err


def test_reward_weighted_takes_its_pool_and_records_it(tmp_path, monkeypatch):
    seen = []
    real = bench.finetune

    def finetune(*args, **kwargs):
        seen.append((args[4].prompts, args[4].per_prompt, args[4].steps, args[4].lam))
        return real(*args, **kwargs)

    monkeypatch.setattr(bench, "finetune", finetune)
    records = bench.run(2, ("reward_weighted",), (0.5,), tmp_path, pool=(4, 8))
    assert seen == [(4, 8, bench.STEPS, 0.5)]
    assert records[-1]["method"] == "reward_weighted" and records[-1]["pool"] == [4, 8]
    assert all("pool" not in r for r in records[:-1])


def test_the_pool_flags_are_checked_and_passed_to_the_shapes_run(monkeypatch, tmp_path, capsys):
    import benchmarks.finetune_shapes as shapes_bench

    for argv, message in ((["--pool", "0", "4"], "--pool P K must be >= 1"),
                          (["--pool-file", str(tmp_path / "p.safetensors")], "--pool-file is for the shapes"),
                          (["--methods", "adjoint_matching", "--pool", "4", "4"], "are reward_weighted's"),
                          (["--target", "shapes-v2", "--rows-only", "--tilt-samples", "4", "--pool-file", "p"],
                           "are reward_weighted's")):
        monkeypatch.setattr("sys.argv", ["finetune", *argv])
        with pytest.raises(SystemExit):
            bench.main()
        assert message in capsys.readouterr().err
    seen = {}
    monkeypatch.setattr(shapes_bench, "run", lambda *a, **k: seen.update(k) or [])
    monkeypatch.setattr("sys.argv", ["finetune", "--target", "shapes-v2", "--methods", "reward_weighted", "--pool", "8",
                                     "4", "--pool-file", str(tmp_path / "p.safetensors"),
                                     "--json", str(tmp_path / "f.json")])
    bench.main()
    assert seen["pool"] == (8, 4) and seen["pool_file"] == tmp_path / "p.safetensors"
    for argv, pool in ((["--quick"], (2, 2)), (["--quick", "--pool", "3", "5"], (3, 5)), ([], (256, 16))):
        monkeypatch.setattr("sys.argv", ["finetune", "--target", "shapes-v2", "--methods", "reward_weighted", *argv,
                                         "--json", str(tmp_path / "f.json")])
        bench.main()
        assert seen["pool"] == pool, argv
    assert shapes_bench.METHODS["reward_weighted"][0] == "reward_weighted"
