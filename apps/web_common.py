"""The web app's plumbing: its limits (`AppConfig`), errors shown to the user, jobs run in a worker thread that
Cancel stops (`stream_job`, `Interruptible`), and the checks of form values."""

from __future__ import annotations

import functools
import inspect
import logging
import math
import queue
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr
from torch import Tensor

from priorkit.distill.core.denoiser import Condition, Denoiser, WrappedDenoiser
from priorkit.distill.core.prediction import Prediction

log = logging.getLogger("priorkit.apps.web")


@dataclass
class AppConfig:
    """Limits and defaults of the web app (small enough that a CPU user sees a result in a few minutes).

    max_side: largest accepted image side (pixels); max_file_size: Gradio's upload cap; queue_size: waiting
    events; time_limit: seconds before a job is stopped; keep_seconds: age after which job folders are deleted;
    work_dir: where jobs write (None: <tmp>/priorkit-app).
    steps_3d / resolution_3d / max_steps_3d / preview_every_3d: text-to-3D defaults (render side in pixels; a
    preview every N steps, None: about 20 per run; previews are enlarged to ``preview_min_height`` pixels);
    export_resolution / turntable_frames / turntable_size: export.
    restore_nfe / restore_side / max_restore_side: restoration budget (model evaluations) and working image side.
    toy_points / max_points / max_images / sample_steps: fast-sampling defaults; kde_points / kde_bandwidth: the
    kernel density teacher of "moons" and "checkerboard".
    """

    max_side: int = 1024
    max_file_size: str = "10mb"
    queue_size: int = 16
    time_limit: int = 3600
    keep_seconds: float = 3600.0
    work_dir: str | None = None
    steps_3d: int = 400
    resolution_3d: int = 32
    max_steps_3d: int = 2000
    max_particles: int = 4
    preview_every_3d: int | None = None
    preview_min_height: int = 128
    export_resolution: int = 128
    turntable_frames: int = 24
    turntable_size: int = 256  # for people, whatever the size the prior scores
    restore_nfe: int = 50
    max_restore_nfe: int = 500
    restore_side: int = 128
    max_restore_side: int = 512
    toy_points: int = 1000
    max_points: int = 5000
    max_images: int = 64
    sample_steps: int = 8
    max_sample_steps: int = 100
    kde_points: int = 2048
    kde_bandwidth: float = 0.06


class JobCancelledError(Exception):
    """Raised inside a worker when its job was cancelled."""


#: the default that makes Gradio pass a per-request progress tracker (it builds a new one for every call)
PROGRESS = gr.Progress()


class UserInputError(ValueError):
    """Bad input from the page; its message is shown to the user as is."""


class Interruptible(WrappedDenoiser):
    """``inner`` with a stop check and a counter before every model evaluation (what makes Cancel prompt).

    ``tick(batch)`` is called before each evaluation of a (B, ...) batch and may raise `JobCancelledError`.
    """

    def __init__(self, inner: Denoiser, tick: Callable[[int], None]) -> None:
        super().__init__(inner)
        self.tick = tick

    def forward(self, x: Tensor, t: Tensor | float, cond: Condition = None, *, check: bool = True) -> Prediction:
        self.tick(x.shape[0])
        return self.inner(x, t, cond, check=check)


# ---------------------------------------------------------------------------------------------------------------------
# jobs: a worker thread streaming events to a Gradio generator
# ---------------------------------------------------------------------------------------------------------------------

_COMPUTE = threading.Lock()  # one heavy computation at a time, even while a cancelled job finishes its last step
ACTIVE_JOBS: set[threading.Thread] = set()  # running workers (tests check that Cancel empties it)


def stream_job(work: Callable[[Callable[..., None], threading.Event], Any], poll: float = 0.25
               ) -> Iterator[tuple[str, Any]]:
    """Run ``work(emit, stop)`` in a worker thread; yield ("progress", dict) for each ``emit(**info)``, ("tick",
    None) at least every ``poll`` seconds (so Gradio can close the generator at once), then ("done", result).

    Closing the generator (Gradio's Cancel, a client disconnect, the time limit) sets ``stop``; the next ``emit``
    (or `Interruptible` evaluation) in the worker raises `JobCancelledError`. Exceptions of ``work`` are re-raised.
    """
    stop = threading.Event()
    events: queue.Queue[tuple[str, Any]] = queue.Queue()

    def emit(**info: Any) -> None:
        if stop.is_set():
            raise JobCancelledError("cancelled")
        events.put(("progress", info))

    def target() -> None:
        try:
            while not _COMPUTE.acquire(timeout=poll):
                if stop.is_set():
                    raise JobCancelledError("cancelled while waiting")
                events.put(("progress", {"status": "waiting for the previous job to stop"}))
            try:
                if stop.is_set():
                    raise JobCancelledError("cancelled")
                events.put(("done", work(emit, stop)))
            finally:
                _COMPUTE.release()
        except BaseException as e:  # noqa: BLE001 - forwarded to the generator, which turns it into a message
            events.put(("error", e))
        finally:
            ACTIVE_JOBS.discard(threading.current_thread())

    worker = threading.Thread(target=target, name="priorkit-job", daemon=True)
    ACTIVE_JOBS.add(worker)
    worker.start()
    try:
        while True:
            try:
                kind, payload = events.get(timeout=poll)
            except queue.Empty:
                yield "tick", None
                continue
            if kind == "error":
                raise payload
            yield kind, payload
            if kind == "done":
                return
    finally:
        stop.set()


def user_error(e: BaseException) -> Exception:
    """The `gr.Error` shown for an exception: our message for bad input, a short note for anything else."""
    from priorkit.distill.core.loading import ModelLoadError

    if isinstance(e, gr.Error):
        return e
    if isinstance(e, (ValueError, ModelLoadError, FileNotFoundError)):
        return gr.Error(str(e), print_exception=False)
    if isinstance(e, JobCancelledError):
        return gr.Error("the job was cancelled", print_exception=False)
    log.error("job failed", exc_info=(type(e), e, e.__traceback__))
    return gr.Error(f"the job failed ({type(e).__name__}); the server log has the details", print_exception=False)


def _number(value: Any, name: str, lo: float, hi: float, *, integer: bool = False) -> Any:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise UserInputError(f"{name} must be a number; got {value!r}") from None
    if not math.isfinite(v) or not lo <= v <= hi:
        raise UserInputError(f"{name} must lie in [{lo:g}, {hi:g}]; got {value!r}")
    if integer:
        if v != int(v):
            raise UserInputError(f"{name} must be a whole number; got {value!r}")
        return int(v)
    return v


def _choice(value: Any, name: str, options: Any) -> Any:
    if value not in options:
        raise UserInputError(f"unknown {name} {value!r}; choose one of {', '.join(map(str, options))}")
    return value


def readable_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap a handler (plain or generator) so that every exception reaches the page as :func:`user_error`."""
    if inspect.isgeneratorfunction(fn):

        @functools.wraps(fn)
        def stream(*args: Any, **kwargs: Any) -> Iterator[Any]:
            try:
                yield from fn(*args, **kwargs)
            except Exception as e:  # noqa: BLE001 - every failure becomes a readable message
                raise user_error(e) from None

        return stream

    @functools.wraps(fn)
    def call(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except Exception as e:  # noqa: BLE001
            raise user_error(e) from None

    return call


class HandlerBase:
    """What every tab's handlers share: the limits and the job folders."""

    def __init__(self, config: AppConfig) -> None:
        self.cfg = config
        self.root = Path(config.work_dir or Path(tempfile.gettempdir()) / "priorkit-app")

    def job_dir(self, kind: str) -> Path:
        """A fresh folder for one job's files; folders older than ``keep_seconds`` are deleted first."""
        self.root.mkdir(parents=True, exist_ok=True)
        now = time.time()
        for old in self.root.iterdir():
            try:
                if old.is_dir() and now - old.stat().st_mtime > self.cfg.keep_seconds:
                    shutil.rmtree(old, ignore_errors=True)
            except OSError:
                continue
        return Path(tempfile.mkdtemp(prefix=f"{kind}-", dir=self.root))
