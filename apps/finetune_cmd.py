"""``priorkit finetune METHOD --prior shapes --reward judge --out DIR``: reward fine-tuning of a bundled or diffusers
prior through a LoRA (adjoint matching, DRaFT, DDPO, reward-weighted denoising); the result is a prior folder that
loads like any other."""

from __future__ import annotations

import json
import math
import shlex
import sys
from pathlib import Path
from typing import Annotated

import typer

from priorkit.apps.cli_checks import check_writable, os_error_line
from priorkit.apps.cli_checks import fail as _fail

METHOD_NAMES = ("adjoint_matching", "draft", "ddpo", "reward_weighted")
REWARD_NAMES = ("judge", "albedo", "brightness")


def finetune_cmd(
    method: Annotated[str, typer.Argument(help=f"one of {', '.join(METHOD_NAMES)}")],
    out: Annotated[Path, typer.Option(help="output folder: the fine-tuned prior (loadable by name of the folder), "
                                           "its log and command; checkpoints in OUT/run")],
    prior: Annotated[str, typer.Option(help="bundled name, prior folder or hub id")] = "shapes",
    reward: Annotated[str, typer.Option(help=f"one of {', '.join(REWARD_NAMES)} (judge: the bundled judge's "
                                             "log-probability of each prompt's shape and colour; albedo: judge-v2's "
                                             "shape log-probability and colour distance to the named colour, for "
                                             "shapes-v2)")] = "judge",
    iterations: Annotated[int, typer.Option(min=1)] = 300,
    lam: Annotated[float, typer.Option(help="reward temperature: adjoint matching and reward_weighted target "
                                            "p exp(r / lam); DRaFT divides its loss by it")] = 0.5,
    batch: Annotated[int, typer.Option(min=1)] = 16,
    steps: Annotated[int, typer.Option(min=2, help="sampler steps during fine-tuning (reward_weighted: of its pool)")
                     ] = 20,
    lr: Annotated[float, typer.Option()] = 1e-4,
    rank: Annotated[int, typer.Option(min=1, help="LoRA rank")] = 8,
    k: Annotated[int, typer.Option(min=0, help="DRaFT-K: backpropagate through the last K steps (0: all)")] = 0,
    weighting: Annotated[str, typer.Option(help="adjoint matching: the regression's weight per time, score (1) or eps "
                                           "(sigma_t^2, the denoising loss's units; in one shapes-v2 benchmark run at "
                                           "lr 3e-3 it moved the prior where score did not, BENCHMARKS.md session 28)")
                         ] = "score",
    pool: Annotated[tuple[int, int] | None, typer.Option(min=1, help="reward_weighted: its pool of base samples, K "
                                                                     "for each of P prompts (P K; drawn once, kept in "
                                                                     "OUT/run; default 256 16)")] = None,
    seed: Annotated[int, typer.Option()] = 0,
    resume: Annotated[bool, typer.Option(help="continue from OUT/run/checkpoint")] = False,
    threads: Annotated[int, typer.Option(min=0, help="torch CPU threads (0: torch's default)")] = 0,
) -> None:
    """Fine-tune a prior towards a reward (one LoRA; the merged weights are saved as a prior folder)."""

    if method not in METHOD_NAMES:
        _fail(f"unknown fine-tuning method {method!r}; expected one of {', '.join(METHOD_NAMES)}")
    if reward not in REWARD_NAMES:
        _fail(f"unknown reward {reward!r}; expected one of {', '.join(REWARD_NAMES)}")
    for flag, value in (("--lam", lam), ("--lr", lr)):
        if not (math.isfinite(value) and value > 0):
            _fail(f"{flag} must be a finite number > 0; got {value}")
    if weighting not in ("score", "eps"):
        _fail(f"--weighting must be score or eps; got {weighting!r}")
    if weighting != "score" and method != "adjoint_matching":
        _fail(f"--weighting is adjoint_matching's; {method} has none")
    if pool is not None and method != "reward_weighted":
        _fail(f"--pool is reward_weighted's; {method} samples its own model as it trains")
    pool = tuple(pool) if pool is not None else (256, 16)
    has_run = (out / "run" / "checkpoint").is_dir()
    if resume and not has_run:
        typer.echo(f"no checkpoint in {out / 'run'}: starting from scratch", err=True)
    if has_run and not resume:
        _fail(f"{out} holds a fine-tuning run: add --resume to continue it, or choose another --out")
    if Path(prior).is_dir() and Path(prior).resolve() == out.resolve():
        _fail(f"--out {out} is the folder of the prior it starts from: the fine-tuned prior would replace it; "
              "choose another --out")
    ours = (out / "run").is_dir()  # a run of this command, finished or interrupted (its settings are checked below)
    if not ours and out.is_dir() and any(not p.name.startswith(".") for p in out.iterdir()):
        _fail(f"output folder {out} is not empty and holds no fine-tuning run: choose a new or empty --out (the "
              "fine-tuned prior's files would replace what is there)")
    try:
        check_writable(out, "--out")
    except ValueError as err:
        _fail(err)
    import torch

    from priorkit.distill.core.training import run_settings
    from priorkit.distill.finetune.lora_model import save_finetuned, with_lora
    from priorkit.distill.finetune.reward import REWARDS, albedo_prompts, judge_prompts
    from priorkit.distill.finetune.trainer import finetune, make_config
    from priorkit.distill.loading import BUNDLED, ModelLoadError, bundled_path, load_denoiser

    if threads:
        torch.set_num_threads(threads)
    try:
        base = load_denoiser(prior)
    except ModelLoadError as err:
        _fail(err)
    if not hasattr(base, "unet"):
        _fail(f"--prior {prior}: fine-tuning needs a diffusers UNet prior (a bundled prior or a diffusers folder)")
    cond_fn = None
    if reward == "judge":
        if not getattr(base, "conditional", False):
            _fail("the judge reward needs a text-conditional shapes prior (--prior shapes)")
        cond_fn = judge_prompts()
    elif reward == "albedo":
        spec = (bundled_path(prior) if prior in BUNDLED else Path(prior)) / "priorkit.json"
        world = json.loads(spec.read_text()).get("world") if spec.is_file() else None
        if not getattr(base, "conditional", False) or (spec.is_file() and world != "v2"):
            _fail(f"the albedo reward names xkcd colours: it needs a shapes-world v2 prior (--prior shapes-v2), "
                  f"not {prior}")
        cond_fn = albedo_prompts()

    try:  # recorded once the prior and reward are known to fit: a refused start leaves no settings behind
        run_settings(out / "run", {"method": method, "prior": prior, "reward": reward, "iterations": iterations,
                                   "lam": lam, "batch": batch, "steps": steps, "lr": lr, "rank": rank, "k": k,
                                   # weighting left out for score: runs made before the option match
                                   "seed": seed, **({"weighting": weighting} if weighting != "score" else {}),
                                   **({"pool": list(pool)} if method == "reward_weighted" else {})},
                     resume)
    except ValueError as err:
        _fail(err)
    torch.manual_seed(seed)
    model, params = with_lora(base, rank=rank)
    config = make_config(method, lam=lam, batch=batch, steps=steps, k=k or None, weighting=weighting,
                         prompts=pool[0], per_prompt=pool[1])
    meta = {"method": method, "reward": reward, "lam": lam, "iterations": iterations, "base": prior,
            "rank": rank, "config": {k_: v for k_, v in vars(config).items()}}
    try:
        model, log = finetune(method, model, base, REWARDS[reward](), config, iterations=iterations, lr=lr,
                              out=out / "run", resume=resume, cond_fn=cond_fn, seed=seed, params=params)
        base_folder = bundled_path(prior) if prior in BUNDLED else Path(prior)
        save_finetuned(model, base_folder if base_folder.is_dir() else None, out, meta)
        (out / "training_log.json").write_text(json.dumps(log))
        (out / "command.txt").write_text("priorkit finetune " + shlex.join(sys.argv[2:]) + "\n")
    except FloatingPointError as err:  # a NaN loss: the last checkpoint stays for --resume
        _fail(err, code=1)
    except ValueError as err:  # e.g. OUT/run holds the pool of a run with other settings
        _fail(err)
    except OSError as err:
        _fail(os_error_line(err), code=1)
    typer.echo(f"fine-tuned {prior} with {method} ({reward} reward) -> {out} (load it with --prior {out})")
