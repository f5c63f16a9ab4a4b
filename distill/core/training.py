"""One training loop for every model priorkit trains (bundled priors, students): EMA, checkpoints, resume.

Checkpoints are safetensors only (model, EMA and optimizer tensors) plus a JSON of scalars, written to a
temporary folder and renamed into place, so a run killed at any moment resumes from the last complete
checkpoint with nothing lost. Runs unchanged under ``accelerate launch`` (each process its own data
shard and seed; gradients averaged by accelerate).
"""

from __future__ import annotations

import copy
import json
import math
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from priorkit.distill.core.tensor_files import load_json, load_tensors, save_tensors


@dataclass
class TrainConfig:
    """Defaults for one training run."""

    steps: int = 1000
    lr: float = 2e-4
    weight_decay: float = 0.0
    warmup: int = 100
    ema_decay: float = 0.999
    grad_clip: float = 1.0
    checkpoint_every: int = 250
    log_every: int = 25
    seed: int = 0


class EMA:
    """Exponential moving average of a model's parameters (Polyak averaging), kept as a model copy."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay = decay
        self.model = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        d = min(self.decay, (1 + step) / (10 + step))  # warm start (as in many DDPM codebases)
        for e, p in zip(self.model.parameters(), model.parameters(), strict=True):
            e.lerp_(p.detach(), 1 - d)
        for e, b in zip(self.model.buffers(), model.buffers(), strict=True):
            e.copy_(b)


def _optimizer_tensors(opt: torch.optim.Optimizer) -> tuple[dict[str, Tensor], dict[str, Any]]:
    sd = opt.state_dict()
    tensors, scalars = {}, {"param_groups": sd["param_groups"], "state": {}}
    for idx, st in sd["state"].items():
        for k, v in st.items():
            if isinstance(v, Tensor):
                tensors[f"optim.{idx}.{k}"] = v.contiguous()
            else:
                scalars["state"].setdefault(str(idx), {})[k] = v
    return tensors, scalars


def _load_optimizer(opt: torch.optim.Optimizer, tensors: dict[str, Tensor], scalars: dict[str, Any]) -> None:
    state: dict[int, dict[str, Any]] = {}
    for key, v in tensors.items():
        if key.startswith("optim."):
            _, idx, name = key.split(".", 2)
            state.setdefault(int(idx), {})[name] = v
    for idx, st in scalars["state"].items():
        state.setdefault(int(idx), {}).update(st)
    saved = [g.get("lr_scale", 1.0) for g in scalars["param_groups"]]
    wanted = [g.get("lr_scale", 1.0) for g in opt.param_groups]
    if saved != wanted:  # torch would refuse a different count cryptically, or keep the saved scales silently
        raise ResumeMismatchError(f"the checkpoint's parameter groups (learning-rate scales {saved}) differ from "
                                  f"this run's ({wanted}): resume with the settings the run was started with")
    opt.load_state_dict({"state": state, "param_groups": scalars["param_groups"]})


def save_checkpoint(folder: Path, model: nn.Module, ema: EMA | None, opt: torch.optim.Optimizer, step: int,
                    log: list[dict[str, float]], extra: dict[str, Any] | None = None) -> None:
    """Write ``folder/checkpoint`` atomically (safetensors + json)."""
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".checkpoint.tmp{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    tensors = {f"model.{k}": v.detach().contiguous() for k, v in model.state_dict().items()}
    if ema is not None:
        tensors.update({f"ema.{k}": v.detach().contiguous() for k, v in ema.model.state_dict().items()})
    opt_tensors, opt_scalars = _optimizer_tensors(opt)
    tensors.update(opt_tensors)
    save_tensors(tensors, tmp / "state.safetensors")
    (tmp / "state.json").write_text(json.dumps({"step": step, "log": log, "optimizer": opt_scalars,
                                                "extra": extra or {}}))
    final = folder / "checkpoint"
    old = folder / ".checkpoint.old"
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        final.rename(old)
    tmp.rename(final)
    shutil.rmtree(old, ignore_errors=True)


def load_checkpoint(folder: Path, model: nn.Module, ema: EMA | None, opt: torch.optim.Optimizer | None
                    ) -> tuple[int, list[dict[str, float]], dict[str, Any]]:
    """Restore from ``folder/checkpoint``; returns (step, log, extra)."""
    ck = folder / "checkpoint"
    if not (ck / "state.safetensors").is_file():
        old = folder / ".checkpoint.old"  # killed between the two renames
        if (old / "state.safetensors").is_file():
            ck = old
        else:
            raise FileNotFoundError(f"no checkpoint to resume from in {folder}")
    tensors = load_tensors(ck / "state.safetensors")
    meta = load_json(ck / "state.json")
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    if ema is not None:
        ema.model.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("ema.")})
    if opt is not None:
        _load_optimizer(opt, tensors, meta["optimizer"])
    return int(meta["step"]), list(meta["log"]), dict(meta.get("extra", {}))


def lr_lambda(cfg: TrainConfig) -> Callable[[int], float]:
    """Linear warm-up then cosine decay to 10%."""
    def f(step: int) -> float:
        if step < cfg.warmup:
            return (step + 1) / cfg.warmup
        p = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, p)))
    return f


LossFn = Callable[[nn.Module, int, torch.Generator], Tensor]


class ResumeMismatchError(ValueError):
    """A ``--resume`` into a run made with other settings (bad input: nothing was done)."""


def is_main_process() -> bool:
    """False on the non-zero ranks of a distributed (accelerate / torch.distributed) run: they write no files. Before
    the process group is joined, the launcher's RANK says (rank 0 alone checks an output folder and records a run:
    the others would race it)."""
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank() == 0
    return int(os.environ.get("RANK", "0")) == 0


def settings_changes(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Each setting that differs between a recorded run and a new one, as "name old -> new" (sorted by name)."""
    return [f"{k} {old.get(k)!r} -> {new.get(k)!r}" for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]


def run_settings(folder: str | Path, settings: dict[str, Any], resume: bool) -> None:
    """Record a new run's settings in ``folder/settings.json``; on ``resume``, refuse settings that differ.

    A resumed run continues the recorded one (its schedule, data and checkpoints), so resuming with other settings
    would make a mix that claims to be one run: ValueError naming each differing setting (old -> new).
    """
    path = Path(folder) / "settings.json"
    settings = json.loads(json.dumps(settings, default=str))  # the JSON form, compared like for like
    if resume and path.is_file():
        changed = settings_changes(load_json(path), settings)
        if changed:
            raise ResumeMismatchError(f"--resume: the run in {folder} was made with other settings "
                                      f"({'; '.join(changed)}); resume with the same settings, or start a new run in "
                                      "another folder")
        return
    if not is_main_process():  # sharded: rank 0 records the run (the others would race its check)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(settings, indent=1, sort_keys=True))
    os.replace(tmp, path)


def train(model: nn.Module, loss_fn: LossFn, cfg: TrainConfig, out: str | Path, *, resume: bool = False,
          desc: str = "train", on_checkpoint: Callable[[nn.Module, int], None] | None = None,
          params: list[nn.Parameter] | list[dict[str, Any]] | None = None) -> tuple[nn.Module, list[dict[str, float]]]:
    """Minimise ``loss_fn(model, step, generator)`` for ``cfg.steps`` steps; returns (EMA model, log).

    ``out/checkpoint`` is written every ``cfg.checkpoint_every`` steps and at the end; ``resume`` restores
    model, EMA, optimizer, step and log from it (and the data generator is re-seeded from the step, so a
    resumed run sees fresh, reproducible batches). ``params``: the parameters to train (default: all that require a
    gradient), or torch parameter groups whose optional ``lr_scale`` multiplies the scheduled learning rate (a new
    input layer learning faster than the pretrained body it joins); ``resume`` refuses a checkpoint whose groups'
    scales differ (`ResumeMismatchError`). A non-finite loss stops the run with `FloatingPointError` naming the step
    and the checkpoint kept, before any update: the students' losses call their models unchecked (``check=False``)
    and rely on this for a NaN batch.
    """
    from accelerate import Accelerator

    out = Path(out)
    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    params = params if params is not None else [p for p in model.parameters() if p.requires_grad]
    groups = params if params and isinstance(params[0], dict) else [{"params": params}]
    groups = [{"lr_scale": 1.0, **grp} for grp in groups]
    params = [p for grp in groups for p in grp["params"]]
    opt = torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
    ema = EMA(model, cfg.ema_decay) if cfg.ema_decay > 0 else None
    start, log = 0, []
    if resume:
        start, log, _ = load_checkpoint(out, model, ema, opt)
    model, opt = accelerator.prepare(model, opt)
    raw = accelerator.unwrap_model(model)
    generator, schedule = torch.Generator(), lr_lambda(cfg)
    t0, running = time.time(), []
    bar = tqdm(range(start, cfg.steps), desc=desc, initial=start, total=cfg.steps,
               disable=not accelerator.is_local_main_process)
    for step in bar:
        for g in opt.param_groups:  # the schedule is a pure function of the step, so resuming needs no state
            g["lr"] = cfg.lr * g.get("lr_scale", 1.0) * schedule(step)
        generator.manual_seed(cfg.seed * 1_000_003 + step * accelerator.num_processes + accelerator.process_index)
        model.train()
        loss = loss_fn(model, step, generator)
        if not torch.isfinite(loss):
            kept = f"the last checkpoint is kept in {out / 'checkpoint'}" if (out / "checkpoint").is_dir() else \
                f"no checkpoint was written yet in {out}"
            raise FloatingPointError(f"loss became {loss.item()} at step {step}; {kept}")
        opt.zero_grad(set_to_none=True)
        accelerator.backward(loss)
        if cfg.grad_clip:
            accelerator.clip_grad_norm_(params, cfg.grad_clip)
        opt.step()
        if ema is not None:
            ema.update(raw, step)
        running.append(float(loss.detach()))
        if (step + 1) % cfg.log_every == 0 or step + 1 == cfg.steps:
            entry = {"step": step + 1, "loss": sum(running) / len(running), "seconds": time.time() - t0}
            log.append(entry)
            running = []
            bar.set_postfix(loss=f"{entry['loss']:.4f}")
        if accelerator.is_main_process and ((step + 1) % cfg.checkpoint_every == 0 or step + 1 == cfg.steps):
            save_checkpoint(out, raw, ema, opt, step + 1, log, {"config": asdict(cfg)})
            if on_checkpoint is not None:
                on_checkpoint(ema.model if ema is not None else raw, step + 1)
    return (ema.model if ema is not None else raw), log
