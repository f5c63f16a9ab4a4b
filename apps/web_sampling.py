"""The "Fast sampling" tab: a teacher in a few solver steps, or a distilled student with its own sampler."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import gradio as gr
import numpy as np
import torch

from priorkit.apps.web_common import (
    PROGRESS,
    HandlerBase,
    Interruptible,
    UserInputError,
    _choice,
    _number,
    readable_errors,
    stream_job,
)
from priorkit.apps.web_images import scatter_plot
from priorkit.apps.web_models import TOYS, load_model, resolve_model, toy_teacher

TEACHERS = (*TOYS, "shapes", "shapes-v2")  # and prior folders made by `priorkit finetune` (find_finetuned)
SOLVERS = ("dpm++2m", "euler", "heun")


class SamplingHandlers(HandlerBase):
    """The tab's event handlers."""

    @readable_errors
    def sample(self, teacher: str, student: str, prompt: str, steps: float, solver: str, n: float, guidance: float,
               seed: float, progress: gr.Progress = PROGRESS) -> Iterator[Any]:
        """Stream (grid, scatter, status): samples of a teacher in few solver steps, or of a student folder."""
        teacher = (teacher or "").strip()
        source = teacher if teacher in TEACHERS else resolve_model(teacher, allow_hub=False)  # a fine-tuned prior
        _choice(solver, "solver", SOLVERS)
        steps = _number(steps, "steps", 1, self.cfg.max_sample_steps, integer=True)
        toy = teacher in TOYS
        n = _number(n, "samples", 1, self.cfg.max_points if toy else self.cfg.max_images, integer=True)
        guidance = _number(guidance, "guidance", 1.0, 20.0)
        seed = _number(seed, "seed", 0, 2**31 - 1, integer=True)
        folder = None
        if student and student.strip() and student.strip() != "none":
            from priorkit.distill.core.loading import BUNDLED, bundled_path
            from priorkit.distill.students.format import is_student_folder, read_meta

            folder = resolve_model(student, allow_hub=False)
            if folder in BUNDLED:
                folder = str(bundled_path(folder))
            if not is_student_folder(folder):
                raise UserInputError(f"{student!r} is not a student folder (no priorkit.json of kind 'student')")
            made_from = str(read_meta(folder).get("teacher", ""))
            if made_from.removeprefix("toy:") != teacher and Path(made_from).name != teacher:
                raise UserInputError(f"this student was distilled from {made_from!r}; choose that teacher")
        if not toy and not (prompt or "").strip():
            raise UserInputError("give a prompt for the shapes prior, e.g. 'a red cube'")

        def work(emit: Callable[..., None], stop: threading.Event) -> Any:
            from priorkit.distill.core.samplers import initial_noise, nfe, sample

            calls = [0]

            def tick(batch: int) -> None:
                calls[0] += 1
                emit(calls=calls[0])

            if folder is not None:
                from priorkit.distill.students.format import read_meta
                from priorkit.distill.students.runner import student_samples

                emit(status="loading the student")
                model = load_model(folder)
                t0 = time.perf_counter()
                with torch.no_grad():
                    x = student_samples(model, read_meta(folder), n, steps=steps,
                                        prompt=None if toy else prompt.strip(), seed=seed)
                return x, time.perf_counter() - t0, f"student {Path(folder).name} ({steps} steps of its sampler)"
            if toy:
                den = toy_teacher(teacher, self.cfg.kde_points, self.cfg.kde_bandwidth)
                cond, scale = None, 1.0
            else:
                emit(status=f"loading the prior {Path(source).name}")
                den = load_model(source)
                if not getattr(den, "conditional", False):
                    raise UserInputError(f"{teacher!r} is not a text-conditional prior; the sampling tab draws "
                                         "2D toys or text-to-image priors")
                cond, scale = [prompt.strip()] * n, guidance
            g = torch.Generator().manual_seed(seed)
            t0 = time.perf_counter()
            noise = initial_noise(den, (n, *den.sample_shape), generator=g,
                                  dtype=torch.float64 if toy else torch.float32)
            with torch.no_grad():
                x = sample(Interruptible(den, tick), noise, steps=steps, solver=solver, cond=cond, guidance=scale)
            return x, time.perf_counter() - t0, f"teacher, {solver} x {steps} steps = {nfe(solver, steps)} NFE"

        for kind, payload in stream_job(work):
            if kind == "tick":
                yield gr.skip()
            elif kind == "progress" and "calls" in payload:
                progress((payload["calls"], None), desc="model evaluations", unit="calls")
                yield gr.skip(), gr.skip(), f"{payload['calls']} model evaluations"
            elif kind == "progress":
                yield gr.skip(), gr.skip(), payload.get("status")
            else:
                x, seconds, what = payload
        msg = f"{n} samples from the {what}: {1000 * seconds / n:.2f} ms per sample ({seconds:.2f} s in all)."
        if toy:
            from priorkit.distill.zoo.toy import sample_target, sliced_w2

            truth = sample_target(teacher, max(n, 2000), torch.Generator().manual_seed(seed + 1))
            msg += f" Sliced W2 to exact samples: {sliced_w2(x.double(), truth.double()):.3f}."
            yield None, scatter_plot(x, truth, f"{teacher}: {what}"), msg
        else:
            from priorkit.apps.sampling import grid_image

            grid = grid_image(x.float(), ncol=min(8, n), scale=3)
            yield np.asarray(grid.convert("RGB")), None, msg
