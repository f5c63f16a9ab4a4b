"""Plain functions behind ``priorkit distill`` and ``priorkit sample`` for students (the lead wires the CLI).

* :func:`distill` — train a fast-sampling student of a teacher with one method; returns its folder.
  Teachers: "toy:gmm" (the exact mixture), "toy:moons", "toy:checkerboard" (an MLP teacher trained first
  by flow matching), or anything `priorkit.distill.core.loading.load_denoiser` reads (a bundled name, a diffusers
  folder).
* :func:`sample_student` — samples from a student folder with the sampler its method needs.
* :func:`student_sampler` — that sampler as a function, for benchmarks and apps.
"""

from __future__ import annotations

import copy
import json
import math
import numbers
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from priorkit.distill.core.denoiser import Condition, Denoiser, WrappedDenoiser
from priorkit.distill.core.diffusers_adapter import DiffusersDenoiser
from priorkit.distill.core.prediction import Prediction
from priorkit.distill.core.samplers import initial_noise, sample
from priorkit.distill.core.training import is_main_process, run_settings
from priorkit.distill.students import registry
from priorkit.distill.students.consistency_model import ConsistencyModel
from priorkit.distill.students.format import (
    attach_codecs,
    copy_teacher,
    freeze,
    load_student,
    read_meta,
    unet_student_from_teacher,
    with_extras,
)
from priorkit.distill.zoo.toy import (
    ALL_TARGETS,
    INPUT_FREQUENCIES,
    DataFn,
    MLPDenoiser,
    conditional_gmm_target,
    exact_target,
    target_data,
)

METHODS: tuple[str, ...] = tuple(registry.METHODS)  # the registered method names

#: a sampler: fn(student, noise (B, ...) at its start time, steps, cond, generator) -> samples
Sampler = Callable[[Denoiser, Tensor, int, Condition, torch.Generator | None], Tensor]


class CFGDenoiser(WrappedDenoiser):
    """A conditional denoiser served with a fixed classifier-free guidance scale (the teacher students copy)."""

    def __init__(self, inner: Denoiser, scale: float) -> None:
        super().__init__(inner)
        self.scale = float(scale)

    def forward(self, x: Tensor, t: Tensor | float, cond: Condition = None, *, check: bool = True) -> Prediction:
        if cond is None or self.scale == 1.0:
            return self.inner(x, t, cond, check=check)
        return self.inner.guided(x, t, cond, self.scale, check=check)


# ---- teachers, students, data --------------------------------------------------------------------
def _toy_name(teacher: str) -> str | None:
    if teacher.startswith("toy:"):
        name = teacher[4:]
        if name not in ALL_TARGETS:
            raise ValueError(f"unknown toy target {name!r}; expected one of {ALL_TARGETS}")
        return name
    return None


def _source_spec(teacher: str) -> dict[str, Any]:
    """The priorkit.json of a teacher folder or bundled name (text encoder spec, bundled name), or {}."""
    from priorkit.distill.core.loading import BUNDLED, BUNDLED_DIR

    folder = BUNDLED_DIR / teacher if teacher in BUNDLED else Path(teacher)
    path = folder / "priorkit.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def image_data(teacher: Denoiser, source: str, *, n: int = 12000, seed: int = 0, guidance: float = 1.0,
               prompts: list[str] | None = None, photo_set: str = "v1", unconditional: bool = False) -> DataFn:
    """Training data for an image teacher: the shapes world's renders ("shapes"; with their captions, or without
    any with ``unconditional``: the student then copies the teacher's empty-prompt model), patches of the training
    photographs of ``photo_set`` ("photos"; v2 fetches Debian's into the cache), or otherwise the teacher's own
    samples (DPM-Solver++, 32 steps; conditioned on ``prompts`` if given)."""
    name = _source_spec(source).get("name", source)
    if name == "shapes":
        from priorkit.distill.zoo.train_prior import ShapesData

        shapes = ShapesData(n, seed=seed)

        def renders(m: int, g: torch.Generator) -> tuple[Tensor, Condition]:
            x, text = shapes.batch(m, g)
            return x, (None if unconditional else teacher.encode(text))

        return renders
    if name == "photos":
        from priorkit.distill.zoo.photos import PatchSampler, training_photos

        patches = PatchSampler(photos=training_photos(photo_set))
        return lambda m, g: (patches(m, g), None)
    g0 = torch.Generator().manual_seed(seed)
    conds = None
    if prompts:
        idx = torch.randint(len(prompts), (n,), generator=g0)
        conds = teacher.encode([prompts[i] for i in idx.tolist()])
    xs = []
    with torch.no_grad():
        for start in range(0, n, 256):
            c = conds[start:start + 256] if conds is not None else None
            m = min(256, n - start)
            noise = initial_noise(teacher, (m, *teacher.sample_shape), generator=g0)
            xs.append(sample(teacher, noise, steps=32, cond=c, guidance=guidance))
    bank = torch.cat(xs)

    def own(m: int, g: torch.Generator) -> tuple[Tensor, Condition]:
        i = torch.randint(len(bank), (m,), generator=g)
        return bank[i], (conds[i] if conds is not None else None)

    return own


def make_student(method: str, teacher: Denoiser, backbone: Denoiser | None = None, *,
                 sigma_data: float = 0.5) -> Denoiser:
    """The initial student of ``method`` for ``teacher``.

    Diffusers teachers: a copy of the UNet (reflow, progressive, cd), with a zero-initialised ``d`` / ``w``
    class embedding (shortcut / guidance); ct starts from the same copy. MLP / analytic teachers: a copy of
    ``backbone`` (an MLP teacher) where the architecture allows, else a fresh `MLPDenoiser`.
    """
    m = registry.method(method)
    if isinstance(teacher, CFGDenoiser):
        teacher = teacher.inner
    if isinstance(teacher, DiffusersDenoiser):
        if m.extras:
            return unet_student_from_teacher(teacher, m.extras)
        net = copy_teacher(teacher)
        return ConsistencyModel(net, sigma_data=sigma_data) if m.consistency else net
    schedule = teacher.schedule
    if m.extras:
        labels = dict(num_classes=2, extra_defaults={"w": 1.0}) if m.learns_guidance else {}
        return MLPDenoiser(schedule, hidden=128, depth=4, extras=m.extras, input_frequencies=INPUT_FREQUENCIES,
                           **labels)
    if backbone is not None and m.copies_toy_teacher:
        net = copy.deepcopy(backbone).train().requires_grad_(True)
    else:
        net = MLPDenoiser(schedule, hidden=128, depth=4, kind="velocity", input_frequencies=INPUT_FREQUENCIES)
    return net


def method_config(method: str, *, steps: int | None = None, batch: int | None = None, lr: float | None = None,
                  image: bool = False, nfe: int | None = None) -> Any:
    """The defaults dataclass of ``method`` with the common overrides (image teachers: smaller lr / batch).

    ``nfe``: the model evaluations the result is made for, where a method fixes them at training time (bespoke: the
    solver's NFE; dmd / dmd2: the generator's steps); a ValueError for the others (they sample at any NFE)."""
    m = registry.method(method)
    cfg: Any = m.config()
    tcfg = m.train_config(cfg)
    if image:
        tcfg.lr, tcfg.ema_decay, cfg.batch = 5e-5, 0.999, 32
        m.image_defaults(cfg)
    else:
        m.toy_defaults(cfg)
    if steps is not None:
        tcfg.steps = steps
        tcfg.checkpoint_every = min(tcfg.checkpoint_every, max(1, steps // 4))  # a short run still resumes
        m.set_steps(cfg, steps)
    if batch is not None:
        cfg.batch = batch
    if lr is not None:
        tcfg.lr = lr
    if nfe is not None:
        field = {"bespoke": "nfe", "dmd": "steps", "dmd2": "steps"}.get(method)
        if field is None:
            raise ValueError(f"--nfe applies to bespoke, dmd and dmd2 (fixed at training); {method} students sample "
                             "at any number of steps")
        if nfe < 1:
            raise ValueError(f"--nfe must be >= 1; got {nfe}")
        setattr(cfg, field, nfe)
    return cfg


def run_method(method: str, teacher: Denoiser, student: Denoiser, data: DataFn, out: str | Path, cfg: Any, *,
               resume: bool = False, meta: dict[str, Any] | None = None, conditions: Any = None) -> Denoiser:
    """Train ``student`` with the registered trainer of ``method`` (`priorkit.distill.students.registry`)."""
    return registry.method(method).train(teacher, student, data, out, cfg, resume=resume, meta=meta,
                                         conditions=conditions)


def final_folder(method: str, out: str | Path) -> Path:
    """Where the final student of a run in ``out`` is saved."""
    out = Path(out)
    candidates = sorted(p.parent for p in out.rglob("student/priorkit.json"))
    if not candidates and (out / "bespoke.json").is_file():
        return out / "bespoke.json"  # a bespoke solver of a teacher the student format cannot save
    if not candidates:
        raise FileNotFoundError(f"no student in {out}")
    # the most recently written student is the last stage (progressive rounds, one-step reflow, stage 2)
    return max(candidates, key=lambda p: (p / "priorkit.json").stat().st_mtime)


def check_dmd_options(method: str, teacher: str, init: str | Path | None, gan: float | None, fake: str | None,
                      fake_lr_scale: float | None = None) -> None:
    """ValueError for DMD-only options on another method or out of range (before anything is written)."""
    from priorkit.distill.core.loading import BUNDLED

    given = (init, gan, fake, fake_lr_scale)
    if any(v is not None for v in given) and method not in ("dmd", "dmd2"):
        raise ValueError(f"--init, --gan, --fake and --fake-lr-scale apply to dmd and dmd2; got {method}")
    if fake_lr_scale is not None and not (fake_lr_scale > 0 and math.isfinite(fake_lr_scale)):
        raise ValueError(f"--fake-lr-scale must be a finite number > 0; got {fake_lr_scale}")
    if fake is not None and fake not in ("copy", "lora"):
        raise ValueError(f"--fake must be copy or lora; got {fake!r}")
    if fake == "lora" and teacher.startswith("toy:"):
        raise ValueError("--fake lora needs a diffusers (UNet) teacher; toy teachers take the full copy")
    if gan is not None and not gan >= 0:
        raise ValueError(f"--gan must be >= 0; got {gan}")
    if init is not None and str(init) not in BUNDLED:
        from priorkit.distill.students.format import is_student_folder

        source = Path(init)
        if source.is_file():
            raise ValueError(f"--init {init} is a file: give the folder of an earlier dmd / dmd2 run or of a student")
        if not source.is_dir():
            raise ValueError(f"--init {init}: no such run or student folder")
        if not (source / "checkpoint" / "state.safetensors").is_file() and not is_student_folder(source):
            raise ValueError(f"--init {init} holds neither a dmd / dmd2 run (checkpoint/) nor a student "
                             "(priorkit.json of kind student)")


def check_distill_args(method: str, teacher: str, out: str | Path, *, steps: int | None = None,
                       batch: int | None = None, lr: float | None = None, guidance: float = 1.0,
                       resume: bool = False, n_data: int = 12000, nfe: int | None = None, photo_set: str = "v1",
                       init: str | Path | None = None, gan: float | None = None, fake: str | None = None,
                       fake_lr_scale: float | None = None, unconditional: bool = False) -> None:
    """ValueError for arguments :func:`distill` cannot train with, before anything is written (the messages name the
    CLI's flags): unknown method, counts < 1, a non-finite or non-positive lr, a guidance outside (0, 100], options
    of other methods or teachers, and an ``out`` that is a file or holds files without ``resume``."""
    from priorkit.distill.zoo.photos import PHOTO_SETS

    if method not in registry.METHODS:
        raise ValueError(f"unknown method {method!r}; expected one of {', '.join(registry.METHODS)}")
    for flag, value in (("--steps", steps), ("--batch", batch), ("--n-data", n_data)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1):
            raise ValueError(f"{flag} must be a whole number >= 1; got {value!r}")
    if lr is not None and not (math.isfinite(lr) and lr > 0):
        raise ValueError(f"--lr must be a finite number > 0; got {lr}")
    check_dmd_options(method, teacher, init, gan, fake, fake_lr_scale)
    if nfe is not None and (nfe < 1 or method not in ("bespoke", "dmd", "dmd2")):
        raise ValueError(f"--nfe must be >= 1 and applies to bespoke, dmd and dmd2 (got {nfe} for {method})")
    if photo_set not in PHOTO_SETS:
        raise ValueError(f"--photo-set must be one of {', '.join(PHOTO_SETS)}; got {photo_set!r}")
    if photo_set != "v1" and teacher != "photos":
        raise ValueError("--photo-set applies to the photos teacher only")
    if unconditional and teacher != "shapes":
        raise ValueError("--unconditional applies to the bundled shapes prior (trained on captioned renders)")
    if unconditional and method == "guidance":
        raise ValueError("--unconditional does not apply to guidance distillation (it learns the guidance weight)")
    if unconditional and guidance != 1.0:
        raise ValueError("--unconditional copies the empty-prompt model: classifier-free guidance does not apply "
                         f"(got --guidance {guidance})")
    if not (math.isfinite(guidance) and 0 < guidance <= 100):
        raise ValueError(f"--guidance must be in (0, 100]; got {guidance}")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"output folder {out} is a file")
    if is_main_process() and out.is_dir() and any(out.iterdir()) and not resume:  # sharded: rank 0 checks
        raise ValueError(f"output folder {out} is not empty: pass --resume to continue the run in it, or choose "
                         "another --out")


def distill(method: str, teacher: str, out: str | Path, *, steps: int | None = None, batch: int | None = None,
            lr: float | None = None, guidance: float = 1.0, resume: bool = False, seed: int = 0,
            n_data: int = 12000, nfe: int | None = None, photo_set: str = "v1", init: str | None = None,
            gan: float | None = None, fake: str | None = None, fake_lr_scale: float | None = None,
            unconditional: bool = False) -> Path:
    """Train a ``method`` student of ``teacher`` into ``out``; returns the final student's folder.

    Args:
        method: a name of `priorkit.distill.students.registry.METHODS` (reflow, cd, ct, shortcut, progressive,
            guidance, dmd, dmd2, bespoke).
        teacher: "toy:<target>" or a `load_denoiser` source (bundled name, diffusers folder).
        steps, batch, lr: overrides of the method's defaults (per round / stage for multi-stage methods).
        guidance: the CFG scale of the teacher the student copies (all methods but "guidance", which learns w).
        resume: continue an interrupted run in ``out`` from its last checkpoints.
        n_data: renders / teacher samples drawn for image teachers.
        nfe: bespoke / dmd / dmd2: the evaluations the solver or generator is trained for (see `method_config`).
        photo_set: the photos teacher's training photographs to distil on ("v1" shipped, "v2" with Debian's).
        init: dmd / dmd2: an earlier run (or student folder) to start the generator and fake score from.
        gan: dmd / dmd2: the weight of DMD2's GAN head in the generator loss (None: the method's, no GAN).
        fake: dmd / dmd2: the fake score, "copy" (a full copy of the teacher, the default) or "lora" (a peft LoRA
            on a copy of a UNet teacher).
        fake_lr_scale: dmd / dmd2: the fake score's (and GAN head's) learning rate as a multiple of the generator's
            (None: 1).
        unconditional: a text-conditioned image teacher copied at the empty prompt (the model the restoration
            methods use), trained without captions.
    """
    out = Path(out)
    check_distill_args(method, teacher, out, steps=steps, batch=batch, lr=lr, guidance=guidance, resume=resume,
                       n_data=n_data, nfe=nfe, photo_set=photo_set, init=init, gan=gan, fake=fake,
                       fake_lr_scale=fake_lr_scale, unconditional=unconditional)
    run_settings(out, {"method": method, "teacher": teacher, "steps": steps, "batch": batch, "lr": lr,
                       "guidance": guidance, "seed": seed, "n_data": n_data, "nfe": nfe,
                       **({"photo_set": photo_set} if photo_set != "v1" else {}),
                       **({"init": str(init)} if init is not None else {}),
                       **({"gan": gan} if gan is not None else {}),
                       **({"fake": fake} if fake is not None else {}),
                       **({"fake_lr_scale": fake_lr_scale} if fake_lr_scale not in (None, 1.0) else {}),
                       **({"unconditional": True} if unconditional else {})}, resume)
    torch.manual_seed(seed)
    t0 = time.time()
    toy = _toy_name(teacher)
    learns_guidance = registry.method(method).learns_guidance
    meta: dict[str, Any] = {"teacher": teacher, "guidance": guidance}
    if unconditional:
        meta["unconditional"] = True
    if toy is not None:
        backbone = None
        exact = exact_target(toy)  # the Gaussian mixtures are their own exact teachers
        if exact is not None and not (learns_guidance and toy != "gmm"):
            den: Denoiser = conditional_gmm_target().float() if learns_guidance else exact.float()
        else:
            from priorkit.distill.zoo.toy_cache import cached_teacher

            den = cached_teacher(toy, learns_guidance, out=out / "teacher", resume=resume)
            torch.manual_seed(seed)  # the same random numbers after a trained or a cached teacher
            backbone = den
        data = target_data(toy, conditional=learns_guidance)
        student = make_student(method, den, backbone)
        cfg = method_config(method, steps=steps, batch=batch, lr=lr, nfe=nfe)
    else:
        from priorkit.distill.core.loading import load_denoiser

        den = freeze(load_denoiser(teacher))
        spec = _source_spec(teacher)
        if spec.get("text_encoder"):
            meta["text_encoder"] = spec["text_encoder"]
        if getattr(den, "vae", None) is not None:
            meta["vae_from"] = str(teacher)
        data = image_data(den, teacher, n=n_data, seed=seed, photo_set=photo_set, unconditional=unconditional)
        student = make_student(method, den)
        cfg = method_config(method, steps=steps, batch=batch, lr=lr, image=True, nfe=nfe)
    if init is not None:
        cfg.init = str(init)
    if gan is not None:
        cfg.gan = gan
    if fake is not None:
        cfg.fake = fake
    if fake_lr_scale is not None:
        cfg.fake_lr_scale = fake_lr_scale
    target = CFGDenoiser(den, guidance) if guidance != 1.0 and not learns_guidance else den
    result = run_method(method, target, student, data, out, cfg, resume=resume, meta=meta)
    attach_codecs(result, den)
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():  # sharded: the main process saves the student; wait for it
        dist.barrier()
    folder = final_folder(method, out)
    if is_main_process():
        (out / "distill.json").write_text(json.dumps({"method": method, "teacher": teacher, "student": str(folder),
                                                      "seconds": time.time() - t0}, indent=2))
    return folder


# ---- sampling ------------------------------------------------------------------------------------
def student_sampler(meta: dict[str, Any]) -> Sampler:
    """The sampler a student's method needs, from its priorkit.json ``meta`` (``registry.STUDENT_SAMPLERS``)."""
    kind = meta.get("sampler", "ode")

    def run(student: Denoiser, noise: Tensor, steps: int, cond: Condition = None,
            generator: torch.Generator | None = None) -> Tensor:
        if kind in registry.STUDENT_SAMPLERS:
            return registry.STUDENT_SAMPLERS[kind](student, noise, steps, cond, generator, meta)
        return sample(student, noise, steps=steps, cond=cond)

    return run


start_time = registry.start_time


@torch.no_grad()
def sample_student(folder: str | Path, n: int, *, steps: int | None = None, prompt: str | list[str] | None = None,
                   label: int | None = None, w: float | None = None, seed: int = 0) -> Tensor:
    """n samples (n, *sample_shape) from a student folder, with the sampler of its method.

    ``steps`` defaults to what the student was made for (progressive: its step count; others: 1).
    ``prompt`` for text-conditioned students, ``label`` for class-conditional 2D students, ``w`` for
    guidance-distilled students.
    """
    return student_samples(load_student(folder), read_meta(folder), n, steps=steps, prompt=prompt, label=label, w=w,
                           seed=seed)


def student_samples(student: Denoiser, meta: dict[str, Any], n: int, *, steps: int | None = None,
                    prompt: str | list[str] | None = None, label: int | None = None, w: float | None = None,
                    seed: int = 0) -> Tensor:
    """n samples of a loaded student (``meta``: its priorkit.json), conditioned as in :func:`sample_student`."""
    steps = steps or int(meta.get("steps", 1))
    cond: Condition = None
    if prompt is not None:
        cond = student.encode([prompt] * n if isinstance(prompt, str) else prompt)
    elif label is not None:
        cond = torch.full((n,), int(label))
    if w is not None:
        cond = with_extras(student, cond, w=w)
    g = torch.Generator().manual_seed(seed)
    noise = initial_noise(student, (n, *student.sample_shape), t_max=start_time(student, meta), generator=g)
    return student_sampler(meta)(student, noise, steps, cond, g)
