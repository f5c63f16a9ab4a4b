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
                                    on held-out photo patches; the same with suffix "_sigma0.1" at std 0.1
  photos / seconds_per_sample
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
from priorkit.distill.zoo.judge import load_judge

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
def photos_denoising(n: int = 256, noise: float = 0.2, seed: int = 0) -> dict[str, float]:
    """Denoising PSNR of the photos prior's x0 at image-range noise std ``noise`` vs the best Gaussian blur."""
    from priorkit.distill.zoo.photos import HELD_OUT, TRAIN, PatchSampler

    den = load_denoiser("photos")
    g = torch.Generator().manual_seed(seed)
    train = PatchSampler(TRAIN)(n, g)
    test = PatchSampler(HELD_OUT)(n, g)

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


def run(samples: int, out_dir: Path, skip_photos: bool = False, skip_shapes: bool = False) -> list[dict]:
    records: list[dict] = []
    if not skip_shapes:
        records += shapes_records(samples, out_dir)
    if not skip_photos:
        records += photos_records(out_dir)
    return records


def shapes_records(samples: int, out_dir: Path) -> list[dict]:
    records = [{"prior": "judge", "metric": "heldout_accuracy", "value": judge_heldout()}]
    print(f"judge held-out accuracy: {records[0]['value']:.4f}")
    den, judge = load_denoiser("shapes"), load_judge()
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
    return records


def photos_records(out_dir: Path) -> list[dict]:
    records = []
    for noise, suffix in ((0.2, ""), (0.1, "_sigma0.1")):
        for k, v in photos_denoising(noise=noise).items():
            records.append({"prior": "photos", "metric": k + suffix, "value": v})
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
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    records = run(args.samples, args.json.parent, args.skip_photos, args.skip_shapes)
    args.json.write_text(json.dumps(records, indent=1))
    print("| prior | metric | value |\n|---|---|---|")
    for r in records:
        print(f"| {r['prior']} | {r['metric']} | {r['value']:.4g} |")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
