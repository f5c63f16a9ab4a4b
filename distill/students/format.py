"""Students: UNet students with extra scalar conditioning, saving / loading, and the training wrapper.

Every fast-sampler trainer of distill/ returns a `Denoiser`. This module holds what they share:

* :class:`UNetStudent` — a copy of a diffusers teacher UNet that also takes extra scalars (the shortcut step
  size ``d``, the guidance weight ``w``) through the UNet's class embedding, zero-initialised so that the
  student starts as the teacher exactly: ``class_embed_type="projection"`` (Fourier features of the scalars)
  for a ``UNet2DConditionModel``, ``"timestep"`` (one scalar) for a ``UNet2DModel``;
* :func:`save_student` / :func:`load_student` — a folder with ``config.json`` (architecture, schedule,
  conditioning, method), ``student.safetensors`` and ``priorkit.json`` (``{"kind": "student", ...}``);
  ``priorkit.distill.core.loading.load_denoiser`` reads such folders through the loader registered here;
* :class:`Trainee` — the module `priorkit.distill.core.training.train` optimises: the student plus, when a method needs
  one, a frozen target network (an EMA of the student) that is checkpointed with it.
"""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from priorkit.distill.core.denoiser import Condition, Denoiser, select_rows
from priorkit.distill.core.diffusers_adapter import DiffusersDenoiser
from priorkit.distill.core.loading import ModelLoadError, load_denoiser, register_folder_loader
from priorkit.distill.core.tensor_files import load_tensors, save_tensors
from priorkit.distill.core.training import is_main_process  # noqa: F401 - re-exported (the trainers import it here)
from priorkit.distill.students.consistency_model import ConsistencyModel
from priorkit.distill.zoo.toy import MLPConfig, MLPDenoiser, fourier_embedding

STUDENT_KIND = "student"
WEIGHTS = "student.safetensors"
_EXCLUDED = ("text_encoder", "vae")  # loaded from their own specs, never copied into a student's weights


# ---- UNet students -------------------------------------------------------------------------------
class UNetStudent(DiffusersDenoiser):
    """A diffusers UNet denoiser that also takes extra scalar inputs (e.g. "d" or "w") as class embedding.

    Args:
        unet, scheduler_config, vae, text_encoder: as for `DiffusersDenoiser`; the UNet must already have
            the class embedding (build one with :func:`unet_student_from_teacher`).
        extras: names of the scalars; ``extra_defaults`` their values when a condition omits them.
        feature_dim: Fourier features per scalar (``projection`` embeddings).

    Conditions: as the teacher's (prompts, states, or a dict with "text"), plus the extras as dict keys:
    ``{"text": prompts, "w": 3.0}``; a (B,) tensor per extra is accepted too.
    """

    def __init__(self, unet: nn.Module, scheduler_config: dict[str, Any], *, extras: tuple[str, ...] = ("d",),
                 extra_defaults: dict[str, float] | None = None, feature_dim: int = 64, vae: nn.Module | None = None,
                 text_encoder: nn.Module | None = None) -> None:
        super().__init__(unet, scheduler_config, vae=vae, text_encoder=text_encoder)
        kind = unet.config.get("class_embed_type")
        if not extras:
            raise ValueError("a UNet student needs at least one extra input (e.g. ('d',) or ('w',))")
        if kind == "timestep" and len(extras) != 1:
            raise ValueError("class_embed_type='timestep' embeds exactly one extra scalar")
        if kind not in ("projection", "timestep"):
            raise ValueError(f"the student UNet needs class_embed_type 'projection' or 'timestep'; got {kind!r}")
        self.extras = tuple(extras)
        self.extra_defaults = dict(extra_defaults or {})
        self.feature_dim = feature_dim

    def _features(self, given: dict[str, Any], b: int) -> Tensor:
        values = [torch.as_tensor(given.get(k, self.extra_defaults.get(k, 0.0)), dtype=torch.float32,
                                  device=self.device).reshape(-1).expand(b) for k in self.extras]
        if self.unet.config.get("class_embed_type") == "timestep":
            return values[0] * self.num_train_timesteps  # the UNet's own sinusoidal time projection follows
        return torch.cat([fourier_embedding(v, self.feature_dim) for v in values], dim=-1)

    def predict_native(self, x: Tensor, t: Tensor, cond: Condition = None) -> tuple[str, Tensor]:
        given = cond if isinstance(cond, dict) else {}
        unknown = set(given) - {"text", *self.extras}
        if unknown:
            raise ValueError(f"unknown condition keys {sorted(unknown)}; this student takes 'text' and "
                             f"{list(self.extras)}")
        text = given.get("text") if isinstance(cond, dict) else cond
        return super().predict_native(x, t, {"text": text, "class_labels": self._features(given, x.shape[0])})

    def config_spec(self) -> dict[str, Any]:
        return {"type": "unet", "unet_class": type(self.unet).__name__, "unet_config": _jsonable(self.unet.config),
                "scheduler_config": _jsonable(self.scheduler_config), "extras": list(self.extras),
                "extra_defaults": self.extra_defaults, "feature_dim": self.feature_dim}


def copy_teacher(teacher: DiffusersDenoiser) -> DiffusersDenoiser:
    """A trainable copy of a diffusers teacher's UNet (no text encoder / VAE: see :func:`attach_codecs`)."""
    unet = copy.deepcopy(teacher.unet).train().requires_grad_(True)
    return _bare(DiffusersDenoiser(unet, teacher.scheduler_config), teacher)


def _bare(student: DiffusersDenoiser, teacher: DiffusersDenoiser) -> DiffusersDenoiser:
    # Students train on encoded conditions, so they carry no text encoder or VAE (which would fill every
    # checkpoint and EMA copy); the empty prompt's states are cached for classifier-free guidance.
    if teacher.text_encoder is not None:
        with torch.no_grad():
            student._null = teacher.null_condition(torch.empty(1, 0))[:1].detach().clone()
    return student


def _inner_diffusers(den: nn.Module) -> DiffusersDenoiser | None:
    den = unwrap(den)
    while not isinstance(den, DiffusersDenoiser) and hasattr(den, "net"):
        den = den.net
    return den if isinstance(den, DiffusersDenoiser) else None


def attach_codecs(student: Denoiser, teacher: Denoiser) -> Denoiser:
    """Give a trained UNet student its teacher's text encoder and VAE (shared; never saved with the student)."""
    inner, source = _inner_diffusers(student), _inner_diffusers(teacher)
    if inner is not None and source is not None:
        inner.text_encoder, inner.vae = source.text_encoder, source.vae
    return student


def unet_student_from_teacher(teacher: DiffusersDenoiser, extras: tuple[str, ...] = ("d",), *,
                              extra_defaults: dict[str, float] | None = None, feature_dim: int = 64) -> UNetStudent:
    """A copy of ``teacher``'s UNet with a zero-initialised class embedding for ``extras``: equal to the teacher.

    ``UNet2DConditionModel`` gets ``class_embed_type="projection"`` on ``len(extras) * feature_dim`` Fourier
    features; ``UNet2DModel`` gets ``class_embed_type="timestep"`` (one extra). The text encoder and VAE
    are not copied (see :func:`attach_codecs`); the empty prompt's states are cached for guidance.
    """
    import diffusers

    unet = teacher.unet
    if unet.config.get("class_embed_type") is not None or unet.config.get("num_class_embeds") is not None:
        raise ValueError("the teacher UNet already has a class embedding; extra conditioning would replace it")
    # private keys dropped: diffusers' "_use_default_values" would reset class_embed_type to its default
    config = {k: v for k, v in unet.config.items() if not k.startswith("_")}
    if isinstance(unet, diffusers.UNet2DConditionModel):
        config.update(class_embed_type="projection", projection_class_embeddings_input_dim=feature_dim * len(extras))
    elif isinstance(unet, diffusers.UNet2DModel):
        if len(extras) != 1:
            raise ValueError("a UNet2DModel student takes exactly one extra scalar")
        config.update(class_embed_type="timestep")
    else:
        raise TypeError(f"unsupported teacher network {type(unet).__name__}")
    new = type(unet).from_config(config).to(device=teacher.device, dtype=teacher.dtype)
    missing, unexpected = new.load_state_dict(unet.state_dict(), strict=False)
    if unexpected or any(not k.startswith("class_embedding.") for k in missing):
        raise RuntimeError(f"teacher weights do not fit the student: missing {missing}, unexpected {unexpected}")
    with torch.no_grad():  # the embedding's last layer starts at zero: class_emb = 0, student == teacher
        new.class_embedding.linear_2.weight.zero_()
        new.class_embedding.linear_2.bias.zero_()
    student = UNetStudent(new, teacher.scheduler_config, extras=extras, extra_defaults=extra_defaults,
                          feature_dim=feature_dim)
    return _bare(student, teacher)


def _jsonable(config: Any) -> Any:
    return json.loads(json.dumps(dict(config), default=lambda o: list(o) if isinstance(o, tuple) else str(o)))


# ---- training wrapper ----------------------------------------------------------------------------
class Trainee(nn.Module):
    """What `priorkit.distill.core.training.train` optimises: ``student`` and an optional frozen ``target`` copy.

    ``forward`` is the student's, so a ``DistributedDataParallel`` wrapper (accelerate) sees every student
    call; the target (an EMA of the student: consistency models, shortcut models) lives in the state dict
    and so in every checkpoint, which makes ``resume`` exact.
    """

    def __init__(self, student: Denoiser, target: bool = False) -> None:
        super().__init__()
        self.student = student
        self.target = copy.deepcopy(student).requires_grad_(False) if target else None

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.student(*args, **kwargs)

    def trainable(self) -> list[nn.Parameter]:
        return [p for p in self.student.parameters() if p.requires_grad]

    @torch.no_grad()
    def update_target(self, decay: float) -> None:
        """target <- decay * target + (1 - decay) * student (Polyak / EMA)."""
        if self.target is None:
            raise RuntimeError("this trainee has no target network")
        for p_t, p in zip(self.target.parameters(), self.student.parameters(), strict=True):
            p_t.lerp_(p.detach(), 1.0 - decay)


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside a DistributedDataParallel / accelerate wrapper."""
    return getattr(model, "module", model)


def trainable_params(model: nn.Module) -> list[nn.Parameter]:
    """The parameters a trainer optimises: the student's trainable ones (not a teacher's nor a target's)."""
    model = unwrap(model)
    return model.trainable() if isinstance(model, Trainee) else [p for p in model.parameters() if p.requires_grad]


def with_extras(student: nn.Module, cond: Condition, **extras: Any) -> Condition:
    """Add extra scalar inputs (e.g. ``d=...``, ``w=...``) to a condition for ``student``.

    A bare tensor condition goes under the student's ``condition_key``: "class" (labels) for an
    `MLPDenoiser`, "text" (states) for UNet students and by default.
    """
    if isinstance(cond, dict):
        return {**cond, **extras}
    if cond is None:
        return dict(extras)
    inner = unwrap(student)
    while not hasattr(inner, "condition_key") and hasattr(inner, "net"):
        inner = inner.net
    return {getattr(inner, "condition_key", "text"): cond, **extras}


def freeze(den: Denoiser) -> Denoiser:
    """Eval mode, no gradients (teachers)."""
    return den.eval().requires_grad_(False)


# ---- save / load ---------------------------------------------------------------------------------
def student_spec(den: nn.Module) -> dict[str, Any]:
    """The architecture of a student as JSON (nested for wrappers such as consistency models)."""
    if isinstance(den, MLPDenoiser):
        return {"type": "mlp", "config": den.config_dict()}
    if isinstance(den, ConsistencyModel):  # a wrapper: its settings and its backbone's spec
        return {**den.config_spec(), "net": student_spec(den.net)}
    if hasattr(den, "config_spec"):
        return den.config_spec()
    if isinstance(den, DiffusersDenoiser):  # a plain copy of a teacher UNet (reflow, progressive, consistency)
        return {"type": "diffusers", "unet_class": type(den.unet).__name__, "unet_config": _jsonable(den.unet.config),
                "scheduler_config": _jsonable(den.scheduler_config)}
    raise TypeError(f"cannot save a {type(den).__name__} as a student (no config_spec)")


def build_student(spec: dict[str, Any], *, text_encoder: nn.Module | None = None,
                  vae: nn.Module | None = None) -> Denoiser:
    """Inverse of :func:`student_spec`: a freshly initialised student of that architecture."""
    kind = spec.get("type")
    if kind == "mlp":
        cfg = dict(spec["config"])
        cfg["extras"] = tuple(cfg.get("extras", ()))
        return MLPDenoiser(config=MLPConfig(**cfg))
    if kind in ("unet", "diffusers"):
        import diffusers

        if spec["unet_class"] not in ("UNet2DModel", "UNet2DConditionModel"):
            raise ValueError(f"unsupported network class {spec['unet_class']!r}")
        unet = getattr(diffusers, spec["unet_class"]).from_config(spec["unet_config"])
        if kind == "diffusers":
            return DiffusersDenoiser(unet, spec["scheduler_config"], vae=vae, text_encoder=text_encoder)
        return UNetStudent(unet, spec["scheduler_config"], extras=tuple(spec["extras"]),
                           extra_defaults=spec.get("extra_defaults"), feature_dim=int(spec["feature_dim"]),
                           vae=vae, text_encoder=text_encoder)
    if kind == "consistency":
        return ConsistencyModel.from_spec(spec, build_student(spec["net"], text_encoder=text_encoder, vae=vae))
    raise ValueError(f"unknown student type {kind!r} in config.json")


def _weights(den: nn.Module) -> dict[str, Tensor]:
    return {k: v.detach().contiguous() for k, v in den.state_dict().items()
            if not any(part in _EXCLUDED for part in k.split("."))}


def save_student(student: Denoiser, folder: str | Path, meta: dict[str, Any] | None = None) -> Path:
    """Write ``student`` to ``folder``: config.json, student.safetensors, priorkit.json. Returns the folder.

    ``meta``: JSON-able facts kept in priorkit.json — "method" (e.g. "consistency"), "teacher" (its path),
    "steps" (the NFE the student was made for), "text_encoder" (a `priorkit.distill.core.text` spec), "vae_from" (a
    folder
    whose VAE a latent student uses), training settings. The folder is written atomically, by the main
    process only in a distributed run.
    """
    folder = Path(folder)
    if not is_main_process():
        return folder
    meta = dict(meta or {})
    spec = {"student": student_spec(student), "schedule": student.schedule.config(),
            "sample_shape": list(student.sample_shape) if student.sample_shape is not None else None,
            "method": meta.get("method")}
    tmp = folder.with_name(f".{folder.name}.tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    save_tensors(_weights(student), tmp / WEIGHTS)
    (tmp / "config.json").write_text(json.dumps(spec, indent=2))
    (tmp / "priorkit.json").write_text(json.dumps({**meta, "kind": STUDENT_KIND}, indent=2, default=str))
    if folder.exists():
        old = folder.with_name(f".{folder.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        folder.rename(old)
        tmp.rename(folder)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(folder)
    return folder


def is_student_folder(folder: str | Path) -> bool:
    """True when ``folder/priorkit.json`` says ``"kind": "student"``."""
    path = Path(folder) / "priorkit.json"
    if not path.is_file():
        return False
    try:
        return json.loads(path.read_text()).get("kind") == STUDENT_KIND
    except json.JSONDecodeError:
        return False


def read_meta(folder: str | Path) -> dict[str, Any]:
    """The priorkit.json of a student folder."""
    return json.loads((Path(folder) / "priorkit.json").read_text())


def load_student(folder: str | Path, *, dtype: torch.dtype = torch.float32,
                 device: str | torch.device = "cpu") -> Denoiser:
    """Rebuild a student saved by :func:`save_student` (bit-identical weights), in eval mode.

    Raises `priorkit.distill.core.loading.ModelLoadError` naming the file at fault.
    """
    folder = Path(folder)
    try:
        spec = json.loads((folder / "config.json").read_text())
        meta = read_meta(folder)
    except (FileNotFoundError, json.JSONDecodeError) as e:
        raise ModelLoadError(f"{folder} is not a student folder: {e}") from e
    if meta.get("kind") != STUDENT_KIND:
        raise ModelLoadError(f"{folder / 'priorkit.json'} does not describe a student")
    weights = folder / WEIGHTS
    if not weights.is_file():
        raise ModelLoadError(f"missing weights {weights}")
    text_encoder = vae = None
    if meta.get("text_encoder"):
        from priorkit.distill.core.text import text_encoder_from_spec

        text_encoder = text_encoder_from_spec(meta["text_encoder"])
    if meta.get("vae_from"):
        vae = getattr(load_denoiser(meta["vae_from"]), "vae", None)
    try:
        student = build_student(spec["student"], text_encoder=text_encoder, vae=vae)
    except (KeyError, TypeError, ValueError) as e:
        raise ModelLoadError(f"{folder / 'config.json'} describes no buildable student: {e}") from e
    try:
        state = load_tensors(weights)
    except ValueError as e:
        raise ModelLoadError(str(e)) from e
    missing, unexpected = student.load_state_dict(state, strict=False)
    missing = [k for k in missing if not any(part in _EXCLUDED for part in k.split("."))]
    if missing or unexpected:
        raise ModelLoadError(f"{weights} does not match {folder / 'config.json'}: missing {missing[:5]}, "
                             f"unexpected {unexpected[:5]}")
    student = student.to(device=device, dtype=dtype).eval().requires_grad_(False)
    student.is_student = True  # a few-step sampler, not a denoiser of its data: text to 3D refuses it
    if meta.get("restore_nfe"):  # the steps restoration methods take with this student by default
        student.restore_nfe = int(meta["restore_nfe"])
    return student


register_folder_loader(STUDENT_KIND, load_student)  # load_denoiser reads student folders through this

__all__ = ["UNetStudent", "unet_student_from_teacher", "copy_teacher", "attach_codecs", "Trainee", "unwrap",
           "trainable_params", "freeze", "save_student", "load_student", "with_extras", "select_rows",
           "is_main_process", "is_student_folder", "read_meta", "student_spec", "build_student"]
