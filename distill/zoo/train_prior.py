"""Train the bundled priors: ``priorkit train-prior shapes|photos --out DIR [--steps N] [--resume]``.

* "shapes": a pixel-space ``UNet2DConditionModel`` (32x32) on renders of the shapes world, conditioned on
  MiniLM states of varied captions (10% dropped to the empty prompt, for classifier-free guidance);
  DDPM cosine schedule (squaredcos_cap_v2), v-prediction.
* "photos": an unconditional ``UNet2DModel`` on 64x64 patches of the shipped photographs; flow matching
  (a FlowMatchEulerDiscreteScheduler config, velocity prediction).

Both minimise the denoising loss of their own prediction type under their schedule (one loss for every
schedule, through `from_x0_eps`). Output: a folder loadable by ``load_denoiser`` with the weights, the
scheduler config, ``training_log.json``, ``loss.png``, ``samples.png`` and ``command.txt``.
"""

from __future__ import annotations

import json
import math
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from priorkit.distill.core.cameras import AZIMUTH_HARMONICS, DIRECTION_FEATURES, LEGACY_DIRECTION_FEATURES
from priorkit.distill.core.denoiser import Denoiser
from priorkit.distill.core.diffusers_adapter import DiffusersDenoiser
from priorkit.distill.core.prediction import from_x0_eps
from priorkit.distill.core.schedule import add_noise
from priorkit.distill.core.tensor_files import save_tensors
from priorkit.distill.core.training import TrainConfig, train

SHAPES_UNET: dict[str, Any] = dict(
    sample_size=32, in_channels=3, out_channels=3, layers_per_block=1, block_out_channels=(32, 64, 128),
    down_block_types=("DownBlock2D", "DownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
    mid_block_type="UNetMidBlock2DCrossAttn", cross_attention_dim=384, attention_head_dim=32, norm_num_groups=16,
)
SHAPES_SCHEDULER: dict[str, Any] = {
    "_class_name": "DDPMScheduler", "num_train_timesteps": 1000, "beta_schedule": "squaredcos_cap_v2",
    "prediction_type": "v_prediction", "clip_sample": False,
}
CAMERA_LR_SCALE = 10.0  # the camera embedding's learning rate over the body's (measured: at 1x it stayed near zero)
# v2: the camera (sin/cos of azimuth harmonics and of the elevation, a given-flag: cameras.direction_features) enters
# through a projection class embedding added to the time embedding; its last layer starts at zero, so a v2 prior
# initialised from v1 starts as v1 exactly.
SHAPES_V2_UNET: dict[str, Any] = {**SHAPES_UNET, "class_embed_type": "projection",
                                  "projection_class_embeddings_input_dim": DIRECTION_FEATURES}
PHOTOS_UNET: dict[str, Any] = dict(
    sample_size=64, in_channels=3, out_channels=3, layers_per_block=1, block_out_channels=(32, 64, 128, 128),
    down_block_types=("DownBlock2D", "DownBlock2D", "DownBlock2D", "AttnDownBlock2D"),
    up_block_types=("AttnUpBlock2D", "UpBlock2D", "UpBlock2D", "UpBlock2D"), attention_head_dim=32,
    norm_num_groups=16,
)
PHOTOS_SCHEDULER: dict[str, Any] = {"_class_name": "FlowMatchEulerDiscreteScheduler", "num_train_timesteps": 1000,
                                    "shift": 1.0}
TEXT_ENCODER = {"kind": "minilm", "max_length": 16}
CFG_DROPOUT = 0.1
POOLED_ONLY = 0.25  # fraction of captions whose per-token states are hidden, leaving the pooled sentence vector


def denoising_loss(den: Denoiser, x0: Tensor, cond: Any, generator: torch.Generator) -> Tensor:
    """E_t,eps || f(x_t, t) - target_kind(x0, eps) ||^2 with t uniform on the schedule's range."""
    s = den.schedule
    b = x0.shape[0]
    u = torch.rand(b, generator=generator, dtype=torch.float64)
    t = (s.t_min + (1.0 - s.t_min) * u).to(x0)
    eps = torch.randn(x0.shape, generator=generator).to(x0)
    x_t = add_noise(s, x0, t, eps)
    kind, out = den.predict_native(x_t, t, cond)
    return (out - from_x0_eps(kind, x0, eps, x_t, t, s)).pow(2).mean()


def pooled_only(states: Tensor, p: float, generator: torch.Generator) -> Tensor:
    """Zero the per-token states (keeping the pooled vector, row 0) of a random fraction ``p`` of the captions.

    MiniLM's pooled vector is the part trained for sentence similarity; a prior that must sometimes work from it
    alone carries unseen words ("a black ring") to the classes of their nearest training captions.
    """
    keep = (torch.rand(states.shape[0], generator=generator) >= p).to(states)
    scale = torch.ones(states.shape[:2], dtype=states.dtype)
    scale[:, 1:] = keep.reshape(-1, 1)
    return states * scale.unsqueeze(-1)


class ShapesData:
    """Pre-rendered shapes-world images with captions drawn fresh each time."""

    def __init__(self, n: int, seed: int = 0) -> None:
        from priorkit.distill.zoo import shapes

        self.shapes = shapes
        data = shapes.make_dataset(n, size=32, seed=seed)
        self.images = data["images"].float() / 127.5 - 1.0
        self.shape, self.colour = data["shape"], data["colour"]
        self.azimuth, self.elevation = data["azimuth"], data["elevation"]

    def batch(self, n: int, g: torch.Generator) -> tuple[Tensor, list[str]]:
        from priorkit.distill.core.cameras import view_phrase

        idx = torch.randint(len(self.images), (n,), generator=g)
        x = self.images[idx]
        flip = torch.rand(n, generator=g) < 0.5  # a mirror image is the view from the mirrored azimuth
        x = torch.where(flip.reshape(-1, 1, 1, 1), x.flip(-1), x)
        u = torch.rand(n, 2, generator=g)
        prompts = []
        for k, i in enumerate(idx.tolist()):
            if u[k, 0] < CFG_DROPOUT:
                prompts.append("")
                continue
            view = view_phrase(float(self.azimuth[i]), float(self.elevation[i])) if u[k, 1] < 0.75 else None
            prompts.append(self.shapes.training_caption(self.shapes.SHAPES[int(self.shape[i])],
                                                        list(self.shapes.COLOURS)[int(self.colour[i])], view, g))
        return x, prompts


def build(name: str, world: str = "v1") -> DiffusersDenoiser:
    """A freshly initialised bundled-prior denoiser (``world`` "v2": the shapes prior with the camera input)."""
    from diffusers import UNet2DConditionModel, UNet2DModel

    if name == "shapes":
        from priorkit.distill.core.text import MiniLMEncoder

        unet = UNet2DConditionModel(**(SHAPES_V2_UNET if world == "v2" else SHAPES_UNET))
        if world == "v2":
            nn.init.zeros_(unet.class_embedding.linear_2.weight)
            nn.init.zeros_(unet.class_embedding.linear_2.bias)
        return DiffusersDenoiser(unet, SHAPES_SCHEDULER, text_encoder=MiniLMEncoder(TEXT_ENCODER["max_length"]))
    if name == "photos":
        return DiffusersDenoiser(UNet2DModel(**PHOTOS_UNET), PHOTOS_SCHEDULER)
    raise ValueError(f"unknown bundled prior {name!r}; expected 'shapes' or 'photos'")


def save_prior(den: DiffusersDenoiser, unet: torch.nn.Module, out: Path, name: str, log: list[dict],
               command: str, world: str = "v1") -> None:
    """Write a folder that ``load_denoiser(out)`` reads."""
    out.mkdir(parents=True, exist_ok=True)
    unet.save_config(str(out))  # the weights through tensor_files: a full disk is one OSError naming the file
    tmp = out / ".diffusion_pytorch_model.tmp.safetensors"
    save_tensors({k: v.detach().contiguous() for k, v in unet.state_dict().items()}, tmp)
    tmp.replace(out / "diffusion_pytorch_model.safetensors")
    (out / "scheduler_config.json").write_text(json.dumps(den.scheduler_config, indent=2))
    spec: dict[str, Any] = {"name": name, "kind": "text-to-image" if name == "shapes" else "unconditional",
                            "image_range": [-1, 1]}
    if name == "shapes":
        spec["text_encoder"] = TEXT_ENCODER
        spec["world"] = world
        if world == "v2":
            spec["camera_input"] = (f"{DIRECTION_FEATURES} features: sin / cos of k az for k in {AZIMUTH_HARMONICS}, "
                                    "sin el, cos el, 1 (priorkit.distill.core.cameras.direction_features)")
    (out / "priorkit.json").write_text(json.dumps(spec, indent=2))
    (out / "training_log.json").write_text(json.dumps(log))
    (out / "command.txt").write_text(command + "\n")
    _plot_loss(log, out / "loss.png")


def _plot_loss(log: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not log:
        return
    fig, ax = plt.subplots(figsize=(5, 3), dpi=100)
    ax.plot([e["step"] for e in log], [e["loss"] for e in log])
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def check_run_start(out: Path, lr: float, n_renders: int, threads: int | None, init: str | Path | None,
                    resume: bool) -> None:
    """Raise ValueError (before anything is written) for numbers that cannot train, an ``init`` that cannot be read
    or is ``out`` itself, and an ``out`` whose files a new run would replace (a run without ``resume``, other files)."""
    from priorkit.distill.core.tensor_files import load_tensors

    if not (math.isfinite(lr) and lr > 0):
        raise ValueError(f"--lr must be a finite number > 0; got {lr}")
    if n_renders < 1:
        raise ValueError(f"--n-renders must be >= 1; got {n_renders}")
    if threads is not None and threads < 0:
        raise ValueError(f"--threads must be >= 0 (0: torch's default); got {threads}")
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file")
    if init is not None:
        if Path(init).resolve() == out.resolve():
            raise ValueError(f"--init and --out are the same folder ({out}): the new weights would replace the ones "
                             "the run starts from; choose another --out")
        if not resume:
            load_tensors(Path(init) / "diffusion_pytorch_model.safetensors")  # a damaged file: refused now
    if not resume and (out / "run" / "checkpoint").is_dir():
        raise ValueError(f"{out} holds a training run: pass --resume to continue it, or choose another --out")
    if not resume and out.is_dir() and any(p.name != "run" and not p.name.startswith(".") for p in out.iterdir()):
        raise ValueError(f"output folder {out} is not empty and holds no training run: choose a new or empty --out "
                         "(the prior's files would replace what is there)")


def load_initial_weights(unet: torch.nn.Module, folder: str | Path, new_prefixes: tuple[str, ...] = ()) -> None:
    """Copy the UNet weights of a saved prior folder (``diffusion_pytorch_model.safetensors``) into ``unet``.

    Safetensors only; the tensors are cast to the model's dtype (the bundled weights are fp16). A folder of another
    architecture is refused with the names of the first mismatching tensors.
    """
    from priorkit.distill.core.tensor_files import load_tensors

    path = Path(folder) / "diffusion_pytorch_model.safetensors"
    if not path.is_file():
        raise FileNotFoundError(f"no diffusion_pytorch_model.safetensors in {folder}")
    state = widen_camera_input(load_tensors(path), unet.state_dict())
    own = unet.state_dict()
    missing = sorted(k for k in set(own) - set(state) if not k.startswith(new_prefixes))  # new layers keep init
    extra = sorted(set(state) - set(own))
    wrong = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or extra or wrong:
        raise ValueError(f"{folder} holds another architecture: missing {missing[:3]}, unexpected {extra[:3]}, "
                         f"shape mismatch {wrong[:3]}")
    unet.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()}, strict=not new_prefixes)


def widen_camera_input(state: dict[str, Tensor], own: dict[str, Tensor]) -> dict[str, Tensor]:
    """A first prior v2's camera embedding (5 inputs: sin / cos az, sin / cos el, flag) widened to the harmonic
    input of ``own``: its columns go to the same features, the new harmonics' columns start at zero (the widened
    prior computes exactly what the old one did)."""
    key = "class_embedding.linear_1.weight"
    if key not in state or key not in own or state[key].shape[1] != LEGACY_DIRECTION_FEATURES \
            or own[key].shape[1] != DIRECTION_FEATURES:
        return state
    old = state[key]
    new = torch.zeros(old.shape[0], DIRECTION_FEATURES, dtype=old.dtype)
    first = 2 * AZIMUTH_HARMONICS.index(1)
    new[:, first:first + 2] = old[:, 0:2]  # sin az, cos az
    new[:, -3:] = old[:, 2:5]  # sin el, cos el, flag
    return {**state, key: new}


def train_prior(name: str, out: str | Path, *, steps: int, batch_size: int, lr: float = 3e-4,
                resume: bool = False, n_renders: int = 20000, seed: int = 0, threads: int | None = None,
                init: str | Path | None = None, data: str | Path | None = None, photo_set: str = "v1",
                world: str = "v1", cube_share: float | None = None) -> Path:
    """Train a bundled prior from scratch (or resume), saving the EMA weights to ``out``.

    ``init``: a saved prior folder to start from instead of random weights (fine-tuning, e.g. the bundled
    ``distill/zoo/weights/photos``); ignored when resuming (the checkpoint holds the weights).
    ``data``: "photos" only, a folder of photographs to take the patches from instead of the bundled ones.
    ``photo_set``: "photos" only, the training photographs when no ``data`` is given: "v1" (the 9 shipped in the
    wheels) or "v2" (those plus Debian's wallpaper photographs, downloaded into the cache before any work).
    ``world``: "shapes" only, "v1" (8 colours) or "v2" (named colours, camera input; ``init`` may be a v1 folder).
    ``cube_share``: world v2 only, the share of cubes in the batches (None: the renders' one in five); the cube is
    the one shape whose image shows the camera's yaw.
    """
    if world not in ("v1", "v2") or (world == "v2" and name != "shapes"):
        raise ValueError(f"world {world!r}: expected v1, or v2 for the shapes prior")
    if cube_share is not None and world != "v2":
        raise ValueError("cube_share applies to the shapes world v2 only")
    if cube_share is not None and not 0.0 < cube_share < 1.0:
        raise ValueError(f"cube_share must be in (0, 1); got {cube_share}")
    if data is not None and name != "photos":
        raise ValueError("data= (a folder of photographs) applies to the photos prior only")
    check_run_start(Path(out), lr, n_renders if name == "shapes" else 1, threads, init, resume)
    from priorkit.distill.zoo.photos import PHOTO_SETS

    if photo_set not in PHOTO_SETS:
        raise ValueError(f"unknown photo set {photo_set!r}; expected one of {', '.join(PHOTO_SETS)}")
    photos = None
    if data is None and name == "photos" and photo_set != "v1":
        from priorkit.distill.zoo.photos import training_photos

        photos = training_photos(photo_set)
        print(f"training on the {len(photos)} photographs of photo set {photo_set}")
    if data is not None:  # read (and refuse) the folder before any work
        from priorkit.distill.zoo.photos import folder_photos

        photos, skipped = folder_photos(data)
        for file, why in skipped:
            print(f"left out {file}: {why}")
        print(f"training on {len(photos)} photographs of {data}")
    if threads:
        torch.set_num_threads(threads)
    out = Path(out)
    from priorkit.distill.core.training import run_settings

    run_settings(out / "run", {"name": name, "steps": steps, "batch_size": batch_size, "lr": lr, "seed": seed,
                               "n_renders": n_renders if name == "shapes" else None, "init": init, "data": data,
                               "photo_set": photo_set, "world": world,
                               **({"cube_share": cube_share} if cube_share is not None else {})}, resume)
    command = "priorkit train-prior " + " ".join(shlex.quote(a) for a in sys.argv[2:]) \
        if Path(sys.argv[0]).name == "priorkit" else " ".join(shlex.quote(a) for a in sys.argv)
    torch.manual_seed(seed)
    den = build(name, world)
    if init is not None and not resume:
        load_initial_weights(den.unet, init, new_prefixes=("class_embedding.",) if world == "v2" else ())
    if name == "shapes" and world == "v2":
        from priorkit.distill.zoo.shapes_v2 import ShapesDataV2

        data_v2 = ShapesDataV2(n_renders, seed=seed, cube_share=cube_share)

        def loss_fn(model: torch.nn.Module, step: int, g: torch.Generator) -> Tensor:
            x, prompts, cams = data_v2.batch(batch_size, g)
            cond = {"text": pooled_only(den.encode(prompts), POOLED_ONLY, g), "class_labels": cams}
            return denoising_loss(den, x, cond, g)
    elif name == "shapes":
        data = ShapesData(n_renders, seed=seed)

        def loss_fn(model: torch.nn.Module, step: int, g: torch.Generator) -> Tensor:
            x, prompts = data.batch(batch_size, g)
            return denoising_loss(den, x, pooled_only(den.encode(prompts), POOLED_ONLY, g), g)
    else:
        from priorkit.distill.zoo.photos import PatchSampler

        sampler = PatchSampler(photos=photos)

        def loss_fn(model: torch.nn.Module, step: int, g: torch.Generator) -> Tensor:
            return denoising_loss(den, sampler(batch_size, g), None, g)

    cfg = TrainConfig(steps=steps, lr=lr, warmup=min(200, steps // 10), ema_decay=0.999,
                      checkpoint_every=max(50, min(250, steps // 8)), seed=seed)
    t0 = time.time()
    params = None
    if world == "v2":  # the camera's embedding starts at zero and its signal is weak (only the cube shows the yaw)
        new = [p for n, p in den.unet.named_parameters() if n.startswith("class_embedding.")]
        body = [p for n, p in den.unet.named_parameters() if not n.startswith("class_embedding.")]
        params = [{"params": body}, {"params": new, "lr_scale": CAMERA_LR_SCALE}]
    ema_unet, log = train(den.unet, loss_fn, cfg, out / "run", resume=resume, desc=f"train-prior {name}",
                          params=params,
                          on_checkpoint=lambda m, s: save_prior(den, m, out, name, log_ref(out), command, world))
    save_prior(den, ema_unet, out, name, log, command, world)
    print(f"trained {name} for {steps} steps in {time.time() - t0:.0f}s -> {out}")
    return out


def log_ref(out: Path) -> list[dict]:
    """The log stored in the run's last checkpoint (for intermediate saves)."""
    path = out / "run" / "checkpoint" / "state.json"
    return json.loads(path.read_text())["log"] if path.is_file() else []
