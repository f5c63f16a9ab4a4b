"""The ``priorkit`` command line (typer): ``3d``, ``restore``, ``distill``, ``sample``, ``train-prior``.

Every command checks its inputs before any work starts and reports bad input as one line on stderr
(``error: ...``) with exit code 2; a failure during the work is one line with exit code 1 (a write that fails
(disk full, read-only folder) included: its path and reason, temporary files removed); ``restore`` also exits 1
when a file failed or none was restored (unreadable files are listed and skipped). Exit codes: 0 done, 1 failed,
2 bad input. ``restore`` and
``distill`` also run under ``accelerate launch`` / ``torchrun`` (one process per device, gloo on CPU):
restore gives each process its share of the files, distill averages gradients.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any

import typer

from priorkit.apps.cli_checks import (
    BAD_INPUT,
    FAILED,
    check_png_out,
    check_run_folder,
    check_writable,
    fail,
    os_error_line,
    remove_if_left_empty,
    slug,
    version_line,
)
from priorkit.inverse.registry import DEFAULT_METHOD as DEFAULT_RESTORE_METHOD  # the registry alone: no torch
from priorkit.inverse.registry import help_line as restore_methods_help

_check_writable = check_writable  # the name apps/finetune_cmd.py imports
app = typer.Typer(help="priorkit: pretrained diffusion and flow models put to work. Exit codes: 0 done; 1 the work "
                  "failed (restore: a file failed or none was restored); 2 bad input, nothing done.",
                  no_args_is_help=True, pretty_exceptions_show_locals=False)


# ---- helpers -------------------------------------------------------------------------------------
def _version(value: bool) -> None:
    if value:
        typer.echo(version_line())
        raise typer.Exit()


@app.callback()
def _main(version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                                help="print the version and exit")] = False) -> None:
    """priorkit: pretrained diffusion and flow models put to work."""


_fail = fail  # the name the command modules use


def _distributed() -> tuple[int, int]:
    """(rank, world size), joining the process group of an ``accelerate launch`` / torchrun run if there is one.

    The launchers set RANK / WORLD_SIZE / MASTER_ADDR; accelerate's `PartialState` joins the group (NCCL on GPUs,
    gloo on CPU). On a machine without GPUs, ``accelerate launch --num_processes N`` starts ONE process unless
    given ``--multi_gpu`` (accelerate's name for "torch.distributed"; it runs on CPUs with gloo): say so.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        if "ACCELERATE_USE_CPU" in os.environ and "MASTER_ADDR" in os.environ:
            typer.echo("note: accelerate started a single process; on a machine without GPUs add --multi_gpu to "
                       "`accelerate launch` (or use torchrun) to run several CPU processes", err=True)
        return 0, 1
    import torch.distributed as dist

    if not dist.is_initialized():
        from accelerate import PartialState

        PartialState()
    return dist.get_rank(), dist.get_world_size()


def _finish_distributed() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


# ---- train-prior ---------------------------------------------------------------------------------
@app.command("train-prior")
def train_prior_cmd(
    name: Annotated[str, typer.Argument(help="bundled prior to train: shapes or photos")],
    out: Annotated[Path, typer.Option(help="output folder (weights, log, loss curve)")] = Path("runs/prior"),
    steps: Annotated[int, typer.Option(min=1)] = 4000,
    batch_size: Annotated[int, typer.Option(min=1)] = 32,
    lr: Annotated[float, typer.Option()] = 3e-4,
    seed: Annotated[int, typer.Option()] = 0,
    resume: Annotated[bool, typer.Option(help="continue from OUT/run/checkpoint")] = False,
    threads: Annotated[int, typer.Option(min=0, help="torch CPU threads (0: torch's default)")] = 0,
    n_renders: Annotated[int, typer.Option(help="shapes: number of pre-rendered training images")] = 20000,
    init: Annotated[Path | None, typer.Option(help="start from the weights of a saved prior folder (fine-tune), "
                                                   "e.g. distill/zoo/weights/photos")] = None,
    data: Annotated[Path | None, typer.Option(help="photos: train on the photographs of this folder instead of "
                                                   "the bundled ones")] = None,
    photo_set: Annotated[str, typer.Option(help="photos: v1 (the 9 photographs in the wheels) or v2 (plus Debian's "
                                                "wallpaper photographs, downloaded with apt-get into the cache)")]
    = "v1",
    world: Annotated[str, typer.Option(help="shapes: v1 (8 colours) or v2 (named colours and the camera as an input; "
                                            "--init may name a v1 folder)")] = "v1",
    cube_share: Annotated[float | None, typer.Option(help="shapes v2: share of cubes in the batches, in (0, 1) "
                                                          "(default: the renders' 1 in 5); the cube is the shape "
                                                          "whose image shows the camera's yaw")] = None,
) -> None:
    """Train a bundled prior from scratch (or --resume a killed run, or --init from saved weights)."""
    from priorkit.distill.zoo.train_prior import train_prior

    if name not in ("shapes", "photos"):
        _fail(f"unknown prior {name!r}; expected shapes or photos")
    if init is not None and not (init / "diffusion_pytorch_model.safetensors").is_file():
        _fail(f"--init {init}: no diffusion_pytorch_model.safetensors there")
    try:
        train_prior(name, out, steps=steps, batch_size=batch_size, lr=lr, resume=resume, seed=seed,
                    threads=threads or None, n_renders=n_renders, init=init, data=data,
                    photo_set=photo_set, world=world, cube_share=cube_share)
    except (ValueError, RuntimeError) as err:
        _fail(str(err))
    except FloatingPointError as err:  # a NaN loss: the last checkpoint stays for --resume
        _fail(str(err), FAILED)
    except OSError as err:  # a full or read-only disk: the last complete checkpoint stays for --resume
        _fail(os_error_line(err), FAILED)


# ---- sample --------------------------------------------------------------------------------------
@app.command()
def sample(
    model: Annotated[str, typer.Option(help="bundled name, diffusers folder, hub id, or a distilled student folder "
                                            "(sampled with its own sampler)")] = "shapes",
    prompt: Annotated[list[str] | None, typer.Option(help="prompt(s); repeat for several")] = None,
    n: Annotated[int | None, typer.Option(help="samples per prompt, at most 256 (default: 8; points of a 2D "
                                               "student: 2000)")] = None,
    steps: Annotated[int | None, typer.Option(help="sampler steps, 1-1000 (default: 25; a student: the steps it "
                                                   "was made for)")] = None,
    solver: Annotated[str, typer.Option(help="euler, heun or dpm++2m (not for students)")] = "dpm++2m",
    guidance: Annotated[float, typer.Option(help="classifier-free guidance scale (w of a guidance-distilled "
                                                 "student)")] = 3.0,
    label: Annotated[int | None, typer.Option(help="class of a class-conditional 2D student")] = None,
    seed: Annotated[int, typer.Option()] = 0,
    out: Annotated[Path, typer.Option(help="PNG to write (image grid, or scatter plot for 2D)")] = Path(
        "outputs/samples.png"),
) -> None:
    """Sample a model or a distilled student into a PNG grid.

    A student folder, or a `priorkit distill` output folder, is sampled with its own few-step sampler.
    A 2D student gives a scatter plot.
    """
    from priorkit.apps.sampling import sample_grid, sample_student_grid, student_folder
    from priorkit.distill.core.loading import ModelLoadError

    try:
        check_png_out(out, guidance)  # before any work
        if n is not None and not 1 <= n <= (100_000 if student_folder(model) else 256):
            raise ValueError(f"--n must be in [1, 256] images per prompt (2D students: up to 100000); got {n}")
        if steps is not None and not 1 <= steps <= 1000:
            raise ValueError(f"--steps must be in [1, 1000]; got {steps}")
        folder = student_folder(model)
        if folder is not None and solver != "dpm++2m":
            raise ValueError(f"--solver applies to priors; the student {model} samples with its own sampler")
        if folder is None and label is not None:
            raise ValueError("--label applies to class-conditional 2D students")
        if folder is not None:
            path = sample_student_grid(folder, prompt or [], n=n, steps=steps, guidance=guidance, label=label,
                                       seed=seed, out=out)
        else:
            path = sample_grid(model, prompt or [], n=n or 8, steps=steps or 25, solver=solver, guidance=guidance,
                               seed=seed, out=out)
    except (ValueError, ModelLoadError) as e:
        _fail(e)
    except FloatingPointError as e:  # NaN samples: nothing written
        _fail(e, FAILED)
    except OSError as e:
        _fail(os_error_line(e), FAILED)
    typer.echo(f"wrote {path}")


# ---- 3d ------------------------------------------------------------------------------------------
@app.command("3d")
def three_d(
    prompt: Annotated[str | None, typer.Argument(help='what to make, e.g. "a red cube"')] = None,
    prompts: Annotated[Path | None, typer.Option(help="a file of prompts, one a line: one asset each")] = None,
    method: Annotated[str, typer.Option(help="sds (DreamFusion) or vsd (ProlificDreamer)")] = "sds",
    particles: Annotated[int | None, typer.Option(help="fields optimised together (default: 1 for sds, 4 for "
                                                       "vsd)")] = None,
    steps: Annotated[int | None, typer.Option(help="optimisation steps (default: 360 for sds, 600 for vsd)")] = None,
    seed: Annotated[int, typer.Option()] = 0,
    prior: Annotated[str, typer.Option(help="text-to-image prior: bundled name (shapes-v2, shapes), diffusers "
                                            "folder or hub id")] = "shapes-v2",
    resolution: Annotated[int | None, typer.Option(help="render size in pixels, 8-512 (default: 32)")] = None,
    guidance: Annotated[float | None, typer.Option(help="classifier-free guidance scale (default: the "
                                                        "method's)")] = None,
    lr: Annotated[float | None, typer.Option(help="learning rate of the field (default: 0.4)")] = None,
    out: Annotated[Path | None, typer.Option(help="output folder (default: outputs/3d/<prompt>)")] = None,
    preview_every: Annotated[int, typer.Option(help="write a preview image every N steps (0: never)")] = 0,
    checkpoint_every: Annotated[int, typer.Option(help="checkpoint every N steps (0: only at the end)")] = 100,
    resume: Annotated[bool, typer.Option(help="continue the run in OUT from its checkpoint")] = False,
    overwrite: Annotated[bool, typer.Option(help="start over in an OUT that holds a run (its files are replaced)")]
    = False,
    mesh_resolution: Annotated[int | None, typer.Option(help="marching-cubes grid of the exported mesh "
                                                             "(default: 128)")] = None,
    faces: Annotated[int, typer.Option(help="triangles of the textured mesh (decimated)")] = 4000,
) -> None:
    """Text to 3D with SDS or VSD: a mesh and a turntable GIF.

    Writes OUT/asset/mesh.glb (textured), mesh.obj + .mtl + .png, mesh.ply and turntable.gif (OUT/particle<i>/ for
    several particles). --resume continues an interrupted run from OUT/checkpoint. --prompts FILE makes one asset per
    line into OUT/<n>-<prompt>/ with OUT/index.html; a second call skips the done prompts (accelerate launch splits).
    """
    from priorkit.apps.cli_3d import export_config, prompts_command, report_result
    from priorkit.distill.core.loading import ModelLoadError
    from priorkit.distill.core.training import ResumeMismatchError
    from priorkit.gen3d.generate import generate

    if preview_every < 0 or checkpoint_every < 0:
        _fail("--preview-every and --checkpoint-every must be >= 0")
    if prompts is not None or prompt is None:  # one asset per line of a file, a gallery page (apps/cli_3d.py)
        return prompts_command(dist=(_distributed, _finish_distributed), **locals())
    out = out if out is not None else Path("outputs/3d") / slug(prompt)
    cfg = export_config(mesh_resolution, faces)  # checked before the optimisation, not after it
    try:
        check_run_folder(out, resume, overwrite)
    except ValueError as e:
        _fail(e)
    if resume:
        from priorkit.gen3d.checkpoint import find_checkpoint

        if find_checkpoint(out) is None:
            typer.echo(f"note: --resume: no checkpoint in {out}, starting from scratch", err=True)
    try:
        with remove_if_left_empty(out):  # generate() checks everything (prompt, prior, ranges) before work
            result = generate(prompt, method=method, prior=prior, steps=steps, seed=seed, out=out,
                              particles=particles, resolution=resolution, guidance=guidance, lr=lr,
                              preview_every=preview_every, checkpoint_every=checkpoint_every, resume=resume,
                              config=cfg)
    except ResumeMismatchError as e:  # nothing was done: the run's checkpoint is as it was
        _fail(e)
    except (ValueError, ModelLoadError) as e:  # bad input leaves nothing behind; a failed run leaves its files
        _fail(e, FAILED if out.is_dir() and any(out.iterdir()) else BAD_INPUT)
    except OSError as e:
        _fail(os_error_line(e), FAILED)
    report_result(result, out)


# ---- restore -------------------------------------------------------------------------------------
def _check_restore(input_dir: Path, output_dir: Path, task: str, method: str, prior: str, mask_dir: Path | None,
                   reference_dir: Path | None, sigma_y: float, nfe: int | None, uncertainty: bool = False,
                   samples: int = 1, **more: Any) -> None:
    """Raise ValueError (or ModelLoadError) for inputs restore_folder cannot run with; writes nothing. ``more``: seed,
    simulate, resume, overwrite (a --resume into a run made with other settings is refused)."""
    from priorkit.inverse.restore import check_folder_run

    check_folder_run(input_dir, output_dir, task, method, prior, mask_dir=mask_dir, reference_dir=reference_dir,
                     sigma_y=sigma_y, nfe=nfe, uncertainty=uncertainty, samples=samples,
                     writable=lambda: check_writable(output_dir, "output folder"), **more)


@app.command()
def restore(
    input_dir: Annotated[Path, typer.Argument(help="folder of degraded images to restore (with --simulate: clean "
                                                   "images to degrade first)")],
    output_dir: Annotated[Path, typer.Argument(help="folder for the restored PNGs and report.json")],
    task: Annotated[str, typer.Option(help="inpaint_box, inpaint_random, inpaint_mask, deblur_gaussian, "
                                           "deblur_motion, sr2, sr4 or sr8")],
    method: Annotated[str, typer.Option(help=restore_methods_help())] = DEFAULT_RESTORE_METHOD,
    prior: Annotated[str, typer.Option(help="image prior: bundled name (photos), diffusers or student folder, "
                                            "hub id")] = "photos",
    mask_dir: Annotated[Path | None, typer.Option(help="inpaint_mask: masks named like the inputs, white = "
                                                       "keep")] = None,
    reference_dir: Annotated[Path | None, typer.Option(help="clean references named like the inputs, for "
                                                            "PSNR/SSIM")] = None,
    sigma_y: Annotated[float, typer.Option(help="measurement noise std in [0, 1] image range (assumed in the "
                                                "inputs; added when simulating)")] = 0.01,
    nfe: Annotated[int | None, typer.Option(help="model evaluations (steps) per image, each over every tile "
                                                 "(default: the method's)")] = None,
    simulate: Annotated[bool, typer.Option(help="the inputs are clean: degrade them first and score the "
                                                "restorations against them (PSNR/SSIM)")] = False,
    observed: Annotated[bool | None, typer.Option(help="deprecated (inputs are observations by default; "
                                                       "--no-observed = --simulate)", hidden=True)] = None,
    uncertainty: Annotated[bool, typer.Option(help="also write <name>_std.png: the per-pixel standard deviation "
                                                   "of the posterior samples (needs --samples 2 or more)")] = False,
    resume: Annotated[bool, typer.Option(help="skip files the report marks done (refused if it has other settings)")]
    = False,
    overwrite: Annotated[bool, typer.Option(help="start over: remove the report and the outputs it lists")] = False,
    seed: Annotated[int, typer.Option()] = 0,
    samples: Annotated[int, typer.Option(min=1, max=64, help="posterior samples per image, averaged (the posterior "
                                         "mean: higher PSNR, softer detail; costs SAMPLES x the evaluations)")] = 1,
    max_pixels: Annotated[int, typer.Option(min=1, help="skip (and list) images whose header declares more pixels "
                                            "(width x height), before decoding them")] = 50_000_000,
) -> None:
    """Restore a folder of images, with a JSON report.

    Inpainting, deblurring or super-resolution with a pretrained prior. The inputs are the
    degraded photos (holes for inpainting, blurry, or low resolution: SR outputs are larger);
    --simulate degrades clean inputs first and scores against them. Images larger than the
    prior are restored in overlapping tiles. OUTPUT_DIR/report.json lists per image the
    seconds, tiles, forward and backward passes, the measurement residual against the one
    the noise sigma_y explains, and PSNR/SSIM when a reference exists; a file that cannot be
    restored (not an image, unreadable, over --max-pixels, out of memory) is listed with its
    reason and skipped, and the batch goes on. Under `accelerate launch --multi_gpu --num_processes N` (gloo on CPU)
    or torchrun, each process restores its share of the files.
    """
    import json

    from priorkit.distill.core.loading import ModelLoadError
    from priorkit.inverse.restore import restore_folder

    if observed is not None:
        typer.echo("note: --observed is deprecated and will be removed in the next release: inputs are degraded "
                   "images by default" + ("" if observed else "; use --simulate instead of --no-observed"), err=True)
        simulate = simulate or not observed
    try:
        _check_restore(input_dir, output_dir, task, method, prior, mask_dir, reference_dir, sigma_y, nfe,
                       uncertainty, samples, seed=seed, simulate=simulate, resume=resume, overwrite=overwrite)
    except (ValueError, ModelLoadError) as e:
        _fail(e)
    rank, world = _distributed()
    try:
        report = restore_folder(input_dir, output_dir, task, method, prior=prior, mask_dir=mask_dir,
                                reference_dir=reference_dir, resume=resume, sigma_y=sigma_y, nfe=nfe, seed=seed,
                                simulate=simulate, uncertainty=uncertainty, progress=rank == 0, samples=samples,
                                max_pixels=max_pixels, overwrite=overwrite)
    except (ValueError, ModelLoadError) as e:
        _fail(e, FAILED)
    except OSError as e:
        _fail(os_error_line(e), FAILED)
    if world > 1:
        _finish_distributed()  # rank 0 merged the per-process reports into report.json
        if rank != 0:
            return
        report = json.loads((output_dir / "report.json").read_text())
    files = report["files"]
    done = [k for k, v in files.items() if v["status"] == "done"]
    typer.echo(f"restored {len(done)} of {len(files)} files into {output_dir} (report: "
               f"{output_dir / 'report.json'})")
    summary = report.get("summary", {})
    if summary.get("mean_psnr") is not None:
        ssim = summary.get("mean_ssim")
        typer.echo(f"mean PSNR {summary['mean_psnr']:.2f} dB" + (f", SSIM {ssim:.3f}" if ssim is not None else ""))
    for name, entry in sorted(files.items()):
        if entry["status"] != "done":
            typer.echo(f"skipped {name}: {entry['status']} ({entry.get('reason', '')})", err=True)
        elif entry.get("quality_error"):  # restored, but not scored
            typer.echo(f"note: {name}: not scored: {entry['quality_error']}", err=True)
    if not done or any(v["status"] == "failed" for v in files.values()):  # batch scripts notice
        raise typer.Exit(FAILED)


# ---- distill (its own module: apps/distill_cmd.py) -------------------------------------------------
from priorkit.apps.distill_cmd import distill_cmd  # noqa: E402  (light: no torch at import)

app.command("distill")(distill_cmd)


# ---- finetune (its own module: apps/finetune_cmd.py) ------------------------------------------------
from priorkit.apps.finetune_cmd import finetune_cmd  # noqa: E402  (light: no torch at import)

app.command("finetune")(finetune_cmd)


@app.command("app")
def app_cmd(
    host: Annotated[str, typer.Option(help="interface to listen on (127.0.0.1: this machine only)")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535)] = 7860,
    share: Annotated[bool, typer.Option(help="a public gradio.live link")] = False,
    threads: Annotated[int, typer.Option(min=0, help="torch CPU threads (0: torch's default)")] = 0,
) -> None:
    """The web app: text to 3D, restoration and fast sampling, one tab each."""
    from priorkit.apps.web import launch

    launch(host=host, port=port, share=share, threads=threads or None)


def main(argv: list[str] | None = None) -> None:
    """The ``priorkit`` entry point: the app, with click's usage errors (an unknown command or option, a missing or
    malformed value) as one ``error:`` line and exit code 2, like every other bad input."""
    try:  # typer 0.29 (pinned) vendors click: its usage errors are typer's own classes
        from typer._click.exceptions import NoArgsIsHelpError, UsageError
    except ImportError:  # a typer that uses click itself
        from click.exceptions import NoArgsIsHelpError, UsageError

    try:
        code = app(args=argv, prog_name="priorkit", standalone_mode=False)
    except NoArgsIsHelpError as e:  # `priorkit` alone: its help
        e.show()
        raise SystemExit(BAD_INPUT) from None
    except UsageError as e:
        where = e.ctx.command_path if e.ctx is not None else "priorkit"
        typer.echo(f"error: {' '.join(e.format_message().split())} (see {where} --help)", err=True)
        raise SystemExit(BAD_INPUT) from None
    except typer.Abort:  # end of input at a prompt (Ctrl-C exits with 130 through typer itself)
        typer.echo("aborted", err=True)
        raise SystemExit(FAILED) from None
    raise SystemExit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
