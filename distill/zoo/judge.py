"""A small CNN that judges images of the shapes world: which shape, which colour.

Used to score generated images (text-to-image and text-to-3D renders), so it is trained with
augmentations that mimic imperfect samples: random light, camera distance jitter, shifts / scales /
small rotations, blur, Gaussian noise, mild colour jitter and light haze.

Weights are stored with safetensors only (``model.safetensors`` + ``config.json``); the default location
is ``distill/zoo/weights/judge/``.

CLI::

    python -m priorkit.distill.zoo.judge --out distill/zoo/weights/judge --steps 1800 --seed 0
"""

from __future__ import annotations

import json
import math
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from priorkit.distill.core.cameras import ELEVATION_RANGE, Camera
from priorkit.distill.zoo.shapes import COLOUR_NAMES, COLOURS, SHAPES, make_dataset, random_lights, render

DEFAULT_DIR = Path(__file__).parent / "weights" / "judge"
INPUT_SIZE = 32


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.GroupNorm(8, cout), nn.SiLU())


class Judge(nn.Module):
    """Shape and colour classifier for shapes-world images.

    Input: (B, 3, H, W) images in [0, 1], any H, W (resized to 32 x 32 with antialiasing).
    Output: ``(shape_logits (B, 5), colour_logits (B, 8))`` over ``SHAPES`` and ``COLOUR_NAMES``.
    """

    def __init__(self, width: int = 16, input_size: int = INPUT_SIZE, albedo: bool = False) -> None:
        super().__init__()
        self.width = width
        self.has_albedo = albedo
        self.input_size = input_size
        w = width
        self.features = nn.Sequential(
            _block(3, w), nn.AvgPool2d(2),  # 32 -> 16
            _block(w, 2 * w), _block(2 * w, 2 * w), nn.AvgPool2d(2),  # 16 -> 8
            _block(2 * w, 4 * w), _block(4 * w, 4 * w), nn.AvgPool2d(2),  # 8 -> 4
            _block(4 * w, 8 * w),
        )
        self.trunk = nn.Sequential(nn.Linear(8 * w * 2, 8 * w), nn.SiLU())
        self.shape_head = nn.Linear(8 * w, len(SHAPES))
        self.colour_head = nn.Linear(8 * w, len(COLOUR_NAMES))
        # v2: the object's albedo (sRGB in [0, 1]) by regression, to measure any named colour
        self.albedo_head = nn.Linear(8 * w, 3) if albedo else None

    def config(self) -> dict:
        return {"arch": "Judge", "width": self.width, "input_size": self.input_size, "shapes": list(SHAPES),
                "colours": list(COLOUR_NAMES), "albedo": self.has_albedo}

    def prepare(self, images: Tensor) -> Tensor:
        """(B, 3, H, W) in [0, 1] (uint8 accepted) -> (B, 3, 32, 32) float in [0, 1] on the model's device."""
        if images.dtype == torch.uint8:
            images = images.float() / 255.0
        images = images.to(next(self.parameters()).device, torch.float32)
        if images.shape[-2:] != (self.input_size, self.input_size):
            images = F.interpolate(images, size=(self.input_size, self.input_size), mode="bilinear",
                                   align_corners=False, antialias=True)
        return images.clamp(0.0, 1.0)

    def embed(self, images: Tensor) -> Tensor:
        """(B, 3, H, W) in [0, 1] -> the penultimate features (B, 8 * width) that all heads read."""
        x = self.prepare(images) * 2.0 - 1.0
        h = self.features(x)
        h = torch.cat([h.mean(dim=(2, 3)), h.amax(dim=(2, 3))], dim=1)  # global average + max pooling
        return self.trunk(h)

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """(B, 3, H, W) in [0, 1] -> (shape_logits (B, 5), colour_logits (B, 8))."""
        h = self.embed(images)
        return self.shape_head(h), self.colour_head(h)

    def albedo(self, images: Tensor) -> Tensor:
        """(B, 3, H, W) in [0, 1] -> the object's estimated albedo (B, 3) in [0, 1] (judges with an albedo head)."""
        if self.albedo_head is None:
            raise ValueError("this judge has no albedo head (train a v2 judge: --world v2)")
        return torch.sigmoid(self.albedo_head(self.embed(images)))

    @torch.no_grad()
    def predict(self, images: Tensor, batch_size: int = 512) -> tuple[Tensor, Tensor]:
        """(B, 3, H, W) -> (shape_idx (B,), colour_idx (B,)) long tensors (indices into SHAPES, COLOUR_NAMES)."""
        was_training = self.training
        self.eval()
        shapes, colours = [], []
        for a in range(0, images.shape[0], batch_size):
            s, c = self(images[a:a + batch_size])
            shapes.append(s.argmax(-1).cpu())
            colours.append(c.argmax(-1).cpu())
        self.train(was_training)
        if not shapes:
            return torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long)
        return torch.cat(shapes), torch.cat(colours)

    def accuracy(self, images: Tensor, shape_idx: Tensor, colour_idx: Tensor) -> float:
        """Fraction of images whose shape AND colour are both predicted correctly."""
        s, c = self.predict(images)
        ok = (s == shape_idx.cpu().long()) & (c == colour_idx.cpu().long())
        return float(ok.float().mean()) if ok.numel() else float("nan")


# ----------------------------------------------------------------------------------------------------------------------
# Saving / loading (safetensors only)
# ----------------------------------------------------------------------------------------------------------------------


def save_judge(judge: Judge, directory: str | Path, extra: dict | None = None) -> Path:
    """Write ``model.safetensors`` and ``config.json`` (plus ``extra`` keys) into ``directory``."""
    from priorkit.distill.core.tensor_files import save_tensors

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in judge.state_dict().items()}
    save_tensors(state, directory / "model.safetensors")
    config = judge.config() | (extra or {})
    (directory / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    return directory


def load_judge(directory: str | Path | None = None, device: str | torch.device = "cpu") -> Judge:
    """Load a :class:`Judge` (in eval mode) from ``directory`` (default ``distill/zoo/weights/judge``).

    Raises ``FileNotFoundError`` naming the missing file when the weights are absent.
    """
    from priorkit.distill.core.tensor_files import load_tensors

    directory = Path(directory) if directory is not None else DEFAULT_DIR
    weights, config_path = directory / "model.safetensors", directory / "config.json"
    for path in (weights, config_path):
        if not path.is_file():
            raise FileNotFoundError(f"judge file not found: {path} (train it with "
                                    f"`python -m priorkit.distill.zoo.judge --out {directory}`)")
    config = json.loads(config_path.read_text())
    if config.get("shapes", list(SHAPES)) != list(SHAPES) or config.get("colours", list(COLOUR_NAMES)) != list(
            COLOUR_NAMES):
        raise ValueError(f"judge at {directory} was trained for different shape / colour vocabularies")
    judge = Judge(width=int(config.get("width", 16)), input_size=int(config.get("input_size", INPUT_SIZE)),
                  albedo=bool(config.get("albedo", False)))
    judge.load_state_dict(load_tensors(weights))
    return judge.to(device).eval()


# ----------------------------------------------------------------------------------------------------------------------
# Augmentation
# ----------------------------------------------------------------------------------------------------------------------


def _gaussian_blur(x: Tensor, sigma: Tensor) -> Tensor:
    """Per-image separable Gaussian blur. x (B, C, H, W), sigma (B,) in pixels (0 = identity)."""
    radius = 2
    offs = torch.arange(-radius, radius + 1, dtype=x.dtype)
    k = torch.exp(-0.5 * (offs[None] / sigma.clamp(min=1e-3)[:, None]) ** 2)  # (B, 5)
    k = k / k.sum(-1, keepdim=True)
    b, c, h, w = x.shape
    # grouped convolution: one kernel per image, shared by its channels
    xx = F.pad(x.reshape(1, b * c, h, w), (radius, radius, radius, radius), mode="replicate")
    kx = k.repeat_interleave(c, 0)[:, None, None, :]
    ky = k.repeat_interleave(c, 0)[:, None, :, None]
    xx = F.conv2d(xx, kx, groups=b * c)
    xx = F.conv2d(xx, ky, groups=b * c)
    return xx.reshape(b, c, h, w)


def augment(x: Tensor, generator: torch.Generator | None = None, strength: float = 1.0) -> Tensor:
    """Random photometric and geometric perturbations of clean renders. x (B, 3, H, W) in [0, 1] -> same.

    Shift (up to 2 px) / scale (0.9-1.1) / rotation (up to 8 deg) with white fill, blur (sigma up to 1 px),
    per-channel gain and brightness jitter small enough to keep the colour name, haze (blend toward white
    by up to 0.2) and Gaussian noise (sigma up to 0.06).
    """
    b, _, h, w = x.shape

    def u(lo: float, hi: float, *shape: int) -> Tensor:
        return lo + (hi - lo) * torch.rand(b, *shape, generator=generator)

    def coin(p: float) -> Tensor:
        return torch.rand(b, generator=generator) < p * strength

    # geometry: inverse affine map on normalised coordinates, white outside the image
    angle = torch.deg2rad(u(-8.0, 8.0)) * strength
    scale = 1.0 + (u(0.9, 1.1) - 1.0) * strength
    shift = u(-2.0, 2.0, 2) * strength * 2.0 / h
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], -1), torch.stack([sin, cos, shift[:, 1]], -1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = 1.0 - F.grid_sample(1.0 - x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)

    # blur
    blur = coin(0.4)
    if blur.any():
        x[blur] = _gaussian_blur(x[blur], u(0.3, 1.0)[blur])

    # colour jitter: per-channel gain and global brightness
    gain = 1.0 + (u(0.9, 1.1, 3) - 1.0) * strength
    bright = u(-0.05, 0.05) * strength
    x = x * gain[:, :, None, None] + bright[:, None, None, None]

    # haze: blend toward white
    haze = u(0.0, 0.2) * coin(0.3).float()
    x = x + haze[:, None, None, None] * (1.0 - x)

    # Gaussian noise
    sigma = u(0.0, 0.06) * coin(0.6).float()
    x = x + sigma[:, None, None, None] * torch.randn(x.shape, generator=generator)
    return x.clamp(0.0, 1.0)


# ----------------------------------------------------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------------------------------------------------


def render_pool(n: int, seed: int, size: int = INPUT_SIZE, distance_range: tuple[float, float] = (2.2, 2.9),
                elevation_range: tuple[float, float] = (-20.0, 85.0)) -> tuple[Tensor, Tensor, Tensor]:
    """Balanced training renders with camera distance jitter and random lights.

    Returns images uint8 (n, 3, size, size), shape_idx (n,), colour_idx (n,).
    """
    g = torch.Generator().manual_seed(seed)
    n_pairs = len(SHAPES) * len(COLOUR_NAMES)
    pair = (torch.arange(n) % n_pairs)[torch.randperm(n, generator=g)]
    shape_idx, colour_idx = pair // len(COLOUR_NAMES), pair % len(COLOUR_NAMES)
    r = torch.rand(n, 3, generator=g, dtype=torch.float64)
    lo, hi = elevation_range
    dlo, dhi = distance_range
    cameras = [Camera(azimuth=float(360.0 * a - 180.0), elevation=float(lo + (hi - lo) * e),
                      distance=float(dlo + (dhi - dlo) * d)) for a, e, d in r]
    lights = random_lights(cameras, g)
    images = render(shape_idx.tolist(), colour_idx.tolist(), cameras, size=size, lights=lights)
    return (images * 255).round().to(torch.uint8), shape_idx, colour_idx


def train_judge(out_dir: str | Path | None = None, steps: int = 1800, seed: int = 0, batch_size: int = 64,
                pool_size: int = 12000, lr: float = 2e-3, width: int = 16, eval_n: int = 2000,
                eval_seed: int | None = None, log_every: int = 100, command: str | None = None,
                progress: bool = True, distance_range: tuple[float, float] = (2.2, 2.9),
                elevation_range: tuple[float, float] = (-20.0, 85.0), world: str = "v1") -> tuple[Judge, dict]:
    """Train a :class:`Judge` on a pre-rendered, on-the-fly augmented pool and evaluate on fresh renders.

    The held-out set is ``make_dataset(eval_n, seed=eval_seed)`` (new cameras at the standard distance; default
    ``eval_seed = 10_000 + seed``). When ``out_dir`` is given, writes ``model.safetensors``, ``config.json``,
    ``training_log.txt`` and ``command.txt`` there. Returns the judge (eval mode) and a metrics dict.

    ``world`` "v2": half the pool is the v2 world (albedos near named colours), and the judge learns the object's
    albedo by regression besides shape and (on the v1 half) colour class; held-out metrics add the albedo error.
    """
    from tqdm import tqdm

    t_start = time.time()
    torch.manual_seed(seed)
    eval_seed = 10_000 + seed if eval_seed is None else eval_seed
    log_lines: list[str] = []

    def log(line: str) -> None:
        log_lines.append(line)
        if progress:
            tqdm.write(line)

    images, shape_idx, colour_idx = render_pool(pool_size, seed, distance_range=distance_range,
                                                elevation_range=elevation_range)
    albedo_target = torch.tensor(list(COLOURS.values()))[colour_idx]
    has_class = torch.ones(pool_size, dtype=torch.bool)
    if world == "v2":
        from priorkit.distill.zoo import shapes_v2

        half = pool_size // 2
        v2 = shapes_v2.make_dataset(pool_size - half, seed=seed + 500)
        images = torch.cat([images[:half], v2["images"]])
        shape_idx = torch.cat([shape_idx[:half], v2["shape"]])
        colour_idx = torch.cat([colour_idx[:half], torch.zeros(pool_size - half, dtype=torch.long)])
        albedo_target = torch.cat([albedo_target[:half], v2["albedo"]])
        has_class[half:] = False
    log(f"rendered training pool of {pool_size} images in {time.time() - t_start:.1f}s")
    heldout = make_dataset(eval_n, seed=eval_seed)

    judge = Judge(width=width, albedo=world == "v2")
    log(f"judge parameters: {sum(p.numel() for p in judge.parameters())}")
    opt = torch.optim.AdamW(judge.parameters(), lr=lr, weight_decay=1e-4)
    warmup = max(1, steps // 20)

    def lr_at(step: int) -> float:  # linear warm-up then cosine decay
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1.0 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    g = torch.Generator().manual_seed(seed + 1)
    judge.train()
    run_loss, run_acc = 0.0, 0.0
    bar = tqdm(range(steps), desc="judge", disable=not progress, mininterval=2.0)
    for step in bar:
        idx = torch.randint(pool_size, (batch_size,), generator=g)
        x = augment(images[idx].float() / 255.0, g)
        h = judge.embed(x)
        s_logits, c_logits = judge.shape_head(h), judge.colour_head(h)
        cls = has_class[idx]
        loss = F.cross_entropy(s_logits, shape_idx[idx], label_smoothing=0.05) + F.cross_entropy(
            c_logits[cls], colour_idx[idx][cls], label_smoothing=0.05)
        if judge.albedo_head is not None:  # sRGB albedo regression (x20: comparable to the cross-entropies)
            loss = loss + 20.0 * F.mse_loss(torch.sigmoid(judge.albedo_head(h)), albedo_target[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        colour_ok = (c_logits.argmax(-1) == colour_idx[idx]) | ~cls
        acc = ((s_logits.argmax(-1) == shape_idx[idx]) & colour_ok).float().mean()
        run_loss += float(loss)
        run_acc += float(acc)
        if (step + 1) % log_every == 0 or step + 1 == steps:
            k = (step % log_every) + 1
            log(f"step {step + 1} loss {run_loss / k:.4f} train_acc {run_acc / k:.4f} lr {sched.get_last_lr()[0]:.2e}")
            bar.set_postfix(loss=f"{run_loss / k:.3f}", acc=f"{run_acc / k:.3f}")
            run_loss, run_acc = 0.0, 0.0
    judge.eval()

    clean = heldout["images"].float() / 255.0
    acc_clean = judge.accuracy(clean, heldout["shape"], heldout["colour"])
    g_eval = torch.Generator().manual_seed(eval_seed + 1)
    acc_aug = judge.accuracy(augment(clean, g_eval), heldout["shape"], heldout["colour"])
    s_pred, c_pred = judge.predict(clean)
    train_time = time.time() - t_start
    metrics = {
        "heldout_accuracy": acc_clean,
        "heldout_accuracy_augmented": acc_aug,
        "heldout_shape_accuracy": float((s_pred == heldout["shape"]).float().mean()),
        "heldout_colour_accuracy": float((c_pred == heldout["colour"]).float().mean()),
        "heldout_n": eval_n,
        "heldout_seed": eval_seed,
        "train_seconds": round(train_time, 1),
    }
    if world == "v2":
        from priorkit.distill.zoo import colours, shapes_v2

        v2_eval = shapes_v2.make_dataset(eval_n, seed=eval_seed + 500)
        with torch.no_grad():
            est = judge.albedo(v2_eval["images"].float() / 255.0)
            s_v2 = judge.predict(v2_eval["images"].float() / 255.0)[0]
        de = colours.delta_e(est.numpy(), v2_eval["albedo"].numpy())
        metrics |= {"v2_shape_accuracy": float((s_v2 == v2_eval["shape"]).float().mean()),
                    "v2_albedo_delta_e_median": float(np.median(de)), "v2_albedo_delta_e_p90": float(
                        np.quantile(de, 0.9)), "v2_albedo_within_threshold": float(
                        (de < colours.DELTA_E_THRESHOLD).mean())}
        log(f"v2 held-out: shape {metrics['v2_shape_accuracy']:.4f}, albedo delta-E median "
            f"{metrics['v2_albedo_delta_e_median']:.2f}, p90 {metrics['v2_albedo_delta_e_p90']:.2f}, within "
            f"{colours.DELTA_E_THRESHOLD}: {metrics['v2_albedo_within_threshold']:.4f}")
    log(f"final heldout_accuracy {acc_clean:.4f} (shape {metrics['heldout_shape_accuracy']:.4f}, colour "
        f"{metrics['heldout_colour_accuracy']:.4f}; augmented {acc_aug:.4f}) on {eval_n} renders, seed {eval_seed}")
    log(f"training time {train_time:.1f}s")

    if out_dir is not None:
        out = Path(out_dir)
        train_cfg = {"steps": steps, "seed": seed, "batch_size": batch_size, "pool_size": pool_size, "lr": lr,
                     "distance_range": list(distance_range), "elevation_range": list(elevation_range),
                     "eval_elevation_range": list(ELEVATION_RANGE), "world": world}
        save_judge(judge, out, {"train": train_cfg, "metrics": metrics})
        (out / "training_log.txt").write_text("\n".join(log_lines) + "\n")
        if command is not None:
            (out / "command.txt").write_text(command + "\n")
    return judge, metrics


def main(argv: list[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(description="Train the shapes-world judge.")
    parser.add_argument("--out", default=str(DEFAULT_DIR))
    parser.add_argument("--steps", type=int, default=1800)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--pool-size", type=int, default=12000)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--eval-n", type=int, default=2000)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--world", choices=("v1", "v2"), default="v1",
                        help="v2: also the shapes world v2 (named colours) and an albedo head")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    argv = sys.argv[1:] if argv is None else argv
    command = "python -m priorkit.distill.zoo.judge " + shlex.join(argv)
    _, metrics = train_judge(args.out, steps=args.steps, seed=args.seed, batch_size=args.batch_size,
                             pool_size=args.pool_size, lr=args.lr, eval_n=args.eval_n, command=command,
                             world=args.world)
    print(f"held-out joint accuracy: {metrics['heldout_accuracy']:.4f} ({metrics['train_seconds']:.0f}s)")


if __name__ == "__main__":
    main()


# ----------------------------------------------------------------------------------------------------------------------
# A shapes-world FID: Frechet distance between judge features of two image sets
# ----------------------------------------------------------------------------------------------------------------------


@torch.no_grad()
def judge_features(judge: Judge, images: Tensor, batch_size: int = 512) -> Tensor:
    """Penultimate judge features (B, 8 * width) in float64 of images (B, 3, H, W) in [0, 1]."""
    judge.eval()
    return torch.cat([judge.embed(images[a:a + batch_size]).double().cpu() for a in range(0, len(images), batch_size)])


def frechet_distance(feats_a: Tensor, feats_b: Tensor) -> float:
    """Frechet distance of Gaussians fitted to two feature sets (N, D) (Heusel et al. 2017, the FID formula):
    ||mu_a - mu_b||^2 + tr(C_a + C_b - 2 (C_a C_b)^(1/2))."""
    from scipy import linalg

    a, b = feats_a.double().numpy(), feats_b.double().numpy()
    mu_a, mu_b = a.mean(0), b.mean(0)
    ca, cb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root, _ = linalg.sqrtm(ca @ cb, disp=False)
    root = root.real
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(ca + cb - 2.0 * root))
