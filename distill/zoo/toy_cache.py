"""Trained toy teachers, cached (issue 24 item 12): ``priorkit distill METHOD --teacher toy:moons`` trains its MLP
teacher once, says so before it starts (steps and a time estimate measured on this machine), and later runs load it.

The cache: ``$PRIORKIT_CACHE/toy-teachers`` (default ``~/.cache/priorkit/toy-teachers``), one safetensors file per
(target, conditional, teacher settings), written atomically; never a pickle.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import torch

from priorkit.distill.core.atomic import write_bytes
from priorkit.distill.core.schedule import FlowMatching
from priorkit.distill.zoo.toy import MLPDenoiser, TeacherConfig, denoising_loss, target_data, train_teacher

__all__ = ["DEFAULT_CONFIG", "cache_dir", "cache_path", "cached_teacher", "estimate_seconds"]

#: the settings toy teachers are trained with (tests replace it with a tiny one)
DEFAULT_CONFIG = TeacherConfig()


def cache_dir() -> Path:
    """``$PRIORKIT_CACHE/toy-teachers``, else ``~/.cache/priorkit/toy-teachers``."""
    root = os.environ.get("PRIORKIT_CACHE")
    return (Path(root).expanduser() if root else Path.home() / ".cache" / "priorkit") / "toy-teachers"


def cache_path(name: str, conditional: bool, config: TeacherConfig) -> Path:
    """The cache file of a teacher: the target, conditional or not, and a digest of every training setting."""
    digest = hashlib.sha256(json.dumps(asdict(config), sort_keys=True).encode()).hexdigest()[:12]
    return cache_dir() / f"{name}{'-conditional' if conditional else ''}-{digest}.safetensors"


def _model(conditional: bool, config: TeacherConfig) -> MLPDenoiser:
    return MLPDenoiser(FlowMatching(), kind=config.kind, hidden=config.hidden, depth=config.depth,
                       num_classes=2 if conditional else 0, sigma_data=1.0,
                       input_frequencies=config.input_frequencies)


def estimate_seconds(name: str, conditional: bool, config: TeacherConfig, probe: int = 5) -> float:
    """Seconds to train the teacher here: ``probe`` training steps timed (after one warm-up), times the steps."""
    model = _model(conditional, config)
    opt = torch.optim.Adam(model.parameters(), lr=config.lr)
    data, g = target_data(name, conditional=conditional, drop=config.cfg_dropout), torch.Generator().manual_seed(0)
    rng = torch.get_rng_state()
    try:
        for i in range(probe + 1):
            if i == 1:
                t0 = time.perf_counter()
            x0, cond = data(config.batch, g)
            opt.zero_grad()
            denoising_loss(model, x0, cond, g).backward()
            opt.step()
    finally:
        torch.set_rng_state(rng)  # the estimate leaves the run's random numbers as they were
    return (time.perf_counter() - t0) / probe * config.steps


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def cached_teacher(name: str, conditional: bool = False, *, out: Path | None = None, resume: bool = False,
                   config: TeacherConfig | None = None, say: Callable[[str], None] = _say) -> MLPDenoiser:
    """The toy teacher ``toy:<name>``: loaded from the cache, else trained (announced first through ``say`` with its
    steps, estimated time and cache file; checkpoints in ``out`` so a killed run resumes) and cached."""
    config = config or DEFAULT_CONFIG
    path = cache_path(name, conditional, config)
    label = f"toy:{name}" + (" (conditional)" if conditional else "")
    if path.is_file():
        from priorkit.distill.core.tensor_files import load_tensors

        model = _model(conditional, config)
        model.load_state_dict(load_tensors(path))  # a damaged cache file: a ValueError naming it
        say(f"teacher {label}: the trained one in the cache ({path})")
        return model.requires_grad_(False).eval()
    minutes = estimate_seconds(name, conditional, config) / 60
    say(f"teacher {label} must be trained first: {config.steps} steps, about "
        f"{f'{minutes:.0f} minutes' if minutes >= 1.5 else 'a minute or less'} here; it is then cached in {path} "
        "for later runs")
    model = train_teacher(name, conditional=conditional, config=config, out=out, resume=resume)
    try:
        from safetensors.torch import save

        state = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
        path.parent.mkdir(parents=True, exist_ok=True)
        write_bytes(path, save(state, metadata={"target": name, "config": json.dumps(asdict(config))}))
    except OSError as e:  # an unwritable cache costs the next run a retraining, not this run
        say(f"note: cannot cache the teacher in {path}: {e.strerror or e}")
    return model
