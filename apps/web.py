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
  ``./models``, ``./runs`` and ``./outputs/distill`` — after resolving symlinks and "..". A hub-id-looking string
  that names an existing local folder outside those directories is refused rather than loaded. Uploaded images are
  read only from Gradio's upload cache, and a file that cannot be decoded is answered with what is wrong with it
  (`safe_image_editor`), never with a server path;
* invalid inputs raise ``gr.Error`` with a readable message; unexpected failures show a short message (the stack
  trace goes to the server log only).
"""
from __future__ import annotations

from typing import Any

import gradio as gr
import torch

from priorkit.apps.web_3d import METHODS_3D, Text3DHandlers
from priorkit.apps.web_common import (  # noqa: F401 - the app's public names, re-exported
    ACTIVE_JOBS,
    PROGRESS,
    AppConfig,
    Interruptible,
    JobCancelledError,
    UserInputError,
    readable_errors,
    stream_job,
    user_error,
)
from priorkit.apps.web_images import (  # noqa: F401
    NO_EXAMPLE,
    SHAPES_EXAMPLE,
    _to_uint8,
    editor_image,
    example_image,
    example_names,
    fit_side,
    safe_image_editor,
    scatter_plot,
)
from priorkit.apps.web_models import (  # noqa: F401
    MODEL_DIRS_ENV,
    TOYS,
    bundled_status,
    find_finetuned,
    find_students,
    load_model,
    model_dirs,
    resolve_model,
    toy_teacher,
)
from priorkit.apps.web_restore import (  # noqa: F401
    MODE_EXAMPLE,
    MODE_OBSERVED,
    PRIORS_RESTORE,
    RESTORE_METHODS,
    TASKS,
    RestoreHandlers,
)
from priorkit.apps.web_sampling import SOLVERS, TEACHERS, SamplingHandlers
from priorkit.inverse.registry import DEFAULT_METHOD, get_method

DEFAULT_RESTORE_LABEL = get_method(DEFAULT_METHOD).label  # the method chosen by measurement (BENCHMARKS.md)


class Handlers(Text3DHandlers, RestoreHandlers, SamplingHandlers):
    """The functions behind the page's events (one class per tab: web_3d, web_restore, web_sampling)."""

    @readable_errors
    def status(self) -> str:
        """Markdown: which bundled priors are ready, and the allowed model directories."""
        lines = []
        for name, problem in bundled_status().items():
            lines.append(f"- **{name}**: " + ("ready" if problem is None else f"not available yet — {problem}"))
        dirs = ", ".join(f"`{d}`" for d in model_dirs())
        return "Bundled priors:\n" + "\n".join(lines) + f"\n\nModel folders are read only from: {dirs}"


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
                        prior = gr.Dropdown(["shapes-v2", "shapes"], value="shapes-v2", allow_custom_value=True,
                                            label="Prior",
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
                        editor = safe_image_editor(label="Image (paint over the region to fill for inpainting)",
                                                type="numpy", image_mode="RGBA", sources=("upload", "clipboard"),
                                                brush=gr.Brush(colors=["#ff00ff"], default_size=12),
                                                transforms=(), layers=False, format="png", elem_id="editor")
                        example = gr.Dropdown(list(example_names()), value=NO_EXAMPLE, label="Example")
                        task = gr.Radio(list(TASKS), value="super-resolution x4", label="Task")
                        rmethod = gr.Radio(list(RESTORE_METHODS), value=DEFAULT_RESTORE_LABEL, label="Method")
                        mode = gr.Radio([MODE_EXAMPLE, MODE_OBSERVED], value=MODE_EXAMPLE, label="Mode")
                        with gr.Row():
                            sigma_y = gr.Slider(0.0, 0.2, value=0.01, step=0.005, label="Noise level sigma_y")
                            rprior = gr.Dropdown(list(PRIORS_RESTORE), value="auto", label="Prior",
                                                 info="auto: shapes for the shapes example, else photos")
                        with gr.Row():
                            nfe = gr.Slider(1, cfg.max_restore_nfe, value=cfg.restore_nfe, step=1,
                                            label="Steps (model evaluations)",
                                            info="D-Flow: a cap on model passes; it needs several hundred")
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
                        teacher = gr.Dropdown([*TEACHERS, *find_finetuned()], value="gmm", label="Teacher",
                                              allow_custom_value=True,
                                              info="2D toy targets, the bundled text-to-image 'shapes' prior (v1, "
                                              "v2), or a prior folder made by `priorkit finetune`")
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
                teacher.change(lambda t: gr.update(value=cfg.toy_points if t in TOYS else 16,
                                                   maximum=cfg.max_points if t in TOYS else cfg.max_images),
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
    # Gradio's banner advises setting share=True in launch(); our users have `priorkit app --share` instead
    app.launch(server_name=host, server_port=port, share=share, show_error=True, max_file_size=cfg.max_file_size,
               prevent_thread_lock=True, quiet=quiet or not share, ssr_mode=False, footer_links=["api"])
    if not quiet and not share:
        print(f"priorkit app: {app.local_url} (Ctrl+C stops it; `priorkit app --share` for a public link)", flush=True)
    if not prevent_thread_lock:
        app.block_thread()
    return app


__all__ = ["AppConfig", "Handlers", "Interruptible", "JobCancelledError", "UserInputError", "build_app", "launch",
           "model_dirs", "resolve_model", "stream_job"]
