"""``priorkit 3d --prompts FILE``: one asset per prompt (one a line) with a gallery page, and the report of a run.

Every prompt gets its folder ``OUT/<index>-<slug>`` (the single-prompt layout: ``asset/mesh.glb`` ...); a prompt is
done when its folder holds ``done.json``, so a second call after a kill skips the done prompts and resumes the
interrupted one from its checkpoint (``--overwrite`` starts every prompt over). Under ``accelerate launch --multi_gpu
--num_processes N`` (gloo on CPU) or torchrun, process r makes the prompts with index i = r mod N; rank 0 writes
``OUT/index.html`` (turntables and download links) when all are finished.
"""

from __future__ import annotations

import html
import json
import re
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

import typer

from priorkit.apps.cli_checks import check_writable

DONE = "done.json"
BAD_INPUT, FAILED = 2, 1  # exit codes, as in priorkit.apps.cli
DOWNLOADS = ("mesh.glb", "mesh.obj", "mesh.mtl", "mesh.png", "mesh.ply", "turntable.gif")


def read_prompts(path: Path) -> list[str]:
    """The non-empty lines of ``path`` that do not start with '#', stripped; ValueError if there are none."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"cannot read the prompt file {path}: {e}") from e
    prompts = [s.strip() for s in lines if s.strip() and not s.strip().startswith("#")]
    if not prompts:
        raise ValueError(f"the prompt file {path} holds no prompt (one a line; '#' starts a comment)")
    return prompts


def _fail(message: object, code: int = BAD_INPUT) -> NoReturn:
    """Print ``error: <message>`` as one line on stderr and exit with ``code`` (the CLI's convention)."""
    typer.echo(f"error: {' '.join(str(message).split())}", err=True)
    raise typer.Exit(code)


def prompt_folder(out: Path, index: int, prompt: str) -> Path:
    """``out/<index>-<slug of the prompt>``."""
    slug = re.sub(r"[^a-z0-9]+", "-", prompt.lower()).strip("-")[:40].strip("-") or "prompt"
    return out / f"{index:03d}-{slug}"


def report_result(result: Any, out: Path) -> None:
    """Print what a run wrote: mesh and turntable per particle, previews, checkpoint and seconds."""
    for i, mesh in enumerate(result.meshes):
        name = f"particle {i}" if len(result.meshes) > 1 else "asset"
        if mesh is None:
            typer.echo(f"{name}: the field stayed empty, no mesh (try more steps or another seed)")
    for kind, label in (("glb", "mesh"), ("gif", "turntable")):
        for p in result.paths.get(kind, []):
            extra = " (also .obj + .mtl + .png, .ply)" if kind == "glb" else ""
            typer.echo(f"{label}: {p}{extra}")
    if result.paths.get("previews"):
        typer.echo(f"previews: {len(result.paths['previews'])} in {out / 'previews'}")
    typer.echo(f"checkpoint: {out / 'checkpoint'} ({result.seconds:.0f} s)")


def write_gallery(out: Path, prompts: list[str]) -> Path:
    """``out/index.html``: per prompt its turntables and download links (or that it is not made yet)."""
    from priorkit.distill.core.atomic import write_bytes

    cards = []
    for i, prompt in enumerate(prompts):
        folder = prompt_folder(out, i, prompt)
        parts = sorted(p for p in folder.glob("*") if (p / "turntable.gif").is_file())
        body = []
        for part in parts:
            rel = part.relative_to(out).as_posix()
            links = " ".join(f'<a href="{rel}/{n}" download>{n.split(".")[-1]}</a>' for n in DOWNLOADS
                             if (part / n).is_file())
            body.append(f'<figure><img src="{rel}/turntable.gif" width="256" alt="{html.escape(prompt)}">'
                        f"<figcaption>{html.escape(part.name)}: {links}</figcaption></figure>")
        status = "" if (folder / DONE).is_file() else "<p>not made yet</p>"
        cards.append(f"<section><h2>{html.escape(prompt)}</h2>{status}{''.join(body)}</section>")
    page = ("<!doctype html><meta charset=utf-8><title>priorkit 3d gallery</title><style>body{font-family:sans-serif}"
            "section{display:inline-block;vertical-align:top;margin:8px}figure{margin:0}</style>"
            f"<h1>{len(prompts)} prompts</h1>" + "\n".join(cards) + "\n")
    path = out / "index.html"
    write_bytes(path, page.encode())
    return path


def prompts_command(prompt: str | None, prompts: Path | None, out: Path | None, method: str, particles: int | None,
                    steps: int | None, seed: int, prior: str, resolution: int | None, guidance: float | None,
                    lr: float | None, preview_every: int, checkpoint_every: int, overwrite: bool,
                    mesh_resolution: int | None, faces: int, dist: tuple[Callable[[], tuple[int, int]],
                                                                         Callable[[], None]], **_: Any) -> None:
    """The ``priorkit 3d --prompts FILE`` run (see the module docstring); exit 1 if a prompt failed.

    ``dist``: the CLI's (join the process group -> (rank, world size), leave it after a barrier).
    """
    from priorkit.distill.core.loading import ModelLoadError

    if prompt is not None and prompts is not None:
        _fail("give a PROMPT or --prompts FILE, not both")
    if prompts is None:
        _fail("missing PROMPT (or --prompts FILE with one prompt a line)")
    try:
        items = read_prompts(prompts)
    except ValueError as e:
        _fail(e)
    out = out if out is not None else Path("outputs/3d") / prompts.stem
    try:  # the gallery and every prompt's folder go here: a file or a read-only folder is refused now
        if out.exists() and not out.is_dir():
            raise ValueError(f"output folder {out} is a file")
        check_writable(out, "output folder")
    except ValueError as e:
        _fail(e)
    cfg = export_config(mesh_resolution, faces)
    rank, world = dist[0]()
    try:
        from priorkit.distill.core.loading import load_denoiser
        from priorkit.gen3d.generate import validate

        for p in items:
            validate(p, method, steps or 1, resolution or 32, particles or 1, guidance, lr or 1.0)
        den = load_denoiser(prior)
    except (ValueError, ModelLoadError) as e:
        _fail(e)
    gcfg = cfg.method_config(method)  # the values a left-out option takes: a done prompt is compared by them
    settings = {"method": method, "seed": seed, "prior": prior, "steps": steps or gcfg.steps,
                "particles": particles or gcfg.particles, "resolution": resolution or cfg.resolution,
                "guidance": gcfg.guidance_scale if guidance is None else guidance, "lr": lr or cfg.lr}
    failed = [_make(i, p, out, den, settings, preview_every, checkpoint_every, overwrite, cfg)
              for i, p in enumerate(items) if i % world == rank]
    if world > 1:
        dist[1]()
    if rank == 0:
        done = sum((prompt_folder(out, i, p) / DONE).is_file() for i, p in enumerate(items))
        typer.echo(f"made {done} of {len(items)} prompts; gallery: {write_gallery(out, items)}")
    if any(failed):
        raise typer.Exit(FAILED)


def export_config(mesh_resolution: int | None, faces: int) -> Any:
    from priorkit.gen3d.generate import GenerateConfig

    cfg = GenerateConfig(faces=faces)
    if mesh_resolution is not None:
        if not 8 <= mesh_resolution <= 512:
            _fail(f"mesh resolution must be in [8, 512]; got {mesh_resolution}")
        cfg.export_resolution = mesh_resolution
    if faces < 4:
        _fail(f"--faces must be >= 4; got {faces}")
    return cfg


def _make(index: int, prompt: str, out: Path, den: Any, settings: dict[str, Any], preview_every: int,
          checkpoint_every: int, overwrite: bool, cfg: Any) -> bool:
    """Make one prompt's asset unless it is done with the same ``settings``; True if it failed (reported on stderr,
    the others go on). A prompt done with other settings is not skipped silently: it fails, naming them."""
    from priorkit.distill.core.atomic import write_bytes
    from priorkit.distill.core.training import settings_changes
    from priorkit.gen3d.checkpoint import find_checkpoint
    from priorkit.gen3d.generate import generate

    folder = prompt_folder(out, index, prompt)
    if overwrite and folder.exists():
        shutil.rmtree(folder)
    if (folder / DONE).is_file():
        try:
            done = json.loads((folder / DONE).read_text())
        except (OSError, ValueError):
            done = {}
        changed = settings_changes({k: done.get(k) for k in settings if k in done},
                                   {k: v for k, v in settings.items() if k in done})
        if changed:
            typer.echo(f"error: [{index}] {prompt!r}: done in {folder} with other settings ({'; '.join(changed)}): "
                       "pass --overwrite to make every prompt of the file again, or choose another --out", err=True)
            return True
        typer.echo(f"[{index}] {prompt!r}: done, skipped")
        return False
    method, seed = settings["method"], settings["seed"]
    resume = folder.is_dir() and find_checkpoint(folder) is not None
    typer.echo(f"[{index}] {prompt!r}: {'resuming' if resume else 'making'} -> {folder}")
    t0 = time.time()
    try:
        result = generate(prompt, method, den, steps=settings["steps"], seed=seed, out=folder,
                          particles=settings["particles"], resolution=settings["resolution"],
                          guidance=settings["guidance"], lr=settings["lr"], preview_every=preview_every,
                          checkpoint_every=checkpoint_every, resume=resume, progress=False, config=cfg,
                          prior_name=str(settings["prior"]))
    except (ValueError, OSError) as e:
        typer.echo(f"error: [{index}] {prompt!r}: {' '.join(str(e).split())}", err=True)
        return True
    report_result(result, folder)
    files = {k: [str(p.relative_to(folder)) for p in v] for k, v in result.paths.items() if k != "previews"}
    write_bytes(folder / DONE, json.dumps({"prompt": prompt, **settings, "seconds": time.time() - t0,
                                           "files": files}, indent=1).encode())
    return False


__all__ = ["DONE", "export_config", "prompt_folder", "prompts_command", "read_prompts", "report_result",
           "write_gallery"]
