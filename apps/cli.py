"""The ``priorkit`` command line (typer)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(help="priorkit: pretrained diffusion and flow models put to work.", no_args_is_help=True,
                  pretty_exceptions_show_locals=False)


@app.command("train-prior")
def train_prior_cmd(
    name: Annotated[str, typer.Argument(help="bundled prior to train: shapes or photos")],
    out: Annotated[Path, typer.Option(help="output folder (weights, log, loss curve)")] = Path("runs/prior"),
    steps: Annotated[int, typer.Option(min=1)] = 4000,
    batch_size: Annotated[int, typer.Option(min=1)] = 32,
    lr: Annotated[float, typer.Option()] = 3e-4,
    seed: Annotated[int, typer.Option()] = 0,
    resume: Annotated[bool, typer.Option(help="continue from OUT/run/checkpoint")] = False,
    threads: Annotated[int, typer.Option(help="torch CPU threads (0: torch's default)")] = 0,
    n_renders: Annotated[int, typer.Option(help="shapes: number of pre-rendered training images")] = 20000,
) -> None:
    """Train a bundled prior from scratch (or --resume a killed run)."""
    from distill.zoo.train_prior import train_prior

    if name not in ("shapes", "photos"):
        raise typer.BadParameter(f"unknown prior {name!r}; expected shapes or photos")
    train_prior(name, out, steps=steps, batch_size=batch_size, lr=lr, resume=resume, seed=seed,
                threads=threads or None, n_renders=n_renders)


@app.command()
def sample(
    model: Annotated[str, typer.Option(help="bundled name, local diffusers folder or hub id")] = "shapes",
    prompt: Annotated[list[str] | None, typer.Option(help="prompt(s); repeat for several")] = None,
    n: Annotated[int, typer.Option(min=1, max=256, help="samples per prompt")] = 8,
    steps: Annotated[int, typer.Option(min=1, max=1000)] = 25,
    solver: Annotated[str, typer.Option(help="euler, heun or dpm++2m")] = "dpm++2m",
    guidance: Annotated[float, typer.Option(help="classifier-free guidance scale")] = 3.0,
    seed: Annotated[int, typer.Option()] = 0,
    out: Annotated[Path, typer.Option(help="PNG grid to write")] = Path("outputs/samples.png"),
) -> None:
    """Sample an image grid from a model."""
    from apps.sampling import sample_grid

    path = sample_grid(model, prompt or [], n=n, steps=steps, solver=solver, guidance=guidance, seed=seed, out=out)
    typer.echo(f"wrote {path}")


if __name__ == "__main__":
    app()
