"""``priorkit distill METHOD --teacher T --out DIR``: distil a teacher into a fast few-step student (or fit a
bespoke solver); the student folder loads wherever a model is accepted."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from priorkit.apps.cli_checks import FAILED, check_writable, fail, os_error_line, remove_if_left_empty, slug


def _check_teacher(teacher: str) -> None:
    """Raise ValueError / ModelLoadError for a teacher that cannot exist (without loading it)."""
    from priorkit.distill.core.loading import BUNDLED, bundled_path
    from priorkit.distill.zoo.toy import ALL_TARGETS

    if teacher.startswith("toy:"):
        if teacher[4:] not in ALL_TARGETS:
            raise ValueError(f"unknown toy teacher {teacher!r}; expected one of "
                             f"{', '.join('toy:' + t for t in ALL_TARGETS)}")
        return
    if teacher in BUNDLED:
        bundled_path(teacher)  # raises when the weights are missing
        return
    path = Path(teacher).expanduser()
    if path.is_dir():  # load it now: a folder that holds no model is refused before anything is written
        from priorkit.distill.core.loading import load_denoiser

        load_denoiser(str(path))
        return
    if path.exists():
        raise ValueError(f"teacher {teacher!r} is a file; give the model's folder")
    if path.is_absolute() or teacher.startswith((".", "~")) or teacher.count("/") != 1 or not all(teacher.split("/")):
        raise ValueError(f"unknown teacher {teacher!r}: use toy:gmm|moons|checkerboard, a bundled prior "
                         f"({', '.join(sorted(BUNDLED))}), a diffusers folder or a hub id")


def distill_cmd(
    method: Annotated[str, typer.Argument(help="reflow, cd (consistency distillation), ct (consistency training), "
                                               "shortcut, progressive, guidance, dmd, dmd2 (distribution matching) "
                                               "or bespoke (a solver fitted to the teacher)")],
    teacher: Annotated[str, typer.Option(help="toy:gmm, toy:moons, toy:checkerboard, a held-out mixture "
                                              "(toy:ring5, ring12, ring16, grid9, ring8w, ring20, grid16), a bundled "
                                              "prior (shapes, photos), a diffusers folder or hub id")],
    out: Annotated[Path | None, typer.Option(help="run folder (default: outputs/distill/<method>-<teacher>)")] = None,
    steps: Annotated[int | None, typer.Option(help="training steps (per round / stage) (default: the "
                                                   "method's)")] = None,
    batch: Annotated[int | None, typer.Option(help="batch size (default: the method's)")] = None,
    lr: Annotated[float | None, typer.Option(help="learning rate (default: the method's)")] = None,
    guidance: Annotated[float, typer.Option(help="CFG scale of the teacher the student copies (not for "
                                                 "guidance, which learns w)")] = 1.0,
    n_data: Annotated[int, typer.Option(help="image teachers: renders / teacher samples to train on")] = 12000,
    resume: Annotated[bool, typer.Option(help="continue the interrupted run in OUT")] = False,
    seed: Annotated[int, typer.Option()] = 0,
    nfe: Annotated[int | None, typer.Option(help="bespoke: the solver's model evaluations; dmd, dmd2: the "
                                                 "generator's steps (default: the method's)")] = None,
    photo_set: Annotated[str, typer.Option(help="photos teacher: the training photographs to distil on: v1 (the 9 "
                                                "in the wheels) or v2 (plus Debian's, fetched into the cache)")] = "v1",
    init: Annotated[Path | None, typer.Option(help="dmd, dmd2: start the generator and fake score from an earlier "
                                                   "run folder (or a student folder or bundled student: the "
                                                   "generator only), e.g. to add --gan")] = None,
    gan: Annotated[float | None, typer.Option(help="dmd, dmd2: weight of DMD2's GAN head in the generator loss "
                                                   "(default: no GAN head; DMD2 used 3e-3)")] = None,
    fake: Annotated[str | None, typer.Option(help="dmd, dmd2: the fake score: copy (a full copy of the teacher, "
                                                  "default) or lora (a peft LoRA on a UNet teacher's copy)")] = None,
    fake_lr_scale: Annotated[float | None, typer.Option(help="dmd, dmd2: the fake score's (and GAN head's) "
                                                             "learning rate as a multiple of the generator's "
                                                             "(default 1; a LoRA usually wants more)")] = None,
    unconditional: Annotated[bool, typer.Option(help="shapes: copy its empty-prompt model, the one "
                                                     "restoration uses (renders without captions in training)")
                             ] = False,
) -> None:
    """Distil a teacher into a fast few-step student.

    Methods: reflow, cd / ct (consistency distillation / training), shortcut, progressive,
    guidance (a student conditioned on the guidance weight w), dmd / dmd2 (a one- or few-step generator by
    distribution matching), bespoke (a solver for the frozen teacher at --nfe evaluations).
    The student folder it prints loads wherever a model is accepted.
    """
    from priorkit.distill.core.loading import ModelLoadError
    from priorkit.distill.core.training import ResumeMismatchError
    from priorkit.distill.students.format import is_main_process
    from priorkit.distill.students.registry import METHODS
    from priorkit.distill.students.runner import check_distill_args, distill

    out = out if out is not None else Path("outputs/distill") / f"{method}-{slug(teacher, 40)}"
    try:
        if method not in METHODS:
            raise ValueError(f"unknown method {method!r}; expected one of {', '.join(METHODS)}")
        _check_teacher(teacher)
        check_distill_args(method, teacher, out, steps=steps, batch=batch, lr=lr, guidance=guidance, resume=resume,
                           n_data=n_data, nfe=nfe, photo_set=photo_set, init=init, gan=gan, fake=fake,
                           fake_lr_scale=fake_lr_scale, unconditional=unconditional)
        check_writable(out, "output folder")
    except (ValueError, ModelLoadError) as e:
        fail(e)
    try:
        with remove_if_left_empty(out):
            folder = distill(method, teacher, out, steps=steps, batch=batch, lr=lr, guidance=guidance,
                             resume=resume, seed=seed, n_data=n_data, nfe=nfe, photo_set=photo_set,
                             init=None if init is None else str(init), gan=gan, fake=fake,
                             fake_lr_scale=fake_lr_scale, unconditional=unconditional)
    except ResumeMismatchError as e:
        fail(e)
    except (ValueError, ModelLoadError) as e:
        fail(e, FAILED)
    except FloatingPointError as e:  # a NaN loss: the last checkpoint stays (train stops before the update)
        fail(e, FAILED)
    except OSError as e:  # a full or read-only disk: the last complete checkpoint stays, --resume continues from it
        fail(os_error_line(e), FAILED)
    if is_main_process():
        typer.echo(f"student: {folder}")
        typer.echo(f"sample it: priorkit sample --model {folder}")
