"""The priorkit web app (Gradio): text-to-3D, restoration and fast sampling in one page.

``build_app()`` returns the `gr.Blocks`; ``launch()`` serves it (``priorkit app``). Three tabs:

* **Text to 3D** — SDS / VSD (``priorkit.gen3d.generate``) with live previews streamed while the loop runs, a 3D viewer
  of the exported GLB, GLB / OBJ / PLY / turntable-GIF downloads, and a Cancel button.
* **Restore** — upload a photo or pick an example (the held-out photos of ``priorkit.distill.zoo.photos`` and a
shapes-world
  render); inpaint (a mask painted in the editor, or a centre box), deblur, or super-resolve x2 / x4 / x8 with
  PiGDM, D-Flow or DPS (``priorkit.inverse.restore``); a before / after slider and a PNG download. "Example" mode
  degrades
  the clean image first and reports PSNR.
* **Fast sampling** — a teacher (the bundled "shapes" prior, or a 2D toy target: gmm / moons / checkerboard)
  sampled in a few DPM-Solver++ / Euler / Heun steps, or a distilled student folder with its own sampler; the time
  per sample, a grid of images, and for 2D targets a scatter plot against exact samples with the sliced W2.
  2D teachers need no training: "gmm" is the exact mixture, and "moons" / "checkerboard" are served by the exact
  denoiser of a Gaussian kernel density estimate of 2048 exact samples (a Gaussian mixture, so it is exact too).

Limits that protect the server (see `AppConfig`):

* uploads are capped by Gradio's ``max_file_size``; images larger than ``max_side`` on a side are refused, and
  every image is resized down to the working size chosen in the page before any model sees it;
* one heavy job at a time: the queue runs the three jobs in one concurrency group of size 1, holds at most
  ``queue_size`` waiting events, and a job is stopped after ``time_limit`` seconds; a lock also keeps a cancelled
  job's last step from overlapping the next job;
* Cancel stops a job within one model call or one optimisation step: each job runs in a worker thread that checks
  a stop flag (set when Gradio closes the streaming generator) before every model evaluation / 3D step;
* no user-typed path is read outside the allow-list. A prior or student typed into the page must be a bundled name
  ("shapes", "photos"), a Hugging Face hub id ("owner/name", fetched by diffusers into its cache), or a folder
  *inside* one of the model directories — ``$PRIORKIT_APP_MODEL_DIRS`` (``os.pathsep``-separated) or, by default,
  ``./models`` and ``./runs`` — after resolving symlinks and "..". A hub-id-looking string that names an existing
  local folder outside those directories is refused rather than loaded. Uploaded images are read only from
  Gradio's upload cache;
* invalid inputs raise ``gr.Error`` with a readable message; unexpected failures show a short message (the stack
  trace goes to the server log only).
"""

from __future__ import annotations

import functools
import inspect
import logging
import math
import os
import queue
import re
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr
import numpy as np
import torch
from torch import Tensor

from priorkit.distill.core.denoiser import Condition, Denoiser, WrappedDenoiser
from priorkit.distill.core.prediction import Prediction
from priorkit.inverse.registry import labels as restore_labels

log = logging.getLogger(__name__)

MODEL_DIRS_ENV = "PRIORKIT_APP_MODEL_DIRS"
DEFAULT_MODEL_DIRS = ("models", "runs")
HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,95}/[A-Za-z0-9][A-Za-z0-9_.-]{0,95}$")

METHODS_3D = {"SDS": "sds", "VSD": "vsd"}
TASKS = {"inpaint (painted mask)": "inpaint_mask", "inpaint (centre box)": "inpaint_box",
         "deblur": "deblur_gaussian", "super-resolution x2": "sr2", "super-resolution x4": "sr4",
         "super-resolution x8": "sr8"}
RESTORE_METHODS = restore_labels()  # display labels of the registered prior methods (priorkit.inverse.registry)
MODE_EXAMPLE = "example: degrade this clean image, then restore it (PSNR)"
MODE_OBSERVED = "restore this degraded image"
PRIORS_RESTORE = ("auto", "photos", "shapes")
SHAPES_EXAMPLE = "shapes: a red cube"
NO_EXAMPLE = "(your image)"
TOYS = ("gmm", "moons", "checkerboard")
TEACHERS = (*TOYS, "shapes")
SOLVERS = ("dpm++2m", "euler", "heun")


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
    turntable_size: int = 64
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


# ---------------------------------------------------------------------------------------------------------------------
# models: the allow-list, and caches
# ---------------------------------------------------------------------------------------------------------------------


def model_dirs() -> list[Path]:
    """The directories user-typed model folders must lie in: ``$PRIORKIT_APP_MODEL_DIRS`` or ./models, ./runs."""
    env = os.environ.get(MODEL_DIRS_ENV)
    raw = env.split(os.pathsep) if env else list(DEFAULT_MODEL_DIRS)
    return [Path(p).expanduser().resolve() for p in raw if p.strip()]


def resolve_model(source: str, *, allow_hub: bool = True) -> str:
    """A loadable model source from what a user typed: a bundled name, an allowed folder (absolute path) or a hub id.

    Folders are looked up inside each of :func:`model_dirs` (relative names) or must resolve inside one of them
    (absolute paths); symlinks and ".." are resolved first. Raises `UserInputError` otherwise.
    """
    from priorkit.distill.core.loading import BUNDLED

    s = (source or "").strip()
    if not s:
        raise UserInputError("give a model: a bundled name, a hub id (owner/name) or a folder under the model dirs")
    if s in BUNDLED:
        return s
    if len(s) > 512 or "\x00" in s:
        raise UserInputError("model name too long or malformed")
    roots = model_dirs()
    given = Path(s).expanduser()
    for root in roots:
        cand = (given if given.is_absolute() else root / given).resolve()
        if cand.is_dir() and cand.is_relative_to(root):
            return str(cand)
    if allow_hub and HUB_ID.match(s) and ".." not in s:
        if given.exists():
            raise UserInputError(f"{s!r} is a local folder outside the allowed model directories "
                                 f"({', '.join(map(str, roots))}); move it there or set ${MODEL_DIRS_ENV}")
        return s
    hub = ", a hub id (owner/name)" if allow_hub else ""
    raise UserInputError(f"unknown model {s!r}: use a bundled prior ({', '.join(sorted(BUNDLED))}){hub} or a folder "
                         f"inside {' or '.join(map(str, roots))} (set ${MODEL_DIRS_ENV} to allow others)")


def bundled_students() -> list[str]:
    """Names of the bundled students whose weights are present (e.g. "shapes-cd")."""
    from priorkit.distill.core.loading import BUNDLED, BUNDLED_DIR, ModelLoadError, bundled_path
    from priorkit.distill.students.format import is_student_folder

    names = []
    for name in sorted(BUNDLED):
        try:
            bundled_path(name)
        except ModelLoadError:
            continue
        if is_student_folder(BUNDLED_DIR / name):
            names.append(name)
    return names


def find_students(limit: int = 50, depth: int = 5) -> list[str]:
    """Bundled students by name, then student folders (``priorkit.json`` with kind "student") in the model dirs."""
    from priorkit.distill.students.format import is_student_folder

    found: list[str] = bundled_students()
    for root in model_dirs():
        if not root.is_dir():
            continue
        for meta in sorted(root.rglob("priorkit.json")):
            rel = meta.relative_to(root).parts
            if len(rel) > depth + 1 or any(p.startswith(".") for p in rel):
                continue
            if is_student_folder(meta.parent):
                found.append(str(meta.parent))
            if len(found) >= limit:
                return found
    return found


@functools.lru_cache(maxsize=3)
def load_model(source: str) -> Denoiser:
    """A cached, frozen `Denoiser` (one per source; the compute lock keeps jobs from sharing it at once)."""
    from priorkit.distill.loading import load_denoiser

    return load_denoiser(source).eval().requires_grad_(False)


def bundled_status() -> dict[str, str | None]:
    """For each bundled prior: None when its weights are present, else the reason they cannot be loaded."""
    from priorkit.distill.core.loading import BUNDLED, ModelLoadError, bundled_path

    status: dict[str, str | None] = {}
    for name in BUNDLED:
        try:
            bundled_path(name)
            status[name] = None
        except ModelLoadError as e:
            status[name] = str(e)
    return status


@functools.lru_cache(maxsize=4)
def toy_teacher(name: str, points: int = 2048, bandwidth: float = 0.06) -> Denoiser:
    """The teacher of a 2D target: the exact mixture ("gmm"), or the exact denoiser of a Gaussian kernel density
    estimate of ``points`` exact samples (bandwidth = the std of each kernel), a `GaussianMixture` in float64."""
    from priorkit.distill.core.gmm import GaussianMixture
    from priorkit.distill.zoo.toy import gmm_target, sample_target

    if name == "gmm":
        return gmm_target()
    if name not in TOYS:
        raise UserInputError(f"unknown 2D target {name!r}; use one of {', '.join(TOYS)}")
    x = sample_target(name, points, torch.Generator().manual_seed(0)).double()
    return GaussianMixture(torch.ones(points, dtype=torch.float64), x,
                           torch.full((points, 2), bandwidth**2, dtype=torch.float64))


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


def _to_uint8(image: Tensor) -> np.ndarray:
    """(3, H, W) in [0, 1] -> uint8 (H, W, 3)."""
    return (image.detach().clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255 + 0.5).astype(np.uint8)


def _enlarge(image: np.ndarray, min_height: int) -> np.ndarray:
    """Repeat pixels (nearest neighbour) by the smallest integer factor that makes (H, W, 3) at least ``min_height``."""
    k = max(1, math.ceil(min_height / max(1, image.shape[0])))
    return image.repeat(k, axis=0).repeat(k, axis=1) if k > 1 else image


def _figure_to_array(fig: Any) -> np.ndarray:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


# ---------------------------------------------------------------------------------------------------------------------
# the handlers (one per endpoint)
# ---------------------------------------------------------------------------------------------------------------------


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


class Handlers:
    """The functions behind the page's events; ``config`` holds the limits and defaults."""

    def __init__(self, config: AppConfig) -> None:
        self.cfg = config
        self.root = Path(config.work_dir or Path(tempfile.gettempdir()) / "priorkit-app")

    # ---- shared --------------------------------------------------------------------------------------------------
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

    @readable_errors
    def status(self) -> str:
        """Markdown: which bundled priors are ready, and the allowed model directories."""
        lines = []
        for name, problem in bundled_status().items():
            lines.append(f"- **{name}**: " + ("ready" if problem is None else f"not available yet — {problem}"))
        dirs = ", ".join(f"`{d}`" for d in model_dirs())
        return "Bundled priors:\n" + "\n".join(lines) + f"\n\nModel folders are read only from: {dirs}"

    # ---- text to 3D ----------------------------------------------------------------------------------------------
    @readable_errors
    def generate_3d(self, prompt: str, method: str, particles: float, steps: float, seed: float, prior: str,
                    resolution: float, progress: gr.Progress = PROGRESS) -> Iterator[Any]:
        """Stream (preview, status, glb, files, gif) while SDS / VSD runs; the last yield holds the results."""
        from priorkit.gen3d.generate import GenerateConfig, generate, validate

        method_key = METHODS_3D[_choice(method, "method", METHODS_3D)]
        particles = _number(particles, "particles", 1, self.cfg.max_particles, integer=True)
        steps = _number(steps, "steps", 1, self.cfg.max_steps_3d, integer=True)
        seed = _number(seed, "seed", 0, 2**31 - 1, integer=True)
        resolution = _number(resolution, "resolution", 8, 128, integer=True)
        source = resolve_model(prior)
        validate(prompt, method_key, steps, resolution, particles, None, GenerateConfig.lr)
        cfg = GenerateConfig(export_resolution=self.cfg.export_resolution, turntable_frames=self.cfg.turntable_frames,
                             turntable_size=self.cfg.turntable_size)
        every = self.cfg.preview_every_3d or max(1, steps // 20)
        out = self.job_dir("3d")

        def work(emit: Callable[..., None], stop: threading.Event) -> Any:
            emit(status=f"loading the prior {source!r}")
            den = load_model(source)

            def callback(step: int, info: dict[str, Any]) -> None:
                emit(step=step, loss=info["loss"], preview=info["preview"])

            return generate(prompt.strip(), method_key, prior=den, steps=steps, seed=seed, out=out,
                            particles=particles, resolution=resolution, preview_every=every, progress=False,
                            config=cfg, callback=callback)

        t0 = time.time()
        result = None
        for kind, payload in stream_job(work):
            if kind == "tick":
                yield gr.skip()
            elif kind == "progress" and payload.get("step") is None:
                progress(0.0, desc=payload.get("status"))
                yield gr.skip(), payload.get("status"), gr.skip(), gr.skip(), gr.skip()
            elif kind == "progress":
                step = payload["step"]
                progress((step, steps), desc=f"{method} step", unit="steps")
                msg = f"step {step} / {steps}, loss {payload['loss']:.4g}, {time.time() - t0:.0f} s"
                if step == steps:
                    msg += " — exporting the mesh and turntable"
                preview = payload.get("preview")
                shown = gr.skip() if preview is None else _enlarge(preview, self.cfg.preview_min_height)
                yield shown, msg, gr.skip(), gr.skip(), gr.skip()
            else:
                result = payload
        files = [str(p) for k in ("glb", "obj", "ply", "gif") for p in result.paths.get(k, [])]
        glb = str(result.paths["glb"][0]) if result.paths.get("glb") else None
        gif = str(result.paths["gif"][0]) if result.paths.get("gif") else None
        previews = result.paths.get("previews") or []
        preview = gr.skip()
        if previews:
            from PIL import Image

            with Image.open(previews[-1]) as im:
                preview = _enlarge(np.asarray(im.convert("RGB")), self.cfg.preview_min_height)
        empty = sum(m is None for m in result.meshes)
        msg = (f"done: {steps} {method} steps, {particles} particle(s), {result.seconds:.0f} s. "
               f"Final loss {result.history[-1]['loss']:.4g}.")
        if empty:
            msg += f" {empty} particle(s) ended empty (no surface to mesh): try another seed or more steps."
        yield preview, msg, glb, files, gif

    # ---- restore -------------------------------------------------------------------------------------------------
    @readable_errors
    def load_example(self, name: str) -> Any:
        """The clean image of an example (uint8 (H, W, 3)) for the editor; "(your image)" leaves the editor as is."""
        if name in (None, "", NO_EXAMPLE):
            return gr.skip()
        return _to_uint8(example_image(_choice(name, "example", example_names())))

    @readable_errors
    def restore(self, editor: Any, example: str, task: str, method: str, sigma_y: float, mode: str, prior: str,
                nfe: float, seed: float, side: float, progress: gr.Progress = PROGRESS) -> Iterator[Any]:
        """Stream (before/after pair, status, download) while a restoration runs."""
        from priorkit.distill.core.loading import ModelLoadError, bundled_path
        from priorkit.inverse.registry import method_for_prior
        from priorkit.inverse.restore import restore, save_image

        task_key = TASKS[_choice(task, "task", TASKS)]
        _choice(method, "method", RESTORE_METHODS)
        _choice(mode, "mode", (MODE_EXAMPLE, MODE_OBSERVED))
        _choice(prior, "prior", PRIORS_RESTORE)
        sigma_y = _number(sigma_y, "noise level sigma_y", 0.0, 0.2)
        nfe = _number(nfe, "steps", 1, self.cfg.max_restore_nfe, integer=True)
        seed = _number(seed, "seed", 0, 2**31 - 1, integer=True)
        side = _number(side, "working size", 8, self.cfg.max_restore_side, integer=True)
        image, painted = editor_image(editor, self.cfg.max_side)
        observed = mode == MODE_OBSERVED
        factor = int(task_key[2:]) if task_key.startswith("sr") else 1
        image, painted = fit_side(image, painted, max(1, side // factor) if observed else side)
        if factor > 1 and not observed and min(image.shape[-2:]) < factor:
            raise UserInputError(f"the image is too small for x{factor} super-resolution")
        mask = None
        if task_key == "inpaint_mask":
            if painted is None or not bool((painted > 0.5).any()):
                raise UserInputError("paint over the region to fill (brush tool) before inpainting, or choose "
                                     "'inpaint (centre box)'")
            mask = (painted <= 0.5).float()  # 1 = keep
        source = ("shapes" if example == SHAPES_EXAMPLE else "photos") if prior == "auto" else prior
        if source == "photos":
            try:
                bundled_path("photos")
            except ModelLoadError:
                raise UserInputError("the 'photos' prior is not available yet (its weights are still being "
                                     "trained). Pick the shapes example, or choose the 'shapes' prior.") from None
        out = self.job_dir("restore")

        def work(emit: Callable[..., None], stop: threading.Event) -> Any:
            emit(status=f"loading the prior {source!r}")
            den = load_model(source)
            calls = [0]

            def tick(batch: int) -> None:
                calls[0] += 1
                emit(calls=calls[0])

            # the form of the method that suits the prior's kind (PiGDM: the flow form for flow-matching priors)
            name = method_for_prior(method, den).name
            with torch.enable_grad():
                res = restore(image, task_key, name, prior=Interruptible(den, tick), sigma_y=sigma_y, nfe=nfe,
                              seed=seed, mask=mask, observed=observed, progress=False)
            return res, name

        result = None
        for kind, payload in stream_job(work):
            if kind == "tick":
                yield gr.skip()
            elif kind == "progress" and "calls" in payload:
                progress((payload["calls"], None), desc="model evaluations", unit="calls")
                yield gr.skip(), f"{payload['calls']} model evaluations", gr.skip()
            elif kind == "progress":
                yield gr.skip(), payload.get("status"), gr.skip()
            else:
                result, used = payload
        path = out / "restored.png"
        save_image(result.restored, path)
        before, after = _to_uint8(result.degraded), _to_uint8(result.restored)
        h, w = after.shape[:2]
        msg = (f"{method} ({used}) with the '{source}' prior: {result.nfe} model passes, {result.seconds:.1f} s, "
               f"{w}x{h}.")
        if not observed:
            from torchmetrics.functional.image import peak_signal_noise_ratio

            clean = image[..., : result.restored.shape[-2], : result.restored.shape[-1]]
            p_out = float(peak_signal_noise_ratio(result.restored[None], clean[None], data_range=1.0))
            p_in = float(peak_signal_noise_ratio(result.degraded[None], clean[None], data_range=1.0))
            msg += f" PSNR: restored {p_out:.2f} dB (degraded input as shown: {p_in:.2f} dB)."
        yield (before, after), msg, str(path)

    # ---- fast sampling -------------------------------------------------------------------------------------------
    @readable_errors
    def sample(self, teacher: str, student: str, prompt: str, steps: float, solver: str, n: float, guidance: float,
               seed: float, progress: gr.Progress = PROGRESS) -> Iterator[Any]:
        """Stream (grid, scatter, status): samples of a teacher in few solver steps, or of a student folder."""
        _choice(teacher, "teacher", TEACHERS)
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
                emit(status="loading the shapes prior")
                den = load_model("shapes")
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


# ---------------------------------------------------------------------------------------------------------------------
# images
# ---------------------------------------------------------------------------------------------------------------------


def example_names() -> tuple[str, ...]:
    from priorkit.distill.zoo.photos import HELD_OUT

    return (NO_EXAMPLE, *HELD_OUT, SHAPES_EXAMPLE)


@functools.lru_cache(maxsize=8)
def example_image(name: str) -> Tensor:
    """A clean example (3, H, W) in [0, 1]: a held-out photo, or a 32x32 shapes-world render of a red cube."""
    if name == SHAPES_EXAMPLE:
        from priorkit.distill.core.cameras import Camera
        from priorkit.distill.zoo.shapes import render

        return render(["cube"], ["red"], [Camera(azimuth=30.0, elevation=20.0)], size=32,
                      lights=torch.tensor([0.3, -0.2, 1.0]))[0]
    from priorkit.distill.zoo.photos import HELD_OUT, load_photo

    if name not in HELD_OUT:
        raise UserInputError(f"unknown example {name!r}")
    return load_photo(name)


def _as_array(value: Any) -> np.ndarray | None:
    """An editor image (numpy array or PIL image, as Gradio preprocesses uploads) as a numpy array."""
    if value is None:
        return None
    if isinstance(value, np.ndarray):
        return value
    from PIL import Image

    if isinstance(value, Image.Image):
        return np.asarray(value)
    raise UserInputError("unsupported image value")


def editor_image(value: Any, max_side: int) -> tuple[Tensor, Tensor | None]:
    """(image (3, H, W) in [0, 1], painted (H, W) in [0, 1] or None) from an ImageEditor value.

    The background is the image (transparent pixels over white); the union of the painted layers' alpha is the
    painted region (resized to the image when the canvas differs). Raises `UserInputError` for missing or
    oversized images.
    """
    if isinstance(value, dict):
        background, layers = _as_array(value.get("background")), value.get("layers") or []
        if background is None:
            background = _as_array(value.get("composite"))
    else:
        background, layers = _as_array(value), []
    if background is None:
        raise UserInputError("upload an image or pick an example first")
    if background.ndim == 2:
        background = background[..., None].repeat(3, axis=-1)
    h, w = background.shape[:2]
    if max(h, w) > max_side:
        raise UserInputError(f"the image is {w}x{h}; the app takes images up to {max_side} pixels per side")
    if min(h, w) < 4:
        raise UserInputError(f"the image is {w}x{h}; it is too small")
    arr = background.astype(np.float32) / 255.0
    if arr.shape[-1] == 4:
        arr = arr[..., :3] * arr[..., 3:] + (1.0 - arr[..., 3:])  # over white
    image = torch.from_numpy(np.ascontiguousarray(arr[..., :3].transpose(2, 0, 1))).float()
    painted = None
    for layer in layers:
        a = _as_array(layer)
        if a is None or a.ndim != 3 or a.shape[-1] != 4:
            continue
        alpha = torch.from_numpy(a[..., 3].astype(np.float32) / 255.0)
        if tuple(alpha.shape) != (h, w):
            alpha = torch.nn.functional.interpolate(alpha[None, None], size=(h, w), mode="bilinear")[0, 0]
        painted = alpha if painted is None else torch.maximum(painted, alpha)
    return image, painted


def fit_side(image: Tensor, painted: Tensor | None, side: int) -> tuple[Tensor, Tensor | None]:
    """Resize (antialiased) so the longer side is at most ``side``; the painted map follows (bilinear)."""
    h, w = image.shape[-2:]
    if max(h, w) <= side:
        return image, painted
    s = side / max(h, w)
    size = (max(1, round(h * s)), max(1, round(w * s)))
    image = torch.nn.functional.interpolate(image[None], size=size, mode="bilinear", antialias=True)[0].clamp(0, 1)
    if painted is not None:
        painted = torch.nn.functional.interpolate(painted[None, None], size=size, mode="bilinear")[0, 0]
    return image, painted


def scatter_plot(samples: Tensor, truth: Tensor, title: str) -> np.ndarray:
    """A scatter plot (uint8 (H, W, 3)) of 2D samples (N, 2) over exact samples (M, 2)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5, 5), dpi=80)
    ax = fig.add_subplot()
    t, s = truth.double().numpy(), samples.detach().double().numpy()
    ax.scatter(t[:, 0], t[:, 1], s=2, c="0.7", label="exact samples")
    ax.scatter(s[:, 0], s[:, 1], s=3, c="tab:red", label="generated")
    ax.set_xlim(-3.2, 3.2)
    ax.set_ylim(-3.2, 3.2)
    ax.set_aspect("equal")
    ax.legend(loc="upper right", fontsize=8)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return _figure_to_array(fig)


# ---------------------------------------------------------------------------------------------------------------------
# the page
# ---------------------------------------------------------------------------------------------------------------------


def build_app(config: AppConfig | None = None) -> Any:
    """The Gradio app: tabs "Text to 3D", "Restore" and "Fast sampling"; returns a queued `gr.Blocks`.

    Endpoints (``api_name``): ``/status``, ``/generate_3d``, ``/load_example``, ``/restore``, ``/sample``.
    """
    cfg = config or AppConfig()
    h = Handlers(cfg)
    heavy = dict(concurrency_limit=1, concurrency_id="heavy", time_limit=cfg.time_limit)

    with gr.Blocks(title="priorkit", analytics_enabled=False, delete_cache=(1800, 3600)) as app:
        gr.Markdown("# priorkit\nPretrained diffusion and flow models put to work: text-to-3D, training-free "
                    "restoration, fast sampling. Jobs run one at a time on this server; defaults are sized for a CPU.")
        with gr.Tabs():
            with gr.Tab("Text to 3D", id="3d"):
                with gr.Row():
                    with gr.Column(scale=1):
                        prompt = gr.Textbox("a red cube", label="Prompt", max_lines=1)
                        with gr.Row():
                            method = gr.Radio(list(METHODS_3D), value="SDS", label="Method")
                            particles = gr.Slider(1, cfg.max_particles, value=1, step=1, label="Particles",
                                                  info="fields optimised together (VSD shares a LoRA among them)")
                        steps = gr.Slider(1, cfg.max_steps_3d, value=cfg.steps_3d, step=1, label="Steps")
                        resolution = gr.Slider(16, 64, value=cfg.resolution_3d, step=8, label="Render resolution")
                        seed = gr.Number(0, label="Seed", precision=0, minimum=0)
                        prior = gr.Dropdown(["shapes"], value="shapes", allow_custom_value=True, label="Prior",
                                            info="a bundled name, a hub id, or a folder inside the model directories")
                        with gr.Row():
                            run3d = gr.Button("Generate", variant="primary")
                            stop3d = gr.Button("Cancel", variant="stop")
                    with gr.Column(scale=1):
                        preview = gr.Image(label="Live preview (rows: particles)", type="numpy", interactive=False,
                                           format="png", height=160, elem_id="preview3d")
                        status3d = gr.Markdown(elem_id="status3d")
                        viewer = gr.Model3D(label="Mesh (GLB)", clear_color=(1.0, 1.0, 1.0, 1.0), height=320,
                                            elem_id="model3d")
                with gr.Row():
                    gif = gr.Image(label="Turntable", type="filepath", interactive=False, height=200, elem_id="gif3d")
                    files = gr.File(label="Downloads (GLB / OBJ / PLY / GIF)", file_count="multiple",
                                    interactive=False, elem_id="files3d")
                # Gradio 6.31's Model3D never draws a value that arrives through a streaming event, so the stream
                # returns the GLB in a hidden File and a follow-up event hands it to the viewer
                glb = gr.File(visible=False, label="GLB")
                ev3d = run3d.click(h.generate_3d, [prompt, method, particles, steps, seed, prior, resolution],
                                   [preview, status3d, glb, files, gif], api_name="generate_3d", **heavy)
                ev3d.then(lambda path: path, glb, viewer, api_visibility="private", queue=False)
                stop3d.click(None, None, None, cancels=[ev3d], api_visibility="private")

            with gr.Tab("Restore", id="restore"):
                prior_status = gr.Markdown(elem_id="prior_status")
                with gr.Row():
                    with gr.Column(scale=1):
                        editor = gr.ImageEditor(label="Image (paint over the region to fill for inpainting)",
                                                type="numpy", image_mode="RGBA", sources=("upload", "clipboard"),
                                                brush=gr.Brush(colors=["#ff00ff"], default_size=12),
                                                transforms=(), layers=False, format="png", elem_id="editor")
                        example = gr.Dropdown(list(example_names()), value=NO_EXAMPLE, label="Example")
                        task = gr.Radio(list(TASKS), value="super-resolution x4", label="Task")
                        rmethod = gr.Radio(list(RESTORE_METHODS), value="PiGDM", label="Method")
                        mode = gr.Radio([MODE_EXAMPLE, MODE_OBSERVED], value=MODE_EXAMPLE, label="Mode")
                        with gr.Row():
                            sigma_y = gr.Slider(0.0, 0.2, value=0.01, step=0.005, label="Noise level sigma_y")
                            rprior = gr.Dropdown(list(PRIORS_RESTORE), value="auto", label="Prior",
                                                 info="auto: shapes for the shapes example, else photos")
                        with gr.Row():
                            nfe = gr.Slider(1, cfg.max_restore_nfe, value=cfg.restore_nfe, step=1,
                                            label="Steps (model evaluations)",
                                            info="D-Flow: a budget of passes; one L-BFGS step costs ~90")
                            side = gr.Slider(16, cfg.max_restore_side, value=cfg.restore_side, step=8,
                                             label="Working size (longer side, pixels)")
                            rseed = gr.Number(0, label="Seed", precision=0, minimum=0)
                        with gr.Row():
                            run_r = gr.Button("Restore", variant="primary")
                            stop_r = gr.Button("Cancel", variant="stop")
                    with gr.Column(scale=1):
                        slider = gr.ImageSlider(label="Degraded | restored", type="numpy", interactive=False,
                                                format="png", elem_id="slider")
                        status_r = gr.Markdown(elem_id="status_restore")
                        download = gr.File(label="Restored PNG", interactive=False)
                example.change(h.load_example, example, editor, api_name="load_example", concurrency_limit=4)
                ev_r = run_r.click(h.restore, [editor, example, task, rmethod, sigma_y, mode, rprior, nfe, rseed, side],
                                   [slider, status_r, download], api_name="restore", **heavy)
                stop_r.click(None, None, None, cancels=[ev_r], api_visibility="private")

            with gr.Tab("Fast sampling", id="sampling"):
                with gr.Row():
                    with gr.Column(scale=1):
                        teacher = gr.Dropdown(list(TEACHERS), value="gmm", label="Teacher",
                                              info="2D toy targets, or the bundled text-to-image 'shapes' prior")
                        student = gr.Dropdown(["none", *find_students()], value="none", allow_custom_value=True,
                                              label="Student", info="'none' samples the teacher itself; "
                                              "a bundled student (shapes-cd) or a student folder")
                        sprompt = gr.Textbox("a red cube", label="Prompt (shapes only)", max_lines=1)
                        with gr.Row():
                            ssteps = gr.Slider(1, cfg.max_sample_steps, value=cfg.sample_steps, step=1, label="Steps")
                            solver = gr.Dropdown(list(SOLVERS), value="dpm++2m", label="Solver (teacher)")
                        with gr.Row():
                            n = gr.Slider(1, cfg.max_points, value=cfg.toy_points, step=1, label="Samples")
                            guidance = gr.Slider(1.0, 10.0, value=3.0, step=0.5, label="Guidance (shapes)")
                            sseed = gr.Number(0, label="Seed", precision=0, minimum=0)
                        with gr.Row():
                            run_s = gr.Button("Sample", variant="primary")
                            stop_s = gr.Button("Cancel", variant="stop")
                    with gr.Column(scale=1):
                        status_s = gr.Markdown(elem_id="status_sampling")
                        grid = gr.Image(label="Samples", type="numpy", interactive=False, format="png", elem_id="grid")
                        scatter = gr.Image(label="Samples vs exact samples", type="numpy", interactive=False,
                                           format="png", elem_id="scatter")
                teacher.change(lambda t: gr.update(value=16 if t == "shapes" else cfg.toy_points,
                                                   maximum=cfg.max_images if t == "shapes" else cfg.max_points),
                               teacher, n, api_visibility="private", queue=False)
                ev_s = run_s.click(h.sample, [teacher, student, sprompt, ssteps, solver, n, guidance, sseed],
                                   [grid, scatter, status_s], api_name="sample", **heavy)
                stop_s.click(None, None, None, cancels=[ev_s], api_visibility="private")
        app.load(h.status, None, prior_status, api_name="status", concurrency_limit=4)
    app.queue(max_size=cfg.queue_size, default_concurrency_limit=1)
    return app


def launch(host: str = "127.0.0.1", port: int = 7860, share: bool = False, *, config: AppConfig | None = None,
           threads: int | None = None, prevent_thread_lock: bool = False, quiet: bool = False) -> Any:
    """Serve :func:`build_app` on ``host:port`` (``share``: a public Gradio link). ``threads``: torch CPU threads.

    Blocks until the server stops unless ``prevent_thread_lock``; returns the launched `gr.Blocks` (its
    ``local_url`` is the address; ``close()`` stops it).
    """
    if threads is not None:
        torch.set_num_threads(int(threads))
    from PIL import Image

    Image.MAX_IMAGE_PIXELS = 32_000_000  # decompression bombs: PIL refuses images of more than 2x this
    cfg = config or AppConfig()
    app = build_app(cfg)
    app.launch(server_name=host, server_port=port, share=share, show_error=True, max_file_size=cfg.max_file_size,
               prevent_thread_lock=prevent_thread_lock, quiet=quiet, ssr_mode=False, footer_links=["api"])
    return app


__all__ = ["AppConfig", "Handlers", "Interruptible", "JobCancelledError", "UserInputError", "build_app", "launch",
           "model_dirs", "resolve_model", "stream_job"]
