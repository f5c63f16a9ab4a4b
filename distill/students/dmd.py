"""Distribution matching distillation: DMD (Yin et al. 2024, "One-step Diffusion with Distribution Matching
Distillation") and DMD2 (Yin et al. 2024, "Improved Distribution Matching Distillation for Fast Image Synthesis").

A generator G (initialised from the teacher) maps noise at t_max to a sample x = G(x_T, t_T).x0. Its distribution
p_fake is pushed towards the teacher's p_real by the gradient of KL(p_fake || p_real) at a random noise level t,

    grad_x = w_t (s_fake(x_t, t) - s_real(x_t, t)),   x_t = alpha_t x + sigma_t eps            (DMD eq. 7)

with the normalisation w_t = sigma_t^2 / alpha_t * CS / || x - x0_real(x_t, t) ||_1 (DMD eq. 8), so that
grad_x = (x0_fake - x0_real) / mean|x - x0_real|. This is VSD's gradient (ProlificDreamer eq. 9) with the
generator's samples in place of renders: it comes from ``priorkit.distill.score.guidance.vsd_gradient`` (uniform
weighting, times sigma / alpha / mean|x - x0_real|). s_real is the teacher (classifier-free guided when the runner
wraps it); s_fake is a copy of the teacher (or a peft LoRA on a copy, ``fake="lora"``) trained on the generator's
samples with the denoising loss (ProlificDreamer eq. 10; DMD eq. 6).

* DMD: one fake update per generator update, plus the regression loss || G(z) - ODE_teacher(z) ||^2 on
  precomputed (noise, teacher ODE output) pairs (DMD eq. 9; MSE in place of LPIPS), weight ``regression``.
* DMD2: the two time-scale update rule (``fake_updates`` = 5 fake-score updates per generator update, DMD2
  sec. 4.2) and no regression; an optional GAN head on the fake score's features (DMD2 sec. 4.3: real data vs
  generated, both noised, non-saturating loss); and a multi-step generator trained by backward simulation (DMD2
  sec. 4.5: the input at step k is produced by the generator's own k - 1 previous steps, not by noising data).

Sampling (:func:`dmd_sample`): x0 = G(x_tk, t_k) then x_{t_{k+1}} = alpha x0 + sigma eps_new (fresh noise).
Every optimiser step is either a fake-score step or a generator step, so one `train` loop (EMA, checkpoints,
``resume``) runs both; the parameters of the branch that is not updated carry no gradient and stay put.
"""

from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from priorkit.distill.core.denoiser import Condition, Denoiser
from priorkit.distill.core.prediction import Prediction
from priorkit.distill.core.schedule import add_noise, broadcast_to
from priorkit.distill.core.tensor_files import load_tensors, save_tensors
from priorkit.distill.core.training import TrainConfig, train
from priorkit.distill.score.guidance import diffusion_loss, sample_times, surrogate_loss, vsd_gradient
from priorkit.distill.students.format import freeze, is_main_process, save_student, unwrap
from priorkit.distill.zoo.toy import DataFn


@dataclass
class DMDConfig:
    """Defaults for :func:`dmd_distill` (DMD at 2D scale)."""

    variant: str = "dmd"          # written into the student's meta
    steps: int = 1                # generator steps (> 1: DMD2's backward simulation)
    fake_updates: int = 1         # fake-score updates per generator update (DMD: 1, DMD2: 5)
    regression: float = 0.25      # DMD's lambda_reg on (noise, teacher ODE) pairs; 0: none (DMD2)
    pairs: int = 10_000           # regression pairs
    teacher_steps: int = 64       # teacher ODE steps (DPM-Solver++) per pair
    gan: float = 0.0              # DMD2's GAN weight in the generator loss (0: no GAN head)
    gan_disc: float = 1.0         # weight of the discriminator loss in the fake-score step
    t_lo: float = 0.02            # noise levels t ~ U(t_lo, t_hi) (DMD: [0.02, 0.98] T)
    t_hi: float = 0.98
    fake: str = "copy"            # "copy" of the teacher network, or "lora" (diffusers teachers, peft)
    lora_rank: int = 8
    fake_lr_scale: float = 1.0    # the fake score's (and GAN head's) learning rate / the generator's (resume: same)
    init: str = ""                # an earlier run to start from (`load_init`); "" : the teacher
    batch: int = 256
    train: TrainConfig = field(default_factory=lambda: TrainConfig(steps=4000, lr=2e-4, warmup=100, ema_decay=0.99,
                                                                   checkpoint_every=500, log_every=50))


@dataclass
class DMD2Config(DMDConfig):
    """DMD2's defaults: two time-scale updates, no regression."""

    variant: str = "dmd2"
    fake_updates: int = 5
    regression: float = 0.0


# ---- the pieces ------------------------------------------------------------------------------------------
def generator_times(schedule: Any, steps: int) -> Tensor:
    """The generator's input times t_1 = t_max > ... > t_K, uniform in t (DMD2's 999, 749, 499, 249), float64."""
    t_max = float(schedule.t_max)
    return t_max * (1.0 - torch.arange(steps, dtype=torch.float64) / steps)


def dmd_gradient(real: Denoiser, fake: Denoiser, x: Tensor, t: Tensor, eps: Tensor, cond: Condition = None) -> Tensor:
    """DMD's normalised gradient in x (B, ...) at times t (B,) and noise eps: (x0_fake - x0_real) / mean|x - x0_real|
    (DMD eqs. 7-8), computed as VSD's eps-difference (`vsd_gradient`, uniform weighting) times sigma_t / alpha_t."""
    schedule = real.schedule
    kept: dict[str, Prediction] = {}

    def pretrained(x_t: Tensor, tt: Tensor) -> Prediction:
        kept["real"] = real(x_t, tt.to(x_t.dtype), cond, check=False)
        return kept["real"]

    def particle(x_t: Tensor, tt: Tensor) -> Prediction:
        return fake(x_t, tt.to(x_t.dtype), cond, check=False)

    g = vsd_gradient(pretrained, particle, schedule, x, t, eps, "uniform")  # eps_real - eps_fake
    ratio = broadcast_to((schedule.sigma(t) / schedule.alpha(t)).to(x.dtype), x)  # = alpha (x0_f - x0_r) / sigma
    dims = tuple(range(1, x.ndim))
    norm = (x.detach() - kept["real"].x0).abs().mean(dim=dims, keepdim=True).clamp_min(1e-8)  # DMD eq. 8
    return ratio * g / norm


class GANHead(nn.Module):
    """DMD2's discriminator: a small MLP on the fake score's (spatially pooled) features -> one logit."""

    def __init__(self, channels: int, hidden: int = 128) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(channels, hidden), nn.SiLU(), nn.Linear(hidden, 1))

    def forward(self, features: Tensor) -> Tensor:
        f = features.flatten(2).mean(-1) if features.ndim > 2 else features
        return self.net(f).squeeze(-1)


def feature_module(den: nn.Module) -> nn.Module:
    """Where the GAN head reads the fake score: an MLP's last block, a UNet's mid block."""
    den = unwrap(den)
    if hasattr(den, "blocks"):
        return den.blocks[-1]
    unet = getattr(den, "unet", None)
    if unet is not None and getattr(unet, "mid_block", None) is not None:
        return unet.mid_block
    raise ValueError(f"no feature layer known for a {type(den).__name__}; the GAN head needs an MLP or a UNet")


def make_fake(teacher: Denoiser, student: Denoiser, kind: str = "copy", rank: int = 8) -> Denoiser:
    """The fake score's network: a trainable copy of the teacher's network (the student's when the teacher has no
    parameters, e.g. an exact mixture), or with ``kind="lora"`` a copy whose only trainable part is a peft LoRA."""
    from priorkit.distill.core.diffusers_adapter import DiffusersDenoiser
    from priorkit.distill.students.format import copy_teacher

    inner = getattr(teacher, "inner", teacher)
    if isinstance(inner, DiffusersDenoiser):
        fake = copy_teacher(inner)  # the UNet only: conditions arrive encoded
    else:
        base = inner if any(True for _ in inner.parameters()) and not isinstance(inner, _Analytic) else student
        fake = copy.deepcopy(base).train().requires_grad_(True)
    if kind == "lora":
        from peft import LoraConfig

        unet = getattr(fake, "unet", None)
        if unet is None or not hasattr(unet, "add_adapter"):
            raise ValueError("fake='lora' needs a diffusers teacher")
        unet.requires_grad_(False)
        unet.add_adapter(LoraConfig(r=rank, lora_alpha=rank, target_modules=["to_q", "to_k", "to_v", "to_out.0"],
                                    init_lora_weights=True), adapter_name="dmd_fake")
    elif kind != "copy":
        raise ValueError(f"unknown fake score {kind!r}; expected 'copy' or 'lora'")
    return fake


def _analytic_types() -> tuple[type, ...]:
    from priorkit.distill.core.gmm import GaussianMixture
    from priorkit.distill.zoo.toy import ClassConditionalGMM

    return (GaussianMixture, ClassConditionalGMM)


_Analytic = _analytic_types()


class DMDTrainee(nn.Module):
    """What the training loop optimises: the generator, the fake score and the optional GAN head."""

    def __init__(self, generator: Denoiser, fake: Denoiser, gan: bool) -> None:
        super().__init__()
        self.generator, self.fake = generator, fake
        self.head: GANHead | None = None
        self._features: list[Tensor] = []
        if gan:
            feature_module(fake).register_forward_hook(lambda m, i, o: self._features.append(
                o[0] if isinstance(o, tuple) else o))
            self.head = GANHead(self._probe_channels())

    def _probe_channels(self) -> int:
        unet = getattr(unwrap(self.fake), "unet", None)
        if unet is not None:  # a UNet's mid block keeps its last block's width (no forward: it may need text)
            return int(unet.config.block_out_channels[-1])
        shape = self.fake.sample_shape
        with torch.no_grad():
            self.fake(torch.zeros(1, *shape), torch.full((1,), 0.5), None, check=False)
        return int(self._features.pop().shape[1])

    def critic_params(self) -> list[nn.Parameter]:
        """The trainable parameters of the fake score and the GAN head (call before any step toggles them)."""
        params = [p for p in self.fake.parameters() if p.requires_grad]
        return params + (list(self.head.parameters()) if self.head is not None else [])

    def logits(self, x_t: Tensor, t: Tensor, cond: Condition) -> Tensor:
        self._features.clear()
        self.fake(x_t, t, cond, check=False)
        return self.head(self._features.pop())


def generate(generator: nn.Module, noise: Tensor, times: Tensor, cond: Condition = None, *, last: int | None = None,
             generator_rng: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """Run the generator's own sampler through ``times`` (without gradients) up to step ``last`` (default the
    last), then take that step with gradients (DMD2's backward simulation). Returns (x0, the input x at that step)."""
    last = len(times) - 1 if last is None else last
    schedule = unwrap(generator).schedule
    x = noise
    with torch.no_grad():
        for i in range(last):
            x0 = generator(x, times[i].to(x.dtype).expand(x.shape[0]), cond, check=False).x0
            eps = torch.randn(x.shape, generator=generator_rng, dtype=x.dtype).to(x.device)
            x = add_noise(schedule, x0, times[i + 1].expand(x.shape[0]).to(x.dtype), eps)
    return generator(x, times[last].to(x.dtype).expand(x.shape[0]), cond, check=False).x0, x


@torch.no_grad()
def dmd_sample(student: Denoiser, noise: Tensor, steps: int, *, cond: Condition = None,
               times: list[float] | Tensor | None = None, generator: torch.Generator | None = None) -> Tensor:
    """Samples of a DMD generator: ``steps`` steps on its training times (or uniform ones), fresh noise between."""
    grid = torch.as_tensor(times, dtype=torch.float64) if times is not None and len(times) == steps \
        else generator_times(student.schedule, steps)
    return generate(student, noise, grid, cond, generator_rng=generator)[0]


def critic_loss(m: DMDTrainee, x: Tensor, x_real: Tensor, cond: Condition, cfg: DMDConfig,
                g: torch.Generator) -> Tensor:
    """The fake-score step: the denoising loss on the generator's samples ``x`` (DMD eq. 6) at a random level, plus
    with a GAN head the discriminator's non-saturating loss on real and generated data noised alike (DMD2 sec. 4.3)."""
    t, eps = _noise_level(x, cfg, g)
    loss = diffusion_loss(m.fake, x, t, eps, cond)
    if m.head is not None:
        t2, eps2 = _noise_level(x, cfg, g)
        schedule = unwrap(m.generator).schedule
        real_t, fake_t = add_noise(schedule, x_real, t2, eps2), add_noise(schedule, x, t2, eps2)
        loss = loss + cfg.gan_disc * (F.softplus(-m.logits(real_t, t2, cond)).mean()
                                      + F.softplus(m.logits(fake_t, t2, cond)).mean())
    return loss


def generator_loss(m: DMDTrainee, teacher: Denoiser, x: Tensor, cond: Condition, cfg: DMDConfig,
                   g: torch.Generator) -> Tensor:
    """The generator step's loss on its samples ``x``: a surrogate whose gradient in x is `dmd_gradient` / (B numel)
    (DMD's mean reduction) at a random level, plus with a GAN head ``cfg.gan`` times the generator's
    non-saturating term on the noised samples."""
    t, eps = _noise_level(x, cfg, g)
    loss = surrogate_loss(x, dmd_gradient(teacher, m.fake, x, t, eps, cond)) / x[0].numel()
    if m.head is not None:
        t2, eps2 = _noise_level(x, cfg, g)
        x_t = add_noise(unwrap(m.generator).schedule, x, t2, eps2)
        loss = loss + cfg.gan * F.softplus(-m.logits(x_t, t2, cond)).mean()
    return loss


def regression_loss(generator: nn.Module, pairs: dict[str, Tensor], t_max: Tensor, sigma_max: float, batch: int,
                    g: torch.Generator) -> Tensor:
    """DMD eq. 9 with MSE for LPIPS: || G(z) - ODE_teacher(z) ||^2 on ``batch`` of the precomputed pairs, z scaled
    to the generator's first input level (``pairs["z"]`` are unit-variance)."""
    idx = torch.randint(pairs["z"].shape[0], (batch,), generator=g)
    c = pairs["cond"][idx] if "cond" in pairs else None
    x0 = generator(pairs["z"][idx] * sigma_max, t_max.float().expand(batch), c, check=False).x0
    return (x0 - pairs["x0"][idx]).pow(2).mean()


# ---- the trainer ---------------------------------------------------------------------------------------
def _pairs(teacher: Denoiser, out: Path, cfg: DMDConfig, data: DataFn, seed: int) -> dict[str, Tensor]:
    from priorkit.distill.students.reflow import make_couplings

    path = out / "pairs.safetensors"
    if path.is_file():
        return load_tensors(path)
    pairs = make_couplings(teacher, cfg.pairs, steps=cfg.teacher_steps, conditions=lambda m, g: data(m, g)[1],
                           chunk=min(cfg.pairs, 2000), generator=torch.Generator().manual_seed(seed), progress=False)
    if is_main_process():
        out.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.stem + ".tmp.safetensors")  # a kill mid-write leaves no truncated pairs file
        save_tensors({k: v.contiguous() for k, v in pairs.items()}, tmp)
        tmp.rename(path)
    return pairs


def load_init(model: DMDTrainee, source: str | Path) -> None:
    """Start ``model`` from an earlier DMD run: its EMA generator (the student it saved) and its last fake score, so a
    second stage (e.g. DMD2's GAN head added to a trained generator, DMD2 sec. 4.3) continues where the first ended;
    the GAN head and the optimiser start fresh. ``source``: the run folder (with ``checkpoint/``) or, for the
    generator alone, a student folder or a bundled student's name (e.g. "shapes-dmd2")."""
    from priorkit.distill.core.loading import BUNDLED, bundled_path
    from priorkit.distill.students.format import is_student_folder, load_student

    source = bundled_path(str(source)) if str(source) in BUNDLED else Path(source)
    state = source / "checkpoint" / "state.safetensors"
    if state.is_file():
        tensors = load_tensors(state)
        parts = {name: {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
                 for name, prefix in (("generator", "ema.generator."), ("fake", "model.fake."))}
        if not parts["generator"]:
            parts["generator"] = {k[len("model.generator."):]: v for k, v in tensors.items()
                                  if k.startswith("model.generator.")}
        if not parts["generator"] or not parts["fake"]:
            raise ValueError(f"{source} holds no DMD checkpoint (no generator / fake score in {state.name})")
        try:
            model.generator.load_state_dict(parts["generator"])
            model.fake.load_state_dict(parts["fake"])
        except RuntimeError as e:
            raise ValueError(f"--init {source}: its networks do not fit this teacher ({str(e).splitlines()[0]})") from e
        return
    if is_student_folder(source):
        try:
            codecs = ("text_encoder.", "vae.")  # attached by load_student; the generator gets conditions encoded
            model.generator.load_state_dict({k: v for k, v in load_student(source).state_dict().items()
                                             if not k.startswith(codecs)})
        except RuntimeError as e:
            raise ValueError(f"--init {source}: its student does not fit this teacher "
                             f"({str(e).splitlines()[0]})") from e
        return
    raise ValueError(f"--init {source}: neither a DMD run folder (with checkpoint/) nor a student folder")


def dmd_distill(teacher: Denoiser, student: Denoiser, data: DataFn, out: str | Path, cfg: DMDConfig | None = None, *,
                resume: bool = False, meta: dict[str, Any] | None = None) -> Denoiser:
    """Train ``student`` (the generator, e.g. a copy of the teacher) by DMD / DMD2; saved to ``out/student``.

    ``data(n, g) -> (x0, cond)`` gives the conditions of the generated batches and, for the GAN head, real
    samples. ``cfg.init``: an earlier run (see :func:`load_init`) to start the generator and the fake score from
    (overwritten on ``resume`` by the checkpoint, which holds both). Returns the EMA generator (eval).
    """
    cfg = cfg or DMDConfig()
    out = Path(out)
    if not cfg.fake_lr_scale > 0 or not math.isfinite(cfg.fake_lr_scale):  # before anything is built
        raise ValueError(f"fake_lr_scale must be a finite number > 0; got {cfg.fake_lr_scale}")
    teacher = freeze(teacher)
    fake = make_fake(teacher, student, cfg.fake, cfg.lora_rank)
    model = DMDTrainee(student.train().requires_grad_(True), fake, gan=cfg.gan > 0)  # a new head: torch's RNG
    if cfg.init:
        load_init(model, cfg.init)
    critic = model.critic_params()
    pairs = _pairs(teacher, out, cfg, data, cfg.train.seed + 7) if cfg.regression > 0 else None
    schedule = student.schedule
    times = generator_times(schedule, cfg.steps)
    sigma_max = float(schedule.sigma(times[:1]))
    period = cfg.fake_updates + 1

    def loss_fn(m: nn.Module, step: int, g: torch.Generator) -> Tensor:
        m = unwrap(m)
        x_real, cond = data(cfg.batch, g)
        noise = torch.randn(x_real.shape, generator=g) * sigma_max
        k = int(torch.randint(cfg.steps, (1,), generator=g))
        gen_step = step % period == cfg.fake_updates
        for p in critic:
            p.requires_grad_(not gen_step)  # a generator step leaves the critic without gradients
        if not gen_step:  # fake score (and discriminator) on the generator's current samples
            with torch.no_grad():
                x = generate(m.generator, noise, times, cond, last=k, generator_rng=g)[0]
            return critic_loss(m, x, x_real, cond, cfg, g)
        x, _ = generate(m.generator, noise, times, cond, last=k, generator_rng=g)
        loss = generator_loss(m, teacher, x, cond, cfg, g)
        if pairs is not None:
            loss = loss + cfg.regression * regression_loss(m.generator, pairs, times[0], sigma_max, cfg.batch, g)
        return loss

    groups = None if cfg.fake_lr_scale == 1.0 else [  # e.g. a LoRA fake score at LoRA's usual, larger rate
        {"params": [p for p in model.generator.parameters() if p.requires_grad]},
        {"params": critic, "lr_scale": cfg.fake_lr_scale}]
    ema, log = train(model, loss_fn, cfg.train, out, resume=resume and (out / "checkpoint").is_dir(),
                     desc=f"{cfg.variant} ({cfg.steps}-step)", params=groups)
    result = freeze(ema.generator)
    save_student(result, out / "student", {**(meta or {}), "method": cfg.variant, "sampler": "dmd",
                                          "steps": cfg.steps, "times": times.tolist(), "config": asdict(cfg),
                                          "final_loss": log[-1]["loss"] if log else None})
    return result


def _noise_level(x: Tensor, cfg: DMDConfig, g: torch.Generator) -> tuple[Tensor, Tensor]:
    t = sample_times(x.shape[0], cfg.t_lo, cfg.t_hi, g).to(x.dtype)
    return t, torch.randn(x.shape, generator=g, dtype=x.dtype)


__all__ = ["DMD2Config", "DMDConfig", "GANHead", "critic_loss", "dmd_distill", "dmd_gradient", "dmd_sample", "generate",
           "generator_loss", "generator_times", "load_init", "make_fake", "regression_loss"]
