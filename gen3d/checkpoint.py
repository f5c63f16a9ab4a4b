"""Checkpoints of the text-to-3D loop: ``out/checkpoint/{state.safetensors, state.json}``.

The safetensors file holds every particle's representation (``field{i}.*``), learned backgrounds
(``background{i}.*``), the fields' optimiser state (``opt.fields.*``) and whatever the guidance keeps
(:meth:`~priorkit.gen3d.guidance.Guidance.state`, e.g. VSD's ``lora.*`` and ``opt.lora.*``); the json file holds
the step, the history, the optimisers' scalars and the run's identity (prompt, method, seed, ...), which a resume
must match. Writes are atomic: a temporary folder, then renames (a kill between them leaves ``.checkpoint.old``).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from priorkit.distill.core.training import ResumeMismatchError, settings_changes
from priorkit.gen3d.guidance import Guidance


def optimizer_tensors(opt: torch.optim.Optimizer, prefix: str) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """An optimiser's state as tensors named ``{prefix}.{index}.{name}`` and JSON-able scalars."""
    sd = opt.state_dict()
    tensors, scalars = {}, {"param_groups": sd["param_groups"], "state": {}}
    for idx, st in sd["state"].items():
        for k, v in st.items():
            if isinstance(v, Tensor):
                tensors[f"{prefix}.{idx}.{k}"] = v.detach().contiguous()
            else:
                scalars["state"].setdefault(str(idx), {})[k] = v
    return tensors, scalars


def load_optimizer(opt: torch.optim.Optimizer, tensors: dict[str, Tensor], scalars: dict[str, Any],
                   prefix: str) -> None:
    """Restore an optimiser from :func:`optimizer_tensors`' output (``tensors`` may hold other entries)."""
    state: dict[int, dict[str, Any]] = {}
    for key, v in tensors.items():
        if key.startswith(prefix + "."):
            idx, name = key[len(prefix) + 1:].split(".", 1)
            state.setdefault(int(idx), {})[name] = v
    for idx, st in scalars["state"].items():
        state.setdefault(int(idx), {}).update(st)
    opt.load_state_dict({"state": state, "param_groups": scalars["param_groups"]})


def save_checkpoint(folder: Path, step: int, fields: list[nn.Module], backgrounds: list[Any],
                    opt: torch.optim.Optimizer, guidance: Guidance | None, history: list[dict[str, float]],
                    meta: dict[str, Any]) -> Path:
    """Write ``folder/checkpoint/{state.safetensors, state.json}`` atomically (tmp folder, then rename)."""
    from priorkit.distill.core.tensor_files import save_tensors

    tensors: dict[str, Tensor] = {}
    for i, (f, bg) in enumerate(zip(fields, backgrounds, strict=True)):
        tensors.update({f"field{i}.{k}": v.detach().contiguous() for k, v in f.state_dict().items()})
        if isinstance(bg, nn.Module):
            tensors.update({f"background{i}.{k}": v.detach().contiguous() for k, v in bg.state_dict().items()})
    opt_t, opt_s = optimizer_tensors(opt, "opt.fields")
    tensors.update(opt_t)
    info: dict[str, Any] = {"step": step, "history": history, "optimizer": opt_s, "meta": meta}
    if guidance is not None:
        g_t, g_info = guidance.state()
        tensors.update(g_t)
        info.update(g_info)
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".checkpoint.tmp{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:  # a failed write (disk full, read-only folder) leaves no temporary folder and the previous checkpoint
        tmp.mkdir()
        save_tensors({k: v.cpu() for k, v in tensors.items()}, tmp / "state.safetensors")
        (tmp / "state.json").write_text(json.dumps(info))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    final, old = folder / "checkpoint", folder / ".checkpoint.old"
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        final.rename(old)
    tmp.rename(final)
    shutil.rmtree(old, ignore_errors=True)
    return final


def find_checkpoint(folder: Path) -> Path | None:
    """The checkpoint folder in ``folder`` (or the one a kill between the two renames left), None without one."""
    for ck in (folder / "checkpoint", folder / ".checkpoint.old"):  # .old: killed between the two renames
        if (ck / "state.safetensors").is_file() and (ck / "state.json").is_file():
            return ck
    return None


def load_checkpoint(ck: Path, fields: list[nn.Module], backgrounds: list[Any], opt: torch.optim.Optimizer,
                    guidance: Guidance | None, meta: dict[str, Any]) -> tuple[int, list[dict[str, float]]]:
    """Restore a checkpoint written by :func:`save_checkpoint`; returns (step, history).

    Raises:
        ResumeMismatchError: (a ValueError) if the checkpoint belongs to another run (its identity differs from
            ``meta``), naming each differing setting.
    """
    from priorkit.distill.core.tensor_files import load_json, load_tensors

    info = load_json(ck / "state.json")
    # settings recorded since session 31 are compared only when the checkpoint has them (older runs still resume)
    newer = ("resolution", "lr", "prior", "guidance_scale")
    changed = settings_changes(info["meta"], {k: v for k, v in meta.items() if k not in newer or k in info["meta"]})
    if changed:
        raise ResumeMismatchError(f"--resume: the run in {ck.parent} was made with other settings "
                                  f"({'; '.join(changed)}); resume with the same settings, or start over with "
                                  "--overwrite")
    tensors = load_tensors(ck / "state.safetensors")
    for i, (f, bg) in enumerate(zip(fields, backgrounds, strict=True)):
        p = f"field{i}."
        f.load_state_dict({k[len(p):]: v for k, v in tensors.items() if k.startswith(p)})
        if isinstance(bg, nn.Module):
            p = f"background{i}."
            bg.load_state_dict({k[len(p):]: v for k, v in tensors.items() if k.startswith(p)})
    load_optimizer(opt, tensors, info["optimizer"], "opt.fields")
    if guidance is not None:
        guidance.load_state(tensors, info)
    return int(info["step"]), list(info["history"])


__all__ = ["find_checkpoint", "load_checkpoint", "load_optimizer", "optimizer_tensors", "save_checkpoint"]
