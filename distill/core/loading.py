"""Load a `Denoiser` from a bundled name, a local diffusers folder, or a hub id. Safetensors only.

Layouts understood:

* a pipeline folder (``model_index.json``) with ``unet/`` and ``scheduler/`` and, optionally, ``vae/``,
  ``text_encoder/`` + ``tokenizer/`` (Stable Diffusion and friends);
* a bare model folder: ``config.json`` + ``diffusion_pytorch_model.safetensors`` + ``scheduler_config.json``
  (optionally a ``priorkit.json`` naming the text encoder) — how priorkit saves its own models;
* a bundled name ("shapes", "photos") resolving to such a folder inside the package;
* a folder whose ``priorkit.json`` names a ``"kind"`` with a registered loader (:func:`register_folder_loader`):
  ``priorkit.distill.students.format`` registers ``"student"`` (folders written by ``save_student``). Core imports
  nothing from the students; ``priorkit.distill.loading`` is the front door that has them registered.

Pickle checkpoints (.bin, .ckpt, .pt, .pth, .pkl) are refused: unpickling runs arbitrary code.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from priorkit.distill.core.denoiser import Denoiser

PICKLE_SUFFIXES = {".bin", ".ckpt", ".pt", ".pth", ".pkl", ".pickle"}
BUNDLED_DIR = Path(__file__).resolve().parent.parent / "zoo" / "weights"
BUNDLED = {"shapes": "text-to-image prior on the shapes world (32x32, MiniLM text conditioning)",
           "photos": "unconditional prior on 64x64 natural-photo patches",
           "shapes-cd": "consistency-distilled student of 'shapes' with CFG 3 built in (1-4 steps)",
           "shapes-dmd2": "one-step DMD2 (distribution matching) student of 'shapes' with CFG 1.5 built in",
           "shapes-v2": "the shapes prior on the shapes world v2: named colours, the camera as an input (not yet the "
                        "default: BENCHMARKS.md)"}


#: loaders of priorkit's own folder kinds: priorkit.json's "kind" -> load(folder, dtype=, device=) -> Denoiser
FolderLoader = Callable[..., Denoiser]
FOLDER_LOADERS: dict[str, FolderLoader] = {}


def register_folder_loader(kind: str, load: FolderLoader) -> None:
    """Let :func:`load_denoiser` read folders whose ``priorkit.json`` says ``"kind": kind`` (distilled students)."""
    FOLDER_LOADERS[kind] = load


def folder_kind(folder: Path) -> str | None:
    """The ``"kind"`` of ``folder/priorkit.json`` (None without one, or when it is not valid JSON)."""
    path = folder / "priorkit.json"
    if not path.is_file():
        return None
    try:
        kind = json.loads(path.read_text()).get("kind")
    except (json.JSONDecodeError, AttributeError):
        return None
    return kind if isinstance(kind, str) else None


class ModelLoadError(RuntimeError):
    """A model could not be loaded; the message names the file or folder at fault."""


class PickleRefusedError(ModelLoadError):
    """The weights are in a pickle format, which priorkit never loads."""


def bundled_path(name: str) -> Path:
    """The folder of a bundled model, with a clear error when its weights are missing."""
    if name not in BUNDLED:
        raise ModelLoadError(f"unknown bundled model {name!r}; bundled models: {', '.join(sorted(BUNDLED))}")
    path = BUNDLED_DIR / name
    if not any(path.glob("*.safetensors")):
        raise ModelLoadError(f"the weights of bundled model {name!r} are missing from {path} "
                             f"(train them with `priorkit train-prior {name}`)")
    return path


def _refuse_pickles(folder: Path) -> None:
    weights = [p for p in folder.iterdir() if p.is_file() and p.suffix in PICKLE_SUFFIXES | {".safetensors"}]
    pickles = [p for p in weights if p.suffix in PICKLE_SUFFIXES]
    if pickles and not any(p.suffix == ".safetensors" for p in weights):
        raise PickleRefusedError(
            f"{pickles[0]} is a pickle checkpoint; priorkit loads weights only from .safetensors files. "
            "Convert it once in a trusted environment (e.g. `model.save_pretrained(dir, safe_serialization=True)`).")


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError as e:
        raise ModelLoadError(f"missing file {path}") from e
    except json.JSONDecodeError as e:
        raise ModelLoadError(f"{path} is not valid JSON: {e}") from e


def _load_model_class(folder: Path, expected: tuple[str, ...], **kwargs: Any) -> Any:
    import diffusers

    _refuse_pickles(folder)
    config = _read_json(folder / "config.json")
    name = config.get("_class_name")
    if name is None:
        raise ModelLoadError(f"{folder} is not a diffusers model folder (its config.json names no _class_name); "
                             f"expected a {' or '.join(expected)}")
    if name not in expected:
        raise ModelLoadError(f"{folder} holds a {name}, not a {' or '.join(expected)}")
    if not any(folder.glob("*.safetensors")):
        raise ModelLoadError(f"no .safetensors weights in {folder}")
    try:
        return getattr(diffusers, name).from_pretrained(str(folder), use_safetensors=True, **kwargs)
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"could not load {name} from {folder}: {e}") from e


UNETS = ("UNet2DModel", "UNet2DConditionModel")


def _load_folder(folder: Path, dtype: torch.dtype, device: str | torch.device) -> Denoiser:
    from priorkit.distill.core.diffusers_adapter import DiffusersDenoiser
    from priorkit.distill.core.text import CLIPEncoder, text_encoder_from_spec

    if (folder / "model_index.json").is_file():  # a diffusers pipeline
        unet = _load_model_class(folder / "unet", UNETS, torch_dtype=dtype)
        sched_file = folder / "scheduler" / "scheduler_config.json"
        scheduler_config = _read_json(sched_file)
        vae = None
        if (folder / "vae").is_dir():
            vae = _load_model_class(folder / "vae", ("AutoencoderKL",), torch_dtype=dtype).eval()
        text = None
        if (folder / "text_encoder").is_dir():
            import transformers

            _refuse_pickles(folder / "text_encoder")
            tokenizer = transformers.AutoTokenizer.from_pretrained(str(folder / "tokenizer"))
            model = transformers.CLIPTextModel.from_pretrained(str(folder / "text_encoder"), use_safetensors=True)
            text = CLIPEncoder(tokenizer, model.to(device))
        den = DiffusersDenoiser(unet.eval(), scheduler_config, vae=vae, text_encoder=text)
        return den.to(device)
    if (folder / "config.json").is_file():  # a bare model saved by priorkit or save_pretrained
        unet = _load_model_class(folder, UNETS, torch_dtype=dtype)
        scheduler_config = _read_json(folder / "scheduler_config.json")
        text = None
        spec_file = folder / "priorkit.json"
        if spec_file.is_file():
            spec = _read_json(spec_file)
            if spec.get("text_encoder"):
                text = text_encoder_from_spec(spec["text_encoder"])
        return DiffusersDenoiser(unet.eval(), scheduler_config, text_encoder=text).to(device)
    _refuse_pickles(folder)
    raise ModelLoadError(f"{folder} holds no model: expected model_index.json (a diffusers pipeline) or "
                         "config.json + diffusion_pytorch_model.safetensors + scheduler_config.json")


def load_denoiser(source: str | Path, *, dtype: torch.dtype = torch.float32,
                  device: str | torch.device = "cpu") -> Denoiser:
    """A `Denoiser` from a bundled name ("shapes", "photos", "shapes-cd"), a local folder, or a diffusers hub id.

    A folder of a registered kind (:data:`FOLDER_LOADERS`; a distilled student once ``priorkit.distill.students``
    is imported, as ``priorkit.distill.loading`` does) goes to its loader: a student gives the student itself (its
    own fast sampler is chosen by ``priorkit.distill.students.runner.student_sampler``; generic samplers treat it
    as an ordinary denoiser).

    Raises `ModelLoadError` (or `PickleRefusedError`) with the offending path in the message.
    """
    source_str = str(source)
    path = bundled_path(source_str) if source_str in BUNDLED else Path(source_str).expanduser()
    if path.is_file():
        if path.suffix in PICKLE_SUFFIXES:
            raise PickleRefusedError(f"{path} is a pickle checkpoint; priorkit loads only safetensors folders")
        raise ModelLoadError(f"{path} is a single file; give the diffusers folder that contains it")
    if path.is_dir():
        kind = folder_kind(path)
        if kind in FOLDER_LOADERS:  # e.g. a student trained by distill/ (priorkit.json says "kind": "student")
            return FOLDER_LOADERS[kind](path, dtype=dtype, device=device)
        return _load_folder(path, dtype, device)
    if path.is_absolute() or source_str.startswith((".", "~")) or source_str.count("/") != 1:
        raise ModelLoadError(f"no such model folder: {path} (bundled models: {', '.join(BUNDLED)})")
    return _load_hub(source_str, dtype, device)


def _load_hub(repo_id: str, dtype: torch.dtype, device: str | torch.device) -> Denoiser:
    """Download (or read from the local HF cache) a diffusers repo, then load it as a folder."""
    try:
        from huggingface_hub import snapshot_download

        folder = snapshot_download(repo_id, allow_patterns=["*.json", "*.safetensors", "*.txt", "tokenizer/*"])
    except Exception as e:  # offline, unknown repo, no cache...
        raise ModelLoadError(f"could not fetch {repo_id!r} from the model hub (offline or unknown id?): {e}") from e
    return _load_folder(Path(folder), dtype, device)


def load_prior(name: str | Path, **kwargs: Any) -> Denoiser:
    """Alias of :func:`load_denoiser` for priors: a bundled name, a folder, or a hub id."""
    return load_denoiser(name, **kwargs)
