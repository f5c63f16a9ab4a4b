"""The bundled models, measured.

    python -m benchmarks.priors --json outputs/bench/priors.json [--samples 8] [--skip-photos]

Records {"prior", "metric", "value"}:
  judge / heldout_accuracy          joint (shape and colour) accuracy on renders from new cameras
  shapes / prompt_accuracy          judge accuracy on samples of every (shape, colour) prompt (CFG, 25 steps)
  shapes / paraphrase_accuracy      the same on paraphrases never seen in training ("a crimson ball", ...)
  shapes / seconds_per_sample       at 25 steps with CFG (batch of 8)
  shapes / paraphrase_accuracy_extra  two more paraphrases built only from held-out words
  photos / denoise_psnr, blur_psnr, psnr_gain_db   x0-prediction vs a Gaussian blur tuned on the training photos,
                                    at noise std 0.2 in the [0, 1] image range (0.4 in the model's [-1, 1] range),
                                    on held-out photo patches; the same with suffix "_sigma0.1" at std 0.1, and
                                    with suffix "_v2" on the held-out photos of set v2 (--photo-set-v2)
  photos / seconds_per_sample
  shapes / fid_judge                Frechet distance of judge features (samples at 25 steps, CFG 3, one per basic
                                    prompt and seed vs held-out renders): a shapes-world FID a blurry mean cannot pass
With a v2 shapes prior (--shapes-prior, world v2 in its priorkit.json) and the v2 judge (weights/judge-v2):
  shapes / heldout_colour_accuracy  shape right and the judge's albedo within CIEDE2000 15 of a held-out colour name
  shapes / heldout_shape_colour_accuracy   the same for held-out shape words with held-out colour names
  shapes / camera_agreement         cube samples given the camera: the silhouette is closer (IoU) to the true cube
                                    at the asked azimuth than at azimuth + 45 degrees (face-on vs corner-on)
  shapes / camera_agreement_without_camera   the same without the camera input (chance level expected)
  shapes / training_colour_accuracy the held-out colour figure's rule on 172 training colour names (in-vocabulary)
  shapes / text_probe_colour_ridge, text_probe_colour_mlp   the ceiling the text encoder sets: held-out colour
                                    accuracy of a ridge / MLP probe from its sentence embedding to CIELAB fitted on
                                    the training names (priorkit.distill.zoo.text_probe; no image involved)
  shapes / text_probe_shape_words   held-out shape words whose embedding is nearest a training word of their shape
Also writes sample grids next to the JSON.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch

from priorkit.apps.sampling import grid_image
from priorkit.distill.core.samplers import initial_noise, sample
from priorkit.distill.loading import load_denoiser
from priorkit.distill.zoo import shapes
from priorkit.distill.zoo.judge import frechet_distance, judge_features, load_judge

STEPS, GUIDANCE = 25, 3.0


def judge_heldout(n: int = 1000, seed: int = 123_457) -> float:
    judge = load_judge()
    data = shapes.make_dataset(n, size=32, seed=seed)
    return judge.accuracy(data["images"].float() / 255.0, data["shape"], data["colour"])


@torch.no_grad()
def prompt_accuracy(den, judge, prompts: list[tuple[str, str, str]], n: int, seed: int, guidance: float = GUIDANCE
                    ) -> tuple[float, torch.Tensor, float]:
    """Judge accuracy over ``n`` samples per (prompt, shape, colour); also the images and seconds/sample."""
    g = torch.Generator().manual_seed(seed)
    hits, images, seconds = 0, [], 0.0
    for prompt, shape, colour in prompts:
        x = initial_noise(den, (n, *den.sample_shape), generator=g)
        t0 = time.perf_counter()
        y = sample(den, x, steps=STEPS, solver="dpm++2m", cond=[prompt], guidance=guidance, progress=False)
        seconds += time.perf_counter() - t0
        img = ((y.clamp(-1, 1) + 1) / 2).float()
        s_idx, c_idx = judge.predict(img)
        hits += int(((s_idx == shapes.SHAPES.index(shape)) & (c_idx == shapes.COLOUR_NAMES.index(colour))).sum())
        images.append(y)
    total = n * len(prompts)
    return hits / total, torch.cat(images), seconds / total


def gaussian_blur_denoiser(x, sigma_blur: float):  # noqa: ANN001, ANN201
    import kornia

    if sigma_blur <= 0:
        return x
    k = max(3, 2 * math.ceil(3 * sigma_blur) + 1)
    return kornia.filters.gaussian_blur2d(x, (k, k), (sigma_blur, sigma_blur), border_type="reflect")


@torch.no_grad()
def photos_denoising(n: int = 256, noise: float = 0.2, seed: int = 0, photo_set: str = "v1") -> dict[str, float]:
    """Denoising PSNR of the photos prior's x0 at image-range noise std ``noise`` vs the best Gaussian blur (tuned on
    the training photos of ``photo_set``), on patches of its held-out photos."""
    from priorkit.distill.zoo.photos import PHOTO_SETS, PatchSampler

    train_names, held_names = PHOTO_SETS[photo_set]
    den = load_denoiser("photos")
    g = torch.Generator().manual_seed(seed)
    train = PatchSampler(train_names)(n, g)
    test = PatchSampler(held_names)(n, g)

    def psnr(a, b):  # noqa: ANN001, ANN202  images in [-1, 1]: peak-to-peak 2
        return float(10 * torch.log10(4.0 / ((a - b) ** 2).mean(dim=(1, 2, 3))).mean())

    noise = 2.0 * noise  # image range [0, 1] -> model range [-1, 1]
    noisy_train = train + noise * torch.randn(train.shape, generator=g)
    best = max((psnr(gaussian_blur_denoiser(noisy_train, s), train), s) for s in torch.linspace(0, 3, 31).tolist())
    sigma_blur = best[1]
    noisy = test + noise * torch.randn(test.shape, generator=g)
    # the schedule time whose noise-to-signal ratio is `noise`: x_t / alpha = x0 + noise * eps
    t = den.schedule.t_from_log_snr(torch.tensor(-2 * math.log(noise), dtype=torch.float64))
    a = den.schedule.alpha(t)
    x0 = torch.cat([den(noisy[i:i + 32] * float(a), t.float()).x0 for i in range(0, n, 32)])
    prior_psnr = psnr(x0.clamp(-1, 1), test)
    blur_psnr = psnr(gaussian_blur_denoiser(noisy, sigma_blur).clamp(-1, 1), test)
    return {"denoise_psnr": prior_psnr, "blur_psnr": blur_psnr, "psnr_gain_db": prior_psnr - blur_psnr,
            "blur_sigma": sigma_blur}


def run(samples: int, out_dir: Path, skip_photos: bool = False, skip_shapes: bool = False,
        shapes_prior: str = "shapes", photo_set_v2: bool = False) -> list[dict]:
    records: list[dict] = []
    if not skip_shapes:
        records += shapes_records(samples, out_dir, shapes_prior)
    if not skip_photos:
        records += photos_records(out_dir, photo_set_v2)
    return records


@torch.no_grad()
def fid_judge(den, judge, n_per_prompt: int = 8, seed: int = 5) -> float:  # noqa: ANN001
    """Judge-feature Frechet distance: samples of the 40 basic prompts vs as many held-out renders."""
    prompts = [shapes.caption(s, c) for s in shapes.SHAPES for c in shapes.COLOUR_NAMES]
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(0, len(prompts), 10):
        cond = [p for p in prompts[i:i + 10] for _ in range(n_per_prompt)]
        x = initial_noise(den, (len(cond), *den.sample_shape), generator=g)
        y = sample(den, x, steps=STEPS, solver="dpm++2m", cond=cond, guidance=GUIDANCE, progress=False)
        out.append(((y.clamp(-1, 1) + 1) / 2).float())
    images = torch.cat(out)
    real, _, _ = shapes.held_out_renders(len(images), seed=seed)
    return frechet_distance(judge_features(judge, images), judge_features(judge, real))


def shapes_records(samples: int, out_dir: Path, prior: str = "shapes") -> list[dict]:
    records = [{"prior": "judge", "metric": "heldout_accuracy", "value": judge_heldout()}]
    print(f"judge held-out accuracy: {records[0]['value']:.4f}")
    den, judge = load_denoiser(prior), load_judge()
    prompts = [(shapes.caption(s, c), s, c) for s in shapes.SHAPES for c in shapes.COLOUR_NAMES]
    acc, imgs, sec = prompt_accuracy(den, judge, prompts, samples, seed=0)
    grid_image(imgs, ncol=samples, scale=2).save(out_dir / "shapes_prompts.png")
    records += [{"prior": "shapes", "metric": "prompt_accuracy", "value": acc},
                {"prior": "shapes", "metric": "seconds_per_sample", "value": sec}]
    print(f"shapes prompt accuracy: {acc:.4f} ({sec:.3f} s/sample)")
    para = list(shapes.PARAPHRASE_PROMPTS)
    pimgs = []
    for name, chosen, seed in (("paraphrase_accuracy", para[:5], 1), ("paraphrase_accuracy_extra", para[5:], 2)):
        pacc, imgs, _ = prompt_accuracy(den, judge, chosen, samples, seed=seed)
        pimgs.append(imgs)
        records.append({"prior": "shapes", "metric": name, "value": pacc})
        print(f"shapes {name}: {pacc:.4f}  ({', '.join(p for p, _, _ in chosen)})")
    grid_image(torch.cat(pimgs), ncol=samples, scale=3).save(out_dir / "shapes_paraphrases.png")
    fid = fid_judge(den, judge)
    records.append({"prior": "shapes", "metric": "fid_judge", "value": fid})
    print(f"shapes judge-feature FID (25 steps, CFG {GUIDANCE}): {fid:.3f}")
    if is_v2(prior):
        records += shapes_v2_records(den, samples, out_dir)
    return records


def is_v2(prior: str) -> bool:
    """Whether a shapes prior (bundled name or folder) was trained on the v2 world."""
    from priorkit.distill.core.loading import BUNDLED_DIR

    folder = BUNDLED_DIR / prior if (BUNDLED_DIR / prior).is_dir() else Path(prior)
    spec = folder / "priorkit.json"
    return spec.is_file() and json.loads(spec.read_text()).get("world") == "v2"


@torch.no_grad()
def v2_accuracy(den, judge, prompts: list[tuple[str, str, str]], n: int, seed: int,  # noqa: ANN001
                guidance: float = GUIDANCE) -> tuple[float, torch.Tensor]:
    """Shape right (judge) and albedo within the colour threshold of the named colour, over n samples a prompt."""
    g = torch.Generator().manual_seed(seed)
    hits, images = 0, []
    for i in range(0, len(prompts), 16):
        chunk = prompts[i:i + 16]
        cond = [p for p, _, _ in chunk for _ in range(n)]
        x = initial_noise(den, (len(cond), *den.sample_shape), generator=g)
        y = sample(den, x, steps=STEPS, solver="dpm++2m", cond=cond, guidance=guidance, progress=False)
        img = ((y.clamp(-1, 1) + 1) / 2).float()
        hits += int(v2_hits(judge, img, [(s, c) for _, s, c in chunk for _ in range(n)]).sum())
        images.append(img)
    return hits / (n * len(prompts)), torch.cat(images)


def v2_hits(judge, images: torch.Tensor, pairs: list[tuple[str, str]]) -> torch.Tensor:  # noqa: ANN001
    """Per image in [0, 1] (B, 3, H, W) asked for (shape, colour name): shape right (judge) and albedo within the
    colour threshold (CIEDE2000 < 15) of the named colour — the v2 accuracy rule, as a (B,) bool tensor."""
    from priorkit.distill.zoo import colours

    s_idx, _ = judge.predict(images)
    target = torch.tensor([colours.all_colours()[c] for _, c in pairs])
    ok_colour = torch.from_numpy(colours.delta_e(judge.albedo(images).numpy(), target.numpy())
                                 < colours.DELTA_E_THRESHOLD)
    return (s_idx == torch.tensor([shapes.SHAPES.index(s) for s, _ in pairs])) & ok_colour


@torch.no_grad()
def camera_agreement(den, n: int = 64, seed: int = 9, with_camera: bool = True) -> float:  # noqa: ANN001
    """Share of cube samples whose silhouette matches the true cube at the asked azimuth better than at +45 deg."""
    from priorkit.distill.core.cameras import Camera, camera_width, direction_features

    g = torch.Generator().manual_seed(seed)
    az = torch.rand(n, generator=g) * 360 - 180
    el = torch.rand(n, generator=g) * 40
    cond = {"text": den.encode(["a red cube"] * n)}
    if with_camera:
        cond["class_labels"] = direction_features(az, el, width=camera_width(den))
    x = initial_noise(den, (n, *den.sample_shape), generator=g)
    y = sample(den, x, steps=STEPS, solver="dpm++2m", cond=cond, guidance=GUIDANCE, progress=False)
    img = ((y.clamp(-1, 1) + 1) / 2).float()
    mask = (img.min(dim=1, keepdim=True).values < 0.85).float()  # not the white background

    def iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return (a * b).sum(dim=(1, 2, 3)) / ((a + b - a * b).sum(dim=(1, 2, 3)) + 1e-6)

    asked = shapes.silhouette(["cube"] * n, [Camera(float(a), float(e)) for a, e in zip(az, el, strict=True)])
    turned = shapes.silhouette(["cube"] * n, [Camera(float(a) + 45, float(e)) for a, e in zip(az, el, strict=True)])
    return float((iou(mask, (asked > 0.5).float()) > iou(mask, (turned > 0.5).float())).float().mean())


def shapes_v2_records(den, samples: int, out_dir: Path) -> list[dict]:  # noqa: ANN001
    from priorkit.distill.zoo.judge import DEFAULT_DIR
    from priorkit.distill.zoo.shapes_v2 import held_out_prompts, training_colour_prompts
    from priorkit.distill.zoo.text_probe import shapes_v2_ceiling

    judge2 = load_judge(DEFAULT_DIR.parent / "judge-v2")
    prompts = held_out_prompts()
    colour_only = [p for p in prompts if any(p[0].endswith(" " + s) for s in shapes.SHAPES)]
    both = [p for p in prompts if p not in colour_only]
    records = []
    for name, chosen, seed in (("heldout_colour_accuracy", colour_only, 11),
                               ("heldout_shape_colour_accuracy", both, 12),
                               ("training_colour_accuracy", training_colour_prompts(len(colour_only)), 13)):
        acc, imgs = v2_accuracy(den, judge2, chosen, max(2, samples // 2), seed)
        grid_image(imgs[:64] * 2 - 1, ncol=8, scale=3).save(out_dir / f"shapes_v2_{name}.png")
        records.append({"prior": "shapes", "metric": name, "value": acc})
        print(f"shapes v2 {name}: {acc:.4f} over {len(chosen)} prompts")
    for name, flag in (("camera_agreement", True), ("camera_agreement_without_camera", False)):
        value = camera_agreement(den, with_camera=flag)
        records.append({"prior": "shapes", "metric": name, "value": value})
        print(f"shapes v2 {name}: {value:.4f}")
    probe = shapes_v2_ceiling(den.text_encoder)
    for name, key in (("text_probe_colour_ridge", "ridge"), ("text_probe_colour_mlp", "mlp"),
                      ("text_probe_shape_words", "shape_words")):
        records.append({"prior": "shapes", "metric": name, "value": probe[key]})
        print(f"shapes v2 {name}: {probe[key]:.4f}")
    return records


def photos_records(out_dir: Path, photo_set_v2: bool = False) -> list[dict]:
    records = []
    for noise, suffix in ((0.2, ""), (0.1, "_sigma0.1")):
        for k, v in photos_denoising(noise=noise).items():
            records.append({"prior": "photos", "metric": k + suffix, "value": v})
    if photo_set_v2:  # the 9 held-out photographs of set v2 (Debian's fetched into the cache)
        for k, v in photos_denoising(noise=0.2, photo_set="v2").items():
            records.append({"prior": "photos", "metric": k + "_v2", "value": v})
    pden = load_denoiser("photos")
    x = initial_noise(pden, (8, *pden.sample_shape), generator=torch.Generator().manual_seed(0))
    t0 = time.perf_counter()
    with torch.no_grad():
        y = sample(pden, x, steps=STEPS, solver="dpm++2m", progress=False)
    records.append({"prior": "photos", "metric": "seconds_per_sample", "value": (time.perf_counter() - t0) / 8})
    grid_image(y, ncol=8, scale=2).save(out_dir / "photos_samples.png")
    return records


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", type=Path, default=Path("outputs/bench/priors.json"))
    ap.add_argument("--samples", type=int, default=8, help="samples per prompt")
    ap.add_argument("--skip-photos", action="store_true")
    ap.add_argument("--skip-shapes", action="store_true")
    ap.add_argument("--shapes-prior", default="shapes", help="bundled name or folder of the shapes prior to measure")
    ap.add_argument("--photo-set-v2", action="store_true",
                    help="also the photos figures on the 9 held-out photographs of set v2 (suffix _v2)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    records = run(args.samples, args.json.parent, args.skip_photos, args.skip_shapes, args.shapes_prior,
                  args.photo_set_v2)
    args.json.write_text(json.dumps(records, indent=1))
    print("| prior | metric | value |\n|---|---|---|")
    for r in records:
        print(f"| {r['prior']} | {r['metric']} | {r['value']:.4g} |")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
