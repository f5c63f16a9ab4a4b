"""Tests for benchmarks/inverse.py and inverse/peers.py: metrics on known inputs, classical baselines, the deepinv
denoiser wrapper against an exact Gaussian posterior mean, the physics wrapper, and a micro run of the benchmark."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch

from benchmarks import inverse as bench
from benchmarks.inverse_peers import DeepinvDenoiser
from priorkit.distill.core.gmm import GaussianMixture
from priorkit.distill.core.schedule import FlowMatching, VPCosine, VPDiscrete
from priorkit.inverse.operators import Blur, Downsampling, Inpainting, box_mask, gaussian_kernel, random_mask

F64 = torch.float64


pytestmark = pytest.mark.usefixtures("single_thread")


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _smooth(H: int = 32, W: int = 32) -> torch.Tensor:
    """(1, 3, H, W) in [0.15, 0.85]: one period of low-frequency sinusoids, different per channel."""
    v, u = torch.meshgrid(torch.linspace(0, 1, H, dtype=F64), torch.linspace(0, 1, W, dtype=F64), indexing="ij")
    chans = [0.5 + 0.2 * torch.sin(2 * math.pi * (u + 0.3 * c)) * torch.cos(math.pi * v) + 0.1 * (u - 0.5)
             for c in range(3)]
    return torch.stack(chans)[None].float()


# ----------------------------------------------------------------------------------------------------------------------
# Metrics
# ----------------------------------------------------------------------------------------------------------------------


def test_psnr_known_values() -> None:
    x = torch.full((3, 16, 16), 0.5)
    assert bench.psnr(x + 0.1, x) == pytest.approx(20.0, abs=1e-5)            # MSE 0.01 -> 20 dB
    assert bench.psnr(x + 0.01, x) == pytest.approx(40.0, abs=1e-3)
    assert bench.psnr(x[None], x[None]) == math.inf
    assert bench.psnr(x * 2, x, data_range=2.0) == pytest.approx(10 * math.log10(4 / 0.25))
    with pytest.raises(ValueError):
        bench.psnr(x, x[:, :8])


def test_ssim_known_values() -> None:
    x = torch.rand(3, 24, 24, generator=_gen(1))
    assert bench.ssim(x, x) == pytest.approx(1.0, abs=1e-12)
    # constant images: no variance, so SSIM = luminance term (2 c1 c2 + C1) / (c1^2 + c2^2 + C1), C1 = (0.01)^2
    c1, c2, C1 = 0.3, 0.6, 0.01**2
    expected = (2 * c1 * c2 + C1) / (c1**2 + c2**2 + C1)
    assert bench.ssim(torch.full((3, 16, 16), c1), torch.full((3, 16, 16), c2)) == pytest.approx(expected, abs=1e-9)
    noisy = (x + 0.2 * torch.randn(x.shape, generator=_gen(2))).clamp(0, 1)
    s = bench.ssim(noisy, x)
    assert 0.0 < s < 0.9 and s == pytest.approx(bench.ssim(x, noisy), abs=1e-12)          # symmetric, < 1


# ----------------------------------------------------------------------------------------------------------------------
# Classical baselines
# ----------------------------------------------------------------------------------------------------------------------


def test_biharmonic_inpainting_of_a_smooth_image_is_near_exact() -> None:
    x = _smooth()
    for mask in (random_mask(32, 32, 0.8, _gen(3)), box_mask(32, 32)):
        op = Inpainting(mask)
        out = bench.classical(op, op.A(x), 0.0)
        assert bench.psnr(out, x) > 40.0
        assert torch.equal(out * mask, (x * mask).clamp(0, 1))                # observed pixels kept


def test_bicubic_upsampling_beats_nearest_on_a_smooth_image() -> None:
    x = _smooth()
    op = Downsampling(4, "bicubic")
    y = op.A(x)
    out = bench.classical(op, y, 0.0)
    nearest = torch.nn.functional.interpolate(y, scale_factor=4, mode="nearest")
    assert out.shape == x.shape
    assert bench.psnr(out, x) > 30.0 and bench.psnr(out, x) > bench.psnr(nearest, x) + 5.0


def test_wiener_deblurring_beats_the_blurred_image() -> None:
    from priorkit.distill.zoo.photos import load_photo

    x = load_photo("coffee")[:, 100:164, 200:264][None]                       # a training photo
    op, sigma = Blur(gaussian_kernel(2.0)), 0.01
    y = op.A(x) + sigma * torch.randn(x.shape, generator=_gen(4))
    out = bench.classical(op, y, sigma)
    assert bench.psnr(out, x) > bench.psnr(y.clamp(0, 1), x) + 1.0
    # the PSF centre convention matches Blur's: no shift beats the unshifted estimate
    shifted = [bench.psnr(torch.roll(out, (dy, dx), (-2, -1)), x) for dy, dx in ((0, 1), (1, 0), (0, -1), (-1, 0))]
    assert bench.psnr(out, x) > max(shifted)


# ----------------------------------------------------------------------------------------------------------------------
# deepinv wrappers
# ----------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("schedule", [FlowMatching(), VPCosine(), VPDiscrete.from_diffusers_config(
    {"num_train_timesteps": 1000, "beta_schedule": "linear", "beta_start": 1e-4, "beta_end": 0.02})],
    ids=["flow", "vp-cosine", "ddpm"])
def test_deepinv_wrapper_is_the_exact_posterior_mean(schedule) -> None:
    # one Gaussian in model range: x0_m ~ N(mu, S); deepinv sees x = (x0_m + 1) / 2 + s n in [0, 1], i.e.
    # 2 x - 1 = x0_m + 2 s n, so E[x | .] = (mu + S (S + 4 s^2 I)^-1 (2 x - 1 - mu) + 1) / 2
    D = 3 * 4 * 4
    gm = GaussianMixture.random(D, 1, generator=_gen(5), dtype=F64, schedule=schedule, sample_shape=(3, 4, 4))
    mu, S = gm.means[0], gm.eigvecs[0] @ torch.diag(gm.eigvals[0]) @ gm.eigvecs[0].T
    wrapped = DeepinvDenoiser(gm)
    x0 = (gm.sample(3, _gen(6)) + 1) / 2
    for sigma in (torch.tensor([0.02, 0.3, 3.0], dtype=F64), 0.1, torch.tensor(0.5, dtype=F64)):
        s = torch.as_tensor(sigma, dtype=F64).reshape(-1).expand(3)
        x = x0 + s.view(-1, 1, 1, 1) * torch.randn(x0.shape, generator=_gen(7), dtype=F64)
        out = wrapped(x, sigma)
        xm = (2 * x - 1).flatten(1)
        expected = torch.stack([(mu + S @ torch.linalg.solve(S + 4 * s[i] ** 2 * torch.eye(D, dtype=F64),
                                                              xm[i] - mu) + 1) / 2 for i in range(3)])
        assert out.dtype == F64
        assert (out.flatten(1) - expected).abs().max() < 1e-8
    assert torch.equal(wrapped(x0, 0.0), x0)                                    # zero noise: E[x0 | x] = x
    mixed = wrapped(x0, torch.tensor([0.0, 0.1, 0.0], dtype=F64))
    assert torch.equal(mixed[0], x0[0]) and not torch.equal(mixed[1], x0[1])


def test_deepinv_wrapper_counts_forward_and_backward() -> None:
    gm = GaussianMixture.random(12, 2, generator=_gen(8), dtype=F64, sample_shape=(3, 2, 2))
    wrapped = DeepinvDenoiser(gm)
    x = torch.rand(2, 3, 2, 2, dtype=F64, generator=_gen(9))
    with torch.no_grad():
        wrapped(x, 0.2)
    out, vjp = torch.func.vjp(lambda z: wrapped(z, 0.2), x)                      # deepinv's PiGDM path
    vjp(torch.ones_like(out))
    xr = x.clone().requires_grad_(True)
    wrapped(xr, 0.2).sum().backward()                                            # deepinv's DPS path
    assert wrapped.counts == {"forward": 3, "backward": 2}
    with pytest.raises(ValueError):
        wrapped(x, -0.1)


@pytest.fixture(scope="module")
def dinv():
    if importlib.util.find_spec("deepinv") is None:
        pytest.skip("deepinv not installed")
    from benchmarks.inverse_peers import load_deepinv

    try:
        return load_deepinv()
    except ImportError as e:
        pytest.skip(str(e))


def test_operator_physics_prox_and_pinv(dinv) -> None:
    from benchmarks.inverse_peers import operator_physics

    x = torch.rand(1, 3, 16, 16, dtype=F64, generator=_gen(10))
    for op in (Blur(gaussian_kernel(1.5).double()), Downsampling(4), Inpainting(random_mask(16, 16, 0.5, _gen(11)))):
        phys = operator_physics(op, 0.05)
        assert isinstance(phys, dinv.physics.LinearPhysics)
        y = op.A(x)
        assert torch.allclose(phys.A(x), y) and torch.allclose(phys.A_adjoint(y), op.At(y))
        assert torch.allclose(phys.A_dagger(y), op.pinv(y))
        z, gamma = torch.rand(x.shape, dtype=F64, generator=_gen(12)), 0.7
        u = phys.prox_l2(z, y + 0.1, gamma)
        # optimality of argmin gamma/2 |A u - y|^2 + 1/2 |u - z|^2:  gamma A^T (A u - y) + u - z = 0
        residual = gamma * op.At(op.A(u) - (y + 0.1)) + u - z
        assert residual.abs().max() < 1e-8
        assert float(phys.noise_model.sigma) == pytest.approx(0.05)


# ----------------------------------------------------------------------------------------------------------------------
# The benchmark end to end
# ----------------------------------------------------------------------------------------------------------------------


def _tiny_prior(folder: Path, size: int, scheduler: dict) -> Path:
    """A randomly initialised diffusers UNet2DModel saved as a loadable prior folder."""
    from diffusers import UNet2DModel

    torch.manual_seed(0)
    unet = UNet2DModel(sample_size=size, in_channels=3, out_channels=3, layers_per_block=1,
                       block_out_channels=(8, 16), down_block_types=("DownBlock2D", "DownBlock2D"),
                       up_block_types=("UpBlock2D", "UpBlock2D"), norm_num_groups=4)
    unet.save_pretrained(str(folder), safe_serialization=True)
    (folder / "scheduler_config.json").write_text(json.dumps(scheduler))
    return folder


def test_budgets_follow_the_options() -> None:
    args = bench.parse_args(["--dps-nfe", "1000", "--pigdm-nfe", "50"])
    b = bench.budgets_for(args)
    assert b["dps"] == b["dinv_dps"] == 1000 and b["pigdm"] == b["dinv_pigdm"] == 50
    quick = bench.budgets_for(bench.parse_args(["--quick", "--dinv-pigdm-nfe", "7"]))
    assert quick["pigdm"] == 20 and quick["dinv_pigdm"] == 7
    with pytest.raises(SystemExit):
        bench.parse_args(["--methods", "pigdm,nonsense"])
    with pytest.raises(SystemExit):
        bench.parse_args(["--prior", "nowhere"])


def test_micro_run_writes_valid_json(tmp_path: Path) -> None:
    shapes_prior = _tiny_prior(tmp_path / "shapes", 32, {"_class_name": "DDPMScheduler", "num_train_timesteps": 1000,
                                                          "beta_schedule": "squaredcos_cap_v2",
                                                          "prediction_type": "v_prediction"})
    photos_prior = _tiny_prior(tmp_path / "photos", 16, {"_class_name": "FlowMatchEulerDiscreteScheduler",
                                                          "num_train_timesteps": 1000})
    out = tmp_path / "bench.json"
    budgets = [a for m in bench.PRIOR_METHODS for a in (f"--{m.replace('_', '-')}-nfe", "2")]
    tasks = ["sr4", "inpaint_random"]
    argv = ["--json", str(out), "--images", "1", "--size", "32", "--pictures", str(tmp_path / "pics"),
            "--tasks", ",".join(tasks), "--dflow-steps", "1",
            "--prior", f"shapes={shapes_prior}", "--prior", f"photos={photos_prior}",
            "--student", f"shapes={shapes_prior}", "--student", f"photos={tmp_path / 'no-such-student'}", *budgets]
    if importlib.util.find_spec("deepinv") is None:
        argv += ["--methods", ",".join(m for m in bench.METHODS if not m.startswith("dinv"))]
    bench.main(argv)
    records = json.loads(out.read_text())
    methods = {r["method"] for r in records}
    assert {"pinv", "classical", "pigdm", "pigdm_flow", "dps", "dflow", "dflow_student"} <= methods
    # dflow_student runs where a student loads (shapes) and is skipped with the reason elsewhere (photos)
    assert not any(r["method"] == "dflow_student" for r in records if r["domain"] == "photos")
    assert len(records) == 2 * len(tasks) * len(methods) - len(tasks)
    keys = {"domain", "task", "method", "psnr", "ssim", "nfe", "seconds", "megapixels", "judge_accuracy"}
    for r in records:
        assert keys <= set(r)
        assert r["domain"] in bench.DOMAINS and r["task"] in tasks
        assert isinstance(r["psnr"], float) and math.isfinite(r["psnr"]) and -1.0 <= r["ssim"] <= 1.0
        assert isinstance(r["nfe"], int) and isinstance(r["seconds"], float) and r["seconds"] >= 0
        assert r["megapixels"] == pytest.approx(32 * 32 / 1e6)                 # --size 32; shapes renders are 32x32
        if r["domain"] == "shapes":
            assert r["judge_accuracy"] in (0.0, 1.0)
        else:
            assert r["judge_accuracy"] is None
        if r["method"] in ("pinv", "classical"):
            assert r["nfe"] == 0 and r["backward"] == 0
        elif r["method"] == "pigdm_mean":                                 # 4 samples x max(1, 2 // 4) steps
            assert r["nfe"] == r["backward"] == bench.DEFAULTS.mean_samples
        elif r["method"] == "diffpir_mean":                     # 4 samples, each at the budget, no backward pass
            assert r["nfe"] == 2 * bench.DEFAULTS.mean_samples and r["backward"] == 0
        elif r["method"] in ("pigdm", "pigdm_flow", "dps", "diffpir", "pnp_flow", "dinv_pigdm", "dinv_dps",
                             "dinv_diffpir"):
            assert r["nfe"] == 2                                                 # the budget, counted
            assert r["backward"] == (0 if r["method"] in ("diffpir", "pnp_flow", "dinv_diffpir") else 2)
        else:
            assert r["nfe"] > 0 and r["backward"] > 0
    for domain in bench.DOMAINS:
        assert (tmp_path / "pics" / f"inverse_{domain}.png").is_file()
    assert "| shapes | sr4 | pigdm |" in bench.table(records)

    # --resume: a run killed after some records measures only the rest, and the JSON ends up the same
    partial = [r for r in records if not (r["domain"] == "shapes" and r["task"] == "inpaint_random"
                                          and r["method"] in ("pigdm", "classical"))]
    out.write_text(json.dumps(partial))
    i = argv.index("--pictures")
    plain = argv[:i] + argv[i + 2:]
    resumed = bench.main([*plain, "--resume", "--methods", "pinv,classical,pigdm", "--domains", "shapes"])
    assert len(resumed) == len(partial) + 2
    again = {(r["domain"], r["task"], r["method"], r["image"]) for r in resumed}
    assert again == {(r["domain"], r["task"], r["method"], r["image"]) for r in records}
    # --repeats: more posterior samples of the same measurements for the prior methods, not the others
    more = bench.main([*plain, "--json", str(tmp_path / "repeats.json"), "--repeats", "2", "--methods", "pinv,pigdm",
                       "--domains", "shapes"])
    assert sorted(r["sample"] for r in more if r["method"] == "pigdm") == [0, 0, 1, 1]
    assert [r["sample"] for r in more if r["method"] == "pinv"] == [0, 0]
    first = {(r["task"], r["sample"]): r["psnr"] for r in more if r["method"] == "pigdm"}
    assert all(first[(t, 0)] != first[(t, 1)] for t in tasks)
    with pytest.raises(SystemExit, match="picture-image"):  # a measured image cannot be pictured on resume
        bench.main([*argv, "--resume", "--methods", "pigdm", "--domains", "shapes"])


def _rec(task: str, method: str, image: int, psnr: float, seconds: float, nfe: int = 100, judge: float = 1.0,
         domain: str = "shapes") -> dict:
    return {"domain": domain, "task": task, "method": method, "image": image, "psnr": psnr, "ssim": 0.9,
            "nfe": nfe, "backward": nfe, "seconds": seconds, "judge_accuracy": judge}


def test_goals_can_fail_and_pass() -> None:
    recs = [_rec("sr4", "pinv", i, 20.0, 0.0, 0) for i in range(3)]
    recs += [_rec("sr4", "pigdm", i, 24.0 + i, 5.0) for i in range(3)]              # +5 dB over A^+ y
    recs += [_rec("sr4", "dps", i, 26.0, 60.0, 1000) for i in range(3)]             # DPS better: not met
    recs += [_rec("sr4", "dinv_pigdm", i, 25.0 + i, 6.0) for i in range(3)]         # 1 dB better, se 0: not met
    lines = bench.goals(recs)
    assert any(x.startswith("MET: shapes sr4: PiGDM - A^+y = +5.00 dB") for x in lines)
    assert any(x.startswith("NOT MET: shapes sr4: DPS 26.00 dB") for x in lines)
    assert any(x.startswith("NOT MET: shapes sr4: PiGDM - deepinv PiGDM = -1.00 +/- 0.00") for x in lines)
    recs += [_rec("sr4", "pigdm_mean", i, 27.0, 4.0) for i in range(3)]             # >= DPS, 15x faster: met
    assert any(x.startswith("MET: shapes sr4: DPS 26.00 dB") for x in bench.goals(recs))
    photos = [_rec("sr4", "classical", 0, 30.0, 0.0, 0, None, "photos"), _rec("sr4", "pigdm", 0, 29.0, 9.0, 100,
                                                                                    None, "photos")]
    assert bench.goals(photos) == ["NOT MET: photos sr4: pigdm - classical = -1.00 dB (goal >= 0)"]


def test_a_domain_without_its_prior_is_skipped_with_the_reason(tmp_path: Path, capsys) -> None:
    out = tmp_path / "skip.json"
    records = bench.main(["--json", str(out), "--domains", "photos", "--methods", "pigdm",
                          "--prior", f"photos={tmp_path / 'no-such-prior'}"])
    assert records == [] and json.loads(out.read_text()) == []
    assert "photos: skipped" in capsys.readouterr().out


def test_box_task_hides_half_the_image() -> None:
    task, mask = bench.task_setup("inpaint_box", 32, 32, seed=0)
    assert task == "inpaint_mask" and mask is not None
    assert float(mask.mean()) == 0.5 and bool((mask[..., :, 16:] == 0).all())
    task, mask = bench.task_setup("inpaint_random", 32, 32, seed=0)
    assert abs(float(1 - mask.mean()) - bench.DEFAULTS.random_missing) < 1e-3


def test_speed_mode_times_the_default_method_on_photo_sizes(tmp_path: Path) -> None:
    """--speed: held-out photo 0 at the case's side, degraded, restored as a user's run is (tiled); records carry
    seconds, megapixels, tiles and the goal."""
    prior = _tiny_prior(tmp_path / "photos", 16, {"_class_name": "FlowMatchEulerDiscreteScheduler",
                                                   "num_train_timesteps": 1000})
    from priorkit.distill.loading import load_denoiser

    recs = bench.run_speed("diffpir", load_denoiser(str(prior)), [("sr4", 32, 60.0), ("inpaint_box", 24, 60.0)],
                           nfe=2)
    assert [(r["task"], r["megapixels"], r["nfe"], r["backward"]) for r in recs] == [
        ("sr4", 32 * 32 / 1e6, 2, 0), ("inpaint_box", 24 * 24 / 1e6, 2, 0)]
    assert recs[0]["tiles"] == 9 and recs[1]["tiles"] == 4       # 16 px tiles, overlap 8 (half a tile) on 32 and 24
    assert all(r["seconds"] > 0 and r["goal_seconds"] == 60.0 and math.isfinite(r["psnr"]) for r in recs)
    args = bench.parse_args(["--speed", "--speed-nfe", "3"])
    assert args.speed and args.speed_nfe == 3
